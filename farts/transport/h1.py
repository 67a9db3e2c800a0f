"""The server side of one HTTP/1.1 connection as a sans-IO state machine.

No socket, no loop, no clock: bytes go in (``receive``), parsed events come out
(``next_event``) when the connection is ready for them; the adapter tells the machine
what it did with the response (``respond``, ``response_started``, ``response_done``,
``switch``, ``close``) and gets the bytes to write (``fixed_bytes``, ``framed``,
``piece``, ``end_bytes``, ``continue_bytes``, ``error_bytes``).  Deadlines are reported
for a ``now`` the caller passes (``check_timeouts``).  The asyncio adapter is
``connection.py``; the model is h11's ``_state.py``.

The connection's states and every allowed transition are in ONE table, ``TRANSITIONS``
(state, event) -> next state; any other pair raises ``H1StateError``.  Drawn::

    IDLE ─part─▶ HEAD ─head─▶ HANDLING ─respond─────────────────▶ DONE ─next─▶ IDLE
    IDLE ─head──────────────▶ HANDLING ─started─▶ RESPONDING ─done─▶ DONE ─close─▶ CLOSED
                              HANDLING ─switch─▶ SWITCHED
    every state but DONE ─close─▶ CLOSED     (DONE is left at once: next or close)

- IDLE: between requests (idle deadline; the header deadline before the first one).
- HEAD: part of a request head is in (header deadline).
- HANDLING: the head is in, the handler runs; nothing of the answer is on the wire, so
  an error can still be answered.  A request body may be arriving meanwhile.
- RESPONDING: a response is being written by a task (the "stalled" deadline).
- DONE: the response is complete; at once IDLE (keep-alive) or CLOSED.
- SWITCHED: the connection belongs to a stream handler (WebSocket, event stream).

The request body has its own small table, ``BODY_TRANSITIONS`` (NONE -> OPEN -> NONE,
or OPEN -> DISCARDING -> NONE when the answer went out before the body came in: the
rest is counted against the limit and dropped so the next request parses).

Pipelining: events that arrive while a request is answered wait in ``pending``
(``next_event`` returns None for them) and come out in order when the response is done,
so answers keep the order of requests.  After an upgrade or CONNECT head no further head
is handed out: the parser keeps the rest unparsed for the protocol switched to.

Where each event is handled: bytes -> ``receive``; a head -> ``_on_head`` (keep-alive,
upgrade, body start); body bytes and END -> ``next_event``; the answer -> ``respond`` /
``response_started`` + ``response_done`` -> ``_done`` (body discarding, keep-alive or
close); an Upgrade -> ``switch``; time -> ``check_timeouts``.
"""
from __future__ import annotations

from collections import deque

import cython

# cimported: compiled, the head's fields are read as C struct members (fast/http1.pxd)
from cython.cimports.fast.http1 import Fixed
from cython.cimports.fast.http1 import Request as RequestHead

from fast.http1 import END, LAST_CHUNK, RequestParser, closing, encode_chunk, response_head

from .http import Response

# Connection states
IDLE, HEAD, HANDLING, RESPONDING, DONE, SWITCHED, CLOSED = (
    "IDLE", "HEAD", "HANDLING", "RESPONDING", "DONE", "SWITCHED", "CLOSED")
# Events that move it
PART, HEAD_IN, RESPOND, STARTED, FINISHED, NEXT, SWITCH, CLOSE = (
    "part", "head", "respond", "started", "done", "next", "switch", "close")

TRANSITIONS: dict[tuple[str, str], str] = {
    (IDLE, PART): HEAD,
    (IDLE, HEAD_IN): HANDLING,
    (HEAD, PART): HEAD,
    (HEAD, HEAD_IN): HANDLING,
    (HANDLING, RESPOND): DONE,          # the whole answer written at once
    (HANDLING, STARTED): RESPONDING,    # its head is on the wire, a task writes the rest
    (RESPONDING, FINISHED): DONE,
    (DONE, NEXT): IDLE,                 # keep-alive
    (DONE, CLOSE): CLOSED,
    (HANDLING, SWITCH): SWITCHED,
    **{(s, CLOSE): CLOSED for s in (IDLE, HEAD, HANDLING, RESPONDING, SWITCHED, CLOSED)},
}

# Request body states and events
NONE, OPEN, DISCARDING = "NONE", "OPEN", "DISCARDING"
B_START, B_END, B_DISCARD = "start", "end", "discard"
BODY_TRANSITIONS: dict[tuple[str, str], str] = {
    (NONE, B_START): OPEN,
    (OPEN, B_END): NONE,
    (OPEN, B_DISCARD): DISCARDING,
    (DISCARDING, B_END): NONE,
}

# The same tables by state, for the lookups (no tuple built per transition: the hot path
# makes three of them per request).
_NEXT: dict[str, dict[str, str]] = {}
for (_state, _event), _to_state in TRANSITIONS.items():
    _NEXT.setdefault(_state, {})[_event] = _to_state
_BODY_NEXT: dict[str, dict[str, str]] = {}
for (_state, _event), _to_state in BODY_TRANSITIONS.items():
    _BODY_NEXT.setdefault(_state, {})[_event] = _to_state
del _state, _event, _to_state
# The keep-alive request's three transitions, taken from the tables once: the hot path
# tests for its usual states and skips the two dict lookups each would cost.
_IDLE_HEAD_IN = _NEXT[IDLE][HEAD_IN]
_HANDLING_RESPOND = _NEXT[HANDLING][RESPOND]
_DONE_NEXT = _NEXT[DONE][NEXT]

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
MAX_PENDING_EVENTS = 256

# What check_timeouts reports
HEADER_TIMEOUT, IDLE_TIMEOUT, STALLED = "header", "idle", "stalled"


class H1StateError(Exception):
    """An event the current state does not allow (a bug in the caller)."""


class H1Machine:
    # (Compiled by setup.py, a cclass declared in h1.pxd: its attributes are C fields and
    # its methods C calls, also from the connection, which cimports it.)
    def __init__(self, max_header_bytes: int, max_headers: int, header_timeout: float,
                 idle_timeout: float, now: float) -> None:
        self.parser = RequestParser(max_header_bytes, max_headers)
        self.feed = self.parser.feed
        self.state = IDLE
        self.body = NONE
        self.keep_alive = True
        self.handling = None
        self.expect_continue = False
        self.pending: deque = deque()
        self.requests = 0
        self.head_started = 0.0
        self.idle_since = self.last_progress = now
        self.header_timeout, self.idle_timeout = header_timeout, idle_timeout
        self.switching = False     # an upgrade/CONNECT head: nothing after it is handed out
        # The framing of the response being written, decided once by ``framed``: its body
        # goes as chunks, and whether it has a body on the wire at all.
        self.chunked = False
        self.send_body = True
        self.framed_from = None
        self.framed_status = 0
        self.framed_length = 0
        self.framed_head = b""

    # -- the tables ---------------------------------------------------------------------
    # (The hot path, a bodyless keep-alive request, inlines the lookup of ``_to`` in
    # ``_on_head`` and ``respond``; the methods it calls within are ``ccall``: compiled,
    # C calls.)
    def _to(self, event: str):
        try:
            self.state = _NEXT[self.state][event]
        except KeyError:
            raise self._refused(event) from None

    def _refused(self, event: str) -> H1StateError:
        return H1StateError(f"{event!r} in state {self.state}")

    def _body_to(self, event: str):
        try:
            self.body = _BODY_NEXT[self.body][event]
        except KeyError:
            raise H1StateError(f"body {event!r} in body state {self.body}") from None

    # -- bytes in, events out -----------------------------------------------------------
    def receive(self, data: bytes, now: float):   # -> RequestHead | None
        """Feeds bytes; the events wait for ``next_event``, except on the usual
        keep-alive request without a body ([head, END] with nothing before it): that
        head is returned at once, already taken (the hot path: no queueing)."""
        self.last_progress = now
        events = self.feed(data)
        state = self.state
        if (len(events) == 2 and events[1] is END and not self.pending and not self.switching
                and (state is IDLE or state is HEAD) and type(events[0]) is RequestHead
                and not events[0].chunked):  # (an empty chunked body is [head, END] too: its END must be seen)
            head = events[0]
            self._on_head(head)
            return head
        self.pending.extend(events)
        if self.parser.in_head and (state == IDLE or state == HEAD):
            if state == IDLE:
                self.head_started = now
            self._to(PART)
        return None

    def next_event(self):
        """The next parsed event the connection may act on now, or None (nothing, or it
        waits for the response in flight, or follows an upgrade request, or the
        connection switched or closed).

        A request head moves to HANDLING; END ends the body (or its discarding); an
        HTTPError is handed out for the adapter to answer (``error_bytes``)."""
        pending = self.pending
        if not pending or self.state in (CLOSED, SWITCHED):
            return None
        ev = pending[0]
        t = type(ev)
        if t is RequestHead:
            if self.state not in (IDLE, HEAD) or self.switching:
                return None  # pipelined: its turn comes when the response in flight is out
            pending.popleft()
            self._on_head(ev)
        elif t is bytes:
            pending.popleft()
        elif ev is END:
            pending.popleft()
            if self.body != NONE:
                self._body_to(B_END)
        else:  # HTTPError
            if self.state in (HANDLING, RESPONDING) and self.body == NONE:
                return None  # an error in a later request: answered in its turn
            pending.popleft()
        return ev

    def _on_head(self, head: RequestHead):
        if self.state is IDLE:
            self.state = _IDLE_HEAD_IN
        else:
            try:
                self.state = _NEXT[self.state][HEAD_IN]
            except KeyError:
                raise self._refused(HEAD_IN) from None
        self.requests += 1
        self.handling = head
        self.head_started = 0.0
        self.keep_alive = head.keep_alive
        self.expect_continue = False
        if head.upgrade is not None or head.method == b"CONNECT":
            # Unless the handler switches protocols, this request is answered, nothing
            # after it is read (the parser keeps it unparsed), then the connection closes.
            self.keep_alive = False
            self.switching = True
        if head.chunked or head.content_length > 0:
            self._body_to(B_START)
            self.expect_continue = head.expect_continue

    @property
    def too_much_pending(self) -> bool:
        return len(self.pending) > MAX_PENDING_EVENTS

    @property
    def little_pending(self) -> bool:
        return len(self.pending) <= MAX_PENDING_EVENTS // 2

    # -- response events in, bytes out ----------------------------------------------------
    def continue_bytes(self) -> bytes:
        """The 100 Continue, once, when the handler starts reading a body the client
        holds back for it; else b""."""
        if self.expect_continue and self.state == HANDLING:  # (never inside a response)
            self.expect_continue = False
            return CONTINUE
        return b""

    def interim_bytes(self, status: int, headers, head: RequestHead) -> bytes:
        """A 1xx interim answer (103 Early Hints) for ``head``, the request being handled,
        before its answer has started; b"" otherwise, and to an HTTP/1.0 client, which
        must not get one (RFC 9110 §15.2). 100 is continue_bytes' and 101 switch's."""
        if self.state != HANDLING or head is not self.handling or head.version != 11 \
                or not 102 <= status <= 199:
            return b""
        return response_head(status, headers, -2, True)

    def _no_continue(self) -> None:
        if self.expect_continue:
            # The client holds its body back for a 100 we will not send: it may send the
            # body or its next request next, so the only safe framing is to close.
            self.keep_alive = False
            self.expect_continue = False

    def fixed_bytes(self, fixed: Fixed, head: RequestHead) -> bytes:
        if self.expect_continue:   # (_no_continue, inline: the hottest path)
            self.keep_alive = self.expect_continue = False
        # (a Fixed with no close framing made, the proxy's: made here when it is wanted)
        data = fixed.keep if self.keep_alive else (fixed.close or closing(fixed.keep, fixed.body_len))
        if head.method == b"HEAD":
            data = data[:len(data) - fixed.body_len]
        return data

    def answer_fixed(self, fixed: Fixed, head: RequestHead, now: float) -> bytes:
        """``fixed_bytes`` and ``respond`` in one call, for the answers written at once
        (the hottest path); the state is CLOSED after them when the connection ends."""
        data = self.fixed_bytes(fixed, head)
        self.respond(now)
        return data

    def framed(self, resp: Response, head: RequestHead) -> bytes:
        """Head (and body, if it is bytes) of a response as they go on the wire; decides
        the framing of the body the adapter writes after it (``chunked``, ``send_body``)."""
        self._no_continue()
        body = resp.body
        status = resp.status
        length = len(body) if type(body) is bytes else resp.content_length
        send = not resp.head_only and head.method != b"HEAD"
        if status in (204, 304) or 100 <= status < 200:
            length, send = -2, False
        elif length < 0 and head.version != 11:
            # HTTP/1.0 has no chunked coding: a body of unknown length ends with the connection.
            length, self.keep_alive = -2, False
        self.chunked = length == -1 and send
        self.send_body = send
        headers = resp.headers
        if type(headers) is not tuple or not self.keep_alive:
            data = response_head(status, headers, length, self.keep_alive)
        elif headers is self.framed_from and status == self.framed_status and length == self.framed_length:
            data = self.framed_head   # the same ready headers again: framed already
        else:
            data = self.framed_head = response_head(status, headers, length, True)
            self.framed_from, self.framed_status, self.framed_length = headers, status, length
        if send and type(body) is bytes:
            data += body
        return data

    @staticmethod
    def piece(data: bytes, chunked: bool) -> bytes:
        return encode_chunk(data) if chunked else data

    @staticmethod
    def end_bytes(chunked: bool, trailers=None) -> bytes:
        """The end of a streamed body: the last chunk, with the trailer fields when there
        are any (HTTP/1.1 carries trailers only in a chunked body: a body of known length
        drops them, as RFC 9110 §6.5.1 allows)."""
        if not chunked:
            return b""
        if not trailers:
            return LAST_CHUNK
        out = [b"0\r\n"]
        for name, value in trailers:
            name = name.encode("latin-1") if isinstance(name, str) else name
            value = value.encode("latin-1") if isinstance(value, str) else value
            if not name or any(c in name for c in b"\r\n\0: ") or any(c in value for c in b"\r\n\0"):
                raise ValueError(f"invalid trailer field {name[:40]!r}")
            out.append(name + b": " + value + b"\r\n")
        out.append(b"\r\n")
        return b"".join(out)

    @staticmethod
    def upgrade_head(status: int, headers, upgrade: bytes | None) -> bytes:
        """The head of a stream upgrade: 101 switching to ``upgrade`` (a two-way byte
        stream), or a never-ending chunked body (an event stream)."""
        if status == 101:
            return response_head(101, [(b"upgrade", upgrade or b""), (b"connection", b"Upgrade"),
                                       *headers], -2, True)
        return response_head(status, headers, -1, True)

    def error_bytes(self, status: int, reason: str) -> bytes:
        """An error answer, if none has started; the connection closes after it."""
        if self.state in (RESPONDING, DONE, SWITCHED, CLOSED) or self.body == DISCARDING:
            return b""  # mid-response or after it: a second answer would misframe
        return Fixed.error(status, reason).close

    # -- what the adapter did ---------------------------------------------------------------
    def respond(self, now: float) -> cython.bint:
        """The whole answer is written; returns True when the connection stays open."""
        if self.state is HANDLING:
            self.state = _HANDLING_RESPOND
        else:
            try:
                self.state = _NEXT[self.state][RESPOND]
            except KeyError:
                raise self._refused(RESPOND) from None
        if self.keep_alive and self.body is NONE and not self.parser.in_head:
            # The usual case of _done, inline: back to IDLE, nothing else to do.
            self.idle_since = now
            self.state = _DONE_NEXT
            return True
        return self._done(now)

    def response_started(self) -> None:
        self._to(STARTED)

    def response_done(self, now: float) -> bool:
        self._to(FINISHED)
        return self._done(now)

    def _done(self, now: float) -> cython.bint:
        if self.body == OPEN:
            self._body_to(B_DISCARD)
        self.idle_since = now
        if self.keep_alive:
            self._to(NEXT)
            if self.parser.in_head:  # the next head is partly in already
                self.head_started = now
                self._to(PART)
            return True
        self._to(CLOSE)
        return False

    def framing_broken(self) -> None:
        """A body ended short of its announced length: the client cannot find the next
        response, so the connection closes after this one."""
        self.keep_alive = False

    def switch(self) -> bytes:
        """The handler took the connection (stream upgrade): the bytes after the head."""
        pending = self.pending
        if pending and pending[0] is END and self.body == NONE:
            pending.popleft()   # (the end of the upgrade request itself)
        if self.body != NONE or pending:
            # A body or pipelined requests after an upgrade request: the byte stream
            # cannot be split safely between two protocols.
            raise H1StateError("data after a protocol switch request")
        self._to(SWITCH)
        return self.parser.take_rest()

    def close(self) -> None:
        self._to(CLOSE)
        self.pending.clear()

    # -- deadlines ----------------------------------------------------------------------------
    def progress(self, now: float) -> None:
        self.last_progress = now

    def check_timeouts(self, now: float) -> str | None:
        """What deadline has passed at ``now``: HEADER_TIMEOUT (answer 408 and close),
        IDLE_TIMEOUT or STALLED (close), or None."""
        state = self.state
        if state in (CLOSED, SWITCHED):
            return None
        if state in (HANDLING, RESPONDING) or self.body != NONE:
            # A request in progress: its handler has its own timeouts, but when no byte
            # has moved either way for idle_timeout (a client that stopped sending its
            # body or stopped reading the response) the connection goes.
            return STALLED if now - self.last_progress > self.idle_timeout else None
        if state == HEAD or self.requests == 0:
            started = self.head_started or self.idle_since
            return HEADER_TIMEOUT if now - started > self.header_timeout else None
        return IDLE_TIMEOUT if now - self.idle_since > self.idle_timeout else None
