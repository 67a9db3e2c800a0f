# cython: language_level=3, boundscheck=False, wraparound=False
"""Fanout: which subscribers listen on which channel, and the publish loop.

Sans-IO in the sense that matters: no sockets of its own, no clock, no asyncio.  A
subscriber carries the sink its bytes go to (``transport``: the HTTP transport's Sink,
see farts/transport/http.py: ``write``, ``is_closing``, ``get_write_buffer_size``), and
the fanout is handed the loop's ``call_soon``.  The direct send to ``fd`` is an
HTTP/1-over-plain-TCP optimisation the sink offers (fd -1 elsewhere).

One event is encoded once per transport kind and sink framing by the caller (one
WebSocket frame, one chunk of an HTTP/1.1 event stream); ``publish`` hands the same bytes object to every subscriber of the channel.
Nothing is written there: each subscriber collects its pieces, and one ``flush`` makes a
single ``write`` per subscriber, so events published close together cost one syscall per
connection, not one per event.

When the flush runs decides how much is coalesced.  A publish request's handler runs as
a task step in the loop's ready queue, after the I/O callbacks of its iteration; a flush
scheduled from there with one ``call_soon`` would run at the start of the next ready
queue, before the publish requests read in the same iteration have run their task
steps.  So the flush takes two hops (``call_soon`` of a callback that does
``call_soon(flush)``): it runs after the publishes of one more iteration, which costs
that one iteration of latency (microseconds when idle) and, under load, joins the events
of every request that arrived during the previous flush into one write per subscriber.

With a ``ring`` (fast/uring.pyx, where io_uring is allowed), the direct sends of one
flush are not made one syscall each: they are prepared as one IORING_OP_SEND per socket
and submitted together in one ``io_uring_enter``; each result is then handled exactly as
send()'s would be (a partial send or EAGAIN leaves the rest to the transport).

Slow consumers: after its write, a subscriber whose transport has more than
``max_buffer`` bytes unsent (checked only once the transport has paused writing, so the
fast path reads no buffer size) is handed to ``on_slow``, which disconnects it.
"""

cdef extern from "Python.h":
    char *PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)

cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int sockfd, const void *buf, size_t len, int flags)
    enum:
        MSG_DONTWAIT
        MSG_NOSIGNAL


cdef class Subscriber:
    """One connection's side of the fanout.  Protocol classes subclass it (one object
    per connection), and set ``transport`` (the Sink), ``fd`` (the sink's) and ``paused``
    (from pause/resume_writing)."""

    cdef public object transport
    cdef public bint sse          # takes the SSE chunk instead of the WebSocket frame
    cdef public bint paused       # the transport asked us to stop writing
    cdef public bint dropped      # disconnected as a slow consumer: nothing more is queued
    cdef public bint closing      # a close is under way: nothing more goes straight to the socket
    # The plain TCP socket's fd (-1 under TLS or unknown): when the transport has nothing
    # buffered, the flush sends straight to it and the transport only takes what the
    # socket did not (profiles show the kernel's send is nearly all of a delivery, and
    # the transport's write path a tenth of the rest).
    cdef public int fd
    cdef object first             # the first piece waiting for the flush (most flushes have one)
    # The others, in order.  Made at a subscriber's first flush of several pieces and
    # emptied by each flush, not dropped: a new list (a GC-tracked container) per
    # subscriber per flush would run a young-generation collection every ~700 of them,
    # and promote more to the older ones, whose full collections walk every connection.
    cdef list more
    cdef bint queued              # in the fanout's dirty list

    def __cinit__(self):
        self.fd = -1

    @property
    def pending_bytes(self):
        """Bytes queued for the next flush (tests and metrics)."""
        cdef Py_ssize_t n = 0
        if self.first is not None:
            n = len(self.first)
            if self.more:
                for piece in self.more:
                    n += len(piece)
        return n


cdef class Fanout:
    cdef dict channels            # channel key -> {Subscriber: None}, an ordered set
    cdef list dirty               # subscribers with pieces waiting for the flush
    cdef public Py_ssize_t max_buffer
    cdef object call_soon
    cdef object on_slow
    cdef bint flush_scheduled
    cdef public unsigned long long deliveries   # pieces queued by publish
    cdef public unsigned long long writes       # transport writes made by flush
    cdef public unsigned long long flushes      # flushes that wrote (syscalls per flush = sends / flushes)
    # A fast.uring.SendRing, or None: the direct sends of a flush then go in one
    # io_uring submission instead of one send() each (see _send_ring).
    cdef public object ring
    cdef public unsigned long long ring_failures   # rings given up after failing mid-flush
    cdef public unsigned long long short_sends     # direct sends the socket took only part of (or none)

    def __init__(self, call_soon, on_slow, Py_ssize_t max_buffer=1024 * 1024, ring=None):
        self.channels = {}
        self.dirty = []
        self.call_soon = call_soon
        self.on_slow = on_slow
        self.max_buffer = max_buffer
        self.flush_scheduled = False
        self.deliveries = 0
        self.writes = 0
        self.flushes = 0
        self.ring = ring
        self.ring_failures = 0
        self.short_sends = 0

    # -- the registry ---------------------------------------------------------------
    def subscribe(self, key, Subscriber sub not None):
        """Adds ``sub`` to the channel; False if it was there already."""
        subs = self.channels.get(key)
        if subs is None:
            self.channels[key] = {sub: None}
            return True
        if sub in subs:
            return False
        (<dict>subs)[sub] = None
        return True

    def unsubscribe(self, key, Subscriber sub not None):
        """Removes ``sub`` from the channel; False if it was not there."""
        subs = self.channels.get(key)
        if subs is None or sub not in subs:
            return False
        del (<dict>subs)[sub]
        if not subs:
            del self.channels[key]
        return True

    def count(self, key):
        """Subscribers of one channel (the presence count)."""
        subs = self.channels.get(key)
        return 0 if subs is None else len(<dict>subs)

    def subscriptions(self):
        """Subscriptions over all channels."""
        cdef Py_ssize_t n = 0
        for subs in self.channels.values():
            n += len(<dict>subs)
        return n

    def channel_count(self):
        return len(self.channels)

    def has(self, key):
        return key in self.channels

    # -- the hot path -------------------------------------------------------------------
    cdef inline void _queue(self, Subscriber sub, object piece):
        if sub.first is None:
            sub.first = piece
        elif sub.more is None:
            sub.more = [piece]     # once per subscriber; kept (see ``more``)
        else:
            sub.more.append(piece)
        if not sub.queued:
            sub.queued = True
            self.dirty.append(sub)

    cpdef Py_ssize_t publish(self, key, bytes ws_frame, bytes sse_chunk):
        """Queues the event for every subscriber of the channel; returns how many."""
        cdef Subscriber sub
        cdef Py_ssize_t n = 0
        subs = self.channels.get(key)
        if subs is None:
            return 0
        for obj in <dict>subs:
            sub = <Subscriber>obj
            if sub.dropped:
                continue
            self._queue(sub, sse_chunk if sub.sse else ws_frame)
            n += 1
        if n:
            self.deliveries += n
            if not self.flush_scheduled:
                self.flush_scheduled = True
                self.call_soon(self._flush_soon)
        return n

    def _flush_soon(self):
        self.call_soon(self.flush)

    def send(self, Subscriber sub not None, bytes data):
        """Queues bytes for one subscriber (replies, replayed history), in order with
        the events queued for it."""
        if sub.dropped:
            return
        self._queue(sub, data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.call_soon(self._flush_soon)

    cpdef flush(self):
        """One write per subscriber with queued pieces."""
        cdef Subscriber sub
        cdef list dirty = self.dirty
        cdef list slow = []
        cdef list ring_subs = None, ring_fds = None, ring_data = None
        cdef Py_ssize_t size, sent
        self.dirty = []
        self.flush_scheduled = False
        if dirty:
            self.flushes += 1
        for obj in dirty:
            sub = <Subscriber>obj
            sub.queued = False
            data = sub.first
            if data is None:
                continue
            if sub.more:
                sub.more.insert(0, data)
                data = b"".join(sub.more)
                sub.more.clear()
            sub.first = None
            transport = sub.transport
            if transport is None or sub.dropped:
                continue
            self.writes += 1
            # is_closing() first: once a transport is closing its fd may be closed and its
            # number reused by another connection, which must never get these bytes.
            # (Nothing between this check and the ring's submission below closes a
            # socket: a transport's close and connection_lost run in a later callback.)
            if sub.fd >= 0 and not sub.paused and not sub.closing and not transport.is_closing() \
                    and transport.get_write_buffer_size() == 0:
                if self.ring is not None:
                    if ring_subs is None:
                        ring_subs, ring_fds, ring_data = [], [], []
                    ring_subs.append(sub)
                    ring_fds.append(sub.fd)
                    ring_data.append(data)
                    continue
                size = PyBytes_GET_SIZE(data)
                sent = send(sub.fd, PyBytes_AS_STRING(data), size, MSG_DONTWAIT | MSG_NOSIGNAL)
                if sent == size:
                    continue
                self.short_sends += 1
                if sent > 0:
                    data = data[sent:]
                # else EAGAIN or an error: the transport takes it all and finds out itself
            self._rest(sub, data, slow)
        if ring_subs is not None:
            self._send_ring(ring_subs, ring_fds, ring_data, slow)
        for sub in slow:
            sub.dropped = True
            self.on_slow(sub)

    cdef void _send_ring(self, list subs, list fds, list buffers, list slow):
        """The direct sends of one flush in one io_uring submission; a send that did not
        send everything is handled as the send() path handles send's."""
        cdef Subscriber sub
        cdef Py_ssize_t sent
        for k, result in self.ring.send_all(fds, buffers):
            sub = <Subscriber>subs[k]
            if result is None:
                # The ring failed mid-flush: what reached this socket is unknown, so its
                # stream cannot go on (the client reconnects and resumes with its
                # cursor); the ring is given up, the send() path serves from now on.
                if self.ring is not None:
                    self.ring = None
                    self.ring_failures += 1
                sub.dropped = sub.closing = True
                sub.transport.abort()
                continue
            self.short_sends += 1
            sent = result
            data = buffers[k]
            self._rest(sub, data[sent:] if sent > 0 else data, slow)

    cdef inline void _rest(self, Subscriber sub, object data, list slow):
        """What the socket did not take goes to the transport (which sends it once the
        socket is writable); a paused transport over ``max_buffer`` is a slow consumer."""
        transport = sub.transport
        transport.write(data)
        if sub.paused and transport.get_write_buffer_size() > self.max_buffer:
            slow.append(sub)
