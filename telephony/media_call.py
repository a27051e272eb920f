"""A phone call over a provider's media-stream WebSocket, as a session; provider-neutral.

The provider (a `TelephonyProvider`) parses its text frames into neutral events (connected, start, media,
DTMF, mark echo, stop) and builds the outbound media / mark / clear frames. The session is created at start
(the stream's ids and custom parameters arrive there) with mu-law 8 kHz both ways, so agent audio leaves as
160-byte (20 ms) frames through :class:`~telephony.marks.MarkedAudio`: a mark follows every group of frames;
the provider echoes it once played, and that is what the session is told the caller heard and what the pacer
is told was played. A barge-in sends clear and forgets the pending marks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway import limits
from gateway.agent.flow_agent import FlowNotAvailable, attach_flow, load_stored_flow
from gateway.call_records import save_call_recording
from gateway.logs import bind_log_context
from gateway.protocol import flow_request
from gateway.settings import session_config
from gateway.state import AppState, app_state
from gateway.transports.base import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    Refusal,
    Transport,
)
from gateway.webhooks.publish import publish_call_completed
from pipeline.events import ResponseAudioDone, ServerEvent
from pipeline.session import Session, SessionError
from telephony.call_provider import TelephonyProvider
from telephony.consent import ConsentAnnouncement
from telephony.marks import MarkedAudio
from telephony.provider import DtmfDigit, MarkEchoed, MediaChunk, ProtocolError, StreamStarted, StreamStopped
from telephony.stream_state import StreamState

log = logging.getLogger("voxgate.telephony")

_CLOSE_CODES = {
    "refused": CLOSE_TRY_AGAIN,
    "start_timeout": CLOSE_POLICY,
    "internal_error": CLOSE_INTERNAL_ERROR,
}


class MediaStreamCall(Transport):
    """One provider media WebSocket: parses, checks and feeds the session; marks what goes out.

    The socket arrives holding a place in ``state.sessions`` (a reservation): a stream that has not sent
    its start yet still counts toward ``max_sessions``, and must send it within the provider's start timeout.
    """

    def __init__(self, ws: WebSocket, state: AppState, provider: TelephonyProvider) -> None:
        self.name = provider.name  # labels metrics and logs, names the session's transport
        super().__init__(state)
        self.ws = ws
        self.provider = provider
        self.stream = StreamState(provider.stream)
        self.stream_sid: str | None = None
        self.sink: MarkedAudio | None = None
        self.consent: ConsentAnnouncement | None = None

    async def run(self) -> None:
        """Serve the socket (accepting it) until the stream ends; releases the reservation or session."""
        try:
            await self.ws.accept()
        except BaseException:
            self.place.release()
            raise
        reason = "stream_lost"
        try:
            reason = await self._read()
        except Exception:
            log.exception("%s stream %.40s: the read loop failed", self.name, self.stream_sid)
            reason = "internal_error"
        finally:
            await self.end_session(reason)
            with contextlib.suppress(Exception):
                await self.ws.close(_CLOSE_CODES.get(reason, CLOSE_NORMAL))
            if self.session is not None:
                self.state.engines.metrics.active_calls.labels(self.name).dec()
                await self._record_call(status="completed")
                await save_call_recording(self.state, self.session, self._call["sid"])
                ended = {"call": self._call, "status": "completed", "session": self.session}
                publish_call_completed(self.state.events, provider=self.name, **ended)

    # -- inbound ----------------------------------------------------------------------------------------------

    async def _read(self) -> str:
        timeout_s = self.provider.start_timeout_s(self.state.settings)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                message = await self._receive(None if self.session is not None else deadline)
            except TimeoutError:
                log.warning("%s media socket sent no start within %.1f s; closing it", self.name, timeout_s)
                return "start_timeout"
            except (WebSocketDisconnect, RuntimeError):
                return "stream_lost"
            if message["type"] == "websocket.disconnect":
                return "stream_lost"
            text = message.get("text")
            if text is None:
                self._bad("binary_frame", f"{self.provider.title} media streams send text frames only")
                continue
            try:
                event = self.stream.receive(text)
            except ProtocolError as exc:
                self._bad(exc.code, str(exc))
                continue
            if self.session is not None and self.session.closed.is_set():
                return self.session.close_reason or "flow_ended"
            try:
                outcome = await self._on_event(event)
            except Exception:
                # One frame we failed on must not drop the call: logged and counted, the call goes on.
                log.exception(
                    "%s stream %.40s: handling %s failed", self.name, self.stream_sid, type(event).__name__
                )
                self._bad("internal_error", "a frame could not be handled")
                continue
            if outcome is not None:
                return outcome

    async def _receive(self, deadline: float | None) -> dict[str, Any]:
        """The next ASGI message; TimeoutError once ``deadline`` (loop time) has passed."""
        if deadline is None:
            return await self.ws.receive()
        remaining = deadline - asyncio.get_running_loop().time()
        return await asyncio.wait_for(self.ws.receive(), max(0.0, remaining))

    async def _on_event(self, event: Any) -> str | None:
        """Act on one checked event; a close reason when the stream ends here."""
        if isinstance(event, StreamStarted):
            return None if await self._start(event) else "refused"
        if isinstance(event, MediaChunk):
            assert self.session is not None  # StreamState refuses media before start
            audio = self.stream.caller_audio(event)
            self.session.push_audio(audio if self.consent is None else self.consent.caller_audio(audio))
        elif isinstance(event, DtmfDigit):
            assert self.session is not None
            await self.session.dtmf(event.digit)
        elif isinstance(event, MarkEchoed):
            if self.sink is not None:
                self.sink.echoed(event.name)
        elif isinstance(event, StreamStopped):
            return "caller_hangup"
        return None

    def _bad(self, code: str, message: str) -> None:
        # Logged and counted; the call goes on (providers cannot read an error event anyway).
        log.warning("%s stream %.40s: %s: %s", self.name, self.stream_sid, code, message)
        if self.state.runtime is not None:
            self.state.runtime.metrics.errors.labels(f"{self.name}_{code}").inc()

    async def _start(self, start: StreamStarted) -> bool:
        """Set up the call's session; False (logged) when the call cannot be served."""
        if not self.state.ready.is_set():
            log.warning("%s stream %.40s refused: the gateway is not ready", self.name, start.stream_id)
            return False
        try:
            return await self._open_session(start)
        except Exception:
            log.exception("call %.40s: setting up the session failed", start.call_id)
            return False

    async def _open_session(self, start: StreamStarted) -> bool:
        """The call's session, admitted; False when the key that placed the call is over one of its limits."""
        state = self.state
        self.stream_sid = start.stream_id
        params = dict(start.custom_parameters)
        flow = await self._load_flow(start.call_id, params)
        config = session_config(
            state.settings, input_rate=8000, output_rate=8000, encoding="mulaw", transport=self.name
        )
        config.recording_dir = str(state.settings.recordings_dir)  # every call is recorded (see docs)
        session = Session(state.runtime, config, recorder=state.recorder)
        session.caller = params.get("from") or None
        if state.store is not None:  # a call placed with an API key: its session is that key's (issue 15)
            session.owner_key = (await state.store.keys.owner_of("calls", start.call_id))[1]
            over = await limits.owned_session_over(self.ws, state, session)  # and under its limits
            if over is not None:
                log.warning("call %.40s refused: %s (%s)", start.call_id, over.detail, over.code)
                return False
        if flow is not None:
            control = self.provider.call_control(state, start.call_id)
            if not control.owned:
                log.warning("call %.40s: not answered or placed here; its flow cannot hang up", start.call_id)
            attach_flow(session, state, flow, call=control)
        self.session = session
        bind_log_context(call_id=start.call_id)  # with the session id admit() binds: this call's log lines
        self.place.admit(session)
        self.state.engines.metrics.active_calls.labels(self.name).inc()
        if state.settings.consent_announcement:  # before start(): it holds the flow's agent back
            self.consent = ConsentAnnouncement(session, state.settings.consent_announcement)
        self._call = {"sid": start.call_id, "from": params.get("from"), "to": params.get("to")}
        self._call["direction"] = params.get("direction", "inbound")
        await session.start()
        await self._record_call(status="in-progress")
        self.sink = MarkedAudio(self.ws, self.provider.stream, start.stream_id, session)
        self.start_writer()
        if self.consent is not None:
            self.consent.start()
        return True

    async def _load_flow(self, call_id: str, params: dict[str, str]) -> Any:
        """The flow the call's parameters name, or None: a bad or missing flow must not drop the call."""
        try:
            flow_id, version = flow_request(params)
            return None if flow_id is None else await load_stored_flow(self.state, flow_id, version)
        except (SessionError, FlowNotAvailable) as exc:
            log.error("%s call %.40s: %s; answering without a flow", self.name, call_id, exc.message)
        except Exception:
            log.exception(
                "%s call %.40s: loading its flow failed; answering without a flow", self.name, call_id
            )
        return None

    async def send_event(self, event: ServerEvent) -> None:
        # Providers read no session events; an answer's end only closes its last mark group.
        if isinstance(event, ResponseAudioDone) and self.sink is not None:
            await self.sink.audio_done()

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
                call["sid"],
                values,
                provider=self.name,
                extra=stats,
                defaults=defaults,
                now=session.created_at,
            )
        except Exception:
            log.exception("call %s: storing the call failed", call["sid"])


async def serve_media_socket(ws: WebSocket, provider: TelephonyProvider) -> None:
    """A provider's media WebSocket endpoint: check the upgrade, hold a place, serve the call."""
    state = app_state(ws)
    refusal = provider.check_socket(state, ws)
    if refusal is not None:
        log.warning("%s media socket refused: %s", provider.name, refusal)
        await ws.close(code=CLOSE_POLICY)  # before accept: the client sees HTTP 403
        return
    # A socket holds its place from before it is accepted: a stream that never sends start still counts.
    call = MediaStreamCall(ws, state, provider)
    try:
        call.place.reserve()
    except Refusal:
        log.warning("%s media socket refused: the gateway is at max_sessions", provider.name)
        await ws.close(code=CLOSE_TRY_AGAIN)  # before accept: the client sees HTTP 403
        return
    await call.run()
