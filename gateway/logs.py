"""JSON logs on stderr (one object per line), so a log shipper needs no parsing rules."""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from typing import Any
from urllib.parse import unquote_plus


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
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


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own logging set-up (its ``LOGGING_CONFIG``) with ``CredentialScrubber`` on the loggers that
    write request paths."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["scrub_credentials"] = {"()": CredentialScrubber}
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = config["loggers"].setdefault(name, {})
        logger["filters"] = [*logger.get("filters", []), "scrub_credentials"]
    return config
