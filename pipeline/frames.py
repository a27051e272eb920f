"""The frames that travel through a session's processors.

Frames are plain dataclasses. Audio inside the pipeline is always mono int16 PCM bytes; input audio is at
16 kHz (the models' rate), agent audio at the TTS engine's rate until the pacer converts it for the wire.
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


# -- caller side ---------------------------------------------------------------------------------------------


@dataclass
class InputAudio(Frame):
    """Caller audio, 16 kHz mono PCM16."""

    pcm: bytes


@dataclass
class SpeechStarted(Frame):
    """The VAD heard the caller start speaking."""


@dataclass
class SpeechStopped(Frame):
    """The VAD heard silence begin after speech (the turn may still continue)."""


@dataclass
class TranscriptPartial(Frame):
    text: str


@dataclass
class TranscriptFinal(Frame):
    """A finished user turn: from speech (``source='voice'``) or typed (``'text'``)."""

    turn_id: str
    text: str
    source: str = "voice"


@dataclass
class DTMF(Frame):
    digit: str


# -- agent side ----------------------------------------------------------------------------------------------


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


@dataclass
class Interruption(Frame):
    """Travels ahead of data: everything behind it for ``response_id`` is stale."""

    response_id: str


# -- control -------------------------------------------------------------------------------------------------


@dataclass
class ErrorFrame(Frame):
    code: str
    message: str


@dataclass
class Control(Frame):
    """Session control: ``start``, ``stop`` or ``cancel``."""

    action: str
