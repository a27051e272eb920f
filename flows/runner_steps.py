"""How the runner steps through a flow: entering each node, and what each node does with the caller's answer."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

from flows.extract import extract, match_exit
from flows.logic import LogicError, evaluate, truthy
from flows.runner_prompts import (
    HISTORY_LIMIT,
    LLM_TROUBLE,
    llm_reply_schema,
    llm_system_prompt,
    llm_turn_reply,
    normalize_request,
    normalized_value,
)
from flows.runner_state import RunnerState
from flows.schema import (
    BranchNode,
    CollectNode,
    DtmfMenuNode,
    EndNode,
    HttpNode,
    LlmNode,
    Node,
    SayNode,
    TransferNode,
)
from flows.templates import TemplateError

__all__ = ["NodeSteps"]


class NodeSteps(RunnerState):
    """Runs nodes until one waits for the caller, and moves on from a node once the caller has answered."""

    # -- driving ----------------------------------------------------------------------------------------

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
        messages, schema = normalize_request(node, self._render(node.prompt), text, now)
        try:
            raw = await self._complete(messages, schema, 48)
        except Exception as exc:  # the model is an optional helper here; the retry prompt still works
            await self.host.emit("flow.error", node=node.id, message=f"LLM fallback failed: {exc}")
            return None
        return normalized_value(raw)

    async def _llm_turn(self, node: LlmNode, text: str) -> None:
        self._turns += 1
        self._history.append({"role": "user", "content": text})
        names = [e.name for e in node.exits]
        chosen = match_exit(text, node.exits)  # trigger phrases are cheaper and surer than the model
        if chosen is None:
            assert self._complete is not None
            messages = [
                {"role": "system", "content": llm_system_prompt(node, self._render(node.instructions))},
                *self._history[-HISTORY_LIMIT:],
            ]
            try:
                raw = await self._complete(messages, llm_reply_schema(names), node.max_tokens)
            except Exception as exc:
                await self.host.emit("flow.error", node=node.id, message=f"LLM failed: {exc}")
                raw = json.dumps({"say": LLM_TROUBLE, "exit": "stay"})
            say, chosen = llm_turn_reply(raw, names)
            if say:
                self._history.append({"role": "assistant", "content": say})
                await self._say(say)
        if chosen is not None:
            await self.host.emit("flow.llm_exit", node=node.id, exit=chosen)
            await self._goto(next(e.next for e in node.exits if e.name == chosen))
        elif self._turns >= node.max_turns:
            await self._goto(node.on_max_turns)

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
