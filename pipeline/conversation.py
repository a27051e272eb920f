"""The conversation: its turns as recorded, the history the LLM is given, and edits for what was heard."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

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


class ConversationListener(Protocol):
    """Told when the LLM is about to read a prompt, and when the history changed after an answer."""

    def prompt_built(self) -> None: ...

    def history_changed(self) -> None: ...


class Conversation:
    """The chat history (instructions first) and the window of it that the LLM sees.

    An answer goes into the history whole when its text is done; a barge-in later cuts it to what the
    caller heard, or drops it when nothing was heard. Messages are matched by identity, not content:
    the same words may be said twice.

    It also remembers the last prompt it built (:meth:`context`), so that it can tell when the next one
    will not begin with it (the window moves, the instructions changed) and the LLM's prompt cache will
    miss: :meth:`prefix_to_prefill` then names the prefix to read ahead (``pipeline.prefill``).
    """

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.history: list[Message] = [{"role": "system", "content": config.instructions}]
        self.instructions = config.instructions
        self.language_note = ""  # what language routing adds to the instructions ("Answer in German.")
        self.listener: ConversationListener | None = None
        self._last_prompt: list[tuple[str, Any]] | None = None  # the last context built, as (role, content)
        self._planned: list[tuple[str, Any]] | None = None  # the prefix last handed out to be read ahead

    def set_instructions(self, instructions: str) -> None:
        self.instructions = instructions
        self._set_system()

    def set_language_note(self, note: str) -> None:
        """An instruction kept after the instructions, whatever they become ("" drops it)."""
        self.language_note = note
        self._set_system()

    def _set_system(self) -> None:
        note = self.language_note
        content = f"{self.instructions} {note}" if note else self.instructions
        self.history[0] = {"role": "system", "content": content}
        self._changed()

    def add_user(self, text: str) -> Message:
        message: Message = {"role": "user", "content": text}
        self.history.append(message)
        return message

    def retract(self, message: Message) -> None:
        """Take ``message`` and everything after it out of the history (a turn the caller went on with)."""
        for index, entry in enumerate(self.history):
            if entry is message:
                del self.history[index:]
                self._changed()
                return

    def add_answer(self, response: Response, text: str) -> None:
        """The whole answer, as written (cut later by :meth:`record_heard` if the caller barges in)."""
        response.history_entry = {"role": "assistant", "content": text}
        self.history.append(response.history_entry)
        self._changed()

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
        self._changed()

    def drop(self, entry: Message) -> None:
        self.history = [message for message in self.history if message is not entry]

    def _holds(self, entry: Message) -> bool:
        return any(message is entry for message in self.history)

    def recent_answers(self, count: int) -> list[str]:
        """The last ``count`` answers' texts, from the whole history (the LLM's window may hold fewer)."""
        texts = [str(m.get("content") or "") for m in self.history[1:] if m["role"] == "assistant"]
        return [t for t in texts[-count:] if t] if count > 0 else []

    def context(self, next_user: str | None = None) -> list[Message]:
        """What the LLM sees: the instructions and at most ``history_messages`` recent messages.

        With ``next_user``, the context as if the caller had just said it (a speculative answer's), windowed
        exactly as the turn's own context will be once the words are in the history.

        A small model's context window (2048 tokens for the embedded one) would otherwise fill up in a long
        call; the full history stays in ``history`` and the session record. The window slides in steps of
        half its size, not a message at a time: llama.cpp reuses its KV cache only for an unchanged prompt
        prefix, and re-reading the whole context on every turn cost ~0.9 s of first-token time on 2 cores
        (bench/latency.py, turns past the window). Stepping keeps the prefix for several turns, and when it
        does move the new prefix has been read ahead (:meth:`prefix_to_prefill`).

        Building a context means the LLM is about to read it: the listener is told (a read-ahead stops).
        """
        history = self.history if next_user is None else [*self.history, _user(next_user)]
        context = self._window(history)
        self._last_prompt, self._planned = _snapshot(context), None
        if self.listener is not None:
            self.listener.prompt_built()
        return context

    def next_prefix(self) -> list[Message]:
        """The messages the next turn's context will begin with: its window once the caller's next words
        are in the history, less those words."""
        probe = _user("")
        context = self._window([*self.history, probe])
        return context[:-1] if context[-1] is probe else context

    def prefix_to_prefill(self) -> list[Message] | None:
        """The next turn's context prefix, copied, when the LLM's prompt cache will not hold it.

        That is when the next context does not begin with the whole of the last one: the window is about
        to move, or the instructions changed. None when the next prompt only extends the last (the cache
        holds), when no prompt was built yet, or when this prefix was handed out already.
        """
        last = self._last_prompt
        if last is None:
            return None
        prefix = self.next_prefix()
        planned = _snapshot(prefix)
        if planned == self._planned:
            return None
        common = 0
        for a, b in zip(planned, last, strict=False):
            if a != b:
                break
            common += 1
        if common >= len(last):
            return None
        self._planned = planned
        return [dict(message) for message in prefix]

    def _changed(self) -> None:
        if self.listener is not None:
            self.listener.history_changed()

    def _window(self, history: list[Message]) -> list[Message]:
        system, rest = history[0], history[1:]
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


def _user(text: str) -> Message:
    return {"role": "user", "content": text}


def _snapshot(messages: list[Message]) -> list[tuple[str, Any]]:
    return [(message["role"], message.get("content")) for message in messages]
