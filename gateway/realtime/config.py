"""A Realtime session's effective configuration: what ``session.created``/``updated`` show, and how a
``session.update`` maps onto the voxgate session underneath (its instructions, VAD knobs, voice, output
format, LLM budget, and whether it answers turns by itself)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.realtime.formats import FORMATS, PCM24, AudioFormat
from gateway.realtime.schema import RealtimeError, SemanticVadIn, ServerVadIn, SessionIn
from pipeline.session import Session, VadConfig

# OpenAI's built-in voices: accepted (an app written for OpenAI sends one) and spoken with the default voice.
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
)
# semantic_vad is voxgate's semantic end of turn (the words so far and the turn engine judge each pause):
# eagerness sets how long a turn judged unfinished may wait (OpenAI's caps are 2, 4 and 8 s).
EAGERNESS_UNFINISHED_MS = {"high": 800, "auto": 1500, "medium": 1500, "low": 3000}
PREFIX_PADDING_MS = 320  # the turn detector's pre-roll (pipeline/turns.py), fixed


@dataclass
class TurnDetection:
    """``audio.input.turn_detection`` as in effect; ``None`` in :class:`RealtimeConfig` means manual turns."""

    type: str = "server_vad"
    threshold: float = 0.5
    silence_duration_ms: int = 300
    prefix_padding_ms: int = PREFIX_PADDING_MS
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: str = "auto"
    idle_timeout_ms: int | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.type}
        if self.type == "server_vad":
            wire.update(
                threshold=self.threshold,
                prefix_padding_ms=self.prefix_padding_ms,
                silence_duration_ms=self.silence_duration_ms,
                idle_timeout_ms=self.idle_timeout_ms,
            )
        else:
            wire["eagerness"] = self.eagerness
        wire.update(create_response=self.create_response, interrupt_response=self.interrupt_response)
        return wire


@dataclass
class RealtimeConfig:
    """The Realtime session object, as voxgate serves it."""

    id: str
    model: str
    instructions: str
    voice: str
    max_output_tokens: int | str = "inf"
    output_modalities: list[str] = field(default_factory=lambda: ["audio"])
    input_format: AudioFormat = PCM24
    output_format: AudioFormat = PCM24
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    speed: float = 1.0
    transcription: dict[str, Any] | None = None
    noise_reduction: dict[str, Any] | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"
    # What "inf" tokens and OpenAI's voice names mean here: the service settings' answer budget and voice.
    default_tokens: int = 60
    default_voice: str | None = None
    schema_format: str = "json_schema"  # how a JSON schema reaches the LLM (setting llm_schema_format)
    track_audio: bool = False  # WebRTC: agent audio leaves on the media track, whatever the format says
    finished_ms: int = 300  # the silence that ends a turn judged finished (semantic_vad), the service's

    @property
    def speaks(self) -> bool:
        return self.output_modalities == ["audio"]

    def to_wire(self) -> dict[str, Any]:
        detection = self.turn_detection.to_wire() if self.turn_detection is not None else None
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "output_modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "tools": list(self.tools),
            "tool_choice": self.tool_choice,
            "max_output_tokens": self.max_output_tokens,
            "tracing": None,
            "truncation": "auto",
            "prompt": None,
            "expires_at": 0,
            "audio": {
                "input": {
                    "format": self.input_format.to_wire(),
                    "transcription": self.transcription,
                    "noise_reduction": self.noise_reduction,
                    "turn_detection": detection,
                },
                "output": {"format": self.output_format.to_wire(), "voice": self.voice, "speed": self.speed},
            },
            "include": None,
        }


def resolve_voice(session: Session, voice: Any) -> str | None:
    """The voxgate voice for a Realtime ``voice`` (None: the default); raises for a voice nobody has."""
    name = voice.id if hasattr(voice, "id") else str(voice)
    known = {v.id for v in session.rt.tts.voices()}
    if name in known:
        return name
    if name in OPENAI_VOICES:
        return None
    raise RealtimeError(
        "invalid_value",
        f"unknown voice {name!r}; voxgate has {', '.join(sorted(known))} (OpenAI's names use the default)",
        param="session.audio.output.voice",
    )


def apply_session(config: RealtimeConfig, session: Session, update: SessionIn) -> None:
    """Apply a validated ``session.update`` (all of it, or raise before changing anything)."""
    audio = update.audio
    out = audio.output if audio is not None else None
    inp = audio.input if audio is not None else None
    voice = resolve_voice(session, out.voice) if out is not None and out.voice is not None else False
    # Everything that can fail was checked above; from here on the update is applied whole.
    fields = update.model_fields_set
    if update.model is not None:
        config.model = update.model
    if update.instructions is not None:
        config.instructions = update.instructions
        session.update(instructions=update.instructions)
    if update.output_modalities is not None:
        config.output_modalities = list(update.output_modalities)
        session.answer_options["speak"] = config.speaks
    if "max_output_tokens" in fields:
        config.max_output_tokens = update.max_output_tokens or "inf"
        limit = config.max_output_tokens
        session.config.max_tokens = limit if isinstance(limit, int) else config.default_tokens
    if update.tools is not None:
        config.tools = [tool.model_dump(exclude_none=True) for tool in update.tools]
    if update.tool_choice is not None:
        config.tool_choice = update.tool_choice
    if out is not None:
        if out.format is not None:
            config.output_format = FORMATS[out.format.type]
            if not config.track_audio:
                rate, encoding = config.output_format.session_output
                session.config.output_rate, session.config.output_encoding = rate, encoding
        if voice is not False:
            config.voice = out.voice.id if hasattr(out.voice, "id") else str(out.voice)
            session.config.voice = voice if voice is not None else config.default_voice
        if out.speed is not None:
            config.speed = session.config.speed = out.speed
    if inp is not None:
        if inp.format is not None:
            config.input_format = FORMATS[inp.format.type]
        if "transcription" in inp.model_fields_set:
            config.transcription = inp.transcription
        if "noise_reduction" in inp.model_fields_set:
            config.noise_reduction = inp.noise_reduction
        if "turn_detection" in inp.model_fields_set:
            config.turn_detection = _turn_detection(config.turn_detection, inp.turn_detection)
    apply_turn_detection(config, session)


def _turn_detection(
    current: TurnDetection | None, new: ServerVadIn | SemanticVadIn | None
) -> TurnDetection | None:
    if new is None:
        return None
    # Fields left out keep their value when the type stays; a new type starts from its defaults.
    detection = current if current is not None and current.type == new.type else TurnDetection(type=new.type)
    for key, value in new.model_dump(exclude_none=True).items():
        setattr(detection, key, value)
    detection.prefix_padding_ms = PREFIX_PADDING_MS
    return detection


def apply_turn_detection(config: RealtimeConfig, session: Session) -> None:
    """The session's turn-taking from ``turn_detection``: VAD knobs, answering by itself, barge-in."""
    detection = config.turn_detection
    realtime: Any = session
    if detection is None:
        realtime.manual_turns = True
        realtime.idle_timeout_ms = None
        realtime.disarm_idle()
        session.auto_answer = realtime.respond_with_tools = False
        return
    realtime.manual_turns = False
    realtime.interrupt_response = detection.interrupt_response
    # OpenAI's idle timeout is server_vad's only (semantic_vad has no such field).
    realtime.idle_timeout_ms = detection.idle_timeout_ms if detection.type == "server_vad" else None
    if not realtime.idle_timeout_ms:
        realtime.disarm_idle()
    # With tools to offer, a turn's response first asks the LLM for a call: the Realtime layer starts it.
    tools_on = bool(config.tools) and config.tool_choice != "none"
    session.auto_answer = detection.create_response and not tools_on
    realtime.respond_with_tools = detection.create_response and tools_on
    if detection.type == "server_vad":  # OpenAI's server_vad: a turn ends after this much silence, always
        vad = {"threshold": detection.threshold, "end_of_turn_ms": detection.silence_duration_ms}
        session.update(vad={**vad, "semantic_turns": False})
    else:
        vad = {"semantic_turns": True, "end_of_turn_ms": config.finished_ms}
        session.update(vad={**vad, "unfinished_ms": EAGERNESS_UNFINISHED_MS[detection.eagerness]})


def initial_turn_detection(vad: VadConfig) -> TurnDetection:
    """What the service's VAD settings amount to: semantic_vad when semantic turns are on (voxgate's
    default), else server_vad with the service's silence."""
    if vad.semantic_turns:
        return TurnDetection(
            type="semantic_vad", threshold=vad.threshold, silence_duration_ms=vad.end_of_turn_ms
        )
    return TurnDetection(threshold=vad.threshold, silence_duration_ms=vad.end_of_turn_ms)
