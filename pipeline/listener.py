"""The caller side of a session: their audio in, turn events and transcripts out.

The listener decodes and buffers caller audio, runs the VAD and the turn detector over it, and transcribes
(partials while the caller speaks, the utterance when they pause or stop). What those events *mean* (an
interruption, a turn, an answer to start) is the session's call: the listener only reports them through
:class:`ListenerHooks`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from engines.base import VADEngine
from pipeline.audio import pcm16_to_float, resample
from pipeline.codec import InputBacklog, InputDecoder
from pipeline.events import ServerEvent, TranscriptPartial
from pipeline.recording import SessionRecording
from pipeline.runtime import Runtime
from pipeline.session_config import SessionConfig
from pipeline.turn_judge import PauseJudge, Verdict
from pipeline.turns import CHUNK_MS, TurnDetector, TurnEvent
from pipeline.usage import UsageCounters

log = logging.getLogger("voxgate.session")

STT_RATE = 16000  # Whisper's rate
_JOIN_GAP_S = 0.3  # the silence put between a continued turn's audio and the caller's next words


def listening_rate(vad: VADEngine, input_rate: int) -> int:
    """The rate caller audio is kept at: the wire rate when the VAD scores it natively (8 kHz phone calls),
    so no frame is resampled on the way in; STT gets each utterance resampled once, on its own thread."""
    return input_rate if input_rate in vad.sample_rates else vad.sample_rate


class ListenerHooks(Protocol):
    """What the listener tells its session, awaited in order from the input loop."""

    async def on_speech_started(self) -> None:
        """The caller started an utterance."""

    async def on_interrupt(self) -> None:
        """The caller has spoken for ``min_interrupt_ms``: long enough to cut the agent off."""

    async def on_paused(self, audio: bytes) -> None:
        """The caller went silent; the turn may be over (``audio``: the utterance so far)."""

    async def on_speech_resumed(self) -> None:
        """The caller went on after a pause."""

    async def on_early_transcript(self, text: str, speech_end: float) -> None:
        """What the caller said up to the pause (see :meth:`Listener.transcribe_early`)."""

    async def on_turn_end(self, audio: bytes) -> None:
        """The silence lasted long enough (``end_of_turn_ms``, or what the pause's verdict said): the
        utterance is over."""

    async def emit(self, event: ServerEvent) -> None: ...

    async def error(self, code: str, message: str) -> None: ...


class Listener:
    """Decode, backlog, VAD loop, turn detector, and partial, early and final transcription."""

    def __init__(
        self,
        runtime: Runtime,
        config: SessionConfig,
        hooks: ListenerHooks,
        rate: int,
        recording: SessionRecording | None = None,
    ) -> None:
        self.rt = runtime
        self.config = config
        self.hooks = hooks
        self.rate = rate
        self.recording = recording
        self.speech_end: float | None = None  # when the caller last went silent
        self.stt_ms: float | None = None  # how long the last utterance took to transcribe
        self.language: str | None = None  # the language the last utterance was transcribed in
        self.usage = UsageCounters()  # the session's counters (it shares this object); STT seconds are ours
        self.detector = self._new_detector()
        self._chunk_bytes = rate * CHUNK_MS // 1000 * 2
        self._decoder = InputDecoder(config.input_rate, config.input_encoding, rate)
        self._backlog = InputBacklog(config.max_input_backlog_s, rate)
        self._vad_state = runtime.vad.new_state(rate)
        self._has_input = asyncio.Event()
        self._overrun_reported = False
        self._vad_changed = False
        self._early: asyncio.Task[str] | None = None
        self._judge = PauseJudge(runtime, rate)
        self._judging: asyncio.Task[None] | None = None
        self._decided = False  # a verdict arrived: the input loop checks whether the turn is over
        self.last_verdict: Verdict | None = None
        self._partial_task: asyncio.Task[None] | None = None
        self._last_partial_ms = 0
        self._prefix = b""  # audio the open utterance continues (see continue_after)
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def vad_state(self) -> Any:
        """This caller's VAD stream state (the engine's; benchmarks count its chunks)."""
        return self._vad_state

    @property
    def backlog_s(self) -> float:
        return self._backlog.seconds

    @property
    def dropped_s(self) -> float:
        return self._backlog.dropped_seconds

    def push(self, data: bytes) -> None:
        """Caller audio in the wire format. Never blocks; overflow is reported, not hidden."""
        pcm = self._decoder.decode(data)
        if self.recording is not None:
            self.recording.caller(pcm)
        lost = self._backlog.write(pcm)
        if lost:
            self.rt.metrics.dropped_input.inc(lost / 2 / self.rate)
            if not self._overrun_reported:
                self._overrun_reported = True
                task = asyncio.create_task(
                    self.hooks.error(
                        "input_overrun",
                        f"more than {self.config.max_input_backlog_s:g} s of audio is waiting; "
                        "dropping new audio (GET /v1/sessions/{id} counts dropped_input_ms)",
                    )
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        elif self._overrun_reported and self._backlog.seconds < self.config.max_input_backlog_s / 2:
            self._overrun_reported = False
        if self._backlog.holds(self._chunk_bytes):
            # Only a whole chunk is worth waking the input loop for: 20 ms frames make a 32 ms chunk
            # every second or third frame.
            self._has_input.set()

    async def run(self) -> None:
        """The input loop: chunk by chunk through the VAD and the turn detector, until cancelled."""
        while True:
            if self._decided:
                self._decided = False
                ended = self.detector.end_if_due()
                if ended is not None:
                    await self._report(ended)
            chunk = self._backlog.read(self._chunk_bytes)
            if chunk is None:
                self._has_input.clear()
                await self._has_input.wait()
                continue
            prob = await self.rt.vad_batcher.speech_prob(self._vad_state, pcm16_to_float(chunk))
            for event in self.detector.feed(chunk, prob):
                await self._report(event)
            self._maybe_partial()

    async def commit(self) -> None:
        """End the open utterance now (the client said so)."""
        event = self.detector.commit()
        if event is not None:
            await self._report(event)

    def vad_changed(self) -> None:
        """The VAD settings changed: an utterance in progress keeps its knobs, the next one gets the new."""
        self._vad_changed = True
        self.apply_vad_change()

    def apply_vad_change(self) -> None:
        if self._vad_changed and not self.detector.in_speech:
            self.detector = self._new_detector()
            self._vad_changed = False

    def continue_after(self, audio: bytes) -> None:
        """The open utterance goes on from ``audio`` (an ended turn's): transcribing and judging it take both,
        with a short silence between, until the utterance ends."""
        self._prefix = audio + bytes(int(_JOIN_GAP_S * self.rate) * 2)

    def joined(self, audio: bytes) -> bytes:
        """``audio`` (the open utterance's) after the ended turn it continues, if it continues one."""
        return self._prefix + audio

    def _new_detector(self) -> TurnDetector:
        v = self.config.vad
        # Judged pauses wait for their verdict, however long the transcription takes, up to unfinished_ms.
        wait_ms = v.unfinished_wait_ms if v.semantic_turns else v.end_of_turn_ms
        return TurnDetector(v.threshold, wait_ms, v.min_interrupt_ms, v.min_speech_ms)

    async def _report(self, event: TurnEvent) -> None:
        if event.kind == "started":
            self._last_partial_ms = 0
            await self.hooks.on_speech_started()
        elif event.kind == "interrupt":
            await self.hooks.on_interrupt()
        elif event.kind == "paused":
            self.speech_end = time.monotonic() - CHUNK_MS / 1000
            await self.hooks.on_paused(event.audio)
            self._judge_pause(event.audio)
        elif event.kind == "resumed":
            self._stop_judging()
            await self.hooks.on_speech_resumed()
        elif event.kind == "ended":
            await self.hooks.on_turn_end(event.audio)
        # "discarded": too short to be speech; nothing to say about it.
        if event.kind in ("ended", "discarded"):
            self._stop_judging()
            self._prefix = b""
            self.apply_vad_change()

    # -- end of turn ----------------------------------------------------------------------------------------

    def _judge_pause(self, audio: bytes) -> None:
        """Judge this pause from the speculative transcript and the sound; the detector waits meanwhile."""
        vad = self.config.vad
        if not vad.semantic_turns:
            return
        pause = self.detector.pause
        if self._early is None:
            # Nothing transcribed here (the caller spoke over the agent): a plain silence decides.
            self._decide(pause, vad.end_of_turn_ms)
            return
        self._stop_judging()
        self._judging = asyncio.create_task(self._judge_then_decide(pause, self.joined(audio), self._early))

    async def _judge_then_decide(self, pause: int, audio: bytes, early: asyncio.Task[str]) -> None:
        vad = self.config.vad
        try:
            await asyncio.wait({early})  # never cancels the transcription, which final_text reuses
            if early.cancelled() or early.exception() is not None:
                verdict = Verdict(True, vad.end_of_turn_ms, "no transcript")
            else:
                verdict = await self._judge.verdict(vad, early.result(), audio)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("judging the pause failed; a plain silence ends the turn")
            verdict = Verdict(True, vad.end_of_turn_ms, "judge failed")
        self.last_verdict = verdict
        self.rt.metrics.turn_verdicts.labels("finished" if verdict.finished else "unfinished").inc()
        self._decide(pause, verdict.wait_ms)

    def _decide(self, pause: int, wait_ms: int) -> None:
        if self.detector.decide(pause, wait_ms):
            self._decided = True
            self._has_input.set()  # wake the input loop even when no audio is arriving

    def _stop_judging(self) -> None:
        if self._judging is not None and self._judging is not asyncio.current_task():
            self._judging.cancel()
        self._judging = None

    # -- transcription --------------------------------------------------------------------------------------

    async def transcribe(self, pcm: bytes, stage: str = "stt") -> str:
        """Whisper on ``pcm`` through the shared STT worker; ``stage`` names it in the latency metrics."""
        start = time.monotonic()
        transcript = await self.rt.stt_worker.run(self._stt_call, pcm, stage == "stt_partial")
        ms = round((time.monotonic() - start) * 1000, 1)
        self.rt.metrics.observe_ms(stage, ms)
        if stage == "stt":
            self.usage.stt_s += len(pcm) / 2 / self.rate
            self.stt_ms = ms
            # Partials never set it: they are guesses at an open utterance.
            self.language = transcript.language
        return transcript.text.strip()

    def _stt_call(self, pcm: bytes, draft: bool = False) -> Any:
        """On the STT thread: the utterance at 16 kHz (Whisper's rate), transcribed. A partial takes the
        engine's draft transcription where it has one: a final transcription that arrives while a partial
        runs waits for it, so the partial's cost lands on the turn's latency."""
        audio = pcm16_to_float(resample(pcm, self.rate, STT_RATE))
        transcribe = getattr(self.rt.stt, "transcribe_draft", None) if draft else None
        return (transcribe or self.rt.stt.transcribe)(audio, self.config.language)

    def transcribe_early(self, audio: bytes) -> None:
        """Transcribe the utterance so far while the end-of-turn silence runs, and report the text
        (the session may start an answer on hold with it). :meth:`final_text` reuses the result."""
        assert self.speech_end is not None
        self._early = asyncio.create_task(self._early_transcript(self.joined(audio), self.speech_end))

    async def _early_transcript(self, pcm: bytes, speech_end: float) -> str:
        text = await self.transcribe(pcm)
        await self.hooks.on_early_transcript(text, speech_end)
        return text

    def cancel_early(self) -> None:
        if self._early is not None:
            self._early.cancel()
            self._early = None

    async def final_text(self, audio: bytes) -> str:
        """The ended utterance's words: the early transcript when there is one, else ``audio`` transcribed."""
        task, self._early = self._early, None
        return await task if task is not None else await self.transcribe(self.joined(audio))

    def _maybe_partial(self) -> None:
        interval = self.config.partial_interval_ms
        detector = self.detector
        if not interval or not detector.in_speech or detector.speech_ms - self._last_partial_ms < interval:
            return
        if self.rt.stt_worker.pending or (self._partial_task and not self._partial_task.done()):
            return  # never queue a partial in front of a final transcription
        self._last_partial_ms = detector.speech_ms
        self._partial_task = asyncio.create_task(self._partial(detector.audio_so_far()))

    async def _partial(self, pcm: bytes) -> None:
        try:
            text = await self.transcribe(pcm, "stt_partial")
        except Exception:
            log.exception("partial transcription failed")
            return
        if text and self.detector.in_speech:
            await self.hooks.emit(TranscriptPartial(text))

    def close(self) -> None:
        """Stop transcribing (the input loop is the session's task to cancel)."""
        current = asyncio.current_task()
        for task in [*self._tasks, self._early, self._partial_task, self._judging]:
            if task is not None and task is not current and not task.done():
                task.cancel()
