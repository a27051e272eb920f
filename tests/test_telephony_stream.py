"""Twilio Media Streams parsing and building, and the per-stream state (order, stream identity, gap filling)."""

from __future__ import annotations

import base64
import json

import pytest

from telephony.provider import (
    ERROR_CODES,
    Connected,
    DtmfDigit,
    MarkEchoed,
    MediaChunk,
    MediaStreamProvider,
    ProtocolError,
    StreamStarted,
    StreamStopped,
)
from telephony.stream_state import StreamState
from telephony.twilio.stream import TWILIO, TwilioMediaStream, TwilioStreamState

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL = "CA9f6d1c1f1b1a4b6c8d0e2f3a4b5c6d7e"
ACCOUNT = "AC0123456789abcdef0123456789abcdef"

# The documented examples (https://www.twilio.com/docs/voice/media-streams/websocket-messages).
CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": ACCOUNT,
        "streamSid": SID,
        "callSid": CALL,
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"FirstName": "Jane", "flow": "restaurant-booking"},
    },
    "streamSid": SID,
}


def media(
    ts: int | None, payload: bytes = b"\xff" * 160, chunk: int = 1, seq: int = 2, sid: str = SID
) -> dict:
    body: dict = {"track": "inbound", "chunk": str(chunk), "payload": base64.b64encode(payload).decode()}
    if ts is not None:
        body["timestamp"] = str(ts)
    return {"event": "media", "sequenceNumber": str(seq), "media": body, "streamSid": sid}


DTMF = {
    "event": "dtmf",
    "streamSid": SID,
    "sequenceNumber": "5",
    "dtmf": {"track": "inbound_track", "digit": "1"},
}
MARK = {"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": "r1:200"}}
STOP = {
    "event": "stop",
    "sequenceNumber": "5",
    "stop": {"accountSid": ACCOUNT, "callSid": CALL},
    "streamSid": SID,
}


def parse(msg: dict | str):  # type: ignore[no-untyped-def]
    return TWILIO.parse(msg if isinstance(msg, str) else json.dumps(msg))


def error_code(msg: dict | str) -> str:
    with pytest.raises(ProtocolError) as info:
        parse(msg)
    return info.value.code


def test_twilio_implements_the_provider_protocol() -> None:
    assert isinstance(TwilioMediaStream(), MediaStreamProvider)
    assert TWILIO.name == "twilio"


def test_parses_every_documented_message() -> None:
    assert parse(CONNECTED) == Connected(protocol="Call", version="1.0.0")

    started = parse(START)
    assert isinstance(started, StreamStarted)
    assert (started.stream_id, started.call_id, started.account_id) == (SID, CALL, ACCOUNT)
    assert dict(started.custom_parameters) == {"FirstName": "Jane", "flow": "restaurant-booking"}
    assert (started.encoding, started.sample_rate, started.channels) == ("audio/x-mulaw", 8000, 1)
    assert started.tracks == ("inbound",)
    assert started.sequence == 1

    audio = bytes(range(160))
    chunk = parse(media(160, audio, chunk=3, seq=4))
    assert chunk == MediaChunk(
        payload=audio, timestamp_ms=160, chunk=3, track="inbound", stream_id=SID, sequence=4
    )
    assert chunk.duration_ms == 20

    assert parse(DTMF) == DtmfDigit(digit="1", track="inbound_track", stream_id=SID, sequence=5)
    assert parse(MARK) == MarkEchoed(name="r1:200", stream_id=SID, sequence=4)
    assert parse(STOP) == StreamStopped(stream_id=SID, call_id=CALL, account_id=ACCOUNT, sequence=5)


def test_custom_parameters_are_read_only_and_default_to_empty() -> None:
    started = parse(START)
    with pytest.raises(TypeError):
        started.custom_parameters["x"] = "y"  # type: ignore[index]
    bare = json.loads(json.dumps(START))
    del bare["start"]["customParameters"]
    assert dict(parse(bare).custom_parameters) == {}


def test_numbers_may_be_ints_and_optional_fields_may_be_missing() -> None:
    msg = media(40)
    msg["sequenceNumber"] = 3
    msg["media"]["timestamp"] = 40
    del msg["media"]["chunk"]
    del msg["media"]["track"]
    chunk = parse(msg)
    assert (chunk.timestamp_ms, chunk.chunk, chunk.track, chunk.sequence) == (40, None, "inbound", 3)
    assert parse(media(None)).timestamp_ms is None


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ('{"event": "media"', "invalid_json"),
        ("[1, 2]", "invalid_event"),
        ('{"streamSid": "MZ1"}', "invalid_event"),
        ('{"event": 5}', "invalid_event"),
        ('{"event": "hangup", "streamSid": "MZ1"}', "unknown_event"),
        ('{"event": "clear", "streamSid": "MZ1"}', "unknown_event"),  # outbound only
    ],
)
def test_bad_frames(frame: str, code: str) -> None:
    assert error_code(frame) == code


def test_bad_fields() -> None:
    no_sid = dict(media(0))
    del no_sid["streamSid"]
    assert error_code(no_sid) == "invalid_event"
    assert error_code({**media(0), "media": "x"}) == "invalid_event"
    assert error_code({**media(0), "sequenceNumber": "two"}) == "invalid_event"
    for bad in ("-5", "²", "1" * 5000, "", "1.5", True, 2.0):
        bad_ts = media(0)
        bad_ts["media"]["timestamp"] = bad
        assert error_code(bad_ts) == "invalid_event"
    assert error_code({**DTMF, "dtmf": {"digit": "12"}}) == "invalid_event"
    assert error_code({**DTMF, "dtmf": {"digit": "x"}}) == "invalid_event"
    assert error_code({**MARK, "mark": {}}) == "invalid_event"
    assert error_code({**STOP, "stop": {"accountSid": ACCOUNT}}) == "invalid_event"
    start = json.loads(json.dumps(START))
    start["start"]["callSid"] = ""
    assert error_code(start) == "invalid_event"
    start = json.loads(json.dumps(START))
    start["start"]["customParameters"] = ["a"]
    assert error_code(start) == "invalid_event"
    start = json.loads(json.dumps(START))
    start["streamSid"] = "MZother"
    assert error_code(start) == "invalid_event"


@pytest.mark.parametrize("payload", ["!!!!", "abc", "aGVsbG8=x", 5, None])
def test_bad_payload(payload: object) -> None:
    msg = media(0)
    msg["media"]["payload"] = payload
    if payload is None:
        del msg["media"]["payload"]
    assert error_code(msg) == "bad_payload"


@pytest.mark.parametrize(
    "fmt",
    [
        {"encoding": "audio/x-l16", "sampleRate": 8000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2},
        {"encoding": "audio/x-mulaw", "sampleRate": "fast", "channels": 1},
    ],
)
def test_unsupported_media_format(fmt: dict) -> None:
    start = json.loads(json.dumps(START))
    start["start"]["mediaFormat"] = fmt
    assert error_code(start) == "unsupported_media_format"


def test_error_codes_are_the_documented_set() -> None:
    assert set(ERROR_CODES) >= {
        "invalid_json",
        "unknown_event",
        "media_before_start",
        "bad_payload",
        "unsupported_media_format",
        "wrong_stream",
    }


def test_outbound_messages_have_twilios_shapes() -> None:
    audio = bytes(range(256)) + b"\xff" * 64
    assert json.loads(TWILIO.media(SID, audio)) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": base64.b64encode(audio).decode()},
    }
    assert json.loads(TWILIO.mark(SID, "r1:200")) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": "r1:200"},
    }
    assert json.loads(TWILIO.clear(SID)) == {"event": "clear", "streamSid": SID}


# -- StreamState --------------------------------------------------------------------------------------------


def feed(state: StreamState, *msgs: dict) -> list:
    return [state.receive(json.dumps(m)) for m in msgs]


def state_error(state: StreamState, msg: dict | str) -> str:
    with pytest.raises(ProtocolError) as info:
        state.receive(msg if isinstance(msg, str) else json.dumps(msg))
    return info.value.code


def test_state_follows_a_call() -> None:
    state = TwilioStreamState()
    assert not state.started and state.stream_id is None and dict(state.custom_parameters) == {}
    feed(state, CONNECTED, START)
    assert state.connected == Connected("Call", "1.0.0")
    assert state.started and state.stream_id == SID and state.call_id == CALL
    assert state.custom_parameters["flow"] == "restaurant-booking"
    feed(state, media(0), media(20, b"\xff" * 161, chunk=2), DTMF, MARK)
    assert (state.stats.media_chunks, state.stats.media_bytes, state.stats.odd_size_chunks) == (2, 321, 1)
    assert (state.stats.dtmf_digits, state.stats.marks_echoed) == (1, 1)
    feed(state, STOP)
    assert state.stopped


@pytest.mark.parametrize("msg", [media(0), DTMF, MARK, STOP])
def test_anything_before_start_is_media_before_start(msg: dict) -> None:
    state = TwilioStreamState()
    feed(state, CONNECTED)
    assert state_error(state, msg) == "media_before_start"
    assert state.stats.errors == {"media_before_start": 1}


def test_wrong_stream_duplicate_start_and_after_stop() -> None:
    state = TwilioStreamState()
    feed(state, START)
    assert state_error(state, media(0, sid="MZother")) == "wrong_stream"
    assert state_error(state, {**MARK, "streamSid": "MZother"}) == "wrong_stream"
    assert state_error(state, {**STOP, "streamSid": "MZother"}) == "wrong_stream"
    assert (
        state_error(state, {**STOP, "stop": {"accountSid": ACCOUNT, "callSid": "CAother"}}) == "wrong_stream"
    )
    assert state_error(state, START) == "duplicate_start"
    other = json.loads(json.dumps(START))
    other["start"]["streamSid"] = other["streamSid"] = "MZother"
    assert state_error(state, other) == "wrong_stream"
    assert not state.stopped and state.stream_id == SID  # errors change nothing
    feed(state, STOP)
    assert state_error(state, media(20)) == "stream_stopped"
    assert state_error(state, STOP) == "stream_stopped"
    assert state.stats.errors == {"wrong_stream": 5, "duplicate_start": 1, "stream_stopped": 2}


def test_parse_errors_are_counted_and_change_nothing() -> None:
    state = TwilioStreamState()
    feed(state, START)
    assert state_error(state, "nope") == "invalid_json"
    bad = media(0)
    bad["media"]["payload"] = "!!"
    assert state_error(state, bad) == "bad_payload"
    assert state.stats.errors == {"invalid_json": 1, "bad_payload": 1}
    assert state.stats.media_chunks == 0


def chunks(state: StreamState, *spec: tuple[int | None, int]) -> list[int]:
    """Feed media chunks (timestamp, payload bytes); return the silence ms asked for before each."""
    feed(state, START)
    out = []
    for n, (ts, size) in enumerate(spec, start=1):
        chunk = state.receive(json.dumps(media(ts, b"\x7f" * size, chunk=n, seq=n + 1)))
        out.append(state.gap_ms(chunk))
    return out


def test_contiguous_timestamps_need_no_silence() -> None:
    state = TwilioStreamState()
    assert chunks(state, *[(20 * i, 160) for i in range(50)]) == [0] * 50
    assert state.stats.gaps == 0 and state.stats.late_chunks == 0


def test_first_chunk_is_the_baseline_even_if_late_in_the_stream() -> None:
    assert chunks(TwilioStreamState(), (340, 160), (360, 160)) == [0, 0]


def test_skipped_chunks_are_filled_with_silence() -> None:
    state = TwilioStreamState()
    # 0, 20, then Twilio sends nothing for 1 s of silence, then 1060, 1080
    assert chunks(state, (0, 160), (20, 160), (1060, 160), (1080, 160)) == [0, 0, 1020, 0]
    assert (state.stats.gaps, state.stats.gap_fill_ms) == (1, 1020)


def test_jitter_below_half_a_frame_is_absorbed_without_drift() -> None:
    state = TwilioStreamState()
    # timestamps wobble by a few ms around the 20 ms grid: no silence, nothing late
    assert chunks(state, (0, 160), (23, 160), (38, 160), (61, 160), (80, 160)) == [0] * 5
    assert state.stats.late_chunks == 0


def test_small_consistent_gaps_accumulate_into_a_fill() -> None:
    state = TwilioStreamState()
    # 20 ms chunks stamped 24 ms apart: 4 ms lost each time; filled once it reaches half a frame
    fills = chunks(state, *[(24 * i, 160) for i in range(8)])
    assert fills[:3] == [0, 0, 0] and sum(fills) >= 20
    total_audio = 8 * 20 + sum(fills)
    assert abs(total_audio - (24 * 7 + 20)) < 10  # the timeline matches Twilio's within half a frame


def test_odd_payload_sizes_keep_exact_time() -> None:
    state = TwilioStreamState()
    # 80-byte (10 ms) and 240-byte (30 ms) payloads, timestamps consistent with them
    assert chunks(state, (0, 80), (10, 240), (40, 160), (60, 80)) == [0, 0, 0, 0]
    assert state.stats.odd_size_chunks == 3


def test_late_duplicate_and_untimed_chunks_get_no_silence() -> None:
    state = TwilioStreamState()
    assert chunks(state, (0, 160), (20, 160), (20, 160), (None, 160), (80, 160)) == [0, 0, 0, 0, 0]
    assert state.stats.late_chunks == 1
    # the duplicate and the untimed chunk advanced the expected position to 80: no gap before 80


def test_huge_jumps_are_capped_and_re_anchored() -> None:
    state = TwilioStreamState(max_gap_fill_ms=500)
    assert chunks(state, (0, 160), (3_600_020, 160), (3_600_040, 160)) == [0, 500, 0]
    assert state.stats.gap_fill_capped_ms == 3_600_000 - 500


def test_caller_audio_prepends_mulaw_silence() -> None:
    state = TwilioStreamState()
    feed(state, START)
    first = state.receive(json.dumps(media(0, b"\x01" * 160)))
    assert state.caller_audio(first) == b"\x01" * 160
    later = state.receive(json.dumps(media(60, b"\x02" * 160, chunk=2)))
    assert state.caller_audio(later) == b"\xff" * 320 + b"\x02" * 160
