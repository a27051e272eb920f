"""Speech for tests: real recordings, Piper-synthesized sentences, and WER with one normalization."""

from __future__ import annotations

import re
from functools import lru_cache

import jiwer
import numpy as np

from pipeline.audio import float_to_pcm16, load_audio, resample

# A contraction and its spelled-out form are the same spoken words ("the weather's warm" is how a voice says
# "the weather is warm"), and Whisper writes either: both sides are spelled out alike. A possessive "'s"
# becomes " is" on both sides too, so it still matches itself.
_CONTRACTIONS = {
    r"n't\b": " not",
    r"'re\b": " are",
    r"'ll\b": " will",
    r"'ve\b": " have",
    r"'m\b": " am",
    r"'d\b": " would",
    r"'s\b": " is",
}

_NORMALIZE = jiwer.Compose(
    [
        jiwer.ToLowerCase(),
        jiwer.SubstituteRegexes({"’": "'"}),
        jiwer.SubstituteRegexes(_CONTRACTIONS),
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


def _resonate(x: np.ndarray, centre: float, bandwidth: float, rate: int) -> np.ndarray:
    """A two-pole resonator (a formant), plus some of the input so the spectrum between formants stays."""
    r, theta = np.exp(-np.pi * bandwidth / rate), 2 * np.pi * centre / rate
    a1, a2 = 2 * r * np.cos(theta), -r * r
    y = np.zeros(len(x))
    y1 = y2 = 0.0
    for n, value in enumerate((1 - r) * x):
        y[n] = y0 = value + a1 * y1 + a2 * y2
        y1, y2 = y0, y1
    return y + 0.3 * x


def _nasal_murmur(seconds: float, f0_start: float, f0_end: float, rate: int, seed: int) -> np.ndarray:
    """A voiced /m/ with a gliding pitch: a harmonic source and a little breath through nasal resonances."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(f0_start + (f0_end - f0_start) * t / seconds) / rate
    harmonics = np.arange(1, 40)
    source = (1 / harmonics**0.7) @ np.sin(np.outer(harmonics, phase))
    out = source + 0.02 * np.random.default_rng(seed).standard_normal(len(t))
    for centre, bandwidth in ((250, 80), (1000, 200), (2200, 300)):
        out = _resonate(out, centre, bandwidth, rate)
    envelope = np.minimum(1, np.minimum(t / 0.05, (seconds - t) / 0.08))
    return out * envelope / np.max(np.abs(out))


@lru_cache(maxsize=1)
def mm_hmm_pcm(rate: int = 16000) -> bytes:
    """A synthesized "mm-hm" backchannel: two hummed syllables, no words, ~0.9 s.

    Silero hears ~0.7 s of voice in it (enough to barge in); Whisper tiny.en writes "", "Mm" or "Mmm" for it
    at every offset tried. Piper's "Hmm." does not do here: its random noise makes Whisper write "them",
    "10." or "my mom" on some runs. Being synthesized, this sound is the same on every run.
    """
    gap = np.zeros(int(0.1 * rate))
    audio = np.concatenate(
        [_nasal_murmur(0.35, 120, 110, rate, 1), gap, _nasal_murmur(0.45, 110, 150, rate, 2)]
    )
    return float_to_pcm16(0.3 * audio)
