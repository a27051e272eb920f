"""A page written against OpenAI's documented browser WebRTC flow (tests/browser/realtime_sample.html: an
ephemeral client secret, an RTCPeerConnection with the microphone, the ``oai-events`` data channel, the SDP
offer posted to ``/v1/realtime/calls``), pointed at voxgate, in headless Chromium with a WAV file as the
microphone; server and browser in a loopback-only network namespace (tests/browser/realtime_in_netns.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser_run import ARTIFACTS, run_browser_script
from tests.speech import wer, words

CLIP = "fleurs-en-004"


@pytest.fixture(scope="module")
def sample_run(shared_audio: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    clip = shared_audio / f"{CLIP}.ogg"
    return run_browser_script(
        "realtime_in_netns.py", "realtime-results.json", clip, tmp_path_factory.mktemp("mic")
    )


@pytest.mark.slow
def test_openai_browser_sample_talks_to_voxgate(sample_run, shared_audio) -> None:  # type: ignore[no-untyped-def]
    assert sample_run["page_errors"] == [] and sample_run["console_errors"] == [], sample_run
    assert sample_run["session_created"]["type"] == "realtime"
    reference = (shared_audio / f"{CLIP}.txt").read_text()
    said = " ".join(sample_run["transcripts"])
    assert wer(reference, said) <= 0.3, said
    answered = [r for r in sample_run["responses"] if r["status"] == "completed"]
    assert answered, sample_run["responses"]
    item = answered[-1]["output"][0]
    assert item["role"] == "assistant" and len(words(item["content"][0]["transcript"])) >= 2, item
    types = sample_run["types"]
    # Over WebRTC the answer's audio is on the track, announced on the data channel.
    assert "output_audio_buffer.started" in types and "response.output_audio.delta" not in types, types
    inbound = sample_run["inbound_audio"]
    assert inbound and inbound["packets"] > 50 and inbound["energy"] > 0.001, inbound
    assert (ARTIFACTS / "realtime-sample.png").stat().st_size > 5_000
