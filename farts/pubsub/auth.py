"""Who may do what: API keys for publishers, signed tokens for private channels.

A private channel (name starting with ``private:``) needs an HS256 JWT signed with the
tenant's secret, with ``exp`` and a ``channels`` claim listing the channel names it
opens (an entry ending in ``*`` opens every channel with that prefix). The token is
checked against the secret of the tenant the subscriber reached by Host, so a token
of another tenant fails its signature.
"""
from __future__ import annotations

import jwt

PRIVATE = "private:"


class Denied(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def check_token(secret: str, token: str | None, channel: str) -> None:
    """Raises Denied unless ``token`` opens ``channel`` (only private ones need it)."""
    if not channel.startswith(PRIVATE):
        return
    if not token:
        raise Denied(401, "private channel needs a token")
    if not secret:
        raise Denied(403, "this tenant has no secret: private channels are closed")
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise Denied(403, "token expired") from None
    except jwt.InvalidTokenError as e:
        raise Denied(403, f"invalid token: {e}") from None
    allowed = claims.get("channels")
    if not isinstance(allowed, list) or not any(
            isinstance(a, str) and (a == channel or (a.endswith("*") and channel.startswith(a[:-1])))
            for a in allowed):
        raise Denied(403, "token does not open this channel")
