"""Calls per core for Twilio Media Streams: many concurrent simulated calls against one server process.

The server (``serve``, started by this script as a subprocess pinned with ``taskset``) is the real app
(``gateway.app.create_app``) with the real Silero VAD (built by ``engines.registry``, batched by the normal
``Runtime``/``VadBatcher``) and cheap stand-ins for STT, LLM and TTS (``bench/standins.py``), so the figure
measures the gateway: WebSocket and JSON handling, mu-law decoding and resampling, VAD on every call, turn
taking, the response chain, pacing, encoding and marks.

The load is a lean Twilio simulator in this process (pinned to another core): one asyncio loop, raw WebSocket
framing, every call sending a 20 ms ``media`` message on a shared clock (calls spread over 4 phases of 5 ms),
playing the agent audio it receives in real time and echoing marks once played. Each caller speaks a short
recorded utterance (FLEURS, 8 kHz mu-law) and then sends silence; the agent answers with ~35 s of audio, and
the caller speaks again whenever the agent has been silent for a while.

Per step of N calls, over the measurement window:

- jitter: per call, within each stretch of continuous playout, frame k's arrival minus the ideal 20 ms
  schedule (arrival - k x 20 ms, relative to the earliest frame of the stretch); the frames of the initial
  lead burst (the pacer releases ``lead_ms`` at once) are left out. p50/p99/max over all calls' frames.
- late frames: playout gaps inside a response (the simulated Twilio buffer ran empty and the next frame
  belongs to the same response, as told by the server's marks). Gaps between responses are not late.
- server CPU: utime+stime of the server process from /proc over the window; per call.
- VAD: Silero chunks per session over the window, read from the server (``GET /bench/stats``, a route only
  this launcher adds); every call must have ~31 chunks/s (32 ms chunks).

A step passes with every call connected, VAD running and the agent speaking on every call, jitter p99 < 20 ms
and no late frames. Calls per core = the largest passing N (the server has one core).

    .venv/bin/python bench/telephony.py --steps 50,100,200 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FRAME_S = 0.020
FRAME_BYTES = 160
PHASES = 4  # calls send on one of 4 sub-ticks of 5 ms, as real calls are not phase-aligned
SPEECH_CLIP = ROOT.parent / "shared" / "audio" / "fleurs-en-000.ogg"
JITTER_LIMIT_MS = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ---------------------------------------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------------------------------------


class CountingVAD:
    """The real VAD engine, counting the chunks it scored per stream (per session) on the state object."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.sample_rate = engine.sample_rate
        self.sample_rates = engine.sample_rates
        self.capabilities = engine.capabilities

    def new_state(self, sample_rate: int = 16000) -> Any:
        state = self.engine.new_state(sample_rate)
        state.bench_chunks = 0
        return state

    def speech_probs(self, states: list[Any], chunks: np.ndarray) -> np.ndarray:
        probs = self.engine.speech_probs(states, chunks)
        for state in states:
            state.bench_chunks += 1
        return probs


def serve(args: argparse.Namespace) -> int:
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from bench.standins import FixedSTT, ScriptLLM, ToneTTS
    from engines.base import Needs
    from engines.registry import build
    from gateway.app import create_app
    from gateway.engines import engine_choices
    from gateway.logs import configure_logging
    from gateway.settings import Settings
    from pipeline.runtime import Runtime

    settings = Settings(
        data_dir=Path(args.data_dir),
        twilio_insecure=True,
        max_sessions=args.max_sessions,
        log_level="warning",
        lead_ms=args.lead_ms,
    )
    configure_logging(settings.log_level)
    vad = CountingVAD(build(engine_choices(settings)["vad"]))  # Silero, exactly as the service builds it
    llm = ScriptLLM(args.sentences)
    # The scripted LLM stands in for a remote server: four answers at once, nothing taken from this CPU.
    llm.capabilities = replace(llm.capabilities, needs=Needs(remote=True, concurrency=4, cpu_heavy=False))
    runtime = Runtime(
        vad=vad,
        stt=FixedSTT(),
        llm=llm,
        tts=ToneTTS(clause_s=args.clause_s),
        queue_size=settings.engine_queue_size,
    )
    app = create_app(settings, runtime)

    async def stats(request: Request) -> JSONResponse:
        state = request.app.state.voxgate
        sessions = {}
        for session in list(state.sessions.live.values()):
            vad_state = session.listener.vad_state
            sessions[session.caller or session.id] = {
                "id": session.id,
                "vad_chunks": getattr(vad_state, "bench_chunks", None),
                "turns": len(session.turns),
            }
        t = os.times()
        return JSONResponse(
            {
                "pid": os.getpid(),
                "cpu_s": t.user + t.system,
                "vad_batches": runtime.vad_batcher.batches,
                "vad_chunks": runtime.vad_batcher.chunks,
                "tts_calls": runtime.tts.calls,
                "llm_calls": runtime.llm.calls,
                "stt_calls": runtime.stt.calls,
                "loop_lag_max_ms": round(state.lag.max_lag_s * 1000, 1),
                "sessions": sessions,
            }
        )

    app.router.routes.append(Route("/bench/stats", stats))
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        ws_max_size=settings.max_message_bytes,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        timeout_graceful_shutdown=3,
        backlog=4096,
    )
    return 0


# ---------------------------------------------------------------------------------------------------------
# the simulated Twilio side
# ---------------------------------------------------------------------------------------------------------


def _ws_frame(text: str) -> bytes:
    """A masked client text frame; the all-zero mask leaves the payload as is (RFC 6455 allows any key)."""
    data = text.encode()
    n = len(data)
    if n < 126:
        header = bytes([0x81, 0x80 | n])
    elif n < 65536:
        header = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    return header + b"\x00\x00\x00\x00" + data


def _caller_speech() -> list[str]:
    """A short utterance as base64 mu-law 20 ms payloads."""
    from pipeline.audio import float_to_pcm16, load_audio, mulaw_encode

    audio = load_audio(str(SPEECH_CLIP), 8000)
    energy = np.convolve(audio**2, np.ones(800) / 800, mode="same")
    start = int(np.argmax(energy > 1e-3))  # the first loud part
    ulaw = mulaw_encode(float_to_pcm16(audio[start : start + 8000 * 2]))  # 2 s
    ulaw += b"\xff" * (-len(ulaw) % FRAME_BYTES)
    return [base64.b64encode(ulaw[i : i + FRAME_BYTES]).decode() for i in range(0, len(ulaw), FRAME_BYTES)]


SILENCE_B64 = base64.b64encode(b"\xff" * FRAME_BYTES).decode()


@dataclass
class Call:
    index: int
    sid: str
    phase: int
    transport: asyncio.Transport | None = None
    open: bool = False
    closed: bool = False
    seq: int = 0
    chunk: int = 0
    t_stream0: float = 0.0  # loop time the media clock started
    speech_at: float = 0.0  # loop time the next utterance starts
    speech_pos: int = -1  # index in the utterance, -1 when silent
    utterances: int = 0
    # playout model
    play_end: float = 0.0
    played_any: bool = False
    last_media: float = 0.0
    marks: deque[tuple[float, str]] = field(default_factory=deque)
    # records (all frames; the window is cut afterwards)
    arrivals: list[float] = field(default_factory=list)
    gap_before: list[bool] = field(default_factory=list)
    frame_resp: list[str | None] = field(default_factory=list)
    unmarked_from: int = 0
    clears: int = 0
    errors: list[str] = field(default_factory=list)


class CallProtocol(asyncio.Protocol):
    """Raw WebSocket client: handshake, then unmasked server frames parsed in place."""

    def __init__(self, call: Call, sim: Sim, port: int) -> None:
        self.call = call
        self.sim = sim
        self.port = port
        self.buf = bytearray()
        self.handshaken = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.call.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET /twilio/media HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.call.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed during handshake"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.handshaken:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self.ready.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode()))
                return
            self.handshaken = True
            self.ready.set_result(None)
        buf = self.buf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = int.from_bytes(buf[2:10], "big")
                pos = 10
            if len(buf) < pos + n:
                return
            payload = bytes(buf[pos : pos + n])
            del buf[: pos + n]
            opcode = b0 & 0x0F
            if opcode == 1:
                self.sim.on_message(self.call, payload)
            elif opcode == 9:  # ping -> pong
                self.call.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload)
            elif opcode == 8:
                self.call.closed = True


class Sim:
    def __init__(self, port: int, n: int, speech: list[str], lead_ms: int) -> None:
        self.port = port
        self.n = n
        self.speech = speech
        self.lead_s = lead_ms / 1000
        self.loop = asyncio.get_running_loop()
        self.calls = [Call(i, f"MZbench{i:06d}", i % PHASES) for i in range(n)]
        self.late_ticks = 0
        self.max_tick_late_ms = 0.0
        self.stop = False
        self.measuring = False  # client lateness is counted inside the measurement window only

    # -- receive --------------------------------------------------------------------------------------------

    def on_message(self, call: Call, payload: bytes) -> None:
        now = self.loop.time()
        if payload.startswith(b'{"event": "media"'):
            msg = json.loads(payload)
            b64 = msg["media"]["payload"]
            nbytes = len(b64) * 3 // 4 - b64.count("=", -2)
            gap = self.played_any_gap(call, now)
            start = max(now, call.play_end)
            call.play_end = start + nbytes / 8000
            call.played_any = True
            call.last_media = now
            call.arrivals.append(now)
            call.gap_before.append(gap)
            call.frame_resp.append(None)
            return
        msg = json.loads(payload)
        event = msg.get("event")
        if event == "mark":
            name = msg["mark"]["name"]
            rid = name.rsplit(":", 1)[0]
            for i in range(call.unmarked_from, len(call.frame_resp)):
                call.frame_resp[i] = rid
            call.unmarked_from = len(call.frame_resp)
            due = max(now, call.play_end)
            call.marks.append((due, name))
            self.loop.call_at(due, self.echo_due, call)  # echoed once the audio before it has played
        elif event == "clear":
            call.clears += 1
            call.play_end = now
            call.played_any = False
            pending = [name for _, name in call.marks]
            call.marks.clear()
            for name in pending:
                self.send(call, self.mark_echo(call, name))
        else:
            call.errors.append(f"unexpected event {event!r}")

    def echo_due(self, call: Call) -> None:
        now = self.loop.time()
        while call.marks and call.marks[0][0] <= now:
            self.send(call, self.mark_echo(call, call.marks.popleft()[1]))

    @staticmethod
    def played_any_gap(call: Call, now: float) -> bool:
        return call.played_any and call.play_end < now

    # -- send -----------------------------------------------------------------------------------------------

    def send(self, call: Call, text: str) -> None:
        if text and call.transport is not None and not call.closed:
            call.transport.write(_ws_frame(text))

    def next_seq(self, call: Call) -> int:
        call.seq += 1
        return call.seq

    def mark_echo(self, call: Call, name: str) -> str:
        return json.dumps(
            {
                "event": "mark",
                "sequenceNumber": str(self.next_seq(call)),
                "streamSid": call.sid,
                "mark": {"name": name},
            }
        )

    async def connect(self, call: Call) -> None:
        proto = CallProtocol(call, self, self.port)
        await self.loop.create_connection(lambda: proto, "127.0.0.1", self.port)
        await asyncio.wait_for(proto.ready, 30)
        call.open = True
        self.send(call, json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        self.send(
            call,
            json.dumps(
                {
                    "event": "start",
                    "sequenceNumber": str(self.next_seq(call)),
                    "start": {
                        "accountSid": "ACbench",
                        "streamSid": call.sid,
                        "callSid": f"CAbench{call.index:06d}",
                        "tracks": ["inbound"],
                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                        "customParameters": {"from": call.sid},
                    },
                    "streamSid": call.sid,
                }
            ),
        )

    def media(self, call: Call, b64: str) -> str:
        call.chunk += 1
        return (
            f'{{"event":"media","sequenceNumber":"{self.next_seq(call)}","media":{{"track":"inbound",'
            f'"chunk":"{call.chunk}","timestamp":"{(call.chunk - 1) * 20}","payload":"{b64}"}},'
            f'"streamSid":"{call.sid}"}}'
        )

    def tick_call(self, call: Call, now: float) -> None:
        if not call.open or call.closed:
            return
        out: list[str] = []
        due = int((now - call.t_stream0) / FRAME_S) + 1  # frames captured by now
        while call.chunk < due:
            # caller speech: an utterance at speech_at; again once the agent has been quiet for a while
            if call.speech_pos < 0 and now >= call.speech_at:
                call.speech_pos = 0
                call.utterances += 1
            if call.speech_pos >= 0:
                out.append(self.media(call, self.speech[call.speech_pos]))
                call.speech_pos += 1
                if call.speech_pos >= len(self.speech):
                    call.speech_pos = -1
                    call.speech_at = now + 6.0  # give the agent time to answer before trying again
            else:
                out.append(self.media(call, SILENCE_B64))
        if call.speech_pos < 0 and now - max(call.last_media, call.play_end) < 1.5:
            call.speech_at = max(call.speech_at, now + 1.5)  # the agent is (or was just) speaking
        if out:
            call.transport.write(b"".join(_ws_frame(t) for t in out))  # type: ignore[union-attr]

    async def run_clock(self) -> None:
        step = FRAME_S / PHASES
        t0 = self.loop.time()
        k = 0
        groups = [[c for c in self.calls if c.phase == p] for p in range(PHASES)]
        while not self.stop:
            k += 1
            target = t0 + k * step
            delay = target - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = self.loop.time()
            late_ms = (now - target) * 1000
            if self.measuring:
                self.late_ticks += late_ms > 10
                self.max_tick_late_ms = max(self.max_tick_late_ms, late_ms)
            for call in groups[k % PHASES]:
                self.tick_call(call, now)


# ---------------------------------------------------------------------------------------------------------
# one step
# ---------------------------------------------------------------------------------------------------------


def http_json(port: int, path: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return json.loads(r.read())


def http_text(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode()


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def prom_value(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def analyse(call: Call, w0: float, w1: float, lead_s: float) -> dict[str, Any]:
    """Jitter and late frames of one call inside [w0, w1)."""
    arr = np.asarray(call.arrivals)
    gaps = np.asarray(call.gap_before, bool)
    resp = call.frame_resp
    jitter: list[np.ndarray] = []
    late = 0
    between = 0
    if len(arr) == 0:
        return {"jitter_ms": np.zeros(0), "late": 0, "between": 0, "audio_s": 0.0}
    run_starts = np.flatnonzero(gaps)
    bounds = [0, *run_starts.tolist(), len(arr)]
    burst = int(round(lead_s / FRAME_S)) + 1
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b <= a:
            continue
        k = np.arange(b - a)
        x = arr[a:b] - k * FRAME_S
        sel = (k >= burst) & (arr[a:b] >= w0) & (arr[a:b] < w1)
        if sel.any():
            xs = x[sel]
            jitter.append((xs - xs.min()) * 1000)
    for i in np.flatnonzero(gaps):
        if not (w0 <= arr[i] < w1) or i == 0:
            continue
        if resp[i] is not None and resp[i] == resp[i - 1]:
            late += 1
        else:
            between += 1
    in_window = int(((arr >= w0) & (arr < w1)).sum())
    return {
        "jitter_ms": np.concatenate(jitter) if jitter else np.zeros(0),
        "late": late,
        "between": between,
        "audio_s": in_window * FRAME_S,
    }


async def run_load(
    port: int, n: int, seconds: float, speech: list[str], lead_ms: int, server_pid: int
) -> dict:
    sim = Sim(port, n, speech, lead_ms)
    loop = sim.loop
    sem = asyncio.Semaphore(64)

    async def connect(call: Call) -> None:
        async with sem:
            try:
                await sim.connect(call)
            except Exception as exc:
                call.errors.append(f"connect: {exc}")

    t_connect = loop.time()
    await asyncio.gather(*(connect(c) for c in sim.calls))
    connect_s = loop.time() - t_connect
    connected = sum(c.open for c in sim.calls)
    base = loop.time()
    for c in sim.calls:
        c.t_stream0 = base + c.phase * FRAME_S / PHASES - FRAME_S
        c.speech_at = base + 0.5 + 2.0 * c.index / n  # first utterances spread over 2 s
    clock = asyncio.create_task(sim.run_clock())
    warmup = 0.5 + 2.0 + 2.0 + 3.0  # stagger + utterance + answer start + settle
    await asyncio.sleep(warmup)
    s0 = await asyncio.to_thread(http_json, port, "/bench/stats")
    cpu0, client0, w0 = proc_cpu_s(server_pid), time.process_time(), loop.time()
    sim.measuring = True
    await asyncio.sleep(seconds)
    sim.measuring = False
    cpu1, client1, w1 = proc_cpu_s(server_pid), time.process_time(), loop.time()
    s1 = await asyncio.to_thread(http_json, port, "/bench/stats")
    metrics = await asyncio.to_thread(http_text, port, "/metrics")
    window = w1 - w0

    per_call = [analyse(c, w0, w1, sim.lead_s) for c in sim.calls]
    jitter = np.concatenate([p["jitter_ms"] for p in per_call]) if per_call else np.zeros(0)
    vad = []
    for c in sim.calls:
        a, b = s0["sessions"].get(c.sid), s1["sessions"].get(c.sid)
        if a and b and a["id"] == b["id"] and b["vad_chunks"] is not None:
            vad.append(b["vad_chunks"] - a["vad_chunks"])
        else:
            vad.append(0)
    vad_arr = np.asarray(vad, float) / window  # chunks per second per call
    audio = np.asarray([p["audio_s"] for p in per_call]) / window
    for c in sim.calls:
        if c.transport is not None:
            c.transport.close()
    sim.stop = True
    await clock
    await asyncio.sleep(0.5)

    server_cores = (cpu1 - cpu0) / window
    result = {
        "calls": n,
        "connected": connected,
        "connect_s": round(connect_s, 2),
        "window_s": round(window, 2),
        "frames_measured": int(jitter.size),
        "jitter_p50_ms": round(float(np.percentile(jitter, 50)), 2) if jitter.size else None,
        "jitter_p99_ms": round(float(np.percentile(jitter, 99)), 2) if jitter.size else None,
        "jitter_max_ms": round(float(jitter.max()), 2) if jitter.size else None,
        "late_frames": int(sum(p["late"] for p in per_call)),
        "gaps_between_responses": int(sum(p["between"] for p in per_call)),
        "clears": int(sum(c.clears for c in sim.calls)),
        "calls_with_agent_audio": int((audio > 0.5).sum()),
        "agent_audio_fraction_mean": round(float(audio.mean()), 3),
        "vad_chunks_per_call_s_min": round(float(vad_arr.min()), 2),
        "vad_chunks_per_call_s_mean": round(float(vad_arr.mean()), 2),
        "vad_chunks_per_call_window_mean": round(float(np.mean(vad)), 1),
        "calls_with_vad": int((vad_arr > 25).sum()),  # 31.25 chunks/s expected
        "vad_batches_per_s": round((s1["vad_batches"] - s0["vad_batches"]) / window, 1),
        "vad_batch_mean": round(
            (s1["vad_chunks"] - s0["vad_chunks"]) / max(1, s1["vad_batches"] - s0["vad_batches"]), 1
        ),
        "utterances_per_call": round(float(np.mean([c.utterances for c in sim.calls])), 2),
        "turns_started": s1["tts_calls"],
        "server_cpu_cores": round(server_cores, 3),
        "server_cpu_ms_per_call_s": round(server_cores * 1000 / n, 3),
        "server_cpu_pct_per_call": round(server_cores * 100 / n, 3),
        "server_loop_lag_max_ms": s1["loop_lag_max_ms"],
        "client_cpu_cores": round((client1 - client0) / window, 3),
        "client_late_ticks": sim.late_ticks,
        "client_max_tick_late_ms": round(sim.max_tick_late_ms, 1),
        "dropped_input_s": prom_value(metrics, "voxgate_dropped_input_seconds_total"),
        "client_errors": prom_value(metrics, "voxgate_client_errors_total"),
        "sim_errors": sum(len(c.errors) for c in sim.calls),
        "sim_error_examples": [e for c in sim.calls for e in c.errors][:5],
    }
    result["vad_on_every_call"] = result["calls_with_vad"] == n
    result["agent_spoke_on_every_call"] = result["calls_with_agent_audio"] == n
    result["passed"] = bool(
        connected == n
        and result["vad_on_every_call"]
        and result["agent_spoke_on_every_call"]
        and result["jitter_p99_ms"] is not None
        and result["jitter_p99_ms"] < JITTER_LIMIT_MS
        and result["late_frames"] == 0
    )
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(args: argparse.Namespace, data_dir: str, max_sessions: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "serve",
        "--port",
        str(port),
        "--data-dir",
        data_dir,
        "--max-sessions",
        str(max_sessions),
        "--sentences",
        str(args.sentences),
        "--clause-s",
        str(args.clause_s),
        "--lead-ms",
        str(args.lead_ms),
    ]
    if shutil.which("taskset") and args.server_cpu != "none":
        cmd = ["taskset", "-c", args.server_cpu, *cmd]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            http_json(port, "/health/ready", timeout=1)
            return proc, port
        except Exception:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready in 60 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench(args: argparse.Namespace) -> int:
    if args.client_cpu != "none" and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in args.client_cpu.split(",")})
    try:
        import uvloop

        uvloop.install()
        loop_impl = "uvloop"
    except ImportError:
        loop_impl = "asyncio"
    speech = _caller_speech()
    steps = [int(s) for s in args.steps.split(",")]
    results = []
    print(
        f"server pinned to CPU {args.server_cpu}, simulator to CPU {args.client_cpu}; "
        f"{args.seconds:.0f} s per step; caller utterance {len(speech) * 20} ms",
        flush=True,
    )
    header = (
        f"{'calls':>6} {'pass':>5} {'jit p50':>8} {'jit p99':>8} {'jit max':>8} {'late':>5} "
        f"{'srv cores':>9} {'ms/call-s':>9} {'vad/s/call':>10} {'audio':>6} {'lag max':>8} {'cli cores':>9}"
    )
    for n in steps:
        data_dir = tempfile.mkdtemp(prefix="voxgate-bench-tel-")
        proc, port = start_server(args, data_dir, max_sessions=max(n + 16, 64))
        try:
            result = asyncio.run(run_load(port, n, args.seconds, speech, args.lead_ms, proc.pid))
        finally:
            stop_server(proc)
            shutil.rmtree(data_dir, ignore_errors=True)
        results.append(result)
        r = result
        if len(results) == 1:
            print(header)
        print(
            f"{n:>6} {'yes' if r['passed'] else 'NO':>5} {r['jitter_p50_ms']!s:>8} {r['jitter_p99_ms']!s:>8} "
            f"{r['jitter_max_ms']!s:>8} {r['late_frames']:>5} {r['server_cpu_cores']:>9.2f} "
            f"{r['server_cpu_ms_per_call_s']:>9.2f} {r['vad_chunks_per_call_s_mean']:>10.1f} "
            f"{r['agent_audio_fraction_mean']:>6.2f} {r['server_loop_lag_max_ms']!s:>8} "
            f"{r['client_cpu_cores']:>9.2f}",
            flush=True,
        )
        if r["sim_errors"]:
            print("   simulator errors:", r["sim_errors"], r["sim_error_examples"])
        if args.stop_on_fail and not r["passed"]:
            break
    passing = [r["calls"] for r in results if r["passed"]]
    best = max(passing, default=0)
    summary = {
        "benchmark": "telephony",
        "date": time.strftime("%Y-%m-%d"),
        "calls_per_core": best,
        "criteria": {
            "jitter_p99_ms_below": JITTER_LIMIT_MS,
            "late_frames": 0,
            "vad_and_agent_on_every_call": True,
        },
        "config": {
            "steps": steps,
            "seconds": args.seconds,
            "server_cpu": args.server_cpu,
            "client_cpu": args.client_cpu,
            "lead_ms": args.lead_ms,
            "tts_clause_s": args.clause_s,
            "llm_sentences": args.sentences,
            "caller_utterance_ms": len(speech) * 20,
            "client_loop": loop_impl,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "steps": results,
    }
    best_row = next((r for r in results if r["calls"] == best), None)
    print(
        f"\ncalls per core (jitter p99 < {JITTER_LIMIT_MS:.0f} ms, no late frames, VAD and agent on every call): "
        f"{best}"
        + (f"; server CPU per call {best_row['server_cpu_pct_per_call']:.2f} % of a core" if best_row else "")
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("serve", help="the server under test (started by the benchmark itself)")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--data-dir", required=True)
    s.add_argument("--max-sessions", type=int, default=1024)
    for q in (p, s):
        q.add_argument("--sentences", type=int, default=12, help="sentences per stand-in LLM answer")
        q.add_argument("--clause-s", type=float, default=3.0, help="seconds of stand-in TTS audio per clause")
        q.add_argument("--lead-ms", type=int, default=200, help="the gateway's lead_ms")
    p.add_argument("--steps", default="10,20,40,60,100", help="concurrent calls per step")
    p.add_argument("--seconds", type=float, default=20.0, help="measurement window per step")
    p.add_argument("--server-cpu", default="0", help="taskset CPU list for the server ('none': unpinned)")
    p.add_argument("--client-cpu", default="1", help="CPU list for the simulator ('none': unpinned)")
    p.add_argument("--stop-on-fail", action="store_true", help="stop at the first failing step")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "telephony.json"))
    args = p.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
