"""Text-to-speech on another machine: streamed from any OpenAI ``/v1/audio/speech`` server.

Another voxgate (a model node), speaches, Kokoro-FastAPI or OpenAI synthesize; this process reads the audio
as it arrives and hands it on in chunks of at least ``chunk_ms``, so the caller hears the first sentence
while the server still speaks the rest. ``response_format=pcm`` is raw s16le mono, 24 kHz by OpenAI's
definition; a server that says its rate in the content type (``audio/pcm;rate=22050``) or sends ``wav``
(whose header says it) is resampled to ``sample_rate`` on the way. Retries (see ``engines.stt_remote``)
happen only before the first audio byte: after that the caller has heard part of the clause.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import numpy as np
import soxr
from pydantic import Field

from engines.base import Capabilities, Needs, Voice
from engines.stt_remote import (
    RETRYABLE_TRANSPORT,
    RemoteEngineError,
    RemoteOptions,
    Retry,
    api_root,
    error_text,
    http_client,
    transport_error,
)

__all__ = ["RemoteTTS", "RemoteTTSOptions"]

log = logging.getLogger("voxgate.engines")

_SPEAKABLE = re.compile(r"[^\W_]")  # text without a letter or digit has nothing to say: not sent
_VOICES_TTL_S = 300.0  # the server's voice list is read again this often (in the background)
_VOICES_RETRY_S = 30.0  # ... or this soon after a failed read
_VOICE_PATHS = ("/voices", "/audio/voices", "/models")  # voxgate; speaches and Kokoro-FastAPI; model cards


class RemoteTTSOptions(RemoteOptions):
    """Any OpenAI-compatible ``/v1/audio/speech`` server (another voxgate, speaches, Kokoro-FastAPI, OpenAI)."""

    model: str = Field("tts-1", description="model name sent to the server")
    voice: str = Field(
        "en_US-joe-medium",
        description="the voice sessions start with, sent as the request's voice (OpenAI: alloy, ...)",
    )
    sample_rate: int = Field(
        24000,
        ge=8000,
        le=48000,
        description="rate of the server's pcm (OpenAI: 24000) and of the audio this engine hands on",
    )
    response_format: Literal["pcm", "wav"] = Field(
        "pcm", description="pcm (raw s16le) or wav (its header gives the rate, resampled to sample_rate)"
    )
    chunk_ms: int = Field(
        200,
        ge=10,
        le=5000,
        description="audio is handed on in chunks of at least this much (the last is shorter)",
    )
    fallback: Literal["espeak", "none"] = Field(
        "espeak",
        description="when the server fails before any audio (after the retries), speak the text with the local "
        "espeak-ng instead, so the caller still hears the answer ('none': the answer fails)",
    )

    def default_voice(self) -> str | None:
        return self.voice


class RemoteTTS:
    """Streams speech from ``<base_url>/audio/speech``, one request per text, as int16 chunks.

    Failures raise :class:`engines.stt_remote.RemoteEngineError`. ``voices()`` never waits on the network
    (the event loop calls it): the server's list (``/voices``, ``/audio/voices`` or voices on ``/models``)
    is read when the engine is built and refreshed in the background; a server without one offers the
    configured voice.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str = "tts-1",
        voice: str = "en_US-joe-medium",
        api_key: str | None = None,
        concurrency: int = 4,
        timeout_s: float = 20.0,
        retries: int = 2,
        sample_rate: int = 24000,
        response_format: str = "pcm",
        chunk_ms: int = 200,
        fallback: str = "espeak",
    ) -> None:
        self.base_url = api_root(base_url)
        self.model = model
        self.default_voice = voice
        self.sample_rate = sample_rate
        self._api_key = api_key
        self._format = response_format
        self._chunk_bytes = max(2, sample_rate * chunk_ms // 1000 * 2)
        self._retry = Retry(retries=retries)
        self._fallback = fallback
        self._local: Any = None  # the fallback engine, made on first need
        self._client = http_client(self.base_url, api_key, timeout_s, concurrency)
        self._voices: list[Voice] = [self._voice({"id": voice})]
        self._voices_due = 0.0
        self._voices_lock = threading.Lock()
        self._refreshing = False
        self._refresh_voices()  # at build time, on the loading thread: a slow server only delays start-up
        self.capabilities = Capabilities(
            streaming=True,
            languages=tuple(sorted({v.language for v in self._voices if v.language})) or ("en",),
            device="remote",
            needs=Needs(remote=True, concurrency=concurrency, cpu_heavy=False),
            extra={"engine": "remote", "base_url": self.base_url, "model": model, "default_voice": voice},
        )

    # -- speech ---------------------------------------------------------------------------------------------

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> Iterator[np.ndarray]:
        """Yield int16 mono chunks at ``sample_rate`` as the server sends them; nothing is sent before the
        first ``next()``, and closing the iterator closes the connection (the server stops)."""
        body = {
            "model": self.model,
            "input": text,
            "voice": voice or self.default_voice,
            "response_format": self._format,
            "speed": speed,
        }
        if not _SPEAKABLE.search(text):
            return iter(())
        return self._stream_or_fallback(body, text, speed)

    def _stream_or_fallback(self, body: dict[str, Any], text: str, speed: float) -> Iterator[np.ndarray]:
        started = False
        try:
            for chunk in self._stream(body):
                started = True
                yield chunk
        except RemoteEngineError as exc:
            if started or self._fallback == "none":
                raise  # half an answer cannot be finished in another voice
            log.warning("TTS server failed, speaking with the local espeak-ng instead: %s", exc)
            yield from self._speak_locally(text, speed, exc)

    def _speak_locally(self, text: str, speed: float, cause: RemoteEngineError) -> Iterator[np.ndarray]:
        from engines.tts_espeak import EspeakTTS

        try:
            if self._local is None:
                self._local = EspeakTTS()
            local = self._local
            for chunk in local.synthesize(text, None, speed):
                yield (
                    soxr.resample(chunk, local.sample_rate, self.sample_rate)
                    if local.sample_rate != self.sample_rate
                    else chunk
                )
        except (OSError, RuntimeError, KeyError) as exc:  # no espeak-ng here, or it failed too
            raise cause from exc

    def _stream(self, body: dict[str, Any]) -> Iterator[np.ndarray]:
        url = f"{self.base_url}/audio/speech"
        started = False
        for attempt in range(self._retry.retries + 1):
            last = attempt == self._retry.retries
            try:
                with self._client.stream("POST", "/audio/speech", json=body) as response:
                    if response.status_code >= 400:
                        response.read()
                        if last or not self._retry.retryable_status(response.status_code):
                            raise RemoteEngineError(
                                f"TTS server {url} answered HTTP {response.status_code}: "
                                f"{error_text(response, self._api_key)}",
                                url,
                                response.status_code,
                            )
                        delay = self._retry.delay(attempt, response)
                    else:
                        chunker = _Chunker(
                            self._format, _content_rate(response), self.sample_rate, self._chunk_bytes
                        )
                        for data in response.iter_bytes():
                            for chunk in chunker.feed(data):
                                started = True
                                yield chunk
                        for chunk in chunker.flush():
                            yield chunk
                        return
            except RETRYABLE_TRANSPORT as exc:
                if last or started:
                    raise transport_error("TTS", url, exc) from exc
                delay = self._retry.delay(attempt)
            except httpx.HTTPError as exc:
                raise transport_error("TTS", url, exc) from exc
            except ValueError as exc:  # the chunker could not read the audio
                raise RemoteEngineError(f"TTS server {url} sent unreadable audio: {exc}", url) from exc
            time.sleep(delay)

    # -- voices ---------------------------------------------------------------------------------------------

    def voices(self) -> list[Voice]:
        """The configured voice first, then the server's others; refreshed in the background when due."""
        if time.monotonic() >= self._voices_due:
            with self._voices_lock:
                start = not self._refreshing
                self._refreshing = True
            if start:
                threading.Thread(target=self._refresh_voices, name="tts-remote-voices", daemon=True).start()
        return list(self._voices)

    def _refresh_voices(self) -> None:
        try:
            found = self._read_voices()
        except Exception:  # a voice list is a nicety: speech still works with the configured voice
            log.debug("reading voices from %s failed", self.base_url, exc_info=True)
            found = None
        self._voices_due = time.monotonic() + (_VOICES_RETRY_S if found is None else _VOICES_TTL_S)
        if found:
            configured = [v for v in found if v.id == self.default_voice] or [
                self._voice({"id": self.default_voice})
            ]
            self._voices = configured + [v for v in found if v.id != self.default_voice]
        with self._voices_lock:
            self._refreshing = False

    def _read_voices(self) -> list[Voice] | None:
        """The first voice list a known path answers with; None when no path has one."""
        timeout = min(5.0, self._client.timeout.read or 5.0)
        for path in _VOICE_PATHS:
            try:
                response = self._client.get(path, timeout=timeout)
            except httpx.HTTPError:
                return None  # unreachable: no point asking the other paths now
            if response.status_code != 200:
                continue
            try:
                entries = _voice_entries(response.json(), from_models=path == "/models")
            except ValueError:
                continue
            voices = [self._voice(entry) for entry in entries]
            if voices:
                return voices
        return None

    def _voice(self, entry: dict[str, Any]) -> Voice:
        language = entry.get("language") or entry.get("languages") or ""
        if isinstance(language, list):
            language = language[0] if language else ""
        return Voice(
            id=str(entry["id"]),
            engine="remote",
            language=str(language).split("-")[0].split("_")[0].lower(),
            sample_rate=self.sample_rate,  # what this engine hands on, whatever the server's own rate
            path=self.base_url,
            licence=str(entry.get("licence") or entry.get("license") or ""),
        )

    def close(self) -> None:
        """Close pooled connections."""
        self._client.close()


def _voice_entries(payload: Any, from_models: bool) -> list[dict[str, Any]]:
    """Voice entries of a list answer: ``{"voices": [...]}``, ``{"data": [...]}`` or a bare list, each a
    name or an object with ``id``, ``voice_id`` or ``name``. Model cards (``/models``) count only through
    their own ``voices`` lists."""
    if isinstance(payload, dict):
        payload = payload.get("data") if from_models else payload.get("voices", payload.get("data"))
    if not isinstance(payload, list):
        return []
    if from_models:
        nested = [v for card in payload if isinstance(card, dict) for v in card.get("voices") or []]
        return _voice_entries(nested, from_models=False)
    entries = []
    for item in payload:
        if isinstance(item, str):
            entries.append({"id": item})
        elif isinstance(item, dict):
            name = item.get("id") or item.get("voice_id") or item.get("name")
            if name:
                entries.append({**item, "id": name})
    return entries


def _content_rate(response: httpx.Response) -> int | None:
    """The rate a ``audio/pcm;rate=22050`` content type announces, if any."""
    match = re.search(r"rate=(\d+)", response.headers.get("content-type", ""))
    return int(match.group(1)) if match else None


class _Chunker:
    """Bytes off the wire -> int16 chunks at the engine's rate, each at least ``min_bytes`` but the last.

    ``pcm`` is taken at the announced rate (or the engine's own); ``wav`` is read from its header (16-bit
    PCM; several channels are averaged). A rate other than the engine's is resampled. Bad audio raises
    ValueError.
    """

    def __init__(self, fmt: str, announced_rate: int | None, rate: int, min_bytes: int) -> None:
        self._rate = rate
        self._min_bytes = min_bytes
        self._buffer = bytearray()
        self._channels = 1
        self._resampler: soxr.ResampleStream | None = None
        self._in_data = fmt != "wav"  # pcm has no header; wav's audio starts after its data chunk header
        if self._in_data:
            self._set_format(1, announced_rate or rate)

    def _set_format(self, channels: int, source_rate: int) -> None:
        self._channels = channels
        if source_rate != self._rate:
            self._resampler = soxr.ResampleStream(source_rate, self._rate, 1, dtype="float32", quality="HQ")

    def feed(self, data: bytes) -> list[np.ndarray]:
        self._buffer += data
        if not self._in_data and not self._read_header():
            return []
        frame = 2 * self._channels
        if len(self._buffer) < max(self._min_bytes * self._channels, frame):
            return []
        cut = len(self._buffer) - len(self._buffer) % frame
        pcm, self._buffer = bytes(self._buffer[:cut]), self._buffer[cut:]
        return self._convert(pcm, last=False)

    def flush(self) -> list[np.ndarray]:
        if not self._in_data:
            raise ValueError("the WAV stream ended before its audio data")
        frame = 2 * self._channels
        pcm = bytes(self._buffer[: len(self._buffer) - len(self._buffer) % frame])
        self._buffer.clear()
        return self._convert(pcm, last=True)

    def _convert(self, pcm: bytes, last: bool) -> list[np.ndarray]:
        audio = np.frombuffer(pcm, "<i2")
        if self._channels > 1:
            audio = audio.reshape(-1, self._channels).mean(axis=1).astype(np.int16)
        if self._resampler is not None:
            out = self._resampler.resample_chunk(audio.astype(np.float32) / 32768.0, last=last)
            audio = np.clip(np.rint(out * 32768.0), -32768, 32767).astype(np.int16)
        return [audio.astype(np.int16, copy=False)] if audio.size else []

    def _read_header(self) -> bool:
        """Once the WAV header up to its data chunk is in the buffer: read it, drop it, and return True.

        A streaming server cannot know the data size in advance, so the sizes of RIFF and data are ignored.
        """
        buf = self._buffer
        if len(buf) < 12:
            return False
        if buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
            raise ValueError("the answer is not a WAV stream")
        offset, fmt = 12, None
        while len(buf) >= offset + 8:
            chunk_id = bytes(buf[offset : offset + 4])
            (size,) = struct.unpack("<I", buf[offset + 4 : offset + 8])
            if chunk_id == b"data":
                if fmt is None:
                    raise ValueError("the WAV stream has no fmt chunk before its data")
                del buf[: offset + 8]
                self._set_format(*fmt)
                self._in_data = True
                return True
            if len(buf) < offset + 8 + size:
                return False
            if chunk_id == b"fmt ":
                tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", buf[offset + 8 : offset + 24])
                if tag not in (1, 0xFFFE) or bits != 16 or channels < 1:
                    raise ValueError(f"the WAV is not 16-bit PCM (format {tag}, {bits} bits)")
                fmt = (channels, rate)
            offset += 8 + size + (size & 1)
        return False
