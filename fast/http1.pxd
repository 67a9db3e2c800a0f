# cython: language_level=3
# The head classes' fields, declared here so that compiled code (farts/transport/h1.py,
# h2conn.py) reads them as C struct members instead of through generic attribute lookup
# (callgrind: ~1,600 instructions a CDN hit went to getset descriptors and type lookups).
cimport cython


@cython.final
cdef class Request:
    cdef readonly bytes method
    cdef readonly bytes target
    cdef readonly bytes path
    cdef readonly bytes query
    cdef readonly int version
    cdef readonly list headers
    cdef readonly bytes host
    cdef readonly bint keep_alive
    cdef readonly bint chunked
    cdef readonly long long content_length
    cdef readonly bint expect_continue
    cdef readonly object upgrade
    # The path has no "%" and no "/." (see _plain_path): the router can skip its checks.
    cdef readonly bint plain_path


@cython.final
cdef class HandlerRequest:
    cdef readonly Request _head      # the transport's, not the handler's
    cdef public object tenant
    cdef public object route
    cdef public str client
    cdef public str scheme
    cdef public object body
    cdef public double start
    cdef object _conn                # what sends its interim answers (send_interim)


@cython.final
cdef class Response:
    cdef readonly int status
    cdef readonly bytes reason
    cdef readonly int version
    cdef readonly list headers
    cdef readonly bint keep_alive
    cdef readonly bint chunked
    cdef readonly long long content_length


cdef class Fixed:
    cdef public int status
    cdef public bytes keep           # the answer framed to keep the connection
    cdef public object close         # framed to close it: bytes, or None (made when wanted: closing)
    cdef public Py_ssize_t body_len  # HEAD requests get the head only
    cdef public object served        # the connection's own count of it per listener (a dict), or None
