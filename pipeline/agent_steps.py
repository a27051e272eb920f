"""The agent that answers in place of the session's own LLM (a flow runner, for one), and its step queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from pipeline.conversation import TurnRecord

log = logging.getLogger("voxgate.session")


class TurnAgent(Protocol):
    """Decides what the agent says in place of the session's own LLM answer (a flow runner, for one).

    The session calls these from background tasks, in order; the agent answers through
    :meth:`Session.speak`, :meth:`Session.emit` and :meth:`Session.close`.
    """

    async def start(self) -> None: ...

    async def user_turn(self, turn: TurnRecord, text: str) -> None:
        """``text`` is what the caller said: ``turn``'s words, or several turns' that arrived while the
        agent was busy, joined (one answer, one LLM job, nothing the caller said lost)."""

    async def dtmf(self, digit: str) -> None: ...

    def caller_active(self) -> None: ...

    async def close(self) -> None: ...


class AgentSteps:
    """Runs an agent's steps one at a time, in arrival order: a DTMF key must not overtake the turn before it.

    Caller turns that arrive before the agent took up the previous one join that step: a flood of typed
    turns makes one step, not one each.
    """

    def __init__(
        self,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        report: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self._spawn = spawn  # the session's, so that closing the session cancels the steps
        self._report = report
        self._last: asyncio.Task[None] | None = None
        self._inbox: list[TurnRecord] | None = None  # turns waiting for the step in _inbox_step
        self._inbox_step: asyncio.Task[None] | None = None

    def run(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` once every step before it has finished (or failed: a failure is reported)."""
        previous = self._last

        async def step() -> None:
            if previous is not None:
                with contextlib.suppress(BaseException):
                    await previous
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("agent step failed")
                await self._report("agent_failed", f"the agent could not go on: {exc}")

        self._last = self._spawn(step())

    def give_turn(self, agent: TurnAgent, turn: TurnRecord) -> None:
        inbox = self._inbox
        if inbox is not None and self._last is self._inbox_step:
            inbox.append(turn)  # the agent has not taken up the last turn yet: it gets both at once
            return
        inbox = self._inbox = [turn]
        self.run(self._user_turns(agent, inbox))
        self._inbox_step = self._last

    async def _user_turns(self, agent: TurnAgent, turns: list[TurnRecord]) -> None:
        if self._inbox is turns:
            self._inbox = None  # taken up: a turn from now on waits for the next step
        await agent.user_turn(turns[-1], " ".join(t.user_text for t in turns if t.user_text))
