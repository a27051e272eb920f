"""The frames that travel through an answer's chain (LLM text -> clauses -> speech).

Frames are plain dataclasses. Audio inside the pipeline is always mono int16 PCM bytes. Agent audio is at the
TTS engine's rate until the answer's wire encoder converts it for the caller. (Caller audio never travels as
frames: the listener keeps it at the VAD's rate, the wire rate itself for 8 kHz phone calls, and resamples
each utterance to 16 kHz for STT.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


def _now() -> float:
    return time.monotonic()


@dataclass
class Frame:
    """Base of every frame; ``created`` is a monotonic timestamp used for latency metrics."""

    created: float = field(default_factory=_now, kw_only=True)


@dataclass
class LLMTextDelta(Frame):
    response_id: str
    text: str


@dataclass
class SpeakText(Frame):
    """A clause ready to be spoken (after aggregation and normalization). ``display`` is the LLM's own text."""

    response_id: str
    text: str
    display: str
    clause_index: int = -1


@dataclass
class TTSAudio(Frame):
    """Synthesized speech for one clause (or part of one)."""

    response_id: str
    pcm: bytes
    sample_rate: int
    clause_index: int
    display: str


@dataclass
class EndOfResponse(Frame):
    """No more frames will follow for this response from the stage that sent it."""

    response_id: str
