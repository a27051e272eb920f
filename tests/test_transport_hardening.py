"""Issue 9's transport findings, each reproduction as a test: deep-nested frames, long echoed names, bad
query parameters, garbage SDP, WebRTC peers that vanish, Twilio sockets that never start, foreign call SIDs."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from gateway.client import VoiceClient
from gateway.protocol import QUOTE_CHARS, parse_client_event
from gateway.webrtc import restrict_ice_host_addresses
from pipeline.session import SessionError
from telephony.provider import INVALID_JSON, ProtocolError
from telephony.twilio.control import OwnedCalls, TwilioCallControl, TwilioSetup
from telephony.twilio.stream import TWILIO
from tests.test_telephony_rest import ACCOUNT, FakeTwilio
from tests.twilio_sim import TwilioSim, twilio_signature
from tests.webrtc_client import WebRtcCaller

TOKEN = "test-auth-token-0123456789abcdef"
DEEP = "[" * 1000 + "]" * 1000  # 2 KB: deeper than Python's recursion limit once parsed recursively
HANGUP_FLOW = {
    "id": "hardening-hang-up",
    "name": "Hangs up at once",
    "start": "bye",
    "nodes": [{"id": "bye", "type": "end", "reason": "done"}],
}


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


def test_owned_calls_expire_and_stay_bounded() -> None:
    now = [0.0]
    owned = OwnedCalls(ttl_s=10, max_calls=3, clock=lambda: now[0])
    for sid in ("CA1", "CA2", "CA3", "CA4"):
        owned.add(sid)
    owned.add("CA" + "9" * 100)  # longer than any real SID: not kept
    assert "CA1" not in owned and "CA4" in owned and len(owned) == 3
    now[0] = 10.0
    assert "CA4" not in owned and len(owned) == 0


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
        # Bounded: a socket that was admitted after all must fail the test, not hang it.
        event = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
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


# -- HTTP query parameters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "/v1/calls?limit=²",
        "/v1/calls?limit=99999999999999999999",
        "/v1/calls?limit=0",
        "/v1/sessions?since=nan",
        "/v1/sessions?until=inf",
        "/v1/sessions?limit=²",
    ],
)
def test_bad_list_parameters_are_422(server, query: str) -> None:
    response = httpx.get(f"{server.http}{query}", timeout=10)
    assert response.status_code == 422 and "detail" in response.json()


# -- WebRTC ---------------------------------------------------------------------------------------------------


@pytest.fixture
def webrtc(server) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """Loopback ICE, and a one-second connect timeout; yields the webrtc sessions gauge."""
    restrict_ice_host_addresses(["127.0.0.1"])
    settings = copy.copy(server.state.settings)
    settings.webrtc_connect_timeout_s = 1.0
    saved, server.state.settings = server.state.settings, settings
    try:
        yield server.state.runtime.metrics.active_sessions.labels("webrtc")
    finally:
        server.state.settings = saved


async def _flush_storage(server) -> None:  # type: ignore[no-untyped-def]
    """Everything the server queued for storage is written (run on the server's own loop)."""
    future = asyncio.run_coroutine_threadsafe(server.state.store.writer.flush(), server.state.loop)
    await asyncio.wrap_future(future)


async def _stored_webrtc_sessions(server) -> int:  # type: ignore[no-untyped-def]
    await _flush_storage(server)
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{server.http}/v1/sessions", params={"transport": "webrtc", "limit": 500})
    return len(response.json()["sessions"])


@pytest.mark.parametrize(
    "sdp",
    ["v=0 this is not sdp", "v=0\r\n" * 3, "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio x\r\n"],
)
async def test_garbage_offer_is_a_4xx_and_leaves_no_trace(server, webrtc, sdp: str) -> None:
    state = server.state
    gauge, reserved = webrtc._value.get(), state.sessions.reserved
    stored, recent = await _stored_webrtc_sessions(server), len(state.sessions.recent)
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(f"{server.http}/v1/webrtc/offer", json={"sdp": sdp, "type": "offer"})
    assert response.status_code == 400 and "offer" in response.json()["detail"]
    await asyncio.sleep(0.6)  # the old code ended the never-started call from pc.close()'s state change
    assert webrtc._value.get() == gauge and state.sessions.reserved == reserved
    assert len(state.sessions.recent) == recent and not state.webrtc_calls
    assert await _stored_webrtc_sessions(server) == stored


async def test_peer_that_vanishes_after_its_offer_is_released_after_the_timeout(server, webrtc) -> None:
    state = server.state
    gauge = webrtc._value.get()
    caller = WebRtcCaller(server.http)
    await caller.post_offer()  # answered, and then the caller is gone before ICE starts
    await caller.close()
    assert webrtc._value.get() == gauge + 1
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 8  # ICE on its own would hold the slot for about a minute
    while caller.session_id in state.sessions.live and loop.time() < deadline:
        await asyncio.sleep(0.05)
    assert caller.session_id not in state.sessions.live
    await asyncio.sleep(0.3)  # end() lets session.closed reach the channel before it uncounts
    assert webrtc._value.get() == gauge and not state.webrtc_calls
    async with httpx.AsyncClient(timeout=10) as http:
        record = (await http.get(f"{server.http}/v1/sessions/{caller.session_id}")).json()
    assert record["close_reason"] == "connect_timeout"


async def test_deep_nested_frame_on_the_data_channel(server, webrtc) -> None:
    async with WebRtcCaller(server.http) as caller:
        await caller.wait_open()
        await caller.wait_for("session.created", timeout=10)
        caller.send_raw(DEEP)
        error = await caller.wait_for("error", timeout=10)
        caller.send({"type": "input_dtmf", "digit": "4"})
        await caller.wait_for("dtmf.received", timeout=10)
    assert error["code"] == "invalid_json"


# -- Twilio ---------------------------------------------------------------------------------------------------


@pytest.fixture
def twilio(server) -> Iterator[FakeTwilio]:  # type: ignore[no-untyped-def]
    """Signed Twilio routes, REST calls to a fake Twilio, a two-second deadline for ``start``."""
    fake = FakeTwilio()
    settings = copy.copy(server.state.settings)
    settings.twilio_auth_token = TOKEN
    settings.twilio_account_sid = ACCOUNT
    settings.public_url = server.http
    settings.twilio_api_base_url = fake.url
    settings.twilio_start_timeout_s = 2.0
    saved, server.state.providers["twilio"] = server.state.providers["twilio"], TwilioSetup(settings)
    saved_settings, server.state.settings = server.state.settings, settings
    try:
        yield fake
    finally:
        server.state.providers["twilio"], server.state.settings = saved, saved_settings
        fake.close()


@pytest.fixture
def hang_up_flow(server) -> str:  # type: ignore[no-untyped-def]
    """A stored flow that ends (hangs up) as soon as it starts."""
    response = httpx.post(f"{server.http}/v1/flows", json=HANGUP_FLOW, timeout=10)
    if response.status_code == 409:
        response = httpx.put(f"{server.http}/v1/flows/{HANGUP_FLOW['id']}", json=HANGUP_FLOW, timeout=10)
    assert response.status_code in (200, 201), response.text
    return str(HANGUP_FLOW["id"])


def _sim(server, **kwargs: Any) -> TwilioSim:  # type: ignore[no-untyped-def]
    return TwilioSim(f"ws://127.0.0.1:{server.port}/twilio/media", auth_token=TOKEN, **kwargs)


async def _answer_webhook(server, call_sid: str) -> str:  # type: ignore[no-untyped-def]
    """Twilio asks /twilio/voice what to do with ``call_sid`` (the gateway answers it); returns the TwiML."""
    params = {"CallSid": call_sid, "From": "+15557654321", "To": "+15550001111"}
    signature = twilio_signature(TOKEN, f"{server.http}/twilio/voice", params)
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{server.http}/twilio/voice", data=params, headers={"X-Twilio-Signature": signature}
        )
    assert response.status_code == 200, response.text
    return response.text


async def test_socket_without_start_counts_and_is_closed_at_the_deadline(server, twilio) -> None:
    sessions = server.state.sessions
    # Sessions earlier tests closed may still be ending; one that ends after the limit is set would free a
    # place, and the voice client below would be admitted.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while (sessions.live or sessions.reserved) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    reserved = sessions.reserved
    saved, sessions.max_sessions = sessions.max_sessions, len(sessions.live) + reserved + 1
    try:
        async with _sim(server, send_start=False) as pending:
            # The pending stream holds the last place: a voice client is refused meanwhile.
            event, code = await _refusal(server.url)
            assert event["code"] == "server_busy" and code == 1013
            assert "<Reject" in await _answer_webhook(server, "CAwhilefull0123456789abcdef012345")
            assert not pending.closed.is_set() and sessions.reserved == reserved + 1
            await pending.wait_closed(timeout=8)
    finally:
        sessions.max_sessions = saved
    assert pending.close_code == 1008 and sessions.reserved == reserved


async def _call_ends_at_once(server, sim: TwilioSim) -> None:  # type: ignore[no-untyped-def]
    async with sim:
        for _ in range(100):  # frames keep coming until the gateway ends the stream
            await sim.silence(0.1)
            if sim.closed.is_set():
                break
        await sim.wait_closed(timeout=5)


async def test_start_with_a_foreign_call_sid_hangs_nothing_up(server, twilio, hang_up_flow) -> None:
    foreign = _sim(server, custom_parameters={"flow": hang_up_flow})
    await _call_ends_at_once(server, foreign)
    assert twilio.requests == []
    # The same flow on a call the gateway answered does hang it up, over the REST API.
    answered = _sim(server, custom_parameters={"flow": hang_up_flow})
    await _answer_webhook(server, answered.call_sid)
    await _call_ends_at_once(server, answered)
    assert [r["path"].rsplit("/", 1)[-1] for r in twilio.requests] == [f"{answered.call_sid}.json"]


async def test_status_callback_for_a_foreign_call_hangs_nothing_up(server, twilio) -> None:
    control = TwilioCallControl(server.state, "CAsomebodyelse0123456789abcdef0123")
    await control.hang_up(say="Bye.")
    await control.transfer("+15555550142")
    assert not control.owned and twilio.requests == []


async def test_bad_flow_version_in_custom_parameters_answers_without_the_flow(server, twilio) -> None:
    params = {"flow": "phone-menu", "flow_version": "²"}
    async with _sim(server, custom_parameters=params) as sim:
        await sim.silence(0.3)
        session = next(s for s in server.state.sessions.live.values() if s.config.transport == "twilio")
        assert not sim.closed.is_set() and session.flow_id is None
