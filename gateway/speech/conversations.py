"""HTTP chat conversations: one text-only voxgate :class:`Session` per conversation, kept while it is used.

A conversation is an ordinary session (transport ``chat``): the same LLM on the runtime's LLM worker, the same
history window, the same flows, and its turns stored like any call's, so ``GET /v1/sessions/{id}`` shows it
(the conversation id is the session id). Its answers are text only: no TTS and no paced audio, for the LLM's
answers and a flow's ``say`` alike.

One request at a time talks to a conversation (an exchange, under the conversation's lock): a second request
for the same id waits for the first, so turns never interleave in the history. Different conversations run
side by side; each has its own history. A conversation ends when it has been idle for the session idle
timeout (``speech.chat_idle_timeout_s``), when its flow ends, or when the registry is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from starlette.requests import HTTPConnection

from flows.schema import Flow
from gateway.agent.flow_agent import attach_flow
from gateway.settings import session_config
from gateway.state import AppState, app_state
from gateway.webhooks.publish import publish_session_end
from pipeline.agent_steps import TurnAgent
from pipeline.conversation import TurnRecord
from pipeline.events import (
    ErrorEvent,
    FlowEvent,
    ResponseInterrupted,
    ResponseStarted,
    ResponseTextDone,
    ServerEvent,
    SessionClosed,
    TranscriptFinal,
)
from pipeline.response import Response
from pipeline.session import Session

log = logging.getLogger("voxgate.chat")


@dataclass(frozen=True, slots=True)
class ExchangeMark(ServerEvent):
    """Queued behind everything an exchange's action caused: once it comes out, every answer the action
    started has announced itself. Only the conversation's own reader sees it."""

    type: ClassVar[str] = "chat.mark"
    number: int


class ChatSession(Session):
    """A session whose answers are text only: the LLM's (``answer_options``) and a flow's ``say``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answer_options = {"speak": False}

    async def speak(self, turn: TurnRecord, text: str) -> Response:
        # Session.speak synthesizes; over HTTP chat the flow's words are the reply text, nothing to pace.
        if not any(t is turn for t in self.turns):
            self.turns.append(turn)
            self.record(turn)
        answer = await self.answers.start(turn, [], spoken_prefix=text, fixed_text=True, speak=False)
        return answer.response


class StepTracker:
    """Wraps a flow's :class:`TurnAgent` to count finished steps: an exchange with a flow is answered only
    once the flow has taken the turn up and said what it says to it."""

    def __init__(self, inner: TurnAgent, session: Session) -> None:
        self.inner = inner
        self.session = session
        self.done = 0
        self._changed = asyncio.Event()

    def _finished(self) -> None:
        # Over HTTP nobody is silent on a line: a user who has not typed yet is no silence to reprompt (a
        # flow's silence timer would add "are you there?" turns, and end the flow after max_reprompts).
        self.inner.caller_active()
        self.done += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_beyond(self, count: int) -> None:
        """Until more than ``count`` steps have finished, or the session ended."""
        while self.done <= count and not self.session.closed.is_set():
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), 0.5)  # also looks at the session now and then

    async def start(self) -> None:
        try:
            await self.inner.start()
        finally:
            self._finished()

    async def user_turn(self, turn: TurnRecord, text: str) -> None:
        try:
            await self.inner.user_turn(turn, text)
        finally:
            self._finished()

    async def dtmf(self, digit: str) -> None:
        try:
            await self.inner.dtmf(digit)
        finally:
            self._finished()

    def caller_active(self) -> None:
        self.inner.caller_active()

    async def close(self) -> None:
        await self.inner.close()


class ChatConversation:
    """One conversation's session, the reader of its outbox, and the lock that makes its exchanges one at a
    time."""

    def __init__(
        self,
        session: ChatSession,
        tracker: StepTracker | None,
        on_end: Callable[[ChatConversation], None] | None = None,
    ) -> None:
        self.session = session
        self.tracker = tracker
        self.on_end = on_end
        self.lock = asyncio.Lock()
        self.last_used = time.monotonic()
        self._queue: asyncio.Queue[ServerEvent | None] | None = None
        self._marks = 0
        self._reader: asyncio.Task[None] | None = None
        self._action: asyncio.Task[None] | None = None
        self.ended = asyncio.Event()

    @property
    def id(self) -> str:
        return self.session.id

    @property
    def flow_id(self) -> str | None:
        return self.session.flow_id

    def start_reader(self) -> None:
        self._reader = asyncio.create_task(self._read(), name=f"{self.id}-chat-reader")

    async def _read(self) -> None:
        """Drains the session's outbox for ever: the exchange in progress gets the events, and whatever comes
        between exchanges (storage has it) must not fill the bounded outbox."""
        outbox = self.session.outbox
        while (item := await outbox.get()) is not None:
            if isinstance(item, ServerEvent) and self._queue is not None:
                self._queue.put_nowait(item)
        self.ended.set()
        if self._queue is not None:
            self._queue.put_nowait(None)
        if self.on_end is not None:
            self.on_end(self)

    async def exchange(
        self, act: Callable[[], Awaitable[None]], timeout_s: float
    ) -> AsyncIterator[ServerEvent]:
        """Run ``act`` (a typed turn, the session's start) and yield every event until all it caused is
        answered: each answer it started has its whole text (or was cut), or the session ended.

        Raises TimeoutError when nothing arrives for ``timeout_s``. A caller that stops listening leaves the
        answer to finish in the session: the history and storage keep it.
        """
        async with self.lock:
            if self.session.closed.is_set():
                return
            queue: asyncio.Queue[ServerEvent | None] = asyncio.Queue()
            self._queue = queue
            self.last_used = time.monotonic()
            self._marks += 1
            mark = self._marks
            # Not cancelled if the caller goes away: a turn once given is the session's to finish.
            self._action = action = asyncio.create_task(self._act_then_mark(act, mark))
            action.add_done_callback(_log_failure)
            try:
                open_answers: set[str] = set()
                started: list[str] = []
                marked = failed = False
                while True:
                    event = await asyncio.wait_for(queue.get(), timeout_s)
                    if event is None:
                        return
                    if isinstance(event, ExchangeMark):
                        marked = marked or event.number == mark
                    else:
                        yield event
                    if isinstance(event, ResponseStarted):
                        open_answers.add(event.response_id)
                        started.append(event.response_id)
                    elif isinstance(event, ResponseTextDone | ResponseInterrupted):
                        open_answers.discard(event.response_id)
                    elif isinstance(event, ErrorEvent):
                        failed = True  # a failed answer never finishes its text
                    elif isinstance(event, SessionClosed):
                        return
                    if marked and (failed or not open_answers):
                        break
                await action  # marked: it is done, or ends now; its failure is this exchange's
                # An answer stays the session's current one for a moment after its text: a next turn typed
                # before it finished would count as a barge-in and cut it from the history. (A failed answer
                # stops being current at once, and never finishes.)
                answers = self.session.answers
                deadline = time.monotonic() + timeout_s
                for answer in filter(None, (answers.get(response_id) for response_id in started)):
                    while answers.current is answer and time.monotonic() < deadline:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(answer.response.finished.wait(), 0.05)
            finally:
                self._queue = None
                self.last_used = time.monotonic()

    async def _act_then_mark(self, act: Callable[[], Awaitable[None]], mark: int) -> None:
        before = self.tracker.done if self.tracker is not None else 0
        try:
            await act()
            if self.tracker is not None:
                await self.tracker.wait_beyond(before)
        finally:
            await self.session.emit(ExchangeMark(mark))  # even after a failure: the exchange must end

    async def close(self, reason: str) -> None:
        await self.session.close(reason)
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._reader), 2.0)
            self._reader.cancel()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("chat turn failed", exc_info=task.exception())


@dataclass
class TurnResult:
    """What one exchange produced, from the session's events."""

    turn_id: str | None = None
    texts: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    flow_events: list[dict[str, Any]] = field(default_factory=list)
    response_ids: list[str] = field(default_factory=list)
    close_reason: str | None = None

    def add(self, event: ServerEvent) -> None:
        if isinstance(event, TranscriptFinal):
            self.turn_id = event.turn_id
        elif isinstance(event, ResponseStarted):
            self.response_ids.append(event.response_id)
        elif isinstance(event, ResponseTextDone):
            if event.text:
                self.texts.append(event.text)
        elif isinstance(event, ErrorEvent):
            self.errors.append({"code": event.code, "message": event.message})
        elif isinstance(event, FlowEvent):
            self.flow_events.append(event.to_wire())
        elif isinstance(event, SessionClosed):
            self.close_reason = event.reason

    @property
    def reply(self) -> str:
        return " ".join(self.texts)


class ConversationsFull(Exception):
    """The registry holds ``chat_max_conversations`` open conversations."""


class ConversationRegistry:
    """The open conversations of one app, by id: at most ``max_open``; each ends on its own after
    ``idle_timeout_s`` without a request (the session's idle timeout) and then leaves the registry."""

    def __init__(self, max_open: int, idle_timeout_s: float) -> None:
        self.max_open = max_open
        self.idle_timeout_s = idle_timeout_s
        self.open: dict[str, ChatConversation] = {}

    def get(self, conversation_id: str) -> ChatConversation | None:
        conversation = self.open.get(conversation_id)
        if conversation is not None and conversation.session.closed.is_set():
            self.open.pop(conversation_id, None)
            return None
        return conversation

    def _prune(self) -> None:
        for key in [k for k, c in self.open.items() if c.session.closed.is_set()]:
            self.open.pop(key, None)

    async def create(self, state: AppState, flow: Flow | None, caller: str | None) -> ChatConversation:
        """A new conversation, started (a flow's greeting is the first exchange's, not run here)."""
        self._prune()
        if len(self.open) >= self.max_open:
            raise ConversationsFull(f"{self.max_open} conversations are open (speech.chat_max_conversations)")
        config = session_config(state.settings, transport="chat")
        config.idle_timeout_s = self.idle_timeout_s
        config.recording_dir = None  # nothing is heard or said: there is no audio to record
        config.speculative_response = False
        # A failed answer is this request's 500 (with the engine's error), not a spoken "sorry" that a caller
        # would otherwise sit in silence without: over HTTP the client is told, and the history keeps no
        # stand-in answer for a turn nobody answered.
        config.failed_reply = ""
        session = ChatSession(state.engines, config, recorder=state.recorder)
        session.caller = caller
        tracker = None
        if flow is not None:
            attach_flow(session, state, flow)
            assert session.agent is not None
            tracker = StepTracker(session.agent, session)
            session.agent = tracker
        conversation = ChatConversation(session, tracker, on_end=lambda ended: self._forget(ended, state))
        self.open[session.id] = conversation
        conversation.start_reader()
        return conversation

    def _forget(self, conversation: ChatConversation, state: AppState) -> None:
        publish_session_end(state.events, conversation.session)  # its session closed: session.ended, once
        if self.open.get(conversation.id) is conversation:
            self.open.pop(conversation.id, None)

    async def close_all(self, reason: str = "server_shutdown") -> None:
        for conversation in list(self.open.values()):
            await conversation.close(reason)
        self.open.clear()


def registry(conn: HTTPConnection) -> ConversationRegistry:
    """The app's registry, made on first use (kept on the Starlette app's state, beside voxgate's)."""
    holder = conn.app.state
    found: ConversationRegistry | None = getattr(holder, "chat_conversations", None)
    if found is None:
        speech = app_state(conn).settings.speech
        found = ConversationRegistry(speech.chat_max_conversations, speech.chat_idle_timeout_s)
        holder.chat_conversations = found
    return found
