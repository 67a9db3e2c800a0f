# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""HPACK (RFC 7541), both directions of one HTTP/2 connection, compiled.

``Decoder`` and ``Encoder`` have the interface of the ``hpack`` library's classes that
h2 uses (``decode(data, raw=True)``, ``encode(headers)``, ``header_table_size``,
``max_allowed_table_size``, ``max_header_list_size``) and raise hpack's exception
classes, so they can stand in for them inside h2's ``H2Connection`` (one context per
direction, replaced before the first frame: never two encoders on one connection).
The static table and the Huffman code are taken from ``hpack`` (RFC 7541 appendices A
and B as data); ``tests/test_hpack.py`` checks both directions against hpack.

Decoder rules (what is refused, with hpack's exception class):
- an index of 0 or past the tables (InvalidTableIndex); an integer over 5 continuation
  octets, a string or integer cut short, a Huffman string that holds EOS, padding over 7
  bits or padding not all ones (HPACKDecodingError);
- a table size update after a field, or over ``max_allowed_table_size``, or a table
  still over it at the end of the block (InvalidTableSizeError);
- a header list whose RFC 7541 size (32 + name + value per field) passes
  ``max_header_list_size``, checked field by field, so an HPACK bomb stops at the limit
  (OversizedHeaderListError).
Fields come out as ``(name, value)`` tuples of bytes (a never-indexed field too: this
server forwards to HTTP/1.1, where the flag means nothing).

Encoder: a field the static or dynamic table holds whole is one index; otherwise a
literal with incremental indexing (the name indexed when a table has it), except
sensitive fields (``hpack.NeverIndexedHeaderTuple`` or a true third item), which are
never indexed, and fields over half the table, which would only flush it.  Literals are
Huffman-coded when that is shorter.  The dynamic table is at most 4096 bytes whatever
the peer allows (its memory is ours); a smaller SETTINGS_HEADER_TABLE_SIZE is signalled
with table size updates at the start of the next block (RFC 7541 §4.2).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from hpack import HeaderTuple
from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableIndex,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

cdef enum:
    STATIC_LEN = 61
    ENTRY_OVERHEAD = 32        # RFC 7541 §4.1: counted per field besides its bytes
    MAX_ENCODER_TABLE = 4096
    EOS = 256

cdef tuple STATIC = tuple(HeaderTable.STATIC_TABLE)
# name -> (index of its first entry, {value: index})
cdef dict STATIC_BY_NAME = {}
for _i, (_n, _v) in enumerate(STATIC, 1):
    STATIC_BY_NAME.setdefault(_n, (_i, {}))[1].setdefault(_v, _i)

# -- Huffman code (canonical: the codes of one length are consecutive) -----------------
cdef uint32_t HUFF_CODE[257]
cdef uint8_t HUFF_LEN[257]
cdef uint32_t FIRST[32]      # the first code of each length
cdef uint32_t COUNT[32]      # how many codes have that length
cdef uint32_t OFFSET[32]     # where that length's symbols start in SYMBOLS
cdef uint32_t SYMBOLS[257]   # symbols by (length, code)


cdef void _build_huffman() except *:
    cdef int i, n = 0, length
    for i in range(257):
        HUFF_CODE[i] = REQUEST_CODES[i]
        HUFF_LEN[i] = REQUEST_CODES_LENGTH[i]
    order = sorted(range(257), key=lambda s: (REQUEST_CODES_LENGTH[s], REQUEST_CODES[s]))
    for length in range(32):
        COUNT[length] = 0
    for i in range(257):
        s = order[i]
        length = HUFF_LEN[s]
        if COUNT[length] == 0:
            FIRST[length] = HUFF_CODE[s]
            OFFSET[length] = i
        elif HUFF_CODE[s] != FIRST[length] + COUNT[length]:
            raise ImportError("the HPACK Huffman code is not canonical")
        COUNT[length] += 1
        SYMBOLS[i] = s


_build_huffman()


cdef bytes huffman_decode(const uint8_t* p, Py_ssize_t n):
    cdef uint8_t* out = <uint8_t*>PyMem_Malloc(n * 8 // 5 + 1)
    cdef Py_ssize_t i, k = 0
    cdef uint32_t code = 0, d, sym
    cdef int clen = 0, bit
    if out == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            for bit in range(7, -1, -1):
                code = (code << 1) | ((p[i] >> bit) & 1)
                clen += 1
                if clen >= 5:
                    d = code - FIRST[clen]
                    if d < COUNT[clen]:
                        sym = SYMBOLS[OFFSET[clen] + d]
                        if sym == EOS:
                            raise HPACKDecodingError("Invalid Huffman string: EOS")
                        out[k] = <uint8_t>sym
                        k += 1
                        code = 0
                        clen = 0
        if clen > 7 or code != (<uint32_t>1 << clen) - 1:
            raise HPACKDecodingError("Invalid Huffman string: bad padding")
        return PyBytes_FromStringAndSize(<char*>out, k)
    finally:
        PyMem_Free(out)


# -- decoding -------------------------------------------------------------------------
cdef inline Py_ssize_t read_int(const uint8_t* p, Py_ssize_t pos, Py_ssize_t end,
                               int prefix, uint64_t* value) except -1:
    """An integer with a ``prefix``-bit prefix at p[pos]; returns the position after it."""
    cdef uint64_t mask = (<uint64_t>1 << prefix) - 1
    cdef uint64_t v = p[pos] & mask
    cdef int shift = 0, extra = 0
    cdef uint8_t b
    pos += 1
    if v == mask:
        while True:
            if pos >= end:
                raise HPACKDecodingError("Truncated header block (integer)")
            b = p[pos]
            pos += 1
            extra += 1
            v += (<uint64_t>(b & 0x7F)) << shift
            if not b & 0x80:
                break
            if extra >= 5:
                raise HPACKDecodingError("Variable integer representation is too long")
            shift += 7
    value[0] = v
    return pos


cdef class Decoder:
    cdef list entries          # newest last; entries[head:] are live
    cdef Py_ssize_t head
    cdef Py_ssize_t size       # RFC 7541 size of the live entries
    cdef Py_ssize_t maxsize
    cdef public Py_ssize_t max_allowed_table_size
    cdef public Py_ssize_t max_header_list_size
    cdef readonly Py_ssize_t list_size   # the last decoded list's RFC 7541 size

    def __init__(self, max_header_list_size=65536):
        self.entries = []
        self.head = 0
        self.size = 0
        self.maxsize = 4096
        self.max_allowed_table_size = 4096
        self.max_header_list_size = max_header_list_size

    @property
    def header_table_size(self):
        return self.maxsize

    @header_table_size.setter
    def header_table_size(self, value):
        self.maxsize = value
        self._evict()

    cdef void _evict(self):
        cdef tuple e
        while self.size > self.maxsize:
            e = <tuple>self.entries[self.head]
            self.entries[self.head] = None
            self.head += 1
            self.size -= ENTRY_OVERHEAD + len(<bytes>e[0]) + len(<bytes>e[1])
        if self.head > 32 and self.head * 2 > len(self.entries):
            del self.entries[:self.head]
            self.head = 0

    cdef _add(self, bytes name, bytes value):
        cdef Py_ssize_t n = ENTRY_OVERHEAD + len(name) + len(value)
        if n > self.maxsize:   # (RFC 7541 §4.4: an entry larger than the table empties it)
            self.entries = []
            self.head = 0
            self.size = 0
            return
        self.entries.append((name, value))
        self.size += n
        self._evict()

    cdef tuple _get(self, uint64_t index):
        cdef Py_ssize_t live
        if 1 <= index <= STATIC_LEN:
            return <tuple>STATIC[index - 1]
        live = len(self.entries) - self.head
        if index > STATIC_LEN and index - STATIC_LEN <= <uint64_t>live:
            return <tuple>self.entries[len(self.entries) - <Py_ssize_t>(index - STATIC_LEN)]
        raise InvalidTableIndex(f"Invalid table index {index}")

    cdef bytes _string(self, const uint8_t* p, Py_ssize_t* pos, Py_ssize_t end):
        cdef uint64_t n
        cdef Py_ssize_t at = pos[0]
        cdef bint huffman
        if at >= end:
            raise HPACKDecodingError("Truncated header block (string)")
        huffman = p[at] & 0x80
        at = read_int(p, at, end, 7, &n)
        if n > <uint64_t>(end - at):
            raise HPACKDecodingError("Truncated header block")
        pos[0] = at + <Py_ssize_t>n
        if huffman:
            return huffman_decode(p + at, <Py_ssize_t>n)
        return PyBytes_FromStringAndSize(<char*>p + at, <Py_ssize_t>n)

    def decode(self, data, raw=True):
        """The header list of one complete header block (``raw`` is hpack's argument:
        only raw=True, bytes out, is supported)."""
        if not raw:
            raise ValueError("fast.hpack decodes to bytes only (raw=True)")
        cdef bytes block = bytes(data)
        cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(block)
        cdef Py_ssize_t end = PyBytes_GET_SIZE(block), pos = 0, listed = 0
        cdef uint64_t index
        cdef uint8_t b
        cdef list headers = []
        cdef tuple field
        cdef bytes name, value
        while pos < end:
            b = p[pos]
            if b & 0x80:                    # indexed field
                pos = read_int(p, pos, end, 7, &index)
                field = self._get(index)
            elif (b & 0x40) or not (b & 0x20):
                # literal: with incremental indexing (01), without (0000), never (0001)
                if b & 0x40:
                    pos = read_int(p, pos, end, 6, &index)
                else:
                    pos = read_int(p, pos, end, 4, &index)
                if index:
                    name = <bytes>self._get(index)[0]
                else:
                    name = self._string(p, &pos, end)
                value = self._string(p, &pos, end)
                field = (name, value)
                if b & 0x40:
                    self._add(name, value)
            else:                           # dynamic table size update (001)
                if headers:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                pos = read_int(p, pos, end, 5, &index)
                if index > <uint64_t>self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                self.maxsize = <Py_ssize_t>index
                self._evict()
                continue
            headers.append(field)
            listed += ENTRY_OVERHEAD + len(<bytes>field[0]) + len(<bytes>field[1])
            if listed > self.max_header_list_size:
                raise OversizedHeaderListError(
                    f"A header list larger than {self.max_header_list_size} has been received")
        if self.maxsize > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        self.list_size = listed
        return headers


# -- encoding -------------------------------------------------------------------------
cdef struct Buf:
    uint8_t* p
    Py_ssize_t n
    Py_ssize_t cap


cdef int buf_reserve(Buf* b, Py_ssize_t more) except -1:
    cdef Py_ssize_t cap = b.cap
    cdef uint8_t* p
    if b.n + more <= cap:
        return 0
    while cap < b.n + more:
        cap = cap * 2 + 64
    p = <uint8_t*>PyMem_Realloc(b.p, cap)
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    return 0


cdef int put_int(Buf* b, uint64_t v, int prefix, uint8_t first) except -1:
    cdef uint64_t mask = (<uint64_t>1 << prefix) - 1
    buf_reserve(b, 11)
    if v < mask:
        b.p[b.n] = first | <uint8_t>v
        b.n += 1
        return 0
    b.p[b.n] = first | <uint8_t>mask
    b.n += 1
    v -= mask
    while v >= 128:
        b.p[b.n] = <uint8_t>((v & 0x7F) | 0x80)
        b.n += 1
        v >>= 7
    b.p[b.n] = <uint8_t>v
    b.n += 1
    return 0


cdef int put_string(Buf* b, bytes s) except -1:
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(s)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(s), i, hn
    cdef uint64_t bits = 0, acc = 0
    cdef int pending = 0
    for i in range(n):
        bits += HUFF_LEN[p[i]]
    hn = <Py_ssize_t>((bits + 7) // 8)
    if hn < n:
        put_int(b, hn, 7, 0x80)
        buf_reserve(b, hn)
        for i in range(n):
            acc = (acc << HUFF_LEN[p[i]]) | HUFF_CODE[p[i]]
            pending += HUFF_LEN[p[i]]
            while pending >= 8:
                pending -= 8
                b.p[b.n] = <uint8_t>(acc >> pending)
                b.n += 1
            acc &= (<uint64_t>1 << pending) - 1
        if pending:   # padded with the most significant bits of EOS (ones)
            b.p[b.n] = <uint8_t>((acc << (8 - pending)) | ((<uint64_t>1 << (8 - pending)) - 1))
            b.n += 1
        return 0
    put_int(b, n, 7, 0)
    buf_reserve(b, n)
    memcpy(b.p + b.n, p, n)
    b.n += n
    return 0


cdef inline bytes as_bytes(x):
    if type(x) is bytes:
        return <bytes>x
    if isinstance(x, str):
        return (<str>x).encode("utf-8")
    return bytes(x)


cdef class Encoder:
    # The dynamic table by insertion number: entry k (0 = the first ever added) is
    # entries[k - trimmed]; those below ``dropped`` are evicted.  ``pairs`` and ``names``
    # map a field / a name to its latest entry (stale ones are skipped when found).
    cdef list entries
    cdef Py_ssize_t inserted, dropped, trimmed
    cdef Py_ssize_t size, maxsize
    cdef dict pairs, names
    cdef Py_ssize_t pending_min    # smallest size set since the last block (-1: none)

    def __init__(self):
        self.entries = []
        self.inserted = self.dropped = self.trimmed = 0
        self.size = 0
        self.maxsize = 4096
        self.pairs = {}
        self.names = {}
        self.pending_min = -1

    @property
    def header_table_size(self):
        return self.maxsize

    @header_table_size.setter
    def header_table_size(self, value):
        """The peer's SETTINGS_HEADER_TABLE_SIZE: the table we use is at most that."""
        cdef Py_ssize_t size = min(<Py_ssize_t>value, MAX_ENCODER_TABLE)
        if size == self.maxsize:
            return
        self.maxsize = size
        if self.pending_min < 0 or size < self.pending_min:
            self.pending_min = size
        self._evict()

    cdef void _evict(self):
        cdef tuple e
        while self.size > self.maxsize:
            e = <tuple>self.entries[self.dropped - self.trimmed]
            self.entries[self.dropped - self.trimmed] = None
            self.dropped += 1
            self.size -= ENTRY_OVERHEAD + len(<bytes>e[0]) + len(<bytes>e[1])
        if self.dropped - self.trimmed > 32 and (self.dropped - self.trimmed) * 2 > len(self.entries):
            del self.entries[:self.dropped - self.trimmed]
            self.trimmed = self.dropped

    cdef Py_ssize_t _index(self, object k):
        """The wire index of entry number ``k`` (None or evicted: 0)."""
        if k is None or <Py_ssize_t>k < self.dropped:
            return 0
        return STATIC_LEN + self.inserted - <Py_ssize_t>k

    cdef void _add(self, bytes name, bytes value, Py_ssize_t n):
        self.entries.append((name, value))
        self.pairs[(name, value)] = self.inserted
        self.names[name] = self.inserted
        self.inserted += 1
        self.size += n
        self._evict()

    def encode(self, headers, huffman=True):
        """One header block.  ``headers``: (name, value) pairs (bytes or str), or
        hpack's HeaderTuple / NeverIndexedHeaderTuple, or (name, value, sensitive)."""
        cdef Buf b
        cdef bytes name, value
        cdef bint sensitive
        cdef Py_ssize_t idx, n
        cdef tuple st
        cdef object found
        b.p = NULL
        b.n = b.cap = 0
        try:
            if self.pending_min >= 0:
                if self.pending_min < self.maxsize:
                    put_int(&b, self.pending_min, 5, 0x20)
                put_int(&b, self.maxsize, 5, 0x20)
                self.pending_min = -1
            for h in headers:
                name = as_bytes(h[0])
                value = as_bytes(h[1])
                if type(h) is tuple:
                    sensitive = len(<tuple>h) > 2 and h[2]
                elif isinstance(h, HeaderTuple):
                    sensitive = not h.indexable
                else:
                    sensitive = len(h) > 2 and h[2]
                st = STATIC_BY_NAME.get(name)
                if not sensitive:
                    if st is not None:
                        found = (<dict>st[1]).get(value)
                        if found is not None:
                            put_int(&b, <Py_ssize_t>found, 7, 0x80)
                            continue
                    idx = self._index(self.pairs.get((name, value)))
                    if idx:
                        put_int(&b, idx, 7, 0x80)
                        continue
                idx = <Py_ssize_t>st[0] if st is not None else self._index(self.names.get(name))
                n = ENTRY_OVERHEAD + len(name) + len(value)
                if sensitive:
                    put_int(&b, idx, 4, 0x10)
                elif n * 2 > self.maxsize:
                    put_int(&b, idx, 4, 0x00)
                else:
                    put_int(&b, idx, 6, 0x40)
                if not idx:
                    put_string(&b, name)
                put_string(&b, value)
                if not sensitive and n * 2 <= self.maxsize:
                    self._add(name, value, n)
            return PyBytes_FromStringAndSize(<char*>b.p, b.n)
        finally:
            PyMem_Free(b.p)
