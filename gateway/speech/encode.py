"""Audio out of the speech endpoints: int16 mono PCM (any rate) encoded as a stream in one of the formats
OpenAI's ``/v1/audio/speech`` returns (wav, mp3, opus, aac, flac, pcm).

An :class:`AudioEncoder` is fed PCM chunk by chunk and hands back whatever encoded bytes are ready, so an
endpoint can send the first sentence while the next is still being synthesized:

- ``pcm``: raw signed 16-bit little-endian samples, nothing else.
- ``wav``: a 44-byte header whose lengths say "unknown" (0xFFFFFFFF, what ffmpeg writes to a pipe; every
  common reader then reads to the end of the stream), then the samples. :func:`encode_all` writes the exact
  lengths instead, for a file.
- ``mp3``, ``opus`` (Ogg Opus), ``aac`` (ADTS) and ``flac``: PyAV (ffmpeg) encodes and muxes into a
  write-only sink that is drained after every chunk. The sink is not seekable, so every muxer writes in its
  streaming form (FLAC's STREAMINFO then leaves the total length as unknown, which FLAC allows).

Resampling (when the output rate differs from the input's) is libsoxr's, as everywhere in voxgate.
"""

from __future__ import annotations

import asyncio
import io
import struct
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from pipeline.audio import StreamResampler, resample

__all__ = [
    "FORMATS",
    "OPENAI_SAMPLE_RATE",
    "AudioEncoder",
    "encode_all",
    "encode_stream",
    "media_type",
    "output_rate",
]

OPENAI_SAMPLE_RATE = 24_000  # OpenAI's speech is 24 kHz in every format; its pcm is documented so


@dataclass(frozen=True)
class _Format:
    media_type: str
    container: str | None = None  # the ffmpeg muxer; None: written here (wav, pcm)
    codec: str | None = None
    bit_rate: int | None = None  # mono speech: a third to a half of the encoders' music defaults
    rates: tuple[int, ...] = ()  # the rates the codec takes; empty: any


_FORMATS: dict[str, _Format] = {
    "mp3": _Format(
        "audio/mpeg",
        "mp3",
        "libmp3lame",
        64_000,
        (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000),
    ),
    "opus": _Format("audio/ogg", "ogg", "libopus", 32_000, (8000, 12000, 16000, 24000, 48000)),
    "aac": _Format(
        "audio/aac",
        "adts",
        "aac",
        64_000,
        (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000),
    ),
    "flac": _Format("audio/flac", "flac", "flac"),
    "wav": _Format("audio/wav"),
    "pcm": _Format("audio/pcm"),
}

FORMATS: tuple[str, ...] = tuple(_FORMATS)
_STREAMING_LENGTH = 0xFFFFFFFF  # "unknown" in a RIFF size field


def _spec(fmt: str) -> _Format:
    spec = _FORMATS.get(fmt)
    if spec is None:
        raise ValueError(f"unsupported audio format {fmt!r} (supported: {', '.join(FORMATS)})")
    return spec


def media_type(fmt: str) -> str:
    """The Content-Type of audio in ``fmt`` (``audio/mpeg`` for mp3, ``audio/pcm`` for raw s16le)."""
    return _spec(fmt).media_type


def output_rate(fmt: str, rate: int) -> int:
    """The rate ``fmt`` will be written at for a wish of ``rate``: ``rate`` itself where the codec takes it,
    else the nearest higher rate it takes (Opus has five), else its highest."""
    rates = _spec(fmt).rates
    if not rates or rate in rates:
        return rate
    return min((r for r in rates if r >= rate), default=max(rates))


def wav_header(rate: int, data_bytes: int | None = None) -> bytes:
    """A 44-byte header for mono int16 WAV; ``data_bytes`` None writes "unknown length" for a stream."""
    data = _STREAMING_LENGTH if data_bytes is None else data_bytes
    riff = _STREAMING_LENGTH if data_bytes is None else 36 + data_bytes
    return (
        struct.pack("<4sI4s", b"RIFF", riff, b"WAVE")
        + struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16)
        + struct.pack("<4sI", b"data", data)
    )


class _Sink(io.RawIOBase):
    """A write-only, unseekable file for ffmpeg's muxers: what they write waits here until taken."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False  # muxers then write their streaming form and never go back to patch a header

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class AudioEncoder:
    """Encodes int16 mono PCM at ``in_rate`` into ``fmt`` as it arrives.

    ``encode`` takes a chunk (bytes of s16le or an int16 array) and returns the encoded bytes ready so far
    (possibly none: codecs work in frames and muxers in pages); ``finish`` flushes the rest and the trailer.
    ``rate`` is the output rate: ``out_rate`` if the codec takes it (see :func:`output_rate`), by default the
    input's. Not thread-safe: one stream, one encoder, used from one thread at a time.
    """

    def __init__(self, fmt: str, in_rate: int, out_rate: int | None = None) -> None:
        self.format = fmt
        self._spec = _spec(fmt)
        self.rate = output_rate(fmt, out_rate or in_rate)
        self._resampler = StreamResampler(in_rate, self.rate)
        self._header_sent = False
        self._finished = False
        self._samples = 0  # written to the codec so far: the next frame's pts
        self._sink: _Sink | None = None
        self._container: av.container.OutputContainer | None = None
        self._stream: av.audio.stream.AudioStream | None = None
        if self._spec.container is not None:
            self._open()

    def _open(self) -> None:
        spec = self._spec
        assert spec.container is not None and spec.codec is not None
        self._sink = _Sink()
        # flush_packets: the muxer hands each packet to the sink at once rather than filling a 32 KB buffer
        # first (at 64 kbit/s, four seconds of speech before the first byte would leave).
        self._container = av.open(
            self._sink, mode="w", format=spec.container, container_options={"flush_packets": "1"}
        )
        stream = self._container.add_stream(spec.codec, rate=self.rate)
        stream.codec_context.layout = "mono"
        if spec.bit_rate:
            stream.codec_context.bit_rate = spec.bit_rate
        stream.codec_context.time_base = Fraction(1, self.rate)
        self._stream = stream

    def encode(self, pcm: bytes | np.ndarray) -> bytes:
        """Encode one chunk; returns the bytes now ready for the client."""
        if self._finished:
            raise RuntimeError("the encoder is finished")
        data = pcm.astype("<i2", copy=False).tobytes() if isinstance(pcm, np.ndarray) else bytes(pcm)
        return self._write(self._resampler.process(data))

    def finish(self) -> bytes:
        """The last bytes: the resampler's and codec's tails, and the container's trailer."""
        if self._finished:
            return b""
        out = self._write(self._resampler.flush())
        self._finished = True
        if self._container is None:
            return out if self._header_sent else self._header() + out
        assert self._stream is not None and self._sink is not None
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return out + self._sink.take()

    def close(self) -> None:
        """Release the codec without the trailer (a client that went away)."""
        self._finished = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # closing half-written output: nothing anyone can act on
                pass

    def _header(self) -> bytes:
        self._header_sent = True
        return wav_header(self.rate) if self.format == "wav" else b""

    def _write(self, pcm: bytes) -> bytes:
        if self._container is None:
            return pcm if self._header_sent else self._header() + pcm
        if not pcm:
            return b""
        assert self._stream is not None and self._sink is not None
        samples = np.frombuffer(pcm, "<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._samples
        frame.time_base = Fraction(1, self.rate)
        self._samples += samples.shape[1]
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()


def encode_all(pcm: bytes | np.ndarray, fmt: str, in_rate: int, out_rate: int | None = None) -> bytes:
    """A whole file of ``pcm`` in ``fmt``; a WAV gets its exact lengths (not the streaming header)."""
    data = pcm.astype("<i2", copy=False).tobytes() if isinstance(pcm, np.ndarray) else bytes(pcm)
    if fmt == "wav":
        rate = output_rate(fmt, out_rate or in_rate)
        body = resample(data, in_rate, rate)
        return wav_header(rate, len(body)) + body
    encoder = AudioEncoder(fmt, in_rate, out_rate)
    return encoder.encode(data) + encoder.finish()


async def encode_stream(
    chunks: AsyncIterator[bytes | np.ndarray] | Iterable[bytes | np.ndarray],
    fmt: str,
    in_rate: int,
    out_rate: int | None = None,
) -> AsyncIterator[bytes]:
    """Encoded bytes for a stream of PCM chunks, each piece as soon as it is ready (empty pieces skipped).

    Encoding runs in a thread (a second of speech takes a few milliseconds to encode as mp3, which would
    otherwise be stolen from every live call's event loop)."""

    encoder = AudioEncoder(fmt, in_rate, out_rate)
    done = False
    try:
        if isinstance(chunks, AsyncIterator):
            async for chunk in chunks:
                out = await asyncio.to_thread(encoder.encode, chunk)
                if out:
                    yield out
        else:
            for chunk in chunks:
                out = await asyncio.to_thread(encoder.encode, chunk)
                if out:
                    yield out
        tail = await asyncio.to_thread(encoder.finish)
        done = True
        if tail:
            yield tail
    finally:
        if not done:
            encoder.close()
