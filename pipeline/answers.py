"""A session's answers: the one the caller hears, the one on hold, and what a barge-in does to them."""

from __future__ import annotations

from typing import Any

from pipeline.answer import Answer, AnswerOwner, HoldBuffer, LiveDestination
from pipeline.conversation import Message, TurnRecord
from pipeline.outbox import Outbox
from pipeline.response import Response


class Answers:
    """A session's answers: the one the caller hears (``current``), the one on hold, and each by response id
    (acks and pacer releases name a response, however old)."""

    def __init__(self, owner: AnswerOwner, outbox: Outbox) -> None:
        self.owner = owner
        self.live = LiveDestination(outbox, owner.pacer)
        self.current: Answer | None = None  # the answer the caller hears (or is about to)
        self.held: Answer | None = None  # a speculative answer, held until the turn really ends
        self._by_id: dict[str, Answer] = {}
        # The last answer cut by a barge-in, and where, while a false interruption may still pick it up again.
        self.resumable: tuple[Response, float] | None = None

    def get(self, response_id: str) -> Answer | None:
        return self._by_id.get(response_id)

    async def start(
        self, turn: TurnRecord, messages: list[Message], *, held: bool = False, **options: Any
    ) -> Answer:
        """A new answer to ``turn``: live (replacing the current one) or on hold; ``options`` are
        :class:`Answer`'s."""
        if not held:
            await self.drop(self.current)
        answer = Answer(self.owner, turn, messages, HoldBuffer() if held else self.live, **options)
        self._by_id[answer.id] = answer
        if held:
            self.held = answer
        else:
            await self._go_live(answer)
        answer.start()
        return answer

    async def commit(self, answer: Answer) -> None:
        """The held ``answer`` becomes the current one, with everything it made so far."""
        await self._go_live(answer)
        await answer.commit(self.live)

    async def _go_live(self, answer: Answer) -> None:
        self.current = answer
        answer.turn.response_id = answer.id
        await self.live.event(answer.started_event())

    def take_held(self) -> Answer | None:
        held, self.held = self.held, None
        return held

    async def drop(self, answer: Answer | None) -> None:
        """Cancel ``answer``; it stops being current or held at once (before any await)."""
        if answer is None:
            return
        if self.current is answer:
            self.current = None
        if self.held is answer:
            self.held = None
        await answer.cancel()

    async def interrupt(self, reason: str, resumable: bool) -> None:
        """Barge-in on the current answer: nothing more leaves, generation stops, and the turn's record and
        the history keep only what was heard. A ``resumable`` one may be picked up again (:meth:`resume`)."""
        answer = self.current
        if answer is None:
            return
        pacer = self.owner.pacer
        # Estimate before flushing: the flush forgets how much released audio is still unplayed.
        played_estimate = pacer.played_estimate_ms(answer.id)
        pacer.flush()  # synchronous: not one more agent frame is released after this line
        self.current = None
        played = answer.stop_at(played_estimate)
        await self.drop(answer)
        await answer.report_cut(reason, played)
        response = answer.response
        unfinished = bool(response.unheard_text(played)) or not response.llm_done
        self.resumable = (response, played) if resumable and unfinished else None

    async def resume(self) -> None:
        """The interruption had no words (a cough, a noise): say the cut clause again and go on."""
        candidate, self.resumable = self.resumable, None
        if candidate is None:
            return
        response, played = candidate
        cut = self._by_id.get(response.id)
        if cut is None:
            return
        cut.turn.resumed = True
        messages = self.owner.conversation.resume_context(response)
        self.owner.rt.metrics.interruptions.labels("false").inc()
        unheard = response.unheard_text(played)
        await self.start(cut.turn, messages, spoken_prefix=unheard, resumed=response)

    def finished(self, answer: Answer) -> None:
        """``answer`` was heard to the end: nothing is left to resume either."""
        if self.current is answer:
            self.current = None
            self.resumable = None

    def released(self, response_id: str) -> None:
        answer = self._by_id.get(response_id)
        if answer is not None:
            answer.released()

    def stage_depth(self) -> int:
        """The fullest queue between the stages of the answers still running."""
        answers = [answer for answer in (self.current, self.held) if answer is not None]
        return max((answer.stage_depth() for answer in answers), default=0)
