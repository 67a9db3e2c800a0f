"""The outbound HTTP/1.1 client every service uses (reverse proxy, CDN origin, later ACME
and webhooks): keep-alive pools per (scheme, host, port), TLS with SNI, connect and
read timeouts, streaming bodies both ways, ``fast.http1.ResponseParser`` for answers.

``ClientConnection`` is a thin asyncio Protocol: bytes in → parser events queued for
the one coroutine that owns the connection (or each read handed as it is to a callback
owner, the proxy's exchange, which feeds the parser what it does not take), with read flow control (reading pauses
while too many body bytes wait) and write flow control (``drain`` waits for
``resume_writing``). No locks: one loop, one owner.

Layers, from the bottom: ``Pool`` (idle connections to one origin, connect),
``exchange`` (one request on one connection: head, body, response head, 1xx skipped),
``ResponseBody`` (streams the answer; the connection goes back to its pool at the
clean end), and ``Client.request`` (all of it, with one retry on a fresh connection
when a pooled one turns out stale). The proxy uses the lower layers itself because it
picks servers and counts each attempt.
"""
from __future__ import annotations

import asyncio
import ssl
from collections import OrderedDict, deque
from urllib.parse import urlsplit

from farts.clock import Clock, Timer
from fast.http1 import END, LAST_CHUNK, HTTPError, ResponseParser, encode_chunk, request_head
from fast.http1 import Response as ResponseHead

HIGH_WATER = 256 * 1024   # queued response body bytes before reading pauses
LOW_WATER = 64 * 1024
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

_TIMEOUT = object()


class ConnectionLost(Exception):
    """The connection closed (or failed) under a request."""


class ReadTimeout(Exception):
    """Nothing came from the server within the read timeout."""


class BadResponse(Exception):
    """The server sent something that is not a valid HTTP/1.x response."""


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(_TIMEOUT)


class Deadlines:
    """Read timeouts of the waits in flight, checked by one sweep every TICK seconds.

    A loop timer per wait (``call_later`` + ``cancel``) cost a fifth of the proxy's
    throughput (bench/http.py farts-proxy: 22k → 27k req/s without it); timeouts of
    seconds do not need better than TICK precision, so deadlines are counted from the
    time of the last sweep (``now``), which costs no clock read per wait. That time is up
    to TICK old, so one TICK is added: a wait never times out early, and late by at most
    two TICKs.
    """

    TICK = 0.1

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.now = 0.0
        self.waiting: dict[asyncio.Future, float] = {}
        self.sweeper: Timer | None = None

    def start(self) -> float:
        """Starts the sweep (on first use: it needs the running loop); returns ``now``."""
        if self.sweeper is None:
            self.now = self.clock.monotonic()
            self.sweeper = self.clock.every(self.TICK, self.sweep)
        return self.now

    def add(self, fut: asyncio.Future, timeout: float) -> None:
        if self.sweeper is None:
            self.start()
        self.waiting[fut] = self.now + timeout + self.TICK

    def remove(self, fut: asyncio.Future) -> None:
        self.waiting.pop(fut, None)

    def sweep(self, now: float) -> None:
        self.now = now
        for fut in [f for f, deadline in self.waiting.items() if deadline <= now]:
            del self.waiting[fut]
            _expire(fut)

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None


class ClientConnection(asyncio.Protocol):
    __slots__ = ("pool", "parser", "transport", "events", "buffered", "waiter",
                 "write_paused", "read_paused", "closed", "exc", "received", "pooled",
                 "reusable", "owner")

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = ResponseParser()
        self.transport: asyncio.Transport | None = None
        self.events: deque = deque()
        self.buffered = 0            # body bytes queued in events
        self.waiter: asyncio.Future | None = None  # the owner waits for events/drain here
        self.write_paused = False
        self.read_paused = False
        self.closed = False
        self.exc: BaseException | None = None
        self.received = 0            # bytes received since the current request was sent
        self.pooled = False
        self.reusable = True         # cleared when a request was not fully sent
        # A callback owner instead of a waiting coroutine (the proxy's Exchange): its
        # wake() is called where the waiter would be woken, and received(data) with a
        # read's bytes when no events are queued (it feeds the parser what it leaves).
        self.owner = None

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if self.pooled:  # an idle connection has nothing to say: drop it
            self.abort()
            return
        self.received += len(data)
        owner = self.owner
        if owner is not None and not self.events:
            # A callback owner takes a read as it is (the usual read is a whole answer,
            # which the proxy rewrites from its bytes): what it does not take it feeds.
            owner.received(data)
            return
        if self.feed(data):
            self._wake()

    def feed(self, data: bytes) -> bool:
        """The parser's events of ``data`` queued for the owner; True when there were any."""
        events = self.parser.feed(data)
        if events:
            self.queue(events)
            return True
        return False

    def between_answers(self, data: bytes) -> bool:
        """``data`` (just received, nothing queued) starts at an answer's first byte: it
        is the first read since the request went out, or the parser holds nothing."""
        return self.received == len(data) or self.parser.idle

    def queue(self, events: list) -> None:
        """Queues parser events for the owner, pausing reading past HIGH_WATER body bytes."""
        for ev in events:
            if type(ev) is bytes:
                self.buffered += len(ev)
        self.events.extend(events)
        if self.buffered > HIGH_WATER and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def eof_received(self):
        return False  # close the transport: we never half-close towards the server

    def connection_lost(self, exc) -> None:
        if self.closed and self.transport is None:
            return
        self.closed = True
        self.exc = exc
        self.transport = None
        if self.pooled:
            self.pool.forget(self)
            return
        try:
            self.events.extend(self.parser.feed_eof())
        except Exception:  # a dead parser: the owner sees the loss
            pass
        self._wake()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake()

    def _wake(self) -> None:
        if self.owner is not None:
            self.owner.wake()
            return
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- used by the owning coroutine -------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionLost("the server closed the connection")
        self.transport.write(data)

    async def _wait(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        fut = self.waiter = loop.create_future()
        deadlines = self.pool.deadlines
        deadlines.add(fut, timeout)
        try:
            if await fut is _TIMEOUT:
                raise ReadTimeout()
        finally:
            deadlines.remove(fut)
            self.waiter = None

    async def drain(self, timeout: float) -> None:
        """Waits until the write buffer drains; returns early if a response arrives."""
        while self.write_paused and not self.closed and not self.events:
            await self._wait(timeout)
        if self.closed and not self.events:
            raise ConnectionLost("the server closed the connection")

    async def next_event(self, timeout: float):
        """The next parser event; None when the connection is gone with nothing left."""
        events = self.events
        while not events:
            if self.closed:
                return None
            await self._wait(timeout)
        ev = events.popleft()
        if type(ev) is bytes:
            self.buffered -= len(ev)
            if self.read_paused and self.buffered <= LOW_WATER and self.transport is not None:
                self.read_paused = False
                self.transport.resume_reading()
        return ev

    def has_final_head(self) -> bool:
        """A final (non-1xx) response head is queued: the server has answered."""
        return any(type(ev) is ResponseHead and ev.status >= 200 for ev in self.events)

    def take_whole_body(self) -> bytes | None:
        """The rest of the current body if it has fully arrived (END queued), else None."""
        events = self.events
        for i, ev in enumerate(events):
            if ev is END:
                pieces = [events.popleft() for _ in range(i)]
                events.popleft()
                self.buffered -= sum(map(len, pieces))
                if self.read_paused and self.transport is not None:
                    self.read_paused = False
                    self.transport.resume_reading()
                return b"".join(pieces)
            if type(ev) is not bytes:
                return None
        return None

    def abort(self) -> None:
        if self.pooled:
            self.pool.forget(self)
        self.closed = True
        t = self.transport
        if t is not None:
            self.transport = None
            t.abort()


class _ConnectReply(asyncio.Protocol):
    """An HTTP CONNECT proxy's answer: the status of its reply head (what follows the
    head is the tunnel's, handed on as ``rest``)."""

    def __init__(self) -> None:
        self.status: asyncio.Future = asyncio.get_running_loop().create_future()
        self.buffer = b""
        self.rest = b""

    def data_received(self, data: bytes) -> None:
        if self.status.done():
            self.rest += data
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > 16384:
                self.status.set_exception(BadResponse("CONNECT reply head over 16 KiB"))
            return
        line = self.buffer[:self.buffer.find(b"\r\n")].split(b" ", 2)
        self.rest = self.buffer[end + 4:]
        if len(line) < 2 or not line[0].startswith(b"HTTP/1.") or not line[1].isdigit():
            self.status.set_exception(BadResponse(f"bad CONNECT reply {line!r:.60}"))
        else:
            self.status.set_result(int(line[1]))

    def connection_lost(self, exc) -> None:
        if not self.status.done():
            self.status.set_exception(ConnectionLost("the proxy closed the connection"))


class Pool:
    """Keep-alive connections to one (scheme, host, port): a stack, warmest on top.

    ``connect_to``: the address to connect to instead of resolving ``host`` (a name
    checked once, as webhooks do against request forgery; TLS still checks the
    certificate for ``host``). ``proxy``: (host, port) of an HTTP CONNECT proxy the
    connections are tunnelled through (egress from chosen addresses)."""

    __slots__ = ("host", "port", "ssl", "idle", "pool_size", "closed", "deadlines", "connect_to", "proxy")

    def __init__(self, host: str, port: int, pool_size: int, deadlines: Deadlines,
                 ssl_context: ssl.SSLContext | None = None, connect_to: str | None = None,
                 proxy: tuple[str, int] | None = None) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.deadlines = deadlines
        self.idle: list[ClientConnection] = []
        self.pool_size = pool_size
        self.closed = False
        self.connect_to = connect_to
        self.proxy = proxy

    def take(self) -> ClientConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            conn.pooled = False
            if not conn.closed:
                return conn
        return None

    def release(self, conn: ClientConnection) -> None:
        if (self.closed or conn.closed or not conn.reusable or conn.events
                or len(self.idle) >= self.pool_size):
            conn.abort()
            return
        conn.pooled = True
        self.idle.append(conn)

    def forget(self, conn: ClientConnection) -> None:
        conn.pooled = False
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    async def connect(self, timeout: float) -> ClientConnection:
        """A new connection (TLS with SNI = host when the pool has a context).
        Raises TimeoutError or OSError (ssl.SSLError is one)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            if self.proxy is not None:
                return await self._tunnel(loop)
            _, conn = await loop.create_connection(
                lambda: ClientConnection(self), self.connect_to or self.host, self.port, ssl=self.ssl,
                server_hostname=self.host if self.ssl is not None else None)
        return conn

    async def _tunnel(self, loop) -> ClientConnection:
        transport, reply = await loop.create_connection(_ConnectReply, *self.proxy)
        try:
            host = self.connect_to or self.host
            authority = (f"[{host}]" if ":" in host else host).encode() + b":%d" % self.port
            transport.write(b"CONNECT %s HTTP/1.1\r\nhost: %s\r\n\r\n" % (authority, authority))
            status = await reply.status
            if status != 200:
                raise ConnectionRefusedError(f"proxy {self.proxy[0]}:{self.proxy[1]} answered {status} "
                                             f"to CONNECT {authority.decode()}")
            conn = ClientConnection(self)
            if self.ssl is not None:
                transport = await loop.start_tls(transport, conn, self.ssl, server_hostname=self.host)
            else:
                transport.set_protocol(conn)
            conn.connection_made(transport)
        except BaseException:
            transport.abort()
            raise
        if reply.rest:
            conn.data_received(reply.rest)
        return conn

    def close(self) -> None:
        self.closed = True
        while self.idle:
            self.idle.pop().abort()


# -- one exchange on one connection --------------------------------------------------------

async def send_body(conn: ClientConnection, body, chunked: bool, timeout: float) -> None:
    """Streams a request body (an async iterator of bytes) with write flow control."""
    async for piece in body:
        if conn.closed or conn.has_final_head():
            # The server answered (or gave up) before taking the whole body.
            conn.reusable = False
            return
        if not piece:
            continue
        conn.write(encode_chunk(piece) if chunked else piece)
        if conn.write_paused:
            await conn.drain(timeout)
    if chunked:
        conn.write(LAST_CHUNK)


async def exchange(conn: ClientConnection, data: bytes, body, chunked: bool, head_only: bool,
                   timeout: float, on_interim=None) -> ResponseHead:
    """Sends a request (``data``: its head; ``body``: None or an async iterator) and
    returns the final response head (1xx answers skipped: each but 100 handed to
    ``on_interim(status, headers)`` if given, e.g. 103 Early Hints). Raises ConnectionLost,
    ReadTimeout or BadResponse; ``conn.received`` tells afterwards whether any byte came.
    (One coroutine for all of it: this is the proxy's hot path.)"""
    conn.received = 0
    if head_only:
        conn.parser.expect_head_response()
    conn.write(data)
    if body is not None:
        await send_body(conn, body, chunked, timeout)
    deadlines = conn.pool.deadlines
    deadline = deadlines.start() + timeout
    interim = False
    while True:
        ev = await conn.next_event(max(deadline - deadlines.now, 0.001))
        if type(ev) is ResponseHead and ev.status >= 200:
            return ev
        if ev is None:
            raise ConnectionLost("connection closed")
        interim = before_final(ev, interim, on_interim)


def before_final(ev, interim: bool, on_interim) -> bool:
    """An upstream event before the answer's final head (the proxy's coroutine and callback
    exchanges both read them this way): a 1xx, handed to ``on_interim(status, headers)`` but
    a 100, or the END that follows one (``interim``: one is due). Returns whether an END is
    due next; raises BadResponse for anything else."""
    if type(ev) is ResponseHead:
        if ev.status == 101:
            raise BadResponse("101 Switching Protocols to a request without Upgrade")
        if on_interim is not None and ev.status != 100:
            on_interim(ev.status, ev.headers)
        return True   # 1xx: skipped here, with the END that follows it
    if ev is END and interim:
        return False
    if type(ev) is HTTPError:
        raise BadResponse(f"{ev.status} {ev.reason}")
    raise BadResponse(f"unexpected {ev!r:.40}")


class ResponseBody:
    """Streams one response body; owns the connection until the body ends. At its clean
    end the connection goes back to its pool (if the server keeps it alive); on an
    error or ``aclose`` before the end it is closed. ``ended``/``failed`` are hooks."""

    __slots__ = ("conn", "keep_alive", "timeout")

    def __init__(self, conn: ClientConnection, keep_alive: bool, timeout: float) -> None:
        self.conn: ClientConnection | None = conn
        self.keep_alive = keep_alive
        self.timeout = timeout

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        conn = self.conn
        if conn is None:
            raise StopAsyncIteration
        try:
            ev = await conn.next_event(self.timeout)
        except ReadTimeout:
            self._fail("body_timeout", f"no data for {self.timeout}s mid-body", ReadTimeout)
        except BaseException:
            self.conn = None
            conn.abort()
            self.gone(conn)
            raise
        if type(ev) is bytes:
            return ev
        if ev is END:
            self.conn = None
            self.ended(conn)
            self.release(conn)
            raise StopAsyncIteration
        if ev is None or conn.closed:
            self._fail("body_error", f"connection lost mid-body ({conn.exc or 'closed'})", ConnectionLost)
        self._fail("bad_response", f"bad response body: {getattr(ev, 'reason', ev)!r}", BadResponse)

    def _fail(self, outcome: str, why: str, error: type[Exception]):
        conn = self.conn
        self.conn = None
        conn.abort()
        raise self.failed(conn, outcome, why, error)

    async def aclose(self) -> None:
        conn = self.conn
        if conn is not None:  # the reader went away before the end
            self.conn = None
            conn.abort()
            self.gone(conn)

    # -- hooks ---------------------------------------------------------------------
    def ended(self, conn: ClientConnection) -> None:
        """The body ended cleanly."""

    def release(self, conn: ClientConnection) -> None:
        """After the clean end: the connection back to its pool (or closed)."""
        if self.keep_alive:
            conn.pool.release(conn)
        else:
            conn.abort()

    def failed(self, conn: ClientConnection, outcome: str, why: str, error: type[Exception]) -> Exception:
        """The body broke off; returns the exception to raise."""
        return error(why)

    def gone(self, conn: ClientConnection) -> None:
        """The reader stopped (cancelled, or aclose) before the end."""


class ClientResponse:
    __slots__ = ("head", "body")

    def __init__(self, head: ResponseHead, body: ResponseBody | bytes) -> None:
        self.head = head
        self.body = body  # bytes when the whole body came with the head


MAX_ROUTED_POOLS = 1024


class Client:
    """Pools by (scheme, host, port), shared by every user of one node; and pools to a
    checked address or through a proxy (``routed``, at most MAX_ROUTED_POOLS)."""

    def __init__(self, clock: Clock, pool_size: int = 32, ca_file: str | None = None) -> None:
        self.deadlines = Deadlines(clock)
        self.pool_size = pool_size
        self.ca_file = ca_file
        self.pools: dict[tuple[str, str, int], Pool] = {}
        # Pools to a checked address or through a proxy (webhooks): keyed by what tenants
        # choose (any URL, any DNS answer), so the least recently used are closed past
        # MAX_ROUTED_POOLS instead of kept for ever.
        self.routed: OrderedDict[tuple, Pool] = OrderedDict()
        self._tls: ssl.SSLContext | None = None

    def tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            # The system's CAs, plus ca_file when given (a private origin, a test ACME CA):
            # the client is shared, so a CA for one origin must not drop the others'.
            self._tls = ssl.create_default_context()
            if self.ca_file:
                self._tls.load_verify_locations(cafile=self.ca_file)
        return self._tls

    def pool(self, scheme: str, host: str, port: int, connect_to: str | None = None,
             proxy: tuple[str, int] | None = None) -> Pool:
        if connect_to is None and proxy is None:
            key = (scheme, host, port)
            pool = self.pools.get(key)
            if pool is None:
                ctx = self.tls_context() if scheme == "https" else None
                pool = self.pools[key] = Pool(host, port, self.pool_size, self.deadlines, ctx)
            return pool
        key = (scheme, host, port, connect_to, proxy)
        pool = self.routed.get(key)
        if pool is not None:
            self.routed.move_to_end(key)
            return pool
        if len(self.routed) >= MAX_ROUTED_POOLS:
            self.routed.popitem(last=False)[1].close()   # (its requests under way finish, unpooled)
        ctx = self.tls_context() if scheme == "https" else None
        pool = self.routed[key] = Pool(host, port, self.pool_size, self.deadlines, ctx, connect_to, proxy)
        return pool

    def pool_for(self, url: str) -> Pool:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        return self.pool(parts.scheme or "http", parts.hostname or "127.0.0.1",
                         parts.port or (443 if tls else 80))

    async def request(self, pool: Pool, method: bytes, target: bytes, headers: list, *,
                      connect_timeout: float, read_timeout: float, body=None, length: int = -2,
                      head_only: bool = False, idempotent: bool = False,
                      on_interim=None) -> ClientResponse:
        """One request through ``pool``. ``body``: None, bytes (sent with the head), or an
        async iterator of bytes; ``length``: the body's length, -1 chunked, -2 none;
        ``on_interim(status, headers)``: the answer's 1xx but 100 (see ``exchange``).
        Raises TimeoutError/OSError (connect), ConnectionLost, ReadTimeout or BadResponse.
        A pooled connection found stale (closed before any answer) is replaced by a fresh
        one once, when the request can be sent again (its method is idempotent, or the
        caller says it is: a webhook with its delivery id)."""
        data = request_head(method, target, headers, length)
        if type(body) is bytes:
            data, body = data + body, None
        retry_stale = body is None and (idempotent or method in IDEMPOTENT)
        fresh = False
        while True:
            conn = None if fresh else pool.take()
            reused = conn is not None
            if conn is None:
                conn = await pool.connect(connect_timeout)
            try:
                head = await exchange(conn, data, body, length == -1, head_only, read_timeout, on_interim)
            except ConnectionLost:
                conn.abort()
                if reused and conn.received == 0 and retry_stale:
                    retry_stale, fresh = False, True
                    continue
                raise
            except BaseException:
                conn.abort()
                raise
            whole = conn.take_whole_body()
            if whole is None:
                return ClientResponse(head, ResponseBody(conn, head.keep_alive, read_timeout))
            if head.keep_alive:
                pool.release(conn)
            else:
                conn.abort()
            return ClientResponse(head, whole)

    def close(self) -> None:
        self.deadlines.close()
        for pool in (*self.pools.values(), *self.routed.values()):
            pool.close()
