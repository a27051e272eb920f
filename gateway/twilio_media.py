"""``WS /twilio/media``: a phone call over Twilio Media Streams, as a session.

The transport adapter for Twilio: JSON text frames in (``connected``, ``start``, ``media``, ``dtmf``,
``mark``, ``stop``), ``media`` / ``mark`` / ``clear`` out. The session is created at ``start`` (the stream's
ids and custom parameters arrive there) with mu-law 8 kHz both ways, so agent audio leaves as 160-byte
(20 ms) frames. A ``mark`` follows every group of frames; Twilio echoes it once played, and that is what the
session is told the caller heard. A barge-in sends ``clear`` and forgets the pending marks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.call_records import save_call_recording
from gateway.flow_agent import FlowNotAvailable, attach_flow, load_stored_flow
from gateway.settings import session_config
from gateway.twilio_control import TwilioCallControl, twilio_gate
from pipeline.outbox import OutAudio
from pipeline.session import Session
from telephony.marks import MarkTracker
from telephony.provider import DtmfDigit, MarkEchoed, MediaChunk, ProtocolError, StreamStarted, StreamStopped
from telephony.twilio_stream import TwilioStreamState

log = logging.getLogger("voxgate.twilio")

MARK_EVERY_MS = 100  # one mark per 100 ms of audio: "heard" is known to within 100 ms
MARK_WAIT_S = 1.0  # a provider that stops echoing marks must not stall the call


class TwilioCall:
    """One Twilio media WebSocket: parses, checks and feeds the session; paces and marks what goes out."""

    def __init__(self, ws: WebSocket, state: Any) -> None:
        self.ws = ws
        self.state = state
        self.stream = TwilioStreamState()
        self.marks = MarkTracker()
        self.session: Session | None = None
        self.stream_sid: str | None = None
        self._sent_ms: dict[str, float] = {}
        self._unmarked_ms = 0.0
        self._last_response: str | None = None
        self._echo = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    async def run(self) -> None:
        reason = "stream_lost"
        try:
            reason = await self._read()
        finally:
            if self.session is not None:
                await self.session.close(reason)
                if self._writer is not None:
                    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                        await asyncio.wait_for(asyncio.shield(self._writer), timeout=2.0)
                    self._writer.cancel()
                self.state.sessions.remove(self.session)
                self.state.runtime.metrics.active_sessions.labels("twilio").dec()
                await self._record_call(status="completed")
                await save_call_recording(self.state, self.session, self._call["sid"])

    # -- inbound ----------------------------------------------------------------------------------------------

    async def _read(self) -> str:
        while True:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return "stream_lost"
            if message["type"] == "websocket.disconnect":
                return "stream_lost"
            text = message.get("text")
            if text is None:
                self._bad("binary_frame", "Twilio media streams send JSON text frames only")
                continue
            try:
                event = self.stream.receive(text)
            except ProtocolError as exc:
                self._bad(exc.code, str(exc))
                continue
            if self.session is not None and self.session.closed.is_set():
                return self.session.close_reason or "flow_ended"
            if isinstance(event, StreamStarted):
                if not await self._start(event):
                    return "refused"
            elif isinstance(event, MediaChunk):
                assert self.session is not None
                self.session.push_audio(self.stream.caller_audio(event))
            elif isinstance(event, DtmfDigit):
                assert self.session is not None
                await self.session.dtmf(event.digit)
            elif isinstance(event, MarkEchoed):
                self._mark_echoed(event.name)
            elif isinstance(event, StreamStopped):
                return "caller_hangup"

    def _bad(self, code: str, message: str) -> None:
        # Logged and counted; the call goes on (Twilio cannot read an error event anyway).
        log.warning("twilio stream %s: %s: %s", self.stream_sid, code, message)
        if self.state.runtime is not None:
            self.state.runtime.metrics.errors.labels(f"twilio_{code}").inc()

    async def _start(self, start: StreamStarted) -> bool:
        state = self.state
        if not state.ready.is_set() or not state.sessions.try_reserve():
            log.warning("twilio stream %s refused: gateway busy or not ready", start.stream_id)
            return False
        self.stream_sid = start.stream_id
        params = dict(start.custom_parameters)
        config = session_config(
            state.settings, input_rate=8000, output_rate=8000, encoding="mulaw", transport="twilio"
        )
        config.recording_dir = str(state.settings.recordings_dir)  # every call is recorded (see docs)
        session = Session(state.runtime, config, recorder=state.recorder)
        session.caller = params.get("from") or None
        flow_id = params.get("flow") or None
        if flow_id:
            try:
                flow = await load_stored_flow(state, flow_id, params.get("flow_version"))
            except FlowNotAvailable as exc:
                log.error("twilio call %s: %s; answering without a flow", start.call_id, exc.message)
            else:
                control = TwilioCallControl(state, start.call_id)
                attach_flow(session, state, flow, call=control)
        self.session = session
        state.sessions.add(session)
        state.runtime.metrics.active_sessions.labels("twilio").inc()
        self._call = {"sid": start.call_id, "from": params.get("from"), "to": params.get("to")}
        self._call["direction"] = params.get("direction", "inbound")
        await session.start()
        await self._record_call(status="in-progress")
        self._writer = asyncio.create_task(self._write(), name=f"{session.id}-twilio-writer")
        return True

    def _mark_echoed(self, name: str) -> None:
        confirmed = self.marks.echoed(name)
        self._echo.set()
        if confirmed is not None and self.session is not None:
            response_id, played_ms = confirmed
            self.session.ack_played(response_id, played_ms)

    # -- outbound ---------------------------------------------------------------------------------------------

    async def _write(self) -> None:
        assert self.session is not None and self.stream_sid is not None
        provider, sid = self.stream.provider, self.stream_sid
        lead_ms = self.session.config.lead_ms
        while True:
            item = await self.session.outbox.get()
            if item is None:
                return
            if isinstance(item, OutAudio):
                await self._wait_for_playback(lead_ms)
                await self.ws.send_text(provider.media(sid, item.payload))
                self._last_response = item.response_id
                self._sent_ms[item.response_id] = self._sent_ms.get(item.response_id, 0.0) + item.ms
                self._unmarked_ms += item.ms
                if self._unmarked_ms >= MARK_EVERY_MS:
                    await self._send_mark(item.response_id)
            elif item.get("type") == "response.interrupted":
                # The session already stopped its own audio; Twilio must drop what it buffered too.
                await self.ws.send_text(provider.clear(sid))
                self.marks.clear()
                self._unmarked_ms = 0.0
            elif item.get("type") == "response.audio.done" and self._unmarked_ms > 0 and self._last_response:
                await self._send_mark(self._last_response)

    async def _send_mark(self, response_id: str) -> None:
        assert self.stream_sid is not None
        name = self.marks.sent(response_id, int(self._sent_ms[response_id]))
        self._unmarked_ms = 0.0
        await self.ws.send_text(self.stream.provider.mark(self.stream_sid, name))

    async def _wait_for_playback(self, lead_ms: int) -> None:
        # The pacer keeps audio at real time; this keeps it within lead_ms (plus one mark group) of what
        # Twilio has actually played, should Twilio's playback fall behind.
        while self.marks.outstanding() > lead_ms + MARK_EVERY_MS:
            self._echo.clear()
            try:
                await asyncio.wait_for(self._echo.wait(), MARK_WAIT_S)
            except TimeoutError:
                log.warning("twilio stream %s: no mark echoed for %.1f s", self.stream_sid, MARK_WAIT_S)
                return

    async def _record_call(self, status: str) -> None:
        call = getattr(self, "_call", None)
        if call is None or self.state.store is None or self.session is None:
            return
        session = self.session
        values = {"session_id": session.id, "status": status, "ended_at": session.closed_at}
        defaults = {"direction": call["direction"], "from_number": call["from"], "to_number": call["to"]}
        stats = {"stream_sid": self.stream_sid, "stream_stats": dataclasses.asdict(self.stream.stats)}
        try:
            # The session row must exist first (foreign key): write what the session has queued.
            await self.state.store.writer.flush()
            await self.state.store.merge_call(
                call["sid"], values, extra=stats, defaults=defaults, now=session.created_at
            )
        except Exception:
            log.exception("call %s: storing the call failed", call["sid"])


async def twilio_media_endpoint(ws: WebSocket) -> None:
    state = ws.app.state.voxgate
    refusal = twilio_gate(state, ws.url.path + (f"?{ws.url.query}" if ws.url.query else ""), ws.headers, None)
    if refusal is not None:
        log.warning("twilio media socket refused: %s", refusal)
        await ws.close(code=1008)  # before accept: the client sees HTTP 403
        return
    await ws.accept()
    await TwilioCall(ws, state).run()
