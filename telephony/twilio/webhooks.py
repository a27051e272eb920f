"""Twilio's webhooks: ``POST /twilio/voice`` (an incoming call) and ``POST /twilio/status`` (call progress)."""

from __future__ import annotations

import logging
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.state import app_state
from gateway.webhooks.publish import publish_call_status
from telephony.twilio import twiml
from telephony.twilio.control import PROVIDER_NAME, TwilioCallControl, twilio_gate, twilio_state
from telephony.twilio.signatures import public_ws_url

log = logging.getLogger("voxgate.twilio")

TWIML = "application/xml"
VOICE_PATH = "/twilio/voice"
STATUS_PATH = "/twilio/status"
MEDIA_PATH = "/twilio/media"
STATUS_DETAILS = ("AnsweredBy", "CallDuration")  # kept with each status in the call's history


async def _checked_form(request: Request) -> tuple[dict[str, str], Response | None]:
    form = await request.form()
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    refusal = twilio_gate(app_state(request), path, request.headers, form)
    if refusal is not None:
        log.warning("twilio webhook %s refused: %s", request.url.path, refusal)
        return {}, JSONResponse({"detail": refusal}, status_code=403)
    return {k: str(v) for k, v in form.items()}, None


async def incoming_call(request: Request) -> Response:
    """Answer with TwiML that connects the call's audio to ``/twilio/media`` (or rejects it when busy)."""
    form, refused = await _checked_form(request)
    if refused is not None:
        return refused
    state = app_state(request)
    sessions = state.sessions
    # Streams still waiting to start hold places too: answering into a full gateway would drop the call.
    if not state.ready.is_set() or len(sessions.live) + sessions.reserved >= sessions.max_sessions:
        return Response(twiml.reject_busy(), media_type=TWIML)
    settings = state.settings
    called = form.get("To", "")
    flow = settings.twilio_number_flows.get(called) or settings.twilio_default_flow or ""
    parameters = {"from": form.get("From", ""), "to": called, "call_sid": form.get("CallSid", "")}
    if flow:
        parameters["flow"] = flow
    # Answered here: the call's media stream may now hang it up or transfer it (see OwnedCalls).
    twilio_state(state).owned.add(form.get("CallSid", ""))
    return Response(twiml.connect_stream(media_url(request), parameters), media_type=TWIML)


async def call_status(request: Request) -> Response:
    """Record Twilio's status callback (ringing, in-progress, completed, AnsweredBy, ...) against the call."""
    form, refused = await _checked_form(request)
    if refused is not None:
        return refused
    store = app_state(request).store
    sid = form.get("CallSid")
    if not sid or store is None:
        return JSONResponse({"detail": "CallSid is required"}, status_code=422)
    direction = "outbound" if form.get("Direction", "").startswith("outbound") else "inbound"
    await store.record_call_status(
        sid,
        form.get("CallStatus", ""),
        provider=PROVIDER_NAME,
        details={k: form[k] for k in STATUS_DETAILS if k in form},
        defaults={"direction": direction, "from_number": form.get("From"), "to_number": form.get("To")},
        now=time.time(),
    )
    events, status, duration = app_state(request).events, form.get("CallStatus", ""), form.get("CallDuration")
    await publish_call_status(events, store, provider=PROVIDER_NAME, sid=sid, status=status, call_duration=duration)
    if form.get("AnsweredBy", "").startswith(("machine", "fax")):
        await _leave_voicemail(request, sid)
    return Response(status_code=204)


async def _leave_voicemail(request: Request, sid: str) -> None:
    """Answering-machine detection said "machine": say the call's voicemail message (if any), hang up."""
    call = await app_state(request).store.get_call(sid)
    message = ((call or {}).get("extra") or {}).get("voicemail_message")
    await TwilioCallControl(app_state(request), sid).hang_up(say=message)


def media_url(request: Request) -> str:
    """The URL Twilio should stream to: under the public URL setting, else this request's own host."""
    public = app_state(request).settings.public_url or f"{request.url.scheme}://{request.url.netloc}"
    return public_ws_url(public, MEDIA_PATH)
