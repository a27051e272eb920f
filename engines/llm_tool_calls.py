"""OpenAI ``tools`` on an OpenAI-compatible server: the request's fields, and its streamed ``tool_calls`` read back.

A server that takes tools natively (vLLM with a tool parser, llama.cpp's ``llama-server --jinja``,
llama-cpp-python's server with ``chat_format=chatml-function-calling``) streams a call as ``tool_calls`` deltas:
the first names the call's ``index``, ``id`` and function ``name``, the following ones carry pieces of its
``arguments`` (a JSON text), and several calls follow one another by index. :class:`ToolCallParser` puts them
together.

The Realtime layer reads a tool decision as one JSON text, ``{"name": <tool>, "parameters": <arguments>}``
or ``{"name": "none"}`` (``gateway/realtime/tools.py``), the form the embedded engine writes under a grammar.
:class:`DecisionText` writes the server's native call in that same form, as it arrives, so both paths share
one reader and the arguments still stream piece by piece.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("voxgate.llm")

NO_CALL = '{"name": "none"}'


def tool_request(tools: list[dict[str, Any]], required: bool) -> dict[str, Any]:
    """The ``tools`` and ``tool_choice`` of a chat-completions request for the Realtime API's function tools
    (``{"type": "function", "name", "description", "parameters"}``)."""
    chat = []
    for tool in tools:
        function: dict[str, Any] = {
            "name": tool["name"],
            "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
        }
        if tool.get("description"):
            function["description"] = tool["description"]
        chat.append({"type": "function", "function": function})
    choice: str | dict[str, Any] = "required" if required else "auto"
    if required and len(tools) == 1:
        # The same demand, spelled the way every tool-capable server takes: llama-cpp-python's server
        # streams a call only for a named function, and fails on "required".
        choice = {"type": "function", "function": {"name": tools[0]["name"]}}
    return {"tools": chat, "tool_choice": choice}


@dataclass
class ToolCall:
    """One call as far as the server has streamed it."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


class ToolCallParser:
    """The calls of one streamed answer, put together from its ``tool_calls`` deltas."""

    def __init__(self) -> None:
        self.calls: dict[int, ToolCall] = {}
        self._last: int | None = None

    def feed(self, deltas: Any) -> list[tuple[ToolCall, str]]:
        """Take one chunk's ``tool_calls``; each delta's call with the argument text it adds."""
        out: list[tuple[ToolCall, str]] = []
        for delta in deltas if isinstance(deltas, list) else []:
            if not isinstance(delta, dict):
                continue
            call = self._call_for(delta)
            function = delta.get("function") if isinstance(delta.get("function"), dict) else {}
            name = function.get("name")
            # OpenAI and vLLM name a call once; llama-cpp-python repeats the whole name in every delta, so a
            # name is taken once, never joined.
            if isinstance(name, str) and name and not call.name:
                call.name = name
            if isinstance(delta.get("id"), str) and delta["id"] and not call.id:
                call.id = delta["id"]
            piece = function.get("arguments")
            if piece is not None and not isinstance(piece, str):
                piece = json.dumps(piece)  # a server that sends the arguments as an object, whole
            call.arguments += piece or ""
            out.append((call, piece or ""))
        return out

    def _call_for(self, delta: dict[str, Any]) -> ToolCall:
        index = delta.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            # No index (some servers leave it out): a new id starts a new call, anything else continues one.
            known = {call.id for call in self.calls.values()}
            fresh = isinstance(delta.get("id"), str) and delta["id"] and delta["id"] not in known
            index = len(self.calls) if fresh or self._last is None else self._last
        self._last = index
        if index not in self.calls:
            self.calls[index] = ToolCall(index)
        return self.calls[index]


class DecisionText:
    """A chat completion's deltas as the Realtime layer's decision text (see the module docstring).

    The first call is the decision: its head ``{"name": ..., "parameters": `` goes out once its name is
    known, then its arguments piece by piece, and ``}`` at :meth:`close`. Words before any call mean the
    model answers instead (``{"name": "none"}``, and :attr:`finished`): only non-blank words count, as some
    servers stream a blank line before a call. Later calls are read but not written: a Realtime response
    carries one call.
    """

    def __init__(self) -> None:
        self.parser = ToolCallParser()
        self.finished = False
        self._first: ToolCall | None = None
        self._opened = False
        self._others_logged = False

    def feed(self, delta: dict[str, Any]) -> str:
        """One chunk's ``delta`` (``content`` and/or ``tool_calls``): the decision text it adds."""
        if self.finished:
            return ""
        out: list[str] = []
        for call, piece in self.parser.feed(delta.get("tool_calls")):
            if self._first is None:
                self._first = call
            if call is not self._first:
                if not self._others_logged:
                    log.info("the LLM server streamed more than one tool call; the response takes the first")
                    self._others_logged = True
                continue
            if not self._opened:
                if not call.name:
                    continue  # its arguments wait in call.arguments until the name comes
                self._opened = True
                out.append(f'{{"name": {json.dumps(call.name)}, "parameters": {call.arguments}')
            else:
                out.append(piece)
        content = delta.get("content")
        if self._first is None and isinstance(content, str) and content.strip():
            self.finished = True
            return NO_CALL
        return "".join(out)

    @property
    def started(self) -> bool:
        """Whether the answer has said anything yet: words, or a call's name."""
        return self.finished or self._opened

    def close(self) -> str:
        """The end of the answer: what closes the decision text ("" when nothing was opened)."""
        if self.finished or not self._opened or self._first is None:
            return ""
        self.finished = True
        # A call without arguments (a function with no parameters) has an empty object for them.
        return "}" if self._first.arguments.strip() else "{}}"
