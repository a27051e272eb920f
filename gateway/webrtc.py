"""``POST /v1/webrtc/offer``: a session over WebRTC (aiortc): an audio track each way, a data channel for events.

The caller's track (Opus, 48 kHz) is decoded to PCM16 and pushed into the session like WebSocket audio. The
agent's audio leaves through :class:`AgentTrack`, the call's audio sink: aiortc asks it for one 20 ms frame
per 20 ms (silence between answers), it hands over what the session's pacer released, reports each frame
handed over as played, and drops its buffer on a barge-in's ``Flush``.
The data channel named ``events`` carries the WebSocket protocol's JSON events both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
import time
from collections import deque
from typing import Any

import aioice.ice
import av
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway import limits
from gateway.agent.flow_agent import FlowNotAvailable, attach_flow, load_stored_flow
from gateway.api_common import app_state, parse_body, unprocessable
from gateway.auth import principal_of, scoped
from gateway.protocol import clip
from gateway.settings import Settings, session_config
from gateway.state import AppState
from gateway.transports.base import Place, Refusal, Transport, require_ready
from gateway.ws_voice import apply_session_update, handle_text
from pipeline.events import ServerEvent
from pipeline.outbox import OutAudio
from pipeline.pacer import OutputPacer
from pipeline.session import Session, SessionError

log = logging.getLogger("voxgate.webrtc")

RATE = 48000
FRAME_SAMPLES = RATE // 50  # 20 ms
FRAME_BYTES = FRAME_SAMPLES * 2


class OfferRequest(BaseModel):
    """Body of ``POST /v1/webrtc/offer``."""

    sdp: str = Field(min_length=10, max_length=100_000)
    type: str = Field(pattern="^offer$")
    flow: str | None = Field(None, max_length=128)
    voice: str | None = Field(None, max_length=128)

    model_config = {"extra": "forbid"}


class AgentTrack(MediaStreamTrack):
    """The agent's voice as an outbound audio track and the call's audio sink.

    aiortc sends whatever ``recv`` returns at once, so the track keeps the 20 ms cadence aiortc needs
    (silence between answers). It does not decide when audio leaves: the pacer does, and hears from the
    track (:meth:`OutputPacer.played`) each frame handed to aiortc.
    """

    kind = "audio"

    def __init__(self, pacer: OutputPacer | None = None, max_buffer_frames: int = 100) -> None:
        super().__init__()
        self._frames: deque[bytes] = deque()
        self._pacer = pacer
        if pacer is not None:
            # The pacer holds releases once this much waits here (the buffer bound the track once kept).
            pacer.follow_playback(max_buffer_frames * 20, stall_s=1.0)
        self._start: float | None = None
        self._sent = 0
        self._silence = bytes(FRAME_BYTES)
        self._time_base = fractions.Fraction(1, RATE)

    async def send(self, frame: OutAudio) -> None:
        """One 20 ms frame the pacer released."""
        self._frames.append(frame.payload)

    async def flush(self) -> None:
        """Barge-in: drop every frame not yet handed to aiortc."""
        self._frames.clear()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self._sent * 0.02
        if due > now:
            await asyncio.sleep(due - now)
        if self._frames:
            pcm = self._frames.popleft()
            if self._pacer is not None:
                self._pacer.played(20)
        else:
            pcm = self._silence
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(
            pcm if len(pcm) == FRAME_BYTES else pcm[:FRAME_BYTES].ljust(FRAME_BYTES, b"\0")
        )
        frame.sample_rate = RATE
        frame.pts = self._sent * FRAME_SAMPLES
        frame.time_base = self._time_base
        self._sent += 1
        return frame


class WebRtcCall(Transport):
    """One peer connection and its session.

    Until ``start`` the call is only negotiated: nothing is counted or stored for it, and a failed
    negotiation is undone with ``discard``. After ``start``, ``end`` releases everything exactly once.
    """

    channel_label = "events"  # the data channel that carries JSON events

    name = "webrtc"
    drain_s = 0.2  # let session.closed reach the data channel

    def __init__(self, state: AppState, session: Session, pc: RTCPeerConnection, place: Place) -> None:
        super().__init__(state, place)
        self.session: Session = session
        self.pc = pc
        self.track = AgentTrack(session.pacer)
        self.sink = self.track
        self.channel: Any = None
        self._channel_open = asyncio.Event()
        self._connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        pc.addTrack(self.track)
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_state)

    def start(self, connect_timeout_s: float) -> None:
        sid = self.session.id
        self.start_writer()
        self._tasks.append(asyncio.create_task(self._watch(), name=f"{sid}-webrtc-end"))
        self._tasks.append(
            asyncio.create_task(self._connect_deadline(connect_timeout_s), name=f"{sid}-webrtc-connect")
        )

    async def discard(self) -> None:
        """Undo a call whose negotiation failed: it was never counted or stored, so nothing is ended."""
        self._closing = True  # pc.close() reports "closed": that must not end (and uncount) the call
        for task in [*self._tasks, self.writer]:
            if task is not None:
                task.cancel()
        self.track.stop()
        await self.pc.close()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._tasks.append(asyncio.create_task(self._read(track), name=f"{self.session.id}-webrtc-in"))

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != self.channel_label:
            return
        self.channel = channel
        self._channel_open.set()
        channel.on("message", self._on_message)
        channel.on("close", lambda: asyncio.ensure_future(self.end("client_closed")))

    def _on_message(self, message: Any) -> None:
        asyncio.ensure_future(self._handle(message))

    async def _handle(self, message: Any) -> None:
        try:
            if not isinstance(message, str):
                await self.session.error("invalid_event", "the events channel carries JSON text only")
            elif await handle_text(self.session, message) == "close":
                await self.end("client_closed")
        except Exception:
            # Nobody awaits this task: a fault here would otherwise vanish without a trace.
            log.exception("session %s: handling a data channel message failed", self.session.id)
            with contextlib.suppress(Exception):
                await self.session.error(
                    "internal_error", "the event could not be handled; the session goes on"
                )

    async def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self._connected.set()
        elif self.pc.connectionState in ("failed", "closed"):
            await self.end("ice_failed" if self.pc.connectionState == "failed" else "client_disconnected")

    async def _connect_deadline(self, timeout_s: float) -> None:
        # A client that sent an offer and vanished would hold a session slot until ICE gives up (~64 s).
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError:
            log.info("session %s: no ICE/DTLS connection within %.1f s", self.session.id, timeout_s)
            await self.end("connect_timeout")

    async def _read(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        try:
            while True:
                frame = await track.recv()
                for mono in resampler.resample(frame):
                    self.session.push_audio(bytes(mono.planes[0])[: mono.samples * 2])
        except MediaStreamError:
            await self.end("track_ended")

    async def send_event(self, event: ServerEvent) -> None:
        # Events wait for the channel (the client opens it with the offer; it is usually there at once).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._channel_open.wait(), timeout=10)
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(json.dumps(event.to_wire()))

    async def _watch(self) -> None:
        await self.session.closed.wait()
        await self.end(self.session.close_reason or "closed")

    async def end(self, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        current = asyncio.current_task()
        await self.session.close(reason)
        if self.writer is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self.writer), timeout=self.drain_s)
        for task in [*self._tasks, self.writer]:
            if task is not None and task is not current:
                task.cancel()
        self.track.stop()
        await self.pc.close()
        self.place.release()
        self.state.webrtc_calls.discard(self)


def configure(settings: Settings) -> None:
    """Process-wide aiortc set-up from the settings, once per app."""
    if settings.webrtc_host_addresses:
        restrict_ice_host_addresses(
            [a.strip() for a in settings.webrtc_host_addresses.split(",") if a.strip()]
        )


def restrict_ice_host_addresses(addresses: list[str]) -> None:
    """Offer only these host candidates (aioice leaves 127.0.0.1 out; tests and single-host setups need it)."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(addresses)


async def webrtc_offer(request: Request) -> Response:
    body = await parse_body(request, OfferRequest)
    if isinstance(body, JSONResponse):
        return body
    state = app_state(request)
    try:
        require_ready(state)
    except Refusal as exc:
        return JSONResponse({"detail": exc.message}, status_code=503)
    flow = None
    if body.flow:
        try:
            flow = await load_stored_flow(state, body.flow, owner=principal_of(request).owner)
        except FlowNotAvailable as exc:
            return unprocessable([{"loc": ["flow"], "msg": clip(exc.message, 200), "type": exc.code}])
    place = Place(state, WebRtcCall.name)
    try:
        place.reserve()
    except Refusal as exc:
        return JSONResponse({"detail": exc.message}, status_code=503)
    try:
        call = _new_call(state, request, body, flow, place)
    except SessionError as exc:
        place.release()
        return unprocessable([{"loc": ["voice"], "msg": exc.message, "type": exc.code}])
    except BaseException:
        place.release()
        raise
    try:
        problem = await _negotiate(call, body)
    except BaseException:  # cancelled: the caller went away mid-request
        await _abandon(call)
        raise
    if problem is not None:
        await _abandon(call)
        return JSONResponse({"detail": f"cannot answer this offer: {problem}"}, status_code=400)
    over = await limits.session_over(request, call.session)  # the key's concurrent sessions, audio minutes
    if over is not None:
        await _abandon(call)
        return limits.too_many(over)
    return await _admit(state, call)


def _new_call(state: AppState, request: Request, body: OfferRequest, flow: Any, place: Place) -> WebRtcCall:
    """A session and its peer connection, not yet negotiated; raises SessionError for an unknown voice."""
    settings = state.settings
    config = session_config(
        settings, input_rate=RATE, output_rate=RATE, encoding="pcm_s16le", transport="webrtc"
    )
    session = Session(state.runtime, config, recorder=state.recorder)
    session.caller = request.client.host if request.client else None
    session.owner_key = principal_of(request).owner
    if body.voice:
        apply_session_update(session, _voice_update(body.voice))
    if flow is not None:
        attach_flow(session, state, flow)
    ice = [RTCIceServer(urls=url) for url in settings.webrtc_ice_servers]
    return WebRtcCall(state, session, RTCPeerConnection(RTCConfiguration(iceServers=ice)), place)


async def _negotiate(call: WebRtcCall, body: OfferRequest) -> str | None:
    """Answer the offer; None when done, else why it cannot be answered (the client's error, not ours)."""
    pc = call.pc
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body.sdp, type=body.type))
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:  # aiortc raises assorted errors for malformed SDP
        return clip(str(exc) or type(exc).__name__, 120)
    return None


async def _abandon(call: WebRtcCall) -> None:
    call.place.release()
    await call.discard()


async def _admit(state: AppState, call: WebRtcCall) -> Response:
    """Count, store and start a negotiated call; the answer SDP for the client."""
    session = call.session
    call.place.admit(session)
    state.webrtc_calls.add(call)
    try:
        await session.start()
        call.start(state.settings.webrtc_connect_timeout_s)
    except Exception:
        log.exception("session %s: starting the WebRTC session failed", session.id)
        await call.end("internal_error")
        return JSONResponse({"detail": "the session could not be started"}, status_code=500)
    answer = call.pc.localDescription
    return JSONResponse({"sdp": answer.sdp, "type": answer.type, "session_id": session.id})


def _voice_update(voice: str) -> Any:
    from gateway.protocol import SessionUpdate

    return SessionUpdate.model_validate({"type": "session.update", "session": {"voice": voice}})


routes: list[BaseRoute] = [scoped(Route("/v1/webrtc/offer", webrtc_offer, methods=["POST"]), "realtime")]
