"""``voxgate chat``: a typed conversation through the very same Session the WebSocket uses."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gateway.engines import build_runtime
from gateway.settings import Settings, session_config
from pipeline.audio import write_wav
from pipeline.outbox import Flush, OutAudio
from pipeline.session import Session


async def run_chat(settings: Settings, save_audio: str | None = None) -> int:
    print("loading models...", file=sys.stderr)
    runtime = await asyncio.to_thread(build_runtime, settings)
    config = session_config(settings, transport="cli")
    session = Session(runtime, config)
    await session.start()
    out_dir = Path(save_audio) if save_audio else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    print("type a message (empty line or Ctrl-D quits)", file=sys.stderr)
    try:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line.strip():
                break
            await session.submit_text(line.strip())
            audio = await _print_answer(session)
            if out_dir and audio:
                path = out_dir / f"turn-{len(session.turns):03d}.wav"
                write_wav(str(path), audio, config.output_rate)
                print(f"  (audio: {path})", file=sys.stderr)
    finally:
        await session.close("client_closed")
        await runtime.close()
    return 0


async def _print_answer(session: Session) -> bytes:
    """Print the streamed answer; return its audio once it has all been released."""
    audio = bytearray()
    while True:
        item = await session.outbox.get()
        if item is None:
            return bytes(audio)
        if isinstance(item, OutAudio):
            audio += item.payload
            continue
        if isinstance(item, Flush):
            continue
        event = item.to_wire()
        kind = event["type"]
        if kind == "response.text.delta":
            print(event["delta"], end="", flush=True)
        elif kind == "metrics":
            print(
                f"\n  [first token {event.get('llm_ttft_ms')} ms, first audio {event.get('tts_ttfb_ms')} ms]",
                file=sys.stderr,
            )
        elif kind == "error":
            print(f"\n  error {event['code']}: {event['message']}", file=sys.stderr)
            return bytes(audio)
        elif kind == "response.audio.done":
            print()
            return bytes(audio)
