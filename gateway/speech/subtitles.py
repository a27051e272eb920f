"""A transcript in each ``response_format`` of OpenAI's transcription API: json, text, srt, vtt, verbose_json,
and the Server-Sent Events of ``stream=true``.

Times come from the STT engine's segments (Whisper's timestamp tokens). An engine that gives none gets one
segment spanning the whole file, so that srt and vtt still say what was said, if not when within the file.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from engines.base import Transcript, TranscriptSegment
from pipeline.language import LANGUAGE_NAMES

__all__ = ["FORMATS", "render", "sse_event", "timed_segments"]

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
FORMATS: tuple[str, ...] = ("json", "text", "srt", "vtt", "verbose_json")
MEDIA_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


def timed_segments(transcript: Transcript) -> tuple[TranscriptSegment, ...]:
    """The transcript's segments; one for the whole file when the engine gave text but no times."""
    if transcript.segments or not transcript.text:
        return transcript.segments
    return (TranscriptSegment(start=0.0, end=round(transcript.duration_s, 3), text=transcript.text),)


def _clock(seconds: float, decimal: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def srt(segments: tuple[TranscriptSegment, ...]) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, a blank line after each."""
    cues = [
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(segments, 1)
    ]
    return "\n".join(cues)


def vtt(segments: tuple[TranscriptSegment, ...]) -> str:
    """WebVTT: the ``WEBVTT`` line, then ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` cues."""
    cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def verbose_json(
    transcript: Transcript, task: str, segments: bool = True, words: bool = False
) -> dict[str, Any]:
    """OpenAI's ``verbose_json``: language, duration, text, and the segments and/or words asked for
    (``timestamp_granularities``). ``language`` is the language's English name in lower case, as OpenAI
    writes it ("english", "german"); a code Whisper has no name for stays a code."""
    timed = timed_segments(transcript)
    body: dict[str, Any] = {
        "task": task,
        "language": LANGUAGE_NAMES.get(transcript.language, transcript.language).lower(),
        "duration": round(transcript.duration_s, 3),
        "text": transcript.text,
    }
    if segments:
        body["segments"] = [
            {
                "id": i,
                "seek": s.seek,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": list(s.tokens),
                "temperature": s.temperature,
                "avg_logprob": round(s.avg_logprob, 4),
                "compression_ratio": round(s.compression_ratio, 4),
                "no_speech_prob": round(s.no_speech_prob, 4),
            }
            for i, s in enumerate(timed)
        ]
    if words:
        body["words"] = [
            {"word": w.word.strip(), "start": w.start, "end": w.end} for s in timed for w in s.words
        ]
    body["usage"] = {"type": "duration", "seconds": round(transcript.duration_s, 3)}
    return body


def render(
    transcript: Transcript, fmt: str, task: str = "transcribe", granularities: frozenset[str] = frozenset()
) -> tuple[str, str]:
    """The body and its Content-Type for ``fmt``."""
    if fmt == "text":
        body = transcript.text + "\n" if transcript.text else ""
    elif fmt == "srt":
        body = srt(timed_segments(transcript))
    elif fmt == "vtt":
        body = vtt(timed_segments(transcript))
    elif fmt == "verbose_json":
        document = verbose_json(
            transcript,
            task,
            segments="segment" in granularities or not granularities,
            words="word" in granularities,
        )
        body = json.dumps(document, ensure_ascii=False)
    elif fmt == "json":
        usage = {"type": "duration", "seconds": round(transcript.duration_s, 3)}
        body = json.dumps({"text": transcript.text, "usage": usage}, ensure_ascii=False)
    else:
        raise ValueError(f"unknown response_format {fmt!r}")
    return body, MEDIA_TYPES[fmt]


def sse_event(event: dict[str, Any]) -> bytes:
    """One Server-Sent Event carrying ``event`` as JSON (OpenAI's streams name no event, only ``data``)."""
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
