"""TwiML documents built with the twilio SDK."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from telephony.twilio import twiml

DECL = '<?xml version="1.0" encoding="UTF-8"?>'


def test_connect_stream() -> None:
    xml = twiml.connect_stream("wss://voice.example.com/twilio/media", {"flow": "support", "token": "abc123"})
    assert xml == (
        DECL + "<Response><Connect>"
        '<Stream url="wss://voice.example.com/twilio/media">'
        '<Parameter name="flow" value="support" /><Parameter name="token" value="abc123" />'
        "</Stream></Connect></Response>"
    )


def test_connect_stream_without_parameters_and_with_escaping() -> None:
    assert (
        twiml.connect_stream("wss://h/m")
        == DECL + '<Response><Connect><Stream url="wss://h/m" /></Connect></Response>'
    )
    xml = twiml.connect_stream("wss://h/m", {"caller": 'A & "B" <c>'})
    param = ET.fromstring(xml.removeprefix(DECL)).find("./Connect/Stream/Parameter")
    assert param is not None and param.get("value") == 'A & "B" <c>'


@pytest.mark.parametrize(
    "url",
    ["https://h/m", "/twilio/media", "wss://h/m?token=1", "wss://h/m#x", "wss:///m"],
)
def test_connect_stream_refuses_urls_twilio_would_fail(url: str) -> None:
    with pytest.raises(ValueError):
        twiml.connect_stream(url)


def test_connect_stream_accepts_ws_for_local_tests() -> None:
    assert '<Stream url="ws://127.0.0.1:8000/twilio/media" />' in twiml.connect_stream(
        "ws://127.0.0.1:8000/twilio/media"
    )


def test_connect_stream_parameter_length_limit() -> None:
    twiml.connect_stream("wss://h/m", {"k": "v" * 498})
    with pytest.raises(ValueError):
        twiml.connect_stream("wss://h/m", {"k": "v" * 499})


def test_reject_busy() -> None:
    assert twiml.reject_busy() == DECL + '<Response><Reject reason="busy" /></Response>'


def test_transfer_to_a_number() -> None:
    assert (
        twiml.transfer("+15551234567")
        == DECL + "<Response><Dial><Number>+15551234567</Number></Dial></Response>"
    )
    assert twiml.transfer("tel:+15551234567") == twiml.transfer("+15551234567")


def test_transfer_to_sip_with_hand_off_text() -> None:
    assert twiml.transfer("sip:agent@pbx.example.com", "Transferring you now.") == (
        DECL + "<Response><Say>Transferring you now.</Say>"
        "<Dial><Sip>sip:agent@pbx.example.com</Sip></Dial></Response>"
    )
    assert "<Sip>SIPS:a@b</Sip>" in twiml.transfer("SIPS:a@b")


def test_transfer_caller_id_and_empty_target() -> None:
    assert '<Dial callerId="+15550000000">' in twiml.transfer("+15551234567", caller_id="+15550000000")
    with pytest.raises(ValueError):
        twiml.transfer("  ")


def test_hang_up() -> None:
    assert twiml.hang_up() == DECL + "<Response><Hangup /></Response>"
    assert twiml.hang_up("Goodbye.") == DECL + "<Response><Say>Goodbye.</Say><Hangup /></Response>"
