"""Provider-neutral media-stream interface: parsed inbound events, protocol errors, the provider Protocol.

A telephony provider (Twilio, later Telnyx, Plivo, Vonage, Exotel) opens a WebSocket to the gateway and sends
JSON text frames carrying the caller's audio as 8 kHz G.711 mu-law. Each provider spells its messages
differently; a provider module turns its frames into the small frozen events below and builds its outbound
frames (agent audio, marks, clear), so the session code never sees a provider's field names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# Stable error codes. The session reports them (and counts them in metrics), so they never change meaning.
INVALID_JSON = "invalid_json"  # a text frame that is not JSON
INVALID_EVENT = "invalid_event"  # JSON that is not an object, or a known event missing/mistyping a field
UNKNOWN_EVENT = "unknown_event"  # an event name the provider does not document
MEDIA_BEFORE_START = "media_before_start"  # media, dtmf, mark or stop before the stream's start
BAD_PAYLOAD = "bad_payload"  # a media payload that is missing, not a string, or not valid base64
UNSUPPORTED_MEDIA_FORMAT = "unsupported_media_format"  # start announces anything but mu-law 8 kHz mono
WRONG_STREAM = "wrong_stream"  # a message for another stream id than the one started
DUPLICATE_START = "duplicate_start"  # a second start for the same stream
STREAM_STOPPED = "stream_stopped"  # media, dtmf or mark after the stream's stop

ERROR_CODES = (
    INVALID_JSON,
    INVALID_EVENT,
    UNKNOWN_EVENT,
    MEDIA_BEFORE_START,
    BAD_PAYLOAD,
    UNSUPPORTED_MEDIA_FORMAT,
    WRONG_STREAM,
    DUPLICATE_START,
    STREAM_STOPPED,
)

# What every supported provider stream carries: G.711 mu-law, 8 kHz, mono; one byte per sample.
MULAW_ENCODING = "audio/x-mulaw"
MULAW_RATE = 8000
MULAW_BYTES_PER_MS = MULAW_RATE // 1000
FRAME_MS = 20
FRAME_BYTES = FRAME_MS * MULAW_BYTES_PER_MS  # 160: the 20 ms frame providers send and the gateway sends back
MULAW_SILENCE = 0xFF


class ProtocolError(Exception):
    """A provider frame the gateway cannot use; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Connected:
    """The socket is open; the provider announces its protocol (Twilio: "Call", "1.0.0")."""

    protocol: str
    version: str


@dataclass(frozen=True)
class StreamStarted:
    """The stream's metadata: ids, the custom parameters set in the call's instructions, the audio format."""

    stream_id: str
    call_id: str
    account_id: str
    custom_parameters: Mapping[str, str]
    encoding: str
    sample_rate: int
    channels: int
    tracks: tuple[str, ...]
    sequence: int | None = None


@dataclass(frozen=True)
class MediaChunk:
    """One chunk of caller audio: decoded mu-law bytes and where it sits on the stream's timeline."""

    payload: bytes
    timestamp_ms: int | None
    chunk: int | None
    track: str
    stream_id: str | None = None
    sequence: int | None = None

    @property
    def duration_ms(self) -> float:
        return len(self.payload) / MULAW_BYTES_PER_MS


@dataclass(frozen=True)
class DtmfDigit:
    """A keypad digit the caller pressed."""

    digit: str
    track: str = "inbound_track"
    stream_id: str | None = None
    sequence: int | None = None


@dataclass(frozen=True)
class MarkEchoed:
    """The provider echoes a mark the gateway sent: the audio sent before it was played, or was cleared."""

    name: str
    stream_id: str | None = None
    sequence: int | None = None


@dataclass(frozen=True)
class StreamStopped:
    """The stream ended (the call hung up, or the stream was stopped)."""

    stream_id: str
    call_id: str
    account_id: str = ""
    sequence: int | None = None


InboundEvent = Connected | StreamStarted | MediaChunk | DtmfDigit | MarkEchoed | StreamStopped


@runtime_checkable
class MediaStreamProvider(Protocol):
    """What a provider module implements: parse its inbound frames, build its outbound frames.

    Implementations are stateless (one instance serves every call); per-call checks live in
    `telephony.stream_state.StreamState`, which works on the neutral events.
    """

    name: str

    def parse(self, text: str) -> InboundEvent:
        """Turn one inbound text frame into an event; raise ProtocolError (never anything else) if unusable."""
        ...

    def media(self, stream_id: str, mulaw: bytes) -> str:
        """The text frame that plays `mulaw` (8 kHz mu-law bytes, no header) on the call."""
        ...

    def mark(self, stream_id: str, name: str) -> str:
        """The text frame that asks the provider to echo `name` once the audio sent before it has played."""
        ...

    def clear(self, stream_id: str) -> str:
        """The text frame that drops all audio buffered on the provider's side (barge-in)."""
        ...


@dataclass
class StreamStats:
    """Counters a session can report at the end of a call."""

    media_chunks: int = 0
    media_bytes: int = 0
    odd_size_chunks: int = 0  # payloads that are not exactly one 20 ms frame (accepted anyway)
    gaps: int = 0  # timestamp jumps that were filled with silence
    gap_fill_ms: int = 0  # silence inserted for those jumps
    gap_fill_capped_ms: int = 0  # silence not inserted because one jump exceeded max_gap_fill_ms
    late_chunks: int = 0  # chunks whose timestamp is before the end of audio already received
    dtmf_digits: int = 0
    marks_echoed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
