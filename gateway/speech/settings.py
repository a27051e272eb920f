"""Settings of the speech side endpoints: ``VOXGATE_SPEECH__*`` (nested in the one Settings object)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class SpeechSettings(BaseModel):
    """Where the speech endpoints read voices and write files, and how they treat unloaded engines."""

    voices_dir: Path | None = Field(
        None, description="voices directory with a map.json registry (default: <data_dir>/voices)"
    )
    output_dir: Path | None = Field(
        None, description="the only directory output_filepath may name (default: <data_dir>/outputs)"
    )
    output_retention_hours: float = Field(
        24.0, gt=0, description="generated audio files older than this are deleted"
    )
    load_on_demand: bool = Field(
        True, description="a request needing an unloaded engine loads it (false: 409 until /v1/load-model)"
    )
    language_routing: bool = Field(
        True,
        description="with a multilingual STT, the detected language picks the voice and the answer's language",
    )
    chat_max_conversations: int = Field(
        200,
        ge=1,
        description="open /v1/chat conversations at most; a new one beyond them is refused with 503",
    )
    chat_idle_timeout_s: float = Field(
        900.0,
        gt=0,
        description="a /v1/chat conversation with no request for this long ends (its id then 404s)",
    )
    chat_turn_timeout_s: float = Field(
        120.0, gt=0, description="a chat turn that produces nothing for this long is answered 504"
    )
    max_upload_bytes: int = Field(
        25 << 20,
        ge=1024,
        description="largest audio file sent to /v1/audio/transcriptions, /v1/audio/translations or "
        "/v1/audio/vad (OpenAI's own limit is 25 MB); a larger one is refused with 413",
    )
    max_upload_seconds: float = Field(
        1800.0,
        gt=0,
        description="longest decoded audio those endpoints take (a small compressed file can hold hours)",
    )
    max_speech_chars: int = Field(
        4096, ge=1, description="longest input /v1/audio/speech speaks (OpenAI's limit: 4096 characters)"
    )
