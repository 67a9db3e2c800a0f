"""The asyncio side of HTTP/2: a thin Protocol around the sans-IO ``H2Machine``.

The frames, the stream table and the limits are in ``h2conn.py`` (read it first); this
module moves bytes between the socket and the machine, and runs each stream's request
through the SAME router and handlers as HTTP/1.1 (``connection.py``), with the same
version-neutral view (``H2Request``: the names of ``fast.http1.HandlerRequest``,
``version`` "2") and the same answers (``Fixed``, ``Response`` with bytes, a streamed
body, a ``FileBody``, trailers; ``Upgrade`` of kind EVENTS as a never-ending body).

- ``data_received`` -> ``machine.receive`` -> ``_on_head`` (route, call the handler),
  ``_on_body`` (the stream's ``H2Body``), ``_on_end``, ``_on_reset``, window updates
  wake the senders waiting for them, ``Closed`` flushes the GOAWAY and closes.
- Request bodies: DATA goes into the stream's ``H2Body``; the window is handed back to
  the client as the handler takes the bytes (``consumed``), so a handler that does not
  read makes the client stop, not the server buffer.
- Responses: head and as much body as the peer's windows allow at once; the rest (and
  every streamed or file body) by a task that waits for WINDOW_UPDATE and for the
  socket to drain.
- ``check_timeouts(now)`` (the listener's tick): no request for header_timeout after
  connecting, nothing open for idle_timeout, or nothing from the client for
  idle_timeout while answers wait for it (its socket or its flow-control windows).
- ``shutdown()``: graceful GOAWAY; the connection closes when its streams are done.

Which machine serves a connection: ``choose_protocol`` (ALPN on TLS, the client
preface on a plain listener with h2c).  WebSocket over HTTP/2 (RFC 8441) comes
as an extended CONNECT (``:protocol``), which the handler sees as the GET with Upgrade
it is on HTTP/1.1; an ``Upgrade`` of kind STREAM is then a 200 and a two-way stream.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
from time import perf_counter

from .h2conn import (
    PREFACE,
    Body,
    BodyEnd,
    Closed,
    ErrorCodes,
    H2Machine,
    Malformed,
    RequestHead,
    Reset,
    WindowOpened,
)
from .http import CHUNKED, EVENTS, RAW, ClientGone, FileBody, Fixed, RequestBody, Response, Upgrade

log = logging.getLogger("farts.http")

FILE_CHUNK = 256 * 1024     # a file body's piece read off the loop
SMALL_FILE = 64 * 1024      # a file body up to this is read at once (page cache: a CDN hit)
# Fields that mean something only on one HTTP/1.1 connection (RFC 9113 §8.2.2).
CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection",
                                 b"transfer-encoding", b"upgrade"))
WS_KEY = b"AAAAAAAAAAAAAAAAAAAAAA=="   # (16 zero bytes: see _on_head, RFC 8441)
NOT_OVER_H2 = frozenset((b"sec-websocket-accept",))   # an HTTP/1.1 upgrade's own fields


class H2Request:
    """One HTTP/2 stream's request as a handler sees it: the names of
    ``fast.http1.HandlerRequest`` (``http.Request``), so handlers never look at the
    version.  ``headers`` has no pseudo-headers; :authority comes as ``host``."""

    __slots__ = ("method", "target", "path", "query", "host", "headers", "upgrade",
                 "content_length", "tenant", "route", "client", "scheme", "body", "start",
                 "stream_id", "_conn")

    version = "2"

    def send_interim(self, status: int, headers: list) -> bool:
        """A 1xx interim answer (103 Early Hints) ahead of the final one, written at once;
        False when it cannot be (the answer has started; the stream or connection gone)."""
        return self._conn.send_interim(self.stream_id, status, headers)

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def __repr__(self) -> str:
        return f"<H2Request {self.method!r} {self.target!r} stream {self.stream_id}>"


class H2Body(RequestBody):
    """A stream's request body: each piece the handler takes is handed back to the
    client's send window (the flow control that bounds what we hold)."""

    __slots__ = ("stream_id",)

    async def __anext__(self) -> bytes:
        data = await RequestBody.__anext__(self)
        self._conn.consumed(self.stream_id, len(data))
        return data


def split_host(authority: bytes) -> bytes:
    """The routing host of an authority: lowercase, no port, no userinfo."""
    host = authority.rpartition(b"@")[2].lower()
    if host.startswith(b"["):
        return host[:host.find(b"]") + 1] if b"]" in host else host
    return host.partition(b":")[0]


_fixed_parts: dict[int, tuple] = {}


def fixed_parts(fixed: Fixed) -> tuple[int, list, bytes]:
    """A Fixed answer (framed for HTTP/1.1 once) as status, h2 fields and body."""
    parts = _fixed_parts.get(id(fixed))
    if parts is not None and parts[0] is fixed:
        return parts[1]
    data = fixed.keep
    head = data[:len(data) - fixed.body_len] if fixed.body_len else data
    lines = head.split(b"\r\n")
    fields = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name not in CONNECTION_SPECIFIC:
            fields.append((name, value.strip()))
    value = (fixed.status, fields, data[len(head):])
    if len(_fixed_parts) > 1024:  # (Fixed.error makes new ones: keep the cache small)
        _fixed_parts.clear()
    _fixed_parts[id(fixed)] = (fixed, value)
    return value


def response_fields(headers, length: int) -> list[tuple[bytes, bytes]]:
    out = []
    has_length = False
    for name, value in headers:
        name = (name.encode("latin-1") if isinstance(name, str) else name).lower()
        if name in CONNECTION_SPECIFIC or name == b"te":
            continue
        if name == b"content-length":
            has_length = True
        out.append((name, value.encode("latin-1") if isinstance(value, str) else value))
    if length >= 0 and not has_length:
        out.append((b"content-length", str(length).encode()))
    return out


class StreamState:
    """What the adapter keeps per stream: the request, its body and the task answering."""

    __slots__ = ("id", "req", "body", "task", "waiter", "route", "start", "sink")

    def __init__(self, sid: int) -> None:
        self.id = sid
        self.req: H2Request | None = None
        self.body: H2Body | None = None
        self.task: asyncio.Task | None = None
        self.waiter: asyncio.Future | None = None
        self.route = None
        self.start = 0.0
        self.sink: H2Sink | None = None


class HTTP2Connection(asyncio.Protocol):
    def __init__(self, listener) -> None:
        self.listener = listener
        self.machine = H2Machine(listener.h2_limits, listener.now)
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.streams: dict[int, StreamState] = {}
        self.closed = False
        self.admitted = False
        self.write_paused = False
        self.read_paused = False
        self.drain_waiters: list[asyncio.Future] = []
        self.connected_at = self.last_activity = listener.now
        self.gone: asyncio.Future | None = None   # done when the connection is lost
        self.receiving = False

    # -- connection lifetime ----------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.gone = asyncio.get_running_loop().create_future()
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else "unix"
        if self.listener.admit(self) is not None:
            self.closed = True
            self.machine._fail(ErrorCodes.REFUSED_STREAM)
            transport.write(self.machine.data_to_send())
            transport.close()
            return
        self.admitted = True
        self.listener.h2_connections += 1
        self._flush()   # our SETTINGS

    def connection_lost(self, exc) -> None:
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)
        if self.admitted:
            self.admitted = False
            self.listener.release(self)
            self.listener.h2_connections -= 1
        self.closed = True
        self.transport = None
        self._forget_all()
        waiters, self.drain_waiters = self.drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_exception(ClientGone())

    def pause_writing(self) -> None:
        self.write_paused = True
        # A peer that does not read must not make us queue more: its PINGs, SETTINGS
        # and requests wait in the socket until it reads.
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()
        for st in list(self.streams.values()):
            if st.sink is not None:
                st.sink.conn_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last_activity = self.listener.now
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()
        waiters, self.drain_waiters = self.drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)
        for st in list(self.streams.values()):
            if st.sink is not None:
                st.sink.pump()

    async def drain(self) -> None:
        if self.closed:
            raise ClientGone()
        if self.write_paused:
            w = asyncio.get_running_loop().create_future()
            self.drain_waiters.append(w)
            await w

    def send_interim(self, sid: int, status: int, headers: list) -> bool:
        if self.closed or not self.machine.send_interim(sid, status, headers):
            return False
        self._flush()
        return True

    def _flush(self) -> None:
        """Writes what the machine has to send; while input is being handled this waits
        for its end (``data_received`` flushes once: one TLS record and one send for all
        the answers a read produced, not one per stream)."""
        if self.receiving:
            return
        data = self.machine.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self.transport.close()

    def shutdown(self) -> None:
        """Graceful GOAWAY: streams in progress finish, then the connection closes."""
        if self.closed:
            return
        self.machine.goaway()
        self.listener.h2_event("goaway_sent_shutdown")
        self._flush()
        if not self.streams:
            self._close()

    # -- input ------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        listener = self.listener
        listener.counts.bytes_in += len(data)
        self.last_activity = listener.now
        self.receiving = True
        try:
            self._received(self.machine.receive(data, listener.now))
        finally:
            self.receiving = False
        self._flush()

    def _received(self, events: list) -> None:
        listener = self.listener
        for ev in events:
            t = type(ev)
            if t is Body:
                self._on_body(ev)
            elif t is RequestHead:
                self._on_head(ev)
            elif t is BodyEnd:
                st = self.streams.get(ev.stream_id)
                if st is not None and st.body is not None:
                    st.body.finish()
                elif st is not None and st.sink is not None:
                    st.sink.close()   # the client ended its side of a two-way stream
            elif t is WindowOpened:
                self._wake(ev.stream_id)
            elif t is Reset:
                st = self.streams.pop(ev.stream_id, None)
                listener.h2_event("reset_by_client")
                if st is not None:
                    self._forget(st, ClientGone())
            elif t is Malformed:
                listener.h2_event("malformed_request")
                log.info("http2 request from %s refused (stream %d): %s", self.client, ev.stream_id, ev.reason)
                st = self.streams.pop(ev.stream_id, None)
                if st is not None:   # (trailers: the request was under way)
                    self._forget(st, ClientGone())
            elif t is Closed:
                listener.h2_event("goaway_received" if ev.by_peer else "goaway_" + ev.error.lower())
                if not ev.by_peer:
                    log.info("http2 connection from %s closed: %s", self.client, ev.error)
                self._forget_all()
                self.receiving = False
                self._close()
                return

    def _on_body(self, ev: Body) -> None:
        st = self.streams.get(ev.stream_id)
        if st is not None and st.sink is not None:   # a two-way stream (RFC 8441)
            sink = st.sink
            if sink.reading_paused:   # the window is handed back on resume_reading
                sink.held += len(ev.data)
            else:
                self.machine.consumed(ev.stream_id, len(ev.data))
            sink.received(ev.data)
            return
        if st is None or st.body is None:
            self.machine.consumed(ev.stream_id, len(ev.data))
            return
        if not st.body.feed(ev.data):
            self._fail(st, 413, "request body too large")

    def _fail(self, st: StreamState, status: int, reason: str) -> None:
        """Answers the stream with an error, unless its answer has started (then resets it)."""
        if st.task is not None:
            st.task.cancel()
            st.task = None
        if self.machine.head_sent(st.id):
            self._reset(st, ErrorCodes.CANCEL)
            return
        self.listener.count_error(status)
        self.listener.h2_requests += 1
        self._answer_fixed(st, Fixed.error(status, reason), st.req.method if st.req else None,
                           counted=False)

    def _wake(self, sid: int) -> None:
        streams = list(self.streams.values()) if sid == 0 else [self.streams.get(sid)]
        for st in streams:
            if st is None:
                continue
            if st.waiter is not None and not st.waiter.done():
                st.waiter.set_result(None)
            if st.sink is not None:
                st.sink.pump()

    def _forget(self, st: StreamState, exc: BaseException) -> None:
        """The stream is gone (reset, or the connection ended): stop its work."""
        if st.body is not None:
            st.body.fail(exc)
        if st.task is not None and not st.task.done():
            st.task.cancel()
        if st.waiter is not None and not st.waiter.done():
            st.waiter.set_exception(exc)
        if st.sink is not None:
            st.sink.lost(exc)

    def _forget_all(self) -> None:
        streams, self.streams = self.streams, {}
        for st in streams.values():
            self._forget(st, ClientGone())

    def _reset(self, st: StreamState, code: int) -> None:
        self.streams.pop(st.id, None)
        self.machine.reset(st.id, code)
        self.listener.h2_event("reset_by_server")
        self._forget(st, ClientGone())
        self._flush()
        self._stream_done()

    # -- one request --------------------------------------------------------------------
    def _on_head(self, ev: RequestHead) -> None:
        listener = self.listener
        sid = ev.stream_id
        if not self.machine.is_open(sid):   # reset (or the connection ended) in the same read
            return
        method = path_b = authority = protocol = None
        fields = []
        content_length = -1
        for name, value in ev.headers:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path_b = value
                elif name == b":authority":
                    authority = value
                elif name == b":protocol":
                    protocol = value
                continue
            if name == b"content-length":
                content_length = int(value)   # (the machine has checked it is a number)
            fields.append((name, value))
        if ev.too_large:
            listener.parse_error(431)
            self._fail(self._stream(sid), 431, "request header fields too large")
            return
        host_field = next((v for n, v in fields if n == b"host"), None)
        if authority is None:
            authority = host_field or b""
        elif host_field is None:
            fields.insert(0, (b"host", authority))
        if method == b"CONNECT":
            if protocol is None or path_b is None:   # a tunnel: not served here
                self._fail(self._stream(sid), 501, "CONNECT is not supported")
                return
            # RFC 8441: an extended CONNECT is what a GET with Upgrade is on HTTP/1.1,
            # and the handler sees it so.  Its handshake has no Sec-WebSocket-Key (the
            # SETTINGS did that job): a fixed one stands in, and the Accept computed from
            # it is not sent.
            method = b"GET"
            if protocol.lower() == b"websocket" and not any(n == b"sec-websocket-key" for n, _ in fields):
                fields.append((b"sec-websocket-key", WS_KEY))
        elif path_b is None:
            self._fail(self._stream(sid), 400, "no :path")
            return
        target = path_b
        path, _, query = target.partition(b"?")
        host = split_host(authority)
        resolved = listener.router.resolve(host, path)
        if type(resolved) is Fixed:   # unknown host or no route
            if not self._fixed_at_once(ev, resolved, method):
                st = self._stream(sid)
                self._open_body(st, ev, listener.limits.max_body_bytes)
                self._answer_fixed(st, resolved, method)
            return
        tenant, route, handler, body_limit = resolved
        if type(handler) is Fixed and listener.access_log is None and self._fixed_at_once(ev, handler, method):
            return   # (a static route: no Request object, no call, no stream state)
        st = self._stream(sid)
        st.route = route
        if content_length > body_limit:
            self._fail(st, 413, "request body too large")
            return
        body = self._open_body(st, ev, body_limit)
        if type(handler) is Fixed and listener.access_log is None:
            self._answer_fixed(st, handler, method)   # no Request object, no call
            return
        req = st.req = H2Request()
        req.method, req.target, req.path, req.query = method, target, path, query
        req.host, req.headers = host, fields
        req.upgrade = protocol.lower() if protocol is not None else None
        req.content_length = content_length
        req.tenant, req.route, req.client, req.scheme = tenant, route, self.client, listener.scheme
        req.body, req.stream_id, req._conn = body, sid, self
        if type(handler) is Fixed:
            self._answer_fixed(st, handler, method)
            return
        req.start = st.start = perf_counter()
        try:
            result = handler.handle(req)
        except Exception:
            log.exception("handler for %s failed", route.prefix)
            result = Fixed.error(500)
        t = type(result)
        if t is Fixed:
            self._answer_fixed(st, result, method, counted=False)
            self._record(st, result.status)
        elif t is Response and type(result.body) is bytes and self._answer_bytes(st, result):
            self._record(st, result.status)
        elif t is Upgrade:
            self._upgrade(st, result)
        else:
            st.task = asyncio.ensure_future(self._respond_later(st, result))

    def _stream(self, sid: int) -> StreamState:
        st = self.streams[sid] = StreamState(sid)
        return st

    def _open_body(self, st: StreamState, ev: RequestHead, limit: int) -> H2Body | None:
        if ev.ended:
            return None
        body = st.body = H2Body(self, limit)
        body.stream_id = st.id
        return body

    # called by H2Body (RequestBody's connection interface)
    def consumed(self, sid: int, n: int) -> None:
        if not self.closed:
            self.machine.consumed(sid, n)
            self._flush()

    def pause_body(self) -> None:
        """(The stream's receive window is the flow control: nothing to pause.)"""

    def resume_body(self) -> None:
        pass

    def body_wanted(self) -> None:
        pass

    # -- answers -------------------------------------------------------------------------
    def _answer_fixed(self, st: StreamState, fixed: Fixed, method: bytes | None,
                      counted: bool = True) -> None:
        """A Fixed answer; ``counted``: by the Fixed itself (the listener sums them), as
        HTTP/1.1 counts its fixed answers, else the caller records it."""
        status, fields, body = fixed_parts(fixed)
        head_only = method == b"HEAD" or not body
        machine = self.machine
        machine.send_head(st.id, status, fields, head_only)
        n = 0 if head_only else machine.send_data(st.id, body, True)
        if n < len(body) and not head_only:
            # (a window smaller than a fixed answer: rare; the rest waits for it)
            st.task = asyncio.ensure_future(self._rest_of_fixed(st, body[n:]))
        else:
            self._finish(st)
        if counted:
            self._count_fixed(fixed, status, st.req)
        self._flush()

    def _fixed_at_once(self, ev: RequestHead, fixed: Fixed, method: bytes | None) -> bool:
        """A Fixed answer to a request without a body, when the window takes all of it:
        written at once, and no stream state kept here (the answer ends the machine's
        stream).  False: not such a case, nothing done."""
        status, fields, body = fixed_parts(fixed)
        head_only = method == b"HEAD" or not body
        machine = self.machine
        sid = ev.stream_id
        if not ev.ended or (not head_only and len(body) > machine.window(sid)):
            return False
        machine.send_head(sid, status, fields, head_only)
        if not head_only:
            machine.send_data(sid, body, True)
        self._count_fixed(fixed, status, None)
        self._flush()
        self._stream_done()
        return True

    def _count_fixed(self, fixed: Fixed, status: int, req: H2Request | None) -> None:
        """Counted by the Fixed itself (the listener sums them), as HTTP/1.1 counts its
        fixed answers."""
        listener = self.listener
        served = fixed.served
        served[listener.name] = served.get(listener.name, 0) + 1
        listener.h2_requests += 1
        if listener.access_log is not None and req is not None:
            listener.log_access(req, status, 0.0, self.client)

    async def _rest_of_fixed(self, st: StreamState, rest: bytes) -> None:
        try:
            await self._send(st, rest, True)
        except (asyncio.CancelledError, ClientGone):
            return
        st.task = None
        self._finish(st)

    def _answer_bytes(self, st: StreamState, resp: Response) -> bool:
        """A Response with a bytes body, written now if the windows take all of it
        (else False: a task writes it)."""
        body = resp.body
        status = resp.status
        bodiless = status in (204, 304) or 100 <= status < 200
        skip = resp.head_only or st.req.method == b"HEAD" or bodiless
        if not skip and len(body) > self.machine.window(st.id):
            return False
        length = -1 if bodiless else (resp.content_length if resp.head_only else len(body))
        self.machine.send_head(st.id, status, response_fields(resp.headers, length),
                               skip or not body)
        if not skip and body:
            self.machine.send_data(st.id, body, True)
            self.listener.counts.bytes_out += len(body)
        self._finish(st)
        self._flush()
        return True

    def _finish(self, st: StreamState) -> None:
        """The stream's answer is complete (the machine has ended, or reset it when the
        request was still coming)."""
        if self.streams.get(st.id) is st:
            del self.streams[st.id]
            if st.body is not None:
                st.body.discard()
        self._stream_done()

    def _stream_done(self) -> None:
        if self.machine.goaway_sent and not self.streams:
            self._close()

    def _record(self, st: StreamState, status: int) -> None:
        listener = self.listener
        listener.h2_requests += 1
        listener.counts.record(st.route, status, st.start, st.req, self.client)

    async def _respond_later(self, st: StreamState, result) -> None:
        req = st.req
        try:
            if inspect.isawaitable(result):
                result = await result
            if type(result) is Upgrade:   # (decided after an await: the proxy's Tunnel)
                st.task = None
                self._upgrade(st, result)
                return
            if type(result) is Fixed:
                st.task = None
                self._answer_fixed(st, result, req.method, counted=False)
            else:
                await self._write_response(st, result)
                st.task = None
                self._finish(st)
            status = result.status
        except (asyncio.CancelledError, ClientGone):
            st.task = None
            if self.streams.get(st.id) is st:
                self._reset(st, ErrorCodes.CANCEL)
            return
        except Exception:
            st.task = None
            log.exception("handler for %s failed", req.route.prefix)
            status = 500
            if self.streams.get(st.id) is st:
                if self.machine.head_sent(st.id):
                    self._reset(st, ErrorCodes.INTERNAL_ERROR)
                else:
                    self._answer_fixed(st, Fixed.error(500, "internal error"), req.method, counted=False)
        self._record(st, status)

    async def _send(self, st: StreamState, data: bytes, end: bool) -> None:
        """Sends all of ``data`` as the windows open and the socket drains (``end``: the
        stream ends with it)."""
        machine = self.machine
        sid = st.id
        while True:
            if self.closed or not machine.is_open(sid):
                raise ClientGone()
            n = machine.send_data(sid, data, end)
            self._flush()
            self.listener.counts.bytes_out += n
            if n == len(data):
                break
            data = data[n:]
            if self.write_paused:
                await self.drain()
            if machine.window(sid) == 0:
                st.waiter = asyncio.get_running_loop().create_future()
                try:
                    await st.waiter
                finally:
                    st.waiter = None
        self.last_activity = self.listener.now

    async def _write_response(self, st: StreamState, resp: Response) -> None:
        machine = self.machine
        sid = st.id
        body = resp.body
        status = resp.status
        bodiless = status in (204, 304) or 100 <= status < 200
        skip = resp.head_only or st.req.method == b"HEAD" or bodiless
        if type(body) is FileBody:
            if not body.owned:   # (before any await: the handler's descriptor is open now)
                body.fd, body.owned = os.dup(body.fd), True
            try:
                machine.send_head(sid, status, response_fields(resp.headers, -1 if bodiless else resp.content_length),
                                  skip or body.count == 0)
                self._flush()
                if not skip and body.count:
                    await self._write_file(st, body)
            finally:
                os.close(body.fd)
            return
        if type(body) is bytes:
            length = -1 if bodiless else (resp.content_length if resp.head_only else len(body))
            machine.send_head(sid, status, response_fields(resp.headers, length), skip or not body)
            self._flush()
            if not skip and body:
                await self._send(st, body, True)
            return
        length = -1 if bodiless else resp.content_length
        machine.send_head(sid, status, response_fields(resp.headers, length), False)
        self._flush()
        sent = 0
        try:
            async for piece in body:
                if not piece or skip:
                    continue
                sent += len(piece)
                await self._send(st, piece, False)
        finally:
            close = getattr(body, "aclose", None)
            if close is not None:
                await close()
        if not skip and length >= 0 and sent != length:
            # The source ended short of its announced length: the answer is broken.
            self._reset(st, ErrorCodes.INTERNAL_ERROR)
            raise ClientGone()
        trailers = resp.trailers
        if trailers and not skip:
            trailers = trailers() if callable(trailers) else trailers
            machine.send_trailers(sid, response_fields(trailers, -1))
        else:
            machine.end(sid)
        self._flush()

    async def _write_file(self, st: StreamState, body: FileBody) -> None:
        loop = asyncio.get_running_loop()
        while body.count > 0:
            n = min(body.count, FILE_CHUNK)
            if n <= SMALL_FILE:   # (small: from the page cache, like HTTP/1.1's sendfile)
                data = os.pread(body.fd, n, body.offset)
            else:
                data = await loop.run_in_executor(None, os.pread, body.fd, n, body.offset)
            if not data:   # the file is shorter than announced
                self._reset(st, ErrorCodes.INTERNAL_ERROR)
                raise ClientGone()
            body.offset += len(data)
            body.count -= len(data)
            await self._send(st, data, body.count == 0)

    def _upgrade(self, st: StreamState, upgrade: Upgrade) -> None:
        """An Upgrade: EVENTS is a never-ending body; STREAM (an extended CONNECT, RFC
        8441) is a 200 and then the stream's DATA both ways are the protocol's bytes."""
        kind = upgrade.kind
        if kind != EVENTS and (st.req.upgrade is None or self.machine.state(st.id) != "open"):
            self._fail(st, 400, "a stream upgrade needs an extended CONNECT (RFC 8441)")
            self._record(st, 400)
            return
        status = 200 if kind != EVENTS else upgrade.status
        headers = [(n, v) for n, v in upgrade.headers if n.lower() not in NOT_OVER_H2]
        self.machine.send_head(st.id, status, response_fields(headers, -1), False)
        self._flush()
        self._record(st, status)
        if kind == EVENTS and st.body is not None:
            st.body.discard()
            st.body = None
        st.body = None   # (a STREAM's DATA go to the handler, see _on_body)
        sink = st.sink = H2Sink(self, st, upgrade.handler, CHUNKED if kind == EVENTS else RAW)
        upgrade.handler.opened(sink, b"")

    # -- timeouts (called about once a second by the listener) -----------------------------
    def check_timeouts(self, now: float) -> None:
        if self.closed:
            return
        limits = self.listener.limits
        quiet = now - self.last_activity
        kind = None
        if self.streams:
            # Answers wait for the client (its socket or its windows: a peer that never
            # sends WINDOW_UPDATE holds our handlers as surely as one that does not read)
            # and nothing has come from it for idle_timeout.
            if quiet > limits.idle_timeout and (self.write_paused or any(
                    st.waiter is not None or (st.sink is not None and st.sink.queue)
                    for st in self.streams.values())):
                kind = "stalled"
        elif self.machine.requests == 0:
            if now - self.connected_at > limits.header_timeout:
                kind = "header"
        elif quiet > limits.idle_timeout:
            kind = "idle"
        if kind is not None:
            self.listener.timeout(kind)
            self.machine.goaway()
            self._forget_all()
            self._close()


class H2Sink:
    """The Sink of an upgraded HTTP/2 stream: what the handler writes goes out as DATA
    frames as the stream's window allows; the handler is paused while more than HIGH
    bytes wait.  RAW (a two-way stream, RFC 8441): the bytes as they are, and the
    client's DATA go to the handler's data_received.  CHUNKED (an event stream): its
    writers frame their pieces as HTTP/1.1 chunks (see http.frame), taken off here."""

    __slots__ = ("conn", "st", "handler", "queue", "partial", "paused", "closing", "gone",
                 "framing", "reading_paused", "held")

    fd = -1
    HIGH, LOW = 256 * 1024, 64 * 1024

    def __init__(self, conn: HTTP2Connection, st: StreamState, handler, framing: str) -> None:
        self.conn, self.st, self.handler = conn, st, handler
        self.framing = framing
        self.queue = bytearray()
        self.partial = b""
        self.paused = False
        self.closing = False   # close() was called: end the stream once the queue is out
        self.gone = False
        # pause_reading: the client's DATA is still handed on, but its window is not given
        # back, so it can send no more than the stream's window until resume_reading.
        self.reading_paused = False
        self.held = 0

    def _unchunk(self, data: bytes) -> bytes:
        buf = self.partial + data if self.partial else data
        out = []
        i = 0
        while True:
            j = buf.find(b"\r\n", i)
            if j < 0:
                break
            size = int(buf[i:j].split(b";", 1)[0], 16)
            end = j + 2 + size
            if size == 0:   # the last chunk: close() ends the stream
                i = len(buf)
                break
            if end + 2 > len(buf):
                break
            out.append(buf[j + 2:end])
            i = end + 2
        self.partial = buf[i:]
        return b"".join(out)

    def write(self, data: bytes) -> None:
        if self.gone or self.closing:
            return
        self.queue += self._unchunk(data) if self.framing == CHUNKED else data
        self.pump()

    def received(self, data: bytes) -> None:
        if not self.gone and data:
            self.handler.data_received(data)

    def pump(self) -> None:
        if self.gone:
            return
        conn = self.conn
        queue = self.queue
        if queue:
            n = conn.machine.send_data(self.st.id, bytes(queue))
            del queue[:n]
            conn._flush()
        if self.closing and not queue:
            self.gone = True
            conn.machine.end(self.st.id)
            conn._flush()
            conn._finish(self.st)
            self.handler.closed(None)
            return
        if not self.paused and len(queue) > self.HIGH:
            self.paused = True
            self.handler.pause_writing()
        elif self.paused and len(queue) < self.LOW and not conn.write_paused:
            self.paused = False
            self.handler.resume_writing()

    def conn_paused(self) -> None:
        if not self.paused and not self.gone:
            self.paused = True
            self.handler.pause_writing()

    def close(self) -> None:
        if not self.gone and not self.closing:
            self.closing = True
            self.pump()

    def abort(self) -> None:
        if not self.gone:
            self.conn._reset(self.st, ErrorCodes.CANCEL)

    def lost(self, exc) -> None:
        if not self.gone:
            self.gone = True
            self.handler.closed(exc)

    def is_closing(self) -> bool:
        return self.gone or self.closing or self.conn.closed

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False
        held, self.held = self.held, 0
        if held and not self.gone:
            self.conn.consumed(self.st.id, held)

    def get_write_buffer_size(self) -> int:
        t = self.conn.transport
        return len(self.queue) + (t.get_write_buffer_size() if t is not None else 0)


def choose_protocol(listener, h2c: bool):
    """A protocol factory for a listener that also speaks HTTP/2: by ALPN on TLS, by
    the client preface (h2c with prior knowledge) on plain TCP when ``h2c``."""
    from .connection import HTTP1Connection

    def make():
        return Negotiate(listener, h2c, HTTP1Connection)
    return make


class Negotiate(asyncio.Protocol):
    """Chooses the machine once: ALPN "h2" on TLS -> HTTP/2 at once; on plain TCP with
    h2c the first bytes decide (the preface ``PRI * HTTP/2.0``), and until then an
    HTTP/1.1 connection is admitted and keeps the deadlines (a client that connects and
    sends nothing is timed out as any other)."""

    __slots__ = ("listener", "h2c", "h1_class", "h1", "transport", "buf")

    def __init__(self, listener, h2c: bool, h1_class) -> None:
        self.listener, self.h2c, self.h1_class = listener, h2c, h1_class
        self.h1 = None
        self.transport = None
        self.buf = b""

    def connection_made(self, transport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            self._switch(transport, HTTP2Connection(self.listener))
            return
        h1 = self.h1_class(self.listener)
        if ssl_object is not None or not self.h2c:
            self._switch(transport, h1)
            return
        self.transport, self.h1 = transport, h1
        h1.connection_made(transport)   # (admission and deadlines, until the bytes decide)

    @staticmethod
    def _switch(transport, proto) -> None:
        transport.set_protocol(proto)
        proto.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        n = min(len(buf), len(PREFACE))
        transport, h1 = self.transport, self.h1
        if buf[:n] != PREFACE[:n]:   # HTTP/1.x: the h1 connection has it from here
            self.buf = b""
            transport.set_protocol(h1)
            h1.data_received(buf)
            return
        if n < len(PREFACE):
            self.buf = buf
            return
        # The HTTP/2 preface: the h1 connection leaves its place to the h2 one.
        self.buf = b""
        if h1.closed:   # (refused at admission)
            return
        h1.closed = True
        h1.machine.close()
        self.listener.release(h1)
        h2 = HTTP2Connection(self.listener)
        self._switch(transport, h2)
        if not h2.closed:
            h2.data_received(buf)

    def eof_received(self):
        return self.h1.eof_received() if self.h1 is not None else None

    def connection_lost(self, exc) -> None:
        if self.h1 is not None:
            self.h1.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.h1 is not None:
            self.h1.pause_writing()

    def resume_writing(self) -> None:
        if self.h1 is not None:
            self.h1.resume_writing()
