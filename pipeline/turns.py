"""Turn-taking from VAD probabilities: when the caller starts, pauses, may interrupt, and ends a turn."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

CHUNK_MS = 32  # Silero's chunk: 512 samples at 16 kHz, 256 at 8 kHz
_PRE_ROLL_MS = 320  # Whisper clips the first phoneme without some audio from before the VAD fired
_MAX_UTTERANCE_MS = 28_000  # Whisper sees 30 s at most
# Silero's probability needs a chunk or two to climb past the threshold at a word onset (0.4-0.5 on the first
# 32 ms of a clipped 300 ms burst): the chunks just before the onset that were already above the release level
# are counted as speech, up to this many, so a 300 ms utterance measures ~300 ms rather than ~250.
_MAX_ONSET_CHUNKS = 2


@dataclass(frozen=True)
class TurnEvent:
    """``kind`` is one of: started, paused, resumed, interrupt, ended, discarded."""

    kind: str
    audio: bytes = b""
    speech_ms: int = 0


class TurnDetector:
    """A small state machine over 32 ms chunks of PCM16 and their speech probabilities.

    ``paused`` fires at the first silent chunk after speech, so STT can start while the hangover runs;
    ``resumed`` says that guess was wrong. ``interrupt`` fires once per utterance when speech has lasted
    ``min_interrupt_ms``; ``ended`` carries the utterance audio after ``end_of_turn_ms`` of silence, unless
    :meth:`decide` set another wait for this pause (a turn that sounds finished ends sooner, an unfinished
    one waits longer). Chunks are at the VAD's rate: 16 kHz, or 8 kHz for phone calls (the VAD scores those
    natively).
    """

    def __init__(
        self,
        threshold: float = 0.5,
        end_of_turn_ms: int = 300,
        min_interrupt_ms: int = 250,
        min_speech_ms: int = 90,
    ) -> None:
        self.threshold = threshold
        self.release = max(0.05, threshold - 0.15)  # hysteresis keeps soft word endings inside the speech
        self.end_of_turn_ms = end_of_turn_ms
        self.min_interrupt_ms = min_interrupt_ms
        self.min_speech_ms = min_speech_ms
        self._pre_roll: deque[bytes] = deque(maxlen=_PRE_ROLL_MS // CHUNK_MS)
        self._onset_chunks = 0  # trailing pre-roll chunks already above the release level
        self._pauses = 0
        self._reset()

    def _reset(self) -> None:
        self.in_speech = False  # an utterance is open (speaking or within the hangover)
        self._speaking = False
        self._announced = False
        self._interrupted = False
        self._audio: list[bytes] = []
        self._speech_run_ms = 0  # from the first speech chunk to the end of the last one
        self._silence_ms = 0
        self._wait_ms: int | None = None  # this pause's decided wait (None: end_of_turn_ms)

    @property
    def pause(self) -> int:
        """Counts pauses; :meth:`decide` names the one its verdict is for."""
        return self._pauses

    def decide(self, pause: int, wait_ms: int) -> bool:
        """Set how much silence ends the turn at ``pause``. False when the verdict is stale (the caller went
        on since, or the turn already ended); then nothing changes."""
        if pause != self._pauses or not self.in_speech or self._speaking:
            return False
        self._wait_ms = wait_ms
        return True

    def end_if_due(self) -> TurnEvent | None:
        """The ``ended`` event when the silence so far already meets the decided wait, else None."""
        if not self.in_speech or self._speaking or self._wait_ms is None:
            return None
        return self._end() if self._silence_ms >= self._wait_ms else None

    @property
    def speech_ms(self) -> int:
        return self._speech_run_ms

    def feed(self, pcm: bytes, prob: float) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        if not self.in_speech:
            if prob < self.threshold:
                self._pre_roll.append(pcm)
                self._onset_chunks = (
                    min(self._onset_chunks + 1, _MAX_ONSET_CHUNKS) if prob >= self.release else 0
                )
                return events
            self.in_speech = True
            self._speaking = True
            self._audio = list(self._pre_roll)
            self._pre_roll.clear()
            self._speech_run_ms = self._onset_chunks * CHUNK_MS
            self._onset_chunks = 0
        self._audio.append(pcm)
        voiced = prob >= (self.release if self._speaking else self.threshold)
        if voiced:
            if not self._speaking:
                self._speaking = True
                self._wait_ms = None
                events.append(TurnEvent("resumed"))
            self._speech_run_ms += self._silence_ms + CHUNK_MS
            self._silence_ms = 0
            if not self._announced and self._speech_run_ms >= self.min_speech_ms:
                self._announced = True
                events.append(TurnEvent("started"))
            if not self._interrupted and self._speech_run_ms >= max(
                self.min_interrupt_ms, self.min_speech_ms
            ):
                self._interrupted = True
                events.append(TurnEvent("interrupt", speech_ms=self._speech_run_ms))
            if len(self._audio) * CHUNK_MS >= _MAX_UTTERANCE_MS:
                events.append(self._end())
            return events
        self._silence_ms += CHUNK_MS
        if self._speaking:
            self._speaking = False
            self._pauses += 1
            if self._announced:
                events.append(TurnEvent("paused", audio=b"".join(self._audio), speech_ms=self._speech_run_ms))
        wait_ms = self.end_of_turn_ms if self._wait_ms is None else self._wait_ms
        if self._silence_ms >= wait_ms:
            events.append(self._end())
        return events

    def audio_so_far(self) -> bytes:
        """The open utterance's audio (for partial transcripts)."""
        return b"".join(self._audio)

    def commit(self) -> TurnEvent | None:
        """End the turn now (the client said so); None when no speech is open."""
        return self._end() if self.in_speech else None

    def _end(self) -> TurnEvent:
        announced, audio, speech_ms = self._announced, b"".join(self._audio), self._speech_run_ms
        self._reset()
        if not announced:
            return TurnEvent("discarded", speech_ms=speech_ms)
        return TurnEvent("ended", audio=audio, speech_ms=speech_ms)
