# The C interface of fast.geo's index, for other fast/ modules (fast.dnsloop looks
# client addresses up without Python objects).
from libc.stdint cimport int32_t, uint32_t, uint64_t


cdef class GeoIndex:
    cdef uint32_t *v4_start
    cdef int32_t *v4_loc
    cdef Py_ssize_t n4
    cdef uint64_t *v6_hi
    cdef uint64_t *v6_lo
    cdef int32_t *v6_loc
    cdef Py_ssize_t n6
    cdef double *lat_
    cdef double *lon_
    cdef readonly Py_ssize_t nloc
    cdef readonly list locations

    cdef int locate4(self, uint32_t a, int *scope) noexcept nogil
    cdef int locate6(self, uint64_t ahi, uint64_t alo, int *scope) noexcept nogil
    cdef int locate(self, int family, const unsigned char *addr, int *scope) noexcept nogil
    cpdef tuple lookup(self, bytes packed)
