"""The asyncio side of HTTP/1.1: a thin Protocol around ``fast.http1.RequestParser``.

States of one connection (drawn, not awaited: no coroutine here waits on another):

    reading head ──head──▶ handling ──response written──▶ reading head (keep-alive)
         │                   │  body pieces flow to request.body meanwhile
         │                   └─ sync handler: response written at once, the rest
         │                      of its body is counted and dropped (``discarding``)
         └─ parse error / limit / timeout ──▶ error response, close

Pipelined requests that arrive while a handler runs wait in ``pending`` (as parsed
events) and are taken in order when the response is done, so answers keep the order
of requests. Reading pauses while too much waits (pending events, unread body bytes)
and resumes when it has been taken.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections import deque
from time import perf_counter

from fast.http1 import END, LAST_CHUNK, HTTPError, RequestParser, encode_chunk, response_head
from fast.http1 import Request as RequestHead

from .http import ClientGone, FileBody, Fixed, Request, RequestBody, Response, Takeover

log = logging.getLogger("farts.http")

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
MAX_PENDING_EVENTS = 256
FILE_CHUNK = 256 * 1024  # a file body's piece when it goes through the transport
PAUSE_PENDING, PAUSE_BODY = 1, 2


class HTTP1Connection(asyncio.Protocol):
    __slots__ = ("listener", "parser", "transport", "client", "pending", "in_flight",
                 "body", "keep_alive", "expect_continue", "paused",
                 "write_paused", "drain_waiter", "task", "head_started", "idle_since",
                 "requests", "closed", "responding", "req_body", "last_progress", "sock_fd")

    def __init__(self, listener) -> None:
        self.listener = listener
        limits = listener.limits
        self.parser = RequestParser(limits.max_header_bytes, limits.max_headers)
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.pending: deque = deque()
        self.in_flight = False      # a handler is running or its response is being written
        self.body: RequestBody | None = None   # the body being received, if any
        self.keep_alive = True
        self.expect_continue = False
        self.paused = 0             # PAUSE_* reasons for which reading is paused
        self.write_paused = False
        self.drain_waiter: asyncio.Future | None = None
        self.task: asyncio.Task | None = None
        self.head_started = 0.0
        self.idle_since = 0.0
        self.requests = 0
        self.closed = False
        self.responding = False     # the current async response has started on the wire
        self.req_body: RequestBody | None = None  # the current request's body, until answered
        self.last_progress = 0.0    # last time bytes moved either way (coarse clock)
        self.sock_fd = -1           # for os.sendfile: plain TCP only (never under TLS)

    # -- connection lifetime ----------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else "unix"
        self.idle_since = self.last_progress = self.listener.now
        sock = transport.get_extra_info("socket")
        if self.listener.scheme == "http" and sock is not None:
            self.sock_fd = sock.fileno()
        refusal = self.listener.admit(self)
        if refusal is not None:
            self.closed = True
            transport.write(refusal.close)
            transport.close()

    def connection_lost(self, exc) -> None:
        if self.closed and self.transport is None:
            return
        self.closed = True
        self.listener.release(self)
        if self.body is not None:
            self.body.fail(ClientGone())
        if self.task is not None and not self.task.done():
            self.task.cancel()
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_exception(ClientGone())
        self.transport = None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last_progress = self.listener.now
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def drain(self) -> None:
        if self.closed:
            raise ClientGone()
        if self.write_paused:
            self.drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self.drain_waiter
            finally:
                self.drain_waiter = None

    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        was = self.paused
        self.paused &= ~reason
        if was and not self.paused and self.transport is not None:
            self.transport.resume_reading()

    # called by RequestBody
    def pause_body(self) -> None:
        self._pause(PAUSE_BODY)

    def resume_body(self) -> None:
        self._resume(PAUSE_BODY)

    def body_wanted(self) -> None:
        if self.expect_continue:
            self.expect_continue = False
            self.transport.write(CONTINUE)

    # -- input ------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.listener.bytes_in += len(data)
        self.last_progress = self.listener.now
        events = self.parser.feed(data)
        if self.pending:
            self.pending.extend(events)
            self._pump()
        elif (len(events) == 2 and events[1] is END and not self.in_flight
              and type(events[0]) is RequestHead):
            # The usual keep-alive request without a body: [head, END].
            self._on_head(events[0])
        else:
            dispatch = self._dispatch
            for i, ev in enumerate(events):
                if not dispatch(ev):
                    if not self.closed:
                        self.pending.extend(events[i:])
                    break
        if self.parser.in_head:
            if not self.head_started:
                self.head_started = self.listener.now
        if len(self.pending) > MAX_PENDING_EVENTS:
            self._pause(PAUSE_PENDING)

    def _dispatch(self, ev) -> bool:
        """Handles one parsed event; False when it must wait (or the connection is gone)."""
        if self.closed:
            return False
        t = type(ev)
        if t is bytes:
            self._on_body(ev)
        elif ev is END:
            self._on_end()
        elif t is RequestHead:
            if self.in_flight:
                return False  # pipelined: its turn comes when the response in flight is out
            self._on_head(ev)
        elif self.in_flight and self.body is None:
            return False  # an error in a later request: answered in its turn
        else:
            self._on_parse_error(ev)
        return True

    def _pump(self) -> None:
        pending = self.pending
        while pending and self._dispatch(pending[0]):
            if pending:  # (an error may have closed the connection and cleared it)
                pending.popleft()
        if len(pending) <= MAX_PENDING_EVENTS // 2:
            self._resume(PAUSE_PENDING)

    def _on_body(self, data: bytes) -> None:
        body = self.body
        if body is not None and not body.feed(data):
            if body.discarding:  # its response is out already: nothing more to say
                self._close()
            else:
                self._fail(413, "request body too large")

    def _on_end(self) -> None:
        body = self.body
        if body is not None:
            body.finish()
            self.body = None

    def _on_parse_error(self, err: HTTPError) -> None:
        self.listener.parse_error(err.status)
        if self.body is not None and self.body.discarding:
            # The bad bytes are in the body of a request answered already: a second
            # answer would be read as the response to a request that was never sent.
            self._close()
        else:
            self._fail(err.status, err.reason)

    def _fail(self, status: int, reason: str) -> None:
        """Answer with an error, unless a response has started, and close."""
        if self.closed:
            return
        task = self.task
        if task is not None:
            self.task = None
            task.cancel()
        if not self.responding:
            self.transport.write(Fixed.error(status, reason).close)
            self.listener.count_error(status)
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pending.clear()
        if self.body is not None:
            self.body.fail(ClientGone())
        self.transport.close()

    # -- one request --------------------------------------------------------------
    def _on_head(self, head: RequestHead) -> None:
        listener = self.listener
        self.requests += 1
        self.head_started = 0.0
        self.keep_alive = head.keep_alive
        if head.upgrade is not None or head.method == b"CONNECT":
            # Unless the handler takes the connection over (Takeover), answer this
            # request, read nothing after it (the parser keeps it unparsed), then close.
            self.keep_alive = False
            self._pause(PAUSE_PENDING)
        if head.chunked and head.header(b"transfer-encoding").lower() != b"chunked":
            # Other codings (gzip, ...) cannot be forwarded faithfully: RFC 9112 §6.1.
            self._fail(501, "transfer coding not supported")
            return
        resolved = listener.router.resolve(head.host, head.path)
        if type(resolved) is Fixed:  # unknown host or no route
            if head.chunked or head.content_length > 0:
                self.body = self.req_body = RequestBody(self, listener.limits.max_body_bytes)
                self.expect_continue = head.expect_continue
            self._answer_now(resolved, head)
            return
        tenant, route, handler, body_limit = resolved
        body = None
        if head.chunked or head.content_length > 0:
            if head.content_length > body_limit:
                self._fail(413, "request body too large")
                return
            body = self.body = self.req_body = RequestBody(self, body_limit)
            self.expect_continue = head.expect_continue
        if type(handler) is Fixed:  # a fixed answer needs no Request object, no call
            self._answer_now(handler, head)
            return
        start = perf_counter()
        req = Request(head, tenant, route, self.client, listener.scheme, body, start)
        try:
            result = handler.handle(req)
        except Exception:
            log.exception("handler for %s failed", route.prefix)
            result = Fixed.error(500)
        if type(result) is Fixed:
            self.transport.write(self._fixed_bytes(result, head))
            self._finished(route, result.status, start, head)
        elif type(result) is Response and type(result.body) is bytes:
            self.transport.write(self._framed(result, head))
            self._finished(route, result.status, start, head)
        elif type(result) is Takeover:
            self._take_over(result, route, start, head)
        elif type(result) is Response and type(result.body) is FileBody and self._file_now(result, head):
            self._finished(route, result.status, start, head)
        else:
            self.in_flight = True
            self.task = asyncio.ensure_future(self._respond_later(req, result))

    def _take_over(self, takeover: Takeover, route, start: float, head: RequestHead) -> None:
        """Hands the socket to the handler's protocol; this object is then dropped."""
        if self.body is not None or self.pending:
            # A body or pipelined requests after an upgrade request: the byte stream
            # cannot be split safely between two protocols.
            self._fail(400, "data after a protocol switch request")
            return
        transport = self.transport
        transport.write(takeover.head)
        self.listener.record(route, takeover.status, start, head, self.client)
        self.closed = True
        self.transport = None
        release = self.listener.hand_over(self)
        transport.set_protocol(takeover.protocol)
        takeover.protocol.taken_over(transport, self.parser.take_rest(), release)
        if self.paused:
            transport.resume_reading()

    def _answer_now(self, fixed: Fixed, head: RequestHead) -> None:
        """One of the router's fixed answers, written at once: the hottest path, so it
        counts in place (``fixed.served``) and is not timed: from head to write is a few
        microseconds of this function, recorded as 0 (the first latency bucket)."""
        self.transport.write(self._fixed_bytes(fixed, head))
        listener = self.listener
        served = fixed.served
        served[listener.name] = served.get(listener.name, 0) + 1
        if listener.access_log is not None:
            listener.log_access(head, fixed.status, 0.0, self.client)
        self.idle_since = listener.now
        self._request_done()

    def _fixed_bytes(self, fixed: Fixed, head: RequestHead) -> bytes:
        if self.expect_continue:
            # The client holds its body back for a 100 we will not send: it may send the
            # body or its next request next, so the only safe framing is to close.
            self.keep_alive = False
        data = fixed.keep if self.keep_alive else fixed.close
        if head.method == b"HEAD":
            data = data[:len(data) - fixed.body_len]
        return data

    def _framed(self, resp: Response, head: RequestHead) -> bytes:
        """Head (and body, if it is bytes) of a response as they go on the wire."""
        if self.expect_continue:  # see _fixed_bytes
            self.keep_alive = False
        body = resp.body
        status = resp.status
        length = len(body) if type(body) is bytes else resp.content_length
        if status in (204, 304) or 100 <= status < 200:
            length = -2
        data = response_head(status, resp.headers, length, self.keep_alive)
        if type(body) is bytes and not resp.head_only and head.method != b"HEAD":
            data += body
        return data

    async def _respond_later(self, req: Request, result) -> None:
        try:
            if inspect.isawaitable(result):
                result = await result
            status = result.status
            if type(result) is Fixed:
                self.transport.write(self._fixed_bytes(result, req.head))
            else:
                await self._write_response(result, req.head)
        except (asyncio.CancelledError, ClientGone):
            self.task = None
            self._close()
            return
        except Exception:
            self.task = None
            log.exception("handler for %s failed", req.route.prefix)
            self._fail(500, "internal error")
            return
        self.task = None
        self.in_flight = False
        self.responding = False
        self._finished(req.route, status, req.start, req.head)
        if not self.closed:
            self._pump()

    def _file_now(self, resp: Response, head: RequestHead) -> bool:
        """Head and file body written at once when the socket takes all of it (a cache
        hit, usually); False leaves the rest to _write_response, in a task."""
        body = resp.body
        self.transport.write(self._framed(resp, head))
        body.started = True
        if resp.head_only or head.method == b"HEAD" or self._sendfile(body):
            if body.owned:
                os.close(body.fd)
            return True
        if not body.owned:  # the rest goes on in a task: hold the file ourselves
            body.fd, body.owned = os.dup(body.fd), True
        return False

    def _sendfile(self, body: FileBody) -> bool:
        """Sends what the socket takes straight from the file; True when all is sent (or
        the connection failed: it is closed then)."""
        if self.sock_fd < 0 or self.closed or self.transport.get_write_buffer_size():
            return self.closed   # TLS, or bytes queued ahead that must go first
        try:
            while body.count > 0:
                n = os.sendfile(self.sock_fd, body.fd, body.offset, body.count)
                if n == 0:  # the file is shorter than announced: the framing is broken
                    self.keep_alive = False
                    body.count = 0
                    break
                body.offset += n
                body.count -= n
                self.listener.bytes_out += n
        except BlockingIOError:
            return False
        except OSError:
            self._close()
        return True

    async def _write_file(self, body: FileBody, skip: bool) -> None:
        """The rest of a file body: sendfile while the socket takes it, else one chunk
        read off the loop through the transport (which queues it), then again."""
        loop = asyncio.get_running_loop()
        try:
            while body.count > 0 and not skip:
                if self.closed:
                    raise ClientGone()
                if self._sendfile(body):
                    break
                data = await loop.run_in_executor(None, os.pread, body.fd,
                                                  min(body.count, FILE_CHUNK), body.offset)
                if not data or self.closed:
                    self.keep_alive = False
                    break
                body.offset += len(data)
                body.count -= len(data)
                self.listener.bytes_out += len(data)
                self.transport.write(data)
                self.last_progress = self.listener.now
                if self.write_paused:
                    await self.drain()
        finally:
            os.close(body.fd)

    async def _write_response(self, resp: Response, head: RequestHead) -> None:
        write = self.transport.write
        self.responding = True
        body = resp.body
        if type(body) is FileBody:
            if not body.owned:  # (before any await: the handler's descriptor is open now)
                body.fd, body.owned = os.dup(body.fd), True
            if not body.started:
                write(self._framed(resp, head))
            await self._write_file(body, resp.head_only or head.method == b"HEAD")
            return
        write(self._framed(resp, head))
        if type(body) is bytes:
            return
        skip = resp.head_only or head.method == b"HEAD"
        chunked = resp.content_length < 0 and not skip
        sent = 0
        try:
            async for piece in body:
                if not piece or skip:
                    continue
                sent += len(piece)
                write(encode_chunk(piece) if chunked else piece)
                self.last_progress = self.listener.now
                if self.write_paused:
                    await self.drain()
        finally:
            close = getattr(body, "aclose", None)
            if close is not None:
                await close()
        self.listener.bytes_out += sent
        if chunked:
            write(LAST_CHUNK)
        elif not skip and sent != resp.content_length:
            # The source ended short: the framing is broken, so the connection must go.
            self.keep_alive = False

    def _finished(self, route, status: int, start: float, head: RequestHead) -> None:
        self.listener.record(route, status, start, head, self.client)
        self.idle_since = self.listener.now  # (_answer_now does the same for fixed answers)
        self._request_done()

    def _request_done(self) -> None:
        body = self.req_body
        if body is not None:
            # Whatever of the body the handler did not take is dropped (and reading
            # resumes if it was paused for it); what has still to come is counted against
            # the limit and dropped, so the next request on this connection parses.
            self.req_body = None
            body.discard()
        if not self.keep_alive:
            self._close()

    # -- timeouts (called about once a second by the listener) -------------------
    def check_timeouts(self, now: float) -> None:
        if self.closed:
            return
        limits = self.listener.limits
        if self.in_flight or self.body is not None:
            # A request in progress: its handler has its own timeouts, but when no byte
            # has moved either way for idle_timeout (a client that stopped sending its
            # body or stopped reading the response) the connection goes.
            if now - self.last_progress > limits.idle_timeout:
                self.listener.timeout("stalled")
                self._close()
            return
        if self.parser.in_head or self.requests == 0:
            started = self.head_started or self.idle_since
            if now - started > limits.header_timeout:
                self.listener.timeout("header")
                self._fail(408, "request header timeout")
        elif now - self.idle_since > limits.idle_timeout:
            self.listener.timeout("idle")
            self._close()
