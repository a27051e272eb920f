"""The Realtime API's client events, validated, and its error shape.

Names and fields follow the GA schema as the official ``openai`` SDK types it (``openai/types/realtime/``).
Whatever a client gets wrong becomes a :class:`RealtimeError`: the transport answers it with an ``error``
event that names the client's ``event_id`` and the offending ``param``, and the session goes on.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.protocol import clip, quote
from pipeline.strict_json import BadJson, strict_json_loads

MAX_INSTRUCTIONS_CHARS = 20_000
MAX_TEXT_CHARS = 4000  # a typed user message, as on /v1/voice
UNION_TAGS = frozenset({"message", "function_call_output", "server_vad", "semantic_vad"})


class RealtimeError(Exception):
    """A client mistake, or a request that cannot be served, as the Realtime API reports it."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.event_id = event_id
        self.type = type

    def to_error(self) -> dict[str, Any]:
        """The ``error`` object of an ``error`` event."""
        return {
            "type": self.type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "event_id": self.event_id,
        }


class _Strict(BaseModel):
    # OpenAI refuses parameters it does not know (``unknown_parameter``); so do we, so a typo is not ignored.
    model_config = ConfigDict(extra="forbid")


# -- session ---------------------------------------------------------------------------------------------------


class FormatIn(_Strict):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
    rate: Literal[24000] | None = None


class ServerVadIn(_Strict):
    type: Literal["server_vad"]
    threshold: Annotated[float, Field(ge=0.05, le=0.95)] | None = None
    prefix_padding_ms: Annotated[int, Field(ge=0, le=5000)] | None = None
    silence_duration_ms: Annotated[int, Field(ge=100, le=5000)] | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: Annotated[int, Field(ge=0)] | None = None


class SemanticVadIn(_Strict):
    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None


class AudioInputIn(_Strict):
    format: FormatIn | None = None
    # Accepted and echoed: voxgate always transcribes the caller (STT is how its LLM hears), and has no
    # noise reduction stage.
    transcription: dict[str, Any] | None = None
    noise_reduction: dict[str, Any] | None = None
    turn_detection: Annotated[ServerVadIn | SemanticVadIn, Field(discriminator="type")] | None = None


class VoiceRef(_Strict):
    id: str


class AudioOutputIn(_Strict):
    format: FormatIn | None = None
    voice: str | VoiceRef | None = None
    speed: Annotated[float, Field(ge=0.25, le=1.5)] | None = None


class AudioIn(_Strict):
    input: AudioInputIn | None = None
    output: AudioOutputIn | None = None


class FunctionToolIn(_Strict):
    type: Literal["function"] = "function"
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


MaxTokens = Annotated[int, Field(ge=1, le=4096)] | Literal["inf"]
Modalities = Annotated[list[Literal["text", "audio"]], Field(min_length=1, max_length=1)]


class SessionIn(_Strict):
    type: Literal["realtime"] | None = None
    model: str | None = None
    instructions: Annotated[str, Field(max_length=MAX_INSTRUCTIONS_CHARS)] | None = None
    output_modalities: Modalities | None = None
    max_output_tokens: MaxTokens | None = None
    audio: AudioIn | None = None
    tools: list[FunctionToolIn] | None = None
    tool_choice: str | dict[str, Any] | None = None
    # Accepted so that clients written for OpenAI are not refused; they change nothing here.
    include: list[str] | None = None
    tracing: Any = None
    truncation: Any = None
    prompt: Any = None
    reasoning: Any = None
    parallel_tool_calls: bool | None = None


# -- conversation items ----------------------------------------------------------------------------------------


class ContentIn(_Strict):
    type: Literal["input_text", "input_audio", "text", "output_text", "output_audio"]
    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    audio: str | None = None
    transcript: str | None = None


class MessageItemIn(_Strict):
    type: Literal["message"]
    role: Literal["user", "assistant", "system"]
    content: Annotated[list[ContentIn], Field(min_length=1, max_length=16)]
    id: str | None = None
    object: Literal["realtime.item"] | None = None
    status: str | None = None


class FunctionCallOutputIn(_Strict):
    type: Literal["function_call_output"]
    call_id: str
    output: Annotated[str, Field(max_length=MAX_INSTRUCTIONS_CHARS)]
    id: str | None = None
    object: Literal["realtime.item"] | None = None
    status: str | None = None


ItemIn = Annotated[MessageItemIn | FunctionCallOutputIn, Field(discriminator="type")]


class ResponseIn(_Strict):
    instructions: Annotated[str, Field(max_length=MAX_INSTRUCTIONS_CHARS)] | None = None
    output_modalities: Modalities | None = None
    max_output_tokens: MaxTokens | None = None
    conversation: str | None = None
    audio: AudioIn | None = None
    metadata: dict[str, str] | None = None
    tools: list[FunctionToolIn] | None = None
    tool_choice: str | dict[str, Any] | None = None
    input: list[Any] | None = None


# -- client events ---------------------------------------------------------------------------------------------


class _Event(_Strict):
    event_id: Annotated[str, Field(max_length=256)] | None = None


class SessionUpdate(_Event):
    type: Literal["session.update"]
    session: SessionIn


class BufferAppend(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class BufferCommit(_Event):
    type: Literal["input_audio_buffer.commit"]


class BufferClear(_Event):
    type: Literal["input_audio_buffer.clear"]


class ItemCreate(_Event):
    type: Literal["conversation.item.create"]
    item: ItemIn
    previous_item_id: str | None = None


class ItemTruncate(_Event):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: Annotated[int, Field(ge=0)] = 0
    audio_end_ms: Annotated[int, Field(ge=0)]


class ItemRetrieve(_Event):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class ItemDelete(_Event):
    type: Literal["conversation.item.delete"]
    item_id: str


class ResponseCreate(_Event):
    type: Literal["response.create"]
    response: ResponseIn | None = None


class ResponseCancel(_Event):
    type: Literal["response.cancel"]
    response_id: str | None = None


class OutputBufferClear(_Event):
    type: Literal["output_audio_buffer.clear"]


CLIENT_EVENTS: dict[str, type[_Event]] = {
    model.model_fields["type"].annotation.__args__[0]: model  # type: ignore[union-attr]
    for model in (
        SessionUpdate,
        BufferAppend,
        BufferCommit,
        BufferClear,
        ItemCreate,
        ItemTruncate,
        ItemRetrieve,
        ItemDelete,
        ResponseCreate,
        ResponseCancel,
        OutputBufferClear,
    )
}


def parse_client_event(text: str) -> _Event:
    """One text frame as a client event; raises :class:`RealtimeError` naming the event_id when it can."""
    try:
        data: Any = strict_json_loads(text)
    except BadJson as exc:
        raise RealtimeError("invalid_json", f"the message is not valid JSON: {clip(str(exc), 200)}") from None
    if not isinstance(data, dict):
        raise RealtimeError("invalid_event", "every client event is a JSON object")
    raw_id = data.get("event_id")
    event_id = raw_id[:256] if isinstance(raw_id, str) else None
    kind = data.get("type")
    if not isinstance(kind, str):
        raise RealtimeError(
            "invalid_event", "the event has no string 'type'", param="type", event_id=event_id
        )
    model = CLIENT_EVENTS.get(kind)
    if model is None:
        raise RealtimeError(
            "invalid_event_type",
            f"unknown event type {quote(kind)}; supported: {', '.join(CLIENT_EVENTS)}",
            param="type",
            event_id=event_id,
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, event_id) from None


def validation_error(exc: ValidationError, event_id: str | None, prefix: str = "") -> RealtimeError:
    """The first problem pydantic found, as OpenAI words it: the parameter's dotted path and what is wrong."""
    errors = exc.errors(include_input=False, include_url=False)
    first = errors[0]
    # Discriminated unions put the tag in the path ("item.message.content"): OpenAI's names leave it out.
    loc = [str(part) for part in first["loc"] if part not in UNION_TAGS]
    param = clip(prefix + ".".join(loc), 120)
    if first["type"] == "extra_forbidden":
        code, message = "unknown_parameter", f"unknown parameter: '{param}'"
    elif first["type"] == "missing":
        code, message = "missing_required_parameter", f"missing required parameter: '{param}'"
    else:
        code, message = "invalid_value", f"invalid value for '{param}': {clip(first['msg'], 200)}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    return RealtimeError(code, message, param=param, event_id=event_id)
