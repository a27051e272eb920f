"""The flow runner: a state machine that drives one conversation through a flow.

It knows nothing about audio, transports or engines. The host application feeds it what the caller did
(``on_user_text``, ``on_dtmf``, ``on_silence``) and it answers through a :class:`FlowHost` (say, emit an event,
hang up, transfer). Language-model work goes through one injected ``complete`` coroutine, and time through
an injected clock, so everything but the model's own words is deterministic and testable.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from flows.extract import REGEX_TIMEOUT_S, extract, match_choice, match_exit
from flows.http_tool import HttpTool
from flows.logic import LogicError, evaluate, truthy
from flows.schema import (
    BranchNode,
    CollectNode,
    DtmfMenuNode,
    EndNode,
    Flow,
    HttpNode,
    LlmNode,
    Node,
    SayNode,
    TransferNode,
)
from flows.templates import TemplateError, render

__all__ = ["CompleteFn", "FlowHost", "FlowRunner", "llm_reply_schema"]

CompleteFn = Callable[[list[dict[str, Any]], dict[str, Any] | None, int], Awaitable[str]]
"""(messages, JSON schema or None, max_tokens) -> the model's text. The schema constrains the output when
the backend supports it (llama.cpp grammars, vLLM guided_json); the runner copes with free text too."""

STILL_THERE = "Are you still there?"
LLM_TROUBLE = "Sorry, I didn't catch that. Could you say it again?"
HISTORY_LIMIT = 12  # messages of the current llm node kept for the model; older turns are dropped

_DTMF_WORDS = {
    "zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "star": "*", "asterisk": "*", "pound": "#", "hash": "#",
}  # fmt: skip


class FlowHost(Protocol):
    """What the runner needs from the application that carries the conversation."""

    async def say(self, text: str) -> None:
        """Speak (or send as text) the agent's words."""

    async def emit(self, type: str, **fields: Any) -> None:
        """Publish a session event: ``flow.node_entered``, ``flow.variable_set``, ``flow.http``,
        ``flow.error``, ``flow.transfer``, ``flow.ended``."""

    async def end(self, reason: str) -> None:
        """Hang up / close the session."""

    async def transfer(self, target: str, handoff: str) -> None:
        """Say ``handoff`` (if not empty) and hand the call to ``target`` (E.164 number or SIP URI)."""


def llm_reply_schema(exit_names: list[str], max_say_chars: int = 400) -> dict[str, Any]:
    """JSON schema for an llm node's reply; the exit enum makes a constrained model pick a real exit.

    Keys are in alphabetical order ("exit" before "say") because some backends sort schema keys before
    building a grammar; writing them sorted keeps generation order the same everywhere.
    """
    return {
        "type": "object",
        "properties": {
            "exit": {"type": "string", "enum": [*exit_names, "stay"]},
            "say": {"type": "string", "maxLength": max_say_chars},
        },
        "required": ["exit", "say"],
    }


_KIND_HELP = {
    "number": "a number, written with digits",
    "yes_no": 'whether the caller said yes or no: "yes" or "no"',
    "date": "a calendar date, as YYYY-MM-DD",
    "time": "a time of day, as HH:MM in 24-hour form",
    "choice": "one of the listed options, exactly as written",
    "regex": "the requested code or reference, exactly as said",
    "text": "the caller's answer",
}


class FlowRunner:
    """Drives one conversation through a validated :class:`Flow`.

    Call :meth:`start` once, then feed caller input. Every public coroutine is serialised by a lock, so
    the host may call them from concurrent tasks (a silence timer and a transcript, for instance).
    """

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
                await self._guarded(self._menu_answer(node, self._spoken_option(node, text)))

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

    async def _run_from(self, node_id: str | None) -> None:
        """Run nodes from ``node_id`` until one waits for the caller or the conversation ends."""
        steps = 0
        while node_id is not None and not self._ended:
            steps += 1
            if steps > self._max_steps:
                await self._error(f"more than {self._max_steps} nodes ran without waiting for the caller")
                return
            if steps > 1:
                # Each node's work is bounded (a template render has a CPU budget), but a flow may chain up to
                # max_steps nodes without waiting: let the loop serve others between them.
                await asyncio.sleep(0)
            node = self._nodes.get(node_id)
            if node is None:  # only an unvalidated Flow can get here; load_flow() rejects unknown targets
                await self._error(f"no node with id {node_id!r}")
                return
            self._node = node
            self._waiting = False
            await self.host.emit("flow.node_entered", node=node.id, node_type=node.type)
            try:
                node_id = await self._enter(node)
            except TemplateError as exc:
                await self._error(str(exc))
                return

    async def _enter(self, node: Node) -> str | None:
        """Do what entering ``node`` does; the id of the node to go on to, or None to wait or stop."""
        if isinstance(node, SayNode):
            await self._say_template(node.text)
            return node.next
        if isinstance(node, CollectNode | DtmfMenuNode):
            self._retries = self._reprompts = 0
            await self._say_template(node.prompt)
            self._waiting = True
            return None
        if isinstance(node, LlmNode):
            self._turns = self._reprompts = 0
            self._history = []
            if node.opening:
                await self._say_template(node.opening)
            self._waiting = True
            return None
        if isinstance(node, BranchNode):
            return await self._branch(node)
        if isinstance(node, HttpNode):
            return await self._http_call(node)
        if isinstance(node, TransferNode):
            handoff = self._render(node.handoff) if node.handoff else ""
            if handoff:
                self.transcript.append({"role": "agent", "text": handoff})
            await self.host.emit("flow.transfer", target=node.target)
            await self.host.transfer(node.target, handoff)
            await self._finish("transfer", hang_up=False)
            return None
        if isinstance(node, EndNode):
            if node.text:
                await self._say_template(node.text)
            await self._finish(node.reason)
            return None
        raise AssertionError(f"unhandled node type {node.type}")

    async def _goto(self, node_id: str | None) -> None:
        self._waiting = False
        if node_id is None:  # only an llm node's unset on_max_turns: the documented way out is to end
            await self._finish("max_turns")
        else:
            await self._run_from(node_id)

    # -- node behaviour ---------------------------------------------------------------------------------

    async def _collect_answer(self, node: CollectNode, text: str) -> None:
        choices = [(c.value, c.synonyms) for c in node.choice_list()]
        now = self.now()
        value = await self._extract(node, text, now, choices)
        if value is None and node.llm_fallback and self._complete is not None and node.kind != "text":
            normalized = await self._llm_normalize(node, text, now)
            if normalized:
                value = await self._extract(node, normalized, now, choices)
        if value is None:
            self._retries += 1
            if self._retries > node.max_retries:
                await self._goto(node.on_failure)
            else:
                await self._say_template(node.retry_prompt or node.prompt)
            return
        await self._set(node.variable, value)
        await self._goto(node.next)

    async def _extract(
        self, node: CollectNode, text: str, now: datetime, choices: list[tuple[str, list[str]]]
    ) -> Any:
        # Off the loop: a caller's answer against a large choice list (or a pattern near its time limit)
        # costs tens of milliseconds that no other caller should wait for.
        return await asyncio.to_thread(
            extract,
            node.kind,
            text,
            now=now,
            choices=choices,
            pattern=node.pattern,
            regex_timeout_s=self._regex_timeout_s,
        )

    async def _llm_normalize(self, node: CollectNode, text: str, now: datetime) -> str | None:
        """Ask the model to restate an answer in a form the deterministic parser understands."""
        assert self._complete is not None
        value_schema: dict[str, Any] = {"type": "string", "maxLength": 40}
        options = ""
        if node.kind == "yes_no":
            value_schema = {"type": "string", "enum": ["yes", "no", "none"]}
        elif node.kind == "choice":
            values = [c.value for c in node.choice_list()]
            value_schema = {"type": "string", "enum": [*values, "none"]}
            options = f" Options: {', '.join(values)}."
        system = (
            f"Extract {_KIND_HELP[node.kind]} from the caller's reply.{options} Today is "
            f'{now.strftime("%A %Y-%m-%d")}. Answer with JSON {{"value": ...}}; use "none" if the reply '
            "does not contain it."
        )
        question = self._render(node.prompt)
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": f"Question: {question}\nReply: {text}"},
        ]
        schema = {"type": "object", "properties": {"value": value_schema}, "required": ["value"]}
        try:
            raw = await self._complete(messages, schema, 48)
        except Exception as exc:  # the model is an optional helper here; the retry prompt still works
            await self.host.emit("flow.error", node=node.id, message=f"LLM fallback failed: {exc}")
            return None
        value = _json_object(raw).get("value")
        if value is None or str(value).strip().lower() == "none":
            return None
        return str(value)

    async def _llm_turn(self, node: LlmNode, text: str) -> None:
        self._turns += 1
        self._history.append({"role": "user", "content": text})
        names = [e.name for e in node.exits]
        chosen = match_exit(text, node.exits)  # trigger phrases are cheaper and surer than the model
        if chosen is None:
            assert self._complete is not None
            messages = [
                {"role": "system", "content": self._llm_system(node)},
                *self._history[-HISTORY_LIMIT:],
            ]
            try:
                raw = await self._complete(messages, llm_reply_schema(names), node.max_tokens)
            except Exception as exc:
                await self.host.emit("flow.error", node=node.id, message=f"LLM failed: {exc}")
                raw = json.dumps({"say": LLM_TROUBLE, "exit": "stay"})
            reply = _json_object(raw)
            if not reply and raw.strip():  # an unconstrained model answered in prose
                reply = {"say": raw.strip(), "exit": "stay"}
            say = str(reply.get("say") or "").strip()[:1000]
            chosen = reply.get("exit") if reply.get("exit") in names else None
            if say:
                self._history.append({"role": "assistant", "content": say})
                await self._say(say)
        if chosen is not None:
            await self.host.emit("flow.llm_exit", node=node.id, exit=chosen)
            await self._goto(next(e.next for e in node.exits if e.name == chosen))
        elif self._turns >= node.max_turns:
            await self._goto(node.on_max_turns)

    def _llm_system(self, node: LlmNode) -> str:
        exits = "\n".join(f"- {e.name}: {e.description or e.name.replace('_', ' ')}" for e in node.exits)
        return (
            f"{self._render(node.instructions)}\n\n"
            "You are talking with a caller on the phone. Keep each reply to one or two short sentences.\n"
            'Answer with JSON: {"exit": the exit to take, "say": what you say to the caller}.\n'
            f"Exits:\n- stay: keep talking with the caller\n{exits}"
        )

    def _spoken_option(self, node: DtmfMenuNode, text: str) -> str | None:
        """The option a caller named instead of pressing a key: its digit ("two", "press 2") or its label."""
        words = re.findall(r"[a-z]+|\d|[*#]", text.lower())
        digits = {o.digit: o.next for o in node.options}
        for word in words:
            digit = _DTMF_WORDS.get(word, word)
            if digit in digits and (word not in ("one", "oh") or len(words) <= 3):  # "one" is also a pronoun
                return digits[digit]
        labels = [(o.digit, _label_words(o.label)) for o in node.options if o.label]
        digit = match_choice(text, labels)
        return digits[digit] if digit else None

    async def _menu_answer(self, node: DtmfMenuNode, next_id: str | None) -> None:
        if next_id is not None:
            await self._goto(next_id)
            return
        self._retries += 1
        if self._retries > node.max_retries:
            await self._goto(node.on_failure)
        else:
            await self._say_template(node.prompt)

    async def _branch(self, node: BranchNode) -> str:
        data = {**self._vars, "now": self.now().isoformat()}
        for j, case in enumerate(node.cases):
            if j:
                await asyncio.sleep(0)  # each condition has a CPU budget; a node may hold 50 of them
            try:
                if truthy(evaluate(case.when, data)):
                    return case.next
            except LogicError as exc:  # a bad case is false; the event makes the flow bug visible
                await self.host.emit("flow.error", node=node.id, message=f"cases[{j}].when: {exc}")
        return node.default

    async def _http_call(self, node: HttpNode) -> str:
        result = await self._http.call(node, self._vars, now=self.now())
        await self.host.emit(
            "flow.http", node=node.id, ok=result.ok, status=result.status, error=result.error
        )
        if not result.ok:
            return node.on_error
        for name, value in result.saved.items():
            await self._set(name, value)
        return node.next

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


def _label_words(label: str) -> list[str]:
    """A dtmf label's alternatives: "sales, buying or orders" -> ["sales", "buying", "orders"]."""
    return [p.strip() for p in re.split(r",|/|;|\bor\b", label) if p.strip()]


def _json_object(raw: str) -> dict[str, Any]:
    """The JSON object in a model reply (the whole text, or the first {...} in it); {} if there is none."""
    for candidate in (raw, *re.findall(r"\{.*\}", raw, flags=re.DOTALL)):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}
