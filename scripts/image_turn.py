"""One typed turn over ``/v1/voice`` against a running voxgate: the container image check's last step.

    python scripts/image_turn.py --url http://127.0.0.1:8000 --token ADMIN_TOKEN

First the API must refuse a caller without a key (auth is on beyond loopback). Then the admin token buys a
one-use session token (``POST /v1/sessions/token``), as a browser would, so the WebSocket
URL never carries the token itself. Then the turn: ``input_text`` in, and the answer's text and audio out.
Exits 0 when the answer came with audio, 1 with the reason otherwise. Runs on the host's venv
(``gateway/client.py``) or, piped to ``python3 -``, inside the image, which has the same package.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.error
import urllib.request

from gateway.client import VoiceClient


def check_auth_is_on(base_url: str) -> None:
    """Listening beyond loopback, the server must refuse the API to a caller without a key."""
    try:
        with urllib.request.urlopen(f"{base_url}/v1/sessions", timeout=30) as response:
            raise SystemExit(f"GET /v1/sessions without a key answered {response.status}: auth is off")
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            raise SystemExit(f"GET /v1/sessions without a key answered {exc.code}, not 401") from None


def session_token(base_url: str, admin_token: str) -> str:
    """A one-use WebSocket token from the server, paid for with the admin token."""
    request = urllib.request.Request(
        f"{base_url}/v1/sessions/token",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return str(json.load(response)["token"])
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"POST /v1/sessions/token answered {exc.code}: {exc.read()[:300]!r}") from None


async def typed_turn(base_url: str, admin_token: str, text: str, timeout_s: float) -> None:
    check_auth_is_on(base_url)
    token = session_token(base_url, admin_token)
    ws_url = base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    started = time.monotonic()
    async with VoiceClient(f"{ws_url}/v1/voice?token={token}") as client:
        created = await client.wait_for("session.created", timeout=30)
        await client.send_event({"type": "input_text", "text": text})
        done = await client.wait_for("response.text.done", timeout=timeout_s)
        audio_done = await client.wait_for_response("response.audio.done", done["response_id"], timeout_s)
        audio = client.received.audio_bytes()
    errors = client.received.of("error")
    if errors:
        raise SystemExit(f"the session reported errors: {errors}")
    if not done.get("text", "").strip():
        raise SystemExit(f"the answer has no text: {done}")
    if not audio or audio_done.get("audio_ms", 0) <= 0:
        raise SystemExit(f"the answer came without audio: {len(audio)} bytes, {audio_done}")
    print(
        f"typed turn answered in {time.monotonic() - started:.1f} s (session {created['session_id']}): "
        f"{done['text']!r}, {audio_done['audio_ms']} ms of audio ({len(audio)} bytes)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the server's base URL, http://host:port")
    parser.add_argument("--token", required=True, help="the server's admin token (VOXGATE_ADMIN_TOKEN)")
    parser.add_argument("--text", default="Say hello.")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the answer")
    args = parser.parse_args()
    try:
        asyncio.run(typed_turn(args.url.rstrip("/"), args.token, args.text, args.timeout))
    except (TimeoutError, ConnectionError, OSError) as exc:
        print(f"typed turn failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
