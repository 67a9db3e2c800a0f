"""The WebSocket command protocol (farts/pubsub/commands.py) without sockets: one JSON
command in, one action out."""
from __future__ import annotations

import json
import time

import jwt

from farts.pubsub.commands import (
    MAX_CHANNEL_NAME,
    Refuse,
    Reply,
    Subscribe,
    Unsubscribe,
    channel_problem,
    decide,
    reply_text,
)

SECRET = "a tenant secret long enough for HS256 keys"


def run(text: bytes | str, subscriptions: int = 0, secret: str = SECRET):
    if isinstance(text, str):
        text = text.encode()
    return decide(text, secret, subscriptions, 3)


def test_subscribe_live_and_with_a_cursor():
    assert run('{"op":"subscribe","channel":"news"}') == Subscribe("news", None)
    action = run('{"op":"subscribe","channel":"news","since":"n1:5,n2:7"}')
    assert action == Subscribe("news", {"n1": 5, "n2": 7})


def test_unsubscribe_echoes_the_channel_whatever_it_is():
    assert run('{"op":"unsubscribe","channel":"news"}') == Unsubscribe("news")
    assert run('{"op":"unsubscribe","channel":5}') == Unsubscribe(5)


def test_ping_is_answered_with_pong():
    assert run('{"op":"ping"}') == Reply({"op": "pong"})


def test_refusals_name_their_metric_and_code():
    cases = {
        b"not json": ("bad_json", 400),
        b"[1]": ("bad_command", 400),
        b'{"op":"dance"}': ("unknown_op", 400),
        b'{"op":"subscribe"}': ("bad_command", 400),
        b'{"op":"subscribe","channel":"a","since":5}': ("bad_command", 400),
        b'{"op":"subscribe","channel":"a","since":"garbage"}': ("bad_command", 400),
        b'{"op":"subscribe","channel":"private:a"}': ("auth", 401),
        b'{"op":"subscribe","channel":"private:a","token":"x.y.z"}': ("auth", 403),
    }
    for text, (metric, code) in cases.items():
        action = run(text)
        assert type(action) is Refuse, text
        assert (action.metric, action.code) == (metric, code), text


def test_too_many_subscriptions():
    action = run('{"op":"subscribe","channel":"a"}', subscriptions=3)
    assert type(action) is Refuse and action.code == 429 and action.channel == "a"


def test_private_channel_with_a_token_that_opens_it():
    token = jwt.encode({"channels": ["private:room*"], "exp": int(time.time()) + 60}, SECRET,
                       algorithm="HS256")
    action = run(json.dumps({"op": "subscribe", "channel": "private:room-1", "token": token}))
    assert action == Subscribe("private:room-1", None)
    other = json.dumps({"op": "subscribe", "channel": "private:other", "token": token})
    assert type(run(other)) is Refuse


def test_error_reply_names_the_channel_only_for_subscribe():
    assert run(b"nope").message() == {"op": "error", "code": 400, "reason": "command is not JSON"}
    bad_name = run('{"op":"subscribe","channel":7}').message()
    assert bad_name["channel"] is None and bad_name["code"] == 400
    assert reply_text(bad_name).startswith(b'{"op":"error"')


def test_channel_names():
    assert channel_problem("ok") is None
    assert channel_problem("") and channel_problem(None) and channel_problem("a\nb")
    assert channel_problem("x" * (MAX_CHANNEL_NAME + 1))
