"""Run inside a loopback-only network namespace (``unshare -n``): voxgate with an API key and a tiny diffusers
pipeline as its media engine, and headless Chromium on the studio page (speech, image and video tabs).

    STUDIO_IMAGE_MODEL=DIR STUDIO_VIDEO_MODEL=DIR unshare -n python tests/browser/studio_in_netns.py OUTDIR MIC.wav

The models are folders tests/media_tiny.py saved. Writes OUTDIR/studio-results.json, the screenshots and the
files the page let the user download; tests/test_studio_browser.py asserts on them.
"""

from __future__ import annotations

import base64
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from run_in_netns import BASE, run_pages
from studio_servers import API_KEY, AUTH, TIMINGS, VIDEO_BASE, Servers

TTS_TEXT = "The studio speaks this sentence for the browser test."
IMAGE = {"prompt": "a red lighthouse at dusk", "width": 64, "height": 48, "steps": 2}  # no seed: the server's
VIDEO = {"prompt": "waves on a beach", "width": 64, "height": 64, "frames": 8, "steps": 2, "seed": 7}
SERVERS = Servers()


def timed(step):  # type: ignore[no-untyped-def]
    def run(context, out: Path, results: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
        started = time.monotonic()
        try:
            step(context, out, results)
        finally:
            TIMINGS[step.__name__] = round(time.monotonic() - started, 1)
            results["timings"] = TIMINGS

    return run


def open_studio(context, base: str, tab: str, errors: list[str]):  # type: ignore[no-untyped-def]
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base}/studio?api_key={API_KEY}#{tab}")
    page.wait_for_selector(f"#studio-{tab}:not(.hidden)")
    return page


def tts(context, out: Path, results: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    errors: list[str] = []
    page = open_studio(context, BASE, "tts", errors)
    page.wait_for_function("() => document.querySelectorAll('#tts-voice option').length > 0")
    results["tts_voices"] = page.eval_on_selector_all("#tts-voice option", "els => els.map(e => e.value)")
    requests: list[Any] = []
    page.on(
        "request", lambda r: requests.append(r.post_data_json) if r.url.endswith("/v1/audio/speech") else None
    )
    page.fill("#tts-text", TTS_TEXT)
    page.select_option("#tts-format", "wav")
    page.eval_on_selector("#tts-speed", "e => { e.value = '1.25'; e.dispatchEvent(new Event('input')); }")
    page.click("#tts-speak")
    # Played: the element knows its length and its clock has moved.
    page.wait_for_function(
        "() => { const a = document.querySelector('#tts-audio');"
        " return a.duration > 0 && Number.isFinite(a.duration) && a.currentTime > 0.2; }",
        timeout=60_000,
    )
    results["tts_audio"] = page.eval_on_selector(
        "#tts-audio",
        "a => ({duration: a.duration, currentTime: a.currentTime, paused: a.paused, error: a.error})",
    )
    results["tts_request"] = requests[-1] if requests else None
    with page.expect_download() as download:
        page.click("#tts-download")
    saved = out / "studio-speech.wav"
    download.value.save_as(saved)
    results["tts_download"] = {"name": download.value.suggested_filename, "path": str(saved)}
    # Heard back by the same server's Whisper: the file holds the words, not just energy.
    with saved.open("rb") as f:
        heard = httpx.post(f"{BASE}/v1/audio/transcriptions", headers=AUTH, timeout=60,
                           files={"file": ("speech.wav", f, "audio/wav")}, data={"model": "whisper-1"})  # fmt: skip
    results["tts_heard"] = heard.json().get("text") if heard.status_code == 200 else heard.text
    results["tts_meta"] = page.inner_text("#tts-meta")
    page.screenshot(path=str(out / "studio-speech.png"), full_page=True)
    results["tts_console_errors"] = errors
    page.close()


def generated(page, count: int) -> None:  # type: ignore[no-untyped-def]
    """Press Generate and wait for the gallery to hold ``count`` pictures; an error shown instead fails."""
    page.click("#image-generate")
    page.wait_for_function(
        "n => document.querySelectorAll('#image-gallery figure img').length === n"
        " || document.querySelector('#image-status').textContent.includes('HTTP')",
        arg=count,
        timeout=90_000,
    )
    shown = page.eval_on_selector_all("#image-gallery figure img", "imgs => imgs.length")
    if shown != count:
        raise RuntimeError(f"image studio: {page.inner_text('#image-status')}")


def image(context, out: Path, results: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    errors: list[str] = []
    page = open_studio(context, BASE, "image", errors)
    page.fill("#image-prompt", IMAGE["prompt"])
    for field in ("width", "height", "steps"):
        page.fill(f"#image-{field}", str(IMAGE[field]))
    page.fill("#image-seed", "")
    generated(page, 1)
    # "Use seed" puts the seed the server reported into the form: a second run from it is the same picture.
    page.click("#image-gallery figure button")
    generated(page, 2)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#image-gallery img')].every(i => i.complete)"
    )
    results["image_gallery"] = page.eval_on_selector_all(
        "#image-gallery figure",
        """figs => figs.map(f => { const i = f.querySelector('img');
            return {width: i.naturalWidth, height: i.naturalHeight, seed: f.dataset.seed,
                    caption: f.querySelector('figcaption').textContent, src_prefix: i.src.slice(0, 22)}; })""",
    )
    sources = page.eval_on_selector_all("#image-gallery img", "imgs => imgs.map(i => i.src)")
    for i, src in enumerate(sources):
        if src.startswith("data:image/png;base64,"):
            (out / f"studio-image-{i}.png").write_bytes(base64.b64decode(src.split(",", 1)[1]))
    results["image_status"] = page.inner_text("#image-status")
    page.screenshot(path=str(out / "studio-image.png"), full_page=True)
    results["image_console_errors"] = list(errors)
    # More steps than media_max_steps (100) but within the field's own bound: the server's 422 is shown.
    page.fill("#image-steps", "200")
    page.click("#image-generate")
    page.wait_for_function("() => document.querySelector('#image-status').textContent.includes('HTTP')")
    results["image_refused"] = page.inner_text("#image-status")
    results["image_refused_console"] = errors[len(results["image_console_errors"]) :]
    results["image_gallery_after_refusal"] = page.eval_on_selector_all(
        "#image-gallery figure", "f => f.length"
    )
    page.close()


def video(context, out: Path, results: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    try:
        video_page(context, VIDEO_BASE if SERVERS.second else BASE, out, results)
    except Exception:
        if SERVERS.second_log is not None:
            results["video_server_log_tail"] = SERVERS.second_log.read_text()[-3000:]
        raise


def video_page(context, base: str, out: Path, results: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    errors: list[str] = []
    page = open_studio(context, base, "video", errors)
    # Every value the progress bar shows, as it shows it.
    page.evaluate(
        """() => { const bar = document.querySelector('#video-progress'); window.progressSeen = [];
            new MutationObserver(() => window.progressSeen.push(Number(bar.getAttribute('aria-valuenow'))))
              .observe(bar, {attributes: true, attributeFilter: ['aria-valuenow']}); }"""
    )
    results["video_can_play_h264"] = page.evaluate(
        "() => document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.42E01E\"')"
    )
    page.fill("#video-prompt", VIDEO["prompt"])
    for field in ("width", "height", "frames", "steps", "seed"):
        page.fill(f"#video-{field}", str(VIDEO[field]))
    page.click("#video-generate")
    page.wait_for_function(
        "() => { const s = document.querySelector('#video-progress').dataset.status;"
        " return s === 'failed' || s === 'cancelled' || document.querySelector('#video-player').readyState >= 1"
        " || /^(Could not|Lost|HTTP)/.test(document.querySelector('#video-status').textContent); }",
        timeout=120_000,
    )
    results["video_progress_seen"] = page.evaluate("() => window.progressSeen")
    results["video_progress_final"] = page.get_attribute("#video-progress", "aria-valuenow")
    results["video_bar_width"] = page.eval_on_selector("#video-progress-bar", "b => b.style.width")
    results["video_status"] = page.inner_text("#video-status")
    results["video_player"] = page.eval_on_selector(
        "#video-player",
        "v => ({duration: v.duration, width: v.videoWidth, height: v.videoHeight, ready: v.readyState,"
        " error: v.error && v.error.message})",
    )
    job_id = page.inner_text("#video-job-id").strip()
    results["video_job_id"] = job_id
    if results["video_player"]["ready"] >= 1:
        with page.expect_download() as download:
            page.click("#video-download")
        saved = out / "studio-video.mp4"
        download.value.save_as(saved)
        results["video_download"] = str(saved)
    if job_id:
        job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=AUTH, timeout=10)
        results["video_job"] = job.json()
    page.screenshot(path=str(out / "studio-video.png"), full_page=True)
    cancel(page, base, results)
    results["video_console_errors"] = errors
    page.close()


def cancel(page, base: str, results: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    """A long job (100 steps), cancelled with the page's button once it runs: it ends cancelled, short of 100%."""
    page.fill("#video-steps", "100")
    page.click("#video-generate")
    page.wait_for_function(
        "() => document.querySelector('#video-progress').dataset.status === 'running'", timeout=60_000
    )
    page.click("#video-cancel")
    page.wait_for_function(
        "() => ['succeeded', 'failed', 'cancelled'].includes(document.querySelector('#video-progress').dataset.status)",
        timeout=60_000,
    )
    results["cancel_shown"] = {
        "status": page.get_attribute("#video-progress", "data-status"),
        "percent": int(page.get_attribute("#video-progress", "aria-valuenow") or -1),
        "text": page.inner_text("#video-status"),
    }
    job_id = page.inner_text("#video-job-id").strip()
    results["cancel_job"] = httpx.get(f"{base}/v1/jobs/{job_id}", headers=AUTH, timeout=10).json()


def main() -> int:
    return run_pages([timed(tts), timed(image), timed(video)], "studio-results.json", SERVERS.start)


if __name__ == "__main__":
    sys.exit(main())
