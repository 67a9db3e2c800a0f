# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The geo DNS UDP hot loop: recvmmsg a batch, answer what the reply cache knows, sendmmsg.

A reply depends on the query bytes after the ID and, for geo names without ECS, on
where the sender is; so the cache key is ``query[2:] + location(sender)`` and a hit is
the cached reply with the query's ID written in. Misses go to a Python callback (the
Responder), whose reply is sent in the same batch and cached when it says so.
Response rate limiting per /24 (IPv4) or /56 (IPv6) runs here, before the cache, with
the same token-bucket rules as farts/dns/rrl.py.

The caller owns the socket (non-blocking UDP, bound) and the event loop: it calls
``on_readable()`` when the socket is readable. Nothing here blocks.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.ref cimport PyObject
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from fast.geo cimport GeoIndex


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    enum: CLOCK_MONOTONIC


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        unsigned short sa_family
    struct sockaddr_storage:
        unsigned short ss_family
    struct iovec:
        void *iov_base
        size_t iov_len
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int fd, mmsghdr *vec, unsigned int vlen, int flags, timespec *timeout)
    int sendmmsg(int fd, mmsghdr *vec, unsigned int vlen, int flags)
    enum: MSG_DONTWAIT
    enum: MSG_TRUNC
    enum: AF_INET
    enum: AF_INET6


cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in6:
        unsigned short sin6_family
        unsigned short sin6_port
        in6_addr sin6_addr


DEF BATCH = 64
DEF BUF = 4096
DEF KEY_MAX = 600          # queries longer than this are not cached (cookies, padding...)
DEF RRL_SLOTS = 65536      # power of two

cdef uint64_t _GOLDEN = 0x9E3779B97F4A7C15   # Fibonacci hashing of the network key


cdef struct _Bucket:
    uint64_t key           # 0: free
    double tokens
    double last
    unsigned int limited


@cython.final
@cython.freelist(64)
cdef class Entry:
    """A cached reply (ID bytes zero) and how many times it was replayed."""
    cdef readonly bytes reply
    cdef readonly object label
    cdef readonly Py_ssize_t hits

    def __cinit__(self, bytes reply, label):
        self.reply = reply
        self.label = label
        self.hits = 0


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


@cython.final
cdef class UDPFastPath:
    cdef int fd
    cdef object miss
    cdef GeoIndex geo
    cdef dict cache
    cdef Py_ssize_t max_entries
    cdef mmsghdr rmsg[BATCH]
    cdef mmsghdr smsg[BATCH]
    cdef iovec riov[BATCH]
    cdef iovec siov[BATCH]
    cdef sockaddr_storage addrs[BATCH]
    cdef unsigned char *rbuf
    cdef unsigned char *sbuf
    # response rate limiting
    cdef double rate, burst
    cdef unsigned int slip
    cdef _Bucket *buckets
    cdef Py_ssize_t nbuckets
    cdef readonly Py_ssize_t hits, misses, rrl_dropped, rrl_slipped, dropped, send_errors
    cdef readonly Py_ssize_t evicted_hits   # hits of entries dropped by clear(), for totals
    cdef readonly object evicted_labels     # {label: hits} of those entries

    def __cinit__(self, int fd, miss, double rrl_rate=0, double rrl_burst=1, int rrl_slip=0,
                  Py_ssize_t max_entries=100000):
        """``miss(query: bytes, client: bytes) -> (reply or None, label or None)``:
        label None means do not cache."""
        self.fd = fd
        self.miss = miss
        self.geo = None
        self.cache = {}
        self.max_entries = max_entries
        self.rate = rrl_rate
        self.burst = rrl_burst
        self.slip = rrl_slip
        self.evicted_labels = {}
        self.rbuf = <unsigned char *>malloc(BATCH * BUF)
        self.sbuf = <unsigned char *>malloc(BATCH * BUF)
        self.buckets = <_Bucket *>calloc(RRL_SLOTS, sizeof(_Bucket))
        if self.rbuf == NULL or self.sbuf == NULL or self.buckets == NULL:
            raise MemoryError()
        cdef int i
        memset(self.rmsg, 0, sizeof(self.rmsg))
        memset(self.smsg, 0, sizeof(self.smsg))
        for i in range(BATCH):
            self.riov[i].iov_base = self.rbuf + i * BUF
            self.riov[i].iov_len = BUF
            self.rmsg[i].msg_hdr.msg_iov = &self.riov[i]
            self.rmsg[i].msg_hdr.msg_iovlen = 1
            self.rmsg[i].msg_hdr.msg_name = &self.addrs[i]
            self.smsg[i].msg_hdr.msg_iov = &self.siov[i]
            self.smsg[i].msg_hdr.msg_iovlen = 1

    def __dealloc__(self):
        free(self.rbuf)
        free(self.sbuf)
        free(self.buckets)

    def set_geo(self, GeoIndex geo):
        """The index used to place senders (None: every sender at "unknown"); clears."""
        self.geo = geo
        self.clear()

    def clear(self):
        """Forget every cached reply (the node map or the index changed)."""
        cdef Entry e
        for e in self.cache.values():
            if e.hits:
                self.evicted_labels[e.label] = self.evicted_labels.get(e.label, 0) + e.hits
        self.cache = {}

    def replayed(self):
        """{label: replies sent from the cache}, for metrics."""
        cdef Entry e
        out = dict(self.evicted_labels)
        for e in self.cache.values():
            if e.hits:
                out[e.label] = out.get(e.label, 0) + e.hits
        return out

    @property
    def entries(self):
        return len(self.cache)

    # ---- rate limiting ----

    cdef int _limit(self, sockaddr_storage *sa, double now) noexcept:
        """0 allow, 1 drop, 2 slip."""
        cdef uint64_t key, h
        cdef const unsigned char *a
        cdef Py_ssize_t i, n = 0
        cdef _Bucket *b
        cdef double tokens
        if self.rate <= 0:
            return 0
        if sa.ss_family == AF_INET:
            a = <const unsigned char *>&(<sockaddr_in *>sa).sin_addr
            key = (<uint64_t>1 << 60) | (<uint64_t>a[0] << 16) | (<uint64_t>a[1] << 8) | a[2]
        else:
            a = (<sockaddr_in6 *>sa).sin6_addr.s6_addr
            key = (<uint64_t>2 << 60)
            for i in range(7):
                key |= <uint64_t>a[i] << (8 * (6 - i))
        h = (key * _GOLDEN) >> 48
        while True:
            b = &self.buckets[h & (RRL_SLOTS - 1)]
            if b.key == key:
                break
            if b.key == 0:
                if self.nbuckets >= RRL_SLOTS // 2:   # a flood from everywhere: start over
                    memset(self.buckets, 0, RRL_SLOTS * sizeof(_Bucket))
                    self.nbuckets = 0
                    b = &self.buckets[((key * _GOLDEN) >> 48) & (RRL_SLOTS - 1)]
                b.key = key
                b.tokens = self.burst - 1
                b.last = now
                b.limited = 0
                self.nbuckets += 1
                return 0
            h += 1
        tokens = b.tokens + (now - b.last) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        b.last = now
        if tokens >= 1:
            b.tokens = tokens - 1
            return 0
        b.tokens = tokens
        b.limited += 1
        if self.slip and b.limited % self.slip == 0:
            return 2
        return 1

    # ---- the loop ----

    cdef bytes _client(self, sockaddr_storage *sa):
        if sa.ss_family == AF_INET:
            return PyBytes_FromStringAndSize(<char *>&(<sockaddr_in *>sa).sin_addr, 4)
        return PyBytes_FromStringAndSize(<char *>(<sockaddr_in6 *>sa).sin6_addr.s6_addr, 16)

    cdef int _loc(self, sockaddr_storage *sa) noexcept:
        if self.geo is None:
            return -1
        if sa.ss_family == AF_INET:
            return self.geo.locate(1, <const unsigned char *>&(<sockaddr_in *>sa).sin_addr, NULL)
        return self.geo.locate(2, (<sockaddr_in6 *>sa).sin6_addr.s6_addr, NULL)

    cdef Py_ssize_t _slip_reply(self, const unsigned char *q, Py_ssize_t n, unsigned char *out) noexcept:
        """Header + question with QR and TC set, no records: nothing to amplify."""
        cdef Py_ssize_t pos = 12
        if n < 12 or (q[2] & 0x80):
            return 0
        if q[4] == 0 and q[5] == 1:
            while pos < n and q[pos] != 0:
                if q[pos] & 0xC0:
                    return 0
                pos += q[pos] + 1
            pos += 5
            if pos > n:
                return 0
        else:
            pos = 12
        memcpy(out, q, pos)
        out[2] = (q[2] & 0x79) | 0x80 | 0x02   # QR, opcode and RD kept, TC
        out[3] = q[3] & 0x10                   # CD kept, rcode 0
        out[4] = 0
        out[5] = 1 if pos > 12 else 0
        memset(out + 6, 0, 6)
        return pos

    def on_readable(self, int max_batches=8):
        """Answers what is queued on the socket (up to max_batches batches); returns the
        number of messages read."""
        cdef int got, i, nsend, sent, action, loc, k, total = 0
        cdef Py_ssize_t n, rlen
        cdef double now
        cdef unsigned char *q
        cdef unsigned char *out
        cdef bytes key
        cdef PyObject *hit
        cdef Entry e
        cdef unsigned char locb[4]
        cdef list keep
        for k in range(max_batches):
            for i in range(BATCH):
                self.rmsg[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
                self.rmsg[i].msg_hdr.msg_flags = 0
            got = recvmmsg(self.fd, self.rmsg, BATCH, MSG_DONTWAIT, NULL)
            if got <= 0:
                break
            total += got
            now = _now() if self.rate > 0 else 0
            nsend = 0
            keep = None
            for i in range(got):
                n = self.rmsg[i].msg_len
                q = self.rbuf + i * BUF
                if n < 12 or (self.rmsg[i].msg_hdr.msg_flags & MSG_TRUNC) or (q[2] & 0x80):
                    self.dropped += 1      # no header, too big, or a response: never answered
                    continue
                action = self._limit(&self.addrs[i], now)
                out = self.sbuf + nsend * BUF
                if action == 1:
                    self.rrl_dropped += 1
                    continue
                if action == 2:
                    self.rrl_slipped += 1
                    rlen = self._slip_reply(q, n, out)
                    if rlen == 0:
                        continue
                    self.siov[nsend].iov_base = out
                    self.siov[nsend].iov_len = rlen
                else:
                    loc = self._loc(&self.addrs[i])
                    hit = NULL
                    key = None
                    if n <= KEY_MAX:
                        locb[0] = (loc >> 24) & 0xFF
                        locb[1] = (loc >> 16) & 0xFF
                        locb[2] = (loc >> 8) & 0xFF
                        locb[3] = loc & 0xFF
                        key = PyBytes_FromStringAndSize(NULL, n - 2 + 4)
                        memcpy(PyBytes_AS_STRING(key), q + 2, n - 2)
                        memcpy(PyBytes_AS_STRING(key) + n - 2, locb, 4)
                        hit = PyDict_GetItem(self.cache, key)
                    if hit != NULL:
                        e = <Entry>hit
                        e.hits += 1
                        self.hits += 1
                        rlen = PyBytes_GET_SIZE(e.reply)
                        if rlen > BUF:
                            continue
                        memcpy(out, PyBytes_AS_STRING(e.reply), rlen)
                        out[0] = q[0]
                        out[1] = q[1]
                        self.siov[nsend].iov_base = out
                        self.siov[nsend].iov_len = rlen
                    else:
                        self.misses += 1
                        reply, label = self.miss(PyBytes_FromStringAndSize(<char *>q, n),
                                                 self._client(&self.addrs[i]))
                        if reply is None:
                            continue
                        if keep is None:
                            keep = []
                        keep.append(reply)
                        self.siov[nsend].iov_base = PyBytes_AS_STRING(reply)
                        self.siov[nsend].iov_len = PyBytes_GET_SIZE(reply)
                        if label is not None and key is not None:
                            if len(self.cache) >= self.max_entries:
                                self.clear()
                            stored = bytearray(reply)
                            stored[0] = 0
                            stored[1] = 0
                            PyDict_SetItem(self.cache, key, Entry(bytes(stored), label))
                self.smsg[nsend].msg_hdr.msg_name = &self.addrs[i]
                self.smsg[nsend].msg_hdr.msg_namelen = self.rmsg[i].msg_hdr.msg_namelen
                nsend += 1
            i = 0
            while i < nsend:
                sent = sendmmsg(self.fd, &self.smsg[i], nsend - i, MSG_DONTWAIT)
                if sent > 0:
                    i += sent
                elif sent < 0 and errno == EINTR:
                    continue
                elif sent < 0 and (errno == EAGAIN):
                    self.send_errors += nsend - i   # socket buffer full: UDP may drop
                    break
                else:   # this destination failed (unreachable...): skip it, send the rest
                    self.send_errors += 1
                    i += 1
            if got < BATCH:
                break
        return total
