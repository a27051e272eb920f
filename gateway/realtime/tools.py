"""Function calling for Realtime responses: the LLM picks a tool (or none) as JSON constrained by a schema.

Every engine voxgate runs can follow a JSON schema (a llama.cpp grammar in-process; ``response_format`` or
``guided_json`` on a remote server, per ``llm_schema_format``), so one mechanism serves them all (a server
that takes OpenAI tools, ``llm_native_tools``, has its own calls written in the same form): before a
response that has tools to offer, the LLM answers ``{"name": ..., "parameters": {...}}`` where ``name`` is one
of the tools or ``"none"`` and the parameters (the call's arguments) follow that tool's own schema. A call becomes a
``function_call`` item; ``"none"`` lets the spoken (or text) answer go ahead as usual.

The decision is read as it is generated (:class:`DecisionReader`): once the tool's name is whole, the call's
item goes out and the arguments follow token by token as ``response.function_call_arguments.delta``, the
very text the LLM writes (so the deltas joined are ``.done``'s arguments); a ``"none"`` stops the
generation there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from engines.base import GenerationOptions
from engines.llm_tool_calls import tool_request
from gateway.agent.llm import schema_constraint
from gateway.realtime.replies import count_tokens
from gateway.realtime.schema import RealtimeError
from gateway.realtime.session import Note, RealtimeSession
from pipeline.conversation import TurnRecord
from pipeline.response import new_id
from pipeline.session import Session

log = logging.getLogger("voxgate.realtime")

MAX_ARGUMENT_TOKENS = 200


@dataclass(frozen=True)
class Call:
    """The function the LLM chose and its arguments (a JSON text, as the Realtime API carries them)."""

    name: str
    arguments: str


def offered(tools: list[dict[str, Any]], choice: str | dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """The tools a response may call under ``tool_choice``, and whether it must call one."""
    if choice == "none" or not tools:
        return [], False
    if isinstance(choice, dict):
        name = choice.get("name") or (choice.get("function") or {}).get("name")
        chosen = [tool for tool in tools if tool["name"] == name]
        if not chosen:
            raise RealtimeError(
                "invalid_value", f"tool_choice names no declared tool: {name!r}", param="tool_choice"
            )
        return chosen, True
    return tools, choice == "required"


def decision_schema(tools: list[dict[str, Any]], required: bool) -> dict[str, Any]:
    """One JSON object: a tool's name and arguments that follow its parameters, or ``{"name": "none"}``."""
    options: list[dict[str, Any]] = []
    for tool in tools:
        parameters = tool.get("parameters") or {"type": "object", "properties": {}}
        options.append(
            {
                "type": "object",
                # "name" before "parameters" in both the declared and the alphabetical order (the embedded
                # engine's grammar sorts keys): the name is known before the arguments are written.
                "properties": {"name": {"const": tool["name"]}, "parameters": parameters},
                "required": ["name", "parameters"],
            }
        )
    if not required:
        options.append({"type": "object", "properties": {"name": {"const": "none"}}, "required": ["name"]})
    return options[0] if len(options) == 1 else {"anyOf": options}


def decision_prompt(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]], required: bool
) -> list[dict[str, Any]]:
    """The conversation with the tools described in the system message, asking for the JSON decision."""
    described = "\n".join(
        f"- {tool['name']}: {tool.get('description') or ''} Parameters: {json.dumps(tool.get('parameters') or {})}"
        for tool in tools
    )
    ask = "Call the function that fits the user's last message." if required else (
        'If a function fits the user\'s last message, call it; otherwise answer with {"name": "none"}.'
    )  # fmt: skip
    system = dict(messages[0])
    system["content"] = (
        f"{system.get('content') or ''}\n\nYou can call these functions:\n{described}\n{ask} "
        'Reply with JSON only: {"name": "<function>", "parameters": {...}}.'
    )
    return [system, *messages[1:]]


class DecisionReader:
    """The decision JSON read as it grows: the name once it is whole, then the arguments' text piece by piece.

    The schema puts ``name`` before ``parameters`` (llama.cpp's grammar and the servers' keep that order); a
    model that wrote them the other way round is read whole at the end instead.
    """

    HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*(,\s*"parameters"\s*:\s*|\})')

    def __init__(self) -> None:
        self.text = ""
        self.name: str | None = None
        self.start: int | None = None  # where the arguments begin in ``text``
        self.end: int | None = None  # just past their closing brace
        self._scan = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, piece: str) -> str:
        """Take the next generated text; the arguments' text it completes ("" when none)."""
        self.text += piece
        if self.name is None:
            head = self.HEAD.match(self.text)
            if head is None:
                return ""
            try:
                self.name = json.loads(f'"{head.group(1)}"')
            except json.JSONDecodeError:
                self.name = head.group(1)
            if head.group(2) == "}":
                return ""
            self.start = self._scan = head.end()
        if self.start is None or self.end is not None:
            return ""
        done = self._scan
        for index in range(self._scan, len(self.text)):
            char = self.text[index]
            if self._depth == 0 and char.isspace():  # before the opening brace: not part of the arguments
                self.start = done = index + 1
            elif self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self.end = index + 1
                    break
        self._scan = self.end if self.end is not None else len(self.text)
        return self.text[done : self._scan]

    @property
    def arguments(self) -> str:
        """The arguments' text as far as it was written."""
        return self.text[self.start : self._scan] if self.start is not None else ""


async def decision_stream(session: Session, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                          required: bool, schema_format: Any) -> AsyncIterator[str]:  # fmt: skip
    """The LLM's decision JSON, as it generates it (on the callers' LLM worker, constrained by the schema)."""
    llm = session.rt.llm
    if llm.capabilities.native_tools:
        # The server takes OpenAI tools itself (llm_native_tools): it reads the conversation as it is, and the
        # engine writes the server's streamed tool_calls as this same decision text.
        prompt, extra = messages, tool_request(tools, required)
    else:
        prompt = decision_prompt(messages, tools, required)
        extra = schema_constraint(decision_schema(tools, required), schema_format)
    options = GenerationOptions(max_tokens=MAX_ARGUMENT_TOKENS, temperature=0.0, extra=extra)
    stream = session.rt.llm_worker.stream(lambda: llm.stream_chat(prompt, options))
    async with contextlib.aclosing(stream) as pieces:
        async for piece in pieces:
            yield piece


def whole_call(text: str, tools: list[dict[str, Any]]) -> Call | None:
    """A decision read whole: the call it names, or None (words, or no usable call)."""
    try:
        decision = json.loads(text)
    except json.JSONDecodeError:
        log.info("the LLM's tool decision was not JSON: %.200r", text)
        return None
    name = decision.get("name") if isinstance(decision, dict) else None
    if name not in {tool["name"] for tool in tools}:
        return None
    arguments = decision.get("parameters")
    return Call(name, json.dumps(arguments if isinstance(arguments, dict) else {}))


async def respond_with_call(session: RealtimeSession, turn: TurnRecord, messages: list[dict[str, Any]],
                            tools: list[dict[str, Any]], required: bool, schema_format: Any,
                            speaks: bool) -> bool:  # fmt: skip
    """Ask the LLM for a call and stream it as a response whose output is one ``function_call`` item; False
    when the LLM answers in words (the answer then goes ahead)."""
    reader, names = DecisionReader(), {tool["name"] for tool in tools}
    data: dict[str, Any] | None = None
    failed: str | None = None
    try:
        async for piece in decision_stream(session, messages, tools, required, schema_format):
            delta = reader.feed(piece)
            if reader.name is not None and reader.name not in names:
                break  # "none": stop generating, the answer is in words
            if data is None and reader.start is not None:
                data = await _call_started(session, turn, messages, str(reader.name), speaks)
            if data is not None and delta:
                await session.emit(Note("call_delta", {"response_id": data["response_id"], "delta": delta}))
            if reader.end is not None:
                break
    except Exception as exc:  # the LLM failed (its server down, or refusing the tools): said, never a hang
        log.warning("the LLM's tool decision failed: %s", exc)
        failed = f"the agent could not answer: {exc}"
        await session.error("response_failed", failed)
        if data is None:
            await _say_failed_reply(session, turn, speaks)
            return True
        # A call already under way ends, failed, with the arguments it got.
    if data is None:
        # The name came after the arguments (or never): the decision is read whole, and sent in one piece.
        call = whole_call(reader.text, tools) if reader.name is None else None
        if call is None:
            return False
        data = await _call_started(session, turn, messages, call.name, speaks)
        await session.emit(Note("call_delta", {"response_id": data["response_id"], "delta": call.arguments}))
        arguments, complete = call.arguments, True
    else:
        arguments = reader.arguments
        complete = reader.end is not None and isinstance(_json_or_none(arguments), dict)
    turn.response_text = f"{data['name']}({arguments})"
    session.record(turn)
    entry = {"role": "assistant", "content": f"(calling {data['name']} with {arguments})"}
    session.conversation.history.append(entry)
    data.update(arguments=arguments, history=entry, complete=complete and failed is None, failed=failed,
                output_tokens=count_tokens(session, reader.text), token_limit=MAX_ARGUMENT_TOKENS)  # fmt: skip
    await session.emit(Note("call_done", data))
    return True


async def _call_started(session: RealtimeSession, turn: TurnRecord, messages: list[dict[str, Any]], name: str,
                        speaks: bool) -> dict[str, Any]:  # fmt: skip
    call_id, response_id = new_id("call"), new_id("resp")
    turn.response_id = response_id
    session.calls[call_id] = name
    tokens = sum(count_tokens(session, str(m.get("content") or "")) for m in messages)
    data = {"response_id": response_id, "call_id": call_id, "name": name, "turn_id": turn.turn_id,
            "input_tokens": tokens, "speaks": speaks}  # fmt: skip
    await session.emit(Note("call_started", data))
    return dict(data)


async def _say_failed_reply(session: RealtimeSession, turn: TurnRecord, speaks: bool) -> None:
    """A failed decision is answered as a failed answer is (pipeline/session.py): after the error, the caller
    hears ``failed_reply`` rather than silence, where turns are detected; manual turns are left alone."""
    text = session.config.failed_reply
    if text and not session.manual_turns and not session.closed.is_set():
        await session.answers.start(turn, [], spoken_prefix=text, fixed_text=True, speak=speaks)


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None
