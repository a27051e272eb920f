# ruff: noqa: F811 (the tiny-model fixtures are imported by name, and pytest passes them by that name)
"""Redis mode (issue 14): the gateway only queues; a separate ``voxgate worker`` process runs the job on the
real diffusers engine (tiny pipeline), and the result is fetched from the gateway. Against the machine's
Redis on 127.0.0.1:6379, each run on its own stream name.

The gateway runs in this process (fake voice engines: the media path is what is tested); the worker is a real
``python -m gateway.cli worker`` sharing its data directory (the SQLite database and the result files).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("diffusers")
redis = pytest.importorskip("redis")

from tests.conftest import LiveServer, free_port  # noqa: E402
from tests.media_tiny import tiny_video_model  # noqa: E402, F401
from tests.test_media_jobs import start_slow_video, wait_for_job  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[1]


class WorkerProcess:
    """``voxgate worker`` as a real process; ready once it has announced its engine in Redis."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = {**os.environ, "VOXGATE_LOG_LEVEL": "warning", **env}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, client: redis.Redis, key: str, timeout_s: float = 120) -> WorkerProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "worker"],
                env=self.env,
                stdout=out,
                stderr=out,
                cwd=ROOT,
            )
        deadline = time.monotonic() + timeout_s
        while not client.exists(key):
            assert self.proc.poll() is None, f"the worker exited {self.proc.returncode}: {self.tail()}"
            assert time.monotonic() < deadline, f"the worker did not get ready: {self.tail()}"
            time.sleep(0.1)
        return self

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture(scope="module")
def redis_setup(
    tmp_path_factory: pytest.TempPathFactory, tiny_video_model: Path
) -> Iterator[tuple[httpx.Client, WorkerProcess, LiveServer]]:
    from gateway.app import create_app
    from gateway.settings import Settings
    from pipeline.runtime import Runtime
    from tests.test_session_core import FakeLLM, FakeSTT, FakeTTS, FakeVAD

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL} (the Redis-mode tests need one)")
    queue = f"voxgate-test-{uuid.uuid4().hex[:12]}"
    data_dir = tmp_path_factory.mktemp("media-redis")
    media = {
        "media_engine": "diffusers",
        "media_model_path": str(tiny_video_model),
        "media_queue": "redis",
        "media_redis_url": REDIS_URL,
        "media_redis_queue": queue,
    }
    settings = Settings(data_dir=data_dir, **media)
    runtime = Runtime(vad=FakeVAD(), stt=FakeSTT(), llm=FakeLLM("{}", delay_s=0.0), tts=FakeTTS())
    live = LiveServer(create_app(settings, runtime=runtime), free_port(), settings)
    live.start()  # the gateway first: it migrates the shared database and creates the stream's group
    env = {"VOXGATE_DATA_DIR": str(data_dir), **{f"VOXGATE_{k.upper()}": v for k, v in media.items()}}
    worker = WorkerProcess(env, data_dir / "worker.log")
    try:
        worker.start(client, f"{queue}:capabilities")
        with httpx.Client(base_url=live.http, timeout=60) as http:
            yield http, worker, live
    finally:
        code = worker.stop()
        live.stop()
        client.delete(queue, f"{queue}:capabilities")
        client.close()
    assert code == 0, f"the worker did not stop cleanly ({code}): {worker.tail()}"


def test_a_job_queued_at_the_gateway_runs_in_the_worker(
    redis_setup: tuple[httpx.Client, WorkerProcess, LiveServer],
) -> None:
    import av

    http, worker, live = redis_setup
    assert live.app.state.media_jobs.runner is None, "in Redis mode the gateway runs no jobs itself"
    # The gateway validates against what the worker announced (a text-to-video model: no image tasks).
    refused = http.post("/image/generate", json={"prompt": "x", "width": 64, "height": 64})
    assert refused.status_code == 400 and "text-to-video" in refused.json()["detail"]

    created = http.post(
        "/video/generate",
        json={"prompt": "waves", "resolution": "64x64", "num_frames": 3, "steps": 2, "seed": 4},
    )
    assert created.status_code == 202, created.text
    job = wait_for_job(http, created.json()["id"])
    assert job["status"] == "succeeded", (job, worker.tail())
    assert job["result"]["worker"].endswith(f":{worker.proc.pid}"), job["result"]  # type: ignore[union-attr]
    mp4 = http.get(job["result_urls"][0])
    assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(mp4.content)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 3 and (frames[0].width, frames[0].height) == (64, 64)
    assert np.asarray(frames[0].to_ndarray(format="rgb24")).std() > 1

    # The image-to-video shape too travels with its upload in the message (the worker reads no gateway file).
    picture = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 40, 40)).save(picture, format="PNG")
    i2v = http.post(
        "/video/image-to-video",
        files={"file": ("a.png", picture.getvalue(), "image/png")},
        data={"num_frames": "2"},
    )
    assert i2v.status_code == 400 and "image-to-video" in i2v.json()["detail"]  # the model does not do it


def test_a_cancel_at_the_gateway_reaches_the_running_worker(
    redis_setup: tuple[httpx.Client, WorkerProcess, LiveServer],
) -> None:
    http, worker, _ = redis_setup
    job = start_slow_video(http, steps=60)
    cancelled_at = time.monotonic()
    assert http.delete(f"/v1/jobs/{job['id']}").json()["cancel_requested"]
    ended = wait_for_job(http, job["id"])
    assert ended["status"] == "cancelled", ended
    # The flag travels through the database: the worker reads it within its tick, then stops at a step's end.
    assert ended["progress"] < 0.5
    assert time.monotonic() - cancelled_at < 10
