"""Speech-to-text on another machine: any OpenAI ``/v1/audio/transcriptions`` server.

vLLM serving Whisper, speaches, OpenAI itself, or another voxgate (a model node) transcribe the utterance;
this process only sends it. The engine runs on the STT worker's threads (never on the event loop), so it
uses one synchronous ``httpx.Client`` whose pool is as large as the engine's concurrency.

The pieces both remote engines share live here too (``tts_remote`` imports them): the options every remote
engine takes, the error type, and the retry rule. A request is retried only when the server cannot have
acted on it or asked us to come back: connection failures, 5xx and 429 (after a backoff that honours
``Retry-After``). A 4xx is the request's own fault and is never retried; neither is a read timeout, which
would double the time a caller waits for an answer that may never come.
"""

from __future__ import annotations

import io
import logging
import time
import wave
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import numpy as np
from pydantic import Field

from engines.base import (
    BuildContext,
    Capabilities,
    EngineOptions,
    Needs,
    TranscribeOptions,
    Transcript,
    TranscriptSegment,
)

__all__ = [
    "RemoteEngineError",
    "RemoteOptions",
    "RemoteSTT",
    "RemoteSTTOptions",
    "Retry",
    "api_root",
    "http_client",
]

log = logging.getLogger("voxgate.engines")

SAMPLE_RATE = 16_000
_MAX_ERROR_TEXT = 300  # servers may answer with a whole HTML page
_SILENCE_PEAK = 1e-3  # as the local Whisper engine: digital silence never goes to a model


class RemoteEngineError(RuntimeError):
    """A remote engine call failed: the server was unreachable, too slow, or answered an error.

    The pipeline treats it as any engine failure (the session reports an ``error`` event and goes on).
    ``status_code`` is the HTTP status when there was one; messages never contain the API key.
    """

    def __init__(self, message: str, url: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status_code = status_code


class RemoteOptions(EngineOptions):
    """What every remote engine takes: where the server is, how to authenticate, and how hard to try."""

    base_url: str = Field(
        "http://127.0.0.1:8000/v1",
        description="the server's OpenAI API root (http://host:port/v1); a URL without a path gets /v1",
    )
    api_key: str | None = Field(None, description="Bearer key sent to the server (never logged)")
    concurrency: int = Field(
        4, ge=1, le=256, description="requests in flight at once (the worker's threads and the HTTP pool)"
    )
    timeout_s: float = Field(
        20.0, gt=0, le=600, description="longest wait for the server's answer to one request"
    )
    retries: int = Field(
        2, ge=0, le=10, description="extra tries after a connection failure, 5xx or 429 (never after a 4xx)"
    )

    def weights(self, context: BuildContext) -> dict[str, str]:
        model = getattr(self, "model", "")
        return {"model": f"{model} at {self.base_url}"}


@dataclass(frozen=True)
class Retry:
    """When and after how long a failed request is tried again."""

    retries: int = 2
    backoff_s: float = 0.25  # doubled after each try
    max_backoff_s: float = 4.0  # also caps a server's Retry-After: a caller is waiting

    def retryable_status(self, status: int) -> bool:
        return status == 429 or status >= 500

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 0)."""
        wait = self.backoff_s * 2**attempt
        header = response.headers.get("retry-after") if response is not None else None
        if header:
            try:
                wait = max(wait, float(header))
            except ValueError:
                pass  # an HTTP date: rare from API servers, and our own backoff is a fine answer
        return min(wait, self.max_backoff_s)


# Failures of the connection itself (refused, reset, dropped mid-answer, connect timeout): transcribing and
# synthesizing are idempotent, so the request may be sent again (TTS only before any audio was handed on).
RETRYABLE_TRANSPORT = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


def api_root(base_url: str) -> str:
    """``base_url`` without its trailing slash; a bare ``http://host:port`` gets OpenAI's ``/v1``."""
    root = base_url.rstrip("/")
    return root + "/v1" if not urlsplit(root).path else root


def http_client(root: str, api_key: str | None, timeout_s: float, concurrency: int) -> httpx.Client:
    """A pooled client for one remote engine: connecting fails fast, reading waits ``timeout_s``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(
        base_url=root,
        headers=headers,
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0)),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    )


def error_text(response: httpx.Response, api_key: str | None) -> str:
    """The human part of an error body (OpenAI ``error.message``, FastAPI/voxgate ``detail``), redacted."""
    try:
        payload: Any = response.json()
    except ValueError:
        payload = response.text
    if isinstance(payload, dict):
        error = payload.get("error")
        detail = payload.get("detail")
        if isinstance(error, dict) and error.get("message"):
            payload = error["message"]
        elif isinstance(error, str):
            payload = error
        elif detail is not None:
            payload = detail
    text = str(payload).strip()[:_MAX_ERROR_TEXT] or response.reason_phrase
    return text.replace(api_key, "***") if api_key else text


def transport_error(what: str, url: str, exc: httpx.HTTPError) -> RemoteEngineError:
    """A RemoteEngineError for a failure below HTTP (no status)."""
    if isinstance(exc, httpx.TimeoutException):
        return RemoteEngineError(f"{what} server {url} timed out ({type(exc).__name__})", url)
    if isinstance(exc, httpx.ConnectError):
        return RemoteEngineError(f"{what} server {url} unreachable: {exc}", url)
    return RemoteEngineError(f"{what} server {url}: connection failed: {type(exc).__name__}: {exc}", url)


# Whisper's languages by name: OpenAI's verbose_json says "english" where voxgate and speaches say "en".
_WHISPER_LANGUAGES = dict(
    pair.split(":")
    for pair in (
        "english:en chinese:zh german:de spanish:es russian:ru korean:ko french:fr japanese:ja portuguese:pt "
        "turkish:tr polish:pl catalan:ca dutch:nl arabic:ar swedish:sv italian:it indonesian:id hindi:hi "
        "finnish:fi vietnamese:vi hebrew:he ukrainian:uk greek:el malay:ms czech:cs romanian:ro danish:da "
        "hungarian:hu tamil:ta norwegian:no thai:th urdu:ur croatian:hr bulgarian:bg lithuanian:lt latin:la "
        "maori:mi malayalam:ml welsh:cy slovak:sk telugu:te persian:fa latvian:lv bengali:bn serbian:sr "
        "azerbaijani:az slovenian:sl kannada:kn estonian:et macedonian:mk breton:br basque:eu icelandic:is "
        "armenian:hy nepali:ne mongolian:mn bosnian:bs kazakh:kk albanian:sq swahili:sw galician:gl "
        "marathi:mr punjabi:pa sinhala:si khmer:km shona:sn yoruba:yo somali:so afrikaans:af occitan:oc "
        "georgian:ka belarusian:be tajik:tg sindhi:sd gujarati:gu amharic:am yiddish:yi lao:lo uzbek:uz "
        "faroese:fo haitian_creole:ht pashto:ps turkmen:tk nynorsk:nn maltese:mt sanskrit:sa "
        "luxembourgish:lb myanmar:my tibetan:bo tagalog:tl malagasy:mg assamese:as tatar:tt hawaiian:haw "
        "lingala:ln hausa:ha bashkir:ba javanese:jw sundanese:su cantonese:yue"
    ).split()
)


def language_code(value: Any, fallback: str) -> str:
    """ISO 639-1 code for what a server reported (a code or Whisper's English name)."""
    if not isinstance(value, str) or not value.strip():
        return fallback
    name = value.strip().lower().replace(" ", "_")
    return _WHISPER_LANGUAGES.get(name, name)


class RemoteSTTOptions(RemoteOptions):
    """Any OpenAI-compatible ``/v1/audio/transcriptions`` server (vLLM, speaches, another voxgate)."""

    model: str = Field(
        "whisper-1", description="model name sent to the server (vLLM: the served Whisper; speaches: its id)"
    )
    response_format: Literal["verbose_json", "json"] = Field(
        "verbose_json",
        description="verbose_json reports the detected language; a server that refuses it is asked for json",
    )
    languages: str = Field(
        "en",
        description="comma list of the languages the server's model transcribes; more than one means it "
        "detects the language (with verbose_json)",
    )


class RemoteSTT:
    """Transcribes each utterance with a POST of a 16 kHz WAV to ``<base_url>/audio/transcriptions``.

    Failures raise :class:`RemoteEngineError` after the retries the rule above allows. A server that refuses
    ``verbose_json`` (400 or 422) is asked again for ``json`` and then always gets ``json``; the language is
    then the one asked for, or the first configured one.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str = "whisper-1",
        api_key: str | None = None,
        concurrency: int = 4,
        timeout_s: float = 20.0,
        retries: int = 2,
        response_format: str = "verbose_json",
        languages: str | tuple[str, ...] = "en",
    ) -> None:
        self.base_url = api_root(base_url)
        self.model = model
        self._api_key = api_key
        self._format = response_format
        self._retry = Retry(retries=retries)
        self._client = http_client(self.base_url, api_key, timeout_s, concurrency)
        if isinstance(languages, str):
            languages = tuple(code.strip() for code in languages.split(",") if code.strip())
        self.languages = languages or ("en",)
        self.capabilities = Capabilities(
            streaming=False,
            languages=self.languages,
            detects_language=len(self.languages) > 1 and response_format == "verbose_json",
            transcribe_options=True,  # a prompt and a temperature; translation and word times are not asked for
            device="remote",
            # The server does the work (and batches concurrent requests); this machine only waits.
            needs=Needs(remote=True, concurrency=concurrency, cpu_heavy=False),
            extra={"engine": "remote", "base_url": self.base_url, "model": model},
        )

    def transcribe(
        self, audio: np.ndarray, language: str | None = None, options: TranscribeOptions | None = None
    ) -> Transcript:
        """Transcribe 16 kHz mono float32 ``audio`` on the server; raises :class:`RemoteEngineError`.

        ``options`` pass their prompt and temperature on (``transcribe_options``); the segments of a
        ``verbose_json`` answer become the transcript's, so subtitles made here have the server's times.
        """
        audio = np.asarray(audio, dtype=np.float32)
        duration = len(audio) / SAMPLE_RATE
        if audio.size == 0 or float(np.max(np.abs(audio))) < _SILENCE_PEAK:
            return Transcript("", language or self.languages[0], duration, no_speech_prob=1.0)
        fields = {"model": self.model, "temperature": str(options.temperature if options else 0.0)}
        if language:
            fields["language"] = language
        if options is not None and options.prompt:
            fields["prompt"] = options.prompt
        wav = wav_bytes(audio)
        payload = self._post(wav, {**fields, "response_format": self._format})
        if payload is None:  # refused verbose_json: if json works, the server has no verbose_json
            payload = self._post(wav, {**fields, "response_format": "json"})
            assert payload is not None
            log.warning("STT server %s refuses verbose_json; asking for json from now on", self.base_url)
            self._format = "json"
        segments = _segments(payload.get("segments"))
        return Transcript(
            text=str(payload.get("text") or "").strip(),
            language=language_code(payload.get("language"), language or self.languages[0]),
            duration_s=duration,
            no_speech_prob=max((s.no_speech_prob for s in segments), default=0.0),
            segments=segments,
        )

    def _post(self, wav: bytes, data: dict[str, str]) -> dict[str, Any] | None:
        """The server's JSON answer; None when it refused ``verbose_json`` (so the caller may ask for json)."""
        url = f"{self.base_url}/audio/transcriptions"
        for attempt in range(self._retry.retries + 1):
            last = attempt == self._retry.retries
            try:
                response = self._client.post(
                    "/audio/transcriptions", data=data, files={"file": ("utterance.wav", wav, "audio/wav")}
                )
            except RETRYABLE_TRANSPORT as exc:
                if last:
                    raise transport_error("STT", url, exc) from exc
                time.sleep(self._retry.delay(attempt))
                continue
            except httpx.HTTPError as exc:
                raise transport_error("STT", url, exc) from exc
            if response.status_code < 400:
                try:
                    payload = response.json()
                except ValueError as exc:
                    raise RemoteEngineError(f"STT server {url} sent an unreadable answer", url) from exc
                if not isinstance(payload, dict):
                    raise RemoteEngineError(f"STT server {url} sent an unexpected answer", url)
                return payload
            if response.status_code in (400, 422) and data["response_format"] == "verbose_json":
                return None
            if last or not self._retry.retryable_status(response.status_code):
                raise RemoteEngineError(
                    f"STT server {url} answered HTTP {response.status_code}: "
                    f"{error_text(response, self._api_key)}",
                    url,
                    response.status_code,
                )
            time.sleep(self._retry.delay(attempt, response))
        raise AssertionError("unreachable")  # the loop returns or raises on its last try

    def close(self) -> None:
        """Close pooled connections."""
        self._client.close()


def _segments(raw: Any) -> tuple[TranscriptSegment, ...]:
    """A verbose_json answer's segments (OpenAI's fields; what a server leaves out stays at its default)."""
    segments = []
    for item in raw if isinstance(raw, list) else ():
        try:
            segments.append(
                TranscriptSegment(
                    start=float(item.get("start") or 0.0),
                    end=float(item.get("end") or 0.0),
                    text=str(item.get("text") or "").strip(),
                    avg_logprob=float(item.get("avg_logprob") or 0.0),
                    compression_ratio=float(item.get("compression_ratio") or 0.0),
                    no_speech_prob=float(item.get("no_speech_prob") or 0.0),
                    temperature=float(item.get("temperature") or 0.0),
                    tokens=tuple(int(t) for t in item.get("tokens") or ()),
                    seek=int(item.get("seek") or 0),
                )
            )
        except (AttributeError, TypeError, ValueError):
            continue  # one odd segment costs its times, never the transcript
    return tuple(s for s in segments if s.text)


def wav_bytes(audio: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """Mono float audio as a 16-bit PCM WAV file in memory."""
    pcm = np.clip(np.rint(audio.astype(np.float64) * 32768.0), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buffer.getvalue()
