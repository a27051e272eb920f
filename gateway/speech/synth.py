"""Speech for the HTTP endpoints: text in, int16 chunks out, synthesized on the runtime's TTS worker (never on
the event loop), one chunk per sentence as the engine produces it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
from starlette.exceptions import HTTPException

from engines.base import Voice
from engines.voice_map import voice_language
from pipeline.normalize import normalize_for_speech
from pipeline.runtime import Runtime

MIN_SPEED, MAX_SPEED = 0.25, 4.0  # OpenAI's /v1/audio/speech range


def find_voice(runtime: Runtime, voice_id: str | None) -> Voice | None:
    """The TTS engine's voice called ``voice_id`` (None: the engine's default), or None if it has none."""
    voices = runtime.tts.voices()
    if voice_id is None:
        return voices[0] if voices else None
    return next((v for v in voices if v.id == voice_id), None)


def check_speed(speed: float) -> float:
    """``speed`` if the engines can honour it, else a 422 naming the range."""
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise HTTPException(422, f"speed must be between {MIN_SPEED} and {MAX_SPEED}, not {speed}")
    return speed


async def speak(
    runtime: Runtime, text: str, voice: str | None = None, speed: float = 1.0
) -> AsyncIterator[np.ndarray]:
    """int16 mono chunks at ``runtime.tts.sample_rate`` for ``text`` (normalized for speech first: numbers,
    symbols and markdown are read as words). Leaving the loop early stops the synthesis."""
    # Normalizing runs on the TTS worker too: these endpoints take texts of thousands of characters, whose
    # normalization costs tens of milliseconds that every live call's event loop would otherwise lose.
    async for chunk in runtime.tts_worker.stream(
        lambda: runtime.tts.synthesize(
            normalize_for_speech(text, voice_language(runtime.tts, voice)), voice, speed
        ),
        buffer=2,
    ):
        yield chunk
