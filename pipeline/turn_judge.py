"""At a pause, has the caller finished? The words of the speculative transcript and the sound of the audio.

A silence alone cannot tell "When I get home from work tonight, [500 ms] I want to cook something." from two
turns. The judge looks at what already exists at every pause, the speculative transcript, and asks the turn
engine (Smart Turn) how finished the audio sounds, on its own worker beside the transcription. The words decide
first; the sound can still call a statement unfinished, below a low threshold (Smart Turn is sure of itself
on human speech, but scores some whole synthesized sentences low, and every wrong "unfinished" costs the caller
``unfinished_ms``). An unfinished turn waits up to ``unfinished_ms``; a finished one ends after ``end_of_turn_ms``.
bench/turn_end.py measures each signal and the mix on real and synthesized speech (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.audio import pcm16_to_float, resample
from pipeline.runtime import Runtime
from pipeline.session_config import VadConfig
from pipeline.turn_words import unfinished_reason

log = logging.getLogger("voxgate.session")

_RATE = 16000


@dataclass(frozen=True)
class Verdict:
    """One pause's judgement: how long the silence must last, and why (metrics, logs and the bench)."""

    finished: bool
    wait_ms: int
    reason: str
    sound_prob: float | None = None


def needs_sound(text: str) -> bool:
    """A question or an exclamation is finished whatever it sounds like: Smart Turn scores some synthesized
    questions below 0.1, and Whisper's question mark is strong evidence."""
    return not text.rstrip().endswith(("?", "!"))


def judge_pause(
    text: str, sound_prob: float | None, threshold: float, reason: str | None = None
) -> tuple[bool, str]:
    """(finished, why) from the transcript at a pause and, if it was asked, the sound model's score."""
    reason = reason if reason is not None else unfinished_reason(text)
    if reason is not None:
        return False, reason
    if sound_prob is not None and needs_sound(text) and sound_prob < threshold:
        return False, f"sounds unfinished ({sound_prob:.2f})"
    return True, "finished"


class PauseJudge:
    """Decides one pause at a time for one listener; stateless between pauses."""

    def __init__(self, runtime: Runtime, rate: int) -> None:
        self.rt = runtime
        self.rate = rate

    async def verdict(self, vad: VadConfig, text: str, audio: bytes) -> Verdict:
        """Judge the pause after ``text`` (the speculative transcript of ``audio``, the utterance so far).

        The words first, for free; the sound model only for a statement the words let end. It runs after the
        transcription rather than beside it: on a small CPU the two would slow each other, while the held
        answer's first tokens already overlap this check.
        """
        reason = unfinished_reason(text)
        prob = None
        if reason is None and needs_sound(text) and self.rt.turn_worker is not None:
            prob = await self.rt.turn_worker.run(self._score, audio)
        finished, why = judge_pause(text, prob, getattr(self.rt.turn, "threshold", 0.1), reason)
        return Verdict(finished, vad.end_of_turn_ms if finished else vad.unfinished_wait_ms, why, prob)

    def _score(self, audio: bytes) -> float:
        """On the turn worker's thread: the last 8 s at 16 kHz, scored."""
        assert self.rt.turn is not None
        tail = audio[-8 * self.rate * 2 :]
        return self.rt.turn.complete_prob(pcm16_to_float(resample(tail, self.rate, _RATE)))
