# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""IP address → location index for the geo DNS: sorted ranges, binary search in C.

A MaxMind database is a binary trie over address bits whose leaves point into a data
section.  ``walk_tree`` flattens the trie into sorted range arrays (one start address per
range, ranges cover the whole space, neighbours with the same leaf merged) and collects
the distinct data offsets; the caller decodes those records with the ``maxminddb``
reader (one ``get`` per distinct record, not per network) and hands the coordinates to
``GeoIndex``, which answers lookups without touching Python objects.

Sans-IO: the caller reads the file; nothing here opens one.  ``walk_tree`` releases the
GIL, so a rebuild in a worker thread does not stall the event loop.

IPv4 lookups go to the IPv4 table (an IPv6 database keeps IPv4 under ``::/96``); IPv6
addresses that embed an IPv4 one (``::a.b.c.d``, ``::ffff:a.b.c.d``, 6to4 ``2002:aabb:ccdd::``) are
looked up as that IPv4 address, as MaxMind's own aliases do.
"""

cimport cython
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, qsort, realloc
from libc.string cimport memcpy


cdef extern from "Python.h":
    char *PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)


cdef struct _Ranges:
    Py_ssize_t n, cap
    uint64_t *hi          # IPv4: unused (NULL); IPv6: upper 64 bits of each start
    uint64_t *lo          # IPv4: the start address; IPv6: lower 64 bits
    int64_t *val          # data offset, or -1 where the database has nothing


cdef int _push(_Ranges *r, uint64_t hi, uint64_t lo, int64_t val, bint six) noexcept nogil:
    """Appends a range start, merging with the previous range when the value repeats."""
    cdef Py_ssize_t cap
    if r.n and r.val[r.n - 1] == val:
        return 0
    if r.n == r.cap:
        cap = r.cap * 2 if r.cap else 4096
        r.lo = <uint64_t *>realloc(r.lo, cap * sizeof(uint64_t))
        r.val = <int64_t *>realloc(r.val, cap * sizeof(int64_t))
        if six:
            r.hi = <uint64_t *>realloc(r.hi, cap * sizeof(uint64_t))
        if r.lo == NULL or r.val == NULL or (six and r.hi == NULL):
            return -1
        r.cap = cap
    if six:
        r.hi[r.n] = hi
    r.lo[r.n] = lo
    r.val[r.n] = val
    r.n += 1
    return 0


cdef void _free_ranges(_Ranges *r) noexcept nogil:
    free(r.hi)
    free(r.lo)
    free(r.val)
    r.hi = r.lo = NULL
    r.val = NULL
    r.n = r.cap = 0


cdef struct _Tree:
    const unsigned char *p
    uint32_t nodes
    int record_size


cdef inline uint32_t _child(_Tree *t, uint32_t node, int bit) noexcept nogil:
    cdef const unsigned char *b
    cdef int rs = t.record_size
    if rs == 24:
        b = t.p + <Py_ssize_t>node * 6 + bit * 3
        return (<uint32_t>b[0] << 16) | (<uint32_t>b[1] << 8) | b[2]
    if rs == 28:
        b = t.p + <Py_ssize_t>node * 7
        if bit == 0:
            return ((<uint32_t>(b[3] & 0xF0)) << 20) | (<uint32_t>b[0] << 16) | (<uint32_t>b[1] << 8) | b[2]
        return ((<uint32_t>(b[3] & 0x0F)) << 24) | (<uint32_t>b[4] << 16) | (<uint32_t>b[5] << 8) | b[6]
    b = t.p + <Py_ssize_t>node * 8 + bit * 4
    return (<uint32_t>b[0] << 24) | (<uint32_t>b[1] << 16) | (<uint32_t>b[2] << 8) | b[3]


cdef struct _Frame:
    uint32_t node
    int depth
    uint64_t hi, lo


cdef int _walk(_Tree *t, uint32_t root, int bits, uint32_t skip, _Ranges *out) noexcept nogil:
    """Depth-first, left first, so range starts come out sorted.  ``skip``: a node whose
    subtree is emitted as empty (the IPv4 subtree when walking IPv6).  Returns -1 on
    memory failure, -2 on a malformed tree."""
    cdef _Frame stack[130]
    cdef int sp = 0, depth, bit, child_bit
    cdef int64_t val
    cdef uint32_t node, child
    cdef uint64_t hi, lo, bhi, blo
    cdef bint six = bits == 128
    stack[0].node = root
    stack[0].depth = 0
    stack[0].hi = 0
    stack[0].lo = 0
    sp = 1
    while sp:
        sp -= 1
        node = stack[sp].node
        depth = stack[sp].depth
        hi = stack[sp].hi
        lo = stack[sp].lo
        if node >= t.nodes or (node == skip and depth > 0):
            # a leaf: empty, data, or the skipped subtree
            if node == skip and depth > 0:
                val = -2    # kept apart from empty ranges: scopes must not span it
            elif node == t.nodes:
                val = -1
            else:
                val = <int64_t>node - t.nodes - 16
                if val < 0:
                    return -2
            if _push(out, hi, lo, val, six) < 0:
                return -1
            continue
        if depth >= bits:
            return -2
        # push right first so left is handled first
        bit = bits - 1 - depth    # the address bit this node decides
        for child_bit in range(1, -1, -1):
            child = _child(t, node, child_bit)
            bhi = hi
            blo = lo
            if child_bit:
                if bit >= 64:
                    bhi |= (<uint64_t>1) << (bit - 64)
                else:
                    blo |= (<uint64_t>1) << bit
            stack[sp].node = child
            stack[sp].depth = depth + 1
            stack[sp].hi = bhi
            stack[sp].lo = blo
            sp += 1
    return 0


cdef int _cmp_i64(const void *a, const void *b) noexcept nogil:
    cdef int64_t x = (<const int64_t *>a)[0], y = (<const int64_t *>b)[0]
    return (x > y) - (x < y)


cdef Py_ssize_t _find_i64(const int64_t *arr, Py_ssize_t n, int64_t v) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if arr[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@cython.final
cdef class Tree:
    """The flattened trie of one database: range starts, and for each range the number of
    a distinct record (an index into ``records``) or -1.  ``records[i]`` is the data
    offset of record i; ``address_of(i)`` an address inside a network that has it."""

    cdef _Ranges v4, v6
    cdef int32_t *v4_rec
    cdef int32_t *v6_rec
    cdef int64_t *first       # per record: its first range (v6 ranges after the v4 ones)
    cdef readonly list records

    def __dealloc__(self):
        _free_ranges(&self.v4)
        _free_ranges(&self.v6)
        free(self.v4_rec)
        free(self.v6_rec)
        free(self.first)

    def address_of(self, Py_ssize_t i):
        """The packed start address of the first range of record i."""
        if i < 0 or i >= len(self.records):
            raise IndexError(i)
        cdef int64_t k = self.first[i]
        if k < self.v4.n:
            return (<uint32_t>self.v4.lo[k]).to_bytes(4, "big")
        k -= self.v4.n
        return self.v6.hi[k].to_bytes(8, "big") + self.v6.lo[k].to_bytes(8, "big")

    @property
    def v4_ranges(self):
        return self.v4.n

    @property
    def v6_ranges(self):
        return self.v6.n


def walk_tree(data, int node_count, int record_size, int ip_version):
    """Flattens the search tree at the start of ``data`` (the whole .mmdb file's bytes, or
    at least its tree).  Raises ValueError for a tree that does not fit or loops."""
    cdef bytes buf = bytes(data) if not isinstance(data, bytes) else data
    cdef _Tree t
    cdef Tree out = Tree.__new__(Tree)
    cdef uint32_t v4root = 0, skip = 0xFFFFFFFF
    cdef int i, rc = 0
    cdef Py_ssize_t k, nuniq = 0, total
    cdef int64_t *uniq = NULL
    cdef int64_t v
    if record_size not in (24, 28, 32):
        raise ValueError(f"unsupported record size {record_size}")
    if ip_version not in (4, 6):
        raise ValueError(f"unsupported ip_version {ip_version}")
    if node_count <= 0 or <Py_ssize_t>node_count * record_size // 4 > PyBytes_GET_SIZE(buf):
        raise ValueError("search tree larger than the file")
    t.p = <const unsigned char *>PyBytes_AS_STRING(buf)
    t.nodes = node_count
    t.record_size = record_size
    with nogil:
        if ip_version == 6:
            # IPv4 lives at ::/96: follow 96 zero bits from the root.
            for i in range(96):
                if v4root >= t.nodes:
                    break
                v4root = _child(&t, v4root, 0)
            skip = v4root if v4root < t.nodes else 0xFFFFFFFF
            rc = _walk(&t, 0, 128, skip, &out.v6)
        if rc == 0:
            if v4root < t.nodes:
                rc = _walk(&t, v4root, 32, 0xFFFFFFFF, &out.v4)
            else:   # IPv4 space is one leaf (empty or one record)
                v = -1 if v4root == t.nodes else <int64_t>v4root - t.nodes - 16
                rc = _push(&out.v4, 0, 0, v, False)
        if rc == 0:
            total = out.v4.n + out.v6.n
            uniq = <int64_t *>malloc((total + 1) * sizeof(int64_t))
            out.v4_rec = <int32_t *>malloc((out.v4.n + 1) * sizeof(int32_t))
            out.v6_rec = <int32_t *>malloc((out.v6.n + 1) * sizeof(int32_t))
            if uniq == NULL or out.v4_rec == NULL or out.v6_rec == NULL:
                rc = -1
        if rc == 0:
            for k in range(out.v4.n):
                uniq[k] = out.v4.val[k]
            for k in range(out.v6.n):
                uniq[out.v4.n + k] = out.v6.val[k]
            qsort(uniq, total, sizeof(int64_t), _cmp_i64)
            for k in range(total):
                if uniq[k] >= 0 and (nuniq == 0 or uniq[nuniq - 1] != uniq[k]):
                    uniq[nuniq] = uniq[k]
                    nuniq += 1
            for k in range(out.v4.n):
                out.v4_rec[k] = -1 if out.v4.val[k] < 0 else <int32_t>_find_i64(uniq, nuniq, out.v4.val[k])
            for k in range(out.v6.n):
                out.v6_rec[k] = <int32_t>out.v6.val[k] if out.v6.val[k] < 0 else <int32_t>_find_i64(uniq, nuniq, out.v6.val[k])
    if rc == -1:
        free(uniq)
        raise MemoryError()
    if rc == -2:
        free(uniq)
        raise ValueError("malformed search tree")
    out.first = <int64_t *>malloc((nuniq + 1) * sizeof(int64_t))
    if out.first == NULL:
        free(uniq)
        raise MemoryError()
    for k in range(nuniq):
        out.first[k] = -1
    for k in range(out.v4.n):
        i = out.v4_rec[k]
        if i >= 0 and out.first[i] < 0:
            out.first[i] = k
    for k in range(out.v6.n):
        i = out.v6_rec[k]
        if i >= 0 and out.first[i] < 0:
            out.first[i] = out.v4.n + k
    out.records = [uniq[k] for k in range(nuniq)]
    free(uniq)
    return out


# ----------------------------------------------------------------------------------------
# Record decoding: only the fields the geo DNS uses

# A MaxMind record is a map; decoding all of it (every language's names) is what makes
# maxminddb's reader.get() cost tens of microseconds.  The decoder below walks the data
# section format (MaxMind DB spec 2.0) and keeps only location.latitude/longitude,
# continent.code, country.iso_code (or registered_country's) and city.names.en.

cdef enum:
    _EXTENDED = 0
    _POINTER = 1
    _UTF8 = 2
    _DOUBLE = 3
    _BYTES = 4
    _UINT16 = 5
    _UINT32 = 6
    _MAP = 7
    _INT32 = 8
    _UINT64 = 9
    _UINT128 = 10
    _ARRAY = 11
    _END = 13
    _BOOL = 14
    _FLOAT = 15


cdef struct _Data:
    const unsigned char *p
    Py_ssize_t n


cdef struct _Field:
    int type
    Py_ssize_t size
    Py_ssize_t pos      # where the payload starts


cdef int _ctrl(_Data *d, Py_ssize_t pos, _Field *f, int depth) noexcept nogil:
    """Reads the control bytes at pos (following one pointer); -1 if malformed."""
    cdef unsigned int c, ss
    cdef Py_ssize_t size, target
    if pos < 0 or pos >= d.n or depth > 1:
        return -1
    c = d.p[pos]
    pos += 1
    f.type = c >> 5
    if f.type == _POINTER:
        ss = (c >> 3) & 3
        if pos + ss + 1 > d.n:
            return -1
        if ss == 0:
            target = ((c & 7) << 8) | d.p[pos]
        elif ss == 1:
            target = (((c & 7) << 16) | (d.p[pos] << 8) | d.p[pos + 1]) + 2048
        elif ss == 2:
            target = (((<Py_ssize_t>(c & 7)) << 24) | (d.p[pos] << 16) | (d.p[pos + 1] << 8) | d.p[pos + 2]) + 526336
        else:
            target = ((<Py_ssize_t>d.p[pos] << 24) | (d.p[pos + 1] << 16) | (d.p[pos + 2] << 8) | d.p[pos + 3])
        f.pos = pos + ss + 1     # (the caller continues after the pointer, not the target)
        if _ctrl(d, target, f, depth + 1) < 0:
            return -1
        return 1                 # 1: f describes the target; the value ends at pos + ss + 1
    if f.type == _EXTENDED:
        if pos >= d.n:
            return -1
        f.type = 7 + d.p[pos]
        pos += 1
    size = c & 0x1F
    if size >= 29:
        if size == 29:
            if pos + 1 > d.n:
                return -1
            size = 29 + d.p[pos]
            pos += 1
        elif size == 30:
            if pos + 2 > d.n:
                return -1
            size = 285 + ((d.p[pos] << 8) | d.p[pos + 1])
            pos += 2
        else:
            if pos + 3 > d.n:
                return -1
            size = 65821 + ((d.p[pos] << 16) | (d.p[pos + 1] << 8) | d.p[pos + 2])
            pos += 3
    f.size = size
    f.pos = pos
    return 0


cdef Py_ssize_t _skip(_Data *d, Py_ssize_t pos, int depth) noexcept nogil:
    """Position after the value at pos; -1 if malformed."""
    cdef _Field f
    cdef int r = _ctrl(d, pos, &f, 0)
    cdef Py_ssize_t i, after
    if r < 0 or depth > 32:
        return -1
    if r == 1:
        return _after_pointer(d, pos)
    if f.type == _MAP or f.type == _ARRAY:
        pos = f.pos
        for i in range(f.size * (2 if f.type == _MAP else 1)):
            pos = _skip(d, pos, depth + 1)
            if pos < 0:
                return -1
        return pos
    if f.type == _BOOL:
        return f.pos
    if f.type == _DOUBLE:
        after = f.pos + 8
    elif f.type == _FLOAT:
        after = f.pos + 4
    else:
        after = f.pos + f.size
    return after if after <= d.n else -1


cdef Py_ssize_t _after_pointer(_Data *d, Py_ssize_t pos) noexcept nogil:
    return pos + ((d.p[pos] >> 3) & 3) + 2


cdef bint _key_is(_Data *d, _Field *f, const char *name, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    if f.type != _UTF8 or f.size != n or f.pos + n > d.n:
        return False
    for i in range(n):
        if d.p[f.pos + i] != <unsigned char>name[i]:
            return False
    return True


cdef Py_ssize_t _map_get(_Data *d, Py_ssize_t pos, const char *key, Py_ssize_t klen, _Field *out) noexcept nogil:
    """Finds key in the map at pos: fills out (the value, pointers followed) and returns
    its position; -1 if absent or malformed."""
    cdef _Field m, k
    cdef Py_ssize_t i, kend, v
    cdef int r = _ctrl(d, pos, &m, 0)
    if r < 0 or m.type != _MAP:
        return -1
    pos = m.pos
    for i in range(m.size):
        r = _ctrl(d, pos, &k, 0)
        if r < 0:
            return -1
        kend = _after_pointer(d, pos) if r == 1 else k.pos + k.size
        if _key_is(d, &k, key, klen):
            if _ctrl(d, kend, out, 0) < 0:
                return -1
            return kend
        v = _skip(d, kend, 0)
        if v < 0:
            return -1
        pos = v
    return -1


cdef object _string(_Data *d, _Field *f):
    if f.type != _UTF8 or f.pos + f.size > d.n:
        return ""
    return (<const char *>d.p + f.pos)[:f.size].decode("utf-8", "replace")


cdef bint _number(_Data *d, _Field *f, double *out) noexcept nogil:
    cdef uint64_t bits = 0
    cdef uint32_t b32 = 0
    cdef int i
    if f.type == _DOUBLE and f.pos + 8 <= d.n:
        for i in range(8):
            bits = (bits << 8) | d.p[f.pos + i]
        memcpy(out, &bits, 8)
        return True
    if f.type == _FLOAT and f.pos + 4 <= d.n:
        for i in range(4):
            b32 = (b32 << 8) | d.p[f.pos + i]
        out[0] = (<float *>&b32)[0]
        return True
    return False


def decode_locations(data, Py_ssize_t data_start, list offsets):
    """For each data-section offset: (lat or None, lon or None, continent, country, city)
    read straight from the file's bytes; None for a record that is not a map or is
    malformed.  ``data_start``: where the data section begins (tree size + 16)."""
    cdef bytes buf = data if type(data) is bytes else bytes(data)
    cdef _Data d
    cdef _Field f
    cdef Py_ssize_t pos, sub, n = len(offsets), i
    cdef double lat, lon
    cdef bint has_lat, has_lon
    d.p = <const unsigned char *>PyBytes_AS_STRING(buf) + data_start
    d.n = PyBytes_GET_SIZE(buf) - data_start
    if data_start < 0 or d.n <= 0:
        raise ValueError("data section outside the file")
    out = [None] * n
    for i in range(n):
        pos = offsets[i]
        if _ctrl(&d, pos, &f, 0) < 0:
            continue
        has_lat = has_lon = False
        continent = country = city = ""
        sub = _map_get(&d, pos, b"location", 8, &f)
        if sub >= 0:
            if _map_get(&d, sub, b"latitude", 8, &f) >= 0:
                has_lat = _number(&d, &f, &lat)
            if _map_get(&d, sub, b"longitude", 9, &f) >= 0:
                has_lon = _number(&d, &f, &lon)
        sub = _map_get(&d, pos, b"continent", 9, &f)
        if sub >= 0 and _map_get(&d, sub, b"code", 4, &f) >= 0:
            continent = _string(&d, &f)
        sub = _map_get(&d, pos, b"country", 7, &f)
        if sub < 0:
            sub = _map_get(&d, pos, b"registered_country", 18, &f)
        if sub >= 0 and _map_get(&d, sub, b"iso_code", 8, &f) >= 0:
            country = _string(&d, &f)
        sub = _map_get(&d, pos, b"city", 4, &f)
        if sub >= 0:
            sub = _map_get(&d, sub, b"names", 5, &f)
            if sub >= 0 and _map_get(&d, sub, b"en", 2, &f) >= 0:
                city = _string(&d, &f)
        out[i] = (lat if has_lat else None, lon if has_lon else None, continent, country, city)
    return out


# ----------------------------------------------------------------------------------------
# The index

cdef inline uint32_t _be32(const unsigned char *a) noexcept nogil:
    return (<uint32_t>a[0] << 24) | (<uint32_t>a[1] << 16) | (<uint32_t>a[2] << 8) | a[3]


cdef inline uint64_t _be64(const unsigned char *a) noexcept nogil:
    return (<uint64_t>_be32(a) << 32) | _be32(a + 4)


cdef class GeoIndex:
    """Range tables plus one location per distinct record (attributes in geo.pxd).

    ``locate`` gives (location number or -1, scope): the scope is the longest prefix of
    the address that lies wholly inside its range (what an ECS answer may claim to cover).
    """

    def __cinit__(self, Tree tree not None, list locations not None, list rec_location not None):
        """``locations``: one (lat, lon, label) per location; ``rec_location[i]``: the
        location number of ``tree.records[i]`` (-1: record without a usable location)."""
        cdef Py_ssize_t k, nrec = len(rec_location)
        cdef int32_t r
        cdef int32_t *recmap = NULL
        if nrec != len(tree.records):
            raise ValueError("rec_location must have one entry per tree record")
        self.nloc = len(locations)
        self.locations = locations
        self.lat_ = <double *>malloc((self.nloc + 1) * sizeof(double))
        self.lon_ = <double *>malloc((self.nloc + 1) * sizeof(double))
        recmap = <int32_t *>malloc((nrec + 1) * sizeof(int32_t))
        self.n4 = tree.v4.n
        self.n6 = tree.v6.n
        self.v4_start = <uint32_t *>malloc((self.n4 + 1) * sizeof(uint32_t))
        self.v4_loc = <int32_t *>malloc((self.n4 + 1) * sizeof(int32_t))
        self.v6_hi = <uint64_t *>malloc((self.n6 + 1) * sizeof(uint64_t))
        self.v6_lo = <uint64_t *>malloc((self.n6 + 1) * sizeof(uint64_t))
        self.v6_loc = <int32_t *>malloc((self.n6 + 1) * sizeof(int32_t))
        if (self.lat_ == NULL or self.lon_ == NULL or recmap == NULL or self.v4_start == NULL
                or self.v4_loc == NULL or self.v6_hi == NULL or self.v6_lo == NULL or self.v6_loc == NULL):
            free(recmap)
            raise MemoryError()
        for k in range(self.nloc):
            self.lat_[k] = float(locations[k][0])
            self.lon_[k] = float(locations[k][1])
        for k in range(nrec):
            r = rec_location[k]
            if r >= self.nloc or r < -1:
                free(recmap)
                raise ValueError(f"rec_location[{k}] = {r} is not a location number")
            recmap[k] = r
        # Ranges whose records map to the same location merge into one.
        cdef Py_ssize_t n = 0
        cdef int32_t loc
        for k in range(tree.v4.n):
            loc = -1 if tree.v4_rec[k] < 0 else recmap[tree.v4_rec[k]]
            if n and self.v4_loc[n - 1] == loc:
                continue
            self.v4_start[n] = <uint32_t>tree.v4.lo[k]
            self.v4_loc[n] = loc
            n += 1
        self.n4 = n
        n = 0
        for k in range(tree.v6.n):
            loc = tree.v6_rec[k] if tree.v6_rec[k] < 0 else recmap[tree.v6_rec[k]]
            if n and self.v6_loc[n - 1] == loc:
                continue
            self.v6_hi[n] = tree.v6.hi[k]
            self.v6_lo[n] = tree.v6.lo[k]
            self.v6_loc[n] = loc
            n += 1
        self.n6 = n
        free(recmap)
        if self.n4 == 0:   # keep the "ranges cover everything" invariant
            self.v4_start[0] = 0
            self.v4_loc[0] = -1
            self.n4 = 1

    def __dealloc__(self):
        free(self.v4_start)
        free(self.v4_loc)
        free(self.v6_hi)
        free(self.v6_lo)
        free(self.v6_loc)
        free(self.lat_)
        free(self.lon_)

    @property
    def ranges(self):
        """(IPv4 ranges, IPv6 ranges) after merging."""
        return self.n4, self.n6

    @property
    def nbytes(self):
        """Bytes of C memory held (not counting the Python ``locations`` list)."""
        return (self.n4 * 8 + self.n6 * 20 + self.nloc * 16)

    cdef int locate4(self, uint32_t a, int *scope) noexcept nogil:
        cdef Py_ssize_t lo = 0, hi = self.n4, mid
        cdef uint64_t start, end, size
        cdef int L
        while lo < hi:   # first start > a
            mid = (lo + hi) >> 1
            if self.v4_start[mid] <= a:
                lo = mid + 1
            else:
                hi = mid
        lo -= 1
        if lo < 0:
            if scope != NULL:
                scope[0] = 32
            return -1
        if scope != NULL:
            start = self.v4_start[lo]
            end = self.v4_start[lo + 1] if lo + 1 < self.n4 else (<uint64_t>1 << 32)
            for L in range(33):
                size = (<uint64_t>1) << (32 - L)
                if (a & ~(size - 1)) >= start and (a & ~(size - 1)) + size <= end:
                    scope[0] = L
                    break
        return self.v4_loc[lo]

    cdef int locate6(self, uint64_t ahi, uint64_t alo, int *scope) noexcept nogil:
        cdef Py_ssize_t lo = 0, hi = self.n6, mid, k
        cdef uint64_t shi, slo, ehi, elo, bhi, blo, mhi, mlo
        cdef int L
        cdef bint last
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.v6_hi[mid] < ahi or (self.v6_hi[mid] == ahi and self.v6_lo[mid] <= alo):
                lo = mid + 1
            else:
                hi = mid
        k = lo - 1
        if k < 0:
            if scope != NULL:
                scope[0] = 128
            return -1
        if scope != NULL:
            shi = self.v6_hi[k]
            slo = self.v6_lo[k]
            last = k + 1 >= self.n6
            ehi = 0 if last else self.v6_hi[k + 1]
            elo = 0 if last else self.v6_lo[k + 1]
            scope[0] = 128
            for L in range(129):
                # block = address with the low 128-L bits cleared; block end = block | those bits
                if L <= 64:
                    mhi = 0xFFFFFFFFFFFFFFFF if L == 0 else ((<uint64_t>1 << (64 - L)) - 1) if L < 64 else 0
                    mlo = 0xFFFFFFFFFFFFFFFF
                else:
                    mhi = 0
                    mlo = ((<uint64_t>1 << (128 - L)) - 1) if L < 128 else 0
                bhi = ahi & ~mhi
                blo = alo & ~mlo
                # block start >= range start
                if bhi < shi or (bhi == shi and blo < slo):
                    continue
                # block last address < range end (unless this is the last range)
                if not last:
                    if (bhi | mhi) > ehi or ((bhi | mhi) == ehi and (blo | mlo) >= elo):
                        continue
                scope[0] = L
                break
        return self.v6_loc[k] if self.v6_loc[k] >= 0 else -1

    cdef int locate(self, int family, const unsigned char *addr, int *scope) noexcept nogil:
        """family 1: 4 bytes; family 2: 16 bytes (IPv4-mapped and 6to4 go to IPv4)."""
        cdef uint64_t hi, lo
        cdef int s = 0, r
        if family == 1:
            return self.locate4(_be32(addr), scope)
        hi = _be64(addr)
        lo = _be64(addr + 8)
        if hi == 0 and ((lo >> 32) == 0xFFFF or (lo >> 32) == 0):   # ::ffff:a.b.c.d, ::a.b.c.d
            r = self.locate4(<uint32_t>lo, &s)
            if scope != NULL:
                scope[0] = s + 96
            return r
        if (hi >> 48) == 0x2002:
            r = self.locate4(<uint32_t>(hi >> 16), &s)
            if scope != NULL:
                scope[0] = s + 16
            return r
        return self.locate6(hi, lo, scope)

    cpdef tuple lookup(self, bytes packed):
        """Packed 4- or 16-byte address → (location number or -1, scope prefix length)."""
        cdef int scope = 0, loc
        cdef Py_ssize_t n = PyBytes_GET_SIZE(packed)
        if n == 4:
            loc = self.locate(1, <const unsigned char *>PyBytes_AS_STRING(packed), &scope)
        elif n == 16:
            loc = self.locate(2, <const unsigned char *>PyBytes_AS_STRING(packed), &scope)
        else:
            raise ValueError("expected a packed 4- or 16-byte address")
        return loc, scope

    def coords(self, int loc):
        if loc < 0 or loc >= self.nloc:
            raise IndexError(loc)
        return self.lat_[loc], self.lon_[loc]

    def lookup_many(self, list packed, int rounds=1, bint with_scope=True):
        """Benchmark helper: looks every address up ``rounds`` times in C; returns the sum
        of location numbers (so the work cannot be skipped).  ``with_scope=False``: the
        location only, as the UDP loop places senders."""
        cdef Py_ssize_t total = 0, k, n = len(packed)
        cdef int r, s
        cdef bytes b
        cdef const unsigned char **ptrs = <const unsigned char **>malloc((n + 1) * sizeof(void *))
        cdef int *fam = <int *>malloc((n + 1) * sizeof(int))
        if ptrs == NULL or fam == NULL:
            free(ptrs)
            free(fam)
            raise MemoryError()
        for k in range(n):
            b = packed[k]
            ptrs[k] = <const unsigned char *>PyBytes_AS_STRING(b)
            fam[k] = 1 if PyBytes_GET_SIZE(b) == 4 else 2
        with nogil:
            for r in range(rounds):
                for k in range(n):
                    total += self.locate(fam[k], ptrs[k], &s if with_scope else NULL)
        free(ptrs)
        free(fam)
        return total
