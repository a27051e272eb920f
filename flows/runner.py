"""The flow runner: a state machine that drives one conversation through a flow.

It knows nothing about audio, transports or engines. The host application feeds it what the caller did
(``on_user_text``, ``on_dtmf``, ``on_silence``) and it answers through a :class:`FlowHost` (say, emit an event,
hang up, transfer). Language-model work goes through one injected ``complete`` coroutine, and time through
an injected clock, so everything but the model's own words is deterministic and testable.
"""

from __future__ import annotations

from collections.abc import Awaitable

from flows.runner_dtmf import spoken_option
from flows.runner_host import CompleteFn, FlowHost
from flows.runner_prompts import llm_reply_schema
from flows.runner_steps import NodeSteps
from flows.schema import CollectNode, DtmfMenuNode, LlmNode
from flows.templates import TemplateError

__all__ = ["CompleteFn", "FlowHost", "FlowRunner", "llm_reply_schema"]

STILL_THERE = "Are you still there?"


class FlowRunner(NodeSteps):
    """Drives one conversation through a validated :class:`Flow`.

    Call :meth:`start` once, then feed caller input. Every public coroutine is serialised by a lock, so
    the host may call them from concurrent tasks (a silence timer and a transcript, for instance).
    Constructed with the flow, its host and the optional helpers of :class:`~flows.runner_state.RunnerState`.
    """

    # -- input ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Enter the start node (says the first prompt)."""
        async with self._lock:
            if self._started_at is not None:
                raise RuntimeError("the flow runner was already started")
            self._started_at = self._clock()
            await self._run_from(self.flow.start)

    async def on_user_text(self, text: str) -> None:
        """The caller said (or typed) ``text``. Ignored unless the runner is waiting for input."""
        async with self._lock:
            if await self._deadline_passed() or not self.awaiting_input or not text.strip():
                return
            self._reprompts = 0
            self.transcript.append({"role": "caller", "text": text})
            node = self._node
            if isinstance(node, CollectNode):
                await self._guarded(self._collect_answer(node, text))
            elif isinstance(node, LlmNode):
                await self._guarded(self._llm_turn(node, text))
            elif isinstance(node, DtmfMenuNode):
                await self._guarded(self._menu_answer(node, spoken_option(node, text)))

    async def on_dtmf(self, digit: str) -> None:
        """The caller pressed a key. A menu matches it to an option; a collect treats it as typed text."""
        async with self._lock:
            if await self._deadline_passed() or not self.awaiting_input:
                return
            self._reprompts = 0
            node = self._node
            if isinstance(node, DtmfMenuNode):
                option = next((o for o in node.options if o.digit == digit), None)
                await self._guarded(self._menu_answer(node, option.next if option else None))
            elif isinstance(node, CollectNode):
                await self._guarded(self._collect_answer(node, digit))

    async def on_silence(self) -> None:
        """The caller stayed silent for ``silence_timeout_s``: re-prompt, or end with ``no_input``."""
        async with self._lock:
            if await self._deadline_passed() or not self.awaiting_input:
                return
            self._reprompts += 1
            if self._reprompts > self.flow.settings.max_reprompts:
                await self._finish("no_input")
                return
            node = self._node
            if isinstance(node, CollectNode | DtmfMenuNode):
                await self._guarded(self._say_template(node.prompt))
            elif isinstance(node, LlmNode):
                await self._say(STILL_THERE)

    async def check_deadline(self) -> bool:
        """End the conversation with ``max_duration`` if ``max_call_s`` has passed; True if it has ended."""
        async with self._lock:
            return await self._deadline_passed()

    async def cancel(self, reason: str = "caller_hangup") -> None:
        """The conversation stopped from outside (the caller hung up): emit ``flow.ended`` without hanging up."""
        async with self._lock:
            await self._finish(reason, hang_up=False)

    # -- driving ----------------------------------------------------------------------------------------

    async def _deadline_passed(self) -> bool:
        if self._ended:
            return True
        deadline = self.deadline
        if deadline is not None and self._clock() >= deadline:
            await self._finish("max_duration")
            return True
        return False

    async def _guarded(self, step: Awaitable[None]) -> None:
        """Run a step; a template that cannot render ends the call (with a flow.error) instead of raising."""
        try:
            await step
        except TemplateError as exc:
            await self._error(str(exc))
