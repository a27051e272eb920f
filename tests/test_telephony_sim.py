"""The Twilio Media Streams simulator itself, against tiny local websockets servers (no models, no gateway)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from websockets.asyncio.server import ServerConnection, serve

from tests.twilio_sim import TwilioSim, twilio_signature

Handler = Callable[[ServerConnection, list[tuple[float, dict]]], Awaitable[None]]


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, list[tuple[float, dict]], list[dict]]]:
    """A websockets server running `handler`; yields (url, messages received with times, request headers)."""
    received: list[tuple[float, dict]] = []
    headers: list[dict] = []

    async def run(ws: ServerConnection) -> None:
        headers.append(dict(ws.request.headers) if ws.request else {})
        await handler(ws, received)

    async with serve(run, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/twilio/media", received, headers


async def record_all(ws: ServerConnection, received: list[tuple[float, dict]]) -> None:
    loop = asyncio.get_running_loop()
    async for raw in ws:
        received.append((loop.time(), json.loads(raw)))


async def wait_start(ws: ServerConnection, received: list[tuple[float, dict]]) -> str:
    loop = asyncio.get_running_loop()
    while True:
        msg = json.loads(await ws.recv())
        received.append((loop.time(), msg))
        if msg["event"] == "start":
            return msg["streamSid"]


def media(sid: str, payload: bytes) -> str:
    return json.dumps(
        {"event": "media", "streamSid": sid, "media": {"payload": base64.b64encode(payload).decode()}}
    )


async def test_sends_documented_messages_in_real_time() -> None:
    async with server(record_all) as (url, received, headers):
        async with TwilioSim(url, custom_parameters={"flow": "support"}) as sim:
            await sim.stream(bytes(range(256)) + b"\x01" * 144)  # 400 bytes: 160 + 160 + 80
            await sim.silence(0.2)
            await sim.dtmf("7")
            await sim.stop()
        await asyncio.sleep(0.05)
    msgs = [m for _, m in received]
    assert msgs[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = msgs[1]
    assert start["event"] == "start" and start["sequenceNumber"] == "1"
    assert start["streamSid"] == start["start"]["streamSid"] == sim.stream_sid
    assert start["start"]["callSid"] == sim.call_sid and start["start"]["accountSid"] == sim.account_sid
    assert start["start"]["customParameters"] == {"flow": "support"}
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert start["start"]["tracks"] == ["inbound"]

    media_msgs = [m for m in msgs if m["event"] == "media"]
    assert len(media_msgs) == 3 + 10
    sizes = [len(base64.b64decode(m["media"]["payload"])) for m in media_msgs]
    assert sizes[:3] == [160, 160, 80] and set(sizes[3:]) == {160}
    assert [m["media"]["chunk"] for m in media_msgs] == [str(i) for i in range(1, 14)]
    assert [m["media"]["timestamp"] for m in media_msgs[:5]] == ["0", "20", "40", "50", "70"]
    assert all(m["media"]["track"] == "inbound" and m["streamSid"] == sim.stream_sid for m in media_msgs)
    assert (
        b"".join(base64.b64decode(m["media"]["payload"]) for m in media_msgs[:3])
        == bytes(range(256)) + b"\x01" * 144
    )

    # sequenceNumber counts every message after connected, from 1
    assert [m["sequenceNumber"] for m in msgs[1:]] == [str(i) for i in range(1, len(msgs))]
    assert msgs[-2] == {
        "event": "dtmf",
        "sequenceNumber": str(len(msgs) - 2),
        "streamSid": sim.stream_sid,
        "dtmf": {"track": "inbound_track", "digit": "7"},
    }
    assert msgs[-1]["event"] == "stop"
    assert msgs[-1]["stop"] == {"accountSid": sim.account_sid, "callSid": sim.call_sid}

    # real time: 250 ms of audio took about 250 ms to arrive (chunks leave once captured)
    times = [t for t, m in received if m["event"] == "media"]
    assert times[-1] - times[0] >= 0.2
    assert sim.stats.media_sent == 13 and abs(sim.stats.media_ms_sent - 250) < 1e-6
    assert "X-Twilio-Signature" not in headers[0] and "x-twilio-signature" not in headers[0]


async def test_idle_time_and_skip_become_timestamp_jumps() -> None:
    async with server(record_all) as (url, received, _):
        async with TwilioSim(url) as sim:
            await sim.stream(b"\xff" * 320)
            await sim.skip(0.1)
            await sim.stream(b"\xff" * 160)
            await asyncio.sleep(0.3)  # idle: Twilio's clock runs on
            await sim.stream(b"\xff" * 160)
        await asyncio.sleep(0.05)
    stamps = [int(m["media"]["timestamp"]) for _, m in received if m["event"] == "media"]
    assert stamps[:3] == [0, 20, 140]
    assert stamps[3] >= 160 + 250
    assert sim.stats.skipped_ms >= 100 + 250


async def test_signature_header() -> None:
    async with server(record_all) as (url, _, headers):
        signed = "wss://voice.example.com/twilio/media"
        async with TwilioSim(url, auth_token="tok", signed_url=signed):
            pass
    assert headers[0]["x-twilio-signature"] == twilio_signature("tok", signed)
    # the documented algorithm: HMAC-SHA1 over the URL then sorted name+value pairs, base64
    from twilio.request_validator import RequestValidator

    assert twilio_signature("tok", signed) == RequestValidator("tok").compute_signature(signed, {})
    params = {"b": "2", "a": "1"}
    assert twilio_signature("tok", signed, params) == RequestValidator("tok").compute_signature(
        signed, params
    )


async def test_plays_in_real_time_and_echoes_marks_after_playout() -> None:
    sent_at: dict[str, float] = {}

    async def handler(ws: ServerConnection, received: list[tuple[float, dict]]) -> None:
        loop = asyncio.get_running_loop()
        sid = await wait_start(ws, received)
        for i in range(10):  # 200 ms of audio at once
            await ws.send(media(sid, bytes([i]) * 160))
        await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "r1:200"}}))
        sent_at["r1:200"] = loop.time()
        async for raw in ws:
            received.append((loop.time(), json.loads(raw)))

    async with server(handler) as (url, received, _):
        async with TwilioSim(url) as sim:
            await sim.wait_for(lambda: sim.marks_echoed, timeout=5)
            await asyncio.sleep(0.05)
    echoes = [(t, m) for t, m in received if m["event"] == "mark"]
    assert len(echoes) == 1
    t_echo, echo = echoes[0]
    assert echo["mark"] == {"name": "r1:200"} and echo["streamSid"] == sim.stream_sid
    assert int(echo["sequenceNumber"]) == 2  # start was 1
    assert 0.17 <= t_echo - sent_at["r1:200"] <= 1.5  # after the 200 ms had played
    assert sim.received_audio() == b"".join(bytes([i]) * 160 for i in range(10))
    assert sim.played_audio() == sim.received_audio()
    assert 180 <= sim.max_lead_ms <= 260
    assert sim.errors == [] and sim.clears == []


async def test_mark_with_nothing_queued_is_echoed_at_once() -> None:
    async def handler(ws: ServerConnection, received: list[tuple[float, dict]]) -> None:
        sid = await wait_start(ws, received)
        await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "empty"}}))
        await record_all(ws, received)

    async with server(handler) as (url, _, _):
        async with TwilioSim(url) as sim:
            await sim.wait_for(lambda: sim.marks_echoed, timeout=2)
    assert sim.marks_echoed == ["empty"]
    assert sim.mark_echo_times[0][1] < 1.0


async def test_clear_drops_unplayed_audio_and_echoes_pending_marks() -> None:
    times: dict[str, float] = {}

    async def handler(ws: ServerConnection, received: list[tuple[float, dict]]) -> None:
        loop = asyncio.get_running_loop()
        sid = await wait_start(ws, received)
        for _ in range(50):  # 1 s
            await ws.send(media(sid, b"\x10" * 160))
        await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "a"}}))
        await ws.send(media(sid, b"\x20" * 160))
        await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "b"}}))
        await asyncio.sleep(0.15)
        await ws.send(json.dumps({"event": "clear", "streamSid": sid}))
        times["clear"] = loop.time()
        await ws.send(media(sid, b"\x30" * 160))  # audio after the clear plays normally
        await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "c"}}))
        async for raw in ws:
            received.append((loop.time(), json.loads(raw)))

    async with server(handler) as (url, received, _):
        async with TwilioSim(url) as sim:
            await sim.wait_for(lambda: len(sim.marks_echoed) == 3, timeout=5)
            await asyncio.sleep(0.05)
    assert sim.marks_echoed == ["a", "b", "c"]
    echo_times = {m["mark"]["name"]: t for t, m in received if m["event"] == "mark"}
    assert echo_times["a"] - times["clear"] < 0.1  # at once, not after the 1 s had played
    assert len(sim.clears) == 1
    played = sim.played_audio()
    heard = played.count(b"\x10")
    assert 400 <= heard <= 8 * 400  # about 150 ms of the first second was heard (loose: busy CI machines)
    assert b"\x20" not in played
    assert played.endswith(b"\x30" * 160)
    assert len(sim.received_audio()) == 52 * 160
    assert sim.errors == []


async def test_pacing_records_lead_and_starvation() -> None:
    async def handler(ws: ServerConnection, received: list[tuple[float, dict]]) -> None:
        sid = await wait_start(ws, received)
        for _ in range(5):
            await ws.send(media(sid, b"\x05" * 160))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # the player runs dry
        await ws.send(media(sid, b"\x06" * 160))
        await record_all(ws, received)

    async with server(handler) as (url, _, _):
        async with TwilioSim(url) as sim:
            await sim.wait_for_audio(120, timeout=5)
            await sim.wait_until_played(timeout=5)
    assert sim.max_lead_ms < 120  # a server pacing frame by frame keeps little queued
    assert any(gap_ms >= 100 for _, gap_ms in sim.playout_gaps)


async def test_records_server_protocol_errors() -> None:
    async def handler(ws: ServerConnection, received: list[tuple[float, dict]]) -> None:
        sid = await wait_start(ws, received)
        await ws.send(b"\x00\x01")
        await ws.send("not json")
        await ws.send(media("MZother", b"\xff" * 160))
        await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": "!!"}}))
        await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {}}))
        await ws.send(json.dumps({"event": "play", "streamSid": sid}))
        await record_all(ws, received)

    async with server(handler) as (url, _, _):
        async with TwilioSim(url) as sim:
            await sim.wait_for(lambda: len(sim.errors) >= 6, timeout=3)
    text = "\n".join(sim.errors)
    for fragment in ("binary frame", "not JSON", "MZother", "base64", "mark.name", "unknown event"):
        assert fragment in text


async def test_server_close_is_recorded() -> None:
    async def handler(ws: ServerConnection, received: list[tuple[float, dict]]) -> None:
        await wait_start(ws, received)
        await ws.close(1008, "unauthorized")

    async with server(handler) as (url, _, _):
        async with TwilioSim(url) as sim:
            await sim.wait_closed(timeout=3)
            assert (sim.close_code, sim.close_reason) == (1008, "unauthorized")
            await sim.stream(b"\xff" * 320)  # sending after the close is a no-op, not an error
            assert sim.stats.media_sent == 0
