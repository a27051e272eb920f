"""Every installed voice behind one TTS engine: Piper's, espeak-ng's, and those a voices directory declares.

``VoicesTTS`` (``tts_engine = "voices"``) lists the Piper voices (installed ``*-piper-voice`` packages and
``X.onnx`` + ``X.onnx.json`` pairs in the voices directory), every espeak-ng language as a voice, and the voices
that ``<voices_dir>/map.json`` names (docs/voices.md). ``synthesize`` sends a voice id to the engine that owns it
and hands back that engine's stream (one chunk per sentence) at one common rate: the default Piper voice's.

``default_voice_for(language)`` is what language routing speaks a language with: map.json's default for it, else
a Piper voice of that language, else espeak-ng's, which covers what no Piper voice does.

The engine modules import onnxruntime and piper only when a voice is first spoken, so this module (and its
options model, which settings validate on every start) is cheap to import.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from engines.base import BuildContext, Capabilities, EngineOptions, Needs, Voice
from engines.tts_espeak import EspeakTTS
from engines.tts_piper import PiperTTS, UnknownVoice, discover_piper_voices
from engines.voice_map import ESPEAK, MAP_FILE, PIPER, MapVoice, base_language, read_voice_map

__all__ = ["MAP_FILE", "VoiceInfo", "VoicesOptions", "VoicesTTS", "base_language", "read_voice_map"]

log = logging.getLogger("voxgate.engines")

DEFAULT_VOICE = "en_US-joe-medium"
ESPEAK_WPM = 175  # espeak-ng's own default rate


class VoicesOptions(EngineOptions):
    """Every installed voice (Piper, espeak-ng, a voices directory with map.json) as one TTS engine."""

    # The same flat names as Piper's options (VOXGATE_TTS_VOICE, VOXGATE_TTS_THREADS, VOXGATE_VOICES_DIR).
    flat_names: ClassVar[dict[str, str]] = {"voices_dir": "voices_dir"}

    voice: str = Field(DEFAULT_VOICE, description="default voice id (any engine's, or a map.json name)")
    threads: int = Field(2, ge=1, description="Piper's ONNX threads (the LLM pauses while TTS runs)")
    voices_dir: Path | None = Field(
        None, description="voices directory (Piper X.onnx + X.onnx.json pairs, map.json)"
    )

    def engine_kwargs(self, context: BuildContext) -> dict[str, Any]:
        # Unset, the voices directory is the service's (VOXGATE_SPEECH__VOICES_DIR, else <data_dir>/voices).
        directory = self.voices_dir or context.voices_dir
        return {
            "default_voice": self.voice,
            "intra_op_threads": self.threads,
            "voices_dir": str(directory) if directory else None,
        }

    def weights(self, context: BuildContext) -> dict[str, str]:
        return {"model": self.voice}

    def default_voice(self) -> str | None:
        return self.voice


# -- the engine ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoiceInfo:
    """One voice as ``GET /v1/voices`` shows it, and where ``synthesize`` sends it."""

    id: str
    name: str
    engine: str  # "piper" or "espeak-ng"
    language: str  # the language family: "de", "en"
    sample_rate: int  # the voice's own rate (audio comes out at the engine's common rate)
    licence: str
    path: str
    source: str  # "package", "voices_dir", "espeak-ng" or "map.json"
    default_for: tuple[str, ...] = ()


class VoicesTTS:
    """One TTS engine over every installed voice (see the module docstring).

    Voice ids are the engines' own (``en_US-joe-medium``, espeak-ng's ``de``) and map.json's names, which win a
    clash; a voice an earlier one shadows stays reachable as ``<engine>:<id>``. ``problems`` lists the map.json
    entries that were left out, and why (``GET /v1/voices`` shows them; each is logged at start-up).
    """

    def __init__(
        self,
        voices_dir: str | None = None,
        default_voice: str = DEFAULT_VOICE,
        intra_op_threads: int = 1,
        use_cuda: bool = False,
    ) -> None:
        folder = Path(voices_dir).expanduser() if voices_dir else None
        if folder is not None and not folder.is_dir():
            folder = None  # a voices directory is optional: none yet means packages and espeak-ng only
        self.voices_dir = folder
        self._threads, self._cuda = intra_op_threads, use_cuda
        files = discover_piper_voices(folder)
        # The Piper engine's own default decides the common rate: the default voice if it is Piper's.
        piper_default = default_voice if default_voice in files else DEFAULT_VOICE
        if piper_default not in files and files:
            piper_default = sorted(files)[0]
        self.piper = self._new_piper(folder, piper_default) if files else None
        self.sample_rate: int = self.piper.sample_rate if self.piper is not None else 22050
        try:
            # espeak-ng's own pace (EspeakTTS slows it for English with Whisper tiny.en). Whisper base names the
            # language of espeak-ng's German, French and Spanish right for 17 of 24 sentences at 175, 16 at 140;
            # French speaks with its own variant, pitch and rate (tts_espeak.LANGUAGE_PROSODY).
            self.espeak: EspeakTTS | None = EspeakTTS(
                sample_rate=self.sample_rate, words_per_minute=ESPEAK_WPM
            )
        except (FileNotFoundError, OSError) as exc:
            log.warning("espeak-ng voices unavailable: %s", exc)
            self.espeak = None
        self._extra_pipers: dict[Path, PiperTTS] = {}
        self._infos: dict[str, VoiceInfo] = {}
        self._targets: dict[str, tuple[Any, str]] = {}  # voice id -> (engine, the engine's voice id)
        entries, self.problems = read_voice_map(folder) if folder is not None else ([], [])
        chosen: dict[str, str] = {}  # language -> the map.json voice that is its default
        for where, entry in entries:
            language = base_language(entry.language)
            if entry.default and language in chosen:
                self.problems.append(f"{where}: {chosen[language]!r} is already the default for {language!r}")
            elif self._add_map_voice(where, entry) and entry.default:
                chosen[language] = entry.name
        self._add_engine_voices()
        if default_voice not in self._infos:
            raise UnknownVoice(default_voice, sorted(self._infos))
        self.default_voice = default_voice
        self._defaults = self._language_defaults(chosen)
        for problem in self.problems:
            log.warning("voices: %s", problem)
        engines = self.engine_capabilities()
        self.capabilities = Capabilities(
            streaming=True,
            languages=tuple(sorted({info.language for info in self._infos.values()})),
            device="cuda" if use_cuda else "cpu",
            needs=Needs(concurrency=1, cpu_heavy=True),  # its first audio is what a caller waits for
            extra={"engine": "voices", "default_voice": default_voice, "engines": sorted(engines)},
        )

    def _new_piper(self, folder: Path | None, default: str) -> PiperTTS:
        return PiperTTS(
            voices_dir=str(folder) if folder else None,
            default_voice=default,
            use_cuda=self._cuda,
            intra_op_threads=self._threads,
        )

    # -- building the catalogue ----------------------------------------------------------------------------

    def _add(self, info: VoiceInfo, engine: Any, target: str) -> None:
        vid = info.id if info.id not in self._infos else f"{info.engine}:{info.id}"
        if vid in self._infos:
            return  # the same voice twice (a package and the folder): the first one found is kept
        self._infos[vid] = replace(info, id=vid)
        self._targets[vid] = (engine, target)

    def _add_engine_voices(self) -> None:
        if self.piper is not None:
            folder = str(self.voices_dir.resolve()) if self.voices_dir else None
            for v in self.piper.voices():
                in_folder = folder is not None and str(Path(v.path).resolve().parent) == folder
                self._add(self._info(v, "voices_dir" if in_folder else "package"), self.piper, v.id)
        if self.espeak is not None:
            for v in self.espeak.voices():
                self._add(self._info(v, ESPEAK), self.espeak, v.id)

    @staticmethod
    def _info(v: Voice, source: str) -> VoiceInfo:
        return VoiceInfo(
            v.id, v.id, v.engine, base_language(v.language), v.sample_rate, v.licence, v.path, source
        )

    def _add_map_voice(self, where: str, entry: MapVoice) -> bool:
        """Add a map.json voice; False (and a problem) when its engine cannot speak it as declared."""
        try:
            engine, target, voice = self._map_target(entry)
        except (UnknownVoice, OSError, ValueError) as exc:
            self.problems.append(f"{where}: {exc}")
            return False
        if entry.sample_rate is not None and entry.sample_rate != voice.sample_rate:
            self.problems.append(
                f"{where}: sample_rate {entry.sample_rate} does not match the voice's {voice.sample_rate}"
            )
            return False
        info = VoiceInfo(
            entry.name,
            entry.name,
            voice.engine,
            base_language(entry.language),
            voice.sample_rate,
            entry.licence or voice.licence,
            voice.path,
            MAP_FILE,
        )
        self._add(info, engine, target)
        return True

    def _map_target(self, entry: MapVoice) -> tuple[Any, str, Voice]:
        """The engine that speaks ``entry``, its id there, and the engine's description of the voice."""
        if entry.engine == ESPEAK:
            if self.espeak is None:
                raise ValueError("espeak-ng is not installed")
            engine: Any = self.espeak
            target = entry.voice or entry.name
        elif entry.file is not None:
            assert self.voices_dir is not None
            model = (self.voices_dir / entry.file).resolve()
            if model.suffix != ".onnx" or not model.is_file():
                raise ValueError(f"file {entry.file!r}: no such .onnx file in {self.voices_dir}")
            if not model.with_name(model.name + ".json").is_file():
                raise ValueError(f"file {entry.file!r}: its config {model.name}.json is missing beside it")
            engine, target = self._piper_for(model), model.stem
        else:
            if self.piper is None:
                raise ValueError("no Piper voice is installed")
            engine, target = self.piper, str(entry.voice)
        voice = next((v for v in engine.voices() if v.id == target), None)
        if voice is None:
            raise UnknownVoice(target, sorted(v.id for v in engine.voices()))
        return engine, target, voice

    def _piper_for(self, model: Path) -> PiperTTS:
        """The Piper engine that finds ``model``: the main one for the folder itself, else one per subfolder."""
        if self.piper is not None and self.voices_dir is not None:
            if model.parent == self.voices_dir.resolve():
                return self.piper
        engine = self._extra_pipers.get(model.parent)
        if engine is None:
            try:
                engine = self._new_piper(model.parent, model.stem)
            except UnknownVoice:
                raise ValueError(
                    f"{model.name} is not a Piper voice (unreadable {model.name}.json)"
                ) from None
            self._extra_pipers[model.parent] = engine
        return engine

    def _language_defaults(self, chosen: dict[str, str]) -> dict[str, str]:
        """Language -> the voice routing speaks it with (see ``default_voice_for``); ``chosen``: map.json's."""
        defaults = dict(chosen)
        infos = self._infos.values()
        default = self._infos[self.default_voice]
        for language in sorted({info.language for info in infos}):
            if language in defaults:
                continue
            if default.language == language:  # the configured default voice speaks its own language
                defaults[language] = default.id
                continue
            piper = sorted(i.id for i in infos if i.engine == PIPER and i.language == language)
            espeak = sorted(
                (i for i in infos if i.engine == ESPEAK and i.language == language),
                key=lambda i: (i.id != language, i.id),  # espeak-ng's plain "de" before "de-ch"-like variants
            )
            if piper:
                defaults[language] = piper[0]
            elif espeak:
                defaults[language] = espeak[0].id
        return defaults

    # -- what callers use ----------------------------------------------------------------------------------

    def catalogue(self) -> list[VoiceInfo]:
        """Every voice with the languages it is the default for; the default voice first."""
        default_for: dict[str, list[str]] = {}
        for language, vid in sorted(self._defaults.items()):
            default_for.setdefault(vid, []).append(language)
        infos = [
            replace(info, default_for=tuple(default_for.get(vid, ()))) for vid, info in self._infos.items()
        ]
        return sorted(infos, key=lambda info: (info.id != self.default_voice, info.id))

    def voices(self) -> list[Voice]:
        """Every voice (``TTSEngine``'s view), the default voice first."""
        return [
            Voice(
                id=i.id,
                engine=i.engine,
                language=i.language,
                sample_rate=i.sample_rate,
                path=i.path,
                licence=i.licence,
            )
            for i in self.catalogue()
        ]

    def language_of(self, voice: str | None) -> str | None:
        """The language family of ``voice`` (None: the default voice); None for a voice it does not have."""
        info = self._infos.get(voice or self.default_voice)
        return info.language if info is not None else None

    def default_voice_for(self, language: str) -> str | None:
        """The voice for ``language``: map.json's default, else a Piper voice, else espeak-ng's; None: none."""
        return self._defaults.get(base_language(language))

    def engine_capabilities(self) -> dict[str, Capabilities]:
        """The engines behind the voices, by name (``GET /v1/voices`` shows what each can do)."""
        engines: dict[str, Capabilities] = {}
        if self.piper is not None:
            engines[PIPER] = self.piper.capabilities
        if self.espeak is not None:
            engines[ESPEAK] = self.espeak.capabilities
        return engines

    def load(self, voice: str | None = None) -> Any:
        """Load a Piper voice now (start-up warm-up); other voices need no loading."""
        engine, target = self._target(voice or self.default_voice)
        return engine.load(target) if isinstance(engine, PiperTTS) else None

    def _target(self, voice: str) -> tuple[Any, str]:
        found = self._targets.get(voice)
        if found is None:
            raise UnknownVoice(voice, sorted(self._targets))
        return found

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> Iterator[np.ndarray]:
        """int16 mono chunks at ``sample_rate``, one per sentence, from the engine that owns ``voice``.

        Raises ``UnknownVoice`` here, before the caller pulls any audio.
        """
        engine, target = self._target(voice or self.default_voice)
        chunks: Iterator[np.ndarray] = engine.synthesize(text, target, speed)
        if engine.sample_rate == self.sample_rate:
            return chunks  # the engines already speak at the common rate (they resample with soxr)
        return self._resampled(chunks, engine.sample_rate)

    def _resampled(self, chunks: Iterator[np.ndarray], rate: int) -> Iterator[np.ndarray]:
        import soxr

        for chunk in chunks:
            yield soxr.resample(chunk, rate, self.sample_rate).astype(np.int16)
