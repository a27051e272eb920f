"""Phone calls through the gateway: Twilio's webhook, signatures, and a simulated call over /twilio/media
(real 8 kHz telephone speech in, mu-law frames and marks out, barge-in with clear, DTMF into a flow whose
transfer reaches Twilio's REST API)."""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import wave
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import httpx
import numpy as np
import pytest
import websockets

from pipeline.audio import mulaw_decode, mulaw_encode, pcm16_to_float, resample
from telephony.twilio.control import TwilioSetup
from tests.speech import clip_pcm, energy_dbfs, piper_pcm, wer
from tests.test_telephony_rest import ACCOUNT, FakeTwilio
from tests.twilio_sim import TwilioSim, twilio_signature

TOKEN = "test-auth-token-0123456789abcdef"
OSR_REFERENCE = "A gold ring will please most any girl. The long journey home took a year."


def _mulaw_8k(pcm16k: bytes) -> bytes:
    return mulaw_encode(resample(pcm16k, 16000, 8000))


@pytest.fixture
def twilio(server) -> Iterator[FakeTwilio]:  # type: ignore[no-untyped-def]
    """Twilio routes on, signed with TOKEN against the server's own URL; REST calls go to a fake Twilio."""
    fake = FakeTwilio()
    settings = copy.copy(server.state.settings)
    settings.twilio_auth_token = TOKEN
    settings.twilio_account_sid = ACCOUNT
    settings.public_url = server.http
    settings.twilio_api_base_url = fake.url
    settings.twilio_number_flows = {"+15550001111": "phone-menu"}
    saved, server.state.providers["twilio"] = server.state.providers["twilio"], TwilioSetup(settings)
    saved_settings, server.state.settings = server.state.settings, settings
    try:
        yield fake
    finally:
        server.state.providers["twilio"], server.state.settings = saved, saved_settings
        fake.close()


def _signed_post(server, path: str, params: dict[str, str], token: str = TOKEN) -> httpx.Response:  # type: ignore[no-untyped-def]
    signature = twilio_signature(token, f"{server.http}{path}", params)
    return httpx.post(f"{server.http}{path}", data=params, headers={"X-Twilio-Signature": signature})


def _marks_between(sim: TwilioSim, after: float) -> str:
    """Names of the marks the server sent after time ``after`` (they name the response they follow)."""
    return " ".join(
        r.message["mark"]["name"] for r in sim.received if r.message.get("event") == "mark" and r.t >= after
    )


def _sim(server, **kwargs) -> TwilioSim:  # type: ignore[no-untyped-def]
    url = f"ws://127.0.0.1:{server.port}/twilio/media"
    return TwilioSim(url, auth_token=TOKEN, **kwargs)


def test_twilio_routes_are_off_without_a_token(server) -> None:
    response = httpx.post(f"{server.http}/twilio/voice", data={"From": "+1", "To": "+2"})
    assert response.status_code == 403 and "VOXGATE_TWILIO_AUTH_TOKEN" in response.json()["detail"]


def test_incoming_call_gets_a_stream_with_the_numbers_flow(server, twilio) -> None:
    params = {"CallSid": "CA123", "From": "+15557654321", "To": "+15550001111"}
    response = _signed_post(server, "/twilio/voice", params)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/xml")
    stream = ElementTree.fromstring(response.text).find("./Connect/Stream")
    assert stream is not None and stream.get("url") == f"ws://127.0.0.1:{server.port}/twilio/media"
    sent = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert sent == {"from": "+15557654321", "to": "+15550001111", "call_sid": "CA123", "flow": "phone-menu"}


def test_webhook_signatures(server, twilio) -> None:
    params = {"CallSid": "CA1", "From": "+1555", "To": "+1666"}
    assert _signed_post(server, "/twilio/voice", params).status_code == 200
    assert _signed_post(server, "/twilio/voice", params, token="wrong-token").status_code == 403
    unsigned = httpx.post(f"{server.http}/twilio/voice", data=params)
    assert unsigned.status_code == 403 and unsigned.json() == {"detail": "missing X-Twilio-Signature"}
    status = _signed_post(server, "/twilio/status", {"CallSid": "CA1", "CallStatus": "ringing"})
    assert status.status_code == 204


def test_busy_gateway_rejects_the_call(server, twilio) -> None:
    sessions = server.state.sessions
    saved, sessions.max_sessions = sessions.max_sessions, len(sessions.live)
    try:
        response = _signed_post(server, "/twilio/voice", {"CallSid": "CA2", "From": "+1", "To": "+2"})
    finally:
        sessions.max_sessions = saved
    assert ElementTree.fromstring(response.text).find("Reject").get("reason") == "busy"


async def test_media_socket_signature_is_checked(server, twilio) -> None:
    url = f"ws://127.0.0.1:{server.port}/twilio/media"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url):
            pass
    assert refused.value.response.status_code == 403
    wrong = {"X-Twilio-Signature": twilio_signature("wrong-token", url)}
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(url, additional_headers=wrong):
            pass
    async with _sim(server) as sim:
        await sim.silence(0.2)
        assert sim.close_code is None


@pytest.mark.slow
async def test_call_transcribes_answers_in_paced_mulaw_frames(server, twilio, shared_audio) -> None:
    pcm8k = clip_pcm(str(shared_audio / "OSR_us_000_0034_8k.wav"), rate=8000)[: 8000 * 2 * 74 // 10]
    vad = server.state.settings.vad
    saved, vad.end_of_turn_ms = vad.end_of_turn_ms, 1300  # one turn for both sentences
    try:
        async with _sim(server, custom_parameters={"from": "+15557654321", "to": "+15559990000"}) as sim:
            await sim.stream(mulaw_encode(pcm8k))
            await sim.silence(2.0)
            await sim.wait_for_audio(1000, timeout=60)
            await sim.wait_for(lambda: len(sim.marks_echoed) >= 5, timeout=30)
            session = next(s for s in server.state.sessions.live.values() if s.config.transport == "twilio")
            await sim.silence(3.0)
    finally:
        vad.end_of_turn_ms = saved
    assert session.caller == "+15557654321"
    turn = session.turns[0]
    assert wer(OSR_REFERENCE, turn.user_text) <= 0.2, turn.user_text
    frames = [base64.b64decode(m["media"]["payload"]) for m in sim.events("media")]
    assert frames and all(len(f) == 160 for f in frames)  # 20 ms of 8 kHz mu-law each
    assert energy_dbfs(mulaw_decode(b"".join(frames))) > -40
    # Never more than lead_ms (plus one 20 ms frame of scheduling slack) ahead of Twilio's playback.
    assert sim.max_lead_ms <= session.config.lead_ms + 40, sim.max_lead_ms
    assert sim.marks_echoed[0].endswith(":100")  # a mark per 100 ms of audio, echoed once played
    assert not sim.errors


@pytest.mark.slow
async def test_barge_in_clears_and_history_keeps_the_marked_part(server, twilio) -> None:
    question = _mulaw_8k(piper_pcm("Tell me a long story about a brave knight and a dragon."))
    async with _sim(server) as sim:
        await sim.stream(question)
        await sim.silence(1.0)
        await sim.wait_for_audio(2500, timeout=60)  # the agent has been talking for a while
        session = next(s for s in server.state.sessions.live.values() if s.config.transport == "twilio")
        await sim.stream(_mulaw_8k(piper_pcm("Wait, stop, tell me about the weather instead.")))
        await sim.wait_for(lambda: sim.clears, timeout=10)
        cleared_at = sim.clears[0]
        await sim.silence(1.5)
        turn = session.turns[0]
    assert turn.interrupted and turn.heard_text
    assert turn.response_text.startswith(turn.heard_text.rstrip(".,!? ")[:20])
    assert len(turn.heard_text) < len(turn.response_text)
    # After the clear, nothing more of the cut answer arrives.
    cut = turn.response_id
    late = [r for r in sim.media_messages() if r.t > cleared_at + 0.1 and cut in _marks_between(sim, r.t)]
    assert not late


@pytest.mark.slow
async def test_dtmf_menu_transfer_reaches_the_rest_api(server, twilio) -> None:
    sim = _sim(server, custom_parameters={"flow": "phone-menu", "from": "+15557654321"})
    # Only a call the gateway answered may be transferred: Twilio fetched its TwiML here first.
    params = {"CallSid": sim.call_sid, "From": "+15557654321", "To": "+15550001111"}
    assert _signed_post(server, "/twilio/voice", params).status_code == 200
    async with sim:
        await sim.wait_for_audio(500, timeout=30)  # the menu prompt is playing
        await sim.dtmf("2")  # orders: a transfer to a number
        await sim.wait_for(lambda: twilio.requests, timeout=30)
    request = twilio.requests[0]
    assert request["path"].endswith("/Calls/" + sim.call_sid + ".json")
    twiml = request["form"]["Twiml"][0]
    number = ElementTree.fromstring(twiml).find("./Dial/Number")
    assert number is not None and number.text == "+15555550142"


def test_outbound_call_request_reaches_twilio(server, twilio) -> None:
    body = {
        "to": "+15557654321",
        "from": "+15550001111",
        "flow": "appointment-reminder",
        "machine_detection": True,
        "voicemail_message": "Hi, this is the clinic. Please call us back.",
    }
    response = httpx.post(f"{server.http}/v1/calls", json=body)
    assert response.status_code == 201, response.text
    sid = response.json()["sid"]
    request = twilio.requests[-1]
    assert request["path"].endswith(f"/Accounts/{ACCOUNT}/Calls.json")
    form = {k: v[0] for k, v in request["form"].items()}
    assert form["To"] == "+15557654321" and form["From"] == "+15550001111"
    assert form["StatusCallback"] == f"{server.http}/twilio/status"
    assert form["MachineDetection"] == "Enable"
    stream = ElementTree.fromstring(form["Twiml"]).find("./Connect/Stream")
    assert stream.get("url") == f"ws://127.0.0.1:{server.port}/twilio/media"
    sent = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert sent["flow"] == "appointment-reminder" and sent["direction"] == "outbound"
    call = httpx.get(f"{server.http}/v1/calls/{sid}").json()
    assert call["direction"] == "outbound" and call["status"] == "queued"

    # A machine answers: the voicemail message is said and the call hangs up, through the REST API.
    params = {"CallSid": sid, "AnsweredBy": "machine_end_beep", "Direction": "outbound-api"}
    assert _signed_post(server, "/twilio/status", params).status_code == 204
    update = {k: v[0] for k, v in twilio.requests[-1]["form"].items()}
    assert twilio.requests[-1]["path"].endswith(f"/Calls/{sid}.json")
    assert "Please call us back" in update["Twiml"] and "<Hangup" in update["Twiml"]
    statuses = httpx.get(f"{server.http}/v1/calls/{sid}").json()["statuses"]
    assert statuses[-1]["AnsweredBy"] == "machine_end_beep"


def test_bad_outbound_requests(server, twilio) -> None:
    bad = httpx.post(f"{server.http}/v1/calls", json={"to": "12", "from": "+15550001111", "flow": "x"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["to"]
    unknown = httpx.post(
        f"{server.http}/v1/calls", json={"to": "+15557654321", "from": "+15550001111", "flow": "nope"}
    )
    assert unknown.status_code == 422
    assert httpx.get(f"{server.http}/v1/calls/CAnothing").status_code == 404


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["stop", "socket_drop"])
async def test_call_recording_is_complete_stereo_with_transcript(server, twilio, runtime, ending) -> None:
    question = "What is the capital of France?"
    async with _sim(server, custom_parameters={"from": "+15557654321"}) as sim:
        await sim.stream(_mulaw_8k(piper_pcm(question)))
        await sim.silence(1.0)
        await sim.wait_for_audio(1500, timeout=60)  # hang up while the agent is mid-sentence
        if ending == "stop":
            await sim.stop()
        else:
            await sim.ws.close()  # no stop message: the socket just goes
        call_seconds = sim.now()
    sid = sim.call_sid
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        call = httpx.get(f"{server.http}/v1/calls/{sid}").json()
        if call.get("recording") or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert call["recording"], call
    assert call["turns"][0]["user_text"] and call["status"] == "completed"
    wav = httpx.get(f"{server.http}{call['recording']}")
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(wav.content)) as w:
        assert w.getnchannels() == 2 and w.getframerate() == 8000
        stereo = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert abs(len(stereo) / 8000 - call_seconds) < 1.0, (len(stereo) / 8000, call_seconds)
    caller = resample(stereo[:, 0].copy().tobytes(), 8000, 16000)
    worker = runtime.stt_worker
    heard = (await asyncio.to_thread(worker.call, runtime.stt.transcribe, pcm16_to_float(caller))).text
    assert wer(question, heard) <= 0.25, heard
    assert energy_dbfs(stereo[:, 1].copy().tobytes()) > -45  # the agent's side has its speech
    session = httpx.get(f"{server.http}/v1/sessions/{call['session_id']}").json()
    transcript = next(r for r in session["recordings"] if r["kind"] == "transcript")
    saved = json.loads(Path(transcript["path"]).read_text())
    assert saved["call_sid"] == sid and saved["turns"][0]["user_text"] == call["turns"][0]["user_text"]
    assert saved["turns"][0]["timings"]["stt_ms"] is not None


async def test_bad_frames_are_counted_and_the_call_goes_on(server, twilio) -> None:
    async with _sim(server) as sim:
        await sim.silence(0.1)
        session = next(s for s in server.state.sessions.live.values() if s.config.transport == "twilio")
        for raw in [
            "{not json",
            {"event": "party", "streamSid": sim.stream_sid},
            {"event": "media", "streamSid": sim.stream_sid, "media": {"payload": "%%%not base64%%%"}},
            {"event": "stop", "streamSid": "MZ-somebody-else", "stop": {"callSid": "CA0"}},
            b"\x00\x01binary",
        ]:
            await sim.send_raw(raw if not isinstance(raw, bytes) else raw.decode("latin-1"))
        await sim.dtmf("7")
        await sim.wait_for(lambda: session.dtmf_digits == ["7"], timeout=10)
        assert not session.closed.is_set()
    errors = server.state.runtime.metrics.errors
    for code in ("invalid_json", "unknown_event", "bad_payload", "wrong_stream"):
        assert errors.labels(f"twilio_{code}")._value.get() >= 1, code


async def test_a_key_s_phone_calls_are_held_to_its_concurrent_sessions(server, twilio) -> None:  # type: ignore[no-untyped-def]
    import time

    from gateway.principal import KeyLimits

    state = server.state

    async def on_server(coro):  # type: ignore[no-untyped-def]
        # The store's engine lives on the server's own loop.
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, state.loop))

    view, _ = await on_server(
        state.auth.keys.create("phone-app", ["calls"], KeyLimits(concurrent_sessions=1))
    )
    sims = [TwilioSim(f"ws://127.0.0.1:{server.port}/twilio/media", auth_token=TOKEN) for _ in range(3)]
    for sim in sims:  # calls the key placed (POST /v1/calls records them so)
        await on_server(
            state.store.merge_call(sim.call_sid, {"status": "queued"}, provider="twilio", now=time.time())
        )
        await on_server(state.store.keys.set_owner("calls", sim.call_sid, view["id"]))

    def live_calls() -> set[str]:
        return {s.owner_key for s in state.sessions.live.values() if s.owner_key == view["id"]}

    first, second, third = sims
    async with first:
        await first.wait_for(lambda: live_calls() == {view["id"]}, timeout=20)
        async with second:  # over the key's one session at once: the stream is closed, the call not served
            await second.wait_closed(timeout=20)
        assert sum(s.owner_key == view["id"] for s in state.sessions.live.values()) == 1
    await first.wait_closed(timeout=20)
    async with third:  # the first call's place was given back
        await third.wait_for(lambda: live_calls() == {view["id"]}, timeout=20)
