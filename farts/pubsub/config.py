"""The pub/sub config section ``[pubsub]`` and the ``pubsub`` route kind."""
from __future__ import annotations

from dataclasses import dataclass

from farts.config import POSITIVE, Check, Section, one_of, setting


@dataclass(frozen=True)
class PubSubConfig:
    # Events kept per channel for resume: the last history_size, at most history_seconds old.
    history_size: int = setting(100, POSITIVE)
    history_seconds: float = setting(300.0, POSITIVE)
    # A subscriber whose unsent bytes pass this is disconnected (close 1008).
    max_buffer_bytes: int = setting(1024 * 1024, POSITIVE)
    # Largest client→server WebSocket message (a command); bigger ones close with 1009.
    max_command_bytes: int = setting(65536, Check(lambda v: v >= 125, "an integer >= 125"))
    max_subscriptions: int = setting(256, POSITIVE)     # per connection
    max_batch: int = setting(1000, POSITIVE)            # messages in one publish request
    # Seconds between server pings (WebSocket) and heartbeats (SSE); a WebSocket client
    # silent for two intervals is closed.
    ping_interval: float = setting(20.0, POSITIVE)
    # The fanout's sends to plain-TCP subscribers: one io_uring submission per flush
    # ("on": required, the node does not start without it; "auto": where the kernel
    # allows, else one send() per subscriber; "off": send() always).
    io_uring: str = setting("auto", one_of("auto", "on", "off"))


SECTION = Section("pubsub", PubSubConfig, PubSubConfig, route_kinds=("pubsub",))
