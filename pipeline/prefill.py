"""Reading the next turn's context ahead, while the caller listens to an answer.

llama.cpp evaluates only the part of a prompt past the prefix its KV cache already holds. The history window
(``Conversation.context``) keeps that prefix for several turns, but when it moves the whole context would be
read again on the caller's critical path: 2.4-2.7 s more first-token time on 2 cores (issue 11: the 9th and
13th turns). So as soon as an answer's text is in the history, if the next turn's prefix will differ from
the last prompt's, the LLM reads that prefix in the background, and the turn evaluates only its new tokens.

The read-ahead runs on the shared LLM worker (one KV cache), a few tokens per step, and makes way at once:
building a prompt from the conversation stops it, and so does any other job waiting for the LLM worker (a
turn of another session), both between steps, so a caller's turn waits one step at most. Engines that do
not declare ``Capabilities.prefills_context`` are never asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from engines.base import ContextPrefiller
from pipeline.conversation import Conversation, Message
from pipeline.runtime import Runtime

log = logging.getLogger("voxgate.session")


class ContextPrefill:
    """A session's read-ahead of its next prompt prefix; listens to the session's :class:`Conversation`."""

    def __init__(
        self,
        runtime: Runtime,
        conversation: Conversation,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
    ) -> None:
        self.rt = runtime
        self.conversation = conversation
        self._spawn = spawn
        self.task: asyncio.Task[None] | None = None
        self.started = 0  # read-aheads begun
        self.completed = 0  # ... and read to the end (not stopped by a turn)
        conversation.listener = self

    def history_changed(self) -> None:
        """An answer went into the history (or was cut): read the next prefix if the cache will miss it."""
        engine = self.rt.llm
        capabilities = getattr(engine, "capabilities", None)
        if not getattr(capabilities, "prefills_context", False) or not isinstance(engine, ContextPrefiller):
            return
        messages = self.conversation.prefix_to_prefill()
        if messages is None:
            return
        self.cancel()
        self.task = self._spawn(self._read(engine, messages))

    def prompt_built(self) -> None:
        """The LLM is about to read a turn's prompt: it must not queue behind the read-ahead."""
        self.cancel()

    def cancel(self) -> None:
        """Stop the read-ahead: a queued one never starts, a running one stops after its current step."""
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()

    async def _read(self, engine: ContextPrefiller, messages: list[Message]) -> None:
        self.started += 1
        worker = self.rt.llm_worker
        read_all = False

        def steps() -> Iterator[int]:  # runs on the worker's thread
            nonlocal read_all
            with contextlib.closing(engine.prefill(messages)) as read:
                for cached in read:
                    yield cached
                    if worker.pending > 1:  # a job besides this one waits for the LLM: make way
                        return
            read_all = True

        try:
            async for _ in worker.stream(steps, buffer=1):
                pass
        except asyncio.CancelledError:
            raise
        except Exception:  # the turn will read the context itself; a failed read-ahead costs only time
            log.warning("reading the next context ahead failed", exc_info=True)
            return
        if read_all:
            self.completed += 1
