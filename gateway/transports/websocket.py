"""A session over one WebSocket: accept, admit or refuse, then the reader, the writer and the close.

:class:`WebSocketTransport` is the base of ``/v1/voice`` (:mod:`gateway.ws_voice`) and of any other
protocol carried on a WebSocket: a subclass says how to admit the caller (:meth:`open_session`), what one
message means (:meth:`handle`), how an event is written (:meth:`send_event`) and where audio goes (``sink``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway import limits
from gateway.protocol import clip
from gateway.state import AppState, app_state
from gateway.transports.base import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_SERVICE_RESTART,
    CLOSE_TOO_BIG,
    Refusal,
    Transport,
)
from pipeline.events import ErrorEvent
from pipeline.session import Session

log = logging.getLogger("voxgate.ws")

_CLOSE_CODES = {
    "message_too_large": CLOSE_TOO_BIG,
    "internal_error": CLOSE_INTERNAL_ERROR,
    "limit_exceeded": CLOSE_POLICY,  # a key's quota ran out mid-session (gateway/limits)
}


def close_reason(message: str) -> str:
    """A close frame's reason: at most 123 bytes of UTF-8 (RFC 6455), cut on a character boundary."""
    return message.encode()[:120].decode(errors="ignore")


def int_param(ws: WebSocket, name: str, default: int) -> int | None:
    """An integer query parameter; None when it is not one (ASCII digits: ``int("²")`` raises)."""
    raw = ws.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        return None
    return int(raw)


class WebSocketTransport(Transport):
    """One WebSocket as one session: admission, the serve loop and the close code."""

    def __init__(self, ws: WebSocket, state: AppState) -> None:
        super().__init__(state)
        self.ws = ws

    @classmethod
    async def endpoint(cls, ws: WebSocket) -> None:
        """The route's handler: ``WebSocketRoute(path, MyTransport.endpoint)``."""
        await cls(ws, app_state(ws)).run()

    # -- what a subclass says -------------------------------------------------------------------------------

    async def open_session(self) -> Session:
        """Check the request and build the session (not started); raises Refusal. A place is reserved
        (``self.place.reserve()``) by the subclass once the cheap checks pass."""
        raise NotImplementedError

    async def handle(self, message: dict[str, Any]) -> str | None:
        """One WebSocket message into the session; a close reason when it ends the session."""
        raise NotImplementedError

    # -- the shared part ------------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.ws.accept()
        try:
            session = await self.open_session()
            await limits.admit_session(self.ws, session)  # the key's concurrent sessions and audio minutes
            self.session = session
            self.place.admit(session)
        except Refusal as exc:
            self.place.release()
            await self.refuse(exc.code, exc.message, exc.close_code)
            return
        except Exception:
            self.place.release()
            # A bug or a failing store must not end as a dropped socket (1006) without a word.
            log.exception("setting up a %s session failed", self.name)
            await self.refuse("internal_error", "the session could not be set up", CLOSE_INTERNAL_ERROR)
            return
        try:
            await self._serve(session)
        finally:
            self.place.release()

    async def refuse(self, code: str, message: str, close_code: int) -> None:
        # The client may already be gone; a refusal must not turn into an unhandled error of its own.
        with contextlib.suppress(Exception):
            await self.ws.send_text(json.dumps(ErrorEvent(code, clip(message, 300)).to_wire()))
            await self.ws.close(close_code, reason=close_reason(message))

    async def _serve(self, session: Session) -> None:
        self.start_writer()
        assert self.writer is not None
        reader: asyncio.Task[str] | None = None
        closed = asyncio.create_task(session.closed.wait())
        try:
            await session.start()
            reader = asyncio.create_task(self._read(), name=f"{session.id}-reader")
            await asyncio.wait({reader, closed, self.writer}, return_when=asyncio.FIRST_COMPLETED)
        except Exception:
            log.exception("session %s: starting failed", session.id)
        finally:
            reason = self._end_reason(reader)
            await session.close(reason)
            if reader is not None:
                reader.cancel()
            closed.cancel()
            await self.end_session(reason)
            with contextlib.suppress(Exception):
                # The session's own reason when it ended itself (a quota, an idle timeout).
                await self.ws.close(_CLOSE_CODES.get(session.close_reason or reason, CLOSE_NORMAL))

    def _end_reason(self, reader: asyncio.Task[str] | None) -> str:
        """Why the session ends, from whichever of its tasks finished; a failure is logged, never silent."""
        session, writer = self.session, self.writer
        assert session is not None and writer is not None
        if reader is None:  # session.start() failed (logged by the caller)
            return "internal_error"
        if reader.done() and not reader.cancelled():
            exc = reader.exception()
            if exc is None:
                return reader.result()
            log.error("session %s: the read loop failed", session.id, exc_info=exc)
            return "internal_error"
        if writer.done() and not writer.cancelled() and writer.exception() is not None:
            # Sending fails once the client is gone; the reader usually notices first.
            log.info("session %s: sending failed: %r", session.id, writer.exception())
            return "client_disconnected"
        return "client_closed"

    async def _read(self) -> str:
        """Feed the session until the client leaves; returns the close reason."""
        session = self.session
        assert session is not None
        while True:
            try:
                message = await self.ws.receive()
            except WebSocketDisconnect as exc:
                return _disconnect_reason(exc.code)
            except RuntimeError:
                return "client_disconnected"
            if message["type"] == "websocket.disconnect":
                return _disconnect_reason(message.get("code"))
            try:
                reason = await self.handle(message)
            except Exception:
                log.exception("session %s: handling a client message failed", session.id)
                await session.error("internal_error", "the message could not be handled; the session goes on")
                continue
            if reason is not None:
                return reason


def _disconnect_reason(code: int | None) -> str:
    # uvicorn closes every socket with 1012 (service restart) when the server is told to stop.
    return "server_shutdown" if code == CLOSE_SERVICE_RESTART else "client_disconnected"
