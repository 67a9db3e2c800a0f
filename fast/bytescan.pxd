# One byte-class check for the HTTP/1 parser (field values) and the proxy's raw answers
# (fast/http1.pyx, fast/proxyhead.pyx): inline, so each call site's table and mask are
# constants the C compiler folds.
from libc.stdint cimport uint64_t
from libc.string cimport memcpy


cdef inline bint all_in(const char *s, Py_ssize_t n, const unsigned char *table, uint64_t high) noexcept:
    """Whether ``table`` holds every byte of ``s[:n]``, a table that holds every byte from
    SP to "~" (and, with ``high`` 0, every byte above 0x7f). Eight bytes at a time: a word
    is looked at byte by byte only when it holds a byte below 0x20 or a DEL (HTAB is such a
    byte), or, with ``high`` all ones, one above 0x7f: the only bytes such a table may refuse."""
    cdef uint64_t x, y
    cdef Py_ssize_t i = 0, k
    while i + 8 <= n:
        memcpy(&x, s + i, 8)
        y = x ^ 0x7F7F7F7F7F7F7F7FULL
        if (((x - 0x2020202020202020ULL) & ~x) | ((y - 0x0101010101010101ULL) & ~y) | (x & high)) & 0x8080808080808080ULL:
            for k in range(i, i + 8):
                if not table[<unsigned char>s[k]]:
                    return False
        i += 8
    while i < n:
        if not table[<unsigned char>s[i]]:
            return False
        i += 1
    return True
