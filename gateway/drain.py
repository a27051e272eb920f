"""Graceful drain on SIGTERM: stop taking sessions, let live ones finish, then say goodbye and close.

uvicorn's own SIGTERM handling closes every WebSocket at once (code 1012): a caller mid-sentence hears the line
go dead. ``DrainingServer`` turns the first SIGTERM into a drain instead:

1. readiness turns false (``/health/ready`` answers 503) and new sessions are refused (``server_draining``);
2. live sessions and calls go on, up to ``drain_timeout_s``, so that a load balancer's replacement takes the
   new ones while these end by themselves;
3. what is left finishes the answer it is speaking, hears ``drain_goodbye`` and is closed (``server_shutdown``);
4. uvicorn then shuts down, and the app's shutdown flushes storage, recordings and webhooks; the process exits 0.

A second SIGTERM (or a SIGINT) skips what is left of the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from pipeline.conversation import TurnRecord
from pipeline.response import new_id

if TYPE_CHECKING:
    from gateway.state import AppState
    from pipeline.session import Session

log = logging.getLogger("voxgate.drain")

# How long a farewell waits for the answer being spoken, and then for the goodbye itself, to be heard.
FAREWELL_WAIT_S = 10.0


async def farewell(session: Session, goodbye: str) -> None:
    """Let ``session`` finish the answer it is speaking, say ``goodbye``, and close it."""
    current = session.answers.current
    if current is not None and not session.closed.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(current.response.finished.wait(), FAREWELL_WAIT_S)
    if goodbye and not session.closed.is_set():
        try:
            response = await session.speak(TurnRecord(new_id("turn"), "system", ""), goodbye)
            await asyncio.wait_for(response.finished.wait(), FAREWELL_WAIT_S)
        except TimeoutError:
            log.warning("session %s: the goodbye was not heard to the end in time", session.id)
        except Exception:
            log.exception("session %s: saying goodbye failed", session.id)
    await session.close("server_shutdown")
    await session.wait_closed()


async def drain(state: AppState, timeout_s: float, goodbye: str) -> None:
    """Refuse new sessions, wait up to ``timeout_s`` for the live ones to end, then close the rest kindly."""
    state.draining = True
    live = state.sessions.live
    log.info("draining: %d live sessions, up to %.0f s; new sessions are refused", len(live), timeout_s)
    deadline = time.monotonic() + timeout_s
    while live and time.monotonic() < deadline:
        await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    left = list(live.values())
    if left:
        log.info("drain timeout: saying goodbye to %d sessions", len(left))
        results = await asyncio.gather(*(farewell(s, goodbye) for s in left), return_exceptions=True)
        for session, result in zip(left, results, strict=True):
            if isinstance(result, BaseException):
                log.error("session %s: the farewell failed", session.id, exc_info=result)
    log.info("drained")


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with the first SIGTERM starting :func:`drain` rather than an abrupt shutdown."""

    def __init__(self, config: uvicorn.Config, state: AppState, timeout_s: float, goodbye: str) -> None:
        super().__init__(config)
        self.state = state
        self.timeout_s = timeout_s
        self.goodbye = goodbye
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self._drain is None and self._loop is not None and not self.should_exit:
            # The handler runs on the loop's thread between two bytecodes: schedule, don't run, the drain.
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        if self._drain is None:
            self._drain = asyncio.create_task(self._drain_then_exit(), name="drain")

    async def _drain_then_exit(self) -> None:
        try:
            await drain(self.state, self.timeout_s, self.goodbye)
        except Exception:
            log.exception("draining failed; shutting down")
        finally:
            self.should_exit = True
