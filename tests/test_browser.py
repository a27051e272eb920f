"""The playground and the flow builder in headless Chromium (Debian's, driven by Playwright), with a WAV
file as the microphone, server and browser in a loopback-only network namespace (tests/browser/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser_run import ARTIFACTS, run_browser_script
from tests.speech import wer


@pytest.fixture(scope="module")
def browser_run(shared_audio: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    clip = shared_audio / "fleurs-en-004.ogg"
    return run_browser_script("run_in_netns.py", "results.json", clip, tmp_path_factory.mktemp("mic"))


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
