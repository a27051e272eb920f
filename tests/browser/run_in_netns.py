"""Run inside a network namespace that has only loopback (``unshare -n``): a real gateway process and
headless Debian Chromium (driven by Playwright) with a WAV file as its microphone.

    unshare -n python tests/browser/run_in_netns.py OUTDIR MIC.wav

Writes OUTDIR/results.json and screenshots; the pytest side (tests/test_browser.py) asserts on them. Every
socket here is 127.0.0.1, as ../shared/BROWSER_TESTS.md recommends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

CHROMIUM = "/usr/bin/chromium"
PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"


def chromium_args(mic: str) -> list[str]:
    return [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}%noloop",
        "--allow-loopback-in-peer-connection",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ]


def start_server(data_dir: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``voxgate serve`` on PORT (``extra_env``: more settings), once /health/ready answers."""
    env = {
        **os.environ,
        "VOXGATE_PORT": str(PORT),
        "VOXGATE_DATA_DIR": str(data_dir),
        "VOXGATE_WEBRTC_HOST_ADDRESSES": "127.0.0.1",
        "VOXGATE_VAD__END_OF_TURN_MS": "1000",  # a read sentence's pauses are not turn ends
        # terminate() must stop it at once: a page still connected gets no drain (tests/test_drain.py has it)
        "VOXGATE_DRAIN_TIMEOUT_S": "0",
        "VOXGATE_DRAIN_GOODBYE": "",
        **(extra_env or {}),
    }
    log = open(data_dir / "server.log", "wb")  # noqa: SIM115 (lives as long as the server)
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{BASE}/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not get ready")


INBOUND_AUDIO_JS = """async () => {
    const pc = window.voxgate && window.voxgate.pc;
    if (!pc) return null;
    const stats = await pc.getStats();
    for (const s of stats.values()) {
        if (s.type === 'inbound-rtp' && s.kind === 'audio')
            return {energy: s.totalAudioEnergy || 0, packets: s.packetsReceived || 0};
    }
    return null;
}"""


def playground(context, out: Path, results: dict) -> None:  # type: ignore[no-untyped-def]
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{BASE}/")
    page.wait_for_selector("#connect")
    page.click("#connect")
    page.wait_for_selector(".user-turn", timeout=60_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.agent-turn')].some(e => e.textContent.trim().length > 3)",
        timeout=60_000,
    )
    results["user_turns"] = page.eval_on_selector_all(".user-turn", "els => els.map(e => e.textContent)")
    results["agent_turns"] = page.eval_on_selector_all(".agent-turn", "els => els.map(e => e.textContent)")
    # The answer's text arrives before its audio; on a loaded machine the first spoken frame can come seconds
    # later (WebRTC sends silence meanwhile), so wait for the audio itself rather than a fixed time.
    deadline = time.monotonic() + 30
    while True:
        results["inbound_audio"] = page.evaluate(INBOUND_AUDIO_JS)
        heard = results["inbound_audio"] and results["inbound_audio"]["energy"] > 0.001
        if heard or time.monotonic() > deadline:
            break
        page.wait_for_timeout(250)
    results["transport"] = page.evaluate("() => window.voxgate && window.voxgate.transport")
    results["latency_text"] = page.inner_text("#latency")
    page.screenshot(path=str(out / "playground.png"), full_page=True)
    page.click("#disconnect")
    page.wait_for_timeout(500)
    results["playground_console_errors"] = errors


def builder(context, out: Path, results: dict) -> None:  # type: ignore[no-untyped-def]
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{BASE}/flows")
    page.wait_for_selector("#flow-list")
    page.wait_for_function(
        "() => document.querySelector('#flow-list').textContent.includes('booking')", timeout=15_000
    )
    flow = {
        "id": "browser-made",
        "name": "Made in the browser",
        "start": "hello",
        "nodes": [
            {"id": "hello", "type": "say", "text": "Hello from the builder.", "next": "bye"},
            {"id": "bye", "type": "end", "text": "Goodbye.", "reason": "done"},
        ],
    }
    page.click("#new-flow")
    page.click("#tab-json")
    broken = {**flow, "start": "nowhere"}
    page.fill("#json-editor", json.dumps(broken))
    page.click("#validate-flow")
    page.wait_for_function(
        "() => document.querySelector('#flow-errors').textContent.trim().length > 0", timeout=15_000
    )
    results["builder_errors_shown"] = page.inner_text("#flow-errors")
    page.fill("#json-editor", json.dumps(flow))
    page.click("#json-apply")
    page.click("#save-flow")
    deadline = time.monotonic() + 15
    saved = None
    while time.monotonic() < deadline:
        response = httpx.get(f"{BASE}/v1/flows/browser-made")
        if response.status_code == 200:
            saved = response.json()
            break
        time.sleep(0.3)
    results["builder_saved"] = saved
    page.wait_for_timeout(500)
    page.click("#tab-graph")
    page.wait_for_timeout(300)
    results["graph_nodes"] = page.evaluate("() => document.querySelectorAll('#graph [data-node]').length")
    page.screenshot(path=str(out / "flow-builder.png"), full_page=True)
    results["builder_console_errors"] = errors


def run_pages(steps: list[Callable[..., None]], results_file: str, start: Callable[[Path], Any]) -> int:
    """Loopback up, a voxgate from ``start``, one headless Chromium with the fake microphone (argv[2]); each
    step gets (context, out dir, results), and the results land in argv[1]/``results_file``."""
    out, mic = Path(sys.argv[1]), sys.argv[2]
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = start(Path(tmp))
        try:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:
                context = p.chromium.launch_persistent_context(
                    str(Path(tmp) / "profile"),
                    executable_path=CHROMIUM,
                    headless=True,
                    args=chromium_args(mic),
                )
                try:
                    for step in steps:
                        step(context, out, results)
                finally:
                    context.close()
        except Exception:
            results["error"] = traceback.format_exc()
        finally:
            server.terminate()
            server.wait(timeout=30)
            results["server_log_tail"] = (Path(tmp) / "server.log").read_text()[-3000:]
    (out / results_file).write_text(json.dumps(results, indent=2))
    return 0


def main() -> int:
    return run_pages([playground, builder], "results.json", start_server)


if __name__ == "__main__":
    sys.exit(main())
