"""X-Twilio-Signature checks for webhooks and the Media Streams upgrade, with real SDK-computed signatures."""

from __future__ import annotations

import logging

import pytest
from twilio.request_validator import RequestValidator

from telephony.twilio.signatures import TwilioSignatureChecker, public_ws_url

TOKEN = "12345678901234567890123456789012"
PUBLIC = "https://voice.example.com"
FORM = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}


def sign(url: str, params: dict | None = None, token: str = TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params or {})


@pytest.fixture
def checker() -> TwilioSignatureChecker:
    return TwilioSignatureChecker(TOKEN, PUBLIC)


def test_webhook_valid(checker: TwilioSignatureChecker) -> None:
    signature = sign("https://voice.example.com/twilio/voice", FORM)
    assert checker.check_webhook("/twilio/voice", FORM, signature)


def test_webhook_with_query_string(checker: TwilioSignatureChecker) -> None:
    signature = sign("https://voice.example.com/twilio/status?call=7", FORM)
    assert checker.check_webhook("/twilio/status?call=7", FORM, signature)
    assert not checker.check_webhook("/twilio/status", FORM, signature)


def test_webhook_missing_or_wrong(checker: TwilioSignatureChecker) -> None:
    good = sign("https://voice.example.com/twilio/voice", FORM)
    assert not checker.check_webhook("/twilio/voice", FORM, None)
    assert not checker.check_webhook("/twilio/voice", FORM, "")
    assert not checker.check_webhook("/twilio/voice", FORM, "bm90IGEgc2lnbmF0dXJl")
    assert not checker.check_webhook("/twilio/voice", {**FORM, "Digits": "9"}, good)  # tampered form
    assert not checker.check_webhook("/twilio/other", FORM, good)  # another path
    other_token = sign("https://voice.example.com/twilio/voice", FORM, token="x" * 32)
    assert not checker.check_webhook("/twilio/voice", FORM, other_token)


def test_webhook_behind_a_proxy_uses_the_public_url() -> None:
    # Twilio signed the public URL; the app sees http://10.0.0.5:8000/twilio/voice behind the proxy
    signature = sign("https://voice.example.com/twilio/voice", FORM)
    assert TwilioSignatureChecker(TOKEN, "https://voice.example.com/").check_webhook(
        "/twilio/voice", FORM, signature
    )
    assert not TwilioSignatureChecker(TOKEN, "http://10.0.0.5:8000").check_webhook(
        "/twilio/voice", FORM, signature
    )


def test_public_url_with_a_path_prefix() -> None:
    checker = TwilioSignatureChecker(TOKEN, "https://example.com/voxgate/")
    assert checker.webhook_url("/twilio/voice") == "https://example.com/voxgate/twilio/voice"
    assert checker.websocket_url("twilio/media") == "wss://example.com/voxgate/twilio/media"
    assert checker.check_websocket("/twilio/media", sign("wss://example.com/voxgate/twilio/media"))


def test_webhook_with_a_multidict() -> None:
    class MultiDict(dict):
        def getlist(self, key: str) -> list[str]:
            return [self[key]]

    signature = sign("https://voice.example.com/twilio/voice", FORM)
    assert TwilioSignatureChecker(TOKEN, PUBLIC).check_webhook("/twilio/voice", MultiDict(FORM), signature)


def test_websocket_is_signed_over_the_wss_url(checker: TwilioSignatureChecker) -> None:
    signature = sign("wss://voice.example.com/twilio/media")
    assert checker.check_websocket("/twilio/media", signature)
    # a server validating the https:// URL it sees would compute another signature
    assert not checker.check_websocket("/twilio/media", sign("https://voice.example.com/twilio/media"))


def test_websocket_missing_or_wrong(checker: TwilioSignatureChecker) -> None:
    assert not checker.check_websocket("/twilio/media", None)
    assert not checker.check_websocket("/twilio/media", "")
    assert not checker.check_websocket("/twilio/media", sign("wss://voice.example.com/twilio/other"))
    assert not checker.check_websocket(
        "/twilio/media", sign("wss://voice.example.com/twilio/media", token="y" * 32)
    )
    assert not checker.check_websocket(
        "/twilio/media", sign("wss://voice.example.com/twilio/media", {"a": "b"})
    )


def test_websocket_with_query_string_and_port(checker: TwilioSignatureChecker) -> None:
    assert checker.check_websocket("/twilio/media?x=1", sign("wss://voice.example.com/twilio/media?x=1"))
    on_port = TwilioSignatureChecker(TOKEN, "https://voice.example.com:8443")
    assert on_port.check_websocket("/twilio/media", sign("wss://voice.example.com:8443/twilio/media"))


def test_local_http_public_url_maps_to_ws() -> None:
    assert public_ws_url("http://127.0.0.1:8000", "/twilio/media") == "ws://127.0.0.1:8000/twilio/media"
    assert (
        public_ws_url("https://voice.example.com", "/twilio/media") == "wss://voice.example.com/twilio/media"
    )
    checker = TwilioSignatureChecker(TOKEN, "http://127.0.0.1:8000")
    assert checker.check_websocket("/twilio/media", sign("ws://127.0.0.1:8000/twilio/media"))


@pytest.mark.parametrize("url", ["voice.example.com", "ftp://h", "https://"])
def test_bad_public_url(url: str) -> None:
    with pytest.raises(ValueError):
        TwilioSignatureChecker(TOKEN, url)


def test_token_required_and_never_shown(
    checker: TwilioSignatureChecker, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError):
        TwilioSignatureChecker("", PUBLIC)
    caplog.set_level(logging.DEBUG)
    checker.check_webhook("/twilio/voice", FORM, "bad")
    checker.check_websocket("/twilio/media", "bad")
    assert TOKEN not in repr(checker) and TOKEN not in str(vars(checker))
    assert TOKEN not in caplog.text
