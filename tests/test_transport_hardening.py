"""Issue 9's transport findings, each reproduction as a test: deep-nested frames, long echoed names, bad
query parameters, garbage SDP, WebRTC peers that vanish, Twilio sockets that never start, foreign call SIDs."""

from __future__ import annotations

import json
from typing import Any

import pytest
import websockets

from gateway.client import VoiceClient
from gateway.protocol import QUOTE_CHARS, parse_client_event
from pipeline.session import SessionError
from telephony.provider import INVALID_JSON, ProtocolError
from telephony.twilio_stream import TWILIO

DEEP = "[" * 1000 + "]" * 1000  # 2 KB: deeper than Python's recursion limit once parsed recursively


# -- parsers: no server needed -------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [DEEP, '{"a":' * 1000 + "1" + "}" * 1000, '{"type": NaN}'])
def test_client_event_parser_refuses_deep_or_non_finite_json(frame: str) -> None:
    with pytest.raises(SessionError) as refused:
        parse_client_event(frame)
    assert refused.value.code == "invalid_json"


@pytest.mark.parametrize("frame", [DEEP, '{"event": "media", "media": {"timestamp": Infinity}}'])
def test_twilio_parser_refuses_deep_or_non_finite_json(frame: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        TWILIO.parse(frame)
    assert refused.value.code == INVALID_JSON


def test_error_messages_quote_only_a_prefix_of_what_they_refuse() -> None:
    long_type = "x" * 400_000
    with pytest.raises(SessionError) as unknown:
        parse_client_event(json.dumps({"type": long_type}))
    assert unknown.value.code == "unknown_event"
    assert len(unknown.value.message) < 400 and "x" * QUOTE_CHARS in unknown.value.message
    # Field names come from the client too, and each unknown one is a separate problem.
    fields = {f"{'k' * 10_000}{i}": 1 for i in range(200)}
    event = {"type": "session.update", "session": {"vad": fields}}
    with pytest.raises(SessionError) as invalid:
        parse_client_event(json.dumps(event))
    assert invalid.value.code == "invalid_event" and len(invalid.value.message) < 2000
    assert "and 195 more" in invalid.value.message


# -- the WebSocket --------------------------------------------------------------------------------------------


async def test_deep_nested_frame_is_invalid_json_and_the_session_goes_on(server) -> None:
    async with VoiceClient(server.url) as client:
        await client.wait_for("session.created")
        await client.send_raw(DEEP)
        error = await client.wait_for("error", timeout=5)
        await client.send_event({"type": "input_text", "text": "Say hello."})
        done = await client.wait_for("response.text.done", timeout=60)
    assert error["code"] == "invalid_json" and done["text"]
    assert not client.received.of("session.closed")


async def test_unknown_event_with_a_huge_type_gets_a_short_error(server) -> None:
    async with VoiceClient(server.url) as client:
        await client.wait_for("session.created")
        await client.send_raw(json.dumps({"type": "t" * 400_000}))
        error = await client.wait_for("error", timeout=5)
    assert error["code"] == "unknown_event" and len(error["message"]) < 400


async def test_a_fault_handling_one_event_is_an_error_event_not_the_end(server) -> None:
    async with VoiceClient(server.url) as client:
        session_id = (await client.wait_for("session.created"))["session_id"]
        session = server.state.sessions.live[session_id]

        async def broken_dtmf(digit: str) -> None:
            raise RuntimeError("simulated fault")

        session.dtmf = broken_dtmf
        await client.send_event({"type": "input_dtmf", "digit": "5"})
        error = await client.wait_for("error", timeout=5)
        await client.send_event({"type": "session.update", "session": {"instructions": "Be brief."}})
        await client.wait_for("session.updated", timeout=5)
    assert error["code"] == "internal_error"


async def _refusal(url: str) -> tuple[dict[str, Any], int]:
    """The error event a refused /v1/voice socket gets, and the close code that follows it."""
    async with websockets.connect(url) as ws:
        event = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None, "the socket dropped without a close frame"
    return event, closed.value.rcvd.code


@pytest.mark.parametrize("version", ["²", "99999999999999999999", "-1", "1.5"])
async def test_bad_flow_version_is_an_error_and_a_clean_close(server, version: str) -> None:
    event, code = await _refusal(f"{server.url}?flow=phone-menu&flow_version={version}")
    assert event["type"] == "error" and event["code"] == "invalid_flow" and code == 1008


async def test_any_failure_setting_up_a_session_is_an_error_and_a_clean_close(
    server, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated fault while setting up")

    reserved = server.state.sessions.reserved
    monkeypatch.setattr("gateway.ws_voice.session_config", broken)
    event, code = await _refusal(server.url)
    assert event == {"type": "error", "code": "internal_error", "message": "the session could not be set up"}
    assert code == 1011 and server.state.sessions.reserved == reserved
