"""Audio utilities shared by every transport.

Audio inside the pipeline is mono int16 little-endian PCM bytes. This module converts it to and from float
arrays, resamples it (one-shot and streaming, with libsoxr), encodes G.711 mu-law for telephony, cuts byte
streams into fixed-size frames, measures it, and reads/writes files.
"""

from __future__ import annotations

import math
import warnings
import wave

import numpy as np
import soxr

with warnings.catch_warnings():
    # audioop is deprecated in 3.11-3.12 and removed in 3.13, where the audioop-lts package provides the
    # same module name; either way it is a vetted C implementation of G.711.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SAMPLE_WIDTH = 2
_INT16_SCALE = 32768.0
_SILENCE_DBFS = -120.0
_RESAMPLE_QUALITY = "HQ"


# -- sample format -------------------------------------------------------------------------------------------


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    """Convert int16 LE PCM bytes to a float32 array in [-1, 1)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / np.float32(_INT16_SCALE)


def float_to_pcm16(x: np.ndarray) -> bytes:
    """Convert a float array (nominally in [-1, 1]) to int16 LE PCM bytes, rounding and clipping."""
    scaled = np.rint(np.asarray(x, dtype=np.float64) * _INT16_SCALE)
    return np.clip(scaled, -32768, 32767).astype("<i2").tobytes()


# -- resampling ----------------------------------------------------------------------------------------------
# Both paths run libsoxr on float32 and round to int16 themselves: soxr's own int16 output is dithered, so
# chunked and one-shot results would differ by a few LSB. On float32, streaming equals one-shot exactly.


def resample(pcm: bytes, from_rate: int, to_rate: int) -> bytes:
    """Resample a whole PCM16 buffer in one shot; same-rate input is returned unchanged."""
    if from_rate == to_rate or not pcm:
        return pcm
    out = soxr.resample(pcm16_to_float(pcm), from_rate, to_rate, quality=_RESAMPLE_QUALITY)
    return float_to_pcm16(out)


class StreamResampler:
    """Streaming PCM16 resampler: feeding chunks to ``process`` then calling ``flush`` gives the same bytes
    as :func:`resample` on the concatenated input. Chunks may split a sample; the odd byte is carried over.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._partial = b""
        self._stream = self._new_stream()

    def _new_stream(self) -> soxr.ResampleStream | None:
        if self.from_rate == self.to_rate:
            return None
        return soxr.ResampleStream(
            self.from_rate, self.to_rate, 1, dtype="float32", quality=_RESAMPLE_QUALITY
        )

    def _whole_samples(self, pcm: bytes) -> bytes:
        if not self._partial and len(pcm) % SAMPLE_WIDTH == 0:
            return pcm  # the common case: no copy
        data = self._partial + pcm
        cut = len(data) - len(data) % SAMPLE_WIDTH
        self._partial = data[cut:]
        return data[:cut]

    def process(self, pcm: bytes) -> bytes:
        """Resample one chunk; returns whatever output is ready (possibly empty)."""
        data = self._whole_samples(pcm)
        if self._stream is None or not data:
            return data
        return float_to_pcm16(self._stream.resample_chunk(pcm16_to_float(data)))

    def flush(self) -> bytes:
        """Drain the filter's tail at end of stream and reset for reuse. A dangling odd byte is dropped."""
        self._partial = b""
        if self._stream is None:
            return b""
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._stream = self._new_stream()
        return float_to_pcm16(tail)


# -- G.711 mu-law --------------------------------------------------------------------------------------------


def mulaw_encode(pcm: bytes) -> bytes:
    """Encode PCM16 bytes to G.711 mu-law (one byte per sample)."""
    return audioop.lin2ulaw(pcm, SAMPLE_WIDTH)


def mulaw_decode(ulaw: bytes) -> bytes:
    """Decode G.711 mu-law bytes to PCM16."""
    return audioop.ulaw2lin(ulaw, SAMPLE_WIDTH)


# -- framing -------------------------------------------------------------------------------------------------


def frame_bytes(rate: int, ms: int, sample_width: int = SAMPLE_WIDTH) -> int:
    """Bytes in one mono frame of ``ms`` milliseconds (20 ms: 160 for 8 kHz mu-law, 640 for 16 kHz PCM16)."""
    return rate * ms // 1000 * sample_width


class Framer:
    """Cuts an arbitrary byte stream into fixed-size frames, keeping the remainder between pushes.

    ``fill`` is the byte used to pad the last frame: ``b"\\x00"`` is silence for PCM16, ``b"\\xff"`` for mu-law.
    """

    def __init__(self, frame_bytes: int, fill: bytes = b"\x00") -> None:
        if frame_bytes <= 0:
            raise ValueError("frame_bytes must be positive")
        if len(fill) != 1:
            raise ValueError("fill must be a single byte")
        self.frame_bytes = frame_bytes
        self.fill = fill
        self._buf = bytearray()

    @property
    def remainder(self) -> bytes:
        """Bytes pushed but not yet returned as a whole frame."""
        return bytes(self._buf)

    def push(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every whole frame now available, in order."""
        self._buf += data
        n = len(self._buf) // self.frame_bytes * self.frame_bytes
        if n == 0:
            return []
        frames = [bytes(self._buf[i : i + self.frame_bytes]) for i in range(0, n, self.frame_bytes)]
        del self._buf[:n]
        return frames

    def flush(self, pad: bool = True) -> bytes | None:
        """Return the remainder (padded to a whole frame with ``fill`` when ``pad``), or None if empty."""
        if not self._buf:
            return None
        out = bytes(self._buf)
        self._buf.clear()
        if pad:
            out += self.fill * (self.frame_bytes - len(out))
        return out


# -- measurement ---------------------------------------------------------------------------------------------


def pcm_duration_ms(nbytes: int, rate: int) -> float:
    """Duration in milliseconds of ``nbytes`` of mono PCM16 at ``rate``."""
    return nbytes / SAMPLE_WIDTH * 1000.0 / rate


def rms_dbfs(pcm: bytes) -> float:
    """RMS level in dB relative to int16 full scale (a full-scale sine is about -3 dBFS).

    Silence or empty input returns -120.0 rather than -inf so callers can compare and average safely.
    """
    x = pcm16_to_float(pcm).astype(np.float64)
    if x.size == 0:
        return _SILENCE_DBFS
    rms = math.sqrt(float(np.mean(x * x)))
    if rms <= 0.0:
        return _SILENCE_DBFS
    return max(_SILENCE_DBFS, 20.0 * math.log10(rms))


# -- files ---------------------------------------------------------------------------------------------------


def load_audio(path: str, rate: int = 16000) -> np.ndarray:
    """Decode any audio file PyAV can read to a float32 mono array at ``rate``."""
    # Imported lazily: faster_whisper pulls in ctranslate2, which the transports don't otherwise need.
    from faster_whisper.audio import decode_audio

    return np.ascontiguousarray(decode_audio(path, sampling_rate=rate), dtype=np.float32)


def write_wav(path: str, pcm: bytes, rate: int) -> None:
    """Write mono PCM16 bytes to a WAV file."""
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(SAMPLE_WIDTH)
        w.setframerate(rate)
        w.writeframes(pcm)


def read_wav(path: str) -> tuple[bytes, int]:
    """Read a mono PCM16 WAV file; returns ``(pcm, rate)``. Other layouts raise ValueError."""
    with wave.open(path, "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != SAMPLE_WIDTH:
            raise ValueError(
                f"{path}: expected mono 16-bit WAV, got {w.getnchannels()} ch x {w.getsampwidth()} B"
            )
        return w.readframes(w.getnframes()), w.getframerate()


def trim_leading_silence(
    samples: np.ndarray, rate: int, floor_dbfs: float = -50.0, keep_ms: int = 10
) -> np.ndarray:
    """int16 ``samples`` without the silence before their first 5 ms above ``floor_dbfs``, keeping ``keep_ms``
    of it so the onset is not clipped; all-silent input comes back unchanged."""
    step = max(1, rate // 200)
    usable = len(samples) // step * step
    if not usable:
        return samples
    frames = samples[:usable].astype(np.float32).reshape(-1, step) / 32768.0
    loud = np.flatnonzero(10 * np.log10(np.mean(frames**2, axis=1) + 1e-12) > floor_dbfs)
    if not loud.size:
        return samples
    start = max(0, int(loud[0]) * step - rate * keep_ms // 1000)
    return samples[start:]
