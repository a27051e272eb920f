"""The recording-consent announcement over a simulated Twilio call: said first, heard whole although the caller
talks over it, and only then does the call's flow start; the call's log lines carry its ids, masked."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import pytest

from pipeline.audio import mulaw_decode, pcm16_to_float, resample
from tests.speech import piper_pcm, wer
from tests.test_observability import _samples, _value, json_lines, json_logs  # noqa: F401 (json_logs: a fixture)
from tests.test_telephony_gateway import TOKEN, _mulaw_8k, twilio  # noqa: F401 (twilio: a fixture)
from tests.twilio_sim import TwilioSim

pytestmark = pytest.mark.slow

CONSENT = "This call is recorded for quality and training purposes."
CALLER = "+15557654321"


def _mark_indexes(sim: TwilioSim, response_id: str) -> list[int]:
    """Where, among everything the server sent, the marks that follow ``response_id``'s audio are."""
    return [
        i
        for i, r in enumerate(sim.received)
        if r.message.get("event") == "mark" and r.message["mark"]["name"].startswith(f"{response_id}:")
    ]


async def test_consent_is_heard_whole_before_the_flow_starts(server, twilio, runtime, json_logs) -> None:  # noqa: F811
    server.state.settings.consent_announcement = CONSENT  # the twilio fixture's copy of the settings
    url = f"ws://127.0.0.1:{server.port}/twilio/media"
    params = {"flow": "phone-menu", "from": CALLER}
    talk = _mulaw_8k(piper_pcm("Hello? Is anybody there?"))  # shorter than the announcement
    async with TwilioSim(url, auth_token=TOKEN, custom_parameters=params) as sim:
        await sim.wait_for_audio(200, timeout=30)  # the announcement is playing
        session = next(
            s
            for s in server.state.sessions.live.values()
            if s.caller == CALLER and s.turns and s.turns[0].source == "consent"
        )
        await sim.stream(talk)  # the caller talks over it: no barge-in may cut it
        await sim.send_raw({"event": f"{CALLER} vg_abcdef123456", "streamSid": sim.stream_sid})
        consent = session.turns[0]
        async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
            scraped = (await http.get("/metrics")).text
        await sim.wait_for(
            lambda: len(session.turns) > 1 and _mark_indexes(sim, session.turns[1].response_id or "-"),
            timeout=30,
        )
        menu = session.turns[1]

    assert _value(_samples(scraped), "voxgate_active_calls", provider="twilio") >= 1
    assert not sim.clears and not consent.interrupted
    assert consent.heard_text == CONSENT and consent.response_text == CONSENT
    assert all(t.source != "voice" for t in session.turns)  # the caller was not listened to meanwhile
    # The flow's prompt starts only once the announcement has been sent whole (its last mark went out first).
    consent_marks, menu_marks = _mark_indexes(sim, consent.response_id), _mark_indexes(sim, menu.response_id)
    assert consent_marks and consent_marks[-1] < menu_marks[0]
    # The first outbound audio is the announcement, as the caller hears it.
    first = [
        base64.b64decode(r.message["media"]["payload"])
        for r in sim.received[: consent_marks[-1]]
        if r.message.get("event") == "media"
    ]
    pcm16k = resample(mulaw_decode(b"".join(first)), 8000, 16000)
    worker = runtime.stt_worker
    heard = (await asyncio.to_thread(worker.call, runtime.stt.transcribe, pcm16_to_float(pcm16k))).text
    assert wer(CONSENT, heard) <= 0.2, heard
    assert np.frombuffer(pcm16k, dtype="<i2").size / 16000 > 2.0  # a whole sentence, not a clipped start

    # The bad frame's log line: the call's ids, the caller's number and the key-like text masked.
    line = next(entry for entry in json_lines(json_logs) if "unknown_event" in entry["msg"])
    assert line["session_id"] == session.id and line["call_id"] == sim.call_sid
    assert "+1555***4321" in line["msg"] and "vg_***" in line["msg"]
    assert CALLER not in line["msg"] and "abcdef123456" not in line["msg"]
