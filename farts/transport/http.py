"""The HTTP handler interface every HTTP service implements.

A handler is any object with ``handle(request) -> Response | Fixed | Awaitable[...]``.
The transport parses, enforces the limits, resolves tenant and route, calls the
handler, and writes what it returns:

- ``Fixed``: a complete response framed once when the route is built; the fast path
  for fixed answers and error pages: no task, no per-request object.
- ``Response``: status, headers and a body that is ``bytes`` or an async iterator of
  ``bytes`` (streamed with write flow control, chunked when no length is known).
- ``Response`` with a ``FileBody``: a body sent from a file (sendfile on plain HTTP).
- an awaitable of either: the transport runs it as a task; later pipelined requests
  wait their turn so responses stay in order.
- ``Upgrade`` (returned at once, not awaited): the request becomes a stream, a two-way
  byte stream (WebSocket) or a never-ending body (an event stream), that the handler
  writes to through a ``Sink`` and reads through ``StreamHandler`` callbacks; see there.

The request body is an async iterator (``request.body``) fed by the connection with
read flow control, so neither direction is ever fully buffered.

Nothing here is HTTP/1-specific: a handler reads the Request's version-neutral view
(never the HTTP/1 parser's head) and returns one of the above, so another HTTP version's
adapter can drive the same handlers.  HTTP/1.1 is ``h1.py`` (the connection's states,
sans-IO) and ``connection.py`` (its asyncio adapter).
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fast.http1 import REASONS, Fixed, HandlerRequest, encode_chunk  # noqa: F401 (REASONS: re-exported)

# The types of the future-like answers a handler may return that the transport waits for
# by their done callback, with no task (asyncio.Future and its subclasses are tested for
# by isinstance): the proxy's compiled Exchange, which is a future by its methods only.
BY_CALLBACK: set[type] = set()


def answers_by_callback(cls: type) -> type:
    """Class decorator: the transport waits for this type's objects by their
    ``add_done_callback`` (and cancels them with ``cancel``), as for a Future."""
    BY_CALLBACK.add(cls)
    return cls


class BodyTooLarge(Exception):
    """The request body passed the route's limit (the transport answers 413)."""


class ClientGone(Exception):
    """The client closed the connection before the request body was complete."""


@dataclass(slots=True)
class Response:
    status: int = 200
    headers: list[tuple[bytes | str, bytes | str]] = field(default_factory=list)
    # bytes, or an async iterator of bytes for a streamed body.
    body: bytes | AsyncIterator[bytes] = b""
    # For a streamed body: its length when known (else the body is sent chunked).
    content_length: int = -1
    # Answering HEAD, 204 or 304: the head only (content_length still describes it).
    head_only: bool = False
    # Trailer fields after a streamed body: a list, or a function called once the body
    # has ended (their values are usually known only then, e.g. a checksum).
    trailers: list | Callable[[], list] | None = None
    # What the handler measured of this request, for the slow-request log: the proxy's
    # (started, upstream connect seconds or -1 when pooled, upstream head at), perf_counter.
    timings: tuple | None = None


class FileBody:
    """A response body read from a file: ``count`` bytes of ``fd`` from ``offset``, sent
    with os.sendfile on plain HTTP while the socket takes it, else in chunks read off the
    loop (and always on TLS).  Set the Response's content_length to ``count``.

    ``owned``: the transport closes ``fd`` when done.  Otherwise the handler keeps it open
    (a cache's descriptor shared by many answers) and the transport takes a dup() of it
    before the body outlives the call that returned it."""

    __slots__ = ("fd", "offset", "count", "started", "owned")

    def __init__(self, fd: int, offset: int, count: int, owned: bool = True) -> None:
        # (One assignment each: a tuple assignment of four builds a tuple, and a CDN hit
        # by sendfile makes one of these per request.)
        self.fd = fd
        self.offset = offset
        self.count = count
        self.owned = owned
        self.started = False  # the head is on the wire (the connection continues it)


class Upgrade:
    """The handler turns the request into a stream (returned at once, not awaited).

    ``kind`` is STREAM (a two-way byte stream: WebSocket; on HTTP/1.1 a 101 switching to
    the request's Upgrade protocol, over HTTP/2 a 200 to an extended CONNECT) or EVENTS
    (a never-ending response body: an event stream; on HTTP/1.1 a chunked 200).  The
    transport writes the head from ``status`` and ``headers`` (the handler never builds a
    raw head nor looks at the HTTP version), then drives ``handler``, a StreamHandler,
    with a Sink.  A request the transport cannot switch (a body or pipelined requests
    after it; an event stream over HTTP/1.0, which has no chunked bodies) is answered
    400 and ``handler.opened`` is never called."""

    __slots__ = ("status", "headers", "handler", "kind")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], handler: StreamHandler,
                 kind: str) -> None:
        self.status, self.headers, self.handler, self.kind = status, headers, handler, kind


STREAM, EVENTS = "stream", "events"
# How a sink frames what is written to it: RAW bytes go as they are (a switched
# protocol, an HTTP/2 DATA frame's payload), CHUNKED ones are the pieces of an HTTP/1.1
# chunked body (the writer encodes each piece with ``frame``, once for all sinks alike).
RAW, CHUNKED = "raw", "chunked"


def frame(framing: str, data: bytes) -> bytes:
    """``data`` as it goes to a sink of ``framing``: encode once, write to many."""
    return encode_chunk(data) if framing == CHUNKED else data


class Sink(Protocol):
    """Where a stream handler writes (the transport's side of an Upgrade).  Over
    HTTP/1.1 the methods are the socket transport's own (no call in between).

    ``framing``: RAW or CHUNKED (see ``frame``). ``fd``: the plain TCP socket when the
    caller may send to it directly (nothing must be buffered in the sink then, see
    fast/fanout.pyx), else -1 (TLS, HTTP/2)."""

    framing: str
    fd: int

    def write(self, data: bytes) -> None: ...
    def close(self) -> None:
        """Ends the stream after what is written (an event stream's last chunk)."""
    def abort(self) -> None: ...
    def is_closing(self) -> bool: ...
    def get_write_buffer_size(self) -> int:
        """Bytes written and not yet sent."""
    def pause_reading(self) -> None:
        """Stop reading from the client (what it sends cannot be passed on now)."""
    def resume_reading(self) -> None: ...


class StreamHandler(Protocol):
    def opened(self, sink: Sink, rest: bytes) -> None:
        """The head is written; ``rest``: bytes the client sent after its request."""
    def data_received(self, data: bytes) -> None: ...
    def pause_writing(self) -> None:
        """The sink holds too much: stop writing until resume_writing."""
    def resume_writing(self) -> None: ...
    def closed(self, exc: BaseException | None) -> None:
        """The stream is gone (either side); the sink must not be used any more."""



class Handler(Protocol):
    def handle(self, request: Request) -> Response | Fixed | Awaitable[Response | Fixed]: ...


class RequestBody:
    """The body of one request, delivered piece by piece by the connection.

    Flow control: the connection pauses reading from the socket while more than
    ``high_water`` bytes wait here, and resumes when the handler has taken them.
    """

    __slots__ = ("_chunks", "_buffered", "_done", "_error", "_waiter", "_conn", "received",
                 "limit", "_started", "discarding")

    high_water = 256 * 1024

    def __init__(self, conn: Any, limit: int) -> None:
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._conn = conn
        self._started = False
        self.received = 0
        self.limit = limit
        self.discarding = False

    # -- fed by the connection -------------------------------------------------
    def feed(self, data: bytes) -> bool:
        """Returns False when the limit is passed (the caller answers 413)."""
        self.received += len(data)
        if self.received > self.limit:
            self.fail(BodyTooLarge())
            return False
        if self.discarding:
            return True
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > self.high_water:
            self._conn.pause_body()
        self._wake()
        return True

    def finish(self) -> None:
        self._done = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self._done:
            self._error = exc
            self._done = True
            self._wake()

    def discard(self) -> None:
        """The response went out before the body came in: count the rest, keep none."""
        self.discarding = True
        self._chunks.clear()
        self._buffered = 0
        self._conn.resume_body()
        self.fail(ClientGone())

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- read by the handler ---------------------------------------------------
    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        if not self._started:
            self._started = True
            self._conn.body_wanted()  # sends 100 Continue if the client waits for it
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._buffered <= self.high_water // 2:
            self._conn.resume_body()
        return data

    async def read(self) -> bytes:
        """The whole body (for small bodies only: handlers of large ones iterate)."""
        return b"".join([c async for c in self])


# One request as a handler sees it: method, target, path, query, host, headers,
# header(name), version ("1.0"/"1.1"; "2" over HTTP/2), upgrade, content_length (-1:
# not known in advance), and what the edge knows: tenant, route, client, scheme, body
# (a RequestBody or None), start. Compiled (fast.http1) because every handler call makes
# one; an HTTP/2 stream will offer the same names.
Request = HandlerRequest
