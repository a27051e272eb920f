"""TwiML documents the gateway answers Twilio with, built with the twilio SDK (it escapes attributes and text).

- `connect_stream`: `<Connect><Stream>` makes a bidirectional Media Stream; Twilio runs no later verb until the
  WebSocket closes, so with nothing after `</Connect>` closing the socket ends the call
  (https://www.twilio.com/docs/voice/twiml/stream, https://www.twilio.com/docs/voice/twiml/connect).
- `reject_busy`, `transfer`, `hang_up`: call control, also used as live TwiML updates over the REST API.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from twilio.twiml.voice_response import Connect, Dial, Parameter, Stream, VoiceResponse

# Twilio: "The combined length of each <Parameter> name and value attributes must be under 500 characters."
MAX_PARAMETER_CHARS = 499


def connect_stream(stream_url: str, parameters: Mapping[str, str] | None = None) -> str:
    """`<Response><Connect><Stream url=...><Parameter name= value=/>...</Stream></Connect></Response>`.

    `stream_url` must be an absolute ws(s):// URL without a query string. Twilio connects only to wss://
    (ws:// is accepted for local tests against a simulator), and its `url` does not support query parameters
    (they can fail the handshake, error 31920): per-call values go in `parameters` and arrive in the `start`
    message's customParameters.
    """
    parts = urlsplit(stream_url)
    if parts.scheme not in ("wss", "ws") or not parts.netloc:
        raise ValueError("stream_url must be an absolute wss:// (or, for local tests, ws://) URL")
    if parts.query or parts.fragment:
        raise ValueError("stream_url must not have a query string; pass values as parameters")
    stream = Stream(url=stream_url)
    for name, value in (parameters or {}).items():
        if not name:
            raise ValueError("stream parameter names must not be empty")
        if len(name) + len(str(value)) > MAX_PARAMETER_CHARS:
            raise ValueError(f"stream parameter {name!r:.40}: name and value must be under 500 characters")
        stream.append(Parameter(name=name, value=str(value)))
    connect = Connect()
    connect.append(stream)
    response = VoiceResponse()
    response.append(connect)
    return response.to_xml()


def reject_busy() -> str:
    """`<Response><Reject reason="busy"/></Response>`: refuse the call (at capacity) without answering it."""
    response = VoiceResponse()
    response.reject(reason="busy")
    return response.to_xml()


def transfer(target: str, say: str | None = None, *, caller_id: str | None = None) -> str:
    """Hand the call over: `<Dial><Number>` for a phone number, `<Dial><Sip>` for a sip:/sips: URI.

    `say` is spoken first (`<Say>`), e.g. "Transferring you now." `caller_id` sets the `<Dial callerId>`.
    """
    target = target.strip()
    if not target:
        raise ValueError("transfer target is empty")
    response = VoiceResponse()
    if say:
        response.say(say)
    dial = Dial(caller_id=caller_id) if caller_id else Dial()
    scheme = target.split(":", 1)[0].lower() if ":" in target else ""
    if scheme in ("sip", "sips"):
        dial.sip(target)
    else:
        dial.number(target.removeprefix("tel:"))
    response.append(dial)
    return response.to_xml()


def hang_up(say: str | None = None) -> str:
    """`<Response><Hangup/></Response>`, with an optional `<Say>` before it."""
    response = VoiceResponse()
    if say:
        response.say(say)
    response.hangup()
    return response.to_xml()
