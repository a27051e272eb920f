"""Small protocols every engine implements.

Engines are plain synchronous compute objects: loaded once, shared by every session, and called from worker
threads by ``pipeline.workers``. They know nothing about sessions, transports or asyncio. Streaming engines
return iterators so a worker can stop pulling (and so stop the work) the moment a caller barges in.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

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
    # LLM: a request whose ``GenerationOptions.extra`` carries OpenAI ``tools`` / ``tool_choice`` is answered
    # with the Realtime tool decision read from the server's own tool calls (engines/llm_tool_calls.py).
    native_tools: bool = False
    # STT: Whisper-style translation to English (OpenAI's /v1/audio/translations), per-word times, and
    # ``TranscribeOptions`` (prompt, temperature, task, word times) taken by ``transcribe``.
    translates: bool = False
    word_timestamps: bool = False
    transcribe_options: bool = False
    device: str = "cpu"
    needs: Needs = field(default_factory=Needs)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildContext:
    """What the service knows that an engine may need to be built (not user options)."""

    cache_dir: str
    voices_dir: str | None = None  # the voices directory (settings.voices_dir), for engines with voices


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
class Word:
    """One word of a transcript with its time in the audio (seconds from the start)."""

    start: float
    end: float
    word: str
    probability: float = 1.0


@dataclass(frozen=True)
class TranscriptSegment:
    """A stretch of a transcript with its time in the audio (seconds from the start), as Whisper decodes it;
    ``words`` only when they were asked for (``TranscribeOptions.word_timestamps``)."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    temperature: float = 0.0
    tokens: tuple[int, ...] = ()
    seek: int = 0  # where the decoding window began, in 10 ms mel frames (Whisper's own field)


@dataclass(frozen=True)
class Transcript:
    """One utterance's text; ``text`` is empty when the audio held no words.

    ``segments`` carry the text's times when the engine knows them (empty otherwise, and always empty for
    silence); their texts joined by spaces read as ``text`` does.
    """

    text: str
    language: str = "en"
    duration_s: float = 0.0
    no_speech_prob: float = 0.0
    segments: tuple[TranscriptSegment, ...] = ()


@dataclass(frozen=True)
class TranscribeOptions:
    """What a request may ask of an STT engine beyond the language (the fields of OpenAI's transcription API).

    Only engines whose capabilities say ``transcribe_options`` take it; the default asks for nothing new.
    """

    task: Literal["transcribe", "translate"] = "transcribe"  # translate: English text from any language
    prompt: str | None = None  # earlier text or spellings that guide the first window's words
    temperature: float = 0.0  # 0: greedy, the same audio always gives the same words; above: sampled
    word_timestamps: bool = False


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
    """Whole-utterance transcription of 16 kHz mono float32 audio.

    An engine whose capabilities say ``transcribe_options`` also takes ``options`` (a ``TranscribeOptions``)
    as a third argument; callers pass it only then.
    """

    capabilities: Capabilities

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript: ...


@runtime_checkable
class SegmentStreamer(Protocol):
    """An STT engine that hands out a long file's segments as it decodes them (the seek loop's windows): an
    endpoint streams text while the rest is still being decoded, and runs each step as its own job on the
    engine's worker, so that a long file never holds the engine from live calls for more than one step.
    The generator's return value is the whole ``Transcript``, as ``transcribe`` would give it."""

    def transcribe_segments(
        self, audio: np.ndarray, language: str | None = None, options: TranscribeOptions | None = None
    ) -> Generator[TranscriptSegment, None, Transcript]: ...


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
class TurnEngine(Protocol):
    """How finished an utterance sounds: the probability that the caller has ended their turn, from the
    sound of its last seconds (16 kHz mono float32), intonation included."""

    capabilities: Capabilities

    def complete_prob(self, audio: np.ndarray) -> float: ...


@runtime_checkable
class TTSEngine(Protocol):
    """Speech for a short text, as int16 mono chunks at ``sample_rate``; ``speed`` 1.0 is the voice's own pace,
    2.0 twice as fast."""

    capabilities: Capabilities
    sample_rate: int

    def voices(self) -> list[Voice]: ...

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> Iterator[np.ndarray]: ...
