"""The gateways behind the studio browser test (tests/browser/studio_in_netns.py): one with the shipped voice,
Whisper and the image model, and, as a gateway has one media_model_path, a light second one for the video model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from run_in_netns import BASE, PORT
from run_in_netns import start_server as start_voxgate

API_KEY = "studio-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
VIDEO_PORT = PORT + 1  # a second gateway when the video model is another folder than the image model
VIDEO_BASE = f"http://127.0.0.1:{VIDEO_PORT}"
TIMINGS: dict[str, float] = {}  # seconds each part took, into the results (the test's budget is ~40 s)


def media_env(model: str) -> dict[str, str]:
    """A gateway with the API key and ``model`` as its media engine; no LLM or turn model is loaded (the
    studio does not use them: the LLM is a remote one nobody calls)."""
    return {
        "VOXGATE_API_KEY": API_KEY,
        "VOXGATE_MEDIA_ENGINE": "diffusers",
        "VOXGATE_MEDIA_MODEL_PATH": model,
        "VOXGATE_MEDIA_MAX_WIDTH": "256",
        "VOXGATE_MEDIA_MAX_HEIGHT": "256",
        "VOXGATE_LLM_ENGINE": "openai",
        "VOXGATE_LLM_BASE_URL": "http://127.0.0.1:9/v1",
        "VOXGATE_TURN_ENGINE": "none",
    }


def video_gateway_env(model: str, data_dir: Path) -> dict[str, str]:
    """The video model's gateway: a media node that speaks with espeak-ng and hears through the first gateway
    (a remote STT), so it loads little besides the pipeline."""
    return {
        **media_env(model),
        "VOXGATE_PORT": str(VIDEO_PORT),
        "VOXGATE_DATA_DIR": str(data_dir),
        "VOXGATE_STT_ENGINE": "openai",
        "VOXGATE_STT_BASE_URL": f"{BASE}/v1",
        "VOXGATE_STT_API_KEY": API_KEY,
        "VOXGATE_TTS_ENGINE": "espeak",
    }


class Servers:
    """The gateway under test, and a second one for the video model when that is another folder (a gateway has
    one media_model_path). Both load at once; run_pages stops them through terminate() and wait()."""

    def __init__(self) -> None:
        self.first: subprocess.Popen[bytes] | None = None
        self.second: subprocess.Popen[bytes] | None = None
        self.second_log: Path | None = None

    def start(self, data_dir: Path) -> Servers:
        started = time.monotonic()
        image_model, video_model = os.environ["STUDIO_IMAGE_MODEL"], os.environ["STUDIO_VIDEO_MODEL"]
        if video_model != image_model:
            video_dir = data_dir / "video-gateway"
            video_dir.mkdir()
            self.second_log = video_dir / "server.log"
            env = {**os.environ, **video_gateway_env(video_model, video_dir)}
            log = self.second_log.open("wb")
            self.second = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve"], env=env, stdout=log, stderr=log
            )
        self.first = start_voxgate(data_dir, media_env(image_model))
        TIMINGS["gateway_ready"] = round(time.monotonic() - started, 1)
        media_ready(BASE)
        if self.second is not None:
            wait_ready(VIDEO_BASE)
            media_ready(VIDEO_BASE)
        TIMINGS["media_ready"] = round(time.monotonic() - started, 1)
        return self

    def terminate(self) -> None:
        for server in (self.first, self.second):
            if server is not None:
                server.terminate()

    def wait(self, timeout: float) -> None:
        for server in (self.first, self.second):
            if server is not None:
                server.wait(timeout=timeout)


def wait_until(base: str, answered: Any, what: str, timeout_s: float = 120) -> None:
    """Poll ``answered(base)`` (True once the gateway at ``base`` is there) until it is, or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if answered(base):
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.3)
    raise RuntimeError(f"{base}: {what} did not happen in {timeout_s:.0f} s")


def wait_ready(base: str) -> None:
    wait_until(base, lambda b: httpx.get(f"{b}/health/ready", timeout=1).status_code == 200, "ready")


def media_ready(base: str) -> None:
    """The media engine loads in a thread after /health/ready; until it has, media routes answer 503. An empty
    body is refused (422) only by a loaded engine's route, and costs nothing."""

    def loaded(b: str) -> bool:
        return httpx.post(f"{b}/image/generate", json={}, headers=AUTH, timeout=5).status_code != 503

    wait_until(base, loaded, "the media engine loading")
