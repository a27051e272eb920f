"""Twilio Media Streams (bidirectional, `<Connect><Stream>`): inbound frames parsed, outbound frames built.

Message shapes follow https://www.twilio.com/docs/voice/media-streams/websocket-messages:

- inbound: `connected` {protocol, version}; `start` {start: {streamSid, accountSid, callSid, tracks,
  customParameters, mediaFormat: {encoding "audio/x-mulaw", sampleRate 8000, channels 1}}}; `media`
  {media: {track, chunk, timestamp, payload}}; `dtmf` {dtmf: {track, digit}}; `mark` {mark: {name}};
  `stop` {stop: {accountSid, callSid}}. Every message but `connected` carries `sequenceNumber` and
  `streamSid`; Twilio sends the numbers (`sequenceNumber`, `chunk`, `timestamp`) as strings.
- outbound: `media` {streamSid, media: {payload}}, `mark` {streamSid, mark: {name}}, `clear` {streamSid}.
"""

from __future__ import annotations

import base64
import binascii
import json
from types import MappingProxyType
from typing import Any

from pipeline.strict_json import BadJson, strict_json_loads
from telephony.provider import (
    BAD_PAYLOAD,
    FRAME_MS,
    INVALID_EVENT,
    INVALID_JSON,
    MULAW_ENCODING,
    MULAW_RATE,
    UNKNOWN_EVENT,
    UNSUPPORTED_MEDIA_FORMAT,
    Connected,
    DtmfDigit,
    InboundEvent,
    MarkEchoed,
    MediaChunk,
    MediaStreamProvider,
    ProtocolError,
    StreamStarted,
    StreamStopped,
)
from telephony.stream_state import StreamState

DTMF_DIGITS = frozenset("0123456789*#ABCD")
INBOUND_EVENTS = ("connected", "start", "media", "dtmf", "mark", "stop")


def _int(value: Any, name: str) -> int:
    # Twilio sends numbers as decimal strings; accept real ints too, but never bools or floats.
    if isinstance(value, bool):
        raise ProtocolError(INVALID_EVENT, f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and 0 < len(value) <= 18 and value.isascii() and value.isdigit():
        return int(value)
    raise ProtocolError(INVALID_EVENT, f"{name} must be an integer (got {value!r:.40})")


def _opt_int(obj: dict[str, Any], key: str, name: str) -> int | None:
    value = obj.get(key)
    return None if value is None else _int(value, name)


def _str(obj: dict[str, Any], key: str, name: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise ProtocolError(INVALID_EVENT, f"{name} must be a non-empty string")
    return value


def _obj(msg: dict[str, Any], key: str) -> dict[str, Any]:
    value = msg.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(INVALID_EVENT, f"{msg.get('event')} message needs an object {key!r}")
    return value


class TwilioMediaStream:
    """Twilio's MediaStreamProvider: stateless, one instance serves every call."""

    name = "twilio"

    def parse(self, text: str) -> InboundEvent:
        try:
            # Strict: no NaN/Infinity, and deep nesting refused by a linear scan before any recursion.
            msg = strict_json_loads(text)
        except BadJson as exc:
            raise ProtocolError(INVALID_JSON, f"frame is not JSON: {str(exc)[:80]}") from None
        if not isinstance(msg, dict):
            raise ProtocolError(INVALID_EVENT, "frame is not a JSON object")
        event = msg.get("event")
        if not isinstance(event, str):
            raise ProtocolError(INVALID_EVENT, "frame has no string 'event'")
        if event == "connected":
            return Connected(protocol=str(msg.get("protocol", "")), version=str(msg.get("version", "")))
        if event not in INBOUND_EVENTS:
            raise ProtocolError(
                UNKNOWN_EVENT, f"unknown event {event[:40]!r}; known: {', '.join(INBOUND_EVENTS)}"
            )
        seq = _opt_int(msg, "sequenceNumber", "sequenceNumber")
        if event == "start":
            return self._start(msg, seq)
        stream_id = _str(msg, "streamSid", "streamSid")
        if event == "media":
            return self._media(_obj(msg, "media"), stream_id, seq)
        if event == "dtmf":
            dtmf = _obj(msg, "dtmf")
            digit = dtmf.get("digit")
            if not isinstance(digit, str) or digit not in DTMF_DIGITS:
                raise ProtocolError(INVALID_EVENT, "dtmf.digit must be one of 0-9 * # A B C D")
            track = _str(dtmf, "track", "dtmf.track", default="inbound_track")
            return DtmfDigit(digit=digit, track=track, stream_id=stream_id, sequence=seq)
        if event == "mark":
            name = _str(_obj(msg, "mark"), "name", "mark.name")
            return MarkEchoed(name=name, stream_id=stream_id, sequence=seq)
        stop = _obj(msg, "stop")
        return StreamStopped(
            stream_id=stream_id,
            call_id=_str(stop, "callSid", "stop.callSid"),
            account_id=_str(stop, "accountSid", "stop.accountSid", default=""),
            sequence=seq,
        )

    def _start(self, msg: dict[str, Any], seq: int | None) -> StreamStarted:
        start = _obj(msg, "start")
        stream_id = start.get("streamSid", msg.get("streamSid"))
        if not isinstance(stream_id, str) or not stream_id:
            raise ProtocolError(INVALID_EVENT, "start.streamSid must be a non-empty string")
        top = msg.get("streamSid")
        if top is not None and top != stream_id:
            raise ProtocolError(INVALID_EVENT, "streamSid and start.streamSid differ")
        params = start.get("customParameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(INVALID_EVENT, "start.customParameters must be an object")
        tracks = start.get("tracks", ["inbound"])
        if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
            raise ProtocolError(INVALID_EVENT, "start.tracks must be a list of strings")
        # Twilio documents the format as always mu-law/8000/mono; anything else would be decoded as noise.
        fmt = start.get("mediaFormat") or {}
        if not isinstance(fmt, dict):
            raise ProtocolError(INVALID_EVENT, "start.mediaFormat must be an object")
        encoding = fmt.get("encoding", MULAW_ENCODING)
        try:
            rate = _int(fmt.get("sampleRate", MULAW_RATE), "start.mediaFormat.sampleRate")
            channels = _int(fmt.get("channels", 1), "start.mediaFormat.channels")
        except ProtocolError as exc:
            raise ProtocolError(UNSUPPORTED_MEDIA_FORMAT, exc.message) from None
        if encoding != MULAW_ENCODING or rate != MULAW_RATE or channels != 1:
            raise ProtocolError(
                UNSUPPORTED_MEDIA_FORMAT,
                f"media format {encoding!r:.40}/{rate}/{channels}ch; only {MULAW_ENCODING}/{MULAW_RATE}/1ch",
            )
        return StreamStarted(
            stream_id=stream_id,
            call_id=_str(start, "callSid", "start.callSid"),
            account_id=_str(start, "accountSid", "start.accountSid", default=""),
            custom_parameters=MappingProxyType({str(k): str(v) for k, v in params.items()}),
            encoding=encoding,
            sample_rate=rate,
            channels=channels,
            tracks=tuple(tracks),
            sequence=seq,
        )

    def _media(self, media: dict[str, Any], stream_id: str, seq: int | None) -> MediaChunk:
        payload = media.get("payload")
        if not isinstance(payload, str):
            raise ProtocolError(BAD_PAYLOAD, "media.payload must be a base64 string")
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(BAD_PAYLOAD, "media.payload is not valid base64") from exc
        return MediaChunk(
            payload=audio,
            timestamp_ms=_opt_int(media, "timestamp", "media.timestamp"),
            chunk=_opt_int(media, "chunk", "media.chunk"),
            track=_str(media, "track", "media.track", default="inbound"),
            stream_id=stream_id,
            sequence=seq,
        )

    def media(self, stream_id: str, mulaw: bytes) -> str:
        # Raw mu-law only: Twilio documents that header bytes (WAV etc.) in the payload play as noise.
        payload = base64.b64encode(mulaw).decode("ascii")
        return json.dumps({"event": "media", "streamSid": stream_id, "media": {"payload": payload}})

    def mark(self, stream_id: str, name: str) -> str:
        return json.dumps({"event": "mark", "streamSid": stream_id, "mark": {"name": name}})

    def clear(self, stream_id: str) -> str:
        return json.dumps({"event": "clear", "streamSid": stream_id})


TWILIO: MediaStreamProvider = TwilioMediaStream()


class TwilioStreamState(StreamState):
    """StreamState bound to the Twilio provider: one per Twilio WebSocket."""

    def __init__(self, *, min_gap_ms: int = FRAME_MS // 2, max_gap_fill_ms: int = 10_000) -> None:
        super().__init__(TWILIO, min_gap_ms=min_gap_ms, max_gap_fill_ms=max_gap_fill_ms)
