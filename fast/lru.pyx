# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The CDN's LRU index: which cached objects exist, their sizes and their recency order.

Sans-IO: no files, no clock, no asyncio.  The CDN service persists the index in LMDB (it
flushes ``take_touched()`` in batches and rebuilds with ``load()`` on start) and deletes
the blobs of the keys ``evict_until()`` hands back.

Layout.  Every entry lives in a *slot*; per slot, C arrays hold the links of a doubly linked
recency list (least recent at the head), the size, a recency stamp and two flag bits.  The
only Python object per entry is the key (a ``bytes``, whose reference the index owns).
Free slots are recycled through a free list; the arrays double when full and never shrink.

Lookup is an open-addressing hash table with linear probing, twice as many buckets as
slots (so at most half full), and backward-shift deletion (no tombstones).  A bucket is a
``uint64``: the low 32 bits of the key's hash in the high half, slot + 1 in the low half
(0 = empty), so most probes that miss are settled without touching the key.  The hash is
CPython's own bytes hash: SipHash with a per-process random key (unless PYTHONHASHSEED
pins it), which keeps URLs chosen by an attacker from piling up in one cluster; it is
computed once per key object and cached in it.

Every operation is O(1) per entry, except ``take_touched()`` (O(d log d) for d touched
keys, or one walk of the list when a large share of the index was touched) and the
listings, which are linear in what they return.

Memory is allocated with PyMem_Raw*, so tracemalloc accounts for it.
"""

cimport cython
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree, PyMem_RawMalloc, PyMem_RawRealloc
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcmp, memset


cdef extern from "Python.h":
    ctypedef Py_ssize_t Py_hash_t
    Py_hash_t PyObject_Hash(PyObject *o) except? -1
    char *PyBytes_AS_STRING(PyObject *o)
    Py_ssize_t PyBytes_GET_SIZE(PyObject *o)
    bint PyBytes_CheckExact(object o)
    bint PyBytes_Check(object o)
    bint PyLong_CheckExact(object o)
    object PyNumber_Index(object o)
    bytes PyBytes_FromStringAndSize(const char *v, Py_ssize_t n)
    list PyList_New(Py_ssize_t n)
    void PyList_SET_ITEM(object lst, Py_ssize_t i, PyObject *o)
    int PyList_Append(object lst, PyObject *item) except -1
    void Py_INCREF(PyObject *o)
    void Py_DECREF(PyObject *o)
    void Py_XDECREF(PyObject *o)


cdef extern from "<stdint.h>":
    const int64_t INT64_MAX


ctypedef struct Entry:
    int64_t size
    uint64_t stamp          # value of the clock at the last insert/touch (orders take_touched)
    int32_t prev            # towards the least recent end; -1 at the head
    int32_t next            # towards the most recent end; -1 at the tail; free-list link


ctypedef struct Stamped:
    uint64_t stamp
    int32_t slot


cdef enum:
    _DIRTY = 1      # inserted or touched since the last take_touched()
    _QUEUED = 2     # the slot number is in the queue (kept while the slot is free)
    _MIN_SLOTS = 16

# Slot numbers are int32; the table then has at most 2**32 buckets, which the 32 hash bits
# kept per bucket can still address.
cdef Py_ssize_t _MAX_SLOTS = 1 << 31


cdef int _by_stamp(const void *a, const void *b) noexcept nogil:
    cdef uint64_t x = (<const Stamped *>a).stamp
    cdef uint64_t y = (<const Stamped *>b).stamp
    return (x > y) - (x < y)


cdef inline object _as_key(object key):
    """The bytes to use for ``key``: itself if it is a bytes, a plain copy of a bytes
    subclass (whose __hash__/__eq__ must not matter), TypeError for anything else."""
    if PyBytes_CheckExact(key):
        return key
    if PyBytes_Check(key):
        return PyBytes_FromStringAndSize(PyBytes_AS_STRING(<PyObject *>key),
                                         PyBytes_GET_SIZE(<PyObject *>key))
    raise TypeError(f"LRUIndex keys must be bytes, not {type(key).__name__}")


cdef inline int64_t _int64(object v) except? -1:
    """An int (or an object with __index__; a float is a TypeError) as int64."""
    if not PyLong_CheckExact(v):
        v = PyNumber_Index(v)
    return v


@cython.final
cdef class LRUIndex:
    """Cached keys with their sizes, in recency order."""

    cdef Entry *_ent
    cdef PyObject **_keys       # owned references; NULL for a free slot
    cdef uint8_t *_flags
    cdef int32_t *_queue        # slots marked _QUEUED, each once: candidates for take_touched
    cdef uint64_t *_table
    cdef Py_ssize_t _cap        # slots allocated
    cdef Py_ssize_t _hi         # slots ever handed out (the rest are fresh)
    cdef Py_ssize_t _qn
    cdef Py_ssize_t _n
    cdef Py_ssize_t _ndirty
    cdef uint64_t _mask         # buckets - 1
    cdef uint32_t _hmask        # applied to every hash; narrowed only by tests (collisions)
    cdef int64_t _total
    cdef uint64_t _clock
    cdef int32_t _free
    cdef int32_t _head
    cdef int32_t _tail

    def __cinit__(self, Py_ssize_t expected_entries=0, *, uint32_t _hash_mask=0xFFFFFFFF):
        cdef Py_ssize_t cap = _MIN_SLOTS
        if expected_entries < 0:
            raise ValueError("expected_entries must be >= 0")
        if expected_entries > _MAX_SLOTS:
            raise OverflowError("more entries than LRUIndex can hold")
        while cap < expected_entries:
            cap <<= 1
        self._hmask = _hash_mask
        self._free = self._head = self._tail = -1
        self._ent = <Entry *>PyMem_RawMalloc(cap * sizeof(Entry))
        self._keys = <PyObject **>PyMem_RawMalloc(cap * sizeof(PyObject *))
        self._flags = <uint8_t *>PyMem_RawCalloc(cap, sizeof(uint8_t))
        self._queue = <int32_t *>PyMem_RawMalloc(cap * sizeof(int32_t))
        self._table = <uint64_t *>PyMem_RawCalloc(2 * cap, sizeof(uint64_t))
        if (self._ent == NULL or self._keys == NULL or self._flags == NULL
                or self._queue == NULL or self._table == NULL):
            raise MemoryError()
        self._cap = cap
        self._mask = 2 * cap - 1

    def __dealloc__(self):
        cdef Py_ssize_t s
        if self._keys != NULL:
            for s in range(self._hi):
                Py_XDECREF(self._keys[s])
        PyMem_RawFree(self._ent)
        PyMem_RawFree(self._keys)
        PyMem_RawFree(self._flags)
        PyMem_RawFree(self._queue)
        PyMem_RawFree(self._table)

    # ------------------------------------------------------------------------------------
    # Hash table

    cdef inline uint32_t _hash(self, PyObject *key) except? 0:
        cdef Py_hash_t h = PyObject_Hash(key)   # cannot fail for bytes; cached in the object
        return <uint32_t><uint64_t>h & self._hmask

    cdef inline int32_t _find(self, PyObject *key, uint32_t h, uint64_t *bucket) noexcept:
        """Slot of ``key`` (and its bucket), or -1 (and the empty bucket that ends the probe)."""
        cdef uint64_t i = h & self._mask
        cdef uint64_t e
        cdef int32_t s
        cdef PyObject *other
        cdef Py_ssize_t n = PyBytes_GET_SIZE(key)
        while True:
            e = self._table[i]
            if e == 0:
                bucket[0] = i
                return -1
            if <uint32_t>(e >> 32) == h:
                s = <int32_t>(<uint32_t>e) - 1
                other = self._keys[s]
                if other == key or (PyBytes_GET_SIZE(other) == n and memcmp(
                        PyBytes_AS_STRING(other), PyBytes_AS_STRING(key), n) == 0):
                    bucket[0] = i
                    return s
            i = (i + 1) & self._mask

    cdef inline uint64_t _bucket_of(self, int32_t s, uint32_t h) noexcept:
        """Bucket holding slot ``s`` (whose key hashes to ``h``)."""
        cdef uint64_t i = h & self._mask
        cdef uint32_t want = <uint32_t>s + 1
        while <uint32_t>self._table[i] != want:
            i = (i + 1) & self._mask
        return i

    cdef inline void _unbucket(self, uint64_t i) noexcept:
        """Empty bucket ``i``, shifting back the entries of its cluster that may move."""
        cdef uint64_t j = i
        cdef uint64_t e, home
        cdef uint64_t mask = self._mask
        while True:
            j = (j + 1) & mask
            e = self._table[j]
            if e == 0:
                break
            home = (e >> 32) & mask
            # The entry at j stays if its home lies cyclically in (i, j].
            if ((j - home) & mask) < ((j - i) & mask):
                continue
            self._table[i] = e
            i = j
        self._table[i] = 0

    cdef int _grow(self) except -1:
        cdef Py_ssize_t cap = self._cap * 2
        cdef Py_ssize_t k
        cdef uint64_t mask, i, e
        cdef uint64_t *table
        cdef void *p
        if cap > _MAX_SLOTS:
            raise OverflowError("more entries than LRUIndex can hold")
        table = <uint64_t *>PyMem_RawCalloc(2 * cap, sizeof(uint64_t))
        if table == NULL:
            raise MemoryError()
        # Each array is replaced as soon as it has grown, so a failure part way leaves
        # larger arrays behind but a consistent index of the old capacity.
        p = PyMem_RawRealloc(self._ent, cap * sizeof(Entry))
        if p == NULL:
            PyMem_RawFree(table)
            raise MemoryError()
        self._ent = <Entry *>p
        p = PyMem_RawRealloc(self._keys, cap * sizeof(PyObject *))
        if p == NULL:
            PyMem_RawFree(table)
            raise MemoryError()
        self._keys = <PyObject **>p
        p = PyMem_RawRealloc(self._queue, cap * sizeof(int32_t))
        if p == NULL:
            PyMem_RawFree(table)
            raise MemoryError()
        self._queue = <int32_t *>p
        p = PyMem_RawRealloc(self._flags, cap * sizeof(uint8_t))
        if p == NULL:
            PyMem_RawFree(table)
            raise MemoryError()
        self._flags = <uint8_t *>p
        memset(self._flags + self._cap, 0, cap - self._cap)
        mask = 2 * cap - 1
        for k in range(2 * self._cap):
            e = self._table[k]
            if e != 0:
                i = (e >> 32) & mask
                while table[i] != 0:
                    i = (i + 1) & mask
                table[i] = e
        PyMem_RawFree(self._table)
        self._table = table
        self._mask = mask
        self._cap = cap
        return 0

    # ------------------------------------------------------------------------------------
    # Recency list and bookkeeping

    cdef inline void _unlink(self, int32_t s) noexcept:
        cdef Entry *ent = self._ent
        cdef int32_t p = ent[s].prev
        cdef int32_t n = ent[s].next
        if p >= 0:
            ent[p].next = n
        else:
            self._head = n
        if n >= 0:
            ent[n].prev = p
        else:
            self._tail = p

    cdef inline void _append(self, int32_t s) noexcept:
        cdef Entry *ent = self._ent
        ent[s].prev = self._tail
        ent[s].next = -1
        if self._tail >= 0:
            ent[self._tail].next = s
        else:
            self._head = s
        self._tail = s

    cdef inline void _to_tail(self, int32_t s) noexcept:
        if s != self._tail:
            self._unlink(s)
            self._append(s)

    cdef inline void _stamp(self, int32_t s, bint mark) noexcept:
        cdef uint8_t f
        self._clock += 1
        self._ent[s].stamp = self._clock
        if mark:
            f = self._flags[s]
            if not (f & _DIRTY):
                self._ndirty += 1
                if not (f & _QUEUED):
                    self._queue[self._qn] = s
                    self._qn += 1
                self._flags[s] = f | _DIRTY | _QUEUED

    cdef PyObject *_drop(self, int32_t s, uint64_t bucket) noexcept:
        """Remove slot ``s`` (found at ``bucket``); returns the key's reference, now the
        caller's."""
        cdef PyObject *key = self._keys[s]
        self._unlink(s)
        self._unbucket(bucket)
        self._total -= self._ent[s].size
        self._n -= 1
        if self._flags[s] & _DIRTY:
            self._ndirty -= 1
            self._flags[s] &= ~_DIRTY    # _QUEUED stays: the slot number is still queued
        self._keys[s] = NULL
        self._ent[s].next = self._free
        self._free = s
        return key

    cdef int _put(self, object key, int64_t size, bint mark) except -1:
        cdef object held = _as_key(key)
        cdef PyObject *k = <PyObject *>held
        cdef uint32_t h
        cdef uint64_t bucket
        cdef int32_t s
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        h = self._hash(k)
        s = self._find(k, h, &bucket)
        if s >= 0:
            if size - self._ent[s].size > INT64_MAX - self._total:
                raise OverflowError("total_size would overflow int64")
            self._total += size - self._ent[s].size
            self._ent[s].size = size
            self._to_tail(s)
            self._stamp(s, mark)
            return 0
        if size > INT64_MAX - self._total:
            raise OverflowError("total_size would overflow int64")
        if self._free >= 0:
            s = self._free
            self._free = self._ent[s].next
        else:
            if self._hi == self._cap:
                self._grow()
                self._find(k, h, &bucket)       # the table was rebuilt: probe again
            s = <int32_t>self._hi
            self._hi += 1
        Py_INCREF(k)
        self._keys[s] = k
        self._table[bucket] = (<uint64_t>h << 32) | (<uint32_t>s + 1)
        self._ent[s].size = size
        self._total += size
        self._n += 1
        self._append(s)
        self._stamp(s, mark)
        return 0

    cdef int32_t _lookup(self, object key, uint64_t *bucket) except -2:
        cdef object held = _as_key(key)
        cdef PyObject *k = <PyObject *>held
        return self._find(k, self._hash(k), bucket)

    cdef list _collect(self, int32_t s, Py_ssize_t n):
        """The keys of ``n`` slots, following the list from ``s`` towards the tail."""
        cdef list out = PyList_New(n)
        cdef Py_ssize_t i
        cdef PyObject *k
        for i in range(n):
            k = self._keys[s]
            Py_INCREF(k)
            PyList_SET_ITEM(out, i, k)
            s = self._ent[s].next
        return out

    # ------------------------------------------------------------------------------------
    # API

    def insert(self, key, size):
        """Add ``key`` as the most recent entry, or update its size and make it most recent."""
        self._put(key, _int64(size), True)

    def touch(self, key):
        """Make ``key`` the most recent entry; False if it is absent."""
        cdef uint64_t bucket
        cdef int32_t s = self._lookup(key, &bucket)
        if s < 0:
            return False
        self._to_tail(s)
        self._stamp(s, True)
        return True

    def remove(self, key):
        """Forget ``key``; False if it was absent."""
        cdef uint64_t bucket
        cdef int32_t s = self._lookup(key, &bucket)
        if s < 0:
            return False
        Py_DECREF(self._drop(s, bucket))
        return True

    def __contains__(self, key):
        cdef uint64_t bucket
        return self._lookup(key, &bucket) >= 0

    def __len__(self):
        return self._n

    @property
    def total_size(self):
        """Sum of the sizes of all entries."""
        return self._total

    def size_of(self, key):
        """The size of ``key``, -1 if it is absent."""
        cdef uint64_t bucket
        cdef int32_t s = self._lookup(key, &bucket)
        return self._ent[s].size if s >= 0 else -1

    def evict_until(self, capacity):
        """Remove least recent entries until total_size <= capacity; returns their keys in
        the order they were removed (entries of size 0 stay once the total fits)."""
        cdef int64_t cap = _int64(capacity)
        cdef list out = []
        cdef int32_t s
        cdef PyObject *k
        if cap < 0:
            raise ValueError(f"capacity must be >= 0, got {cap}")
        while self._total > cap:
            s = self._head
            k = self._keys[s]
            PyList_Append(out, k)     # may raise MemoryError: the entry is still intact
            Py_DECREF(self._drop(s, self._bucket_of(s, self._hash(k))))
        return out

    def oldest(self, Py_ssize_t n):
        """Up to ``n`` keys, least recent first."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return self._collect(self._head, min(n, self._n))

    def keys_by_recency(self):
        """All keys, least recent first (the order ``load()`` takes)."""
        return self._collect(self._head, self._n)

    def take_touched(self):
        """Keys inserted or touched since the previous call (or since the index was
        created), each once, least recent first; keys removed since then are left out.
        ``load()`` does not count as inserting."""
        cdef list out = PyList_New(self._ndirty)
        cdef Py_ssize_t i, j = 0
        cdef int32_t s
        cdef Stamped *pairs
        cdef PyObject *k
        if self._ndirty * 8 >= self._n:
            # A large share of the index: one walk of the list is cheaper than sorting.
            s = self._head
            while s >= 0:
                if self._flags[s] & _DIRTY:
                    k = self._keys[s]
                    Py_INCREF(k)
                    PyList_SET_ITEM(out, j, k)
                    j += 1
                s = self._ent[s].next
            for i in range(self._qn):
                self._flags[self._queue[i]] = 0
        else:
            pairs = <Stamped *>PyMem_RawMalloc(self._ndirty * sizeof(Stamped) + 1)
            if pairs == NULL:
                raise MemoryError()
            for i in range(self._qn):
                s = self._queue[i]
                if self._flags[s] & _DIRTY:
                    pairs[j].stamp = self._ent[s].stamp
                    pairs[j].slot = s
                    j += 1
                self._flags[s] = 0
            qsort(pairs, j, sizeof(Stamped), _by_stamp)
            for i in range(j):
                k = self._keys[pairs[i].slot]
                Py_INCREF(k)
                PyList_SET_ITEM(out, i, k)
            PyMem_RawFree(pairs)
        self._qn = 0
        self._ndirty = 0
        return out

    def load(self, items):
        """Rebuild from persisted ``(key, size)`` pairs, least recent first: each pair is
        inserted as by ``insert()`` but not reported by ``take_touched()``.  Meant for an
        empty index; on an error, the pairs before the bad one stay loaded."""
        for key, size in items:
            self._put(key, _int64(size), False)

    def __sizeof__(self):
        return (sizeof(LRUIndex) + self._cap * (sizeof(Entry) + sizeof(PyObject *)
                + sizeof(uint8_t) + sizeof(int32_t)) + 2 * self._cap * sizeof(uint64_t))

    def __repr__(self):
        return f"<LRUIndex {self._n} entries, {self._total} bytes>"
