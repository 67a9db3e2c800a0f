"""The asyncio side of HTTP/1.1: a thin Protocol around the sans-IO ``H1Machine``.

The states, their table and what moves between them are in ``h1.py`` (read it first);
this module only moves bytes between the socket and the machine, runs handlers, and
turns what they return into the machine's response events:

- ``data_received`` -> ``machine.receive`` (the hot path: a bodyless keep-alive request
  comes straight back as its head) -> ``_pump`` takes ``machine.next_event()``:
  a head -> ``_on_head`` (route, call the handler), body bytes -> ``_on_body``,
  END -> ``_on_end``, an HTTPError -> ``_on_parse_error``.
- A handler's answer written at once -> ``machine.respond``. A handler that returns
  a coroutine gets it awaited by the connection's task (``_answer_later``), which
  answers in the step where the coroutine ends: a done-callback would run one loop turn
  later, and that turn decides what the fanout coalesces (a publish answered after the
  flush instead of before it: 2.0 deliveries per send at 10,000 subscribers instead of
  3.3, 0.55x the deliveries/s). A task cancelled before its first step never awaits
  the coroutine, so ``_cancel_task`` closes it then (no "never awaited"). A handler
  that returns a Future of its own (the proxy's callback exchange) is answered by its
  done callback (``_answered``), with no task at all. A
  streamed body is written by a task (``_stream``) -> ``machine.response_started`` ...
  ``response_done``; an
  ``Upgrade`` -> ``machine.switch`` and ``_switch`` (the socket then drives a
  ``StreamProtocol`` around the handler's StreamHandler, with this transport as Sink).
- ``check_timeouts(now)`` (the listener's tick) -> ``machine.check_timeouts``.

Reading pauses while too much waits (pending events, unread body bytes) and resumes when
it has been taken.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
from time import perf_counter

import cython

# cimported: compiled, the head's fields are read as C struct members (fast/http1.pxd),
# and the machine's fields and methods are C ones (h1.pxd)
from cython.cimports.farts.transport.counts import Counts
from cython.cimports.farts.transport.h1 import H1Machine
from cython.cimports.fast.http1 import Fixed
from cython.cimports.fast.http1 import Request as RequestHead

from fast.http1 import END, LAST_CHUNK

from .h1 import CLOSED, HEADER_TIMEOUT, NONE, H1StateError
from .http import (
    BY_CALLBACK,
    CHUNKED,
    EVENTS,
    RAW,
    ClientGone,
    FileBody,
    Request,
    RequestBody,
    Response,
    Upgrade,
)
from .kit import close_after_timeout

# What a handler answers with at once. Tested by type first: inspect.isawaitable (three
# isinstance checks, one through an ABC) was a seventh of a CDN hit's time.
ANSWERS = frozenset((Fixed, Response, Upgrade))

log = logging.getLogger("farts.http")

FILE_CHUNK = 256 * 1024  # a file body's piece when it goes through the transport
PAUSE_PENDING, PAUSE_BODY = 1, 2


@cython.final
@cython.cclass
class HTTP1Connection:
    # (Compiled by setup.py, like h1.py: its fields are C fields and the calls between its
    # methods C calls; the request path runs half a dozen of them. An asyncio protocol by
    # its methods: the loop needs no base class, and a cclass cannot have a Python one.)
    listener = cython.declare(object, visibility="public")
    router = cython.declare(object)   # the listener's, and its scheme: read per request
    scheme = cython.declare(str)
    counts = cython.declare(Counts)   # the listener's per-request counts and byte counters
    machine = cython.declare(H1Machine, visibility="public")
    transport = cython.declare(object, visibility="public")
    client = cython.declare(object, visibility="public")
    body = cython.declare(object, visibility="public")        # the body being received, if any
    paused = cython.declare(cython.int, visibility="public")  # PAUSE_* reasons for which reading is paused
    write_paused = cython.declare(cython.bint, visibility="public")
    drain_waiter = cython.declare(object, visibility="public")
    task = cython.declare(object, visibility="public")
    awaited = cython.declare(object, visibility="public")     # a handler's coroutine whose task has not yet started
    answering = cython.declare(object, visibility="public")   # the request a handler's future answers
    closed = cython.declare(cython.bint, visibility="public")
    req_body = cython.declare(object, visibility="public")    # the current request's body, until answered
    sock_fd = cython.declare(cython.int, visibility="public")  # for os.sendfile: plain TCP only (never under TLS)

    def __init__(self, listener) -> None:
        self.listener = listener
        self.router, self.scheme, self.counts = listener.router, listener.scheme, listener.counts
        limits = listener.limits
        self.machine = H1Machine(limits.max_header_bytes, limits.max_headers,
                                 limits.header_timeout, limits.idle_timeout, listener.now)
        self.machine.parser.max_body = listener.router.max_body
        self.transport = None
        self.client = ""
        self.body = None
        self.paused = 0
        self.write_paused = False
        self.drain_waiter = None
        self.task = None
        self.awaited = None
        self.answering = None
        self.closed = False
        self.req_body = None
        self.sock_fd = -1

    # -- connection lifetime ----------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else "unix"
        sock = transport.get_extra_info("socket")
        if self.listener.scheme == "http" and sock is not None:
            self.sock_fd = sock.fileno()
        refusal = self.listener.admit(self)
        if refusal is not None:
            self.closed = True
            self.machine.close()
            transport.write(refusal.close)
            transport.close()

    def connection_lost(self, exc) -> None:
        if self.closed and self.transport is None:
            return
        self.closed = True
        self.machine.close()
        self.listener.release(self)
        if self.body is not None:
            self.body.fail(ClientGone())
        self._cancel_task()
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_exception(ClientGone())
        self.transport = None

    def eof_received(self) -> None:
        return None   # (asyncio.Protocol's: the transport closes)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.machine.progress(self.listener.now)
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

    @cython.ccall
    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    @cython.ccall
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
        data = self.machine.continue_bytes()
        if data and not self.closed:
            self.transport.write(data)

    # -- input ------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        listener = self.listener
        self.counts.bytes_in += len(data)
        head = self.machine.receive(data, listener.now)
        if head is not None:
            self._on_head(head)
        else:
            self._pump()

    @cython.ccall
    def _pump(self) -> None:
        machine = self.machine
        while not self.closed:
            ev = machine.next_event()
            if ev is None:
                break
            t = type(ev)
            if t is RequestHead:
                self._on_head(ev)
            elif t is bytes:
                self._on_body(ev)
            elif ev is END:
                self._on_end()
            else:
                self._on_parse_error(ev)
        if machine.too_much_pending:
            self._pause(PAUSE_PENDING)
        elif machine.little_pending and not machine.switching:
            self._resume(PAUSE_PENDING)

    @cython.ccall
    def _on_body(self, data: bytes) -> None:
        body = self.body
        if body is not None and not body.feed(data):
            if body.discarding:  # its response is out already: nothing more to say
                self._close()
            else:
                self._fail(413, "request body too large")

    @cython.ccall
    def _on_end(self) -> None:
        body = self.body
        if body is not None:
            body.finish()
            self.body = None

    @cython.ccall
    def _on_parse_error(self, err) -> None:
        self.listener.parse_error(err.status)
        # (The machine writes nothing when the bad bytes are in the body of a request
        # answered already: a second answer would be read as the response to a request
        # that was never sent.)
        self._fail(err.status, err.reason)

    @cython.ccall
    def _fail(self, status: int, reason: str) -> None:
        """Answer with an error, unless a response has started, and close."""
        if self.closed:
            return
        self._cancel_task()
        data = self.machine.error_bytes(status, reason)
        if data:
            self.transport.write(data)
            self.listener.count_error(status)
        self._close()

    @cython.ccall
    def _close(self, timed_out: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.machine.close()
        if self.body is not None:
            self.body.fail(ClientGone())
        if timed_out:
            close_after_timeout(self.transport)
        else:
            self.transport.close()

    # -- one request --------------------------------------------------------------
    @cython.ccall
    def _on_head(self, head: RequestHead) -> None:
        listener = self.listener
        if listener.draining:   # a restart: answer, then close (the client reconnects to the next process)
            self.machine.keep_alive = False
        machine = self.machine
        if machine.switching:
            self._pause(PAUSE_PENDING)  # read nothing after it (see H1Machine._on_head)
        # The machine has just taken this head: its body state says whether one follows
        # (one read instead of the head's chunked and content_length on the usual request).
        has_body = machine.body is not NONE
        if has_body and head.chunked and head.header(b"transfer-encoding").lower() != b"chunked":
            # Other codings (gzip, ...) cannot be forwarded faithfully: RFC 9112 §6.1.
            self._fail(501, "transfer coding not supported")
            return
        resolved = self.router.resolve(head.host, head.path, head.plain_path)
        if type(resolved) is Fixed:  # unknown host or no route
            if has_body:
                self.body = self.req_body = RequestBody(self, listener.limits.max_body_bytes)
            self._answer_now(resolved, head, resolved.served, listener.name)
            return
        tenant, route, handler, body_limit = resolved
        body = None
        if has_body:
            if head.content_length > body_limit:
                self._fail(413, "request body too large")
                return
            body = self.body = self.req_body = RequestBody(self, body_limit)
        if type(handler) is Fixed:  # a fixed answer needs no Request object, no call
            self._answer_now(handler, head, handler.served, listener.name)
            return
        start = perf_counter()
        req = Request(head, tenant, route, self.client, self.scheme, body, start, self)
        try:
            result = handler.handle(req)
        except Exception:
            log.exception("handler for %s failed", route.prefix)
            result = Fixed.error(500)
        t = type(result)
        if t is Fixed:
            # A ready answer (a CDN hit from memory), written in this call: counted in
            # place by route and status like a static route's, and not timed.
            self._answer_now(result, head, listener.ready, (route.prefix, result.status))
            return
        if t in BY_CALLBACK or (t not in ANSWERS and isinstance(result, asyncio.Future)):
            # A handler's own future (the proxy's Exchange, completed by a callback):
            # answered by its done callback, no task; cancelling it stops the handler.
            self.task = result
            self.answering = req
            result.add_done_callback(self._answered)
            return
        if t not in ANSWERS and inspect.isawaitable(result):
            self.awaited = result
            self.task = asyncio.ensure_future(self._answer_later(req, result))
            return
        self._answer(req, result)

    async def _answer_later(self, req: Request, awaitable) -> None:
        """The handler's coroutine awaited, and its answer (or the error it raised)
        written in the same step."""
        self.awaited = None
        try:
            result = await awaitable
        except (asyncio.CancelledError, ClientGone):
            if not self.closed and self.task is asyncio.current_task():
                self.task = None
                self._close()
            return
        except Exception:
            log.exception("handler for %s failed", req.route.prefix)
            if self.task is asyncio.current_task():
                self.task = None
                self._fail(500, "internal error")
            return
        if self.task is not asyncio.current_task():  # the connection failed or closed meanwhile
            return
        self.task = None
        self._answer(req, result)
        if not self.closed and self.task is None:
            self._pump()   # (requests pipelined behind this one)

    def _answered(self, fut: asyncio.Future) -> None:
        """A handler's future is done: its answer, or the error it raised."""
        if fut is not self.task:  # the connection failed or closed meanwhile
            if not fut.cancelled():
                fut.exception()   # (taken: not logged as "never retrieved")
            return
        self.task = None
        req, self.answering = self.answering, None
        try:
            result = fut.result()   # (one call: the answer, or what the handler raised, or cancelled)
        except (asyncio.CancelledError, ClientGone):
            self._close()
            return
        except Exception as exc:
            log.error("handler for %s failed", req.route.prefix, exc_info=exc)
            self._fail(500, "internal error")
            return
        self._answer(req, result)
        if not self.closed and self.task is None and (self.paused or self.machine.pending):
            self._pump()   # (requests pipelined behind this one, or reading paused for them)

    def send_interim(self, head: RequestHead, status: int, headers) -> bool:
        """A handler's 1xx interim answer (Request.send_interim), if the machine allows it."""
        data = b"" if self.closed else self.machine.interim_bytes(status, headers, head)
        if data:
            self.transport.write(data)
        return bool(data)

    @cython.ccall
    def _cancel_task(self) -> None:
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
        awaited, self.awaited = self.awaited, None
        # (asyncio's test: a compiled handler's coroutine, e.g. the proxy's, is not a
        # types.CoroutineType, which is all inspect.iscoroutine knows)
        if awaited is not None and asyncio.iscoroutine(awaited):
            awaited.close()   # its task never started: nothing else will await it

    @cython.ccall
    def _answer(self, req: Request, result) -> None:
        head, route, start = req._head, req.route, req.start
        try:
            if type(result) is Fixed:
                self.transport.write(self.machine.fixed_bytes(result, head))
                self._finished(route, result.status, start, head)
            elif type(result) is Response and type(result.body) is bytes:
                self.transport.write(self.machine.framed(result, head))
                self._finished(route, result.status, start, head, result.timings)
            elif type(result) is Upgrade:
                self._switch(result, route, start, head)
            elif type(result) is Response and type(result.body) is FileBody and self._file_now(result, head):
                self._finished(route, result.status, start, head, result.timings)
            else:
                self.task = asyncio.ensure_future(self._stream(req, result))
        except Exception:  # a response that cannot be framed (a bad header from the handler)
            log.exception("handler for %s answered badly", route.prefix)
            self._fail(500, "internal error")

    @cython.ccall
    def _switch(self, upgrade: Upgrade, route, start: float, head: RequestHead) -> None:
        """Writes the stream's head and hands the socket to a StreamProtocol around the
        handler; this object is then dropped (a long-lived stream keeps no HTTP state)."""
        if upgrade.kind == EVENTS and head.version != 11:
            self._fail(400, "event streams need GET over HTTP/1.1")  # (no chunked body in 1.0)
            return
        try:
            rest = self.machine.switch()
        except H1StateError as e:
            self._fail(400, str(e))
            return
        transport = self.transport
        transport.write(self.machine.upgrade_head(upgrade.status, upgrade.headers, head.upgrade))
        self.counts.record(route, upgrade.status, start, head, self.client)
        self.closed = True
        self.transport = None
        stream = StreamProtocol(upgrade, transport, self.listener.hand_over(self),
                                self.sock_fd if transport.get_extra_info("sslcontext") is None else -1)
        transport.set_protocol(stream)
        upgrade.handler.opened(stream.sink, rest)
        if self.paused:
            transport.resume_reading()

    @cython.ccall
    def _answer_now(self, fixed: Fixed, head: RequestHead, counts: dict, key) -> None:
        """A Fixed written at once (a router's fixed answer, or a handler's ready one):
        the hottest paths, so it is counted in place (``counts[key]``: the Fixed's own
        ``served`` by listener, or the listener's ``ready`` by route and status; summed
        at scrape) and not timed (from head to write is a few microseconds; the latency
        histogram leaves these out)."""
        machine = self.machine
        listener = self.listener
        self.transport.write(machine.answer_fixed(fixed, head, listener.now))
        counts[key] = counts.get(key, 0) + 1
        if listener.access_log is not None:
            listener.log_access(head, fixed.status, 0.0, self.client)
        if machine.state is CLOSED or self.req_body is not None:  # (else _request_done has nothing to do)
            self._request_done(machine.state is not CLOSED)

    async def _stream(self, req: Request, resp: Response) -> None:
        head = req._head
        try:
            await self._write_response(resp, head)
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
        self.counts.record(req.route, resp.status, req.start, head, self.client, resp.timings)
        self._request_done(self.machine.response_done(self.listener.now))
        if not self.closed:
            self._pump()

    @cython.ccall
    def _file_now(self, resp: Response, head: RequestHead) -> bool:
        """Head and file body written at once when the socket takes all of it (a cache
        hit, usually); False leaves the rest to _write_response, in a task."""
        body = resp.body
        machine = self.machine
        try:
            self.transport.write(machine.framed(resp, head))
        except Exception:
            if body.owned:
                os.close(body.fd)
            raise
        body.started = True
        if not machine.send_body or self._sendfile(body):
            if body.owned:
                os.close(body.fd)
            return True
        machine.response_started()  # (the head is out: no other answer may follow it now)
        if not body.owned:  # the rest goes on in a task: hold the file ourselves
            body.fd, body.owned = os.dup(body.fd), True
        return False

    @cython.ccall
    def _sendfile(self, body: FileBody) -> bool:
        """Sends what the socket takes straight from the file; True when all is sent (or
        the connection failed: it is closed then)."""
        if self.sock_fd < 0 or self.closed or self.transport.get_write_buffer_size():
            return self.closed   # TLS, or bytes queued ahead that must go first
        try:
            while body.count > 0:
                n = os.sendfile(self.sock_fd, body.fd, body.offset, body.count)
                if n == 0:  # the file is shorter than announced: the framing is broken
                    self.machine.framing_broken()
                    body.count = 0
                    break
                body.offset += n
                body.count -= n
                self.counts.bytes_out += n
        except BlockingIOError:
            return False
        except OSError:
            self._close()
        return True

    async def _write_file(self, body: FileBody) -> None:
        """The rest of a file body: sendfile while the socket takes it, else one chunk
        read off the loop through the transport (which queues it), then again."""
        loop = asyncio.get_running_loop()
        while body.count > 0:
            if self.closed:
                raise ClientGone()
            if self._sendfile(body):
                break
            data = await loop.run_in_executor(None, os.pread, body.fd,
                                              min(body.count, FILE_CHUNK), body.offset)
            if not data or self.closed:
                self.machine.framing_broken()
                break
            body.offset += len(data)
            body.count -= len(data)
            self.counts.bytes_out += len(data)
            self.transport.write(data)
            self.machine.progress(self.listener.now)
            if self.write_paused:
                await self.drain()

    async def _write_response(self, resp: Response, head: RequestHead) -> None:
        """Writes a response whose body takes time (a stream, or a file the socket did
        not take at once). Whatever happens, the body's source is released: the file
        closed, the stream's aclose awaited (an upstream connection goes back or away)."""
        write = self.transport.write
        machine = self.machine
        body = resp.body
        if type(body) is FileBody:
            if not body.owned:  # (before any await: the handler's descriptor is open now)
                body.fd, body.owned = os.dup(body.fd), True
            try:
                if not body.started:
                    write(machine.framed(resp, head))
                    machine.response_started()
                if machine.send_body:
                    await self._write_file(body)
            finally:
                os.close(body.fd)
            return
        sent = 0
        try:
            write(machine.framed(resp, head))
            machine.response_started()
            if type(body) is bytes:
                return
            send, chunked, piece_bytes = machine.send_body, machine.chunked, machine.piece
            async for piece in body:
                if not piece or not send:
                    continue
                sent += len(piece)
                write(piece_bytes(piece, chunked))
                machine.progress(self.listener.now)
                if self.write_paused:
                    await self.drain()
        finally:
            close = getattr(body, "aclose", None)
            if close is not None:
                await close()
        self.counts.bytes_out += sent
        if chunked:
            trailers = resp.trailers() if callable(resp.trailers) else resp.trailers
            write(machine.end_bytes(chunked, trailers))
        elif send and resp.content_length >= 0 and sent != resp.content_length:
            # The source ended short: the framing is broken, so the connection must go.
            machine.framing_broken()

    @cython.ccall
    def _finished(self, route, status: int, start: float, head: RequestHead, timings=None) -> None:
        self.counts.record(route, status, start, head, self.client, timings)
        keep = self.machine.respond(self.listener.now)
        if not keep or self.req_body is not None:   # (else _request_done has nothing to do)
            self._request_done(keep)

    @cython.ccall
    def _request_done(self, keep: bool) -> None:
        body = self.req_body
        if body is not None:
            # Whatever of the body the handler did not take is dropped (and reading
            # resumes if it was paused for it); what has still to come is counted against
            # the limit and dropped, so the next request on this connection parses.
            self.req_body = None
            body.discard()
        if not keep:
            self._close()

    # -- timeouts (called about once a second by the listener) -------------------
    def check_timeouts(self, now: float) -> None:
        if self.closed:
            return
        kind = self.machine.check_timeouts(now)
        if kind is None:
            return
        self.listener.timeout(kind)
        if kind == HEADER_TIMEOUT:
            self._fail(408, "request header timeout")
        else:
            self._close(timed_out=True)


class StreamProtocol(asyncio.Protocol):
    """The socket's protocol after an Upgrade: forwards to the StreamHandler and frees
    the connection's place in the listener's limits when it is lost."""

    __slots__ = ("handler", "sink", "release")

    def __init__(self, upgrade: Upgrade, transport, release, fd: int) -> None:
        self.handler = upgrade.handler
        self.release = release
        self.sink = H1Sink(transport, CHUNKED if upgrade.kind == EVENTS else RAW, fd)

    def data_received(self, data: bytes) -> None:
        self.handler.data_received(data)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def connection_lost(self, exc) -> None:
        release, self.release = self.release, None
        if release is not None:
            release()
            self.handler.closed(exc)


class H1Sink:
    """A Sink over an HTTP/1.1 socket: the transport's own methods (no call in between:
    the fanout writes through them for every subscriber).  An event stream's ``close``
    first ends the chunked body."""

    __slots__ = ("write", "abort", "is_closing", "get_write_buffer_size", "close", "framing",
                 "fd", "_transport", "pause_reading", "resume_reading")

    def __init__(self, transport, framing: str, fd: int) -> None:
        self._transport = transport
        self.write = transport.write
        self.abort = transport.abort
        self.is_closing = transport.is_closing
        self.get_write_buffer_size = transport.get_write_buffer_size
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading
        self.close = self._end_body if framing == CHUNKED else transport.close
        self.framing = framing
        self.fd = fd

    def _end_body(self) -> None:
        transport = self._transport
        if not transport.is_closing():
            transport.write(LAST_CHUNK)
            transport.close()
