"""The Realtime API over WebRTC: an aiortc peer doing OpenAI's SDP flow (``client.realtime.calls.create`` with
the official SDK), events on the ``oai-events`` data channel, the caller's speech and the agent's voice on the
media tracks, checked for what they say."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import av
import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from openai import AsyncOpenAI

from gateway.webrtc import restrict_ice_host_addresses
from pipeline.audio import pcm16_to_float, resample
from pipeline.normalize import normalize_for_speech
from tests.speech import energy_dbfs, piper_pcm, wer, words
from tests.test_realtime_client import at_level
from tests.webrtc_client import RATE, MicTrack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def loopback_ice() -> None:
    restrict_ice_host_addresses(["127.0.0.1"])  # server and caller share this process: loopback only


class OpenAIStylePeer:
    """What a page written for OpenAI's WebRTC flow does: a mic track, the ``oai-events`` channel, the
    offer posted to ``/v1/realtime/calls`` and the answer applied."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = MicTrack()
        self.pc.addTrack(self.mic)
        self.channel = self.pc.createDataChannel("oai-events")
        self.events: list[dict[str, Any]] = []
        self.audio = bytearray()  # the agent's track, 48 kHz PCM16
        self._arrived = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.channel.on("message", self._on_message)
        self.pc.on("track", lambda track: self._tasks.append(asyncio.create_task(self._record(track))))

    def _on_message(self, message: str) -> None:
        self.events.append(json.loads(message))
        self._arrived.set()

    async def _record(self, track: Any) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        try:
            while True:
                for mono in resampler.resample(await track.recv()):
                    self.audio += bytes(mono.planes[0])[: mono.samples * 2]
        except MediaStreamError:
            return

    async def connect(self, client: AsyncOpenAI, session: dict[str, Any]) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await client.realtime.calls.create(sdp=self.pc.localDescription.sdp, session=session)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer.text, type="answer"))

    def send(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]

    async def wait_for(self, type_: str, timeout: float = 60, count: int = 1) -> dict[str, Any]:
        async def seen() -> dict[str, Any]:
            while len(self.of(type_)) < count:
                self._arrived.clear()
                await self._arrived.wait()
            return self.of(type_)[count - 1]

        try:
            return await asyncio.wait_for(seen(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {type_}; got {[e['type'] for e in self.events][-20:]}") from None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()


async def _transcribe(runtime, pcm16k: bytes) -> str:  # type: ignore[no-untyped-def]
    worker = runtime.stt_worker
    return (await asyncio.to_thread(worker.call, runtime.stt.transcribe, pcm16_to_float(pcm16k))).text


async def test_openai_webrtc_flow_speech_both_ways(server, runtime) -> None:  # type: ignore[no-untyped-def]
    peer = OpenAIStylePeer()
    try:
        client = AsyncOpenAI(base_url=f"{server.http}/v1", api_key="unused")
        await peer.connect(client, {"type": "realtime", "instructions": server.state.settings.instructions})
        created = await peer.wait_for("session.created", timeout=15)
        session_id = created["session"]["id"]
        assert server.state.sessions.live[session_id].config.transport == "realtime_webrtc"
        question = "Why is the ocean salty?"
        peer.mic.say(at_level(piper_pcm(question, RATE)) + bytes(RATE * 2))
        transcribed = await peer.wait_for("conversation.item.input_audio_transcription.completed")
        assert wer(question, transcribed["transcript"]) <= 0.25, transcribed["transcript"]
        done = await peer.wait_for("response.done", timeout=90)
        stopped = await peer.wait_for("output_audio_buffer.stopped", timeout=5)
        await asyncio.sleep(0.6)  # the last frames are still on the way
    finally:
        await peer.close()
    response = done["response"]
    assert response["status"] == "completed" and stopped["response_id"] == response["id"]
    assert peer.of("output_audio_buffer.started")[0]["response_id"] == response["id"]
    assert not peer.of("response.output_audio.delta")  # the audio went on the track, not the channel
    transcript = response["output"][0]["content"][0]["transcript"]
    assert len(words(transcript)) >= 3
    audio16k = resample(bytes(peer.audio), RATE, 16000)
    assert energy_dbfs(audio16k) > -50
    heard = await _transcribe(runtime, audio16k)
    assert wer(normalize_for_speech(transcript), normalize_for_speech(heard)) <= 0.35, (transcript, heard)


async def test_webrtc_offers_are_checked(server) -> None:  # type: ignore[no-untyped-def]
    url = f"{server.http}/v1/realtime/calls"
    async with httpx.AsyncClient(timeout=30) as http:
        bad = await http.post(url, content="hello", headers={"content-type": "application/sdp"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "sdp"
        wrong_type = await http.post(url, json={"sdp": "v=0"})
        assert wrong_type.status_code == 400 and wrong_type.json()["error"]["code"] == "invalid_value"
        server.state.auth.api_key = "sk-voxgate-test"
        try:
            refused = await http.post(url, content="v=0\r\n", headers={"content-type": "application/sdp"})
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        finally:
            server.state.auth.api_key = None
