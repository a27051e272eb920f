"""TwilioCalls against a local HTTP server that records requests and answers like Twilio's Calls API."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest

from telephony.twilio import twiml
from telephony.twilio.rest import TwilioApiError, TwilioCalls

ACCOUNT = "AC0123456789abcdef0123456789abcdef"
TOKEN = "secret-auth-token-0123456789abcd"
CALL = "CAfedcba9876543210fedcba9876543210"


class FakeTwilio:
    """Records each request (method, path, Basic auth, form fields) and answers with a Call resource."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.status = 201
        self.error: dict | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length).decode()
                auth = self.headers.get("Authorization", "")
                fake.requests.append(
                    {
                        "method": "POST",
                        "path": self.path,
                        "auth": base64.b64decode(auth.removeprefix("Basic ")).decode() if auth else "",
                        "content_type": self.headers.get("Content-Type"),
                        "form": parse_qs(body, keep_blank_values=True),
                    }
                )
                if fake.error is not None:
                    self._answer(fake.error["status"], fake.error["body"])
                    return
                sid = self.path.rsplit("/", 1)[-1].removesuffix(".json")
                sid = CALL if sid == "Calls" else sid
                self._answer(
                    fake.status,
                    {"sid": sid, "account_sid": ACCOUNT, "status": "queued", "direction": "outbound-api"},
                )

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTwilio]:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    server = FakeTwilio()
    yield server
    server.close()


@pytest.fixture
def calls(fake: FakeTwilio) -> TwilioCalls:
    return TwilioCalls(ACCOUNT, TOKEN, api_base_url=fake.url, timeout=5)


def form(request: dict) -> dict[str, str | list[str]]:
    return {k: v[0] if len(v) == 1 else v for k, v in request["form"].items()}


def test_place_call(fake: FakeTwilio, calls: TwilioCalls) -> None:
    doc = twiml.connect_stream("wss://voice.example.com/twilio/media", {"flow": "reminder"})
    sid = calls.place_call(
        "+15551230000", "+15559990000", doc, "https://voice.example.com/twilio/status", False
    )
    assert sid == CALL
    [request] = fake.requests
    assert request["path"] == f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
    assert request["auth"] == f"{ACCOUNT}:{TOKEN}"
    assert request["content_type"] == "application/x-www-form-urlencoded"
    fields = form(request)
    assert fields["To"] == "+15551230000"
    assert fields["From"] == "+15559990000"
    assert fields["Twiml"] == doc
    assert fields["StatusCallback"] == "https://voice.example.com/twilio/status"
    assert fields["StatusCallbackMethod"] == "POST"
    assert fields["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert "MachineDetection" not in fields and "AsyncAmd" not in fields


def test_place_call_with_machine_detection(fake: FakeTwilio, calls: TwilioCalls) -> None:
    calls.place_call(
        "+15551230000", "+15559990000", "<Response/>", "https://v.example.com/twilio/status", True
    )
    fields = form(fake.requests[0])
    assert fields["MachineDetection"] == "Enable"
    assert fields["AsyncAmd"] == "true"
    assert fields["AsyncAmdStatusCallback"] == "https://v.example.com/twilio/status"


def test_place_call_time_limit(fake: FakeTwilio, calls: TwilioCalls) -> None:
    calls.place_call("+1555", "+1666", "<Response/>", "https://v/s", time_limit_s=600)
    assert form(fake.requests[0])["TimeLimit"] == "600"


def test_update_call_with_transfer_twiml(fake: FakeTwilio, calls: TwilioCalls) -> None:
    doc = twiml.transfer("sip:desk@pbx.example.com", "Transferring you now.")
    calls.update_call("CA42", doc)
    [request] = fake.requests
    assert request["path"] == f"/2010-04-01/Accounts/{ACCOUNT}/Calls/CA42.json"
    assert form(request) == {"Twiml": doc}


def test_hang_up(fake: FakeTwilio, calls: TwilioCalls) -> None:
    calls.hang_up("CA42")
    [request] = fake.requests
    assert request["path"] == f"/2010-04-01/Accounts/{ACCOUNT}/Calls/CA42.json"
    assert form(request) == {"Status": "completed"}


def test_twilio_errors_become_twilio_api_error(fake: FakeTwilio, calls: TwilioCalls) -> None:
    fake.error = {
        "status": 400,
        "body": {
            "code": 21211,
            "message": "The 'To' number +1555 is not a valid phone number.",
            "status": 400,
        },
    }
    with pytest.raises(TwilioApiError) as info:
        calls.place_call("+1555", "+1666", "<Response/>", "https://v/s")
    assert (info.value.status, info.value.code) == (400, 21211)
    assert "not a valid phone number" in str(info.value)
    assert TOKEN not in str(info.value)


def test_unreachable_api_becomes_twilio_api_error() -> None:
    server = FakeTwilio()
    url = server.url
    server.close()  # nothing listens there any more
    calls = TwilioCalls(ACCOUNT, TOKEN, api_base_url=url, timeout=2)
    with pytest.raises(TwilioApiError) as info:
        calls.hang_up("CA42")
    assert info.value.status is None


def test_credentials_required_and_never_shown() -> None:
    with pytest.raises(ValueError):
        TwilioCalls(ACCOUNT, "")
    calls = TwilioCalls(ACCOUNT, TOKEN)
    assert TOKEN not in repr(calls)
