# The compiled H1Machine's C declarations (pure-Python mode: h1.py is its code), so that
# the connection (connection.py) reads its fields and calls its methods in C.
cimport cython

from fast.http1 cimport Fixed, Request as RequestHead


@cython.final
cdef class H1Machine:
    cdef public object parser
    cdef object feed   # parser.feed, bound once (no method lookup per request)
    cdef public str state
    cdef public str body
    cdef public bint keep_alive
    cdef public bint expect_continue
    cdef public object pending
    cdef public long long requests
    cdef public double head_started
    cdef public double idle_since
    cdef public double last_progress
    cdef public double header_timeout
    cdef public double idle_timeout
    cdef public bint switching
    cdef public object handling   # the head of the request in hand
    cdef public bint chunked
    cdef public bint send_body
    # The last head framed from a tuple of headers (immutable: a handler's ready headers,
    # e.g. a CDN hit's, reused while its Age holds), and what else it was framed from.
    cdef object framed_from
    cdef int framed_status
    cdef long long framed_length
    cdef bytes framed_head

    cpdef _to(self, str event)
    cpdef _body_to(self, str event)
    cpdef receive(self, bytes data, double now)
    cpdef next_event(self)
    cpdef _on_head(self, RequestHead head)
    cpdef bytes fixed_bytes(self, Fixed fixed, RequestHead head)
    cpdef bytes answer_fixed(self, Fixed fixed, RequestHead head, double now)
    cpdef bint respond(self, double now) except -1
    cpdef bint _done(self, double now) except -1
