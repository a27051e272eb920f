"""The voices directory's ``map.json``: voices by name, their language, engine and file, a default per language.

Read by the ``voices`` TTS engine (engines/tts_voices.py); docs/voices.md documents the schema. Every entry is
validated on its own, so one bad entry is reported (and left out) without hiding the others.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["ESPEAK", "MAP_FILE", "PIPER", "MapVoice", "base_language", "read_voice_map", "voice_language"]

MAP_FILE = "map.json"
PIPER, ESPEAK = "piper", "espeak-ng"


def base_language(code: str) -> str:
    """The language family of a code: ``en_US``, ``en-us`` and ``EN`` are all ``en``."""
    return code.strip().lower().replace("_", "-").split("-")[0]


def voice_language(tts: object, voice: str | None) -> str:
    """The language family ``voice`` speaks, from the engine's ``language_of`` (the ``voices`` and ``espeak``
    engines); ``en`` when the engine cannot say cheaply (a remote engine's list may cost a request)."""
    language_of = getattr(tts, "language_of", None)
    found = language_of(voice) if callable(language_of) else None
    return found if isinstance(found, str) else "en"


class MapVoice(BaseModel):
    """One ``map.json`` entry: a voice by name, its language, and what speaks it.

    A Piper voice names ``file`` (an ``.onnx`` inside the voices directory, its ``.onnx.json`` beside it) or
    ``voice`` (a Piper voice id that is installed already); an espeak-ng voice names ``voice`` (an espeak-ng
    voice id such as ``de`` or ``fr-fr``; default: ``name``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$", description="the id clients ask for")
    language: str = Field(pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*$", description="e.g. de, pt-BR")
    engine: Literal["piper", "espeak-ng"]
    file: str | None = Field(None, min_length=1, description="piper: the .onnx file, relative to the folder")
    voice: str | None = Field(None, min_length=1, description="the engine's own id for an installed voice")
    sample_rate: int | None = Field(None, ge=8000, le=96000, description="checked against the voice's")
    default: bool = Field(False, description="the voice language routing picks for this language")
    licence: str = ""

    @model_validator(mode="after")
    def _one_source(self) -> MapVoice:
        if self.engine == PIPER and (self.file is None) == (self.voice is None):
            raise ValueError("a piper entry names either file (an .onnx in the voices directory) or voice")
        if self.engine == ESPEAK and self.file is not None:
            raise ValueError("an espeak-ng entry names an espeak-ng voice (voice), not a file")
        return self


class VoiceMap(BaseModel):
    """The whole ``map.json``: ``{"voices": [entry, ...]}``. Entries are checked one by one (``MapVoice``) so
    that one bad entry is reported without hiding the others."""

    model_config = ConfigDict(extra="forbid")

    voices: list[Any]


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'entry'}: {error['msg']}" for error in exc.errors()
    )


def read_voice_map(voices_dir: Path) -> tuple[list[tuple[str, MapVoice]], list[str]]:
    """The valid entries of ``voices_dir/map.json``, each with where it stands in the file (for messages),
    and one problem per bad entry; nothing when there is no file.

    Checked here: the schema, unique names and files inside the folder. Whether the engines have the voice,
    and one default per language, are checked when the engine is built (``VoicesTTS.problems``).
    """
    path = voices_dir / MAP_FILE
    if not path.is_file():
        return [], []
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        document = VoiceMap.model_validate(raw)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [], [f"{path}: not readable as JSON ({exc}); no map.json voices loaded"]
    except ValidationError as exc:
        return [], [f'{path}: {_errors(exc)} (expected {{"voices": [...]}}); no map.json voices loaded']
    entries: list[tuple[str, MapVoice]] = []
    problems: list[str] = []
    root = voices_dir.resolve()
    for index, item in enumerate(document.voices):
        name = item.get("name") if isinstance(item, dict) else None
        where = f"{path.name} voices[{index}]" + (f" ({name!r})" if isinstance(name, str) else "")
        try:
            entry = MapVoice.model_validate(item)
        except ValidationError as exc:
            problems.append(f"{where}: {_errors(exc)}")
            continue
        if any(e.name == entry.name for _, e in entries):
            problems.append(f"{where}: name {entry.name!r} is used by an earlier entry")
        elif entry.file is not None and not (root / entry.file).resolve().is_relative_to(root):
            # resolve() follows symlinks: a link out of the folder is refused too.
            problems.append(f"{where}: file {entry.file!r} is outside the voices directory")
        else:
            entries.append((where, entry))
    return entries, problems
