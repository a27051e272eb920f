"""Speech for tests: real recordings, Piper-synthesized sentences, and WER with one normalization."""

from __future__ import annotations

import re
from functools import lru_cache

import jiwer
import numpy as np

from pipeline.audio import float_to_pcm16, load_audio, resample

_NORMALIZE = jiwer.Compose(
    [
        jiwer.ToLowerCase(),
        jiwer.SubstituteRegexes({r"[-–—]": " ", r"[^\w\s']": " "}),
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
        jiwer.ReduceToListOfListOfWords(),
    ]
)


def wer(reference: str, hypothesis: str) -> float:
    return jiwer.wer(reference, hypothesis, reference_transform=_NORMALIZE, hypothesis_transform=_NORMALIZE)


def words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def clip_pcm(path: str, rate: int = 16000, level_dbfs: float | None = None) -> bytes:
    """A recording as PCM16; with ``level_dbfs``, scaled to that RMS level like a microphone's gain stage."""
    audio = load_audio(path, rate)
    if level_dbfs is not None:
        rms = float(np.sqrt(np.mean(audio**2))) or 1.0
        audio = np.clip(audio * (10 ** (level_dbfs / 20) / rms), -1.0, 1.0)
    return float_to_pcm16(audio)


@lru_cache(maxsize=64)
def piper_pcm(text: str, rate: int = 16000) -> bytes:
    """``text`` spoken by the shipped Piper voice, at ``rate``."""

    tts = _piper()
    pcm = b"".join(chunk.tobytes() for chunk in tts.synthesize(text))
    return resample(pcm, tts.sample_rate, rate)


@lru_cache(maxsize=1)
def _piper():  # type: ignore[no-untyped-def]
    from engines.tts_piper import PiperTTS

    return PiperTTS()


def energy_dbfs(pcm: bytes) -> float:
    x = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    return float(10 * np.log10(np.mean(x**2) + 1e-12)) if len(x) else -120.0


def loudest_window(pcm: bytes, ms: int, rate: int = 16000) -> bytes:
    """The ``ms`` of ``pcm`` with the most energy (a clipped burst of real speech)."""
    x = np.frombuffer(pcm, "<i2").astype(np.float32)
    n = rate * ms // 1000
    power = np.convolve(x**2, np.ones(n), mode="valid")
    start = int(np.argmax(power))
    return x[start : start + n].astype("<i2").tobytes()
