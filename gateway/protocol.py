"""The WebSocket protocol's client events, validated, with stable error codes (docs/protocol.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from gateway.settings import VadSettings
from pipeline.codec import SAMPLE_RATES
from pipeline.session import SessionError
from pipeline.strict_json import BadJson, strict_json_loads

MAX_TEXT_CHARS = 4000
# Error messages quote at most this much of what they refuse: an echo must never cost more than the mistake
# (a 400 KB event type once came back whole, and sat in the outbox of a client that never read).
QUOTE_CHARS = 64
MAX_FLOW_ID_CHARS = 128  # as flow ids are stored
MAX_FLOW_VERSION_DIGITS = 9
MAX_PROBLEMS = 5  # validation problems listed in one invalid_event message; the rest are counted


def clip(text: str, limit: int = QUOTE_CHARS) -> str:
    """At most ``limit`` characters of ``text``, saying how long the whole was when cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of at most ``limit`` characters of ``value`` (for messages that name what they refuse)."""
    text = value if isinstance(value, str) else str(value)
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} chars)"


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _optional_fields(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s fields, each optional (default None) with the same bounds: one source for the limits."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        bounds = {key: getattr(m, key) for m in info.metadata for key in ("ge", "le") if hasattr(m, key)}
        fields[name] = (info.annotation | None, Field(None, description=info.description, **bounds))
    return fields


# The VAD knobs a client may change, with the limits the server's own settings enforce.
VadUpdate = create_model("VadUpdate", __config__=ConfigDict(extra="forbid"), **_optional_fields(VadSettings))


class SessionFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instructions: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    voice: str | None = None
    output_sample_rate: int | None = None
    vad: VadUpdate | None = None


class SessionUpdate(_Event):
    type: Literal["session.update"]
    session: SessionFields


class InputText(_Event):
    type: Literal["input_text"]
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]


class InputAudioCommit(_Event):
    type: Literal["input_audio.commit"]


class InputDtmf(_Event):
    type: Literal["input_dtmf"]
    digit: Annotated[str, Field(pattern=r"^[0-9*#A-D]$")]


class OutputAudioPlayed(_Event):
    type: Literal["output_audio.played"]
    response_id: str
    ms: Annotated[float, Field(ge=0)]


class ResponseCancel(_Event):
    type: Literal["response.cancel"]


class SessionClose(_Event):
    type: Literal["session.close"]


EVENTS: dict[str, type[_Event]] = {
    model.model_fields["type"].annotation.__args__[0]: model  # type: ignore[union-attr]
    for model in (
        SessionUpdate,
        InputText,
        InputAudioCommit,
        InputDtmf,
        OutputAudioPlayed,
        ResponseCancel,
        SessionClose,
    )
}


def parse_client_event(text: str) -> _Event:
    """Parse one text frame; raises SessionError with code invalid_json, unknown_event or invalid_event."""
    try:
        data: Any = strict_json_loads(text)
    except BadJson as exc:
        raise SessionError("invalid_json", f"text frames must be JSON objects: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise SessionError("invalid_event", 'every event is a JSON object with a string "type"')
    model = EVENTS.get(data["type"])
    if model is None:
        raise SessionError(
            "unknown_event", f"unknown event type {quote(data['type'])}; known: {', '.join(EVENTS)}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SessionError("invalid_event", f"{data['type']}: {describe_problems(exc)}") from None


def describe_problems(exc: ValidationError) -> str:
    """The first few validation problems, each location clipped: field names come from the client too."""
    errors = exc.errors(include_input=False, include_url=False)
    problems = [
        f"{clip('.'.join(str(p) for p in err['loc'])) or 'event'}: {clip(err['msg'], 200)}"
        for err in errors[:MAX_PROBLEMS]
    ]
    if len(errors) > MAX_PROBLEMS:
        problems.append(f"and {len(errors) - MAX_PROBLEMS} more")
    return "; ".join(problems)


def flow_request(params: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The ``flow`` and ``flow_version`` asked for, checked; raises SessionError(invalid_flow)."""
    flow_id = params.get("flow") or None
    version = params.get("flow_version") or None
    if flow_id is not None and len(flow_id) > MAX_FLOW_ID_CHARS:
        raise SessionError("invalid_flow", f"flow ids are at most {MAX_FLOW_ID_CHARS} characters")
    if version is not None and not (
        version.isascii() and version.isdigit() and len(version) <= MAX_FLOW_VERSION_DIGITS
    ):
        raise SessionError("invalid_flow", f"flow_version must be a positive integer, not {quote(version)}")
    return flow_id, version


def check_audio_format(sample_rate: int | None, encoding: str | None) -> None:
    """Raise SessionError(unsupported_audio_format) for rates and encodings the gateway does not speak."""
    from pipeline.codec import ENCODINGS

    if sample_rate not in SAMPLE_RATES:
        raise SessionError(
            "unsupported_audio_format",
            f"sample_rate must be one of {', '.join(map(str, SAMPLE_RATES))}",
        )
    if encoding not in ENCODINGS:
        raise SessionError("unsupported_audio_format", f"encoding must be one of {', '.join(ENCODINGS)}")
