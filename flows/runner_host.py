"""What the flow runner needs from the application that carries a conversation: a host and a model."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

__all__ = ["CompleteFn", "FlowHost"]


CompleteFn = Callable[[list[dict[str, Any]], dict[str, Any] | None, int], Awaitable[str]]
"""(messages, JSON schema or None, max_tokens) -> the model's text. The schema constrains the output when
the backend supports it (llama.cpp grammars, vLLM guided_json); the runner copes with free text too."""


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
