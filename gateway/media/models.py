"""Request bodies of the media routes and the limits they are held to.

A body is first parsed by its pydantic model (types, ranges that never change); then :func:`limit_errors`
checks what depends on the deployment: dimensions a multiple the engine accepts and within the configured
maxima, steps, frames and images bounded. Both are cheap, so they run on the event loop; both give the 422
``detail`` list shape pydantic uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engines.media_base import MediaCapabilities

MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**32 - 1
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")
DEFAULT_SIZE = (512, 512)


def parse_size(value: str | None) -> tuple[int, int] | None:
    """``"512x768"`` -> (512, 768); None or ``"auto"`` -> None; raises ValueError otherwise."""
    if value is None or value.strip().lower() in ("", "auto"):
        return None
    match = _SIZE.match(value)
    if match is None:
        raise ValueError("must be WIDTHxHEIGHT, e.g. 512x512")
    return int(match.group(1)), int(match.group(2))


class _Body(BaseModel):
    # Clients (OpenAI's SDKs) send fields this server has no use for (model, quality, user): ignored.
    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    steps: int | None = Field(None, ge=1, le=10_000, description="denoising steps")
    guidance_scale: float = Field(7.5, ge=0, le=50, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="the same seed gives the same picture")


class _Sized(_Body):
    size: str | None = Field(None, max_length=32, description="WIDTHxHEIGHT")

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        parse_size(value)
        return value

    def dimensions(self, default: tuple[int, int] | None = DEFAULT_SIZE) -> tuple[int, int] | None:
        return parse_size(self.size) or default


class StudioImage(_Body):
    """``POST /image/generate`` (and the form fields of ``POST /image/edit``)."""

    width: int | None = Field(None, ge=1, le=100_000)
    height: int | None = Field(None, ge=1, le=100_000)
    strength: float = Field(0.8, gt=0, le=1, allow_inf_nan=False, description="edit: how far from the image")

    def dimensions(self, default: tuple[int, int] | None = DEFAULT_SIZE) -> tuple[int, int] | None:
        if self.width is None and self.height is None:
            return default
        fallback = default or DEFAULT_SIZE
        return self.width or fallback[0], self.height or fallback[1]


class StudioVideo(_Body):
    """``POST /video/generate`` (and the form fields of ``POST /video/image-to-video``)."""

    resolution: str | None = Field(None, max_length=32, description="WIDTHxHEIGHT")
    num_frames: int = Field(16, ge=1, le=100_000)
    fps: int = Field(8, ge=1, le=60)

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: str | None) -> str | None:
        parse_size(value)
        return value

    def dimensions(self, default: tuple[int, int] | None = DEFAULT_SIZE) -> tuple[int, int] | None:
        return parse_size(self.resolution) or default


class OpenAIImages(_Sized):
    """``POST /v1/images/generations`` (and ``/v1/images/edits``' form fields), plus this server's knobs."""

    n: int = Field(1, ge=1, le=100)
    response_format: Literal["b64_json", "url"] = "b64_json"
    strength: float = Field(0.8, gt=0, le=1, allow_inf_nan=False)


class OpenAIVideo(_Sized):
    """``POST /v1/videos``: OpenAI's ``seconds`` becomes ``seconds * fps`` frames unless num_frames is given."""

    seconds: float = Field(2, gt=0, le=600, allow_inf_nan=False)
    num_frames: int | None = Field(None, ge=1, le=100_000)
    fps: int = Field(8, ge=1, le=60)

    def frames(self) -> int:
        return self.num_frames or max(1, round(self.seconds * self.fps))


@dataclass(frozen=True)
class Limits:
    """What a request may ask for here: the settings' maxima, narrowed by the engine's capabilities."""

    size_multiple: int
    max_width: int
    max_height: int
    max_steps: int
    max_frames: int
    max_images: int

    @classmethod
    def of(cls, settings: Any, caps: MediaCapabilities) -> Limits:
        return cls(
            size_multiple=max(1, caps.size_multiple),
            max_width=min(settings.media_max_width, caps.max_width),
            max_height=min(settings.media_max_height, caps.max_height),
            max_steps=min(settings.media_max_steps, caps.max_steps),
            max_frames=min(settings.media_max_frames, caps.max_frames),
            max_images=settings.media_max_images,
        )


def _error(field: str, msg: str) -> dict[str, Any]:
    return {"loc": ["body", field], "msg": msg, "type": "value_error"}


def limit_errors(
    limits: Limits,
    *,
    width: int,
    height: int,
    steps: int,
    frames: int | None = None,
    n: int | None = None,
    size_field: tuple[str, str] = ("width", "height"),
) -> list[dict[str, Any]]:
    """The 422 detail items for values past this deployment's limits (empty: all within)."""
    errors = []
    multiple = limits.size_multiple
    for field, value, most in (
        (size_field[0], width, limits.max_width),
        (size_field[1], height, limits.max_height),
    ):
        if value % multiple:
            errors.append(_error(field, f"{value} is not a multiple of {multiple}"))
        if not multiple <= value <= most:
            errors.append(_error(field, f"{value} is outside {multiple}..{most} (media_max_width/height)"))
    if steps > limits.max_steps:
        errors.append(_error("steps", f"at most {limits.max_steps} steps (media_max_steps)"))
    if frames is not None and frames > limits.max_frames:
        errors.append(_error("num_frames", f"at most {limits.max_frames} frames (media_max_frames)"))
    if n is not None and n > limits.max_images:
        errors.append(_error("n", f"at most {limits.max_images} images (media_max_images)"))
    return errors


def fit_size(width: int, height: int, limits: Limits) -> tuple[int, int]:
    """An uploaded image's size brought within the limits: scaled down to fit (aspect kept), then rounded
    down to the size multiple. Used when an edit names no size of its own."""
    scale = min(1.0, limits.max_width / width, limits.max_height / height)
    multiple = limits.size_multiple

    def snap(value: float) -> int:
        return max(multiple, int(value) // multiple * multiple)

    return snap(width * scale), snap(height * scale)
