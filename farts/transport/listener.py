"""An HTTP listening socket: the listener kit plus the HTTP request metrics and access log."""
from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import sys
from collections import deque
from typing import TYPE_CHECKING

from farts.clock import Clock, LoopClock
from farts.config import Limits
from farts.metrics import Metrics

from .connection import HTTP1Connection
from .counts import Counts
from .h2conn import H2Limits
from .h2connection import HTTP2Connection, choose_protocol
from .http import Fixed
from .kit import ConnectionStats, ListenerKit
from .router import Router

if TYPE_CHECKING:
    from fast.counting import Count, Series
    from fast.http1 import Request as RequestHead

log = logging.getLogger("farts.http")

BUSY = Fixed.error(503, "too many connections")


class HTTPStats:
    """The HTTP metrics of a node, shared by its listeners (labelled by listener)."""

    def __init__(self, metrics: Metrics, listeners: dict[str, Listener], region: str = "",
                 slow_kept: int = 100) -> None:
        self.region = region
        # The last slow requests, newest last, with their timings (see Listener.slow_request).
        self.slow_log: deque[dict] = deque(maxlen=slow_kept)
        self.requests = metrics.counter(
            "farts_http_requests_total", "HTTP requests answered", ("listener", "route", "status"))
        self.latency = metrics.histogram(
            "farts_http_request_duration_seconds",
            "Time from request head to response written, for requests a handler answered (the "
            "router's fixed answers and a handler's ready Fixed answer, written by the connection "
            "in microseconds, are counted in farts_http_requests_total and not timed)",
            ("listener", "route"))
        self.slow = metrics.counter(
            "farts_http_slow_requests_total", "Requests slower than limits.slow_request_seconds "
            "(region: this node's node.region)", ("listener", "route", "tenant", "region"))
        self.parse_errors = metrics.counter(
            "farts_http_parse_errors_total", "Malformed or over-limit requests, by the status answered",
            ("listener", "status"))
        self.h2_events = metrics.counter(
            "farts_http2_events_total", "HTTP/2 stream resets and GOAWAYs, by who and why",
            ("listener", "event"))
        self.connections = ConnectionStats(metrics, "farts_http")
        self.refused, self.timeouts = self.connections.refused, self.connections.timeouts
        def fixed_counts() -> dict[tuple, float]:
            out: dict[tuple, float] = {}
            for name, li in listeners.items():
                for label, fixed in li.router.fixed_answers():
                    n = fixed.served.get(name)
                    if n:
                        key = (name, label, fixed.status)
                        out[key] = out.get(key, 0) + n
                if li.stats is not self:
                    continue   # (a listener counted elsewhere: the workers' forwarding hop)
                for (label, status), n in li.ready.items():
                    key = (name, label, status)
                    out[key] = out.get(key, 0) + n
            return out

        self.requests.sources.append(fixed_counts)
        def by_protocol() -> dict[tuple, float]:
            totals: dict[str, float] = {}
            for key, n in self.requests.totals().items():
                totals[key[0]] = totals.get(key[0], 0) + n
            out: dict[tuple, float] = {}
            for name, li in listeners.items():
                out[(name, "2")] = li.h2_requests
                out[(name, "1.1")] = totals.get(name, 0) - li.h2_requests
            return out

        metrics.counter("farts_http_requests_by_protocol_total",
                        "HTTP requests answered, by protocol version (1.1 includes 1.0)",
                        ("listener", "protocol")).sources.append(by_protocol)
        metrics.gauge("farts_http_connections_by_protocol", "Open client connections by protocol version",
                      lambda: {k: v for name, li in listeners.items()
                               for k, v in (((name, "2"), li.h2_connections),
                                            ((name, "1.1"), li.open - li.h2_connections))},
                      ("listener", "protocol"))
        metrics.gauge("farts_http_received_bytes", "Bytes received from clients",
                      lambda: {(n,): li.counts.bytes_in for n, li in listeners.items()}, ("listener",))
        metrics.gauge("farts_http_sent_body_bytes", "Streamed response body bytes sent to clients",
                      lambda: {(n,): li.counts.bytes_out for n, li in listeners.items()}, ("listener",))


class AccessLog:
    """JSON lines, one per request, for a sampled fraction of requests."""

    def __init__(self, sample: float, path: str) -> None:
        self.sample = sample
        self.out = open(path, "a", buffering=1) if path and sample > 0 else sys.stderr  # noqa: SIM115

    def write(self, listener: str, client: str, head: RequestHead, status: int, seconds: float,
              wall: float) -> None:
        self.out.write(json.dumps({
            "ts": round(wall, 3), "listener": listener, "client": client,
            "method": head.method.decode("latin-1"), "target": head.target.decode("latin-1"),
            "host": head.host.decode("latin-1"), "status": status, "ms": round(seconds * 1000, 3),
        }) + "\n")


class Listener(ListenerKit):
    """An HTTP listener: the kit (admission, deadlines, TLS, connection metrics) plus
    the router, the HTTP request metrics and the access log."""

    def __init__(self, name: str, scheme: str, router: Router, limits: Limits, stats: HTTPStats,
                 access_log: AccessLog | None = None, clock: Clock | None = None,
                 http2: bool = True, h2c: bool = False) -> None:
        super().__init__(name, clock or LoopClock(), stats.connections,
                         max_connections=limits.max_connections,
                         max_connections_per_ip=limits.max_connections_per_ip,
                         max_handshakes=limits.max_tls_handshakes,
                         max_handshakes_per_ip=limits.max_tls_handshakes_per_ip)
        self.scheme = scheme
        self.router = router
        self.limits = limits
        self.stats = stats
        self.access_log = access_log if access_log is not None and access_log.sample > 0 else None
        # The per-request counts and the byte counters (Counts: what its connections call)
        self.counts = Counts(self, limits.slow_request_seconds, self.access_log)
        # (route label, status) -> answers a handler gave as a ready Fixed, written at once:
        # counted in place by the connection (no timing, no metric call), summed at scrape.
        self.ready: dict[tuple[str, int], int] = {}
        # HTTP/2: by ALPN on TLS when ``http2``, by prior knowledge on plain TCP when ``h2c``.
        self.http2, self.h2c = http2, h2c
        self.h2_limits = H2Limits(max_concurrent_streams=limits.max_concurrent_streams,
                                  max_header_list_size=limits.max_header_bytes)
        self.h2_connections = 0
        self.h2_requests = 0
        # Set while the node hands over to its next process: each connection closes after
        # its next response (see drain).
        self.draining = False

    # -- called by connections --------------------------------------------------
    def admit(self, conn: HTTP1Connection) -> Fixed | None:
        return None if self.place(conn) is None else BUSY

    def series_for(self, label: str, status: int) -> tuple[Count, Series]:
        """The request counter's and the latency histogram's series of this listener's
        answers on the route ``label`` with ``status``, kept (``counted``) for the next."""
        stats = self.stats
        series = (stats.requests.series_for((self.name, label, status)),
                  stats.latency.series_for((self.name, label)))
        self.counts.counted.setdefault(label, {})[status] = series
        return series

    def slow_request(self, label: str, status: int, start: float, seconds: float, head: RequestHead,
                     client: str, timings: tuple | None) -> None:
        """Only slow requests get here: counted by route, tenant (resolved again from the
        head, so fast requests pay nothing for it) and region, logged, and kept with their
        timings split where they were measured. ``timings`` (the proxy's) is
        (handler started, upstream connect seconds or -1 for a pooled connection, upstream
        response head at), all perf_counter; what a handler did not measure is None."""
        stats = self.stats
        resolved = self.router.resolve(head.host, head.path)
        tenant = resolved[0].id if type(resolved) is tuple and resolved[0] is not None else "-"
        stats.slow.inc((self.name, label, tenant, stats.region))
        target = head.target[:200].decode("latin-1")
        method = head.method.decode("latin-1")
        log.warning("slow request: %s %s %s (tenant %s) -> %d in %.0f ms", self.name, method, target,
                    tenant, status, seconds * 1000)
        end = start + seconds
        queue = connect = first_byte = send = None
        if timings is not None:
            began, connect_s, head_at = timings
            queue = began - start
            connect = connect_s if connect_s >= 0 else None
            first_byte = head_at - began - max(connect_s, 0.0)
            send = end - head_at

        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000, 3)
        stats.slow_log.append({
            "ts": round(self.clock.wall(), 3), "listener": self.name,
            "route": label, "tenant": tenant, "region": stats.region, "method": method,
            "target": target, "status": status, "client": client, "total_ms": ms(seconds),
            "queue_ms": ms(queue), "upstream_connect_ms": ms(connect),
            "upstream_first_byte_ms": ms(first_byte), "send_ms": ms(send),
            "pooled": None if timings is None else timings[1] < 0})

    def log_access(self, head: RequestHead, status: int, seconds: float, client: str) -> None:
        if self.access_log is not None and random.random() < self.access_log.sample:
            self.access_log.write(self.name, client, head, status, seconds, self.clock.wall())

    def parse_error(self, status: int) -> None:
        self.stats.parse_errors.inc((self.name, status))

    def count_error(self, status: int) -> None:
        self.stats.requests.inc((self.name, "-", status))

    def timeout(self, kind: str) -> None:
        self.stats.timeouts.inc((self.name, kind))

    def h2_event(self, event: str) -> None:
        self.stats.h2_events.inc((self.name, event))

    # -- lifetime ---------------------------------------------------------------
    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                    sock=None) -> None:
        if (ssl_context is not None and self.http2) or (ssl_context is None and self.h2c):
            factory = choose_protocol(self, self.h2c)
        else:
            factory = lambda: HTTP1Connection(self)  # noqa: E731
        await super().start(factory, host, port, ssl_context, self.limits.header_timeout,
                            sock=sock, backlog=4096)

    def drain(self) -> None:
        """Stops accepting (the next process accepts on the same socket); HTTP/1.1
        connections close after their next response, HTTP/2 ones get a graceful GOAWAY."""
        self.draining = True
        self.stop_accepting()
        for conn in list(self.connections):
            if type(conn) is HTTP2Connection:
                conn.shutdown()

    async def close(self, grace: float = 5.0) -> None:
        """Stops accepting; HTTP/2 connections get a graceful GOAWAY and up to ``grace``
        seconds to finish the streams in progress; then every connection is closed."""
        h2 = [c for c in self.connections if type(c) is HTTP2Connection]
        if h2:
            self.stop_accepting()
            for conn in h2:
                conn.shutdown()
            gone = [c.gone for c in h2 if c.gone is not None]
            if gone:
                await asyncio.wait(gone, timeout=grace)
        await super().close()
