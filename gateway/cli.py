"""The ``voxgate`` command: serve, transcribe, say, chat, models, bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gateway.memory import reexec_with_arena_cap
from gateway.settings import Settings
from gateway.settings_help import describe_settings

T = TypeVar("T")


def _settings_epilog() -> str:
    lines = [
        "settings (environment variables; a TOML file can be named with VOXGATE_CONFIG; an engine's options",
        "may also be nested: VOXGATE_<ROLE>_OPTIONS__<OPTION> for VOXGATE_<ROLE>_<OPTION>):",
    ]
    for env, default, description in describe_settings():
        lines.append(f"  {env:34} default {default}" + (f"\n  {'':34} {description}" if description else ""))
    return "\n".join(lines)


def _fail(message: str) -> int:
    print(f"voxgate: {message}", file=sys.stderr)
    return 2


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.auth import log_auth_mode, start_up_problem

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings(**overrides)
    problem = start_up_problem(settings)
    if problem is not None:  # before the app's imports: the refusal is quick
        return _fail(problem)  # auth is on and nothing could ever create a key: refuse, say why

    import uvicorn

    from gateway.app import create_app
    from gateway.drain import DrainingServer
    from gateway.logs import configure_logging, uvicorn_log_config

    configure_logging(settings.log_level)
    log_auth_mode(settings)
    app = create_app(settings)
    # uvicorn re-raises the signal it caught once it has shut down; a no-op handler makes that re-raise
    # harmless, so a SIGTERM'd server that shut down cleanly exits 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(),  # its access log without the credentials a URL may carry
        ws_max_size=settings.max_message_bytes,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        timeout_graceful_shutdown=5,
    )
    # The first SIGTERM drains (gateway/drain.py): sessions finish, then hear a goodbye, then the process exits.
    server = DrainingServer(config, app.state.voxgate, settings.drain_timeout_s, settings.drain_goodbye)
    server.run()
    return 0


def _load_with_progress(label: str, fn: Callable[[], T]) -> T:
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn(label), TimeElapsedColumn())
    with Progress(*columns, transient=True, console=Console(stderr=True)) as bar:
        bar.add_task(label)
        return fn()


def cmd_transcribe(args: argparse.Namespace) -> int:
    from engines.registry import build
    from gateway.engines import engine_choices
    from pipeline.audio import load_audio

    path = Path(args.file)
    if not path.is_file():
        return _fail(f"no such file: {path}")
    settings = Settings()
    try:
        audio = load_audio(str(path))
    except Exception as exc:
        return _fail(f"cannot decode {path}: {exc}")
    stt = _load_with_progress(
        f"loading {settings.stt_engine}", lambda: build(engine_choices(settings)["stt"])
    )
    start = time.perf_counter()
    transcript = stt.transcribe(audio, args.language)
    elapsed = time.perf_counter() - start
    print(transcript.text)
    print(
        f"[{transcript.language}, {len(audio) / 16000:.1f} s of audio in {elapsed:.2f} s]",
        file=sys.stderr,
    )
    return 0


def cmd_say(args: argparse.Namespace) -> int:
    from engines.registry import build
    from gateway.engines import engine_choices
    from pipeline.audio import write_wav
    from pipeline.normalize import normalize_for_speech

    settings = Settings()
    tts = _load_with_progress("loading voice", lambda: build(engine_choices(settings)["tts"]))
    voice = args.voice or settings.default_voice
    try:
        pcm = b"".join(chunk.tobytes() for chunk in tts.synthesize(normalize_for_speech(args.text), voice))
    except KeyError as exc:
        return _fail(str(exc))
    write_wav(args.output, pcm, tts.sample_rate)
    print(
        f"wrote {args.output} ({len(pcm) / 2 / tts.sample_rate:.2f} s at {tts.sample_rate} Hz)",
        file=sys.stderr,
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from gateway.engines import engine_choices
    from gateway.modelinfo import describe_models

    settings = Settings()
    if args.fetch:
        from engines.models import ModelNotFound, fetch_smart_turn

        try:
            print(f"Smart Turn v3: {fetch_smart_turn(str(settings.cache_dir))}", file=sys.stderr)
        except (ModelNotFound, subprocess.CalledProcessError, OSError) as exc:
            return _fail(f"could not fetch Smart Turn v3 from PyPI: {exc}")
    report = describe_models(settings, engine_choices(settings))
    print(json.dumps(report, indent=2) if args.json else "\n".join(_format_models(report)))
    return 0


def _format_models(report: dict) -> list[str]:  # type: ignore[type-arg]
    lines = []
    for role, info in report["engines"].items():
        lines.append(f"{role:4} {info['engine']:8} {info.get('model', '')}")
        if info.get("path"):
            lines.append(f"     weights: {info['path']}")
    lines.append("voices:")
    for voice in report["voices"]:
        lines.append(f"  {voice['id']:24} {voice['engine']:7} {voice['sample_rate']} Hz  {voice['path']}")
    return lines


def cmd_chat(args: argparse.Namespace) -> int:
    from gateway.chat import run_chat

    return asyncio.run(run_chat(Settings(), save_audio=args.save_audio))


def cmd_bench(args: argparse.Namespace) -> int:
    script = Path(__file__).resolve().parents[1] / "bench" / "latency.py"
    if not script.is_file():
        return _fail("bench/latency.py is not here: run voxgate bench from a source checkout")
    return subprocess.call([sys.executable, str(script), *args.rest])


def cmd_db(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from storage import migrate
    from storage.engine import open_engine

    settings = Settings()
    url = settings.storage_url()
    shown = make_url(url).render_as_string(hide_password=True)

    async def run() -> str | None:
        engine = open_engine(url)
        try:
            if args.action == "upgrade":
                await migrate.upgrade(engine, args.revision or "head")
            elif args.action == "downgrade":
                await migrate.downgrade(engine, args.revision or "base")
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    revision = asyncio.run(run())
    print(f"{shown}: schema revision {revision or 'none (empty)'} (latest {migrate.head_revision()})")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from gateway.logs import configure_logging
    from gateway.media.worker import main as worker_main

    settings = Settings()
    configure_logging(settings.log_level)
    return worker_main(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxgate", description="Realtime voice-agent gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the gateway",
        epilog=_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)
    transcribe = sub.add_parser("transcribe", help="transcribe an audio file with the configured STT")
    transcribe.add_argument("file")
    transcribe.add_argument("--language")
    transcribe.set_defaults(func=cmd_transcribe)
    say = sub.add_parser("say", help="speak a text into a WAV file")
    say.add_argument("text")
    say.add_argument("-o", "--output", required=True)
    say.add_argument("--voice")
    say.set_defaults(func=cmd_say)
    chat = sub.add_parser("chat", help="typed conversation through the same pipeline")
    chat.add_argument("--save-audio", help="folder to write each answer's audio as WAV")
    chat.set_defaults(func=cmd_chat)
    models = sub.add_parser("models", help="engines, voices and where their weights are")
    models.add_argument("--json", action="store_true")
    models.add_argument(
        "--fetch",
        action="store_true",
        help="first take the weights that ship inside other registry packages (Smart Turn v3 from the "
        "pipecat-ai wheel) into the cache",
    )
    models.set_defaults(func=cmd_models)
    db = sub.add_parser("db", help="database schema: show, upgrade or downgrade (Alembic)")
    db.add_argument("action", choices=["current", "upgrade", "downgrade"])
    db.add_argument("revision", nargs="?", help="target revision (default: head / base)")
    db.set_defaults(func=cmd_db)
    bench = sub.add_parser("bench", help="run bench/latency.py (arguments pass through)")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    worker = sub.add_parser(
        "worker", help="run media jobs (image, video) from the Redis queue: docs/media.md (media_* settings)"
    )
    worker.set_defaults(func=cmd_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = build_parser().parse_args(argv)
    if argv is None and args.func in (cmd_serve, cmd_worker):
        reexec_with_arena_cap()  # long-running servers: see gateway/memory.py
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a CLI user gets a message, not a traceback
        if os.environ.get("VOXGATE_DEBUG"):
            raise
        return _fail(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
