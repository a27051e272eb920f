"""A session's settings (from the service settings and what the client asked for), its client error, and
what it tells storage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pipeline.conversation import TurnRecord
    from pipeline.session import Session


class SessionError(Exception):
    """A client mistake with a stable ``code``; the session goes on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class VadConfig:
    threshold: float = 0.5
    end_of_turn_ms: int = 300
    min_interrupt_ms: int = 250
    min_speech_ms: int = 90


SAMPLING_KEYS = ("repeat_penalty", "presence_penalty", "frequency_penalty")


@dataclass
class SessionConfig:
    """Per-session settings, from the service settings and what the client asked for."""

    input_rate: int = 16000
    input_encoding: str = "pcm_s16le"
    output_rate: int = 16000
    output_encoding: str = "pcm_s16le"
    instructions: str = "You are a helpful voice assistant. Answer briefly."
    voice: str | None = None
    language: str | None = None
    vad: VadConfig = field(default_factory=VadConfig)
    lead_ms: int = 200
    max_input_backlog_s: float = 30.0
    idle_timeout_s: float = 300.0
    max_tokens: int = 60
    temperature: float = 0.0
    # Sampling penalties sent with each answer's generation when set (None: the engine's own default).
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # An answer ends at a sentence end, with at most this many sentences / words (None: no limit; the service
    # settings turn both on). Fixed texts (flows' ``say``, ``Session.speak``) are never shaped.
    answer_max_sentences: int | None = None
    answer_max_words: int | None = None
    partial_interval_ms: int = 1000
    eager_first_words: int | None = 4
    speculative_response: bool = True
    history_messages: int = 16  # past user/assistant messages the LLM sees
    transport: str = "websocket"
    recording_dir: str | None = None  # when set, caller and agent audio go to <dir>/<session id>/*.wav
    max_outbox_bytes: int = 4 << 20  # what a slow client may be owed before the session waits for it

    def sampling(self) -> dict[str, float]:
        """The sampling penalties that are set, as ``GenerationOptions.extra`` carries them to the engine."""
        values = {key: getattr(self, key) for key in SAMPLING_KEYS}
        return {key: value for key, value in values.items() if value is not None}

    def answer_shaped(self) -> bool:
        return self.answer_max_sentences is not None or self.answer_max_words is not None


class SessionRecorder(Protocol):
    """Told whenever a session or one of its turns changed (storage listens; it must not block)."""

    def changed(self, session: Session, turn: TurnRecord | None = None) -> None: ...
