"""Runs a flow inside a session: the session's :class:`TurnAgent` and the runner's :class:`FlowHost`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from datetime import UTC, datetime
from typing import Any, Protocol

from flows import FlowValidationError
from flows.extract import REGEX_TIMEOUT_S
from flows.http_tool import HttpTool
from flows.runner import CompleteFn, FlowRunner
from flows.schema import SLUG, Flow
from flows.validate import load_flow_off_loop
from gateway.agent.llm import engine_complete
from gateway.state import AppState
from pipeline.events import FlowEvent
from pipeline.response import Response, new_id
from pipeline.session import Session, TurnRecord

log = logging.getLogger("voxgate.flows")


class CallControl(Protocol):
    """Telephony's hold on the call: a phone transport passes one, the WebSocket none."""

    async def transfer(self, target: str) -> None: ...

    async def hang_up(self) -> None: ...


class FlowAgent:
    """Feeds the caller's turns, keys and silences to a :class:`FlowRunner` and speaks what it says.

    What the runner says during one step is spoken as one answer (so "Got it. What time?" is one response
    that a barge-in cuts as a whole). After the agent has been heard, a silence timer runs while the flow
    waits for the caller; any caller activity stops it. ``end`` and ``transfer`` close the session once
    the goodbye or hand-off has been heard.
    """

    def __init__(
        self,
        session: Session,
        flow: Flow,
        *,
        complete: CompleteFn | None,
        http: HttpTool,
        variables: dict[str, Any] | None = None,
        call: CallControl | None = None,
        regex_timeout_s: float = REGEX_TIMEOUT_S,
    ) -> None:
        self.session = session
        self.call = call
        self.runner = FlowRunner(
            flow, self, complete=complete, http=http, variables=variables, regex_timeout_s=regex_timeout_s
        )
        self._said: list[str] = []
        self._ending: str | None = None
        self._transfer_to: str | None = None
        self._turn: TurnRecord | None = None
        self._silence: asyncio.Task[None] | None = None
        self._deadline: asyncio.Task[None] | None = None

    # -- TurnAgent: what the session tells us -------------------------------------------------------------

    async def start(self) -> None:
        self._turn = TurnRecord(new_id("turn"), "agent", "")
        await self.runner.start()
        self._deadline = asyncio.create_task(self._watch_deadline())
        await self._speak_step()

    async def user_turn(self, turn: TurnRecord, text: str) -> None:
        self._turn = turn
        await self.runner.on_user_text(text)
        await self._speak_step()

    async def dtmf(self, digit: str) -> None:
        self._turn = TurnRecord(new_id("turn"), "dtmf", digit)
        await self.runner.on_dtmf(digit)
        await self._speak_step()

    def caller_active(self) -> None:
        if self._silence is not None:
            self._silence.cancel()
            self._silence = None

    async def close(self) -> None:
        self.caller_active()
        if self._deadline is not None and self._deadline is not asyncio.current_task():
            self._deadline.cancel()
        if not self.runner.ended:
            await self.runner.cancel("caller_hangup")
        self.session.outcome = self.session.outcome or self.runner.end_reason

    # -- FlowHost: what the runner tells us ---------------------------------------------------------------

    async def say(self, text: str) -> None:
        self._said.append(text)

    async def emit(self, type: str, **fields: Any) -> None:
        await self.session.emit(FlowEvent(type, fields))

    async def end(self, reason: str) -> None:
        self._ending = reason

    async def transfer(self, target: str, handoff: str) -> None:
        # On a phone call the call itself moves once the hand-off was heard; over the WebSocket there is no
        # call to hand over: the client is told where, then the session ends.
        if handoff:
            self._said.append(handoff)
        await self.session.emit(FlowEvent("flow.transfer", {"target": target}))
        self._ending = "transfer"
        self._transfer_to = target

    # -- steps ----------------------------------------------------------------------------------------------

    async def _speak_step(self) -> None:
        text, self._said = " ".join(self._said).strip(), []
        response: Response | None = None
        if text and self._turn is not None:
            response = await self.session.speak(self._turn, text)
        if self._ending is not None:
            if response is not None:
                await response.finished.wait()
            self.session.outcome = self._ending
            if self.call is not None:
                if self._transfer_to is not None:
                    await self.call.transfer(self._transfer_to)
                else:
                    await self.call.hang_up()
            await self.session.close("flow_ended")
        elif self.runner.awaiting_input:
            self._silence = asyncio.create_task(self._silence_timer(response))

    async def _silence_timer(self, response: Response | None) -> None:
        if response is not None:
            await response.finished.wait()
        await asyncio.sleep(self.runner.silence_timeout_s)
        self._silence = None
        self.session.agent_step(self._reprompt())

    async def _reprompt(self) -> None:
        self._turn = TurnRecord(new_id("turn"), "silence", "")
        await self.runner.on_silence()
        await self._speak_step()

    async def _watch_deadline(self) -> None:
        deadline = self.runner.deadline
        if deadline is None:
            return
        await asyncio.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()))
        self.session.agent_step(self._deadline_step())

    async def _deadline_step(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            if await self.runner.check_deadline():
                await self._speak_step()


class FlowNotAvailable(Exception):
    """The flow a caller asked for cannot run: ``code`` is the stable error code for the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


MAX_FLOW_VERSION = 2**31 - 1  # the store's version column is a 32-bit integer
_FLOW_ID = re.compile(SLUG)


def parse_flow_version(version: str | None) -> int | None:
    """A client's ``flow_version`` (None or "" = the latest); FlowNotAvailable unless ASCII digits in range.

    ``"²".isdigit()`` is True but ``int("²")`` raises, and a 20-digit number overflows the store's column:
    both used to escape as exceptions and drop the socket or the call.
    """
    if not version:
        return None
    if not (
        version.isascii()
        and version.isdigit()
        and len(version) <= 10
        and 1 <= int(version) <= MAX_FLOW_VERSION
    ):
        raise FlowNotAvailable(
            "invalid_flow_version", f"flow_version must be an integer from 1 to {MAX_FLOW_VERSION}"
        )
    return int(version)


async def load_stored_flow(
    state: AppState, flow_id: str, version: str | None = None, *, owner: str | None = None
) -> Flow:
    """The stored flow (latest or a given version), validated against this server's secrets now. With
    ``owner`` (an API key's id), another key's flow is unknown: a key runs its own flows and admin's.

    Raises only :class:`FlowNotAvailable`, with a stable code the transports send as an ``error`` event.
    Validation runs on the flow check threads, so starting a call never holds the event loop.
    """
    number = parse_flow_version(version)
    if not _FLOW_ID.fullmatch(flow_id):  # ids are slugs: anything else cannot be stored
        raise FlowNotAvailable("unknown_flow", f"no flow {flow_id[:100]!r}")
    try:
        if owner is not None and await _owned_by_another(state, flow_id, owner):
            raise FlowNotAvailable("unknown_flow", f"no flow {flow_id!r}")
        document = await state.store.get_flow(flow_id, number)
    except FlowNotAvailable:
        raise
    except Exception as exc:  # the store is down or refused the query: the caller gets an error event
        log.exception("loading flow %r version %s failed", flow_id, number)
        raise FlowNotAvailable("flow_unavailable", "the flow could not be loaded; try again later") from exc
    if document is None:
        raise FlowNotAvailable(
            "unknown_flow", f"no flow {flow_id!r}" + (f" version {number}" if number else "")
        )
    try:
        return await load_flow_off_loop(
            document,
            known_secrets=state.settings.flow_secrets.keys(),
            timeout_s=state.settings.flow_check_timeout_s,
        )
    except FlowValidationError as exc:
        raise FlowNotAvailable("invalid_flow", str(exc)) from exc


def attach_flow(session: Session, state: AppState, flow: Flow, call: CallControl | None = None) -> FlowAgent:
    """Make ``flow`` the session's agent (before ``session.start()``)."""
    agent = FlowAgent(
        session,
        flow,
        complete=engine_complete(state.runtime, state.settings.llm_schema_format),
        http=state.flow_http,
        call=call,
        regex_timeout_s=state.settings.flow_regex_timeout_ms / 1000,
    )
    session.agent = agent
    session.flow_id, session.flow_version = flow.id, flow.version
    return agent


async def _owned_by_another(state: AppState, flow_id: str, owner: str) -> bool:
    exists, flow_owner = await state.store.keys.owner_of("flows", flow_id)
    return exists and flow_owner is not None and flow_owner != owner
