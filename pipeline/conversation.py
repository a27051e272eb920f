"""The conversation: its turns as recorded, the history the LLM is given, and edits for what was heard."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.response import Response
from pipeline.session_config import SessionConfig

Message = dict[str, Any]


@dataclass
class TurnRecord:
    """One exchange as stored and shown by ``GET /v1/sessions/{id}``."""

    turn_id: str
    source: str
    user_text: str
    started_at: float = field(default_factory=time.time)
    response_id: str | None = None
    response_text: str = ""
    heard_text: str = ""
    interrupted: bool = False
    resumed: bool = False
    timings: dict[str, float | None] = field(default_factory=dict)


class Conversation:
    """The chat history (instructions first) and the window of it that the LLM sees.

    An answer goes into the history whole when its text is done; a barge-in later cuts it to what the
    caller heard, or drops it when nothing was heard. Messages are matched by identity, not content:
    the same words may be said twice.
    """

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.history: list[Message] = [{"role": "system", "content": config.instructions}]

    def set_instructions(self, instructions: str) -> None:
        self.history[0] = {"role": "system", "content": instructions}

    def add_user(self, text: str) -> None:
        self.history.append({"role": "user", "content": text})

    def add_answer(self, response: Response, text: str) -> None:
        """The whole answer, as written (cut later by :meth:`record_heard` if the caller barges in)."""
        response.history_entry = {"role": "assistant", "content": text}
        self.history.append(response.history_entry)

    def record_heard(self, response: Response, heard: str) -> None:
        """After a barge-in the history keeps only what the caller heard of ``response``."""
        entry = response.history_entry
        if entry is not None and self._holds(entry):
            if heard:
                entry["content"] = heard
            else:
                self.drop(entry)
        elif heard:
            entry = {"role": "assistant", "content": heard}
            self.history.append(entry)
            response.history_entry = entry

    def drop(self, entry: Message) -> None:
        self.history = [message for message in self.history if message is not entry]

    def _holds(self, entry: Message) -> bool:
        return any(message is entry for message in self.history)

    def context(self) -> list[Message]:
        """What the LLM sees: the instructions and at most ``history_messages`` recent messages.

        A small model's context window (2048 tokens for the embedded one) would otherwise fill up in a long
        call; the full history stays in ``history`` and the session record. The window slides in steps of
        half its size, not a message at a time: llama.cpp reuses its KV cache only for an unchanged prompt
        prefix, and re-reading the whole context on every turn cost ~0.9 s of first-token time on 2 cores
        (bench/latency.py, turns past the window). Stepping keeps the prefix for several turns.
        """
        system, rest = self.history[0], self.history[1:]
        keep = self.config.history_messages
        if keep <= 0:
            window: list[Message] = []
        elif len(rest) <= keep:
            window = rest
        else:
            step = max(1, keep // 2)
            window = rest[((len(rest) - keep) // step + 1) * step :]
        while window and window[0]["role"] == "assistant":
            window = window[1:]  # chat templates expect the conversation to open with the user
        return [system, *window]

    def resume_context(self, response: Response) -> list[Message]:
        """The LLM's context for picking a falsely interrupted ``response`` up again: the cut answer leaves
        the history, and an unfinished one is continued from what it had generated (an assistant prefix)."""
        if response.history_entry is not None:
            self.drop(response.history_entry)
        messages = self.context()
        if not response.llm_done:
            messages.append({"role": "assistant", "content": response.generated, "prefix": True})
        return messages
