"""Audio into the speech endpoints: an uploaded file in any container and codec ffmpeg reads (WAV, FLAC, MP3,
Ogg/Opus, Ogg/Vorbis, M4A/AAC, WebM, ...) decoded with PyAV to mono float32 at the rate the engines take
(16 kHz), bounded in length so that a small compressed upload cannot expand into hours of samples.
The multipart form an endpoint receives the file in is read here too (``read_form``, ``upload_audio``).

PyAV mixes the channels down at the file's own rate; libsoxr resamples, as everywhere in voxgate.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import av
import numpy as np
import soxr
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

__all__ = ["AudioTooLong", "UndecodableAudio", "decode_audio", "form_fields", "read_form", "upload_audio"]


class UndecodableAudio(ValueError):
    """The bytes are not audio ffmpeg can read (the message says what went wrong)."""


class AudioTooLong(ValueError):
    """The audio lasts longer than the endpoint allows."""

    def __init__(self, max_seconds: float) -> None:
        super().__init__(f"the audio is longer than {max_seconds:g} s, the longest this server takes")
        self.max_seconds = max_seconds


def decode_audio(data: bytes, rate: int = 16_000, max_seconds: float | None = None) -> np.ndarray:
    """``data`` (a whole audio file) as mono float32 samples at ``rate``.

    Raises :class:`UndecodableAudio` when it is not audio, or is cut off or corrupt partway (a truncated
    upload is refused rather than transcribed in part), and :class:`AudioTooLong` past ``max_seconds``.
    """
    if not data:
        raise UndecodableAudio("the file is empty")
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise UndecodableAudio(f"not an audio file ffmpeg can read ({_reason(exc)})") from None
    with container:
        if not container.streams.audio:
            raise UndecodableAudio("the file holds no audio stream")
        stream = container.streams.audio[0]
        source_rate = 0
        parts: list[np.ndarray] = []
        seconds = 0.0
        # Down to mono float at the file's own rate; libsoxr does the rate below.
        mixer = av.AudioResampler(format="flt", layout="mono")
        try:
            for frame in container.decode(stream):
                source_rate = source_rate or frame.sample_rate
                if frame.sample_rate != source_rate:
                    raise UndecodableAudio("the sample rate changes partway through the file")
                seconds += frame.samples / frame.sample_rate
                if max_seconds is not None and seconds > max_seconds:
                    raise AudioTooLong(max_seconds)
                for mixed in mixer.resample(frame):
                    parts.append(mixed.to_ndarray().reshape(-1))
            for mixed in mixer.resample(None):
                parts.append(mixed.to_ndarray().reshape(-1))
        except (av.FFmpegError, ValueError, OSError) as exc:
            if isinstance(exc, UndecodableAudio | AudioTooLong):
                raise
            raise UndecodableAudio(f"the audio could not be decoded ({_reason(exc)})") from None
    if not parts or source_rate <= 0:
        raise UndecodableAudio("the file holds no audio samples")
    audio = np.concatenate(parts).astype(np.float32, copy=False)
    if source_rate != rate:
        audio = soxr.resample(audio, source_rate, rate, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(audio)


def _reason(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:200]


# -- uploads ---------------------------------------------------------------------------------------------------


async def read_form(request: Request, max_fields: int = 32) -> FormData:
    """The request's multipart form (one file at most); a broken body is a 422."""
    try:
        return await request.form(max_files=1, max_fields=max_fields)
    except HTTPException as exc:  # starlette's own multipart errors (too many parts, a broken body)
        raise HTTPException(422, f"the body is not a valid multipart form: {exc.detail}") from None


def form_fields(form: FormData) -> dict[str, Any]:
    """The form's text fields (not ``file``): ``name[]``, how OpenAI's SDKs send a list, is the list
    ``name``; a plain name sent twice is a list too, which validation then refuses for a single value."""
    fields: dict[str, Any] = {}
    for key in dict.fromkeys(form.keys()):
        if key == "file":
            continue
        values = form.getlist(key)
        if any(isinstance(v, UploadFile) for v in values):
            detail = [{"loc": ["body", key], "msg": "must be text, not a file", "type": "string_type"}]
            raise HTTPException(422, detail)
        if key.endswith("[]"):
            fields.setdefault(key.removesuffix("[]"), []).extend(values)
        else:
            fields[key] = values[0] if len(values) == 1 else values
    return fields


async def upload_audio(form: FormData, max_seconds: float, rate: int = 16_000) -> np.ndarray:
    """The form's ``file`` decoded (in a thread) to mono float at ``rate``: 422 without one, 400 when it is
    not audio, 413 past ``max_seconds``."""
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        detail = "file must be an uploaded file" if upload is not None else "file is required"
        raise HTTPException(422, [{"loc": ["body", "file"], "msg": detail, "type": "missing"}])
    data = await upload.read()
    try:
        return await asyncio.to_thread(decode_audio, data, rate, max_seconds)
    except UndecodableAudio as exc:
        raise HTTPException(400, f"could not read the audio file {upload.filename or ''!r}: {exc}") from None
    except AudioTooLong as exc:
        raise HTTPException(413, str(exc)) from None
