"""The media engines on real diffusers pipelines (tiny, random, built by tests/media_tiny.py).

The diffusers engine loads each saved pipeline the way a deployment does; the remote engine talks HTTP to a
small studio-API service started here (``tests/media_stub.py``), which runs the same diffusers engine
behind the studio routes and a job table, so a remote result can be compared with a local one.
"""

# ruff: noqa: F811 (tests take the imported session fixtures as arguments of the same name)
from __future__ import annotations

import io
import time
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("diffusers")

import av  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from engines.media_base import MediaCancelled, MediaEngineError, MediaRequest  # noqa: E402
from engines.media_registry import MediaOptions, build_media_engine  # noqa: E402
from tests.media_stub import StudioStub  # noqa: E402
from tests.media_tiny import tiny_i2v_model, tiny_image_model, tiny_video_model  # noqa: E402,F401 (fixtures)

PROMPT = "a red fox in the snow"


def _engine(path):  # type: ignore[no-untyped-def]
    return build_media_engine(MediaOptions(engine="diffusers", model_path=str(path)))


@pytest.fixture(scope="module")
def image_engine(tiny_image_model):  # type: ignore[no-untyped-def]
    engine = _engine(tiny_image_model)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def video_engine(tiny_video_model):  # type: ignore[no-untyped-def]
    engine = _engine(tiny_video_model)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def source(image_engine) -> bytes:  # type: ignore[no-untyped-def]
    """A 64x32 PNG made by the tiny model: the input of the edit and image-to-video tests."""
    return image_engine.generate(
        MediaRequest(task="text-to-image", prompt=PROMPT, width=64, height=32, steps=2, seed=1),
        lambda _: None,
        lambda: False,
    ).images[0]


def _pixels(png: bytes) -> np.ndarray:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _left_half_mask(width: int, height: int) -> bytes:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (0, 0, width // 2, height))
    return _png(mask)


def _assert_only_left_half_changed(result: bytes, source: bytes) -> None:
    """The left-half mask's promise: repainted where the mask is white, the caller's pixels where it is black."""
    change = np.abs(_pixels(result) - _pixels(source)).mean(axis=2)
    assert change[:, :32].mean() > 10
    assert change[:, 32:].max() == 0


def _decode_mp4(data: bytes) -> tuple[list[np.ndarray], float]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, float(stream.average_rate)


def _run(engine, **fields):  # type: ignore[no-untyped-def]
    seen: list[float] = []
    result = engine.generate(MediaRequest(prompt=PROMPT, **fields), seen.append, lambda: False)
    return result, seen


def test_capabilities_follow_the_pipeline_class(image_engine, video_engine) -> None:
    assert image_engine.capabilities.tasks == {"text-to-image", "image-to-image", "inpaint"}
    assert video_engine.capabilities.tasks == {"text-to-video"}
    assert image_engine.capabilities.concurrency == 1 and image_engine.capabilities.size_multiple == 8
    # the tiny video UNet downsamples once more than its VAE: sizes must be multiples of 2 x 8
    assert video_engine.capabilities.size_multiple == 16


def test_text_to_image_is_the_seeded_pipeline(image_engine, tiny_image_model) -> None:
    from diffusers import DiffusionPipeline

    result, seen = _run(
        image_engine, task="text-to-image", width=64, height=48, steps=3, seed=7, guidance_scale=5.0
    )
    pixels = _pixels(result.images[0])
    assert result.seed == 7 and result.media_type == "image/png"
    assert pixels.shape == (48, 64, 3) and pixels.std() > 5  # the requested size, and not a blank picture
    assert seen == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])  # after each of the 3 steps, then done

    direct = DiffusionPipeline.from_pretrained(str(tiny_image_model))
    direct.set_progress_bar_config(disable=True)
    expected = direct(
        PROMPT,
        width=64,
        height=48,
        num_inference_steps=3,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(7),
    ).images[0]
    assert np.array_equal(pixels, np.asarray(expected).astype(np.int16))

    other, _ = _run(
        image_engine, task="text-to-image", width=64, height=48, steps=3, seed=8, guidance_scale=5.0
    )
    assert np.abs(_pixels(other.images[0]) - pixels).mean() > 5


def test_no_seed_reports_the_one_used(image_engine) -> None:
    first, _ = _run(image_engine, task="text-to-image", width=32, height=32, steps=2)
    again, _ = _run(image_engine, task="text-to-image", width=32, height=32, steps=2, seed=first.seed)
    assert 0 <= first.seed < 2**31
    assert np.array_equal(_pixels(first.images[0]), _pixels(again.images[0]))


def test_inpaint_changes_the_masked_half_only(image_engine, source) -> None:
    result, seen = _run(
        image_engine,
        task="inpaint",
        width=64,
        height=32,
        steps=4,
        seed=2,
        strength=1.0,
        image=source,
        mask=_left_half_mask(64, 32),
    )
    _assert_only_left_half_changed(result.images[0], source)
    assert len(seen) == 5


def test_image_to_image_runs_strength_times_steps(image_engine, source) -> None:
    fields = {"width": 64, "height": 32, "steps": 10, "seed": 3, "strength": 0.5, "image": source}
    result, seen = _run(image_engine, task="image-to-image", **fields)
    assert _pixels(result.images[0]).shape == (32, 64, 3)
    assert np.abs(_pixels(result.images[0]) - _pixels(source)).mean() > 1
    assert seen[:-1] == pytest.approx([i / 5 for i in range(1, 6)])  # 0.5 x 10 steps really run


def test_text_to_video_is_an_mp4_with_the_requested_frames(video_engine) -> None:
    result, seen = _run(
        video_engine, task="text-to-video", width=32, height=48, steps=2, seed=4, num_frames=6, fps=12
    )
    frames, rate = _decode_mp4(result.video)
    assert result.media_type == "video/mp4" and result.frames == 6 and result.fps == 12
    assert len(frames) == 6 and frames[0].shape == (48, 32, 3) and rate == 12
    assert all(frame.std() > 3 for frame in frames)  # pictures, not black frames
    assert seen[-1] == 1.0


def test_image_to_video(tiny_i2v_model, source) -> None:
    engine = _engine(tiny_i2v_model)
    try:
        assert engine.capabilities.tasks == {"image-to-video"}
        result, _ = _run(
            engine,
            task="image-to-video",
            width=32,
            height=32,
            steps=2,
            seed=5,
            num_frames=3,
            image=source,  # 64x32, resized to the video's 32x32
        )
        frames, _ = _decode_mp4(result.video)
        assert len(frames) == 3 and frames[0].shape == (32, 32, 3)
    finally:
        engine.close()


def test_cancel_stops_after_the_current_step(image_engine) -> None:
    seen: list[float] = []
    request = MediaRequest(task="text-to-image", prompt=PROMPT, width=32, height=32, steps=40, seed=1)
    with pytest.raises(MediaCancelled):
        image_engine.generate(request, seen.append, lambda: len(seen) > 0)
    assert seen == [pytest.approx(1 / 40)]  # one step ran, none after the cancel was seen
    with pytest.raises(MediaCancelled):  # cancelled before it starts: no step at all
        image_engine.generate(request, seen.append, lambda: True)
    assert len(seen) == 1
    result, _ = _run(image_engine, task="text-to-image", width=32, height=32, steps=1, seed=1)
    assert result.images  # the lock was released


@pytest.mark.parametrize(
    ("task", "fields", "reason"),
    [
        ("text-to-video", {}, "does not do text-to-video"),
        ("image-to-image", {}, "needs an input image"),
        ("inpaint", {"image": b"x"}, "needs a mask"),
        ("image-to-image", {"image": b"this is not a picture"}, "not a picture"),
    ],
)
def test_a_request_the_model_cannot_do_is_an_engine_error(image_engine, task, fields, reason) -> None:
    with pytest.raises(MediaEngineError, match=reason):
        _run(image_engine, task=task, width=32, height=32, steps=1, **fields)


def test_video_model_lacks_image_tasks(video_engine) -> None:
    with pytest.raises(MediaEngineError, match="does not do text-to-image"):
        _run(video_engine, task="text-to-image", width=32, height=32, steps=1)


def test_registry(tmp_path, tiny_image_model) -> None:
    assert build_media_engine(SimpleNamespace(media_engine="none")) is None
    with pytest.raises(MediaEngineError, match="unknown media engine 'dall-e'"):
        build_media_engine(SimpleNamespace(media_engine="dall-e"))
    with pytest.raises(MediaEngineError, match="VOXGATE_MEDIA_MODEL_PATH"):
        build_media_engine(SimpleNamespace(media_engine="diffusers"))
    with pytest.raises(MediaEngineError, match="model_index.json is missing"):
        build_media_engine(SimpleNamespace(media_engine="diffusers", media_model_path=str(tmp_path)))
    with pytest.raises(MediaEngineError, match="VOXGATE_MEDIA_REMOTE_URL"):
        build_media_engine(SimpleNamespace(media_engine="remote"))
    settings = SimpleNamespace(
        media_engine="diffusers", media_model_path=str(tiny_image_model), media_max_steps=9
    )
    engine = build_media_engine(settings)
    assert engine.capabilities.max_steps == 9 and engine.capabilities.device == "cpu"
    engine.close()


# --- the remote engine, against a studio-API service on 127.0.0.1 -------------------------------------------


@pytest.fixture(scope="module")
def studio(image_engine, video_engine):  # type: ignore[no-untyped-def]
    stub = StudioStub(image_engine, video_engine)
    stub.start()
    yield stub
    stub.stop()


@pytest.fixture(scope="module")
def remote(studio):  # type: ignore[no-untyped-def]
    engine = build_media_engine(MediaOptions(engine="remote", remote_url=studio.url, remote_timeout_s=60))
    yield engine
    engine.close()


def test_remote_image_is_the_remote_models(remote, image_engine) -> None:
    fields = {
        "task": "text-to-image",
        "width": 48,
        "height": 32,
        "steps": 2,
        "seed": 11,
        "guidance_scale": 4.0,
    }
    result, seen = _run(remote, **fields)
    local, _ = _run(image_engine, **fields)
    assert result.seed == 11 and seen[-1] == 1.0
    assert np.array_equal(_pixels(result.images[0]), _pixels(local.images[0]))


def test_remote_edit_with_mask(remote, source) -> None:
    fields = dict(task="inpaint", width=64, height=32, steps=3, seed=2, strength=1.0, image=source)
    result, _ = _run(remote, mask=_left_half_mask(64, 32), **fields)
    _assert_only_left_half_changed(result.images[0], source)


def test_remote_video_is_followed_as_a_job(remote, studio) -> None:
    result, seen = _run(
        remote, task="text-to-video", width=32, height=32, steps=3, seed=3, num_frames=4, fps=8
    )
    frames, rate = _decode_mp4(result.video)
    assert len(frames) == 4 and result.frames == 4 and rate == 8 == result.fps
    assert seen == sorted(seen) and seen[-1] == 1.0
    job_id = next(job for job, record in studio.jobs.items() if record.get("seed") == 3)
    assert studio.requests[-2:] == [f"GET /v1/jobs/{job_id}", f"GET /v1/jobs/{job_id}/files/video.mp4"]


def test_remote_errors_carry_the_remotes_reason(remote, source) -> None:
    with pytest.raises(MediaEngineError, match="400: this model does not do image-to-video"):
        _run(remote, task="image-to-video", width=32, height=32, steps=1, image=source)
    with pytest.raises(MediaEngineError, match="422: steps: at most 50 steps$"):
        _run(remote, task="text-to-image", width=32, height=32, steps=51)
    dead = build_media_engine(
        MediaOptions(engine="remote", remote_url="http://127.0.0.1:9", remote_timeout_s=5)
    )
    with pytest.raises(MediaEngineError, match="media service at http://127.0.0.1:9 failed"):
        _run(dead, task="text-to-image", width=32, height=32, steps=1)
    dead.close()


def test_remote_cancel_cancels_the_remote_job(remote, studio) -> None:
    seen: list[float] = []
    request = MediaRequest(task="text-to-video", prompt=PROMPT, width=32, height=32, steps=200, num_frames=4)
    started = time.monotonic()
    with pytest.raises(MediaCancelled):
        remote.generate(request, seen.append, lambda: any(p > 0 for p in seen))
    job_id = studio.requests[-1].rsplit("/", 1)[1]
    assert studio.requests[-1] == f"DELETE /v1/jobs/{job_id}"
    assert studio.wait_for_end(job_id, timeout_s=30) == "cancelled"
    assert time.monotonic() - started < 30
