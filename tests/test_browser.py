"""The playground and the flow builder in headless Chromium (Debian's, driven by Playwright), with a WAV
file as the microphone, server and browser in a loopback-only network namespace (tests/browser/)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from tests.speech import clip_pcm, wer

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "browser"


@pytest.fixture(scope="module")
def browser_run(shared_audio: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    if not Path("/usr/bin/chromium").exists():
        pytest.fail("Debian's chromium is missing: scripts/test.sh installs it (VOXGATE_SETUP_BROWSER=1)")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("browser tests need root and unshare for a loopback-only network namespace")
    mic = tmp_path_factory.mktemp("mic") / "question.wav"
    pcm = clip_pcm(str(shared_audio / "fleurs-en-004.ogg"), rate=48000)
    with wave.open(str(mic), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(bytes(48000) + pcm + bytes(48000 * 4))  # 0.5 s lead-in, the question, then quiet
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).with_name("browser") / "run_in_netns.py"
    subprocess.run(
        ["unshare", "-n", sys.executable, str(script), str(ARTIFACTS), str(mic)],
        cwd=Path(__file__).resolve().parents[1],
        timeout=280,
        check=True,
    )
    results = json.loads((ARTIFACTS / "results.json").read_text())
    assert "error" not in results, results["error"] + results.get("server_log_tail", "")
    return results


@pytest.mark.slow
def test_playground_hears_the_microphone_and_answers(browser_run, shared_audio) -> None:  # type: ignore[no-untyped-def]
    reference = (shared_audio / "fleurs-en-004.txt").read_text()
    said = " ".join(browser_run["user_turns"])
    assert wer(reference, said) <= 0.3, said
    assert any(len(t.strip()) > 3 for t in browser_run["agent_turns"])
    assert browser_run["transport"] == "webrtc"
    inbound = browser_run["inbound_audio"]
    assert inbound and inbound["packets"] > 50 and inbound["energy"] > 0.001, inbound
    assert browser_run["playground_console_errors"] == []
    assert (ARTIFACTS / "playground.png").stat().st_size > 10_000


@pytest.mark.slow
def test_flow_builder_validates_and_saves(browser_run) -> None:  # type: ignore[no-untyped-def]
    assert "start" in browser_run["builder_errors_shown"]
    saved = browser_run["builder_saved"]
    assert saved and saved["name"] == "Made in the browser"
    assert browser_run["graph_nodes"] >= 2
    assert browser_run["builder_console_errors"] == []
    assert (ARTIFACTS / "flow-builder.png").stat().st_size > 10_000
