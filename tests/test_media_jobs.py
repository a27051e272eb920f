# ruff: noqa: F811 (the tiny-model fixtures are imported by name, and pytest passes them by that name)
"""Media jobs through HTTP (issue 14) on the real diffusers engine with tiny random pipelines
(tests/media_tiny.py): image answers inline, video jobs with SSE progress and an MP4, cancellation between steps,
a failing job that does not stop the queue, the OpenAI shapes, the retention sweep, and bad input.

The voice engines are fakes here: what is tested is the media path, and loading Whisper and Piper would only
cost time. Each server is module-scoped; jobs are small (64x64, a few steps).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402

from tests.conftest import LiveServer, free_port  # noqa: E402
from tests.looplag import LoopWatch  # noqa: E402
from tests.media_tiny import tiny_image_model, tiny_video_model  # noqa: E402, F401

LIMITS = {
    "media_max_width": 256,
    "media_max_height": 256,
    "media_max_steps": 60,
    "media_max_frames": 48,
    "media_max_upload_mb": 0.25,
    "media_max_waiting": 2,
}


def _server(tmp: Path, **media: Any) -> LiveServer:
    from gateway.app import create_app
    from gateway.settings import Settings
    from pipeline.runtime import Runtime
    from tests.test_session_core import FakeLLM, FakeSTT, FakeTTS, FakeVAD

    settings = Settings(data_dir=tmp, **LIMITS, **media)
    runtime = Runtime(vad=FakeVAD(), stt=FakeSTT(), llm=FakeLLM("{}", delay_s=0.0), tts=FakeTTS())
    live = LiveServer(create_app(settings, runtime=runtime), free_port(), settings)
    live.start()
    return live


def _client(live: LiveServer) -> httpx.Client:
    client = httpx.Client(base_url=live.http, timeout=120)
    deadline = time.monotonic() + 60
    while client.get("/v1/jobs?limit=1").status_code != 200 or _loading(client):
        assert time.monotonic() < deadline, "the media engine did not load"
        time.sleep(0.1)
    return client


def _loading(client: httpx.Client) -> bool:
    # A body the engine check answers before validation: 503 while the engine loads, 422 once it is there.
    return client.post("/image/generate", json={}).status_code == 503


def _media_api(folder: Path, model: Path) -> Iterator[httpx.Client]:
    live = _server(folder, media_engine="diffusers", media_model_path=str(model))
    client = _client(live)
    client.live = live  # type: ignore[attr-defined]
    client.watch = LoopWatch(interval_s=0.01).start_on(live.state.loop)  # type: ignore[attr-defined]
    yield client
    client.close()
    live.stop()


@pytest.fixture(scope="module")
def image_api(tmp_path_factory: pytest.TempPathFactory, tiny_image_model: Path) -> Iterator[httpx.Client]:
    yield from _media_api(tmp_path_factory.mktemp("media-image"), tiny_image_model)


@pytest.fixture(scope="module")
def video_api(tmp_path_factory: pytest.TempPathFactory, tiny_video_model: Path) -> Iterator[httpx.Client]:
    yield from _media_api(tmp_path_factory.mktemp("media-video"), tiny_video_model)


def _png(data: bytes | str) -> np.ndarray:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    with Image.open(io.BytesIO(raw)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(np.int16)


def _events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    events = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def wait_for_job(client: httpx.Client, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def start_slow_video(client: httpx.Client, steps: int, timeout_s: float = 60) -> dict[str, Any]:
    """Queue a long video job and return it once it has run two of its ``steps`` (it is then mid-run)."""
    job = client.post(
        "/video/generate", json={"prompt": "slow", "resolution": "64x64", "num_frames": 16, "steps": steps}
    ).json()
    deadline = time.monotonic() + timeout_s
    while (current := client.get(f"/v1/jobs/{job['id']}").json())["progress"] < 2 / steps:
        assert current["status"] in ("queued", "running") and time.monotonic() < deadline, current
        time.sleep(0.02)
    return current


# -- images -------------------------------------------------------------------------------------------------


def test_image_generate_is_the_seeded_pipeline_png(image_api: httpx.Client, tiny_image_model: Path) -> None:
    """A PNG of the size asked for, identical to the engine called directly with the same seed, different for
    another seed; the job behind it is on record."""
    from engines.media_base import MediaRequest
    from engines.media_registry import build_media_engine
    from gateway.settings import Settings

    body = {"prompt": "a red fox", "width": 64, "height": 48, "steps": 3, "seed": 7, "guidance_scale": 5.0}
    first = image_api.post("/image/generate", json=body)
    assert first.status_code == 200, first.text
    answer = first.json()
    assert (answer["width"], answer["height"], answer["seed"]) == (64, 48, 7)
    pixels = _png(answer["image"])
    assert pixels.shape == (48, 64, 3)
    assert pixels.std() > 1, "a blank picture"

    engine = build_media_engine(Settings(media_engine="diffusers", media_model_path=str(tiny_image_model)))
    assert engine is not None
    request = MediaRequest(
        task="text-to-image", prompt="a red fox", width=64, height=48, steps=3, guidance_scale=5.0, seed=7
    )
    direct = engine.generate(request, lambda _: None, lambda: False)
    assert np.array_equal(_png(direct.images[0]), pixels), "the job's picture is not the seeded pipeline's"

    other = _png(image_api.post("/image/generate", json={**body, "seed": 8}).json()["image"])
    assert np.abs(other - pixels).mean() > 1, "another seed gave the same picture"

    info = image_api.get("/v1/media").json()
    assert info["tasks"] == ["image-to-image", "inpaint", "text-to-image"] and info["size_multiple"] == 8
    assert info["max_width"] == 256 and info["max_steps"] == 60 and info["queue"] == "memory"

    job = image_api.get(f"/v1/jobs/{answer['job_id']}").json()
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["kind"] == "image"
    assert job["request"]["seed"] == 7 and job["result"]["files"] == ["image-0.png"]
    stored = _png(image_api.get(job["result_urls"][0]).content)
    assert np.array_equal(stored, pixels)


def test_openai_generations_b64_json_and_url(image_api: httpx.Client) -> None:
    body = {
        "prompt": "a red fox",
        "size": "64x48",
        "steps": 3,
        "seed": 7,
        "guidance_scale": 5.0,
        "n": 2,
        "model": "any",
    }
    answer = image_api.post("/v1/images/generations", json=body)
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert len(data) == 2 and isinstance(answer.json()["created"], int)
    studio = _png(image_api.post("/image/generate", json={**body, "width": 64, "height": 48}).json()["image"])
    first, second = (_png(d["b64_json"]) for d in data)
    assert np.array_equal(first, studio), "image 0 of n is the seed's own picture"
    assert np.abs(second - first).mean() > 1, "image 1 of n has the next seed"

    urls = image_api.post("/v1/images/generations", json={**body, "n": 1, "response_format": "url"}).json()[
        "data"
    ]
    assert urls[0]["url"].startswith(image_api.live.http + "/v1/jobs/")  # type: ignore[attr-defined]
    assert np.array_equal(_png(httpx.get(urls[0]["url"]).content), first)


def _picture(width: int = 64, height: int = 64) -> bytes:
    gradient = np.linspace(0, 255, width * height * 3).reshape(height, width, 3).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(gradient).save(out, format="PNG")
    return out.getvalue()


def test_image_edit_with_a_mask_repaints_only_the_masked_region(image_api: httpx.Client) -> None:
    source = _picture()
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255  # repaint the left half
    mask_png = io.BytesIO()
    Image.fromarray(mask).save(mask_png, format="PNG")
    files = {"file": ("in.png", source, "image/png"), "mask": ("mask.png", mask_png.getvalue(), "image/png")}
    answer = image_api.post(
        "/image/edit", files=files, data={"prompt": "a hat", "steps": "4", "seed": "3", "strength": "1.0"}
    )
    assert answer.status_code == 200, answer.text
    result, original = _png(answer.json()["image"]), _png(source)
    assert result.shape == original.shape
    changed_left = np.abs(result[:, :28] - original[:, :28]).mean()
    changed_right = np.abs(result[:, 36:] - original[:, 36:]).mean()
    assert changed_left > 10 * max(changed_right, 0.1), (changed_left, changed_right)
    assert image_api.get(f"/v1/jobs/{answer.json()['job_id']}").json()["task"] == "inpaint"

    # OpenAI's edits: the transparent part of the mask is what is edited; without a mask, image-to-image.
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:, 32:, 3] = 0  # edit the right half
    openai_mask = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(openai_mask, format="PNG")
    files = {"image": ("in.png", source, "image/png"), "mask": ("m.png", openai_mask.getvalue(), "image/png")}
    edited = image_api.post(
        "/v1/images/edits", files=files, data={"prompt": "a hat", "steps": "4", "seed": "3"}
    )
    assert edited.status_code == 200, edited.text
    result = _png(edited.json()["data"][0]["b64_json"])
    assert np.abs(result[:, 36:] - original[:, 36:]).mean() > 10 * max(
        np.abs(result[:, :28] - original[:, :28]).mean(), 0.1
    )
    plain = image_api.post(
        "/v1/images/edits",
        files={"image": ("in.png", source, "image/png")},
        data={"prompt": "x", "steps": "2", "size": "32x32"},
    )
    assert plain.status_code == 200, plain.text
    assert _png(plain.json()["data"][0]["b64_json"]).shape == (32, 32, 3)


# -- video --------------------------------------------------------------------------------------------------


def _frames(mp4: bytes) -> tuple[int, tuple[int, int]]:
    import av

    with av.open(io.BytesIO(mp4)) as container:
        frames = [frame for frame in container.decode(video=0)]
    return len(frames), (frames[0].width, frames[0].height)


def test_video_job_streams_progress_and_ends_with_an_mp4(video_api: httpx.Client) -> None:
    created = video_api.post(
        "/video/generate",
        json={"prompt": "waves", "resolution": "64x64", "num_frames": 6, "steps": 3, "seed": 1},
    )
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["status"] in ("queued", "running") and created.headers["location"] == f"/v1/jobs/{job['id']}"
    events = _events(video_api, job["id"])
    progress = [e["progress"] for e in events if e["status"] == "running"]
    assert progress == sorted(progress) and len(set(progress)) >= 2, events
    assert events[-1]["status"] == "succeeded" and events[-1]["progress"] == 1.0
    mp4 = video_api.get(events[-1]["result_urls"][0])
    assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4"
    assert _frames(mp4.content) == (6, (64, 64))
    assert events[-1]["result"]["frames"] == 6


def test_openai_video_object(video_api: httpx.Client) -> None:
    created = video_api.post(
        "/v1/videos", json={"prompt": "waves", "size": "64x64", "seconds": "0.5", "fps": 8, "steps": 2}
    )
    assert created.status_code == 202, created.text
    video = created.json()
    assert (
        video["object"] == "video"
        and video["status"] in ("queued", "in_progress")
        and video["seconds"] == "0.5"
    )
    wait_for_job(video_api, video["id"])
    done = video_api.get(f"/v1/videos/{video['id']}").json()
    assert done["status"] == "completed" and done["progress"] == 100 and done["size"] == "64x64"
    assert _frames(video_api.get(f"/v1/videos/{video['id']}/content").content)[0] == 4


def test_cancelling_a_running_job_stops_it_within_a_step(video_api: httpx.Client) -> None:
    steps = 60
    job = start_slow_video(video_api, steps)
    cancel = video_api.delete(f"/v1/jobs/{job['id']}")
    assert cancel.status_code == 200, cancel.text
    at_cancel = cancel.json()
    assert at_cancel["cancel_requested"] and at_cancel["status"] == "running"
    ended = wait_for_job(video_api, job["id"])
    assert ended["status"] == "cancelled", ended
    # The step running when the flag was set finishes and reports; the engine stops before the next one.
    assert ended["progress"] <= at_cancel["progress"] + 1 / steps + 1e-3, (
        at_cancel["progress"],
        ended["progress"],
    )
    assert ended["progress"] < 0.5 and ended["result_urls"] == []
    assert video_api.delete(f"/v1/jobs/{job['id']}").status_code == 409


def test_a_full_queue_refuses_new_jobs(video_api: httpx.Client) -> None:
    running = start_slow_video(video_api, steps=60)
    body = {"prompt": "x", "resolution": "16x16", "num_frames": 2, "steps": 1}
    waiting = [video_api.post("/video/generate", json=body).json() for _ in range(2)]
    refused = video_api.post("/video/generate", json=body)
    assert refused.status_code == 429 and "media_max_waiting" in refused.json()["detail"]
    for job in [*waiting, running]:
        assert video_api.delete(f"/v1/jobs/{job['id']}").status_code == 200
    assert [wait_for_job(video_api, job["id"])["status"] for job in waiting] == ["cancelled", "cancelled"]
    assert wait_for_job(video_api, running["id"])["status"] == "cancelled"


def test_a_failing_job_does_not_block_the_next(video_api: httpx.Client) -> None:
    """40 frames are within the limits but past the tiny AnimateDiff motion module's 32 positions: the model
    fails, the job ends failed with its reason, and the job queued behind it runs."""
    bad = video_api.post(
        "/video/generate", json={"prompt": "x", "resolution": "16x16", "num_frames": 40, "steps": 1}
    ).json()
    good = video_api.post(
        "/video/generate", json={"prompt": "x", "resolution": "16x16", "num_frames": 2, "steps": 1}
    ).json()
    failed = wait_for_job(video_api, bad["id"])
    assert failed["status"] == "failed" and "AnimateDiffPipeline failed" in failed["error"], failed
    assert wait_for_job(video_api, good["id"])["status"] == "succeeded"
    listed = video_api.get("/v1/jobs", params={"status": "failed", "kind": "video"}).json()["data"]
    assert bad["id"] in [j["id"] for j in listed] and all(j["status"] == "failed" for j in listed)


def test_retention_sweep_deletes_finished_jobs_and_files(video_api: httpx.Client) -> None:
    live = video_api.live  # type: ignore[attr-defined]
    jobs = live.app.state.media_jobs
    finished = video_api.get("/v1/jobs", params={"status": "succeeded"}).json()["data"]
    assert finished
    folder = jobs.files.root / finished[0]["id"]
    assert folder.is_dir()
    later = time.time() + LIMITS_RETENTION_S + 60
    removed = asyncio.run_coroutine_threadsafe(jobs.sweep(now=later), live.state.loop).result(30)
    assert removed >= len(finished)
    assert video_api.get(f"/v1/jobs/{finished[0]['id']}").status_code == 404
    assert not folder.exists()


LIMITS_RETENTION_S = 24 * 3600


async def test_a_job_whose_runner_died_can_be_taken_over_or_cancelled(tmp_path: Path) -> None:
    """A killed worker leaves its job running: once its record goes unwritten for STALE_S, the redelivered
    message may start it again, and a cancel ends it at once (nobody would at the next step)."""
    from storage.jobs import STALE_S, JobStore
    from storage.store import Store

    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    try:
        jobs = JobStore(store.engine)
        now = time.time()
        for job_id in ("job_a", "job_b"):
            await jobs.create(job_id, kind="video", task="text-to-video", request={}, now=now)
            assert await jobs.start(job_id, now)
        assert not await jobs.start("job_a", now + 1), "a live runner's job was taken over"
        assert (await jobs.request_cancel("job_a", now + 1))["status"] == "running"  # flagged for its runner
        assert await jobs.set_progress("job_b", 0.5, now + 10)  # a heartbeat
        assert not await jobs.start("job_b", now + 10 + STALE_S - 1)
        assert await jobs.start("job_b", now + 10 + STALE_S + 1), "a dead runner's job was not taken over"
        assert (await jobs.get("job_b"))["progress"] == 0.0
        dead = await jobs.request_cancel("job_b", now + 10 + 3 * STALE_S)
        assert dead["status"] == "cancelled" and "stopped answering" in dead["error"]
    finally:
        await store.close()


# -- bad input ----------------------------------------------------------------------------------------------


def _bomb() -> bytes:
    out = io.BytesIO()
    Image.new("1", (8000, 6000)).save(out, format="PNG")  # 48 megapixels in a few kilobytes
    return out.getvalue()


GOOD = {"prompt": "x", "width": 64, "height": 64, "steps": 2}
BAD_JSON = [
    ("/image/generate", {**GOOD, "width": 4096}, 422, "width"),
    ("/image/generate", {**GOOD, "width": 60}, 422, "multiple"),
    ("/image/generate", {**GOOD, "steps": 0}, 422, "steps"),
    ("/image/generate", {**GOOD, "steps": 61}, 422, "media_max_steps"),
    ("/image/generate", {"width": 64}, 422, "prompt"),
    ("/image/generate", {**GOOD, "seed": -1}, 422, "seed"),
    ("/v1/images/generations", {"prompt": "x", "size": "9999x9999"}, 422, "size"),
    ("/v1/images/generations", {"prompt": "x", "size": "big"}, 422, "size"),
    ("/v1/images/generations", {"prompt": "x", "n": 9}, 422, "media_max_images"),
    ("/v1/images/generations", {"prompt": "x", "response_format": "gif"}, 422, "response_format"),
    ("/video/generate", {"prompt": "x", "resolution": "64x64"}, 400, "text-to-video"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "says"), BAD_JSON, ids=[f"{p} {s}" for p, _, _, s in BAD_JSON]
)
def test_bad_json_bodies_get_a_clear_4xx(
    image_api: httpx.Client, path: str, body: dict[str, Any], status: int, says: str
) -> None:
    answer = image_api.post(path, json=body)
    assert answer.status_code == status, answer.text
    assert says in json.dumps(answer.json()["detail"])


def test_bad_uploads_and_unknown_jobs_get_a_clear_4xx(image_api: httpx.Client) -> None:
    def edit(files: dict[str, Any], data: dict[str, str] | None = None) -> httpx.Response:
        return image_api.post("/image/edit", files=files, data=data or {"prompt": "x", "steps": "2"})

    limit = int(0.25 * (1 << 20))
    cases = [
        (edit({"file": ("a.txt", b"not an image at all", "text/plain")}), 422, "not a PNG, JPEG or WebP"),
        (edit({"file": ("a.gif", _gif(), "image/gif")}), 422, "GIF images are not accepted"),
        (edit({"file": ("bomb.png", _bomb(), "image/png")}), 422, "more than"),
        (edit({"file": ("big.png", b"\x89PNG" + bytes(limit), "image/png")}), 422, "media_max_upload_mb"),
        (edit({"file": ("huge.png", bytes(3 * limit), "image/png")}), 413, "media_max_upload_mb"),
        (edit({}, {"prompt": "x"}), 415, "multipart/form-data"),
        (
            edit({"mask": ("m.png", _picture(), "image/png")}, {"prompt": "x"}),
            422,
            "an image file is required",
        ),
        (
            edit(
                {"file": ("in.png", _picture(), "image/png")},
                {"prompt": "x", "steps": "2", "strength": "0.1"},
            ),
            422,
            "at least one step",
        ),
        (edit({"file": ("in.png", _picture(), "image/png")}, {"steps": "2"}), 422, "prompt"),
        (image_api.get("/v1/jobs/job_" + "0" * 32), 404, "no job"),
        (image_api.get("/v1/jobs/../../etc/passwd"), 404, ""),
        (image_api.delete("/v1/jobs/job_" + "0" * 32), 404, "no job"),
        (image_api.get("/v1/jobs/job_" + "0" * 32 + "/events"), 404, "no job"),
        (image_api.get("/v1/jobs?status=done"), 422, "status"),
        (image_api.get("/v1/jobs?limit=0"), 422, "limit"),
        (image_api.post("/v1/videos", json={"prompt": "x"}), 400, "text-to-video"),
    ]
    for answer, status, says in cases:
        assert answer.status_code == status, (answer.request.url, answer.text[:300])
        assert says in json.dumps(answer.json()["detail"]), answer.text[:300]
    jobs = image_api.get("/v1/jobs?kind=image&limit=1").json()["data"]
    assert image_api.get(f"/v1/jobs/{jobs[0]['id']}/files/video.mp4").status_code == 404


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="GIF")
    return out.getvalue()


def test_without_a_media_engine_every_media_route_says_how_to_configure_one(tmp_path: Path) -> None:
    live = _server(tmp_path)
    try:
        with httpx.Client(base_url=live.http, timeout=30) as client:
            for path in ("/image/generate", "/video/generate", "/v1/images/generations", "/v1/videos"):
                answer = client.post(path, json={"prompt": "x"})
                assert answer.status_code == 400, answer.text
                assert "VOXGATE_MEDIA_ENGINE" in answer.json()["detail"]
            answer = client.post("/image/edit", files={"file": ("a.png", _picture(), "image/png")})
            assert answer.status_code == 400 and "VOXGATE_MEDIA_ENGINE" in answer.json()["detail"]
            assert client.get("/v1/jobs").json() == {"object": "list", "data": []}
            assert client.get("/v1/media").json() == {"engine": "none", "queue": "memory", "tasks": []}
    finally:
        live.stop()


def test_voxgate_worker_needs_the_redis_queue_and_an_engine(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    monkeypatch.setenv("VOXGATE_MEDIA_ENGINE", "diffusers")
    assert main(["worker"]) == 2  # media_queue=memory: jobs run inside the gateway, a worker has none to take
    assert "VOXGATE_MEDIA_QUEUE=redis" in capsys.readouterr().err
    monkeypatch.setenv("VOXGATE_MEDIA_ENGINE", "none")
    monkeypatch.setenv("VOXGATE_MEDIA_QUEUE", "redis")
    assert main(["worker"]) == 2
    assert "VOXGATE_MEDIA_ENGINE" in capsys.readouterr().err


def test_no_job_held_the_event_loop(image_api: httpx.Client, video_api: httpx.Client) -> None:
    """Every job above ran its model work, uploads' decoding and base64 answers off the servers' loops."""
    for client in (image_api, video_api):
        watch = client.watch  # type: ignore[attr-defined]
        assert watch.ticks, "the watch never ticked"
        assert watch.max_busy_ms < 50, watch.describe()
        print(watch.describe())
