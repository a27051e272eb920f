"""The HTTP and WebSocket edge: who may reach the routes, and how much they may send (docs/api.md).

A pure ASGI middleware, so that a body is counted while it streams in rather than buffered first (Starlette's
``BaseHTTPMiddleware`` would buffer it). For every request and WebSocket upgrade, in order:

1. ``Host`` must be a name this server answers to when it listens on loopback: a page on ``evil.example`` that
   points its DNS at 127.0.0.1 (DNS rebinding) still sends ``Host: evil.example``.
2. ``Origin``, when a browser sends one, must be this server's own or one of ``allowed_origins``: a web page
   the user happens to visit must not drive a server that has no API key.
3. Every route needs the scope it declared (``scoped``, gateway/auth.py): the caller is resolved from
   ``Authorization: Bearer`` (HTTP and WebSocket), a one-use ``?token=`` (WebSocket) or a Realtime client
   secret, and put in ``scope["voxgate.principal"]`` (``principal_of``); 401 without a valid key, 403 for a
   key without the scope. A key in the URL is refused with a message that says what to do instead (URLs end
   up in logs).
4. A body sent to ``/v1/`` must be declared JSON: a browser sends ``text/plain`` across origins without asking
   first (a CORS "simple request"), ``application/json`` never. The audio upload routes (``UPLOAD_PATHS``,
   OpenAI's multipart API) also take ``multipart/form-data``; the Origin check above still guards them.
5. A body longer than its route's limit is refused with 413: up front by its ``Content-Length``, else while
   it streams in, so that no more than the limit is ever read.

HTTP refusals are ``{"detail": ...}`` answers. A refused WebSocket is accepted, sent one ``error`` event and
closed with 1008, like the voice route's own refusals: a browser's script sees neither an HTTP status nor a
body on a failed upgrade, only "connection failed".

The Host and Origin policies of steps 1 and 2, and the CORS answers for ``allowed_origins``, are in
gateway/http_origin.py.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import Auth
from gateway.http_origin import (
    HostPolicy,
    Origin,
    OriginPolicy,
    is_preflight,
    parse_origin,
    preflight_answer,
    with_cors,
)
from gateway.settings import Settings

log = logging.getLogger("voxgate.edge")

# Bodies that are forms or SDP, not JSON documents: Twilio's webhooks and WebRTC offers.
SMALL_BODY_PATHS = frozenset({"/twilio/voice", "/twilio/status", "/v1/webrtc/offer", "/v1/realtime/calls"})
# Routes that take an SDP offer (raw or multipart, not JSON): the Realtime API's WebRTC call, to which a browser
# brings an ephemeral key (gateway/realtime/calls.py).
SDP_PATHS = frozenset({"/v1/realtime/calls"})
# Routes that take an uploaded audio file as multipart/form-data, as OpenAI's audio API does: up to
# speech.max_upload_bytes rather than the JSON limit (openai_audio.py; chat_api.py: /v1/voice-chat, JSON too).
UPLOAD_PATHS = frozenset(
    {
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/audio/vad",
        "/v1/voice-chat",
        "/api/v1/tts/clone",
    }
)
# The media routes that take an uploaded image (and mask) as multipart/form-data (gateway/media): up to twice
# media_max_upload_mb. The studio API's /image/ and /video/ routes are guarded like /v1/ (key, JSON).
MEDIA_UPLOAD_PATHS = frozenset({"/image/edit", "/video/image-to-video", "/v1/images/edits", "/v1/videos"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
CLOSE_POLICY = 1008
QUOTE_CHARS = 80  # refusals quote at most this much of what they refuse


@dataclass(frozen=True)
class Refusal:
    """Why a request is turned away: its HTTP status, and a code and text for a WebSocket ``error`` event."""

    status: int
    code: str
    detail: str
    headers: tuple[tuple[str, str], ...] = ()

    def response(self) -> JSONResponse:
        body: dict[str, object] = {"detail": self.detail}
        if self.code in ("unauthorized", "forbidden"):
            # OpenAI-shaped clients (the Realtime and audio APIs' SDKs) read ``error.code`` and ``error.message``.
            body["error"] = {"type": "invalid_request_error", "code": self.code, "message": self.detail}
        return JSONResponse(body, status_code=self.status, headers=dict(self.headers))


def _quote(value: str) -> str:
    return repr(value if len(value) <= QUOTE_CHARS else value[:QUOTE_CHARS] + "...")


def _has_body(headers: Headers) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "0").strip() not in ("", "0")


def _is_api(path: str) -> bool:
    """The API routes: ``/v1/``, ``/api/v1/`` where the model-microservice API keeps clone and design, and the
    studio API's ``/image/`` and ``/video/`` (media jobs)."""
    return path.startswith(("/v1/", "/api/v1/", "/image/", "/video/"))


def _is_multipart(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "multipart/form-data"


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _content_type_refusal(method: str, headers: Headers, upload: bool = False) -> Refusal | None:
    content_type = headers.get("content-type")
    if upload and content_type is not None and _is_multipart(content_type):
        return None
    has_body = _has_body(headers)
    if not has_body and (content_type is None or method not in BODY_METHODS):
        return None  # nothing to declare: POST /v1/sessions/token, DELETE, a GET naming a type
    if content_type is not None and _is_json(content_type):
        return None
    shown = "none" if content_type is None else _quote(content_type)
    if upload:
        return Refusal(415, "unsupported_media_type", f"send the file as multipart/form-data (got {shown})")
    return Refusal(
        415,
        "unsupported_media_type",
        f"send the body as JSON with 'Content-Type: application/json' (got {shown})",
    )


def _too_large(limit: int, setting: str) -> Refusal:
    return Refusal(
        413,
        "body_too_large",
        f"the request body is larger than {limit} bytes, this route's limit ({setting})",
        headers=(("connection", "close"),),
    )


class _BodyTooLarge(Exception):
    """Raised from ``receive`` once a streamed body passes its limit, so that the route reads no more."""


class HttpGuard:
    """Pure ASGI middleware in front of every route: Host, Origin, API key, JSON content type and body size
    checks (see the module docstring), and CORS answers for ``allowed_origins``."""

    def __init__(self, app: ASGIApp, settings: Settings, auth: Auth) -> None:
        self.app = app
        self.settings = settings
        self.auth = auth  # read on every request: tests and operators may change the key while serving
        self.hosts = HostPolicy(settings.allowed_hosts, settings.host, settings.public_url)
        self.origins = OriginPolicy(settings.allowed_origins, settings.public_url)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # -- checks ------------------------------------------------------------------------------------------------

    def _browser_refusal(self, scope: Scope, headers: Headers) -> tuple[Refusal | None, Origin | None]:
        """A Host or Origin refusal, else the request's foreign (but allowed) origin, if it has one."""
        host = headers.get("host")
        if not self.hosts.allows(host):
            detail = (
                f"this server does not answer to Host {_quote(host or '')}: add the name to allowed_hosts"
            )
            return self._logged(scope, Refusal(403, "host_not_allowed", detail)), None
        raw = headers.get("origin")
        if raw is None:
            return None, None  # not sent by a browser's script: curl, SDKs, Twilio
        origin = parse_origin(raw)
        if origin is not None and self.origins.is_same_origin(origin, host):
            return None, None
        if origin is not None and self.origins.allows_cross_origin(origin):
            return None, origin
        if origin is None and self.origins.any:
            return None, None
        detail = f"web pages from {_quote(raw)} may not call this server: add the origin to allowed_origins"
        return self._logged(scope, Refusal(403, "origin_not_allowed", detail)), None

    def _api_refusal(self, scope: Scope, headers: Headers) -> Refusal | None:
        """The check for HTTP routes under /v1/ once the caller passed: a JSON content type."""
        upload = scope["path"] in UPLOAD_PATHS or scope["path"] in MEDIA_UPLOAD_PATHS
        return _content_type_refusal(scope["method"], headers, upload=upload)

    async def _authorize(self, scope: Scope) -> Refusal | None:
        """The caller and its scope (gateway/auth.py); the principal goes in ``scope`` when admitted."""
        denied = await self.auth.admit(scope, api_path=_is_api(scope["path"]))
        if denied is None:
            return None
        headers = (("www-authenticate", "Bearer"),) if denied.status == 401 else ()
        return Refusal(denied.status, denied.code, denied.detail, headers)

    def _body_limit(self, path: str) -> tuple[int, str]:
        if path in UPLOAD_PATHS:
            return self.settings.speech.max_upload_bytes, "speech.max_upload_bytes"
        if path in MEDIA_UPLOAD_PATHS:
            return int(self.settings.media_max_upload_mb * (2 << 20)) + (64 << 10), "media_max_upload_mb"
        if _is_api(path) and path not in SMALL_BODY_PATHS:
            return self.settings.max_json_body_bytes, "max_json_body_bytes"
        return self.settings.max_form_body_bytes, "max_form_body_bytes"

    @staticmethod
    def _logged(scope: Scope, refusal: Refusal) -> Refusal:
        # The path only: a query string may hold a credential.
        log.info("refused %s %s: %s", scope.get("method", "WebSocket"), scope["path"], refusal.detail)
        return refusal

    # -- HTTP --------------------------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        refusal, cross_origin = self._browser_refusal(scope, headers)
        if refusal is None and cross_origin is not None and is_preflight(scope, headers):
            await preflight_answer(cross_origin)(scope, receive, send)
            return
        if refusal is None:
            refusal = await self._authorize(scope)
        if refusal is None and _is_api(scope["path"]) and scope["path"] not in SDP_PATHS:
            refusal = self._api_refusal(scope, headers)
        limit, setting = self._body_limit(scope["path"])
        if refusal is None:
            refusal = _declared_length_refusal(headers, limit, setting)
        if cross_origin is not None:
            send = with_cors(send, cross_origin)
        if refusal is not None:
            await refusal.response()(scope, receive, send)
            return
        await self._call_reading_at_most(limit, _too_large(limit, setting), scope, receive, send)

    async def _call_reading_at_most(
        self, limit: int, refusal: Refusal, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Run the route, cutting its body off past ``limit`` bytes and answering ``refusal`` instead."""
        received = 0
        tripped = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, tripped
            if tripped:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    tripped = True
                    raise _BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if tripped and not started:
                return  # whatever the route made of a body it never got whole, the answer is the 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _BodyTooLarge:
            if started:
                raise  # the route answered before it read its body: nothing left to say but to drop it
        if tripped and not started:
            await refusal.response()(scope, receive, send)

    # -- WebSocket ---------------------------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal, _ = self._browser_refusal(scope, Headers(scope=scope))
        if refusal is None:
            refusal = await self._authorize(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        if (await receive())["type"] != "websocket.connect":
            return
        # A browser fails a socket whose server picks none of the subprotocols it offered: the Realtime API's
        # clients offer "realtime", and read the error in the Realtime shape (``error.code``), which rides along.
        offered = scope.get("subprotocols") or []
        accept: Message = {"type": "websocket.accept"}
        if "realtime" in offered:
            accept["subprotocol"] = "realtime"
        await send(accept)
        event = {
            "type": "error",
            "code": refusal.code,
            "message": refusal.detail,
            "event_id": f"event_{secrets.token_hex(8)}",
            "error": {"type": "invalid_request_error", "code": refusal.code, "message": refusal.detail},
        }
        await send({"type": "websocket.send", "text": json.dumps(event)})
        await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": refusal.detail[:120]})


def _declared_length_refusal(headers: Headers, limit: int, setting: str) -> Refusal | None:
    declared = headers.get("content-length")
    if declared is None:
        return None
    declared = declared.strip()
    if not (declared.isascii() and declared.isdigit()):
        return Refusal(400, "bad_request", "Content-Length is not a number")
    return _too_large(limit, setting) if int(declared) > limit else None


def edge_middleware(settings: Settings, auth: Auth) -> list[Middleware]:
    """The app's middleware list: the guard in front of every route."""
    return [Middleware(HttpGuard, settings=settings, auth=auth)]
