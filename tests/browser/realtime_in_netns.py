"""Run inside a loopback-only network namespace (``unshare -n``): voxgate with an API key, and headless Chromium
running tests/browser/realtime_sample.html, a page written against OpenAI's documented browser WebRTC flow.

    unshare -n python tests/browser/realtime_in_netns.py OUTDIR MIC.wav

Playwright stands in for the page's web server: it serves the page at BASE/sample and answers the page's
``GET /token`` as the page's backend would, by asking voxgate for an ephemeral client secret with the API key
(which never reaches the page). Writes OUTDIR/realtime-results.json; tests/test_realtime_browser.py asserts on it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
from run_in_netns import BASE, run_pages
from run_in_netns import start_server as start_voxgate

API_KEY = "browser-test-key"
PAGE = Path(__file__).with_name("realtime_sample.html")


def start_server(data_dir: Path) -> subprocess.Popen[bytes]:
    return start_voxgate(data_dir, {"VOXGATE_API_KEY": API_KEY})


def token(route) -> None:  # type: ignore[no-untyped-def]
    """The page's backend: an ephemeral key for one session, minted with the API key."""
    body = {"expires_after": {"anchor": "created_at", "seconds": 600}, "session": {"type": "realtime"}}
    response = httpx.post(f"{BASE}/v1/realtime/client_secrets", json=body,
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)  # fmt: skip
    route.fulfill(status=response.status_code, content_type="application/json", body=response.text)


def sample(context, out: Path, results: dict) -> None:  # type: ignore[no-untyped-def]
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route(
        f"{BASE}/sample", lambda r: r.fulfill(status=200, content_type="text/html", body=PAGE.read_text())
    )
    page.route(f"{BASE}/token", token)
    page.goto(f"{BASE}/sample")
    page.click("#start")
    page.wait_for_function(
        "() => window.sample.state === 'failed' || window.sample.events.some(e => e.type === 'response.done')",
        timeout=120_000,
    )
    page.wait_for_timeout(2000)  # the answer's last audio is still arriving on the track
    events = page.evaluate("() => window.sample.events")
    results["types"] = [e["type"] for e in events]
    results["page_errors"] = page.evaluate("() => window.sample.errors")
    results["session_created"] = next((e["session"] for e in events if e["type"] == "session.created"), None)
    results["transcripts"] = [
        e["transcript"]
        for e in events
        if e["type"] == "conversation.item.input_audio_transcription.completed"
    ]
    results["responses"] = [e["response"] for e in events if e["type"] == "response.done"]
    results["inbound_audio"] = page.evaluate(
        """async () => {
            const stats = await window.sample.pc.getStats();
            for (const s of stats.values()) {
                if (s.type === 'inbound-rtp' && s.kind === 'audio')
                    return {energy: s.totalAudioEnergy || 0, packets: s.packetsReceived || 0,
                            seconds: s.totalSamplesDuration || 0};
            }
            return null;
        }"""
    )
    page.screenshot(path=str(out / "realtime-sample.png"), full_page=True)
    results["console_errors"] = errors


def main() -> int:
    return run_pages([sample], "realtime-results.json", start_server)


if __name__ == "__main__":
    sys.exit(main())
