"""JSON logs on stderr (one object per line), so a log shipper needs no parsing rules.

Every record carries the ids of what was being served when it was logged (``session_id``, ``call_id``,
``key_id``): a ``contextvars`` context that the HTTP edge, the session start and the telephony transport bind
(:func:`bind_log_context`), read by :class:`LogContextFilter`. Tasks a session starts inherit it. Phone numbers
and credentials are masked in every message, argument and traceback (:class:`PrivacyFilter`)."""

from __future__ import annotations

import contextvars
import copy
import json
import logging
import re
import time
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote_plus

CONTEXT_FIELDS = ("session_id", "call_id", "key_id")


@dataclass(frozen=True)
class LogContext:
    """The ids of what is being served; immutable, so that a task's binding never leaks into another's."""

    session_id: str | None = None
    call_id: str | None = None
    key_id: str | None = None


_CONTEXT: contextvars.ContextVar[LogContext] = contextvars.ContextVar(
    "voxgate_log_context",
    default=LogContext(),  # noqa: B039 (frozen: never changed in place)
)


def log_context() -> LogContext:
    return _CONTEXT.get()


def bind_log_context(**ids: str | None) -> contextvars.Token[LogContext]:
    """Add ``ids`` (``session_id``, ``call_id``, ``key_id``; None values are ignored) to the current context;
    the token undoes it (:func:`reset_log_context`). Tasks created afterwards inherit the ids."""
    given = {name: value for name, value in ids.items() if value is not None}
    return _CONTEXT.set(replace(_CONTEXT.get(), **given))


def reset_log_context(token: contextvars.Token[LogContext]) -> None:
    _CONTEXT.reset(token)


class LogContextFilter(logging.Filter):
    """Copies the bound ids onto each record (``record.session_id``...), where the formatter finds them."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _CONTEXT.get()
        for name in CONTEXT_FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, getattr(context, name))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask_private(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = mask_private(self.formatException(record.exc_info))
        return json.dumps(entry)


def log_filters() -> list[logging.Filter]:
    """What every handler of ours runs before formatting: credentials, phone numbers and keys masked, ids added."""
    return [CredentialScrubber(), PrivacyFilter(), LogContextFilter()]


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for log_filter in log_filters():
        handler.addFilter(log_filter)  # on the handler: a logger's own filters skip records from its children
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# Query parameter names that carry credentials: api_key, token, access_token, X-Amz-Signature, sig, password...
_CREDENTIAL_NAME = re.compile(r"key|token|secret|passw|sig|auth|credential", re.IGNORECASE)
_QUERY_PAIR = re.compile(r"([?&;])([^=&;#\s\"']+)=([^&;#\s\"']*)")
REDACTED = "REDACTED"


def scrub_credentials(text: str) -> str:
    """``/v1/voice?token=abc&flow=x`` -> ``/v1/voice?token=REDACTED&flow=x``: credential-looking query values
    are blanked, everything else is kept for whoever reads the log."""
    if "=" not in text:
        return text

    def redact(match: re.Match[str]) -> str:
        if _CREDENTIAL_NAME.search(unquote_plus(match[2])):
            return f"{match[1]}{match[2]}={REDACTED}"
        return match[0]

    return _QUERY_PAIR.sub(redact, text)


class CredentialScrubber(logging.Filter):
    """Blanks credentials in a record's query strings before any handler formats it.

    uvicorn logs every request's path with its query string (``uvicorn.access``, and ``uvicorn.error`` for
    WebSocket upgrades). The gateway refuses keys in URLs, but a client may still send one, and a WebSocket's
    one-use token is in its URL by design: neither may reach a log file.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(scrub_credentials(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str) and not record.args:
            record.msg = scrub_credentials(record.msg)
        return True


# Masking: an E.164 number keeps its country-and-area start and its last four digits (+1555***4567), enough to
# tell calls apart in a log; keys and tokens keep only the prefix that says what kind of secret it was.
_PHONE = re.compile(r"(?<![\w+])\+(\d{7,15})\b")
_SECRETS = (
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE), r"\1 ***"),
    (re.compile(r"\b(vg_)[A-Za-z0-9_-]{6,}"), r"\1***"),
    (re.compile(r"\b(sk-)[A-Za-z0-9_-]{6,}"), r"\1***"),
    (re.compile(r"\b(ek_)[A-Za-z0-9_-]{6,}"), r"\1***"),  # the Realtime API's ephemeral client secrets
)
MASK = "***"


def _mask_phone(match: re.Match[str]) -> str:
    digits = match[1]
    keep = 4 if len(digits) >= 11 else 2  # a short number would show whole with four each side
    return f"+{digits[:keep]}{MASK}{digits[-keep:]}"


def mask_private(text: str) -> str:
    """Phone numbers and API keys or tokens masked: ``+15551234567`` -> ``+1555***4567``, ``vg_abc...`` ->
    ``vg_***``, ``Bearer abc`` -> ``Bearer ***``, ``sk-abc...`` -> ``sk-***``."""
    if "+" in text:
        text = _PHONE.sub(_mask_phone, text)
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _masked_arg(value: Any) -> Any:
    if isinstance(value, str):
        return mask_private(value)
    if value is None or isinstance(value, (int, float, bool)):
        return value  # a %d argument must stay a number
    text = str(value)
    masked = mask_private(text)
    return value if masked == text else masked  # an object (a dict, an exception) whose text holds a secret


class PrivacyFilter(logging.Filter):
    """Masks phone numbers, API keys and tokens in a record's message and every argument, before any handler
    formats it: callers' numbers and keys reach logs through URLs, errors and flow variables alike."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = mask_private(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_masked_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _masked_arg(v) for k, v in record.args.items()}
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own logging set-up (its ``LOGGING_CONFIG``) writing JSON lines like ours, with credentials
    scrubbed, phone numbers and keys masked and the log context's ids on the loggers that write request paths."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    # Its access lines ("GET /path 200", on stdout) become JSON records' msg: one format for every line.
    config["formatters"] = {"default": {"()": JsonFormatter}, "access": {"()": JsonFormatter}}
    config.setdefault("filters", {})["scrub_credentials"] = {"()": CredentialScrubber}
    config["filters"]["mask_private"] = {"()": PrivacyFilter}
    config["filters"]["log_context"] = {"()": LogContextFilter}
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = config["loggers"].setdefault(name, {})
        logger["filters"] = [*logger.get("filters", []), "scrub_credentials", "mask_private", "log_context"]
    return config
