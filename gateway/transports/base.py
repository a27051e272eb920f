"""What every transport shares: admission, the writer, the end of a session, and the audio-sink contract.

A transport carries one session over one connection. It admits the caller (the API key, the audio format,
readiness, a place in ``max_sessions``), feeds the session what arrives, and drains the session's outbox:
events as the transport writes them, agent audio into its :class:`AudioSink`. It knows nothing of models.

The session's pacer is the only clock that decides when agent audio leaves. A sink sends what the pacer
released, drops what it buffered on a :class:`~pipeline.outbox.Flush`, and, when the far end tells it what
was played (Twilio marks, the WebRTC track handing frames to the encoder), reports that into the pacer
(:meth:`OutputPacer.played`), which then holds back while too much is still unplayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import ClassVar, Protocol

from gateway.logs import bind_log_context
from gateway.state import AppState
from gateway.webhooks.publish import publish_session_end
from pipeline.events import ServerEvent
from pipeline.outbox import Flush, OutAudio
from pipeline.session import Session

log = logging.getLogger("voxgate.transport")

# WebSocket close codes (RFC 6455) the transports use.
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013


class Refusal(Exception):
    """The caller cannot get a session: the error code and message, and the WebSocket close code that
    follows them (a transport that is not a WebSocket maps the code to its own answer)."""

    def __init__(self, code: str, message: str, close_code: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code


def require_ready(state: AppState) -> None:
    """Refuse while the engines load."""
    if not state.ready.is_set():
        raise Refusal("not_ready", "models are still loading; try again shortly", CLOSE_TRY_AGAIN)


class Place:
    """A transport's place in ``max_sessions``: reserved first, then held by its session, released once.

    The gauge of active sessions (labelled by transport) counts admitted sessions only.
    """

    def __init__(self, state: AppState, transport: str) -> None:
        self.state = state
        self.transport = transport
        self.session: Session | None = None
        self._reserved = False

    def reserve(self) -> None:
        """Hold a place before the session exists; raises Refusal when the gateway drains or is full."""
        if self.state.draining:
            raise Refusal("server_draining", "the gateway is shutting down; connect again", CLOSE_TRY_AGAIN)
        if not self.state.sessions.try_reserve():
            if self.state.runtime is not None:
                self.state.runtime.metrics.sessions_refused.inc()
            raise Refusal("server_busy", "the gateway is at max_sessions; try again later", CLOSE_TRY_AGAIN)
        self._reserved = True

    def admit(self, session: Session) -> None:
        """The reservation becomes ``session``: listed, counted, stored."""
        self._reserved = False
        self.session = session
        self.state.sessions.add(session)
        # This task's log lines, and those of the tasks its session starts, carry the ids from here on.
        bind_log_context(session_id=session.id, key_id=session.owner_key)
        self.state.engines.metrics.active_sessions.labels(self.transport).inc()

    def release(self) -> None:
        """Give the place back, whichever stage it reached (a second call does nothing)."""
        if self._reserved:
            self._reserved = False
            self.state.sessions.cancel_reservation()
        elif self.session is not None:
            session, self.session = self.session, None
            self.state.sessions.remove(session)
            self.state.engines.metrics.active_sessions.labels(self.transport).dec()
            publish_session_end(self.state.events, session)  # session.ended (+ transcript, recording): once


class AudioSink(Protocol):
    """Where a transport's agent audio goes. It sends when told; the pacer alone decides when that is."""

    async def send(self, frame: OutAudio) -> None:
        """One wire-ready frame the pacer released."""

    async def flush(self) -> None:
        """A barge-in: drop any agent audio buffered past this point (here or at the far end)."""


class Transport:
    """One session over one connection: the writer that drains its outbox, and how it ends.

    A subclass sets ``name`` (the session's transport, the metrics label), ``sink`` and
    :meth:`send_event`, and feeds the session from whatever its connection delivers.
    """

    name: ClassVar[str] = ""
    #: How long the end waits for the writer to deliver ``session.closed`` before cutting it off.
    drain_s: ClassVar[float] = 2.0

    def __init__(self, state: AppState, place: Place | None = None) -> None:
        self.state = state
        self.place = place or Place(state, self.name)
        self.session: Session | None = None
        self.sink: AudioSink | None = None
        self.writer: asyncio.Task[None] | None = None

    async def send_event(self, event: ServerEvent) -> None:
        """Write one event in the transport's own form (or leave out what its far end cannot read)."""
        raise NotImplementedError

    def start_writer(self) -> None:
        assert self.session is not None
        self.writer = asyncio.create_task(self._write(), name=f"{self.session.id}-{self.name}-writer")

    async def _write(self) -> None:
        assert self.session is not None and self.sink is not None
        outbox, sink = self.session.outbox, self.sink
        while (item := await outbox.get()) is not None:
            if isinstance(item, OutAudio):
                await sink.send(item)
            elif isinstance(item, Flush):
                await sink.flush()
            else:
                await self.send_event(item)

    async def end_session(self, reason: str) -> None:
        """Close the session, let the writer deliver its last events (bounded), give the place back."""
        if self.session is not None:
            await self.session.close(reason)
        if self.writer is not None:
            # A client that stopped reading gets cut off.
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self.writer), timeout=self.drain_s)
            self.writer.cancel()
        self.place.release()
