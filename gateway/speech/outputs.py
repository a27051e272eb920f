"""Generated audio files: where they may go (only inside ``settings.outputs_dir``), how they are served back
(``GET /v1/outputs/{name}``), and how long they stay (``settings.speech.output_retention_hours``).

A requested path is refused (HTTP 400) when it leaves the outputs directory in any way: an absolute path
elsewhere, a ``..`` component, a symlink (in a directory on the way or as the file itself) that points out.
Paths are resolved strictly against what exists on disk, and the file is opened without following a symlink,
so a link swapped in after the check is refused too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.auth import scoped
from gateway.principal import principal_of
from gateway.settings import Settings
from gateway.speech import encode
from gateway.speech.encode import FORMATS, encode_all
from gateway.state import app_state

log = logging.getLogger("voxgate.speech")

DOWNLOAD_PREFIX = "/v1/outputs/"
OWNERS_DIR = "keys"  # outputs/keys/<key id>/: one API key's files
_OWNER = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _refuse(requested: str, why: str) -> HTTPException:
    shown = requested if len(requested) <= 200 else requested[:200] + "..."
    return HTTPException(400, f"output_filepath {shown!r} {why}")


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def outputs_root(settings: Settings, owner: str | None = None) -> Path:
    """The outputs directory, created if needed, with every symlink on its way resolved. An API key's files
    (``owner``, see gateway/principal.py) live in a directory of their own below it: a key reads and writes
    only there, admin (``None``) everywhere."""
    base = settings.outputs_dir
    if owner is not None:
        if not _OWNER.fullmatch(owner):
            raise ValueError(f"not an owner label: {owner!r}")
        base = base / OWNERS_DIR / owner
    base.mkdir(parents=True, exist_ok=True)
    return base.resolve(strict=True)


def output_path(settings: Settings, requested: str | None, extension: str, owner: str | None = None) -> Path:
    """Where to write a generated file: ``requested`` (relative to ``owner``'s outputs directory, or absolute
    inside it) once checked, else a fresh name. Missing directories inside the outputs directory are created."""
    root = outputs_root(settings, owner)
    if requested is None:
        return root / f"{uuid.uuid4().hex}.{extension}"
    if "\x00" in requested or not requested.strip():
        raise _refuse(requested, "is not a file name")
    raw = Path(requested)
    if ".." in raw.parts:
        raise _refuse(requested, "may not contain '..'")
    candidate = raw if raw.is_absolute() else root / raw
    if not candidate.name or candidate.name in (".", "/"):
        raise _refuse(requested, "names no file")
    # The deepest part of the path that exists, resolved through its symlinks, must lie inside the root;
    # what is created below it then does too (no '..' is left to climb out with).
    existing = candidate.parent
    while not os.path.lexists(existing):
        existing = existing.parent
    try:
        real = existing.resolve(strict=True)
    except (OSError, RuntimeError):
        raise _refuse(requested, "passes through a broken or looping link") from None
    if not _within(real, root):
        raise _refuse(requested, f"is outside the outputs directory {root}")
    directory = real / candidate.parent.relative_to(existing)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        directory = directory.resolve(strict=True)
    except OSError as exc:
        raise _refuse(requested, f"cannot be created ({exc.strerror})") from None
    if not _within(directory, root):
        raise _refuse(requested, f"is outside the outputs directory {root}")
    target = directory / candidate.name
    if target.is_symlink():
        raise _refuse(requested, "is a symlink")
    if target.exists() and not target.is_file():
        raise _refuse(requested, "exists and is not a file")
    return target


def write_output(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (blocking: call it from a thread), never through a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise HTTPException(
            400, f"output_filepath {str(path)!r} cannot be written ({exc.strerror})"
        ) from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def download_url(settings: Settings, path: Path, owner: str | None = None) -> str:
    """The URL path that serves ``path`` back to ``owner`` (``GET /v1/outputs/{name}``)."""
    return DOWNLOAD_PREFIX + path.relative_to(outputs_root(settings, owner)).as_posix()


def output_format(requested_path: str | None, requested_format: str | None) -> str:
    """The format asked for, else the one the path's suffix names, else wav; 400 when the two disagree."""
    suffix = Path(requested_path).suffix.lstrip(".").lower() if requested_path else ""
    if requested_format is None:
        return suffix if suffix in FORMATS else "wav"
    if suffix in FORMATS and suffix != requested_format:
        raise HTTPException(
            400, f"output_filepath ends in .{suffix} but response_format is {requested_format}"
        )
    return requested_format


async def save_audio(
    settings: Settings,
    requested_path: str | None,
    requested_format: str | None,
    audio: np.ndarray,
    rate: int,
    owner: str | None = None,
) -> dict[str, Any]:
    """Encode int16 ``audio`` and write it to the checked path among ``owner``'s outputs; what an answer
    says of the file."""
    fmt = output_format(requested_path, requested_format)
    path = output_path(settings, requested_path, fmt, owner)
    data = await asyncio.to_thread(encode_all, audio, fmt, rate)
    await asyncio.to_thread(write_output, path, data)
    return {
        "output_filepath": str(path),
        "download_url": download_url(settings, path, owner),
        "format": fmt,
        "sample_rate": rate,
        "duration_s": round(len(audio) / rate, 3),
    }


def sweep(directory: Path, max_age_s: float, now: float | None = None) -> int:
    """Delete the files (and links) under ``directory`` last changed more than ``max_age_s`` ago; links
    are never followed. Returns how many went."""
    cutoff = (time.time() if now is None else now) - max_age_s
    removed = 0
    for folder, _dirs, files in os.walk(directory, followlinks=False):
        for name in files:
            path = os.path.join(folder, name)
            try:
                if os.lstat(path).st_mtime < cutoff:
                    os.unlink(path)
                    removed += 1
            except FileNotFoundError:  # removed meanwhile (a second sweep, a user)
                continue
    return removed


async def retention_loop(settings: Settings) -> None:
    """Sweep the outputs directory at start-up and then every ``retention_interval_s`` (at most a tenth of
    the retention period, so that a short one is kept to)."""
    max_age_s = settings.speech.output_retention_hours * 3600
    interval = min(settings.retention_interval_s, max_age_s / 10)
    while True:
        try:
            removed = await asyncio.to_thread(sweep, outputs_root(settings), max_age_s)
            if removed:
                log.info(
                    "retention: deleted %d generated audio files older than %g h", removed, max_age_s / 3600
                )
        except OSError:
            log.exception("outputs retention sweep failed")
        await asyncio.sleep(interval)


async def download(request: Request) -> Response:
    """``GET /v1/outputs/{name}``: a generated file, found strictly inside the caller's outputs directory
    (a key's own; admin's is the whole directory)."""
    settings = app_state(request).settings
    name = request.path_params["name"]
    root = outputs_root(settings, principal_of(request).owner)
    if "\x00" in name or ".." in Path(name).parts or Path(name).is_absolute():
        raise HTTPException(400, "an output name is a path inside the outputs directory, without '..'")
    try:
        path = (root / name).resolve(strict=True)
    except (OSError, RuntimeError):
        raise HTTPException(404, f"no output file {name!r}") from None
    if not _within(path, root) or not path.is_file():
        raise HTTPException(404, f"no output file {name!r}")
    suffix = path.suffix.lstrip(".").lower()
    media_type = encode.media_type(suffix) if suffix in FORMATS else "application/octet-stream"
    return FileResponse(path, media_type=media_type, filename=path.name)


routes: list[BaseRoute] = [scoped(Route(DOWNLOAD_PREFIX + "{name:path}", download, methods=["GET"]), "batch")]
