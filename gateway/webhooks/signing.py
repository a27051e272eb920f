"""How a delivery is signed, and how a receiver checks it.

The signature is ``sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>`` over the exact body bytes sent; the
timestamp (Unix seconds) is signed with it so that a receiver can refuse a replayed old delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Voxgate-Signature"
TIMESTAMP_HEADER = "X-Voxgate-Timestamp"
EVENT_HEADER = "X-Voxgate-Event"
DELIVERY_HEADER = "X-Voxgate-Delivery"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Voxgate-Signature`` value for ``body`` sent at ``timestamp``."""
    message = f"{timestamp}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance_s: float = 300.0) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent (constant-time compare)."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, sent, body), signature)


def headers(secret: str, body: bytes, event_type: str, delivery_id: str, now: float) -> dict[str, str]:
    """The headers of one attempt (each attempt is signed afresh, with its own timestamp)."""
    timestamp = int(now)
    return {
        "Content-Type": "application/json",
        "User-Agent": "voxgate-webhooks",
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        TIMESTAMP_HEADER: str(timestamp),
        EVENT_HEADER: event_type,
        DELIVERY_HEADER: delivery_id,
    }
