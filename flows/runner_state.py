"""One conversation's state in a flow (node, variables, transcript) and the output every step goes through."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from flows.extract import REGEX_TIMEOUT_S
from flows.http_tool import HttpTool
from flows.runner_host import CompleteFn, FlowHost
from flows.schema import Flow, LlmNode, Node
from flows.templates import render

__all__ = ["RunnerState"]


class RunnerState:
    """Where one conversation is in its flow, its variables and transcript, and how the runner speaks, sets
    variables and ends. :class:`~flows.runner.FlowRunner` adds the node steps and the caller's input."""

    def __init__(
        self,
        flow: Flow,
        host: FlowHost,
        *,
        complete: CompleteFn | None = None,
        http: HttpTool | None = None,
        clock: Callable[[], datetime] | None = None,
        variables: Mapping[str, Any] | None = None,
        max_steps: int = 100,
        regex_timeout_s: float = REGEX_TIMEOUT_S,
    ) -> None:
        if complete is None and any(isinstance(n, LlmNode) for n in flow.nodes):
            raise ValueError("this flow has llm nodes, so the runner needs a complete() function")
        self.flow = flow
        self.host = host
        self._complete = complete
        self._http = http if http is not None else HttpTool()  # empty allowlist: every request refused
        self._clock = clock or (lambda: datetime.now(UTC))
        self._tz: tzinfo = ZoneInfo(flow.settings.timezone)
        self._nodes = flow.node_map()
        self._vars: dict[str, Any] = {**flow.variables, **(variables or {})}
        self._max_steps = max_steps
        self._regex_timeout_s = regex_timeout_s
        self._lock = asyncio.Lock()
        self._node: Node | None = None
        self._waiting = False
        self._retries = 0
        self._reprompts = 0
        self._turns = 0
        self._history: list[dict[str, str]] = []
        self._started_at: datetime | None = None
        self._ended = False
        self.end_reason: str | None = None
        self.transcript: list[dict[str, str]] = []  # {"role": "agent" | "caller", "text": ...}

    # -- state ------------------------------------------------------------------------------------------

    @property
    def variables(self) -> dict[str, Any]:
        """A copy of the flow variables as they are now."""
        return dict(self._vars)

    @property
    def current_node(self) -> str | None:
        """Id of the node the conversation is at (the last one, once ended)."""
        return self._node.id if self._node else None

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def awaiting_input(self) -> bool:
        """True while the runner waits for the caller (a collect, llm or dtmf_menu node)."""
        return self._waiting and not self._ended

    @property
    def silence_timeout_s(self) -> float:
        """How long the host should let the caller stay silent before calling :meth:`on_silence`."""
        return self.flow.settings.silence_reprompt_s

    @property
    def deadline(self) -> datetime | None:
        """When the conversation hits ``max_call_s`` (None before :meth:`start`)."""
        if self._started_at is None:
            return None
        return self._started_at + timedelta(seconds=self.flow.settings.max_call_s)

    def now(self) -> datetime:
        """The session clock in the flow's time zone (what templates see as ``now``)."""
        current = self._clock()
        if current.tzinfo is None:
            return current.replace(tzinfo=self._tz)
        return current.astimezone(self._tz)

    # -- helpers ----------------------------------------------------------------------------------------

    def _render(self, template: str) -> str:
        return render(template, {**self._vars, "now": self.now()})

    async def _say_template(self, template: str) -> None:
        await self._say(self._render(template))

    async def _say(self, text: str) -> None:
        if not text.strip():
            return
        self.transcript.append({"role": "agent", "text": text})
        await self.host.say(text)

    async def _set(self, name: str, value: Any) -> None:
        self._vars[name] = value
        await self.host.emit("flow.variable_set", name=name, value=value)

    async def _error(self, message: str) -> None:
        node = self._node.id if self._node else None
        await self.host.emit("flow.error", node=node, message=message)
        await self._finish("error")

    async def _finish(self, reason: str, *, hang_up: bool = True) -> None:
        if self._ended:
            return
        self._ended = True
        self._waiting = False
        self.end_reason = reason
        await self.host.emit("flow.ended", reason=reason)
        if hang_up:
            await self.host.end(reason)
