"""Run one of tests/browser/'s scripts: headless Chromium and a voxgate in a loopback-only network namespace,
with a recorded clip as the microphone. Shared by the playground and the Realtime sample tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import pytest

from tests.speech import clip_pcm

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "browser"


def run_browser_script(script: str, results_file: str, clip: Path, mic_dir: Path) -> dict[str, Any]:
    """Run ``tests/browser/<script>`` with ``clip`` (0.5 s lead-in, then 4 s of quiet) as the microphone;
    its results, from ``ARTIFACTS/<results_file>``. Fails when Chromium is missing, skips without root."""
    if not Path("/usr/bin/chromium").exists():
        pytest.fail("Debian's chromium is missing: scripts/test.sh installs it (VOXGATE_SETUP_BROWSER=1)")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("browser tests need root and unshare for a loopback-only network namespace")
    mic = mic_dir / "question.wav"
    pcm = clip_pcm(str(clip), rate=48000)
    with wave.open(str(mic), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(bytes(48000) + pcm + bytes(48000 * 4))  # 0.5 s lead-in, the question, then quiet
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "unshare",
            "-n",
            sys.executable,
            str(Path(__file__).with_name("browser") / script),
            str(ARTIFACTS),
            str(mic),
        ],
        cwd=Path(__file__).resolve().parents[1],
        timeout=280,
        check=True,
    )
    results: dict[str, Any] = json.loads((ARTIFACTS / results_file).read_text())
    assert "error" not in results, results["error"] + results.get("server_log_tail", "")
    return results
