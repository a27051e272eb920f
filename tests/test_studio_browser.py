"""The studio page (gateway/static/studio*) in headless Chromium: speech, image and video tabs against a real
gateway with an API key, the shipped voice and tiny random diffusers pipelines (tests/media_tiny.py); server
and browser in a loopback-only network namespace (tests/browser/studio_in_netns.py). One browser run serves
every test here; screenshots and downloaded files land in test-artifacts/browser/."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

# The image and video tabs need the [media] extra (scripts/test.sh installs it).
pytest.importorskip("diffusers")

from tests.browser_run import ARTIFACTS, run_browser_script  # noqa: E402
from tests.media_tiny import tiny_image_model, tiny_video_model  # noqa: E402,F401 (fixtures)
from tests.speech import energy_dbfs, wer  # noqa: E402

# What tests/browser/studio_in_netns.py types into the speech tab.
TTS_TEXT = "The studio speaks this sentence for the browser test."


@pytest.fixture(scope="module")
def studio_run(
    shared_audio: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> dict:  # type: ignore[type-arg]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STUDIO_IMAGE_MODEL", str(request.getfixturevalue("tiny_image_model")))
        env.setenv("STUDIO_VIDEO_MODEL", str(request.getfixturevalue("tiny_video_model")))
        # The microphone is unused here; the runner wants one.
        return run_browser_script(
            "studio_in_netns.py",
            "studio-results.json",
            shared_audio / "fleurs-en-004.ogg",
            tmp_path_factory.mktemp("mic"),
        )


@pytest.mark.slow
def test_speech_studio_plays_and_downloads_speech(studio_run) -> None:  # type: ignore[no-untyped-def]
    assert studio_run["tts_console_errors"] == []
    assert studio_run["tts_voices"], "no voices listed from GET /v1/voices"
    sent = studio_run["tts_request"]
    assert sent["response_format"] == "wav" and sent["speed"] == 1.25 and sent["input"] == TTS_TEXT, sent
    assert sent["voice"] in studio_run["tts_voices"]
    played = studio_run["tts_audio"]
    assert played["error"] is None and played["duration"] > 1.0 and played["currentTime"] > 0.2, played
    # The download is an ordinary WAV (the page wrote the real sizes over the stream's "unknown" ones).
    path = Path(studio_run["tts_download"]["path"])
    assert studio_run["tts_download"]["name"].endswith(".wav")
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
        frames = w.getnframes()
        pcm = w.readframes(frames)
    assert len(pcm) == frames * 2 and path.stat().st_size - len(pcm) < 100
    seconds = frames / 24000
    assert abs(seconds - played["duration"]) < 0.1, (seconds, played["duration"])
    assert energy_dbfs(pcm) > -35, energy_dbfs(pcm)
    assert wer(TTS_TEXT, studio_run["tts_heard"]) <= 0.25, studio_run["tts_heard"]
    assert (ARTIFACTS / "studio-speech.png").stat().st_size > 10_000


@pytest.mark.slow
def test_image_studio_gallery_shows_the_requested_size(studio_run) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    assert studio_run["image_console_errors"] == []
    gallery = studio_run["image_gallery"]
    assert len(gallery) == 2, gallery
    for figure in gallery:
        assert (figure["width"], figure["height"]) == (64, 48), figure
        assert figure["src_prefix"] == "data:image/png;base64,"
    # The first run's seed came from the server; "Use seed" reran it: same seed, same picture.
    assert gallery[0]["seed"] == gallery[1]["seed"] and gallery[0]["seed"].isdigit(), gallery
    pictures = [np.asarray(Image.open(ARTIFACTS / f"studio-image-{i}.png").convert("RGB")) for i in (0, 1)]
    assert pictures[0].shape == (48, 64, 3)
    assert np.array_equal(pictures[0], pictures[1])
    assert pictures[0].std() > 1.0  # a decoded picture, not a blank
    assert (ARTIFACTS / "studio-image.png").stat().st_size > 10_000


@pytest.mark.slow
def test_image_studio_shows_why_the_server_refused(studio_run) -> None:  # type: ignore[no-untyped-def]
    refused = studio_run["image_refused"]
    assert refused.startswith("HTTP 422") and "100 steps" in refused, refused
    assert studio_run["image_gallery_after_refusal"] == 2
    # The browser's own note about the 422 answer, nothing else.
    assert all("422" in e for e in studio_run["image_refused_console"]), studio_run["image_refused_console"]


@pytest.mark.slow
def test_video_studio_progress_reaches_100_and_preview_plays(studio_run) -> None:  # type: ignore[no-untyped-def]
    import av

    assert studio_run["video_console_errors"] == []
    assert studio_run["video_job"]["status"] == "succeeded", studio_run["video_job"]
    assert studio_run["video_progress_final"] == "100" and studio_run["video_bar_width"] == "100%"
    seen = studio_run["video_progress_seen"]
    assert seen[-1] == 100 and seen == sorted(seen), seen  # the bar only moves forward
    player = studio_run["video_player"]
    assert player["error"] is None and player["duration"] > 0, player
    assert (player["width"], player["height"]) == (64, 64), player
    with av.open(studio_run["video_download"]) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == 8
    assert (ARTIFACTS / "studio-video.png").stat().st_size > 10_000


@pytest.mark.slow
def test_video_studio_cancel_stops_the_job(studio_run) -> None:  # type: ignore[no-untyped-def]
    shown, job = studio_run["cancel_shown"], studio_run["cancel_job"]
    assert job["status"] == "cancelled" and job["progress"] < 1, job
    assert shown["status"] == "cancelled" and shown["percent"] < 100 and shown["text"] == "Cancelled.", shown
