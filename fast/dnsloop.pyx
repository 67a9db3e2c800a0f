# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The geo DNS UDP hot loop: recvmmsg a batch, answer what the reply cache knows, sendmmsg.

A reply depends on the query bytes after the ID and, for geo names without ECS, on
where the sender is; so the cache key is ``query[2:]`` plus ``location(sender)`` and a
hit is the cached reply with the query's ID written in. The cache is a C hash table
(open addressing, entries allocated once, no Python object touched on a hit) and
senders' locations are remembered per address until the geo index changes, so a hit
costs a hash of the query, a memcmp and a copy. Misses go to a Python callback (the
Responder), whose reply is sent in the same batch and cached when it says so.
Response rate limiting per /24 (IPv4) or /56 (IPv6) runs here, before the cache, with
the same token-bucket rules as farts/dns/rrl.py.

The caller owns the socket (non-blocking UDP, bound) and the event loop: it calls
``on_readable()`` when ``fileno()`` (an epoll set holding the socket, which a busy
socket leaves while it is answered: see fileno) is readable. Nothing here blocks.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.errno cimport EAGAIN, EEXIST, EINTR, errno
from libc.stdint cimport int32_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset

import os

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


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        int fd
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    enum: EPOLL_CLOEXEC
    enum: EPOLL_CTL_ADD
    enum: EPOLL_CTL_DEL
    enum: EPOLLIN


cdef extern from "<unistd.h>" nogil:
    int close(int fd)


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
DEF RSTRIDE = BUF + 64     # receive buffers a line apart from a 4 KiB multiple: no cache-set aliasing
DEF KEY_MAX = 600          # queries longer than this are not cached (cookies, padding...)
DEF RRL_SLOTS = 65536      # power of two
DEF PROBES = 32            # slots a lookup or an insert looks at: bounds the cost of collisions
DEF MIN_SLOTS = 1024       # the table starts this small and doubles (a small table stays in cache)
DEF LOC_SLOTS = 4096       # senders whose location is remembered (direct mapped, power of two)
DEF UNWATCH_AT = 8         # a batch this large: the socket leaves the epoll set while answering

cdef uint64_t _GOLDEN = 0x9E3779B97F4A7C15   # Fibonacci hashing
cdef uint64_t _MIX = 0xD6E8FEB86659FD93      # the final multiply of the key hash


cdef struct _Bucket:
    uint64_t key           # 0: free
    double tokens
    double last
    unsigned int limited


cdef struct _Entry:
    # A cached reply; key bytes (the query after its ID) then the reply (ID bytes zero) follow.
    uint64_t hash
    Py_ssize_t hits
    PyObject *label        # owned reference: what a replay counts as (metrics)
    int32_t loc
    uint16_t klen
    uint16_t rlen


cdef struct _Sender:
    # A sender address and its location number; family 0: free.
    uint64_t hi
    uint64_t lo
    int32_t loc
    int32_t family


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline uint64_t _load64(const unsigned char *p) noexcept nogil:
    cdef uint64_t w
    memcpy(&w, p, 8)
    return w


cdef inline uint64_t _hash(uint64_t seed, const unsigned char *p, Py_ssize_t n, int32_t loc) noexcept nogil:
    """A seeded multiply-xor hash of the key; collisions (even chosen ones) cost at most
    PROBES comparisons, so it needs to spread, not to be strong."""
    cdef uint64_t h = seed ^ (<uint64_t>n * _GOLDEN) ^ <uint32_t>loc
    cdef uint64_t w
    while n >= 8:
        h = (h ^ _load64(p)) * _GOLDEN
        h ^= h >> 29
        p += 8
        n -= 8
    if n:
        w = 0
        memcpy(&w, p, n)
        h = (h ^ w) * _GOLDEN
    h ^= h >> 32
    h *= _MIX
    return h ^ (h >> 32)


@cython.final
cdef class UDPFastPath:
    cdef int fd, epfd
    cdef bint watched          # the socket is in epfd's set
    cdef object miss
    cdef GeoIndex geo
    # the reply cache
    cdef _Entry **slots
    cdef size_t mask, max_slots
    cdef uint64_t seed
    cdef Py_ssize_t count, max_entries
    cdef _Sender *senders
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
    cdef readonly Py_ssize_t reads, sends      # recvmmsg calls that returned datagrams; sendmmsg calls
    cdef readonly object evicted_labels     # {label: hits} of entries dropped by clear(), for totals

    def __cinit__(self, int fd, miss, double rrl_rate=0, double rrl_burst=1, int rrl_slip=0,
                  Py_ssize_t max_entries=100000):
        """``miss(query: bytes, client: bytes) -> (reply or None, label or None)``:
        label None means do not cache."""
        cdef size_t size = MIN_SLOTS
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_slots = MIN_SLOTS
        while self.max_slots < <size_t>max_entries * 2:   # at most half full: short probe sequences
            self.max_slots *= 2
        self.fd = fd
        self.epfd = -1
        self.miss = miss
        self.geo = None
        self.mask = size - 1
        self.seed = int.from_bytes(os.urandom(8), "little")
        self.max_entries = max_entries
        self.rate = rrl_rate
        self.burst = rrl_burst
        self.slip = rrl_slip
        self.evicted_labels = {}
        self.slots = <_Entry **>calloc(size, sizeof(_Entry *))
        self.senders = <_Sender *>calloc(LOC_SLOTS, sizeof(_Sender))
        self.rbuf = <unsigned char *>malloc(BATCH * RSTRIDE)
        self.sbuf = <unsigned char *>malloc(BATCH * BUF)
        self.buckets = <_Bucket *>calloc(RRL_SLOTS, sizeof(_Bucket))
        if (self.rbuf == NULL or self.sbuf == NULL or self.buckets == NULL or self.slots == NULL
                or self.senders == NULL):
            raise MemoryError()
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "dns: epoll_create1 failed")
        self._watch()
        cdef int i
        memset(self.rmsg, 0, sizeof(self.rmsg))
        memset(self.smsg, 0, sizeof(self.smsg))
        for i in range(BATCH):
            self.riov[i].iov_base = self.rbuf + i * RSTRIDE
            self.riov[i].iov_len = BUF
            self.rmsg[i].msg_hdr.msg_iov = &self.riov[i]
            self.rmsg[i].msg_hdr.msg_iovlen = 1
            self.rmsg[i].msg_hdr.msg_name = &self.addrs[i]
            self.rmsg[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
            self.smsg[i].msg_hdr.msg_iov = &self.siov[i]
            self.smsg[i].msg_hdr.msg_iovlen = 1

    def __dealloc__(self):
        cdef size_t i
        if self.slots != NULL:
            for i in range(self.mask + 1):
                if self.slots[i] != NULL:
                    Py_DECREF(<object>self.slots[i].label)
                    free(self.slots[i])
        if self.epfd >= 0:
            close(self.epfd)
        free(self.slots)
        free(self.senders)
        free(self.rbuf)
        free(self.sbuf)
        free(self.buckets)

    def fileno(self):
        """The descriptor to watch for readability (then call ``on_readable``): an epoll
        set holding the socket. While a busy socket is answered it leaves that set: a
        socket with a waiter in its wait queue (any epoll set watching it) wakes it on
        every datagram sent, as each one's buffer space is freed; a socket no one waits
        on skips that (perf: 3.7% of the server's time under dnsperf, absent from gdnsd,
        whose thread blocks in recvmmsg instead)."""
        return self.epfd

    def close(self):
        """Closes the epoll set (the socket is the caller's to close)."""
        if self.epfd >= 0:
            close(self.epfd)
            self.epfd = -1

    cdef int _watch(self) except -1:
        cdef epoll_event ev
        memset(&ev, 0, sizeof(ev))
        ev.events = EPOLLIN
        ev.data.fd = self.fd
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.fd, &ev) < 0 and errno != EEXIST:
            raise OSError(errno, "dns: epoll_ctl(ADD) of the UDP socket failed")
        self.watched = True
        return 0

    def set_geo(self, GeoIndex geo):
        """The index used to place senders (None: every sender at "unknown"); clears."""
        self.geo = geo
        memset(self.senders, 0, LOC_SLOTS * sizeof(_Sender))
        self.clear()

    def clear(self):
        """Forget every cached reply (the node map or the index changed)."""
        cdef size_t i
        cdef _Entry *e
        if self.count == 0:
            return
        for i in range(self.mask + 1):
            e = self.slots[i]
            if e == NULL:
                continue
            if e.hits:
                label = <object>e.label
                self.evicted_labels[label] = self.evicted_labels.get(label, 0) + e.hits
            Py_DECREF(<object>e.label)
            free(e)
            self.slots[i] = NULL
        self.count = 0

    def replayed(self):
        """{label: replies sent from the cache}, for metrics."""
        cdef size_t i
        cdef _Entry *e
        out = dict(self.evicted_labels)
        if self.count == 0:
            return out
        for i in range(self.mask + 1):
            e = self.slots[i]
            if e != NULL and e.hits:
                label = <object>e.label
                out[label] = out.get(label, 0) + e.hits
        return out

    @property
    def entries(self):
        return self.count

    # ---- the reply cache ----

    cdef _Entry *_find(self, uint64_t h, const unsigned char *key, Py_ssize_t klen, int32_t loc) noexcept:
        cdef size_t i = <size_t>h
        cdef int p
        cdef _Entry *e
        for p in range(PROBES):
            e = self.slots[i & self.mask]
            if e == NULL:
                return NULL
            if (e.hash == h and e.loc == loc and e.klen == klen
                    and memcmp(<unsigned char *>(e + 1), key, klen) == 0):
                return e
            i += 1
        return NULL

    cdef void _store(self, uint64_t h, const unsigned char *key, Py_ssize_t klen, int32_t loc,
                     bytes reply, object label):
        """Caches ``reply`` (its ID zeroed) unless its probe sequence is full."""
        cdef Py_ssize_t rlen = PyBytes_GET_SIZE(reply)
        cdef size_t i = <size_t>h
        cdef int p
        cdef _Entry *e
        cdef unsigned char *data
        if rlen < 12 or rlen > BUF:
            return
        if self.count >= self.max_entries:
            self.clear()
        elif <size_t>(self.count + 1) * 2 > self.mask + 1 and self.mask + 1 < self.max_slots:
            self._grow()
        for p in range(PROBES):
            if self.slots[i & self.mask] == NULL:
                break
            i += 1
        else:
            return
        e = <_Entry *>malloc(sizeof(_Entry) + klen + rlen)
        if e == NULL:
            return
        e.hash = h
        e.hits = 0
        e.loc = loc
        e.klen = <uint16_t>klen
        e.rlen = <uint16_t>rlen
        Py_INCREF(label)
        e.label = <PyObject *>label
        data = <unsigned char *>(e + 1)
        memcpy(data, key, klen)
        memcpy(data + klen, PyBytes_AS_STRING(reply), rlen)
        data[klen] = 0
        data[klen + 1] = 0
        self.slots[i & self.mask] = e
        self.count += 1

    cdef void _grow(self):
        """Twice the slots, the entries placed again by their hash (one that finds no free
        slot within PROBES is dropped, its replays counted as if cleared)."""
        cdef size_t size = (self.mask + 1) * 2, i, j
        cdef int p
        cdef _Entry *e
        cdef _Entry **slots = <_Entry **>calloc(size, sizeof(_Entry *))
        if slots == NULL:
            return
        for i in range(self.mask + 1):
            e = self.slots[i]
            if e == NULL:
                continue
            j = <size_t>e.hash
            for p in range(PROBES):
                if slots[j & (size - 1)] == NULL:
                    slots[j & (size - 1)] = e
                    break
                j += 1
            else:
                if e.hits:
                    label = <object>e.label
                    self.evicted_labels[label] = self.evicted_labels.get(label, 0) + e.hits
                Py_DECREF(<object>e.label)
                free(e)
                self.count -= 1
        free(self.slots)
        self.slots = slots
        self.mask = size - 1

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

    cdef int32_t _loc(self, sockaddr_storage *sa) noexcept:
        """The sender's location number (-1: unknown), remembered per address."""
        cdef uint64_t hi, lo
        cdef int32_t family
        cdef const unsigned char *a
        cdef _Sender *s
        if self.geo is None:
            return -1
        if sa.ss_family == AF_INET:
            family = 1
            a = <const unsigned char *>&(<sockaddr_in *>sa).sin_addr
            hi = 0
            lo = (<uint64_t>a[0] << 24) | (<uint64_t>a[1] << 16) | (<uint64_t>a[2] << 8) | a[3]
        else:
            family = 2
            a = (<sockaddr_in6 *>sa).sin6_addr.s6_addr
            hi = _load64(a)
            lo = _load64(a + 8)
        s = &self.senders[(((hi ^ lo) * _GOLDEN) >> 40) & (LOC_SLOTS - 1)]
        if s.family != family or s.hi != hi or s.lo != lo:
            s.family = family
            s.hi = hi
            s.lo = lo
            s.loc = self.geo.locate(family, a, NULL)
        return s.loc

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
        try:
            return self._answer(max_batches)
        finally:
            if not self.watched:   # (queued datagrams make the set readable again at once)
                self._watch()

    cdef int _answer(self, int max_batches) except -1:
        cdef int got, i, nsend, sent, action, k, total = 0
        cdef size_t used
        cdef int32_t loc
        cdef Py_ssize_t n, rlen
        cdef uint64_t h
        cdef double now
        cdef unsigned char *q
        cdef unsigned char *out
        cdef _Entry *e
        cdef list keep
        for k in range(max_batches):
            got = recvmmsg(self.fd, self.rmsg, BATCH, MSG_DONTWAIT, NULL)
            if got <= 0:
                break
            self.reads += 1
            total += got
            if self.watched and got >= UNWATCH_AT and epoll_ctl(self.epfd, EPOLL_CTL_DEL, self.fd, NULL) == 0:
                self.watched = False
            now = _now() if self.rate > 0 else 0
            nsend = 0
            used = 0       # replies are packed in sbuf (64-byte aligned): few lines and pages touched
            keep = None
            for i in range(got):
                n = self.rmsg[i].msg_len
                q = self.rbuf + i * RSTRIDE
                if n < 12 or (self.rmsg[i].msg_hdr.msg_flags & MSG_TRUNC) or (q[2] & 0x80):
                    self.dropped += 1      # no header, too big, or a response: never answered
                    continue
                action = self._limit(&self.addrs[i], now)
                out = self.sbuf + used
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
                    used += (rlen + 63) & ~(<size_t>63)
                else:
                    loc = self._loc(&self.addrs[i])
                    e = NULL
                    h = 0
                    if n <= KEY_MAX:
                        h = _hash(self.seed, q + 2, n - 2, loc)
                        e = self._find(h, q + 2, n - 2, loc)
                    if e != NULL:
                        e.hits += 1
                        self.hits += 1
                        memcpy(out, <unsigned char *>(e + 1) + e.klen, e.rlen)
                        out[0] = q[0]
                        out[1] = q[1]
                        self.siov[nsend].iov_base = out
                        self.siov[nsend].iov_len = e.rlen
                        used += (e.rlen + 63) & ~(<size_t>63)
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
                        if label is not None and n <= KEY_MAX:
                            self._store(h, q + 2, n - 2, loc, reply, label)
                self.smsg[nsend].msg_hdr.msg_name = &self.addrs[i]
                self.smsg[nsend].msg_hdr.msg_namelen = self.rmsg[i].msg_hdr.msg_namelen
                nsend += 1
            for i in range(got):   # (the kernel wrote the sender's address length there)
                self.rmsg[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
            i = 0
            while i < nsend:
                sent = sendmmsg(self.fd, &self.smsg[i], nsend - i, MSG_DONTWAIT)
                self.sends += 1
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
            if got < BATCH and self.watched:
                break   # (unwatched, busy: read until the socket is empty, not through epoll again)
        return total
