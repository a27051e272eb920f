"""Small protocols every engine implements.

Engines are plain synchronous compute objects: loaded once, shared by every session, and called from worker
threads by ``pipeline.workers``. They know nothing about sessions, transports or asyncio. Streaming engines
return iterators so a worker can stop pulling (and so stop the work) the moment a caller barges in.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class Needs:
    """What an engine needs from the runtime that runs it; ``pipeline.runtime`` sizes its worker from this.

    The defaults describe a model computing in this process on the shared CPU, one job at a time.
    """

    remote: bool = False  # the work happens on another machine (a server), not in this process
    concurrency: int = 1  # jobs it serves at once without slowing each other (a remote server batches)
    # Competes with the other engines for this machine's cores: on a small CPU the streaming LLM then pauses
    # between tokens while speech work runs (``PriorityGate``); a remote engine costs this machine nothing.
    cpu_heavy: bool = True
    # A second in-process instance for background LLM work (flow drafts) is cheap: weights shared or small.
    cheap_second_instance: bool = False


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do; the pipeline adapts to it instead of checking engine types."""

    streaming: bool = False
    batched: bool = False
    languages: tuple[str, ...] = ("en",)
    detects_language: bool = False
    continues_assistant_prefix: bool = False
    # The LLM can read a conversation's next prompt prefix ahead of time (``ContextPrefiller``), so that a turn
    # after the history window moved evaluates only its new tokens.
    prefills_context: bool = False
    device: str = "cpu"
    needs: Needs = field(default_factory=Needs)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildContext:
    """What the service knows that an engine may need to be built (not user options)."""

    cache_dir: str


class EngineOptions(BaseModel):
    """Base of an engine's own options model.

    Option ``x`` of an engine for role ``r`` is the setting ``r_x`` (``VOXGATE_R_X``, a top-level TOML key) or,
    spelled nested, ``r_options.x`` (``VOXGATE_R_OPTIONS__X``, a ``[r_options]`` TOML table). ``flat_names``
    gives an option another flat name, for names that predate this scheme.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    flat_names: ClassVar[dict[str, str]] = {}

    def engine_kwargs(self, context: BuildContext) -> dict[str, Any]:
        """Keyword arguments for the engine's constructor; by default the options as they are."""
        return self.model_dump()

    def weights(self, context: BuildContext) -> dict[str, str]:
        """What ``voxgate models`` says about the engine: ``model`` and, for local weights, ``path``.

        May raise (missing weights): the command reports the error for this engine and goes on.
        """
        return {}

    def default_voice(self) -> str | None:
        """The voice sessions start with (TTS engines); None leaves it to the engine."""
        return None


@dataclass(frozen=True)
class Transcript:
    """One utterance's text; ``text`` is empty when the audio held no words."""

    text: str
    language: str = "en"
    duration_s: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(frozen=True)
class Voice:
    """A voice a TTS engine can speak with; ``path`` says where its weights live."""

    id: str
    engine: str
    language: str
    sample_rate: int
    path: str = ""
    licence: str = ""


@dataclass
class GenerationOptions:
    """Per-call LLM options; ``extra`` passes through to OpenAI-compatible servers (e.g. vLLM guided_json)."""

    max_tokens: int = 80
    temperature: float = 0.0
    stop: Sequence[str] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class VADEngine(Protocol):
    """Speech probability per 32 ms chunk, batched across independent streams.

    ``sample_rates`` lists the rates the model scores natively (8 kHz phone audio needs no resampling when
    it is there); ``sample_rate`` is the one other audio is resampled to. A state belongs to one rate.
    """

    sample_rate: int
    sample_rates: tuple[int, ...]
    capabilities: Capabilities

    def new_state(self, sample_rate: int = 16000) -> Any: ...

    def speech_probs(self, states: list[Any], chunks: np.ndarray) -> np.ndarray:
        """``chunks`` is float32 [n, 32 ms of samples], one row per stream, all streams at one rate;
        updates ``states`` in place."""
        ...


@runtime_checkable
class STTEngine(Protocol):
    """Whole-utterance transcription of 16 kHz mono float32 audio."""

    capabilities: Capabilities

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript: ...


@runtime_checkable
class LLMEngine(Protocol):
    """Chat completion streamed as text deltas. ``messages`` are OpenAI-style dicts."""

    capabilities: Capabilities

    def stream_chat(self, messages: list[dict[str, Any]], options: GenerationOptions) -> Iterator[str]: ...


@runtime_checkable
class ContextPrefiller(Protocol):
    """An LLM that keeps a prompt cache can read a context prefix before it is needed.

    Declared by ``Capabilities.prefills_context``; engines without it are simply not asked.
    """

    capabilities: Capabilities

    def prefill(self, messages: list[dict[str, Any]]) -> Iterator[int]:
        """Evaluate the chat-templated ``messages`` (and the next user message's opening markup) into the
        cache, a few tokens per step: yields the tokens cached so far. A later ``stream_chat`` whose prompt
        begins with these messages evaluates only what follows them. Closing the iterator stops it between
        steps; what was read stays cached."""
        ...


@runtime_checkable
class TTSEngine(Protocol):
    """Speech for a short text, as int16 mono chunks at ``sample_rate``."""

    capabilities: Capabilities
    sample_rate: int

    def voices(self) -> list[Voice]: ...

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[np.ndarray]: ...
