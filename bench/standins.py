"""Cheap stand-in engines for load benchmarks: they satisfy engines/base.py's protocols and cost ~nothing.

Used by bench/telephony.py so that a many-call benchmark measures the gateway (transport, VAD batching,
sessions, pacing, encoding) and not the models. Never used by the service itself.

- ``FixedSTT``: returns the same transcript at once.
- ``ScriptLLM``: streams a fixed answer of ``sentences`` sentences, one delta per sentence.
- ``ToneTTS``: yields a precomputed ``clause_s``-second buffer (a modulated tone plus a little noise, well
  above silence) per clause at ``sample_rate``, in one chunk, whatever the text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from engines.base import Capabilities, GenerationOptions, Transcript, Voice

SENTENCE = "Our opening hours are nine to five on weekdays and ten to two on Saturdays."


class FixedSTT:
    def __init__(self, text: str = "What are your opening hours?") -> None:
        self.text = text
        self.capabilities = Capabilities(streaming=False)
        self.calls = 0

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        self.calls += 1
        return Transcript(self.text, language or "en", duration_s=len(audio) / 16000)


class ScriptLLM:
    def __init__(self, sentences: int = 12) -> None:
        self.deltas = [SENTENCE + " " for _ in range(sentences)]
        self.capabilities = Capabilities(streaming=True)
        self.calls = 0

    def stream_chat(self, messages: list[dict[str, Any]], options: GenerationOptions) -> Iterator[str]:
        self.calls += 1
        yield from self.deltas


class ToneTTS:
    def __init__(self, sample_rate: int = 22050, clause_s: float = 3.0) -> None:
        self.sample_rate = sample_rate
        self.capabilities = Capabilities(streaming=True)
        t = np.arange(int(sample_rate * clause_s), dtype=np.float32) / sample_rate
        rng = np.random.default_rng(0)
        wave = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
        wave += 0.02 * rng.standard_normal(len(t)).astype(np.float32)
        self._clause = np.clip(wave * 32767, -32768, 32767).astype(np.int16)
        self._clause.setflags(write=False)
        self.calls = 0

    def voices(self) -> list[Voice]:
        return [Voice("tone", "standin", "en", self.sample_rate)]

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> Iterator[np.ndarray]:
        self.calls += 1
        yield self._clause
