"""Which media engine the settings select, and its options (cheap to import: no torch, no diffusers).

``build_media_engine(settings)`` reads the ``media_*`` settings (``gateway/settings.py``) through
:class:`MediaOptions` and returns the engine, or ``None`` for ``media_engine = "none"`` (the media routes then
answer 400). The engine modules import their libraries at the top, so they are imported here only when chosen:
a server with the remote engine never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

from pydantic import BaseModel, Field

from engines.media_base import MediaEngine, MediaEngineError

__all__ = ["MEDIA_ENGINES", "MediaOptions", "build_media_engine"]

# name -> "module:class"; each class takes the options model as its one argument.
MEDIA_ENGINES: dict[str, str] = {
    "diffusers": "engines.media_diffusers:DiffusersMediaEngine",
    "remote": "engines.media_remote:RemoteMediaEngine",
}


class MediaOptions(BaseModel):
    """The media engine's settings without their ``media_`` prefix (defaults as in ``gateway/settings.py``)."""

    engine: str = "none"
    model_path: str | None = Field(None, description="diffusers: the folder of a saved pipeline")
    device: str = Field("cpu", description="diffusers: torch device (cpu, cuda, cuda:1, mps)")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="diffusers: weights dtype"
    )
    threads: int = Field(
        1,
        ge=0,
        description="diffusers: torch CPU threads (1 leaves the other cores to the voice engines; torch's "
        "threads spin, and on a busy 2-core machine two of them ran a tiny pipeline 20x slower; 0: torch's default)",
    )
    remote_url: str | None = Field(None, description="remote: base URL of a service speaking the studio API")
    remote_api_key: str | None = Field(
        None, description="remote: Bearer key sent to the service (never logged)"
    )
    remote_timeout_s: float = Field(600.0, gt=0, description="remote: longest wait for one request")
    max_width: int = Field(1024, ge=8)
    max_height: int = Field(1024, ge=8)
    max_steps: int = Field(100, ge=1)
    max_frames: int = Field(64, ge=1)

    @classmethod
    def from_settings(cls, settings: Any) -> MediaOptions:
        """Every ``media_<field>`` attribute the settings object has; missing ones keep their defaults."""
        values = {}
        for name in cls.model_fields:
            value = getattr(settings, f"media_{name}", None)
            if value is not None:
                values[name] = value
        return cls(**values)


def build_media_engine(settings: Any) -> MediaEngine | None:
    """The engine ``settings.media_engine`` names, loaded (blocking: call it off the event loop), or None.

    Raises ``MediaEngineError`` for an unknown name, a missing model folder or URL, or a missing ``[media]``
    extra, with what to set or install.
    """
    options = settings if isinstance(settings, MediaOptions) else MediaOptions.from_settings(settings)
    if options.engine in ("", "none"):
        return None
    target = MEDIA_ENGINES.get(options.engine)
    if target is None:
        known = ", ".join(["none", *MEDIA_ENGINES])
        raise MediaEngineError(f"unknown media engine {options.engine!r} (known: {known})")
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # torch or diffusers not installed
        raise MediaEngineError(
            f"the {options.engine} media engine needs the [media] extra: pip install 'voxgate[media]' ({exc})"
        ) from exc
    return getattr(module, attribute)(options)
