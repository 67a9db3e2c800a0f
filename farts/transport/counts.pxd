# The C declarations of counts.py's Counts (pure-Python mode), cimported by the connection.
cimport cython


@cython.final
cdef class Counts:
    cdef object listener
    cdef public dict counted
    cdef double slow_seconds
    cdef object access_log
    cdef public long long bytes_in
    cdef public long long bytes_out

    cpdef record(self, route, int status, double start, head, client, timings=*)
