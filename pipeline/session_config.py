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
    """Turn-taking knobs (gateway.settings.VadSettings documents each)."""

    threshold: float = 0.5
    end_of_turn_ms: int = 300
    semantic_turns: bool = True
    unfinished_ms: int = 1500

    @property
    def unfinished_wait_ms(self) -> int:
        """An unfinished turn never ends sooner than a finished one."""
        return max(self.unfinished_ms, self.end_of_turn_ms)

    min_interrupt_ms: int = 250
    min_speech_ms: int = 90
    # Speech that starts this soon after a turn ended, before the caller heard continuation_heard_ms of the
    # answer, continues that turn (0: never).
    continuation_ms: int = 1500
    continuation_heard_ms: int = 1000


SAMPLING_KEYS = (
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "no_repeat_ngram",
    "end_at_sentence",
)


@dataclass
class SessionConfig:
    """Per-session settings, from the service settings and what the client asked for."""

    input_rate: int = 16000
    input_encoding: str = "pcm_s16le"
    output_rate: int = 16000
    output_encoding: str = "pcm_s16le"
    instructions: str = "You are a helpful voice assistant. Answer briefly."
    voice: str | None = None
    speed: float = 1.0  # the voice's pace for the TTS engines (1.0: its own; Realtime audio.output.speed)
    language: str | None = None  # the caller's language for STT (None: the engine detects it)
    # With a multilingual STT, the detected language picks the voice and the answer's language (pipeline/language.py).
    language_routing: bool = False
    vad: VadConfig = field(default_factory=VadConfig)
    lead_ms: int = 200
    max_input_backlog_s: float = 30.0
    idle_timeout_s: float = 300.0
    # Said when an engine fails mid-conversation ("" says nothing; the error event is sent either way).
    unheard_reply: str = "Sorry, I didn't catch that. Could you say it again?"
    failed_reply: str = "Sorry, I can't answer that right now."
    max_tokens: int = 60
    temperature: float = 0.0
    # Sampling penalties sent with each answer's generation when set (None: the engine's own default).
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # The embedded LLM never writes a run of this many tokens from an earlier answer (None: allowed).
    no_repeat_ngram: int | None = None
    # The embedded LLM ends answers only at a sentence end, and closes the sentence before the token cap.
    end_at_sentence: bool | None = None
    # An answer ends at a sentence end, with at most this many sentences / words (None: no limit; the service
    # settings turn both on). Fixed texts (flows' ``say``, ``Session.speak``) are never shaped.
    answer_max_sentences: int | None = None
    answer_max_words: int | None = None
    partial_interval_ms: int = 1000
    eager_first_words: int | None = 4
    speculative_response: bool = True
    history_messages: int = 4  # past user/assistant messages the LLM sees (gateway.settings says why)
    transport: str = "websocket"
    recording_dir: str | None = None  # when set, caller and agent audio go to <dir>/<session id>/*.wav
    max_outbox_bytes: int = 4 << 20  # what a slow client may be owed before the session waits for it

    def sampling(self) -> dict[str, float | int | bool]:
        """The sampling penalties that are set, as ``GenerationOptions.extra`` carries them to the engine."""
        values = {key: getattr(self, key) for key in SAMPLING_KEYS}
        return {key: value for key, value in values.items() if value is not None}

    def answer_shaped(self) -> bool:
        return self.answer_max_sentences is not None or self.answer_max_words is not None


class SessionRecorder(Protocol):
    """Told whenever a session or one of its turns changed (storage listens; it must not block)."""

    def changed(self, session: Session, turn: TurnRecord | None = None) -> None: ...
