"""A WebRTC caller for tests, with aiortc: a microphone track fed from PCM in real time, the agent's track
recorded, and the ``events`` data channel speaking the WebSocket protocol's JSON events."""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from typing import Any

import av
import httpx
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

RATE = 48000
FRAME = RATE // 50


class MicTrack(MediaStreamTrack):
    """Plays queued PCM16 48 kHz mono in real time, silence when there is none (a live microphone)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pcm = bytearray()
        self._start: float | None = None
        self._sent = 0

    def say(self, pcm48k: bytes) -> float:
        """Queue speech; returns its duration in seconds."""
        self._pcm += pcm48k
        return len(pcm48k) / 2 / RATE

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        self._start = self._start or now
        due = self._start + self._sent * 0.02
        if due > now:
            await asyncio.sleep(due - now)
        chunk = bytes(self._pcm[: FRAME * 2]).ljust(FRAME * 2, b"\0")
        del self._pcm[: FRAME * 2]
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(chunk)
        frame.sample_rate = RATE
        frame.pts = self._sent * FRAME
        frame.time_base = fractions.Fraction(1, RATE)
        self._sent += 1
        return frame


class WebRtcCaller:
    """``async with WebRtcCaller(http_url) as caller``: connected once the offer is answered."""

    def __init__(self, http_url: str, **offer: Any) -> None:
        self.http_url = http_url
        self.offer_fields = offer
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = MicTrack()
        self.events: list[dict[str, Any]] = []
        self.audio = bytearray()  # the agent's track, PCM16 mono 48 kHz
        self.session_id: str | None = None
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self.channel = self.pc.createDataChannel("events")
        self.channel.on("message", self._on_message)
        self.pc.addTrack(self.mic)
        self.pc.on("track", self._on_track)

    async def __aenter__(self) -> WebRtcCaller:
        answer = await self.post_offer()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return self

    async def post_offer(self) -> dict[str, Any]:
        """Send the offer and return the server's answer, without applying it (a caller may vanish here)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())  # gathers every candidate first
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", **self.offer_fields}
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(f"{self.http_url}/v1/webrtc/offer", json=body)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        self.session_id = answer["session_id"]
        return answer

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()

    def send(self, event: dict[str, Any]) -> None:
        self.send_raw(json.dumps(event))

    def send_raw(self, text: str) -> None:
        """Any text on the events channel (tests of the server's handling of bad input)."""
        self.channel.send(text)

    async def wait_open(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.channel.readyState != "open":
            assert time.monotonic() < deadline, "data channel did not open"
            await asyncio.sleep(0.02)

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]

    async def wait_for(self, type_: str, timeout: float = 30, count: int = 1) -> dict[str, Any]:
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: len(self.of(type_)) >= count), timeout)
        except TimeoutError:
            # Say what did arrive: a timeout alone tells nothing about why the awaited event never came.
            seen = [e for e in self.events if not e["type"].endswith(".delta")][-30:]
            raise TimeoutError(f"no {type_} #{count} within {timeout} s; last events: {seen}") from None
        return self.of(type_)[count - 1]

    def _on_message(self, message: Any) -> None:
        self.events.append(json.loads(message))
        asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.create_task(self._record(track)))

    async def _record(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        try:
            while True:
                frame = await track.recv()
                for mono in resampler.resample(frame):
                    self.audio += bytes(mono.planes[0])[: mono.samples * 2]
        except MediaStreamError:
            return
