"""Sessions stored by a running gateway: the API, and what survives a restart, a SIGTERM and a SIGKILL."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from gateway.client import VoiceClient
from tests.conftest import free_port
from tests.speech import piper_pcm, wer
from tests.voxgate_process import VoxgateProcess

QUESTION = "What is the capital of France?"


async def _stored(server, session_id: str, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    store = server.state.store
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        detail = await store.get_session(session_id)
        if detail is not None and detail["closed_at"] is not None:
            return detail
        await asyncio.sleep(0.1)
    raise AssertionError(f"session {session_id} was not stored as closed")


async def test_sessions_api_lists_reads_and_deletes(server) -> None:
    async with VoiceClient(server.url) as client:
        created = await client.wait_for("session.created")
        session_id = created["session_id"]
        await client.send_event({"type": "input_text", "text": "Say hello."})
        done = await client.wait_for("response.text.done", timeout=60)
        listed = httpx.get(
            f"{server.http}/v1/sessions", params={"transport": "websocket", "limit": 500}
        ).json()
        mine = [s for s in listed["sessions"] if s["session_id"] == session_id]
        assert mine and mine[0]["live"] is True and mine[0]["turn_count"] == 1
    stored = await _stored(server, session_id)
    assert stored["transport"] == "websocket" and stored["caller"].startswith("127.0.0.1:")
    assert stored["close_reason"] == "client_disconnected"
    [turn] = stored["turns"]
    assert turn["source"] == "text" and turn["user_text"] == "Say hello."
    assert turn["response_text"] == done["text"] and turn["timings"]

    response = httpx.delete(f"{server.http}/v1/sessions/{session_id}")
    assert response.status_code == 204
    assert httpx.get(f"{server.http}/v1/sessions/{session_id}").status_code == 404
    assert await server.state.store.get_session(session_id) is None
    again = httpx.delete(f"{server.http}/v1/sessions/{session_id}")
    assert again.status_code == 404 and again.json() == {"detail": "no such session"}


async def test_deleting_a_live_session_ends_it(server) -> None:
    async with VoiceClient(server.url) as client:
        created = await client.wait_for("session.created")
        response = httpx.delete(f"{server.http}/v1/sessions/{created['session_id']}")
        closed = await client.wait_for("session.closed", timeout=10)
    assert response.status_code == 204 and closed["reason"] == "deleted"
    await asyncio.sleep(0.5)  # past a write interval: the closing snapshot must not bring it back
    assert await server.state.store.get_session(created["session_id"]) is None


async def test_recordings_are_stored_and_deleted_with_the_session(server, runtime) -> None:
    from pipeline.audio import pcm16_to_float, read_wav
    from tests.speech import energy_dbfs

    question = piper_pcm(QUESTION)
    server.state.settings.record_audio = True
    try:
        async with VoiceClient(server.url) as client:
            session_id = (await client.wait_for("session.created"))["session_id"]
            await client.stream(question)
            silence = asyncio.create_task(client.silence(1.5))
            done = await client.wait_for("response.audio.done", timeout=60)
            await silence
    finally:
        server.state.settings.record_audio = False
    stored = await _stored(server, session_id)
    files = {r["kind"]: r for r in stored["recordings"]}
    assert set(files) == {"caller", "agent"}
    caller_pcm, caller_rate = read_wav(files["caller"]["path"])
    assert caller_rate == 16000
    # Everything the client sent (speech, then 1.5 s of silence) is in the caller track.
    streamed_s = len(question) / 2 / 16000 + 1.5
    assert abs(len(caller_pcm) / 2 / 16000 - streamed_s) < 0.1
    assert files["caller"]["duration_s"] == pytest.approx(len(caller_pcm) / 2 / 16000, abs=0.01)
    worker = runtime.stt_worker
    text = (await asyncio.to_thread(worker.call, runtime.stt.transcribe, pcm16_to_float(caller_pcm))).text
    assert wer(QUESTION, text) <= 0.2, text
    agent_pcm, agent_rate = read_wav(files["agent"]["path"])
    # The agent track holds the answer, after the silence that preceded it on the session clock.
    assert len(agent_pcm) / 2 / agent_rate * 1000 >= done["audio_ms"]
    assert energy_dbfs(agent_pcm[-done["audio_ms"] * agent_rate // 1000 * 2 :]) > -40
    assert energy_dbfs(agent_pcm[: int(0.5 * agent_rate) * 2]) < -60  # nobody spoke yet

    assert httpx.delete(f"{server.http}/v1/sessions/{session_id}").status_code == 204
    assert not any(Path(r["path"]).exists() for r in files.values())
    assert not Path(files["caller"]["path"]).parent.exists()


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "many"}, {"since": "yesterday"}, {"cursor": "bogus"}, {"colour": "red"}],
)
def test_bad_list_parameters_are_422(server, params) -> None:  # type: ignore[no-untyped-def]
    response = httpx.get(f"{server.http}/v1/sessions", params=params)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail and all("msg" in d for d in detail)


class ServerProcess(VoxgateProcess):
    """``voxgate serve`` as a real process, on its own data directory and database."""

    def __init__(self, data_dir: Path, database_url: str) -> None:
        # Short answers, and no drain goodbye (tests/test_drain.py has it): these tests are about storage.
        env = {"VOXGATE_DATABASE_URL": database_url, "VOXGATE_LLM_MAX_TOKENS": "16", "VOXGATE_DRAIN_GOODBYE": ""}
        super().__init__(data_dir, env)

    def session(self, session_id: str) -> dict:  # type: ignore[type-arg]
        response = httpx.get(f"{self.http}/v1/sessions/{session_id}", timeout=10)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.mark.slow
async def test_turns_survive_restart_sigterm_and_sigkill(db_url: str, tmp_path: Path) -> None:
    # 1. A voice session, ended by the caller, then a text session still open when SIGTERM arrives.
    first = ServerProcess(tmp_path, db_url).start()
    try:
        async with VoiceClient(first.url) as client:
            voice_id = (await client.wait_for("session.created"))["session_id"]
            await client.stream(piper_pcm(QUESTION))
            silence = asyncio.create_task(client.silence(1.5))
            heard = await client.wait_for("transcript.final", timeout=30)
            voice_done = await client.wait_for("response.audio.done", timeout=60)
            await silence
        async with VoiceClient(first.url) as client:
            open_id = (await client.wait_for("session.created"))["session_id"]
            await client.send_event({"type": "input_text", "text": "Say goodbye."})
            open_done = await client.wait_for("response.text.done", timeout=60)
            # SIGTERM at once: the last turn's final state must be flushed, not lost.
            assert first.stop(signal.SIGTERM) == 0
    finally:
        if first.proc and first.proc.poll() is None:
            first.proc.kill()

    second = ServerProcess(tmp_path, db_url).start()
    try:
        voice = second.session(voice_id)
        assert voice["transport"] == "websocket" and voice["close_reason"] == "client_disconnected"
        [turn] = voice["turns"]
        assert turn["source"] == "voice" and turn["user_text"] == heard["text"]
        assert wer(QUESTION, turn["user_text"]) <= 0.2, turn["user_text"]
        assert (
            turn["response_id"] == voice_done["response_id"]
            and turn["heard_text"] == turn["response_text"] != ""
        )
        assert turn["timings"]["voice_to_voice_ms"] > 0
        closed = second.session(open_id)
        assert closed["close_reason"] == "server_shutdown" and closed["closed_at"] is not None
        assert [t["response_text"] for t in closed["turns"]] == [open_done["text"]]

        # 2. SIGKILL one second after a turn finished: that turn is already stored.
        async with VoiceClient(second.url) as client:
            killed_id = (await client.wait_for("session.created"))["session_id"]
            await client.send_event({"type": "input_text", "text": "Tell me a joke."})
            killed_done = await client.wait_for("response.text.done", timeout=60)
            await asyncio.sleep(1.0)
            second.stop(signal.SIGKILL)
    finally:
        if second.proc and second.proc.poll() is None:
            second.proc.kill()

    # Only storage is read from here on: the engines need not finish loading (that took 20 s of each run).
    third = ServerProcess(tmp_path, db_url).start(ready=False)
    try:
        killed = third.session(killed_id)
        # It never closed (the process died under it); the next start closes it at its last sign of life.
        assert killed["close_reason"] == "server_lost"
        assert killed["closed_at"] == killed["turns"][-1]["started_at"]
        assert [t["response_text"] for t in killed["turns"]] == [killed_done["text"]]
        listed = httpx.get(f"{third.http}/v1/sessions").json()["sessions"]
        assert {voice_id, open_id, killed_id} <= {s["session_id"] for s in listed}
    finally:
        third.kill()  # still loading its engines, which a SIGTERM would wait for


async def test_retention_sweep_runs_on_its_own(server, tmp_path: Path) -> None:
    """With retention_days set, the app's periodic sweep deletes old sessions (and their recordings)."""
    from gateway.app import create_app
    from gateway.settings import Settings
    from storage.store import Store
    from tests.conftest import LiveServer

    url = f"sqlite+aiosqlite:///{tmp_path / 'retention.db'}"
    seed = await Store.open(url)
    now = time.time()
    old_recording = tmp_path / "old" / "caller.wav"
    old_recording.parent.mkdir()
    old_recording.write_bytes(b"RIFF")
    for session_id, age_days in (("old", 40), ("recent", 1)):
        seed.writer.upsert(
            "sessions",
            {"id": session_id, "transport": "websocket", "created_at": now - age_days * 86400, "closed_at": None,
             "close_reason": None, "caller": None, "flow_id": None, "flow_version": None, "outcome": None,
             "dropped_input_ms": 0, "turn_count": 0, "extra": {}},
        )  # fmt: skip
    seed.writer.upsert(
        "recordings",
        {"id": "old-caller", "session_id": "old", "path": str(old_recording), "kind": "caller", "format": "wav",
         "sample_rate": 16000, "duration_s": 1.0, "created_at": now},
    )  # fmt: skip
    await seed.close()
    settings = Settings(
        data_dir=tmp_path,
        database_url=url,
        retention_days=30,
        retention_interval_s=0.2,
        load_example_flows=False,
    )
    live = LiveServer(create_app(settings, server.state.runtime), free_port(), settings)
    await asyncio.to_thread(live.start)
    try:
        deadline = time.monotonic() + 10
        while httpx.get(f"{live.http}/v1/sessions/old").status_code != 404:
            assert time.monotonic() < deadline, "the retention sweep did not delete the old session"
            await asyncio.sleep(0.2)
        assert httpx.get(f"{live.http}/v1/sessions/recent").status_code == 200
        assert not old_recording.exists()
    finally:
        await asyncio.to_thread(live.stop)
