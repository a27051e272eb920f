"""The ``voxgate`` command, run as a real subprocess with the embedded default engines.

Every run gets its own ``VOXGATE_DATA_DIR`` and passive OpenMP threads; the settings checks at the end run
in-process against ``gateway.settings.Settings`` with a monkeypatched environment.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import free_port
from tests.speech import energy_dbfs, wer, words

pytestmark = pytest.mark.slow

FOX = "The quick brown fox jumps over the lazy dog."
RUN_TIMEOUT_S = 180
SERVE_READY_S = 60
SERVE_STOP_S = 15


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    # A clean VOXGATE_* environment: only what the test sets reaches the command.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env.update({"VOXGATE_DATA_DIR": str(data_dir), **extra})
    return env


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def voxgate(
    data_dir: Path, *args: str, stdin: str | None = None, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cmd(*args),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=_env(data_dir, **env),
        cwd=cwd or Path(__file__).resolve().parents[1],
    )


def _show(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )


def _assert_user_error(result: subprocess.CompletedProcess[str], *, one_line: bool = True) -> None:
    """Exit 2 with a ``voxgate: ...`` message and no traceback."""
    assert result.returncode == 2, _show(result)
    assert "Traceback" not in result.stderr, _show(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("voxgate: "), _show(result)
    if one_line:
        assert len(lines) == 1, _show(result)


# --- transcribe ----------------------------------------------------------------------------------------------


def test_transcribe_prints_transcript(data_dir: Path, shared_audio: Path) -> None:
    from pipeline.audio import load_audio

    clip = shared_audio / "jfk.flac"
    result = voxgate(data_dir, "transcribe", str(clip))
    assert result.returncode == 0, _show(result)
    reference = (shared_audio / "jfk.txt").read_text().strip()
    assert wer(reference, result.stdout.strip()) <= 0.15, _show(result)
    # stderr reports the audio's length (jfk.flac is 11.0 s).
    seconds = len(load_audio(str(clip))) / 16000
    reported = [float(x) for x in re.findall(r"(\d+(?:\.\d+)?)\s*s\b", result.stderr)]
    assert any(abs(x - seconds) <= 0.15 for x in reported), (seconds, _show(result))


def test_transcribe_missing_file_is_a_user_error(data_dir: Path) -> None:
    result = voxgate(data_dir, "transcribe", "/nonexistent.wav")
    _assert_user_error(result)
    assert "/nonexistent.wav" in result.stderr
    assert not result.stdout


def test_transcribe_non_audio_file_is_a_user_error(data_dir: Path, tmp_path: Path) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("This is not audio.\n" * 20)
    result = voxgate(data_dir, "transcribe", str(text_file))
    _assert_user_error(result)
    assert "notes.txt" in result.stderr
    assert not result.stdout


# --- say -------------------------------------------------------------------------------------------------------


def test_say_writes_a_wav_that_says_the_text(data_dir: Path, tmp_path: Path) -> None:
    from engines.stt_whisper import WhisperSTT
    from pipeline.audio import pcm16_to_float, resample

    out = tmp_path / "out.wav"
    result = voxgate(data_dir, "say", FOX, "-o", str(out))
    assert result.returncode == 0, _show(result)
    assert out.is_file(), _show(result)
    with wave.open(str(out), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        pcm = w.readframes(w.getnframes())
        seconds = w.getnframes() / w.getframerate()
    assert 1.5 <= seconds <= 6.0, seconds  # nine words
    assert energy_dbfs(pcm) > -40.0, energy_dbfs(pcm)
    assert np.abs(np.frombuffer(pcm, "<i2")).max() > 3000
    stt = WhisperSTT("tiny.en", cpu_threads=2, cache_dir=str(data_dir / "cache"))
    heard = stt.transcribe(pcm16_to_float(resample(pcm, 22050, 16000))).text
    assert wer(FOX, heard) <= 0.2, heard


def test_say_without_output_is_a_usage_error(data_dir: Path) -> None:
    result = voxgate(data_dir, "say", FOX)
    assert result.returncode == 2, _show(result)
    assert result.stderr.startswith("usage: voxgate say"), _show(result)
    assert "-o/--output" in result.stderr and "Traceback" not in result.stderr


def test_unknown_command_is_a_usage_error(data_dir: Path) -> None:
    result = voxgate(data_dir, "nope")
    assert result.returncode == 2, _show(result)
    assert result.stderr.startswith("usage: voxgate"), _show(result)
    assert "invalid choice: 'nope'" in result.stderr and "Traceback" not in result.stderr


# --- models, chat, serve --help --------------------------------------------------------------------------------


def test_models_json_lists_engines_and_voice(data_dir: Path) -> None:
    result = voxgate(data_dir, "models", "--json")
    assert result.returncode == 0, _show(result)
    report = json.loads(result.stdout)
    engines = report["engines"]
    assert set(engines) == {"vad", "stt", "llm", "tts", "turn"}
    assert {role: info["engine"] for role, info in engines.items()} == {
        "vad": "silero",
        "stt": "whisper",
        "llm": "llama",
        "tts": "piper",
        "turn": "smart_turn",
    }
    for role, info in engines.items():
        assert "error" not in info, (role, info)
    for role in ("vad", "stt", "llm", "turn"):
        assert Path(engines[role]["path"]).exists(), (role, engines[role])
    assert Path(engines["llm"]["path"]).suffix == ".gguf"
    assert (Path(engines["stt"]["path"]) / "model.bin").is_file()
    assert engines["tts"]["model"] == "en_US-joe-medium"
    joe = [v for v in report["voices"] if v["id"] == "en_US-joe-medium"]
    assert len(joe) == 1, report["voices"]
    assert joe[0]["engine"] == "piper" and joe[0]["sample_rate"] == 22050
    assert Path(joe[0]["path"]).is_file()
    # The plain listing says the same in words.
    plain = voxgate(data_dir, "models")
    assert plain.returncode == 0, _show(plain)
    assert "en_US-joe-medium" in plain.stdout and engines["llm"]["path"] in plain.stdout


def test_chat_answers_and_saves_audio(data_dir: Path, tmp_path: Path) -> None:
    audio_dir = tmp_path / "answers"
    result = voxgate(
        data_dir, "chat", "--save-audio", str(audio_dir), stdin="What is the capital of France?\n\n"
    )
    assert result.returncode == 0, _show(result)
    answer = result.stdout.strip()
    assert len(words(answer)) >= 2, _show(result)
    assert "Traceback" not in result.stderr and "error" not in result.stderr.lower(), _show(result)
    wavs = sorted(audio_dir.glob("*.wav"))
    assert len(wavs) == 1, (wavs, _show(result))
    with wave.open(str(wavs[0]), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        seconds = w.getnframes() / w.getframerate()
        pcm = w.readframes(w.getnframes())
    assert 0.5 <= seconds <= 30, seconds
    assert energy_dbfs(pcm) > -40.0


def test_chat_without_save_audio_just_answers(data_dir: Path, tmp_path: Path) -> None:
    result = voxgate(data_dir, "chat", stdin="What is the capital of France?\n\n", cwd=tmp_path)
    assert result.returncode == 0, _show(result)
    assert result.stdout.strip(), _show(result)
    assert not list(tmp_path.rglob("*.wav"))


def test_chat_eof_quits(data_dir: Path) -> None:
    result = voxgate(data_dir, "chat", stdin="")
    assert result.returncode == 0, _show(result)
    assert not result.stdout.strip()


def test_serve_help_lists_every_setting(data_dir: Path) -> None:
    from gateway.settings_help import describe_settings

    result = voxgate(data_dir, "serve", "--help")
    assert result.returncode == 0, _show(result)
    rows = describe_settings()
    assert len(rows) >= 30
    listed = set(re.findall(r"\bVOXGATE_[A-Z0-9_]+", result.stdout))
    missing = [env for env, _, _ in rows if env not in listed]
    assert not missing, missing
    for env, default, description in rows:
        line = next(line for line in result.stdout.splitlines() if re.search(rf"\b{env}\b", line))
        assert default in line, (env, default, line)
        if description:
            assert description in result.stdout, (env, description)
    assert "VOXGATE_CONFIG" in result.stdout


# --- serve -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_and_terminated() -> Iterator[dict[str, Any]]:
    """``voxgate serve`` on a free port: time to ready, /health, then SIGTERM and how it ended."""
    port = free_port()
    with tempfile.TemporaryDirectory() as data, tempfile.TemporaryFile("w+") as log:
        env = _env(Path(data), VOXGATE_PORT=str(port), VOXGATE_LOG_LEVEL="info")
        env.pop("MALLOC_ARENA_MAX", None)  # serve sets it for itself (gateway/memory.py)
        proc = subprocess.Popen(
            _cmd("serve"), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        outcome: dict[str, Any] = {"port": port}
        try:
            start = time.monotonic()
            base = f"http://127.0.0.1:{port}"
            while time.monotonic() - start < SERVE_READY_S and proc.poll() is None:
                try:
                    if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                        outcome["ready_s"] = time.monotonic() - start
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            if "ready_s" in outcome:
                with open(f"/proc/{proc.pid}/environ", "rb") as environ:
                    outcome["environ"] = environ.read().split(b"\0")
                outcome["health"] = httpx.get(f"{base}/health", timeout=5).json()
                outcome["live"] = httpx.get(f"{base}/health/live", timeout=5).status_code
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                outcome["returncode"] = proc.wait(timeout=SERVE_STOP_S)
                outcome["stop_s"] = time.monotonic() - t0
            except subprocess.TimeoutExpired:
                outcome["returncode"] = None
            log.seek(0)
            outcome["log"] = log.read()
            yield outcome
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_serve_gets_ready_and_healthy(served_and_terminated: dict[str, Any]) -> None:
    outcome = served_and_terminated
    assert "ready_s" in outcome, outcome.get("log", "")[-3000:]
    assert outcome["ready_s"] < SERVE_READY_S
    health = outcome["health"]
    assert health["model_loaded"] is True and health["status"] == "healthy", health
    assert health["engines"]["llm"] == "LlamaCppLLM"
    assert outcome["live"] == 200
    assert f"127.0.0.1:{outcome['port']}" in outcome["log"]
    # The same process (exec keeps the pid) runs with glibc's malloc arenas capped.
    assert b"MALLOC_ARENA_MAX=2" in outcome["environ"]


def test_serve_shuts_down_gracefully_on_sigterm(served_and_terminated: dict[str, Any]) -> None:
    outcome = served_and_terminated
    assert outcome["returncode"] is not None, "still running 15 s after SIGTERM\n" + outcome["log"][-3000:]
    assert outcome["stop_s"] < SERVE_STOP_S
    # Graceful: the lifespan ran to its end (sessions closed, engines released) and nothing crashed.
    assert "Application shutdown complete" in outcome["log"], outcome["log"][-3000:]
    assert "Traceback" not in outcome["log"], outcome["log"][-3000:]
    assert outcome["returncode"] == 0, outcome["returncode"]


def test_serve_exit_code_after_sigterm_is_zero(served_and_terminated: dict[str, Any]) -> None:
    assert served_and_terminated["returncode"] == 0


# --- configuration ---------------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("VOXGATE_"):
            monkeypatch.delenv(key)
    return monkeypatch


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "voxgate.toml"
    path.write_text(text)
    return path


def test_toml_config_is_honoured(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from gateway.settings import Settings

    defaults = Settings()
    config = _toml(tmp_path, 'max_sessions = 3\nllm_model = "from-toml"\n[vad]\nend_of_turn_ms = 500\n')
    clean_env.setenv("VOXGATE_CONFIG", str(config))
    settings = Settings()
    assert settings.max_sessions == 3
    # A flat engine option goes to its role; the selected engine's options model reads it when it takes it.
    assert settings.llm_options == {"model": "from-toml"}
    assert Settings(llm_engine="openai").engine_options("llm").model == "from-toml"  # type: ignore[attr-defined]
    assert settings.vad.end_of_turn_ms == 500
    # What the file does not name keeps its default, nested fields included.
    assert settings.vad.threshold == defaults.vad.threshold
    assert settings.vad.min_interrupt_ms == defaults.vad.min_interrupt_ms
    assert settings.idle_timeout_s == defaults.idle_timeout_s


def test_env_overrides_toml(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from gateway.settings import Settings

    config = _toml(tmp_path, "max_sessions = 3\nidle_timeout_s = 60.0\n[vad]\nend_of_turn_ms = 500\n")
    clean_env.setenv("VOXGATE_CONFIG", str(config))
    clean_env.setenv("VOXGATE_MAX_SESSIONS", "7")
    clean_env.setenv("VOXGATE_VAD__END_OF_TURN_MS", "800")
    clean_env.setenv("VOXGATE_VAD__THRESHOLD", "0.7")
    settings = Settings()
    assert settings.max_sessions == 7
    assert settings.vad.end_of_turn_ms == 800
    assert settings.vad.threshold == 0.7
    assert settings.idle_timeout_s == 60.0  # not overridden: the file still counts
    # Explicit arguments beat both.
    assert Settings(max_sessions=9).max_sessions == 9


def test_env_nested_merges_with_toml_table(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from gateway.settings import Settings

    clean_env.setenv("VOXGATE_CONFIG", str(_toml(tmp_path, "[vad]\nend_of_turn_ms = 500\n")))
    clean_env.setenv("VOXGATE_VAD__THRESHOLD", "0.7")
    vad = Settings().vad
    assert (vad.end_of_turn_ms, vad.threshold) == (500, 0.7)


def test_missing_config_file_is_an_error(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from gateway.settings import Settings

    clean_env.setenv("VOXGATE_CONFIG", str(tmp_path / "typo.toml"))
    with pytest.raises((FileNotFoundError, ValueError)):
        Settings()


def test_invalid_env_value_stops_serve_with_a_message(data_dir: Path) -> None:
    result = voxgate(data_dir, "serve", VOXGATE_MAX_SESSIONS="abc", VOXGATE_PORT=str(free_port()))
    assert result.returncode != 0, _show(result)
    _assert_user_error(result, one_line=False)
    assert "max_sessions" in result.stderr and "abc" in result.stderr, _show(result)
    assert "Uvicorn running" not in result.stderr


def test_invalid_toml_value_stops_serve_with_a_message(data_dir: Path, tmp_path: Path) -> None:
    config = _toml(tmp_path, "[vad]\nend_of_turn_ms = 20\n")  # below the 100 ms minimum
    result = voxgate(data_dir, "serve", VOXGATE_CONFIG=str(config), VOXGATE_PORT=str(free_port()))
    _assert_user_error(result, one_line=False)
    assert "end_of_turn_ms" in result.stderr, _show(result)


def test_unknown_engine_stops_serve_and_models_with_a_message(data_dir: Path) -> None:
    for command in ("serve", "models"):
        result = voxgate(data_dir, command, VOXGATE_TTS_ENGINE="nope", VOXGATE_PORT=str(free_port()))
        _assert_user_error(result, one_line=False)
        assert "unknown tts engine 'nope' (known: piper, espeak, openai, voices)" in result.stderr, _show(
            result
        )
        assert "Uvicorn running" not in result.stderr


def test_bad_engine_option_stops_serve_with_a_message(data_dir: Path) -> None:
    result = voxgate(data_dir, "serve", VOXGATE_STT_THREADS="many", VOXGATE_PORT=str(free_port()))
    _assert_user_error(result, one_line=False)
    assert "stt_threads" in result.stderr and "many" in result.stderr, _show(result)


def test_malformed_toml_stops_serve_with_a_message(data_dir: Path, tmp_path: Path) -> None:
    config = _toml(tmp_path, "max_sessions = [\n")
    result = voxgate(data_dir, "serve", VOXGATE_CONFIG=str(config), VOXGATE_PORT=str(free_port()))
    _assert_user_error(result)
    assert "TOML" in result.stderr, _show(result)
