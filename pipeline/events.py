"""The server events a session sends its client: one frozen dataclass per wire ``type``.

The session and its rooms build these; transports put ``to_wire()`` on the wire (JSON over a WebSocket or a
data channel) or act on the type (a media stream drops events its provider cannot read). The wire form is
the protocol of docs/protocol.md: field names, order and omissions are part of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """One event for the client; ``type`` names it on the wire."""

    type: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        """The JSON object the client receives: ``type`` first, then the fields in declaration order."""
        wire: dict[str, Any] = {"type": self.type}
        for field in fields(self):
            wire[field.name] = getattr(self, field.name)
        return wire


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """One direction's audio on the wire."""

    sample_rate: int
    encoding: str


@dataclass(frozen=True, slots=True)
class SessionCreated(ServerEvent):
    """The session is ready; says the audio format each way."""

    type: ClassVar[str] = "session.created"
    session_id: str
    input_audio: AudioFormat
    output_audio: AudioFormat

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "session_id": self.session_id,
            "input_audio": {
                "sample_rate": self.input_audio.sample_rate,
                "encoding": self.input_audio.encoding,
            },
            "output_audio": {
                "sample_rate": self.output_audio.sample_rate,
                "encoding": self.output_audio.encoding,
            },
        }


@dataclass(frozen=True, slots=True)
class SessionUpdated(ServerEvent):
    """A ``session.update`` was applied; ``session`` echoes the fields it set."""

    type: ClassVar[str] = "session.updated"
    session: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SessionClosed(ServerEvent):
    """The last event of a session."""

    type: ClassVar[str] = "session.closed"
    reason: str


@dataclass(frozen=True, slots=True)
class SpeechStarted(ServerEvent):
    """The caller started (or went on) speaking."""

    type: ClassVar[str] = "speech.started"


@dataclass(frozen=True, slots=True)
class SpeechStopped(ServerEvent):
    """The caller paused; the turn may be over."""

    type: ClassVar[str] = "speech.stopped"


@dataclass(frozen=True, slots=True)
class TranscriptPartial(ServerEvent):
    """What the caller has said so far in the open utterance."""

    type: ClassVar[str] = "transcript.partial"
    text: str


@dataclass(frozen=True, slots=True)
class TranscriptFinal(ServerEvent):
    """A user turn: ``source`` is "voice" or "text". ``continues`` (only on the wire when set) names the
    turn this one replaces: the caller went on after a pause taken for the end, before hearing the answer,
    and ``text`` holds both parts."""

    type: ClassVar[str] = "transcript.final"
    turn_id: str
    text: str
    source: str
    continues: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "type": self.type,
            "turn_id": self.turn_id,
            "text": self.text,
            "source": self.source,
        }
        if self.continues is not None:
            wire["continues"] = self.continues
        return wire


@dataclass(frozen=True, slots=True)
class ResponseStarted(ServerEvent):
    """An answer begins; ``resumed_from`` (only on the wire when set) names the cut answer it picks up."""

    type: ClassVar[str] = "response.started"
    response_id: str
    turn_id: str
    resumed_from: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.type, "response_id": self.response_id, "turn_id": self.turn_id}
        if self.resumed_from is not None:
            wire["resumed_from"] = self.resumed_from
        return wire


@dataclass(frozen=True, slots=True)
class ResponseTextDelta(ServerEvent):
    """More of the answer's text."""

    type: ClassVar[str] = "response.text.delta"
    response_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class ResponseTextDone(ServerEvent):
    """The answer's whole text."""

    type: ClassVar[str] = "response.text.done"
    response_id: str
    text: str


@dataclass(frozen=True, slots=True)
class ResponseAudioDone(ServerEvent):
    """The answer's last audio frame has left."""

    type: ClassVar[str] = "response.audio.done"
    response_id: str
    audio_ms: int


@dataclass(frozen=True, slots=True)
class ResponseInterrupted(ServerEvent):
    """The answer was cut: clients drop the agent audio they buffered; ``heard_text`` is what was heard."""

    type: ClassVar[str] = "response.interrupted"
    response_id: str
    played_ms: int
    heard_text: str
    reason: str


@dataclass(frozen=True, slots=True)
class Metrics(ServerEvent):
    """A turn's latencies, sent when its answer's first frame leaves (None: the stage did not run)."""

    type: ClassVar[str] = "metrics"
    turn_id: str
    response_id: str
    llm_ttft_ms: float | None
    first_clause_ms: float | None
    tts_ttfb_ms: float | None
    voice_to_voice_ms: float | None
    stt_ms: float | None


@dataclass(frozen=True, slots=True)
class DtmfReceived(ServerEvent):
    """The caller pressed a key."""

    type: ClassVar[str] = "dtmf.received"
    digit: str


@dataclass(frozen=True, slots=True)
class ErrorEvent(ServerEvent):
    """Something was refused or failed; the session goes on unless a ``session.closed`` follows."""

    type: ClassVar[str] = "error"
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class FlowEvent(ServerEvent):
    """What a flow reports (``flow.node_entered``, ``flow.variable_set``, ``flow.http``, ``flow.error``,
    ``flow.llm_exit``, ``flow.transfer``, ``flow.ended``): the flow runner names the type and its fields,
    so a new node kind needs no new class here."""

    kind: str
    data: Mapping[str, Any]

    @property  # type: ignore[misc]
    def type(self) -> str:  # type: ignore[override]
        return self.kind

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.kind, **self.data}
