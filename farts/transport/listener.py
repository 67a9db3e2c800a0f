"""One listening socket: its limits, its connections, their timeouts and metrics."""
from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import ssl
import sys
import time
from time import perf_counter
from typing import TYPE_CHECKING

from farts.config import Limits
from farts.metrics import Metrics

from .connection import HTTP1Connection
from .http import Fixed
from .router import Router

if TYPE_CHECKING:
    from fast.http1 import Request as RequestHead

log = logging.getLogger("farts.http")

BUSY = Fixed.error(503, "too many connections")
TICK = 0.5  # seconds between timeout sweeps; timeouts are as precise as this


class HTTPStats:
    """The HTTP metrics of a node, shared by its listeners (labelled by listener)."""

    def __init__(self, metrics: Metrics, listeners: dict[str, Listener]) -> None:
        self.requests = metrics.counter(
            "farts_http_requests_total", "HTTP requests answered", ("listener", "route", "status"))
        self.latency = metrics.histogram(
            "farts_http_request_duration_seconds", "Time from request head to response written",
            ("listener", "route"))
        self.slow = metrics.counter(
            "farts_http_slow_requests_total", "Requests slower than limits.slow_request_seconds",
            ("listener", "route"))
        self.parse_errors = metrics.counter(
            "farts_http_parse_errors_total", "Malformed or over-limit requests, by the status answered",
            ("listener", "status"))
        self.refused = metrics.counter(
            "farts_http_connections_refused_total", "Connections refused at accept",
            ("listener", "reason"))
        self.timeouts = metrics.counter(
            "farts_http_timeouts_total", "Connections closed by a timeout", ("listener", "kind"))
        def fixed_counts() -> dict[tuple, float]:
            out: dict[tuple, float] = {}
            for name, li in listeners.items():
                for label, fixed in li.router.fixed_answers():
                    n = fixed.served.get(name)
                    if n:
                        key = (name, label, fixed.status)
                        out[key] = out.get(key, 0) + n
            return out

        def fixed_zero_latency() -> dict[tuple, float]:
            out: dict[tuple, float] = {}
            for (name, label, _), n in fixed_counts().items():
                out[(name, label)] = out.get((name, label), 0) + n
            return out

        self.requests.sources.append(fixed_counts)
        self.latency.zero_sources.append(fixed_zero_latency)
        metrics.gauge("farts_http_connections_open", "Open client connections",
                      lambda: {(n,): len(li.connections) + li.taken_over for n, li in listeners.items()}, ("listener",))
        metrics.gauge("farts_http_received_bytes", "Bytes received from clients",
                      lambda: {(n,): li.bytes_in for n, li in listeners.items()}, ("listener",))
        metrics.gauge("farts_http_sent_body_bytes", "Streamed response body bytes sent to clients",
                      lambda: {(n,): li.bytes_out for n, li in listeners.items()}, ("listener",))


class AccessLog:
    """JSON lines, one per request, for a sampled fraction of requests."""

    def __init__(self, sample: float, path: str) -> None:
        self.sample = sample
        self.out = open(path, "a", buffering=1) if path and sample > 0 else sys.stderr  # noqa: SIM115

    def write(self, listener: str, client: str, head: RequestHead, status: int, seconds: float) -> None:
        self.out.write(json.dumps({
            "ts": round(time.time(), 3), "listener": listener, "client": client,
            "method": head.method.decode("latin-1"), "target": head.target.decode("latin-1"),
            "host": head.host.decode("latin-1"), "status": status, "ms": round(seconds * 1000, 3),
        }) + "\n")


class Listener:
    def __init__(self, name: str, scheme: str, router: Router, limits: Limits, stats: HTTPStats,
                 access_log: AccessLog | None = None) -> None:
        self.name = name
        self.scheme = scheme
        self.router = router
        self.limits = limits
        self.stats = stats
        self.access_log = access_log if access_log is not None and access_log.sample > 0 else None
        self.connections: set[HTTP1Connection] = set()
        self.taken_over = 0  # connections handed to another protocol (Takeover), still counted
        self.per_ip: dict[str, int] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        self.now = time.monotonic()
        self.server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.Task | None = None
        self.address: tuple[str, int] | None = None

    # -- called by connections --------------------------------------------------
    def admit(self, conn: HTTP1Connection) -> Fixed | None:
        ip = conn.client
        n = self.per_ip.get(ip, 0)
        if len(self.connections) + self.taken_over >= self.limits.max_connections:
            self.stats.refused.inc((self.name, "max_connections"))
            return BUSY
        if n >= self.limits.max_connections_per_ip:
            self.stats.refused.inc((self.name, "max_connections_per_ip"))
            return BUSY
        self.per_ip[ip] = n + 1
        self.connections.add(conn)
        return None

    def release(self, conn: HTTP1Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            n = self.per_ip[conn.client] - 1
            if n:
                self.per_ip[conn.client] = n
            else:
                del self.per_ip[conn.client]

    def hand_over(self, conn: HTTP1Connection):
        """The connection now belongs to another protocol: it keeps its place in the
        limits until the returned function is called (once, when it is lost)."""
        self.connections.discard(conn)
        self.taken_over += 1
        ip = conn.client

        def release() -> None:
            self.taken_over -= 1
            n = self.per_ip[ip] - 1
            if n:
                self.per_ip[ip] = n
            else:
                del self.per_ip[ip]
        return release

    def record(self, route, status: int, start: float, head: RequestHead, client: str) -> None:
        """Counts one answered request; ``start`` 0 means answered at once (not timed)."""
        seconds = perf_counter() - start if start else 0.0
        label = route.prefix if route is not None else "-"
        stats = self.stats
        stats.requests.inc((self.name, label, status))
        stats.latency.observe(seconds, (self.name, label))
        if seconds > self.limits.slow_request_seconds:
            stats.slow.inc((self.name, label))
            log.warning("slow request: %s %s %s -> %d in %.0f ms", self.name,
                        head.method.decode("latin-1"), head.target[:200].decode("latin-1"),
                        status, seconds * 1000)
        self.log_access(head, status, seconds, client)

    def log_access(self, head: RequestHead, status: int, seconds: float, client: str) -> None:
        if self.access_log is not None and random.random() < self.access_log.sample:
            self.access_log.write(self.name, client, head, status, seconds)

    def parse_error(self, status: int) -> None:
        self.stats.parse_errors.inc((self.name, status))

    def count_error(self, status: int) -> None:
        self.stats.requests.inc((self.name, "-", status))

    def timeout(self, kind: str) -> None:
        self.stats.timeouts.inc((self.name, kind))

    # -- lifetime ---------------------------------------------------------------
    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: HTTP1Connection(self), host, port, ssl=ssl_context, backlog=4096,
            reuse_address=True, ssl_handshake_timeout=self.limits.header_timeout if ssl_context else None)
        sock: socket.socket = self.server.sockets[0]
        self.address = sock.getsockname()[:2]
        self._ticker = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.now = now = time.monotonic()
            for conn in list(self.connections):
                conn.check_timeouts(now)

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self.server is not None:
            self.server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.close()
            await self.server.wait_closed()
