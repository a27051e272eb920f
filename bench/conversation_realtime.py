"""The conversation bench's turns over ``/v1/realtime`` (OpenAI's Realtime API: JSON events, 24 kHz PCM16 in
base64), for ``bench/conversation.py --protocol realtime``.

:class:`RealtimeClient` looks to :class:`bench.mic.Microphone` like :class:`gateway.client.VoiceClient`: the
microphone's 20 ms frames go out as ``input_audio_buffer.append`` events, and ``received`` records each event
and each ``response.output_audio.delta``'s audio with its arrival time. The figure compared with ``/v1/voice``
is the time from the ``speech_stopped`` that ended the caller's turn to the first audio of the answer:
``input_audio_buffer.speech_stopped`` -> the first ``response.output_audio.delta`` here, ``speech.stopped`` ->
the first binary audio frame there (docs/protocol.md), both on arrival at the client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import websockets

from bench.mic import Microphone, RecordingSocket, voiced_audio_or_end
from tests.speech import wer

RATE = 24000


class RealtimeClient(RecordingSocket):
    """One ``/v1/realtime`` WebSocket, recorded as it arrives (the VoiceClient interface the bench uses)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, RATE)

    async def _read(self) -> None:
        try:
            async for message in self._ws:
                now = time.monotonic()
                event = json.loads(message)
                if event["type"] == "response.output_audio.delta":
                    self.received.audio.append((now, base64.b64decode(event["delta"])))
                    event = {**event, "delta": ""}  # the audio is kept once, in received.audio
                self.received.events.append((now, event))
        except websockets.ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None

    async def send_event(self, event: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(event))

    async def send_raw(self, data: bytes) -> None:
        await self.send_event({"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode()})

    async def wait_for(
        self, type_: str, after: int = 0, timeout: float = 60.0
    ) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, e in self.received.events[after:]:
                if e["type"] == type_:
                    return t, e
            if self.close_code is not None:
                raise ConnectionError(f"socket closed ({self.close_code}) before {type_}")
            await asyncio.sleep(0.005)
        seen = [e["type"] for _, e in self.received.events[after:] if not e["type"].endswith(".delta")]
        raise TimeoutError(f"no {type_} within {timeout} s; since the turn: {seen[-12:]}")


def realtime_url(voice_url: str) -> str:
    """``ws://host:port/v1/realtime?model=voxgate`` from the bench's ``/v1/voice`` URL."""
    return voice_url.split("/v1/", 1)[0] + "/v1/realtime?model=voxgate"


async def realtime_turns(
    url: str, run: int, questions: list[str], audio: dict[str, bytes], turns: int, gap: float,
    answer_timeout: float, turn_detection: str | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """``turns`` spoken questions in one Realtime session (``audio``: 24 kHz PCM16 per question); one row each:
    speech_stopped -> first audio delta, voice-to-voice, the transcript and its WER, the answer."""
    rows: list[dict[str, Any]] = []
    async with RealtimeClient(realtime_url(url)) as client:
        await client.wait_for("session.created")
        if turn_detection is not None:  # else the session's own: voxgate's, as on /v1/voice
            detection = {"type": turn_detection}
            await client.send_event({"type": "session.update", "session": {
                "type": "realtime", "audio": {"input": {"turn_detection": detection}}}})  # fmt: skip
            await client.wait_for("session.updated")
        mic = Microphone(client)  # type: ignore[arg-type]  # the VoiceClient interface it uses
        await asyncio.sleep(1.0)
        try:
            for i in range(turns):
                question = questions[i % len(questions)]
                row: dict[str, Any] = {
                    "run": run,
                    "turn": i + 1,
                    "question": question,
                    "protocol": "realtime",
                }
                try:
                    await _turn(client, mic, audio[question], row, answer_timeout)
                except (TimeoutError, ConnectionError) as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"
                    await client.send_event({"type": "response.cancel"})
                rows.append(row)
                print(_row(row), flush=True)
                await asyncio.sleep(gap)
        finally:
            await mic.close()
    return rows


async def _turn(
    client: RealtimeClient, mic: Microphone, pcm: bytes, row: dict[str, Any], timeout: float
) -> None:
    mark = len(client.received.events)
    _, t_last = await mic.say(pcm)
    t_created, created = await client.wait_for("response.created", mark, timeout=20)
    rid = created["response"]["id"]
    t_done, done = await client.wait_for("response.done", mark, timeout=timeout)
    events = client.received.events[mark:]
    stops = [t for t, e in events if e["type"] == "input_audio_buffer.speech_stopped" and t <= t_created]
    first = next((t for t, e in events if e["type"] == "response.output_audio.delta" and e["response_id"] == rid),
                 None)  # fmt: skip
    if stops and first is not None:
        row["stopped_to_audio_ms"] = round((first - stops[-1]) * 1000, 1)
    voiced, _ = await voiced_audio_or_end(client, t_last, rid, mark, timeout=1.0)  # type: ignore[arg-type]
    if voiced is not None:
        row["voice_to_voice_ms"] = round((voiced - t_last) * 1000, 1)
    said = next((e for _, e in events if e["type"] == "conversation.item.input_audio_transcription.completed"),
                None)  # fmt: skip
    if said is not None:
        row["transcript"] = said["transcript"]
        row["wer"] = round(wer(row["question"], said["transcript"]), 3)
    output = done["response"]["output"]
    row["answer"] = (output[0]["content"] or [{}])[0].get("transcript") or "" if output else ""
    row["status"] = done["response"]["status"]
    # The caller hears the answer out: the audio left in real time, at most lead_ms ahead.
    await asyncio.sleep(max(0.0, 0.2 - (time.monotonic() - t_done)))


def _row(row: dict[str, Any]) -> str:
    def ms(key: str) -> str:
        return f"{row[key]:.0f}" if key in row else "-"

    return (
        f"{row['run']:>3} {row['turn']:>4} {ms('stopped_to_audio_ms'):>6} {ms('voice_to_voice_ms'):>6}  "
        f"{row.get('transcript', '')[:40]!r} -> {row.get('answer', '')[:60]!r} {row.get('error') or ''}"
    )


HEADER = f"{'run':>3} {'turn':>4} {'stop>a':>6} {'v2v':>6}  transcript -> answer   (/v1/realtime)"
