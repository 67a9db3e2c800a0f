"""The reverse proxy: one ``ProxyHandler`` per ``[upstreams.NAME]`` group.

A request without a body (the usual GET/HEAD) is an ``Exchange``: a callback state
machine that is itself the future the transport waits on (no task, no coroutine, no
timer of its own: read timeouts are checked by one sweep per group every TICK). The
upstream connection hands it each read (``Exchange.received``): the usual answer, whole
in the read, goes back to an HTTP/1 client as a ``Fixed`` rewritten from the read's
bytes by fast.proxyhead.raw_answer in one call (no parser events, no header tuples);
anything else is read by the parser, whose events call ``Exchange.wake``.

A request with a body (or an Upgrade) is a coroutine, run by the transport as a task,
because the body is an async iterator it reads first. Both take the same steps:

    pick server (round-robin, skipping servers marked down)
      → idle pooled connection, else connect   (connect failure: count it, maybe mark
        the server down, retry once on another server)
      → write head, stream the body             (write flow control)
      → read the response head (1xx passed on)  (stale pooled connection: retry once on
        a fresh one when the request can be replayed)
      → Response whose body streams the upstream's body; at its clean end the
        connection goes back to the pool, on aclose/cancel it is closed.
"""
from __future__ import annotations

import asyncio
import logging
import os
from functools import partial
from operator import attrgetter
from time import perf_counter

import cython
from cython.cimports.fast.http1 import Fixed, HandlerRequest
from cython.cimports.fast.http1 import Request as RequestHead

from farts.clock import LoopClock, Timer
from farts.metrics import Metrics
from farts.proxy.config import Upstream
from farts.transport.client import (
    IDEMPOTENT,
    BadResponse,
    Client,
    ClientConnection,
    ConnectionLost,
    ReadTimeout,
    ResponseBody,
    before_final,
    exchange,
)
from farts.transport.http import (
    REASONS,
    STREAM,
    Request,
    Response,
    Upgrade,
    answers_by_callback,
)
from fast.http1 import END, HTTPError, request_head
from fast.http1 import Response as ResponseHead
from fast.proxyhead import (
    RequestIds,
    client_answer,
    raw_answer,
    request_headers,
    response_headers,
    upstream_request,
)

from .headers import authority_of, origin_form
from .interim import relay
from .pipeline import Pipeline
from .tunnel import Tunnel
from .upstream import Server

log = logging.getLogger("farts.proxy")

# X-Request-Id: node id, a per-process boot tag and a counter (fast.proxyhead.RequestIds).
_BOOT = os.urandom(3).hex()


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
        self.pipelined = metrics.counter(
            "farts_proxy_pipelined_total",
            "Requests written with others in one write on one upstream connection (pipeline > 1)",
            ("upstream",))
        self.seconds = metrics.histogram(
            "farts_proxy_upstream_seconds", "Time from request to upstream response head",
            ("upstream",))
        self.requests.sources.append(self._answered)
        metrics.gauge("farts_proxy_upstream_up", "Upstream server usable (1) or marked down (0)",
                      self._up, ("upstream", "server"))
        metrics.gauge("farts_proxy_pool_idle", "Idle keep-alive connections to the upstream group",
                      self._idle, ("upstream",))

    def _up(self) -> dict:
        now = self.handlers[0].clock.monotonic() if self.handlers else 0.0
        return {(h.name, s.address): 1.0 if s.up(now) else 0.0
                for h in self.handlers for s in h.servers}

    def _answered(self) -> dict:
        return {(h.name, s.address, "ok"): s.answered for h in self.handlers for s in h.servers if s.answered}

    def _idle(self) -> dict:
        return {(h.name,): sum(len(s.idle) for s in h.servers) for h in self.handlers}


TICK = 0.1   # how often read timeouts of the callback exchanges are checked


async def _switch_answer(conn: ClientConnection, timeout: float):
    """The upstream's answer to an Upgrade request: its 101, or its final response head
    (other 1xx skipped)."""
    while True:
        ev = await conn.next_event(timeout)
        t = type(ev)
        if t is ResponseHead:
            if ev.status == 101 or ev.status >= 200:
                return ev
        elif ev is None:
            raise ConnectionLost("connection closed")
        elif t is HTTPError:
            raise BadResponse(f"{ev.status} {ev.reason}")
        elif ev is not END:
            raise BadResponse(f"unexpected {ev!r:.40}")


async def _read_up_to(body, limit: int):
    """(None, the whole body) when it ends within ``limit`` bytes, else (an iterator of
    what was read followed by the rest, b""): the body then streams."""
    pieces, size = [], 0
    async for piece in body:
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            return _chain(pieces, body), b""
    return None, b"".join(pieces)


async def _chain(pieces: list[bytes], rest):
    for piece in pieces:
        yield piece
    async for piece in rest:
        yield piece


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


def _error(status: int, reason: str, request_id: bytes) -> Response:
    """The proxy's own error answer, with the request's X-Request-Id (a client can quote it)."""
    return Response(status, [(b"content-type", b"text/plain; charset=utf-8"), (b"x-request-id", request_id)],
                    f"{status} {REASONS.get(status, 'Error')}: {reason}\n".encode())


@cython.cfunc   # (compiled: a C call, no argument parsing; interpreted: a plain function)
def _fixed(status, body_len, keep: bytes, close: bytes | None) -> Fixed:   # (ints as they come: no C round trip)
    """An upstream answer that came whole, as the transport's Fixed: its framings written
    by fast.proxyhead, which the transport writes as they are (no Response, no header
    list, no second serialisation). ``close`` None: made by the transport if it is
    wanted (fast.http1.closing), rarely. Never counted by ``served`` (the transport
    counts a handler's answers by route): None."""
    fixed: Fixed = Fixed.__new__(Fixed)   # (its fields set in C; no __init__: framed already)
    fixed.status = status
    fixed.body_len = body_len
    fixed.keep = keep
    fixed.close = close
    fixed.served = None
    return fixed


_down_until = attrgetter("down_until")


def _what(req: Request) -> str:
    """The request as log lines show it (built only when something is logged)."""
    return f"{req.method.decode('latin-1')} {req.target[:200].decode('latin-1')}"


class UpstreamBody(ResponseBody):
    """Streams one upstream response body, counting how it ended."""

    __slots__ = ("proxy", "req", "pipeline")

    def __init__(self, proxy: ProxyHandler, conn: ClientConnection, keep_alive: bool,
                 req: Request, pipeline: Pipeline | None) -> None:
        super().__init__(conn, keep_alive, proxy.up.read_timeout)
        self.proxy = proxy
        self.req = req
        self.pipeline = pipeline   # the answers due after this one on the connection

    def ended(self, conn: ClientConnection) -> None:
        self.proxy.count(conn.pool, "ok")

    def release(self, conn: ClientConnection) -> None:
        if self.pipeline is None:
            super().release(conn)
        else:
            self.pipeline.resume(self.keep_alive)

    def failed(self, conn: ClientConnection, outcome: str, why: str, error) -> Exception:
        self.proxy.count(conn.pool, outcome)
        log.warning("upstream %s server %s: %s: %s; closing the client connection",
                    self.proxy.name, conn.pool.address, _what(self.req), why)
        if self.pipeline is not None:
            self.pipeline.end()
        return UpstreamBodyError(why)

    def gone(self, conn: ClientConnection) -> None:
        self.proxy.count(conn.pool, "client_gone")
        if self.pipeline is not None:
            self.pipeline.end()


# An Exchange's outcome
PENDING, RESULT, ERROR, CANCELLED = 0, 1, 2, 3


@cython.cclass
class Exchange:
    """One bodyless request proxied by callbacks, and the future the transport waits on.

    connect (only when the pool has no idle connection: a task for the connect, which a
    warm pool never needs) → ``send`` the head → the connection calls ``wake`` as
    events arrive → the final head: ``answered`` (1xx passed on) → the Response as the
    result. A stale pooled connection is replayed once on a fresh one; a connect failure
    tries another server once; a timeout (the group's sweep) or a bad answer is a 504 or
    502. ``cancel`` (the client went away) aborts the upstream connection.

    A GET of a group with ``pipeline`` > 1 is queued instead, and sent at the end of the
    loop turn with the others queued for its server (farts/proxy/pipeline.py); its
    ``pipeline`` then answers it (``pipelined_answer``), or sends it again alone
    (``unanswered``), or times it out.

    It is a future by its methods (done, result, exception, cancelled, cancel,
    add_done_callback, and awaitable), not an asyncio.Future: compiled, its fields are C
    fields, where a Future subclass paid about 90 instructions for each attribute set
    and a loop lookup in its constructor, a tenth of a proxied request. The transport's
    done callback (the first one, added without a context) is called at once, in the
    step that completes the exchange, not scheduled for a later loop turn as asyncio
    does (a Handle and a loop pass per request); any other callback, and an ``await``
    (HTTP/2's task), go through the loop as with a Future.
    """

    proxy: ProxyHandler   # (a C field, typed: defined below, so by annotation)
    req = cython.declare(object, visibility="public")
    data = cython.declare(bytes, visibility="public")
    rid = cython.declare(bytes, visibility="public")
    server = cython.declare(object, visibility="public")
    conn = cython.declare(object, visibility="public")
    reused = cython.declare(cython.bint, visibility="public")
    start = cython.declare(cython.double, visibility="public")
    is_head = cython.declare(cython.bint, visibility="public")
    pipeline = cython.declare(object, visibility="public")
    connecting = cython.declare(object, visibility="public")   # the connect's task, while it runs
    tried = cython.declare(object, visibility="public")        # servers tried (made by the first connect failure)
    retry_other = cython.declare(cython.bint, visibility="public")
    retry_stale = cython.declare(cython.bint, visibility="public")
    interim = cython.declare(cython.bint, visibility="public")
    connect_s = cython.declare(cython.double, visibility="public")  # upstream connect seconds (-1: pooled)
    # the future's side
    loop = cython.declare(object)
    outcome = cython.declare(cython.int)
    value = cython.declare(object)
    answer_to = cython.declare(object)   # the transport's callback, called at once
    callbacks = cython.declare(list)     # any other, scheduled on the loop

    def __init__(self, proxy: ProxyHandler, req: Request, loop) -> None:
        self.loop = loop
        self.proxy = proxy
        self.req = req
        self.server = server = proxy.pick()
        self.data, self.rid = proxy.upstream_head(req, server, -2)
        self.is_head = req.method == b"HEAD"
        self.start = req.start   # (the transport's clock read, just before this call)
        self.retry_other = self.retry_stale = True
        self.connect_s = -1.0
        if proxy.depth > 1 and not self.is_head and req.method == b"GET":
            proxy.queue(self)
            return
        conn = server.take()
        if conn is None:
            self.go(True)
        else:
            self.send(conn, True)

    def go(self, fresh: bool) -> None:
        conn = None if fresh else self.server.take()
        if conn is None:
            self.connect_s = perf_counter()   # (the start of the connect until it is done)
            task = self.connecting = asyncio.ensure_future(
                self.server.connect(self.proxy.up.connect_timeout))
            task.add_done_callback(self.connected)
        else:
            self.connect_s = -1.0
            self.send(conn, True)

    def connected(self, task: asyncio.Task) -> None:
        self.connecting = None
        if task.cancelled():
            self.cancel()
            return
        e = task.exception()
        if self.done():   # cancelled as the connect ended: the connection is not ours
            if e is None:
                task.result().abort()
            return
        server, proxy = self.server, self.proxy
        if e is None:
            server.succeeded()
            self.connect_s = perf_counter() - self.connect_s
            self.send(task.result(), False)
        elif isinstance(e, (TimeoutError, OSError)):
            if self.tried is None:
                self.tried = []
            why, nxt = proxy.connect_failed(server, e, self.tried, self.retry_other, self.req)
            if nxt is not None:
                self.retry_other = False
                self.server = nxt
                self.go(False)
            else:
                self.set_result(_error(504 if isinstance(e, TimeoutError) else 502, f"upstream {why}", self.rid))
        else:
            self.set_exception(e)

    def send(self, conn: ClientConnection, reused: bool) -> None:
        self.conn = conn
        self.reused = reused
        conn.received = 0
        if self.is_head:
            conn.parser.expect_head_response()
        conn.owner = self
        proxy = self.proxy
        if proxy.sweeper is None:
            proxy.start_sweep()
        proxy.in_flight[self] = proxy.now + proxy.read_timeout   # (see ProxyHandler.in_flight)
        if conn.closed:   # (conn.write's check, inline)
            self.failed(ConnectionLost("the server closed the connection"))
        else:
            conn.transport.write(self.data)

    def wake(self) -> None:
        """Events (or the loss) of the upstream connection: the final head answers."""
        conn = self.conn
        events = conn.events
        try:
            if self.final_head(events):
                self.answered(events.popleft())
                return
            if conn.closed:
                raise ConnectionLost("connection closed")
        except (BadResponse, ConnectionLost) as e:
            self.failed(e)
        except Exception as e:   # a bug: the transport answers 500 and logs it
            self.unwatch()
            conn.abort()
            self.set_exception(e)

    def final_head(self, events) -> bool:
        """True when the final head of its answer is first in ``events``: the 1xx before
        it are passed on to the client (interim.relay) and taken off, each with the END
        that follows it; False when the events ran out first. Raises BadResponse for
        anything else."""
        while events:
            ev = events[0]
            if type(ev) is ResponseHead and ev.status >= 200:
                return True
            self.interim = before_final(ev, self.interim, self.pass_interim)
            events.popleft()
        return False

    def pass_interim(self, status: int, headers: list) -> None:
        relay(self.req, status, headers)

    def received(self, data: bytes) -> None:
        """One upstream read, no events queued before: the usual answer, whole in the
        read, rewritten for an HTTP/1 client from its bytes (ProxyHandler.raw_answer),
        else read by the parser (``answer_events``)."""
        conn = self.conn
        if conn.between_answers(data):
            proxy = self.proxy
            raw = proxy.raw_answer(self, data, 0, True)
            if raw is not None:
                conn.owner = None                   # (unwatch and answer, inline: the hot path)
                proxy.in_flight.pop(self, None)
                if raw[1]:
                    self.server.release(conn)
                else:
                    conn.abort()
                self.set_result(_fixed(raw[0], raw[3], raw[4], None))
                return
        self.answer_events(conn.parser.feed(data))

    def answer_events(self, events: list) -> None:
        """The parser's events of one read: the usual whole answer (final head, its body
        in one piece or none, END) is answered from the list; anything else is queued for
        ``wake``."""
        if not events:
            return
        head = events[0]
        n = len(events)
        # (events[n - 1], not events[-1]: compiled with wraparound=False, -1 reads before the list)
        if type(head) is ResponseHead and head.status >= 200 and events[n - 1] is END:
            if n == 2 or (n == 3 and type(events[1]) is bytes):
                conn, proxy = self.conn, self.proxy
                conn.owner = None                   # (unwatch and answer, inline: the hot path)
                proxy.in_flight.pop(self, None)
                self.set_result(proxy.respond(conn, head, self.req, self.rid, self.is_head,
                                              self.start, self.connect_s, events[1] if n == 3 else b""))
                return
        self.conn.queue(events)
        self.wake()

    def pipelined_answer(self, head: ResponseHead, body: bytes | None) -> None:
        """Its answer, from its pipeline (``body`` None: it streams, the connection's)."""
        proxy = self.proxy
        proxy.in_flight.pop(self, None)
        self.set_result(proxy.respond(self.conn, head, self.req, self.rid, False, self.start,
                                      self.connect_s, body, self.pipeline))

    def unanswered(self) -> None:
        """Its pipeline ended before its answer: sent again, once, on a fresh connection."""
        proxy = self.proxy
        proxy.in_flight.pop(self, None)
        self.pipeline = None
        self.interim = False
        if self.done():
            return
        if self.retry_stale:
            self.retry_stale = False
            proxy.retrying(self.server, "unanswered")
            self.go(True)
        else:
            self.set_result(proxy.exchange_failed(self.server, self.conn, ConnectionLost("connection closed"),
                                              self.req, self.rid))

    def answered(self, head: ResponseHead) -> None:
        self.unwatch()
        conn = self.conn
        self.set_result(self.proxy.respond(conn, head, self.req, self.rid, self.is_head,
                                       self.start, self.connect_s, conn.take_whole_body()))

    def failed(self, e: Exception) -> None:
        self.unwatch()
        conn = self.conn
        conn.abort()
        if (type(e) is ConnectionLost and self.reused and conn.received == 0
                and self.retry_stale and self.req.method in IDEMPOTENT):
            # The usual race: the upstream closed the idle connection as we sent.
            self.proxy.retrying(self.server, "stale")
            self.retry_stale = False
            self.go(True)
            return
        self.set_result(self.proxy.exchange_failed(self.server, conn, e, self.req, self.rid))

    def timed_out(self) -> None:
        """The group's sweep: no answer within read_timeout."""
        if self.pipeline is not None:
            self.pipeline.timed_out()
            return
        self.conn.owner = None
        self.failed(ReadTimeout())

    def unwatch(self) -> None:
        self.conn.owner = None
        self.proxy.in_flight.pop(self, None)

    def cancel(self, msg=None) -> bool:
        """The client went away (the transport cancels what it waits on)."""
        if self.outcome != PENDING:
            return False
        if self.connecting is not None:
            self.connecting.cancel()
        conn = self.conn
        if conn is not None and conn.owner is self:
            self.unwatch()
            conn.abort()
            self.proxy.count(self.server, "client_gone")
        elif self.pipeline is not None:   # (its answer, when it comes, is dropped)
            self.proxy.in_flight.pop(self, None)
            self.proxy.count(self.server, "client_gone")
        self.value = msg
        self.finish(CANCELLED)
        return True

    # -- the future's side ---------------------------------------------------------------
    def done(self) -> bool:
        return self.outcome != PENDING

    def cancelled(self) -> bool:
        return self.outcome == CANCELLED

    def result(self):
        if self.outcome == RESULT:
            return self.value
        if self.outcome == ERROR:
            raise self.value
        if self.outcome == CANCELLED:
            raise asyncio.CancelledError(self.value)
        raise asyncio.InvalidStateError("the answer is not in yet")

    def exception(self):
        if self.outcome == CANCELLED:
            raise asyncio.CancelledError(self.value)
        if self.outcome == PENDING:
            raise asyncio.InvalidStateError("the answer is not in yet")
        return self.value if self.outcome == ERROR else None

    def add_done_callback(self, fn, *, context=None) -> None:
        if context is None and self.answer_to is None and self.outcome == PENDING:
            self.answer_to = fn
        elif self.outcome != PENDING:
            self.loop.call_soon(fn, self, context=context)
        else:
            if self.callbacks is None:
                self.callbacks = []
            self.callbacks.append((fn, context))

    def remove_done_callback(self, fn) -> int:
        n = 0
        if self.answer_to is not None and self.answer_to == fn:
            self.answer_to = None
            n = 1
        if self.callbacks:
            kept = [c for c in self.callbacks if c[0] != fn]
            n += len(self.callbacks) - len(kept)
            self.callbacks = kept
        return n

    def __await__(self):
        # (HTTP/2's task and tests await it: a loop future that follows it, and whose
        # cancellation, the awaiting task's, cancels the exchange)
        fut = self.loop.create_future()
        if self.outcome == PENDING:
            self.add_done_callback(partial(_settle, fut))
            fut.add_done_callback(partial(_cancel_with, self))
        else:
            _settle(fut, self)
        return fut.__await__()

    @cython.ccall
    def set_result(self, result) -> None:
        self.value = result
        self.finish(RESULT)

    @cython.ccall
    def set_exception(self, e) -> None:
        self.value = e
        self.finish(ERROR)

    @cython.cfunc
    def finish(self, outcome: cython.int) -> None:
        if self.outcome != PENDING:
            raise asyncio.InvalidStateError("answered twice")
        self.outcome = outcome
        fn = self.answer_to
        if fn is not None:
            self.answer_to = None
            try:
                fn(self)
            except Exception:   # (as the loop would report it: this step must go on)
                log.exception("the done callback of a proxied request failed")
        callbacks = self.callbacks
        if callbacks:
            self.callbacks = None
            for fn, context in callbacks:
                self.loop.call_soon(fn, self, context=context)


answers_by_callback(Exchange)


def _settle(fut: asyncio.Future, ex: Exchange) -> None:
    if fut.done():
        return
    if ex.cancelled():
        fut.cancel()
    elif (e := ex.exception()) is not None:
        fut.set_exception(e)
    else:
        fut.set_result(ex.result())


def _cancel_with(ex: Exchange, fut: asyncio.Future) -> None:
    if fut.cancelled():
        ex.cancel()


@cython.cclass
class ProxyHandler:
    # (Compiled, a cclass: the fields below are C fields, read by the Exchange's steps
    # without the attribute lookup a Python object costs, seven of them a request.)
    name = cython.declare(str, visibility="public")
    up = cython.declare(object, visibility="public")
    slow_request_seconds = cython.declare(cython.double, visibility="public")
    own_client = cython.declare(cython.bint, visibility="public")
    client = cython.declare(object, visibility="public")
    clock = cython.declare(object, visibility="public")
    servers = cython.declare(list, visibility="public")
    rr = cython.declare(cython.Py_ssize_t, visibility="public")
    m = cython.declare(object, visibility="public")
    new_request_id = cython.declare(object, visibility="public")
    _labels = cython.declare(dict)
    _key = cython.declare(tuple, visibility="public")
    _seconds = cython.declare(object)   # the upstream's farts_proxy_upstream_seconds series
    in_flight = cython.declare(dict, visibility="public")
    read_timeout = cython.declare(cython.double, visibility="public")
    now = cython.declare(cython.double, visibility="public")
    sweeper = cython.declare(object, visibility="public")
    loop = cython.declare(object, visibility="public")
    depth = cython.declare(cython.Py_ssize_t, visibility="public")

    def __init__(self, name: str, up: Upstream, node_id: str, stats: ProxyStats,
                 client: Client | None = None, slow_request_seconds: float = 0.1) -> None:
        self.name = name
        self.up = up
        # (limits.slow_request_seconds: an answer slower than this goes back as a Response
        # carrying its timings, which the slow-request log splits; see respond)
        self.slow_request_seconds = slow_request_seconds
        self.own_client = client is None
        self.client = client = client or Client(LoopClock())
        self.clock = clock = client.deadlines.clock
        self.servers = [Server(a, up.pool_size, up.max_fails, up.fail_timeout, client.deadlines, clock)
                        for a in up.servers]
        self.rr = 0
        self.m = stats
        stats.handlers.append(self)
        self.new_request_id = RequestIds(f"{node_id}-{_BOOT}-".encode())
        self._labels: dict[tuple[str, str], tuple] = {}
        self._key = (name,)
        self._seconds = stats.seconds.series_for(self._key)
        # The exchanges waiting for an upstream answer, with their deadlines: one sweep
        # every TICK instead of a loop timer per request. Deadlines count from the last
        # sweep's time (no clock read per request), plus one TICK: never early, late by
        # at most two TICKs.
        self.in_flight: dict[Exchange, float] = {}
        self.read_timeout = up.read_timeout + TICK
        self.now = 0.0
        self.sweeper: Timer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None   # the node's, from the first request
        self.depth = up.pipeline

    # -- metrics ---------------------------------------------------------------------
    @cython.ccall
    def count(self, server: Server, outcome: str) -> None:
        key = self._labels.get((server.address, outcome))
        if key is None:
            key = self._labels[(server.address, outcome)] = (self.name, server.address, outcome)
        self.m.requests.inc(key)

    def _retry(self) -> None:
        self.m.retries.inc(self._key)

    # -- server choice ---------------------------------------------------------------
    @cython.ccall
    def pick(self, exclude=()) -> Server | None:
        servers = self.servers
        n = len(servers)
        i = self.rr
        if not exclude:
            s = servers[i]
            if s.down_until == 0.0:   # never marked down (the usual case): no clock read
                self.rr = (i + 1) % n
                return s
        now = self.clock.monotonic()
        for k in range(n):
            s = servers[(i + k) % n]
            if s.up(now) and s not in exclude:
                self.rr = (i + k + 1) % n
                return s
        # Every (remaining) server is down: try the one that comes back first.
        rest = [s for s in servers if s not in exclude]
        return min(rest, key=_down_until) if rest else None

    # -- pipelining (farts/proxy/pipeline.py) ---------------------------------------------
    @cython.ccall
    def queue(self, ex: Exchange) -> None:
        """A GET for the flush at the end of this loop turn."""
        queued = ex.server.queued
        queued.append(ex)
        if len(queued) == 1:
            self.loop.call_soon(self.flush, ex.server)

    def flush(self, server: Server) -> None:
        """The GETs queued for ``server`` in this loop turn: up to ``depth`` in one write
        per idle connection; without an idle connection each connects as it would alone."""
        queued, server.queued = server.queued, []
        exchanges = [ex for ex in queued if not ex.done()]   # (a client gone meanwhile)
        depth = self.depth
        for i in range(0, len(exchanges), depth):
            conn = server.take()
            if conn is None:
                for ex in exchanges[i:]:
                    ex.go(True)
                return
            batch = exchanges[i:i + depth]
            if len(batch) == 1:
                batch[0].send(conn, True)
            else:
                self.send_pipelined(Pipeline(self, conn, batch), conn, batch)

    @cython.cfunc
    def send_pipelined(self, pipeline: Pipeline, conn: ClientConnection, batch: list) -> None:
        """``batch`` handed to ``pipeline``, which owns ``conn`` now: each exchange waits on
        it (its read timeout from the group's sweep), and their heads go in ONE write.
        (Here, not in the pipeline: the exchanges' fields are C ones in this module.)"""
        if self.sweeper is None:
            self.start_sweep()
        deadline = self.now + self.read_timeout   # (see ProxyHandler.in_flight)
        in_flight = self.in_flight
        heads = []
        ex: Exchange
        for ex in batch:
            ex.conn = conn
            ex.reused = True
            ex.pipeline = pipeline
            in_flight[ex] = deadline
            heads.append(ex.data)
        conn.transport.write(b"".join(heads))
        self.m.pipelined.inc(self._key, len(batch))

    # -- read timeouts of the exchanges ------------------------------------------------
    def start_sweep(self) -> None:
        self.now = self.clock.monotonic()
        self.sweeper = self.clock.every(TICK, self._sweep)

    def _sweep(self, now: float) -> None:
        self.now = now
        in_flight = self.in_flight
        for ex in [ex for ex, deadline in in_flight.items() if deadline <= now]:
            if in_flight.pop(ex, None) is not None:   # (not answered by an earlier one's pipeline)
                ex.timed_out()

    # -- the steps both kinds of request share -----------------------------------------
    @cython.ccall
    def upstream_head(self, req: Request, server: Server, length: int) -> tuple[bytes, bytes]:
        """The upstream request's head and the request id."""
        if type(req) is Request:   # HTTP/1: the head's and the request's C fields
            h1: HandlerRequest = req
            head: RequestHead = h1._head
            method, target, headers, client, scheme = head.method, head.target, head.headers, h1.client, h1.scheme
        else:
            method, target, headers, client, scheme = req.method, req.target, req.headers, req.client, req.scheme
        if target[:1] == b"/":   # origin form (the usual case): no authority, as it is
            return upstream_request(method, target, headers, client, scheme,
                                    self.new_request_id, None, server.host_field, length)
        return upstream_request(method, origin_form(target), headers, client, scheme,
                                self.new_request_id, authority_of(target), server.host_field, length)

    def connect_failed(self, server: Server, e: OSError, tried: list[Server], retry: bool,
                       req: Request) -> tuple[str, Server | None]:
        """Counts and logs a connect failure; returns why, and the server to try next
        (None: give up). Nothing reached the upstream, nothing of a body was read: any
        request can go to another server."""
        timed_out = isinstance(e, TimeoutError)
        why = (f"connect timeout ({self.up.connect_timeout}s)" if timed_out
               else f"connect failed: {e.strerror or e}")
        self.count(server, "connect_timeout" if timed_out else "connect_error")
        if server.failed():
            log.warning("upstream %s server %s marked down for %ss after %d failures",
                        self.name, server.address, self.up.fail_timeout, server.fails)
        tried.append(server)
        nxt = self.pick(tried) if retry else None
        if nxt is not None:
            log.info("upstream %s server %s: %s: %s; retrying on %s",
                     self.name, server.address, _what(req), why, nxt.address)
            self._retry()
        else:
            log.warning("upstream %s server %s: %s: %s", self.name, server.address, _what(req), why)
        return why, nxt

    def retrying(self, server: Server, outcome: str) -> None:
        """An attempt that got no answer ("stale": a pooled connection closed as it was
        used; "unanswered": behind others on a connection that closed), sent again."""
        self.count(server, outcome)
        self._retry()

    def exchange_failed(self, server: Server, conn: ClientConnection, e: Exception, req: Request,
                        rid: bytes) -> Response:
        """The proxy's answer when the upstream did not answer (the connection is aborted)."""
        if type(e) is ReadTimeout:
            self.count(server, "timeout")
            log.warning("upstream %s server %s: %s: no response within %ss",
                        self.name, server.address, _what(req), self.up.read_timeout)
            return _error(504, "upstream timeout", rid)
        self.count(server, "bad_response")
        if type(e) is ConnectionLost:
            log.warning("upstream %s server %s: %s: connection lost before the response (%s)",
                        self.name, server.address, _what(req), conn.exc or e)
            return _error(502, "upstream closed the connection", rid)
        log.warning("upstream %s server %s: %s: bad response: %s",
                    self.name, server.address, _what(req), e)
        return _error(502, "bad upstream response", rid)

    @cython.ccall
    def respond(self, conn: ClientConnection, resp: ResponseHead, req: Request, rid: bytes,
                is_head: bool, start: float, connect_s: float, whole: bytes | None,
                pipeline: Pipeline | None = None) -> Response | Fixed:
        """The client's answer to the upstream's final head ``resp`` on ``conn``; ``whole``:
        its body when all of it has come (``conn.take_whole_body()``), else None.
        ``pipeline``: the connection's, which keeps it after a whole answer."""
        head_at = perf_counter()
        self._seconds.observe(head_at - start)
        status = resp.status
        head_only = is_head or status == 204 or status == 304
        if whole is None:
            body = UpstreamBody(self, conn, resp.keep_alive, req, pipeline)
        else:
            # The whole body came with the head (the usual case for small answers): hand
            # it over as bytes, so the transport writes head and body in one send.
            server = conn.pool
            server.answered += 1
            if pipeline is None:   # (a pipeline keeps its connection for the answers after it)
                if resp.keep_alive:
                    server.release(conn)
                else:
                    conn.abort()
            if not head_only and type(req) is Request and head_at - req.start < self.slow_request_seconds:
                # The usual case: one Fixed, written by the transport as it is (HTTP/1;
                # HTTP/2 takes the Response). A slow one keeps its timings (below).
                keep, close = client_answer(status, resp.headers, rid, whole, len(whole))
                return _fixed(status, len(whole), keep, close)
            # (no body by definition when head_only; the head keeps the upstream's length)
            body = EMPTY if head_only else whole
        return Response(status, response_headers(resp.headers, rid), body,
                        -1 if resp.chunked else resp.content_length, head_only,
                        timings=(start, connect_s, head_at))

    @cython.ccall
    def raw_answer(self, ex: Exchange, data: bytes, at: int, to_end: bool) -> tuple | None:
        """``ex``'s answer at ``data[at:]`` (``to_end``: all the rest of ``data``) when it
        is whole and the usual kind for an HTTP/1 client (fast.proxyhead.raw_answer:
        status, keep-alive, its end, body length, both framings for the client), counted
        as answered unless ``ex`` is done; None: the parser's (HTTP/2 and a slow request's
        timings need the Response, a HEAD the parser's expectation)."""
        req = ex.req
        if type(req) is not Request or ex.is_head:
            return None
        head_at = perf_counter()
        if head_at - req.start >= self.slow_request_seconds:
            return None
        raw = raw_answer(data, at, ex.rid)
        if raw is None or (to_end and raw[2] != len(data)):
            return None
        if not ex.done():   # (else its client went away: counted so by its cancel)
            self._seconds.observe(head_at - ex.start)
            ex.server.answered += 1
        return raw

    def answer_raw(self, ex: Exchange, data: bytes, at: int) -> tuple | None:
        """``raw_answer`` for a pipeline's read, and ``ex`` answered with it unless its
        client went away (one call from the pipeline for the three steps)."""
        raw = self.raw_answer(ex, data, at, False)
        if raw is not None and ex.outcome == PENDING:
            self.in_flight.pop(ex, None)
            ex.set_result(_fixed(raw[0], raw[3], raw[4], None))
        return raw

    # -- one request -----------------------------------------------------------------
    def handle(self, request: Request):
        if request.upgrade is not None:
            return self._tunnel(request)
        if request.body is not None:
            return self._proxy(request)
        loop = self.loop
        if loop is None:
            # Once: asyncio.get_running_loop() checks the process id with a getpid()
            # syscall on every call (glibc caches none).
            loop = self.loop = asyncio.get_running_loop()
        return Exchange(self, request, loop)

    async def _proxy(self, req: Request) -> Response:
        """A request with a body: read whole first when it fits request_buffer_bytes."""
        up = self.up
        body = req.body
        length = req.content_length  # -1: chunked
        buffered = b""
        if up.request_buffering and length <= up.request_buffer_bytes:
            body, buffered = await _read_up_to(body, up.request_buffer_bytes)
            if body is None:   # all of it: sent with the head, as a known length
                length = len(buffered)
        server = self.pick()
        data, rid = self.upstream_head(req, server, length)
        if buffered:
            data += buffered
        is_head = req.method == b"HEAD"
        replayable = req.method in IDEMPOTENT
        start = perf_counter()
        tried: list[Server] = []
        retry_other = retry_stale = True
        fresh = False
        while True:
            conn = None if fresh else server.take()
            reused = conn is not None
            connect_s = -1.0   # upstream connect seconds (-1: a pooled connection), for slow requests
            if conn is None:
                connecting = perf_counter()
                try:
                    conn = await server.connect(up.connect_timeout)
                except (TimeoutError, OSError) as e:
                    why, nxt = self.connect_failed(server, e, tried, retry_other, req)
                    if nxt is not None:
                        retry_other = False
                        server, fresh = nxt, False
                        continue
                    return _error(504 if isinstance(e, TimeoutError) else 502, f"upstream {why}", rid)
                server.succeeded()
                connect_s = perf_counter() - connecting
            try:
                resp = await exchange(conn, data, body, length == -1, is_head, up.read_timeout,
                                      partial(relay, req))
            except (ConnectionLost, ReadTimeout, BadResponse) as e:
                conn.abort()
                if (type(e) is ConnectionLost and reused and conn.received == 0 and replayable
                        and body is None and retry_stale):
                    self.retrying(server, "stale")
                    retry_stale = False
                    fresh = True
                    continue
                return self.exchange_failed(server, conn, e, req, rid)
            except BaseException:  # cancelled (client gone), client body errors
                conn.abort()
                self.count(server, "client_gone")
                raise
            return self.respond(conn, resp, req, rid, is_head, start, connect_s, conn.take_whole_body())

    async def _tunnel(self, req: Request) -> Response | Upgrade:
        """An Upgrade request (WebSocket) passed through: sent on a connection of its own;
        a 101 opens a Tunnel, any other answer goes back as it is (and the client
        connection closes after it, as after every refused switch)."""
        up = self.up
        server = self.pick()
        headers, rid = request_headers(req.headers, req.client, req.scheme, self.new_request_id,
                                       authority_of(req.target), server.host_field)
        headers += [(b"connection", b"upgrade"), (b"upgrade", req.upgrade)]
        data = request_head(req.method, origin_form(req.target), headers, -2)
        try:
            conn = await server.connect(up.connect_timeout)
        except (TimeoutError, OSError) as e:
            timed_out = isinstance(e, TimeoutError)
            self.count(server, "connect_timeout" if timed_out else "connect_error")
            server.failed()
            log.warning("upstream %s server %s: %s: connect failed (%s)", self.name, server.address, _what(req),
                        "timeout" if timed_out else e)
            return _error(504 if timed_out else 502, "upstream connect failed", rid)
        server.succeeded()
        try:
            conn.write(data)
            head = await _switch_answer(conn, up.read_timeout)
        except ReadTimeout:
            conn.abort()
            self.count(server, "timeout")
            return _error(504, "upstream timeout", rid)
        except (ConnectionLost, BadResponse) as e:
            conn.abort()
            self.count(server, "bad_response")
            log.warning("upstream %s server %s: %s: no switch answer (%s)", self.name, server.address, _what(req), e)
            return _error(502, "bad upstream response", rid)
        except BaseException:
            conn.abort()
            self.count(server, "client_gone")
            raise
        if head.status != 101:   # refused: its answer, then both connections close
            whole = conn.take_whole_body()
            body = whole if whole is not None else UpstreamBody(self, conn, False, req, None)
            if whole is not None:
                self.count(server, "ok")
                conn.abort()
            return Response(head.status, response_headers(head.headers, rid), body,
                            -1 if head.chunked else head.content_length)
        self.count(server, "upgraded")
        return Upgrade(101, response_headers(head.headers, rid), Tunnel(conn), STREAM)

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for s in self.servers:
            s.close()
        if self.own_client:
            self.client.close()
