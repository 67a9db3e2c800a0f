"""What a receiver checks: an HMAC-SHA256 signature over ``timestamp + "." + body``.

Headers of every delivery (documented in the README, with a verification snippet):

- ``Webhook-Id``: the delivery id, the same on every attempt (the receiver's
  idempotency key: a delivery may arrive more than once, never with another id);
- ``Webhook-Timestamp``: Unix seconds when this attempt was signed;
- ``Webhook-Signature``: ``v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>``;
- ``Webhook-Event``: the event type; ``Webhook-Attempt``: 1 for the first attempt.

The body is the JSON envelope ``{"id", "type", "created", "data"}`` made once at
enqueue, so the id and the event type are under the signature too.
"""
from __future__ import annotations

import hashlib
import hmac
import json

ID, TIMESTAMP, SIGNATURE, EVENT, ATTEMPT = (b"webhook-id", b"webhook-timestamp", b"webhook-signature",
                                            b"webhook-event", b"webhook-attempt")
TOLERANCE = 300   # seconds a receiver accepts between the timestamp and its clock


def envelope(delivery_id: str, event: str, created: float, data) -> bytes:
    """The body sent on every attempt (raises ValueError when data is not JSON)."""
    return json.dumps({"id": delivery_id, "type": event, "created": int(created), "data": data},
                      separators=(",", ":"), allow_nan=False).encode()


def signature(secret: bytes, timestamp: int, body: bytes) -> bytes:
    return b"v1=" + hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest().encode()


def headers(secret: bytes, delivery_id: str, event: str, attempt: int, timestamp: int,
            body: bytes) -> list[tuple[bytes, bytes]]:
    return [(ID, delivery_id.encode()), (TIMESTAMP, b"%d" % timestamp),
            (SIGNATURE, signature(secret, timestamp, body)), (EVENT, event.encode()),
            (ATTEMPT, b"%d" % attempt), (b"content-type", b"application/json"),
            (b"user-agent", b"farts-edge-webhooks")]


def verify(secret: bytes, timestamp: str | bytes, sig: str | bytes, body: bytes, now: float,
           tolerance: float = TOLERANCE) -> bool:
    """What a receiver does (the README's snippet is this): a fresh timestamp and a
    matching signature, compared in constant time."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs(now - ts) > tolerance:
        return False
    sig = sig.encode() if isinstance(sig, str) else sig
    return hmac.compare_digest(signature(secret, ts, body), sig)
