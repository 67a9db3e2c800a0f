"""The proxy's config section: ``[upstreams.<name>]`` groups and the ``proxy`` route kind."""
from __future__ import annotations

from dataclasses import dataclass

from farts.config import ADDRESSES, NON_NEGATIVE, POSITIVE, Check, ConfigError, Section, setting


@dataclass(frozen=True)
class Upstream:
    servers: list[str] = setting(check=ADDRESSES)
    connect_timeout: float = setting(2.0, POSITIVE)
    read_timeout: float = setting(30.0, POSITIVE)
    # Connect failures in a row that mark a server down, and for how long.
    max_fails: int = setting(2, POSITIVE)
    fail_timeout: float = setting(10.0, POSITIVE)
    # Idle keep-alive connections kept per server. Below the number of requests in
    # flight, connections churn: a connect per request costs more than the request.
    pool_size: int = setting(128, NON_NEGATIVE)
    # Request bodies up to request_buffer_bytes are read whole before the upstream is
    # contacted (as nginx's proxy_request_buffering, in memory): a body over the route's
    # limit, a bad chunk or a client that stalls never reaches the application, the
    # request goes with a Content-Length, and a stale pooled connection can be retried.
    # Larger bodies stream from the first byte once the buffer is full. false: always
    # stream from the first byte.
    request_buffering: bool = True
    request_buffer_bytes: int = setting(1024 * 1024, NON_NEGATIVE)
    # Bodyless GETs that arrive in one event-loop turn for a server go out pipelined
    # (RFC 9112 §9.3.2), up to this many in one write on one pooled connection; their
    # answers then come back in one read: at full load most of the upstream side's two
    # socket syscalls per request go. 1 (the default): off, one request per connection
    # at a time, as nginx does.
    # Off by default because the answers come back in order: a slow answer holds up the
    # others of its write (head-of-line blocking, across unrelated clients), and not every
    # application server handles pipelined requests correctly (why browsers left it off).
    # Turn it on for app servers known to handle it, with answers of even speed.
    pipeline: int = setting(1, Check(lambda v: isinstance(v, int) and 1 <= v <= 64, "a number 1-64"))


def _cross_check(cfg) -> None:
    for i, r in enumerate(cfg.routes):
        if r.kind != "proxy":
            continue
        if not r.upstream:
            raise ConfigError(f"{cfg.source}: routes[{i}].upstream: required for kind = \"proxy\"")
        if r.upstream not in cfg.upstreams:
            raise ConfigError(f"{cfg.source}: routes[{i}].upstream: no upstream named {r.upstream!r} "
                              f"(known: {', '.join(cfg.upstreams) or 'none'})")


SECTION = Section("upstreams", dict[str, Upstream], dict, _cross_check, route_kinds=("proxy",))
