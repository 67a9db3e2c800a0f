"""The channel registry: who is subscribed where, what each channel recently carried,
and the one encoding of each event per transport.

Channels are keyed ``tenant id + "\\0" + name``: the same name in two tenants is two
channels.  Subscriptions live in the fanout (fast/fanout.pyx), which queues the same
bytes for every subscriber and writes once per connection at the end of the loop
iteration; the history (history.py) keeps the recent events for resume.  An event is
encoded once per transport (a WebSocket frame, an event-stream chunk), never per
subscriber.  No HTTP and no command parsing here: the transports (websocket.py, sse.py)
and the service (service.py) call in.
"""
from __future__ import annotations

import json

from fast.fanout import Fanout

from . import sse, websocket
from .history import Event, History


def channel_key(tenant_id: str, name: str) -> str:
    return f"{tenant_id}\0{name}"


class Channels:
    def __init__(self, history: History) -> None:
        self.history = history
        self.fanout: Fanout | None = None     # made by the service on start (needs the loop)
        self.websockets: set[websocket.WebSocketSubscriber] = set()
        self.streams: set[sse.SSESubscriber] = set()

    # -- connections ------------------------------------------------------------------------
    def opened(self, sub) -> None:
        (self.streams if sub.sse else self.websockets).add(sub)

    def closed(self, sub) -> None:
        (self.streams if sub.sse else self.websockets).discard(sub)
        for key in sub.channels:
            self.fanout.unsubscribe(key, sub)
        sub.channels = []

    # -- subscriptions ----------------------------------------------------------------------
    def subscribe(self, sub, key: str, cursor: dict | None) -> tuple[list[Event], bool]:
        """Registers ``sub`` and returns what the cursor missed (and whether that is all
        of it); the caller sends both before returning to the loop, so no event can slip
        between the replay and the live stream."""
        self.history.channel(key)
        if self.fanout.subscribe(key, sub):
            sub.channels.append(key)
        return self.history.since(key, cursor) if cursor else ([], False)

    def unsubscribe(self, sub, key: str) -> None:
        if key in sub.channels:
            sub.channels.remove(key)
            self.fanout.unsubscribe(key, sub)

    def count(self, key: str) -> int:
        return self.fanout.count(key)

    # -- events -----------------------------------------------------------------------------
    def deliver(self, key: str, channel: str, origin: str, seq: int, data_json: str) -> str:
        """Records the event and queues it to the channel's subscribers; returns its id."""
        prefix = '{"channel":' + json.dumps(channel) + ',"id":"'

        def message(event_id: str) -> bytes:
            return (prefix + event_id + '","data":' + data_json + "}").encode()

        ev = self.history.append(key, origin, seq, message)
        if self.fanout.has(key):
            self.fanout.publish(key, websocket.event_frame(ev),
                                sse.event_chunk(ev) if self.streams else b"")
        return ev.id

    def sweep(self) -> None:
        self.history.sweep(self.fanout.has)
