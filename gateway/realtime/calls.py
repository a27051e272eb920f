"""``POST /v1/realtime/calls``: the Realtime API over WebRTC, as OpenAI's browser flow does it.

The client posts its SDP offer (raw ``application/sdp``, or multipart with ``sdp`` and an optional ``session``
JSON, as the SDK sends it) with its key (the API key, or an ephemeral one from ``client_secrets``) and gets
the answer SDP back (201). Audio flows on the media tracks; events flow as JSON on the data channel named
``oai-events``. The peer, its tracks and the place in ``max_sessions`` are those of voxgate's own WebRTC
transport (:class:`gateway.webrtc.WebRtcCall`); this module swaps in the Realtime session, handlers and
translator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway import limits
from gateway.agent.flow_agent import attach_flow
from gateway.api_common import app_state
from gateway.auth import principal_of, scoped
from gateway.protocol import clip
from gateway.realtime.config import (
    RealtimeConfig,
    apply_session,
    apply_turn_detection,
    initial_turn_detection,
)
from gateway.realtime.formats import AudioFormat, InputConverter
from gateway.realtime.handlers import Handlers
from gateway.realtime.schema import RealtimeError, SessionIn, validation_error
from gateway.realtime.secrets import redeem_from
from gateway.realtime.session import RealtimeSession
from gateway.realtime.translate import Translator
from gateway.realtime.transport import flow_for
from gateway.settings import session_config
from gateway.state import AppState
from gateway.transports.base import Place, Refusal, require_ready
from gateway.webrtc import RATE, AgentTrack, WebRtcCall
from pipeline.events import ServerEvent
from pipeline.outbox import OutAudio
from pipeline.strict_json import BadJson, strict_json_loads

log = logging.getLogger("voxgate.realtime")

CHANNEL = "oai-events"
TRACK_FORMAT = AudioFormat("audio/pcm", RATE, 2)  # what the caller's track decodes to: 48 kHz PCM16


class RealtimeTrack:
    """The agent's track as the call's sink: frames go to aiortc, and the translator learns what played."""

    def __init__(self, track: AgentTrack, translator: Translator) -> None:
        self.track = track
        self.translator = translator
        self.call: RealtimeCall | None = None

    async def send(self, frame: OutAudio) -> None:
        await self.track.send(frame)
        events = self.translator.audio(frame)  # output_audio_buffer.started on a response's first frame
        if events and self.call is not None:
            await self.call.write(events)

    async def flush(self) -> None:
        await self.track.flush()


class RealtimeCall(WebRtcCall):
    """One Realtime API peer connection: :class:`WebRtcCall` with the Realtime session and events."""

    channel_label = CHANNEL

    name = "realtime_webrtc"

    def __init__(
        self,
        state: AppState,
        session: RealtimeSession,
        pc: RTCPeerConnection,
        place: Place,
        config: RealtimeConfig,
    ) -> None:
        super().__init__(state, session, pc, place)
        self.realtime = session
        self.translator = Translator(session, config)
        self.translator.audio_on_track = True
        self.handlers = Handlers(session, config, self.translator)
        sink = RealtimeTrack(self.track, self.translator)
        sink.call = self
        self.sink = sink
        # Data channel messages are handled one after another, in order (a commit awaits its transcript).
        self._inbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=256)

    def start(self, connect_timeout_s: float) -> None:
        super().start(connect_timeout_s)
        self._tasks.append(asyncio.create_task(self._consume(), name=f"{self.session.id}-oai-events"))

    def _on_message(self, message: Any) -> None:
        try:
            self._inbox.put_nowait(message)
        except asyncio.QueueFull:
            log.warning("session %s: events channel flooded; message dropped", self.session.id)

    async def _consume(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                if isinstance(message, str):
                    await self.handlers.handle_text(message)
                else:
                    await self.handlers.send_error(
                        RealtimeError("invalid_event", f"{CHANNEL} carries JSON text only")
                    )
            except Exception:
                log.exception("session %s: handling a data channel message failed", self.session.id)

    async def _read(self, track: MediaStreamTrack) -> None:
        # The caller's track at 48 kHz, into the 16 kHz PCM16 the Realtime session listens to.
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        converter = InputConverter(TRACK_FORMAT)
        try:
            while True:
                frame = await track.recv()
                for mono in resampler.resample(frame):
                    pcm = converter.convert(bytes(mono.planes[0])[: mono.samples * 2])
                    with contextlib.suppress(RealtimeError):  # a full manual buffer: the caller is not heard
                        self.realtime.push_audio(pcm)
        except MediaStreamError:
            await self.end("track_ended")

    async def write(self, events: list[dict[str, Any]]) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            for event in events:
                self.channel.send(json.dumps(event))

    async def send_event(self, event: ServerEvent) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._channel_open.wait(), timeout=10)
        await self.write(self.translator.translate(event))


def _error(status: int, code: str, message: str, param: str | None = None) -> JSONResponse:
    return _error_response(RealtimeError(code, clip(message, 300), param=param), status)


def _error_response(exc: RealtimeError, status: int = 400) -> JSONResponse:
    """OpenAI's ``error`` object, which its SDKs read, beside the ``detail`` every voxgate HTTP error has."""
    return JSONResponse({"detail": exc.message, "error": exc.to_error()}, status_code=status)


async def _offer(request: Request) -> tuple[str, SessionIn | None]:
    """The SDP offer and the optional session configuration; raises RealtimeError."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    session: Any = None
    if content_type == "application/sdp":
        sdp = (await request.body()).decode("utf-8", errors="replace")
    elif content_type == "multipart/form-data":
        form = await request.form(max_files=2, max_fields=4)
        raw_sdp, raw_session = form.get("sdp"), form.get("session")
        sdp = raw_sdp if isinstance(raw_sdp, str) else (await raw_sdp.read()).decode() if raw_sdp else ""
        if raw_session is not None:
            text = raw_session if isinstance(raw_session, str) else (await raw_session.read()).decode()
            try:
                session = strict_json_loads(text)
            except BadJson as exc:
                raise RealtimeError(
                    "invalid_json", f"session is not valid JSON: {exc}", param="session"
                ) from None
    else:
        raise RealtimeError("invalid_value", "send the offer as application/sdp or multipart/form-data")
    if not sdp.strip().startswith("v="):
        raise RealtimeError("invalid_value", "the offer is not an SDP document", param="sdp")
    try:
        return sdp, SessionIn.model_validate(session) if session is not None else None
    except ValidationError as exc:
        raise validation_error(exc, None, "session.") from None


async def create_call(request: Request) -> Response:
    state = app_state(request)
    secret = redeem_from(request, state)  # the edge checked the key, or redeemed this secret
    try:
        sdp, update = await _offer(request)
        require_ready(state)
    except RealtimeError as exc:
        return _error_response(exc)
    except Refusal as exc:
        return _error(503, exc.code, exc.message)
    try:
        flow = await flow_for(
            state, request.query_params.get("model", "voxgate")[:128], principal_of(request).owner
        )
    except Refusal as exc:  # the model names a stored flow that cannot run
        return _error(400, exc.code, exc.message, "model")
    place = Place(state, RealtimeCall.name)
    try:
        place.reserve()
    except Refusal as exc:
        return _error(503, exc.code, exc.message)
    try:
        call = _new_call(
            state, request, place, [s for s in (secret.session if secret else None, update) if s]
        )
    except RealtimeError as exc:
        place.release()
        return _error_response(exc)
    if flow is not None:
        attach_flow(call.session, state, flow)
    try:
        await call.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await call.pc.setLocalDescription(await call.pc.createAnswer())
    except Exception as exc:  # aiortc raises assorted errors for malformed SDP
        place.release()
        await call.discard()
        return _error(400, "invalid_value", f"cannot answer this offer: {exc or type(exc).__name__}", "sdp")
    over = await limits.session_over(request, call.session)  # the key's concurrent sessions, audio minutes
    if over is not None:
        place.release()
        await call.discard()
        refused = _error(429, over.code, over.detail)
        refused.headers["retry-after"] = str(over.retry_after)
        return refused
    session = call.session
    place.admit(session)
    state.webrtc_calls.add(call)
    try:
        await session.start()
        call.start(state.settings.webrtc_connect_timeout_s)
    except Exception:
        log.exception("session %s: starting the Realtime WebRTC session failed", session.id)
        await call.end("internal_error")
        return _error(500, "internal_error", "the session could not be started")
    headers = {"location": f"/v1/realtime/calls/{session.id}"}
    return Response(
        call.pc.localDescription.sdp, status_code=201, media_type="application/sdp", headers=headers
    )


def _new_call(state: AppState, request: Request, place: Place, updates: list[SessionIn]) -> RealtimeCall:
    settings = state.settings
    config = session_config(
        settings, input_rate=16000, output_rate=RATE, encoding="pcm_s16le", transport="realtime_webrtc"
    )
    session = RealtimeSession(state.runtime, config, recorder=state.recorder)
    session.caller = request.client.host if request.client else None
    session.owner_key = principal_of(request).owner
    rt_config = RealtimeConfig(
        id=session.id,
        model=request.query_params.get("model", "voxgate")[:128],
        instructions=config.instructions,
        voice=config.voice or "default",
        default_tokens=config.max_tokens,
        default_voice=config.voice,
        schema_format=settings.llm_schema_format,
        track_audio=True,
    )
    rt_config.turn_detection = initial_turn_detection(config.vad)
    rt_config.finished_ms = config.vad.end_of_turn_ms
    apply_turn_detection(rt_config, session)
    for update in updates:
        apply_session(rt_config, session, update)
    ice = [RTCIceServer(urls=url) for url in settings.webrtc_ice_servers]
    return RealtimeCall(state, session, RTCPeerConnection(RTCConfiguration(iceServers=ice)), place, rt_config)


routes: list[BaseRoute] = [
    scoped(Route("/v1/realtime/calls", create_call, methods=["POST"]), "realtime", client_secret=True)
]
