"""Graceful drain on SIGTERM: stop taking sessions, let live ones finish, then say goodbye and close.

uvicorn's own SIGTERM handling closes every WebSocket at once (code 1012): a caller mid-sentence hears the line
go dead. ``DrainingServer`` turns the first SIGTERM into a drain instead:

1. readiness turns false (``/health/ready`` answers 503) and new sessions are refused (``server_draining``), and
   so are new requests to a :class:`Drained` endpoint (HTTP chat: 503, code ``server_draining``);
2. live sessions and calls go on, and so do the Drained requests in flight (a chat answer being streamed), up to
   ``drain_timeout_s``, so that a load balancer's replacement takes the new ones while these end by themselves;
3. what is left finishes the answer it is speaking, hears ``drain_goodbye`` and is closed (``server_shutdown``);
   a chat request's conversation finishes its answer and is closed, without a goodbye (nobody hears it);
4. uvicorn then shuts down, and the app's shutdown flushes storage, recordings and webhooks; the process exits 0.

A second SIGTERM (or a SIGINT) skips what is left of the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import request_response
from starlette.types import Receive, Scope, Send

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


class HeldRequest:
    """One HTTP request in flight that the drain waits for, from its start to its response's last byte."""

    def __init__(self) -> None:
        # Set once the request knows what it is waiting on (a chat's conversation): how the drain's timeout
        # ends it kindly. Until then the timeout can only wait for it.
        self.end: Callable[[], Awaitable[None]] | None = None
        self.done = asyncio.Event()


class HeldRequests:
    """The app's :class:`Drained` requests in flight."""

    def __init__(self) -> None:
        self.held: set[HeldRequest] = set()

    @contextlib.contextmanager
    def hold(self) -> Iterator[HeldRequest]:
        held = HeldRequest()
        self.held.add(held)
        try:
            yield held
        finally:
            self.held.discard(held)
            held.done.set()


_HELD_KEY = "voxgate.held_request"


def held_request(request: Request) -> HeldRequest | None:
    """The hold on ``request`` (None outside a Drained endpoint): set its ``end``."""
    held: HeldRequest | None = request.scope.get(_HELD_KEY)
    return held


class Drained:
    """An HTTP endpoint whose requests the drain lets finish, as it does live sessions (an ASGI app for a
    ``Route``). A request is held from its start to its response's last byte, a streamed answer's included,
    which the endpoint function's own scope cannot cover; once the drain has begun new ones get 503
    ``{"detail", "code": "server_draining"}``."""

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self.__name__ = endpoint.__name__  # the route's name, as for the function itself
        self._app = request_response(endpoint)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: AppState = scope["app"].state.voxgate
        if state.draining:
            refusal = {"detail": "the gateway is shutting down; send it again", "code": "server_draining"}
            await JSONResponse(refusal, status_code=503)(scope, receive, send)
            return
        with state.held_requests.hold() as held:
            scope[_HELD_KEY] = held
            await self._app(scope, receive, send)


async def _end_request(held: HeldRequest) -> None:
    if held.end is not None:
        await held.end()
    # The response's last bytes go out before uvicorn shuts down, which would cut them after its grace period.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(held.done.wait(), FAREWELL_WAIT_S)


async def drain(state: AppState, timeout_s: float, goodbye: str) -> None:
    """Refuse new sessions and requests, wait up to ``timeout_s`` for the live ones and those in flight to end,
    then close the rest kindly."""
    state.draining = True
    live = state.sessions.live
    requests = state.held_requests.held
    log.info(
        "draining: %d live sessions and %d HTTP chat requests, up to %.0f s; new ones are refused",
        len(live),
        len(requests),
        timeout_s,
    )
    deadline = time.monotonic() + timeout_s
    while (live or requests) and time.monotonic() < deadline:
        await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    left, pending = list(live.values()), list(requests)
    if left or pending:
        log.info("drain timeout: saying goodbye to %d sessions, ending %d requests", len(left), len(pending))
        ends: list[Awaitable[Any]] = [*(farewell(s, goodbye) for s in left), *map(_end_request, pending)]
        results = await asyncio.gather(*ends, return_exceptions=True)
        for session, result in zip(left, results, strict=False):
            if isinstance(result, BaseException):
                log.error("session %s: the farewell failed", session.id, exc_info=result)
        for result in results[len(left) :]:
            if isinstance(result, BaseException):
                log.error("ending an HTTP chat request failed", exc_info=result)
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
