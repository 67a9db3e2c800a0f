"""The WebSocket command protocol, sans-IO: one client text message in, one action out.

Client -> server text messages are JSON commands:

    {"op":"subscribe","channel":"c","since":"<cursor>"?,"token":"<jwt>"?}
    {"op":"unsubscribe","channel":"c"}
    {"op":"ping"}

``decide`` turns one into an action for the service to carry out (``Subscribe``,
``Unsubscribe``, ``Reply``) or a ``Refuse`` (an error reply; the connection stays).
Server -> client replies are built by ``reply_text``: {"op":"subscribed","channel":"c",
"recovered":bool}, {"op":"unsubscribed",...}, {"op":"pong"}, {"op":"error","code":N,
"reason":"...", "channel"?}.  No socket and no fanout here: the WebSocket transport
(websocket.py) feeds it, the service (service.py) applies what it decides.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from .auth import Denied, check_token
from .history import BadCursor, decode_cursor

MAX_CHANNEL_NAME = 200


def channel_problem(name) -> str | None:
    """Why ``name`` is not a channel name, or None."""
    if not isinstance(name, str) or not name:
        return "channel must be a non-empty string"
    if len(name) > MAX_CHANNEL_NAME:
        return f"channel name longer than {MAX_CHANNEL_NAME}"
    if any(c in name for c in "\0\r\n"):
        return "channel name has control characters"
    return None


@dataclass(frozen=True, slots=True)
class Subscribe:
    channel: str
    cursor: dict | None      # resume after it (None: live events only)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channel: object          # as sent (the reply echoes it even when it is not subscribed)


@dataclass(frozen=True, slots=True)
class Reply:
    message: dict


NO_CHANNEL = object()  # (a refused subscribe names its channel, null when it was not a string)


@dataclass(frozen=True, slots=True)
class Refuse:
    metric: str              # farts_pubsub_errors_total's reason label
    code: int
    reason: str
    channel: object = NO_CHANNEL

    def message(self) -> dict:
        out = {"op": "error", "code": self.code, "reason": self.reason}
        if self.channel is not NO_CHANNEL:
            out["channel"] = self.channel
        return out


Action = Subscribe | Unsubscribe | Reply | Refuse


def decide(text: bytes, secret: str, subscriptions: int, max_subscriptions: int) -> Action:
    """What to do with one command from a subscriber of a tenant with ``secret`` that
    has ``subscriptions`` channels already."""
    try:
        cmd = json.loads(text)
    except ValueError:
        return Refuse("bad_json", 400, "command is not JSON")
    if not isinstance(cmd, dict):
        return Refuse("bad_command", 400, "command must be a JSON object")
    op = cmd.get("op")
    if op == "subscribe":
        return _subscribe(cmd, secret, subscriptions, max_subscriptions)
    if op == "unsubscribe":
        return Unsubscribe(cmd.get("channel"))
    if op == "ping":
        return Reply({"op": "pong"})
    return Refuse("unknown_op", 400, f"unknown op {str(op)[:40]!r}")


def _subscribe(cmd: dict, secret: str, subscriptions: int, max_subscriptions: int) -> Action:
    name = cmd.get("channel")
    problem = channel_problem(name)
    if problem:
        return Refuse("bad_command", 400, problem, name if isinstance(name, str) else None)
    if subscriptions >= max_subscriptions:
        return Refuse("too_many", 429, "too many subscriptions on this connection", name)
    try:
        check_token(secret, cmd.get("token"), name)
    except Denied as e:
        return Refuse("auth", e.code, e.reason, name)
    cursor = None
    since = cmd.get("since")
    if since is not None:
        try:
            if not isinstance(since, str):
                raise BadCursor("since must be a string")
            cursor = decode_cursor(since)
        except BadCursor as e:
            return Refuse("bad_command", 400, str(e), name)
    return Subscribe(name, cursor)


def reply_text(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()
