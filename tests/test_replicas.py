"""Two replicas for real (issue 15): two ``voxgate serve`` processes sharing PostgreSQL and Redis.

A session started on one is readable from the other (live, then with its turn), a media job submitted on one
is readable on the other (the jobs go to a Redis queue that no worker reads here: the job stays queued, which is
what makes the per-key job limit checkable across replicas), and the per-key limits are shared: requests per
minute and jobs. Kept lean: typed turns and tiny answer budgets, the two servers started side by side on a
database migrated beforehand, and the replica that is only read from with remote engines (nothing to load:
this test never asks it for speech); the one that answers a typed turn loads only its LLM, eSpeak and the VAD.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.client import VoiceClient
from tests.voxgate_process import VoxgateProcess

redis = pytest.importorskip("redis")

REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN = "replicas-admin-token"


def _wait_ready(servers: list[VoxgateProcess], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    for server in servers:
        while True:
            assert server.alive, server.log_tail()
            try:
                if httpx.get(f"{server.http}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.1)


def _poll(fetch: Any, done: Any, timeout_s: float = 10) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, value
        time.sleep(0.1)


async def test_two_replicas_share_sessions_jobs_and_limits(postgres_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL} (the replica test needs one)")
    run = uuid.uuid4().hex[:10]
    env = {
        "VOXGATE_DATABASE_URL": postgres_url,
        "VOXGATE_REDIS_URL": REDIS_URL,
        "VOXGATE_LIMITS_REDIS_PREFIX": f"vgtest-{run}",
        "VOXGATE_ADMIN_TOKEN": ADMIN,
        "VOXGATE_AUTH": "on",
        "VOXGATE_LLM_MAX_TOKENS": "12",
        "VOXGATE_TURN_ENGINE": "none",
        "VOXGATE_LOAD_EXAMPLE_FLOWS": "false",
        "VOXGATE_MEDIA_ENGINE": "diffusers",
        "VOXGATE_MEDIA_QUEUE": "redis",
        "VOXGATE_MEDIA_REDIS_URL": REDIS_URL,
        "VOXGATE_MEDIA_REDIS_QUEUE": f"vgtest-media-{run}",
    }
    remote = {f"VOXGATE_{role}_ENGINE": "openai" for role in ("STT", "LLM", "TTS")}
    remote.update({f"VOXGATE_{role}_BASE_URL": "http://127.0.0.1:9/v1" for role in ("STT", "LLM", "TTS")})
    # a answers typed turns: the embedded LLM and eSpeak, and no Whisper to load (a typed turn needs no STT).
    light = {
        "VOXGATE_STT_ENGINE": "openai",
        "VOXGATE_STT_BASE_URL": "http://127.0.0.1:9/v1",
        "VOXGATE_TTS_ENGINE": "espeak",
    }
    a = VoxgateProcess(tmp_path / "a", {**env, **light, "VOXGATE_INSTANCE_ID": "replica-a"})
    b = VoxgateProcess(tmp_path / "b", {**env, **remote, "VOXGATE_INSTANCE_ID": "replica-b"})
    try:
        from storage.store import Store

        await (await Store.open(postgres_url)).close()  # migrated once: the two then start at the same time
        await asyncio.gather(asyncio.to_thread(a.start, ready=False), asyncio.to_thread(b.start, ready=False))
        admin = {"authorization": f"Bearer {ADMIN}"}
        made = httpx.post(
            f"{a.http}/v1/keys",
            json={"name": "replicas", "scopes": ["realtime", "media"], "limits": {"jobs": 1}},
            headers=admin,
        )
        assert made.status_code == 201, made.text
        auth = {"authorization": f"Bearer {made.json()['key']}"}
        limited = httpx.post(
            f"{b.http}/v1/keys",
            json={"name": "limited", "scopes": ["realtime"], "limits": {"requests_per_minute": 3}},
            headers=admin,
        ).json()["key"]
        _wait_ready([a, b])

        # A session on a, read from b while it is live and once its turn is stored.
        token = httpx.post(f"{a.http}/v1/sessions/token", headers=auth).json()["token"]
        async with VoiceClient(f"{a.url}?token={token}") as voice:
            session_id = (await voice.wait_for("session.created"))["session_id"]
            live = _poll(
                lambda: httpx.get(f"{b.http}/v1/sessions/{session_id}", headers=auth),
                lambda r: r.status_code == 200,
            )
            assert live.json()["transport"] == "websocket"
            await voice.send_event({"type": "input_text", "text": "Say hello."})
            await voice.wait_for("response.audio.done", timeout=60)
            await voice.send_event({"type": "session.close"})
            await voice.wait_for("session.closed", timeout=10)
        stored = _poll(
            lambda: httpx.get(f"{b.http}/v1/sessions/{session_id}", headers=auth).json(),
            lambda s: s.get("closed_at") is not None and len(s.get("turns", [])) == 1,
        )
        assert stored["turns"][0]["user_text"] == "Say hello." and stored["turns"][0]["response_text"]

        # A job submitted on a is b's to read; the key's one open job is counted on b too.
        body = {"prompt": "waves", "resolution": "64x64", "num_frames": 3, "steps": 2, "seed": 4}
        job = httpx.post(f"{a.http}/video/generate", json=body, headers=auth)
        assert job.status_code == 202, job.text
        seen = httpx.get(f"{b.http}/v1/jobs/{job.json()['id']}", headers=auth)
        assert seen.status_code == 200 and seen.json()["status"] == "queued", seen.text
        second = httpx.post(f"{b.http}/video/generate", json=body, headers=auth)
        assert second.status_code == 429 and second.headers["retry-after"], second.text
        assert "1 media job" in second.json()["detail"]
        usage = _poll(  # the session's and the job's usage rows, read on the other replica
            lambda: httpx.get(f"{b.http}/v1/usage", headers=auth).json()["totals"],
            lambda t: t["sessions"] == 1 and t["jobs"] == 1,
        )
        assert usage["llm_tokens"] > 0 and usage["tts_chars"] > 0 and usage["audio_out_s"] > 0, usage

        # Requests per minute, counted in Redis by both.
        left = 60 - time.time() % 60
        if left < 6:  # whole-minute windows: do not straddle two
            time.sleep(left + 0.05)
        lim = {"authorization": f"Bearer {limited}"}
        codes = [httpx.get(f"{s.http}/v1/sessions", headers=lim).status_code for s in (a, b, a, b)]
        assert codes == [200, 200, 200, 429], codes
        assert int(httpx.get(f"{a.http}/v1/sessions", headers=lim).headers["retry-after"]) >= 1
    finally:
        for server in (a, b):
            if server.alive:
                server.stop()
        for name in client.scan_iter(match=f"vgtest-*{run}*", count=500):
            client.delete(name)
        client.close()
