"""Bodyless GETs pipelined on one pooled upstream connection (``[upstreams.NAME] pipeline``).

The GETs of one event-loop turn for one server are queued (``ProxyHandler.queue``) and
flushed when the turn's reads are done (``loop.call_soon`` from the first of them): up to
``pipeline`` requests go out in ONE write on one idle connection, and their answers,
which HTTP/1.1 returns in order (RFC 9112 §9.3.2), usually come back in one read. A lone
request goes out at the flush as it would have alone: no waiting is added, only the rest
of the turn's callbacks.

A ``Pipeline`` owns the connection while answers are due and hands them out in order.
The answer whose body does not come whole streams as a lone exchange's does; the
pipeline waits for the end of that body (its UpstreamBody calls ``resume``) before the
next answer. What ends a pipeline early:

- a ``Connection: close`` answer (or a body that runs to the close), the connection lost,
  or a client gone while its answer's body was still to be read through: the requests
  without an answer are sent again, once each, on a fresh connection (they are GETs:
  idempotent); one whose answer had begun is a 502 instead;
- a bad answer: a 502 for the one it was for, the others sent again;
- the read timeout of any of them (the group's sweep): a 504 for every one still waiting
  (all are queued behind the answer that did not come), and the connection closed.
"""
from __future__ import annotations

import logging
from collections import deque

from farts.transport.client import BadResponse, ClientConnection, ConnectionLost, ReadTimeout
from fast.http1 import END
from fast.http1 import Response as ResponseHead

log = logging.getLogger("farts.proxy")


class Pipeline:
    """The exchanges written together on one connection, waiting for their answers."""

    __slots__ = ("proxy", "conn", "waiting", "began", "streaming", "broken")

    def __init__(self, proxy, conn: ClientConnection, exchanges: list) -> None:
        self.proxy = proxy
        self.conn = conn
        self.waiting = deque(exchanges)
        self.began = False       # events of the first waiting one's answer were taken (a 1xx)
        self.streaming = False   # an answer's body streams: its UpstreamBody reads the connection
        self.broken = False      # answers are due that nobody waits for: never pooled again
        conn.received = 0
        conn.owner = self   # (the proxy then sends the exchanges' heads: send_pipelined)

    # -- the connection's callbacks (ClientConnection.owner) ---------------------------
    def received(self, data: bytes) -> None:
        """One read, no events queued before: the whole answers of the usual kind at its
        start are rewritten for their clients from its bytes (ProxyHandler.answer_raw),
        the rest goes to the parser (``answer_events``)."""
        conn = self.conn
        at, n = 0, len(data)
        waiting = self.waiting
        if conn.between_answers(data):
            proxy = self.proxy
            while waiting and at < n:
                ex = waiting.popleft()
                # (answered unless cancelled: the client went away, the answer is dropped)
                raw = proxy.answer_raw(ex, data, at)
                if raw is None:
                    waiting.appendleft(ex)
                    break
                at = raw[2]
                self.began = False
                if not raw[1]:
                    self.end()
                    return
        if at == n:
            self.wake()   # (every answer of the read taken: finish when none is due)
        else:
            self.answer_events(conn.parser.feed(data[at:] if at else data))

    def answer_events(self, events: list) -> None:
        """The parser's events of one read, none queued before: the whole answers at its
        start (head, body in one piece or none, END: the usual read) are answered from
        the list, the rest is queued for ``wake``."""
        i, n = 0, len(events)
        waiting = self.waiting
        while waiting and i < n:
            head = events[i]
            if type(head) is not ResponseHead or head.status < 200:
                break
            if i + 1 < n and events[i + 1] is END:
                body = b""
                i += 2
            elif i + 2 < n and events[i + 2] is END and type(events[i + 1]) is bytes:
                body = events[i + 1]
                i += 3
            else:
                break
            if not self.answer(waiting.popleft(), head, body):
                return
        if i < n:
            self.conn.queue(events[i:])
        self.wake()

    def wake(self) -> None:
        """Queued events, or the connection's loss: the answers, in order."""
        conn = self.conn
        events = conn.events
        waiting = self.waiting
        try:
            while waiting:
                ex = waiting[0]
                if events:
                    self.began = True   # (reset when its answer is handed out)
                if not ex.final_head(events):
                    if conn.closed:
                        raise ConnectionLost("connection closed")
                    return
                head = events.popleft()
                waiting.popleft()
                body = conn.take_whole_body()
                if body is not None:
                    if not self.answer(ex, head, body):
                        return
                    continue
                self.began = False
                if ex.done():   # its client is gone: nobody reads the body through to the next answer
                    self.end()
                    return
                self.streaming = True
                conn.owner = None   # (its UpstreamBody reads it until resume)
                ex.pipelined_answer(head, None)
                if not head.keep_alive:   # no answer follows this one: the others go now
                    self.send_again()
                return
        except (BadResponse, ConnectionLost) as e:
            self.failed(e)
            return
        except Exception as e:   # a bug: the transport answers 500 and logs it
            log.exception("upstream %s: pipeline", self.proxy.name)
            self.crashed(e)
            return
        self.finish()

    # -- steps ---------------------------------------------------------------------------
    def answer(self, ex, head: ResponseHead, body: bytes) -> bool:
        """A whole answer for ``ex``; False when it ends the pipeline (Connection: close)."""
        self.began = False
        if not ex.done():   # (else cancelled: the client went away, the answer is dropped)
            ex.pipelined_answer(head, body)
        if head.keep_alive:
            return True
        self.end()
        return False

    def resume(self, keep_alive: bool) -> None:
        """The streamed body ended cleanly (UpstreamBody.release): the next answers."""
        self.streaming = False
        if not keep_alive:
            self.end()
            return
        self.conn.owner = self
        self.wake()

    def finish(self) -> None:
        """Every answer is in: the connection back to the pool."""
        conn = self.conn
        conn.owner = None
        if self.broken:
            conn.abort()
        else:
            conn.pool.release(conn)

    def end(self) -> None:
        """The connection is done with before every answer came: closed, and each request
        still waiting sent again once on a fresh connection."""
        conn = self.conn
        conn.owner = None
        conn.abort()
        self.send_again()

    def send_again(self) -> None:
        waiting, self.waiting = self.waiting, deque()
        for ex in waiting:
            ex.unanswered()

    def failed(self, e: Exception) -> None:
        """The connection lost, or a bad answer, while answers were due: the first one's
        answer fails if it had begun (or was bad), the others are sent again."""
        if type(e) is not ConnectionLost or self.began:
            ex = self.waiting.popleft()
            proxy = self.proxy
            proxy.in_flight.pop(ex, None)
            if not ex.done():
                ex.set_result(proxy.exchange_failed(ex.server, self.conn, e, ex.req, ex.rid))
        self.end()

    def crashed(self, e: Exception) -> None:
        conn = self.conn
        conn.owner = None
        conn.abort()
        waiting, self.waiting = self.waiting, deque()
        for ex in waiting:
            self.proxy.in_flight.pop(ex, None)
            if not ex.done():
                ex.set_exception(e)

    def timed_out(self) -> None:
        """A read timeout of one of them (the group's sweep): a 504 for every one still
        waiting, all queued behind the answer that did not come."""
        proxy = self.proxy
        conn = self.conn
        if self.streaming:
            self.broken = True   # (their answers may still come after the streamed one)
        else:
            conn.owner = None
            conn.abort()
        waiting, self.waiting = self.waiting, deque()
        for ex in waiting:
            proxy.in_flight.pop(ex, None)
            if not ex.done():
                ex.set_result(proxy.exchange_failed(ex.server, conn, ReadTimeout(), ex.req, ex.rid))
