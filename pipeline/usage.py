"""What one session used, counted where it happens (issue 15, usage per API key).

The gateway turns these counters into a ``usage`` row when the session ends (gateway/usage/); the pipeline only
counts, in plain float and int additions, so the audio path pays nothing measurable for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class UsageCounters:
    """One session's consumption so far."""

    audio_in_s: float = 0.0  # caller audio received, at the wire's rate
    audio_out_s: float = 0.0  # agent audio released to the client
    stt_s: float = 0.0  # audio sent to the STT engine for final (and speculative) transcripts
    llm_tokens: int = 0  # tokens the LLM streamed (one per delta, as llama.cpp and OpenAI streams send them)
    tts_chars: int = 0  # characters synthesized
    key_id: str | None = None  # the API key the session is billed to, when the gateway knows it

    @property
    def audio_s(self) -> float:
        """Audio both ways: what ``audio_minutes_per_day`` limits."""
        return self.audio_in_s + self.audio_out_s

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
