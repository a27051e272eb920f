"""A Twilio Media Streams simulator: Twilio's side of a bidirectional `<Connect><Stream>` WebSocket.

Written from Twilio's documentation (https://www.twilio.com/docs/voice/media-streams/websocket-messages), on
purpose without importing anything from telephony/ or gateway/, so that tests check the gateway against the
documented protocol rather than against itself.

What it does, as Twilio does:

- opens the WebSocket (optionally with an `X-Twilio-Signature` computed over the wss URL, no parameters),
  sends `connected`, then `start` (streamSid, callSid, accountSid, tracks, customParameters, mediaFormat);
- streams the caller's mu-law 8 kHz audio as `media` messages in real time: 160-byte (20 ms) payloads,
  `chunk` counting from 1, `timestamp` in ms since the stream started, `sequenceNumber` counting every
  message from 1 (`start`); all three as strings, as Twilio sends them. Each chunk leaves when its 20 ms
  have been "captured". Time the simulator sends nothing for (`skip`, or idle time between `stream` calls)
  shows up as a timestamp jump, as when Twilio skips silent audio;
- sends `dtmf` and `stop` on request;
- plays the agent audio it receives in real time (a playout clock: 20 ms per 160 bytes, in arrival order),
  echoes each `mark` only once all media received before it has played, and on `clear` drops the unplayed
  media and echoes the pending marks at once (clear "empties all buffered audio and causes any mark
  messages to be sent back to your WebSocket server");
- records everything it receives with arrival times, how far ahead of playout each media message arrived
  (`max_lead_ms`), playout starvation (`playout_gaps`), and protocol errors in the server's messages.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

RATE = 8000
FRAME_MS = 20
FRAME_BYTES = RATE * FRAME_MS // 1000  # 160
SILENCE = b"\xff"  # mu-law silence
IDLE_SLACK_MS = 60  # idle time beyond this between stream() calls becomes a timestamp jump


def twilio_signature(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """X-Twilio-Signature as Twilio documents it: base64(HMAC-SHA1(token, url + sorted name+value pairs))."""
    data = url + "".join(k + v for k, v in sorted((params or {}).items()))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass
class Received:
    """One message from the server, with its arrival time (seconds since the simulator's start)."""

    t: float
    message: dict[str, Any]
    lead_ms: float | None = None  # media only: audio queued for playout once this chunk was added


@dataclass
class _Audio:
    payload: bytes
    start: float  # loop time its playout starts
    end: float


@dataclass
class _Mark:
    name: str
    due: float  # loop time all earlier audio has played


@dataclass
class SimStats:
    """What the simulator sent."""

    media_sent: int = 0
    media_ms_sent: float = 0.0
    skipped_ms: float = 0.0
    late_sends: int = 0  # chunks sent more than one frame after their capture time (the loop was busy)
    sequence: int = 0


@dataclass
class TwilioSim:
    """Twilio's end of one Media Stream. Use as `async with TwilioSim(url, ...) as sim:`."""

    url: str
    custom_parameters: dict[str, str] = field(default_factory=dict)
    stream_sid: str = field(default_factory=lambda: _sid("MZ"))
    call_sid: str = field(default_factory=lambda: _sid("CA"))
    account_sid: str = field(default_factory=lambda: _sid("AC"))
    auth_token: str | None = None  # when set, the upgrade carries X-Twilio-Signature over signed_url
    signed_url: str | None = None  # the wss URL as written in the TwiML; defaults to url
    headers: dict[str, str] = field(default_factory=dict)
    idle_as_gap: bool = True  # idle time between stream() calls becomes a timestamp jump, as in Twilio
    send_start: bool = True  # False: send only `connected` (to test a server waiting for start)

    def __post_init__(self) -> None:
        self.ws: ClientConnection | None = None
        self.received: list[Received] = []
        self.marks_echoed: list[str] = []
        self.mark_echo_times: list[tuple[str, float]] = []
        self.clears: list[float] = []
        self.errors: list[str] = []
        self.playout_gaps: list[tuple[float, float]] = []  # (time, ms the player starved before a chunk)
        self.stats = SimStats()
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.closed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._media_ms = 0.0  # stream time of the next chunk to send
        self._chunk = 0
        self._queue: deque[_Audio | _Mark] = deque()
        self._play_end = self._t0  # loop time queued audio finishes playing
        self._played_any = False
        self._played = bytearray()
        self._wake = asyncio.Event()
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> TwilioSim:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the WebSocket, send `connected` and `start`. Raises if the upgrade is refused."""
        headers = dict(self.headers)
        if self.auth_token is not None:
            headers["X-Twilio-Signature"] = twilio_signature(self.auth_token, self.signed_url or self.url)
        self.ws = await connect(self.url, additional_headers=headers, open_timeout=10, max_size=2**20)
        self._tasks = [
            asyncio.create_task(self._receive_loop(), name="twilio-sim-recv"),
            asyncio.create_task(self._playout_loop(), name="twilio-sim-playout"),
            asyncio.create_task(self._write_loop(), name="twilio-sim-write"),
        ]
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        self._t0 = self._play_end = self._loop.time()
        if self.send_start:
            await self._send_seq(
                {
                    "event": "start",
                    "start": {
                        "accountSid": self.account_sid,
                        "streamSid": self.stream_sid,
                        "callSid": self.call_sid,
                        "tracks": ["inbound"],
                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                        "customParameters": dict(self.custom_parameters),
                    },
                    "streamSid": self.stream_sid,
                }
            )

    async def close(self) -> None:
        """Close the socket (without `stop`: like a dropped connection) and stop the background tasks."""
        if self.ws is not None:
            await self.ws.close()
            try:
                await asyncio.wait_for(self.closed.wait(), 5)
            except TimeoutError:
                pass
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # -- caller side: what Twilio sends ---------------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the stream started."""
        return self._loop.time() - self._t0

    async def stream(self, mulaw: bytes) -> None:
        """Send mu-law 8 kHz audio as 20 ms media messages, in real time (returns when all is sent)."""
        if self.idle_as_gap:
            behind_ms = self.now() * 1000 - self._media_ms
            if behind_ms > IDLE_SLACK_MS:  # nothing was sent meanwhile: Twilio's clock ran on
                self.stats.skipped_ms += behind_ms
                self._media_ms += behind_ms
        for i in range(0, len(mulaw), FRAME_BYTES):
            piece = mulaw[i : i + FRAME_BYTES]
            piece_ms = len(piece) * 1000 / RATE
            captured_at = self._t0 + (self._media_ms + piece_ms) / 1000  # a chunk leaves once captured
            delay = captured_at - self._loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > FRAME_MS / 1000:
                self.stats.late_sends += 1
            self._chunk += 1
            sent = await self._send_seq(
                {
                    "event": "media",
                    "media": {
                        "track": "inbound",
                        "chunk": str(self._chunk),
                        "timestamp": str(int(self._media_ms)),
                        "payload": base64.b64encode(piece).decode(),
                    },
                    "streamSid": self.stream_sid,
                }
            )
            if not sent:
                return
            self._media_ms += piece_ms
            self.stats.media_sent += 1
            self.stats.media_ms_sent += piece_ms

    async def silence(self, seconds: float) -> None:
        """Stream `seconds` of mu-law silence (a live line keeps sending while the caller is quiet)."""
        await self.stream(SILENCE * int(seconds * RATE))

    async def skip(self, seconds: float) -> None:
        """Send nothing for `seconds` while the stream clock runs on: the next chunk's timestamp jumps."""
        self._media_ms += seconds * 1000
        self.stats.skipped_ms += seconds * 1000
        delay = self._t0 + self._media_ms / 1000 - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def dtmf(self, digit: str) -> None:
        """The caller pressed a key."""
        await self._send_seq(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    async def stop(self, close: bool = True) -> None:
        """The call ended: send `stop`, then close the socket (Twilio's stream ends with the call)."""
        await self._send_seq(
            {
                "event": "stop",
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
                "streamSid": self.stream_sid,
            }
        )
        if close:
            await self.close()

    async def send_raw(self, message: str | dict[str, Any]) -> bool:
        """Send an arbitrary frame (tests of the server's error handling)."""
        return await self._send(message)

    # -- agent side: what the server sent -------------------------------------------------------------------

    def received_audio(self) -> bytes:
        """All agent audio received, in arrival order (including what a clear dropped before it played)."""
        return b"".join(base64.b64decode(r.message["media"]["payload"]) for r in self.media_messages())

    def played_audio(self) -> bytes:
        """The agent audio the caller heard: received audio minus what clears dropped."""
        return bytes(self._played)

    def media_messages(self) -> list[Received]:
        return [r for r in self.received if r.message.get("event") == "media" and r.lead_ms is not None]

    def events(self, event: str) -> list[dict[str, Any]]:
        """The messages of one kind the server sent ("media", "mark", "clear")."""
        return [r.message for r in self.received if r.message.get("event") == event]

    @property
    def max_lead_ms(self) -> float:
        """The most audio queued for playout right after a media message arrived (that message included).

        A server pacing to `lead_ms` keeps this near lead_ms; a server that dumps a whole answer at once
        shows its full length.
        """
        return max((r.lead_ms or 0.0 for r in self.media_messages()), default=0.0)

    @property
    def queued_ms(self) -> float:
        """Agent audio received and not yet played."""
        return max(0.0, self._play_end - self._loop.time()) * 1000

    async def wait_for(self, predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
        """Poll `predicate()` until true; TimeoutError after `timeout` seconds."""
        deadline = self._loop.time() + timeout
        while not predicate():
            if self._loop.time() > deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            await asyncio.sleep(interval)

    async def wait_for_audio(self, ms: float, timeout: float = 10.0) -> None:
        """Until at least `ms` of agent audio has arrived."""
        await self.wait_for(lambda: len(self.received_audio()) * 1000 / RATE >= ms, timeout)

    async def wait_until_played(self, timeout: float = 10.0) -> None:
        """Until all received audio has played and every mark was echoed."""
        await self.wait_for(lambda: not self._queue, timeout)

    async def wait_closed(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout)

    # -- internals ------------------------------------------------------------------------------------------

    async def _send_seq(self, message: dict[str, Any]) -> bool:
        self.stats.sequence += 1
        return await self._send(
            {"event": message["event"], "sequenceNumber": str(self.stats.sequence), **message}
        )

    async def _send(self, message: str | dict[str, Any]) -> bool:
        if self.ws is None or self.closed.is_set():
            return False
        try:
            await self.ws.send(message if isinstance(message, str) else json.dumps(message))
            return True
        except ConnectionClosed:
            return False

    async def _receive_loop(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                self._on_message(raw)
                self._wake.set()  # the playout loop re-plans: new audio, a mark, or a clear
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""
            self.closed.set()
            self._wake.set()

    def _on_message(self, raw: str | bytes) -> None:
        t = self.now()
        if isinstance(raw, bytes):
            self.errors.append(f"{t:.3f}: binary frame ({len(raw)} bytes); Twilio takes JSON text frames")
            return
        try:
            msg = json.loads(raw)
        except ValueError:
            self.errors.append(f"{t:.3f}: not JSON: {raw[:60]!r}")
            return
        if not isinstance(msg, dict):
            self.errors.append(f"{t:.3f}: not a JSON object")
            return
        event = msg.get("event")
        if msg.get("streamSid") != self.stream_sid:
            self.errors.append(f"{t:.3f}: {event} for streamSid {msg.get('streamSid')!r}")
        if event == "media":
            self._on_media(t, msg)
        elif event == "mark":
            name = (msg.get("mark") or {}).get("name") if isinstance(msg.get("mark"), dict) else None
            self.received.append(Received(t, msg))
            if not isinstance(name, str):
                self.errors.append(f"{t:.3f}: mark without a string mark.name")
                return
            self._queue.append(_Mark(name, max(self._loop.time(), self._play_end)))
        elif event == "clear":
            self.received.append(Received(t, msg))
            self.clears.append(t)
            self._clear()
        else:
            self.received.append(Received(t, msg))
            self.errors.append(f"{t:.3f}: unknown event {event!r}")

    def _on_media(self, t: float, msg: dict[str, Any]) -> None:
        media = msg.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        try:
            audio = base64.b64decode(payload, validate=True) if isinstance(payload, str) else None
        except (binascii.Error, ValueError):
            audio = None
        if audio is None:
            self.received.append(Received(t, msg))
            self.errors.append(f"{t:.3f}: media without a base64 media.payload")
            return
        now = self._loop.time()
        if self._play_end < now and self._played_any:
            self.playout_gaps.append((t, (now - self._play_end) * 1000))
        start = max(now, self._play_end)
        end = start + len(audio) / RATE
        self._play_end = end
        self._played_any = True
        self._queue.append(_Audio(audio, start, end))
        self.received.append(Received(t, msg, lead_ms=(end - now) * 1000))

    def _clear(self) -> None:
        now = self._loop.time()
        marks: list[str] = []
        for item in self._queue:
            if isinstance(item, _Mark):
                marks.append(item.name)
            elif item.start < now:  # the chunk playing when the clear came: its first part was heard
                self._played.extend(item.payload[: int((now - item.start) * RATE)])
        self._queue.clear()
        self._play_end = now
        self._played_any = False  # the next audio after a clear is a new start, not a starvation
        for name in marks:
            self._echo(name)

    def _echo(self, name: str) -> None:
        self.marks_echoed.append(name)
        self.mark_echo_times.append((name, self.now()))
        # one writer task keeps the echoes in order; it numbers them when they leave
        self._outbox.put_nowait({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def _write_loop(self) -> None:
        while True:
            await self._send_seq(await self._outbox.get())

    async def _playout_loop(self) -> None:
        while not self.closed.is_set():
            self._wake.clear()
            now = self._loop.time()
            while self._queue:
                head = self._queue[0]
                due = head.end if isinstance(head, _Audio) else head.due
                if due > now:
                    break
                self._queue.popleft()
                if isinstance(head, _Audio):
                    self._played.extend(head.payload)
                else:
                    self._echo(head.name)
            timeout = None
            if self._queue:
                head = self._queue[0]
                timeout = max(0.0, (head.end if isinstance(head, _Audio) else head.due) - now)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
