"""Conversion between a session's wire format (rate, encoding) and the pipeline's PCM16."""

from __future__ import annotations

from pipeline.audio import Framer, StreamResampler, frame_bytes, mulaw_decode, mulaw_encode

ENCODINGS = ("pcm_s16le", "mulaw")
SAMPLE_RATES = (8000, 16000, 24000, 48000)
FRAME_MS = 20


class InputDecoder:
    """Caller audio in the wire format -> 16 kHz PCM16 for VAD and STT."""

    def __init__(self, rate: int, encoding: str, target_rate: int = 16000) -> None:
        self.encoding = encoding
        self._resampler = StreamResampler(rate, target_rate)

    def decode(self, data: bytes) -> bytes:
        pcm = mulaw_decode(data) if self.encoding == "mulaw" else data
        return self._resampler.process(pcm)


class WireEncoder:
    """TTS PCM16 -> 20 ms frames in the session's output rate and encoding (the last one padded)."""

    def __init__(self, source_rate: int, rate: int, encoding: str) -> None:
        self.encoding = encoding
        self._resampler = StreamResampler(source_rate, rate)
        self._framer = Framer(frame_bytes(rate, FRAME_MS))

    def _finish(self, pcm_frames: list[bytes]) -> list[bytes]:
        if self.encoding == "mulaw":
            return [mulaw_encode(f) for f in pcm_frames]
        return pcm_frames

    def encode(self, pcm: bytes) -> list[bytes]:
        return self._finish(self._framer.push(self._resampler.process(pcm)))

    def flush(self) -> list[bytes]:
        frames = self._framer.push(self._resampler.flush())
        last = self._framer.flush(pad=True)
        if last:
            frames.append(last)
        return self._finish(frames)


class InputBacklog:
    """Caller audio waiting for the VAD, bounded in seconds; overflow is dropped *and counted*."""

    def __init__(self, max_seconds: float, rate: int = 16000) -> None:
        self.max_bytes = int(max_seconds * rate) * 2
        self._rate = rate
        self._buffer = bytearray()
        self.dropped_bytes = 0

    @property
    def seconds(self) -> float:
        return len(self._buffer) / 2 / self._rate

    @property
    def dropped_seconds(self) -> float:
        return self.dropped_bytes / 2 / self._rate

    def write(self, pcm: bytes) -> int:
        """Append; returns how many bytes did not fit (0 when all did)."""
        room = self.max_bytes - len(self._buffer)
        keep = pcm[: max(0, room) // 2 * 2]
        self._buffer += keep
        lost = len(pcm) - len(keep)
        self.dropped_bytes += lost
        return lost

    def holds(self, nbytes: int) -> bool:
        return len(self._buffer) >= nbytes

    def read(self, nbytes: int) -> bytes | None:
        if len(self._buffer) < nbytes:
            return None
        chunk = bytes(self._buffer[:nbytes])
        del self._buffer[:nbytes]
        return chunk
