"""The reverse proxy: one ``ProxyHandler`` per ``[upstreams.NAME]`` group.

One request, as a coroutine (the transport runs it as a task):

    pick server (round-robin, skipping servers marked down)
      → idle pooled connection, else connect   (connect failure: count it, maybe mark
        the server down, retry once on another server)
      → write head, stream the body             (write flow control)
      → read the response head (1xx skipped)    (stale pooled connection: retry once on
        a fresh one when the request can be replayed)
      → Response whose body streams the upstream's body; at its clean end the
        connection goes back to the pool, on aclose/cancel it is closed.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from time import perf_counter

from farts.metrics import Metrics
from farts.proxy.config import Upstream
from farts.transport.http import Fixed, Request, Response
from fast.http1 import END, LAST_CHUNK, HTTPError, encode_chunk, request_head
from fast.http1 import Response as ResponseHead

from .headers import authority_of, origin_form, request_headers, response_headers
from .upstream import Deadlines, Server, UpstreamConnection, UpstreamGone, UpstreamTimeout

log = logging.getLogger("farts.proxy")

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

# X-Request-Id: node id, a per-process boot tag and a counter (unique, cheap).
_BOOT = os.urandom(3).hex()
_request_ids = itertools.count(1)


class BadResponse(Exception):
    """The upstream sent something that is not a valid HTTP/1.x response."""


class UpstreamBodyError(Exception):
    """The upstream response body broke off (timeout, reset, bad framing)."""


class ProxyStats:
    """The proxy metrics of one node, shared by all its upstream groups (node.py makes one)."""

    def __init__(self, metrics: Metrics) -> None:
        self.handlers: list[ProxyHandler] = []
        self.requests = metrics.counter(
            "farts_proxy_requests_total", "Upstream request attempts, by outcome",
            ("upstream", "server", "outcome"))
        self.retries = metrics.counter(
            "farts_proxy_retries_total", "Requests retried (another server or a fresh connection)",
            ("upstream",))
        self.seconds = metrics.histogram(
            "farts_proxy_upstream_seconds", "Time from request to upstream response head",
            ("upstream",))
        metrics.gauge("farts_proxy_upstream_up", "Upstream server usable (1) or marked down (0)",
                      self._up, ("upstream", "server"))
        metrics.gauge("farts_proxy_pool_idle", "Idle keep-alive connections to the upstream group",
                      self._idle, ("upstream",))

    def _up(self) -> dict:
        now = time.monotonic()
        return {(h.name, s.address): 1.0 if s.up(now) else 0.0
                for h in self.handlers for s in h.servers}

    def _idle(self) -> dict:
        return {(h.name,): sum(len(s.idle) for s in h.servers) for h in self.handlers}


class _Empty:
    """The body of a response that had none (HEAD, 204, 304, length 0)."""

    __slots__ = ()

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration

    async def aclose(self) -> None:
        pass


EMPTY = _Empty()


def _what(head) -> str:
    """The request as log lines show it (built only when something is logged)."""
    return f"{head.method.decode('latin-1')} {head.target[:200].decode('latin-1')}"


class UpstreamBody:
    """Streams one upstream response body; owns the connection until the body ends."""

    __slots__ = ("proxy", "conn", "keep_alive", "timeout", "head")

    def __init__(self, proxy: ProxyHandler, conn: UpstreamConnection, keep_alive: bool,
                 head) -> None:
        self.proxy = proxy
        self.conn: UpstreamConnection | None = conn
        self.keep_alive = keep_alive
        self.timeout = proxy.up.read_timeout
        self.head = head

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        conn = self.conn
        if conn is None:
            raise StopAsyncIteration
        try:
            ev = await conn.next_event(self.timeout)
        except UpstreamTimeout:
            self._fail("body_timeout", f"no data for {self.timeout}s mid-body")
        except BaseException:
            self.conn = None
            conn.abort()
            self.proxy.count(conn.server, "client_gone")
            raise
        if type(ev) is bytes:
            return ev
        if ev is END:
            self.conn = None
            self.proxy.count(conn.server, "ok")
            if self.keep_alive:
                conn.server.release(conn)
            else:
                conn.abort()
            raise StopAsyncIteration
        if ev is None or conn.closed:
            self._fail("body_error", f"connection lost mid-body ({conn.exc or 'closed'})")
        self._fail("bad_response", f"bad response body: {getattr(ev, 'reason', ev)!r}")

    def _fail(self, outcome: str, why: str):
        conn = self.conn
        self.conn = None
        conn.abort()
        self.proxy.count(conn.server, outcome)
        log.warning("upstream %s server %s: %s: %s; closing the client connection",
                    self.proxy.name, conn.server.address, _what(self.head), why)
        raise UpstreamBodyError(why)

    async def aclose(self) -> None:
        conn = self.conn
        if conn is not None:  # the client went away before the end
            self.conn = None
            conn.abort()
            self.proxy.count(conn.server, "client_gone")


class ProxyHandler:
    def __init__(self, name: str, up: Upstream, node_id: str, stats: ProxyStats) -> None:
        self.name = name
        self.up = up
        self.deadlines = Deadlines()
        self.servers = [Server(a, up.pool_size, up.max_fails, up.fail_timeout, self.deadlines)
                        for a in up.servers]
        self.rr = 0
        self.m = stats
        stats.handlers.append(self)
        self.rid_prefix = f"{node_id}-{_BOOT}-".encode()
        self._labels: dict[tuple[str, str], tuple] = {}
        self._key = (name,)

    # -- metrics ---------------------------------------------------------------------
    def count(self, server: Server, outcome: str) -> None:
        key = self._labels.get((server.address, outcome))
        if key is None:
            key = self._labels[(server.address, outcome)] = (self.name, server.address, outcome)
        self.m.requests.inc(key)

    def _retry(self) -> None:
        self.m.retries.inc(self._key)

    def new_request_id(self) -> bytes:
        return self.rid_prefix + str(next(_request_ids)).encode()

    # -- server choice ---------------------------------------------------------------
    def pick(self, exclude=()) -> Server | None:
        servers = self.servers
        n = len(servers)
        now = time.monotonic()
        i = self.rr
        for k in range(n):
            s = servers[(i + k) % n]
            if s.up(now) and s not in exclude:
                self.rr = (i + k + 1) % n
                return s
        # Every (remaining) server is down: try the one that comes back first.
        rest = [s for s in servers if s not in exclude]
        return min(rest, key=lambda s: s.down_until) if rest else None

    # -- one request -----------------------------------------------------------------
    def handle(self, request: Request):
        return self._proxy(request)

    async def _proxy(self, req: Request) -> Response | Fixed:
        head = req.head
        method = head.method
        target = origin_form(head.target)
        up = self.up
        body = req.body
        if body is not None:
            length = head.content_length if not head.chunked and head.content_length >= 0 else -1
        else:
            length = head.content_length if head.content_length >= 0 else -2
        server = self.pick()
        headers, _ = request_headers(head.headers, req.client, req.scheme, self.new_request_id,
                                     authority_of(head.target),
                                     server.address.encode())
        data = request_head(method, target, headers, length)
        is_head = method == b"HEAD"
        replayable = method in IDEMPOTENT
        start = perf_counter()
        tried: list[Server] = []
        retry_other = retry_stale = True
        fresh = False
        while True:
            conn = None if fresh else server.take()
            reused = conn is not None
            if conn is None:
                try:
                    conn = await server.connect(up.connect_timeout)
                except (TimeoutError, OSError) as e:
                    timed_out = isinstance(e, TimeoutError)
                    why = (f"connect timeout ({up.connect_timeout}s)" if timed_out
                           else f"connect failed: {e.strerror or e}")
                    self.count(server, "connect_timeout" if timed_out else "connect_error")
                    if server.failed():
                        log.warning("upstream %s server %s marked down for %ss after %d failures",
                                    self.name, server.address, up.fail_timeout, server.fails)
                    tried.append(server)
                    # Nothing reached the upstream, nothing of the body was read: any
                    # request can go to another server.
                    nxt = self.pick(tried) if retry_other else None
                    if nxt is not None:
                        log.info("upstream %s server %s: %s: %s; retrying on %s",
                                 self.name, server.address, _what(head), why, nxt.address)
                        retry_other = False
                        self._retry()
                        server, fresh = nxt, False
                        continue
                    log.warning("upstream %s server %s: %s: %s",
                                self.name, server.address, _what(head), why)
                    return Fixed.error(504 if timed_out else 502, f"upstream {why}")
                server.succeeded()
            body_read = False
            try:
                conn.received = 0
                if is_head:
                    conn.parser.expect_head_response()
                conn.write(data)
                if body is not None:
                    body_read = True
                    await self._send_body(conn, body, length < 0)
                resp = await self._read_head(conn)
            except UpstreamGone as e:
                conn.abort()
                if reused and conn.received == 0 and replayable and not body_read and retry_stale:
                    # The usual race: the upstream closed the idle connection as we sent.
                    self.count(server, "stale")
                    retry_stale = False
                    self._retry()
                    fresh = True
                    continue
                self.count(server, "bad_response")
                log.warning("upstream %s server %s: %s: connection lost before the response (%s)",
                            self.name, server.address, _what(head), conn.exc or e)
                return Fixed.error(502, "upstream closed the connection")
            except UpstreamTimeout:
                conn.abort()
                self.count(server, "timeout")
                log.warning("upstream %s server %s: %s: no response within %ss",
                            self.name, server.address, _what(head), up.read_timeout)
                return Fixed.error(504, "upstream timeout")
            except BadResponse as e:
                conn.abort()
                self.count(server, "bad_response")
                log.warning("upstream %s server %s: %s: bad response: %s",
                            self.name, server.address, _what(head), e)
                return Fixed.error(502, "bad upstream response")
            except BaseException:  # cancelled (client gone), client body errors
                conn.abort()
                self.count(server, "client_gone")
                raise
            break
        self.m.seconds.observe(perf_counter() - start, self._key)
        status = resp.status
        head_only = is_head or status == 204 or status == 304
        content_length = -1 if resp.chunked else resp.content_length
        whole = conn.take_whole_body()
        if whole is None:
            body_out = UpstreamBody(self, conn, resp.keep_alive, head)
        else:
            # The whole body came with the head (the usual case for small answers): hand
            # it over as bytes, so the transport writes head and body in one send.
            self.count(server, "ok")
            if resp.keep_alive:
                server.release(conn)
            else:
                conn.abort()
            if head_only:  # no body by definition; the head keeps the upstream's length
                body_out = EMPTY
            else:
                body_out = whole
        return Response(status, response_headers(resp.headers), body_out, content_length, head_only)

    async def _send_body(self, conn: UpstreamConnection, body, chunked: bool) -> None:
        timeout = self.up.read_timeout
        async for piece in body:
            if conn.closed or conn.has_final_head():
                # The upstream answered (or gave up) before taking the whole body.
                conn.reusable = False
                return
            if not piece:
                continue
            conn.write(encode_chunk(piece) if chunked else piece)
            if conn.write_paused:
                await conn.drain(timeout)
        if chunked:
            conn.write(LAST_CHUNK)

    async def _read_head(self, conn: UpstreamConnection) -> ResponseHead:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.up.read_timeout
        interim = False
        while True:
            ev = await conn.next_event(max(deadline - loop.time(), 0.001))
            t = type(ev)
            if t is ResponseHead:
                if ev.status >= 200:
                    return ev
                if ev.status == 101:
                    raise BadResponse("101 Switching Protocols to a request without Upgrade")
                interim = True  # 1xx: skipped, with the END that follows it
            elif ev is END and interim:
                interim = False
            elif ev is None:
                raise UpstreamGone("connection closed")
            elif t is HTTPError:
                raise BadResponse(f"{ev.status} {ev.reason}")
            else:
                raise BadResponse(f"unexpected {ev!r:.40}")

    def close(self) -> None:
        self.deadlines.close()
        for s in self.servers:
            s.close()
