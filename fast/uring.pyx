# cython: language_level=3, boundscheck=False, wraparound=False
"""SendRing: many sends to many sockets in one io_uring submission (liburing).

The fanout's flush makes one ``send`` per subscriber; each is a syscall whose entry and
exit cost is paid again per socket.  Here one flush prepares one IORING_OP_SEND per
socket and one ``io_uring_enter`` submits them all; the kernel runs each send inline (a
non-blocking send to a socket never waits) and posts its result to the completion
queue, read back without another syscall.

The semantics are the ``send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL)`` of the send()
path exactly: MSG_DONTWAIT makes io_uring complete a send that would block with
-EAGAIN (instead of arming a poll and sending later, which would reorder the bytes
against what the caller writes next), and a stream socket's partial send returns the
count.  The caller keeps whatever was not sent.

Optional at runtime: building the ring fails (OSError) where io_uring is disabled
(sysctl kernel.io_uring_disabled, a seccomp filter, an old kernel); the fanout then keeps
its send() path.  Not thread-safe: one ring per event loop, used from its thread.
"""

import os

from libc.errno cimport EAGAIN, EBUSY, EINTR, EINVAL
from libc.stdint cimport uint64_t

from cpython.mem cimport PyMem_Calloc, PyMem_Free

cdef extern from "Python.h":
    char *PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    void *PyList_GET_ITEM(object l, Py_ssize_t i)

cdef extern from "<sys/socket.h>" nogil:
    enum:
        MSG_DONTWAIT
        MSG_NOSIGNAL

cdef extern from "<liburing.h>" nogil:
    struct io_uring:
        pass
    struct io_uring_sqe:
        pass
    struct io_uring_cqe:
        uint64_t user_data
        int res
    struct io_uring_params:
        unsigned flags
    enum:
        IORING_SETUP_SUBMIT_ALL
        IORING_SETUP_COOP_TASKRUN
    int io_uring_queue_init_params(unsigned entries, io_uring *ring, io_uring_params *p)
    void io_uring_queue_exit(io_uring *ring)
    io_uring_sqe *io_uring_get_sqe(io_uring *ring)
    void io_uring_prep_send(io_uring_sqe *sqe, int sockfd, const void *buf, size_t len, int flags)
    void io_uring_sqe_set_data64(io_uring_sqe *sqe, uint64_t data)
    int io_uring_submit_and_wait(io_uring *ring, unsigned wait_nr)
    unsigned io_uring_peek_batch_cqe(io_uring *ring, io_uring_cqe **cqes, unsigned count)
    void io_uring_cq_advance(io_uring *ring, unsigned nr)

cdef extern from "<string.h>" nogil:
    void *memset(void *s, int c, size_t n)

DEF REAP = 256   # completions read per peek


cdef class SendRing:
    cdef io_uring ring
    cdef bint open
    cdef readonly unsigned entries
    cdef public unsigned long long submissions   # io_uring_enter calls made by send_all
    cdef public unsigned long long sends         # sends submitted

    def __cinit__(self, unsigned entries=4096):
        cdef io_uring_params params
        memset(&params, 0, sizeof(params))
        # SUBMIT_ALL: a send refused at submission (a bad fd) does not stop the others.
        # COOP_TASKRUN: no interrupt to run completion work; it runs on our next enter.
        params.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN
        ret = io_uring_queue_init_params(entries, &self.ring, &params)
        if ret == -EINVAL:           # a kernel older than these flags (5.18, 5.19)
            memset(&params, 0, sizeof(params))
            ret = io_uring_queue_init_params(entries, &self.ring, &params)
        if ret < 0:
            raise OSError(-ret, f"io_uring_queue_init({entries}): {os.strerror(-ret)}")
        self.open = True
        self.entries = entries

    def __dealloc__(self):
        self.close()

    def close(self):
        if self.open:
            self.open = False
            io_uring_queue_exit(&self.ring)

    cpdef list send_all(self, list fds, list buffers):
        """Sends ``buffers[i]`` to ``fds[i]`` for every i, each one non-blocking send.
        Returns the sends that did not send their whole buffer, as (i, result) pairs in
        no particular order: result is the bytes sent or -errno (-EAGAIN: the socket's
        buffer is full), or None where the outcome is unknown because the ring failed
        (io_uring_enter failing other than EINTR/EAGAIN/EBUSY): the ring is then closed,
        must not be used again, and those sockets' streams may have lost bytes.  (Most
        sends send everything: the caller walks only the exceptions.)"""
        cdef Py_ssize_t n = len(buffers), prepared = 0, done = 0, i
        cdef io_uring_sqe *sqe
        cdef io_uring_cqe *cqes[REAP]
        cdef unsigned got, k
        cdef int ret
        cdef list short = []
        cdef char *completed
        if n == 0:
            return short
        if not self.open:
            return [(i, None) for i in range(n)]
        completed = <char *>PyMem_Calloc(n, 1)
        if completed == NULL:
            raise MemoryError()
        try:
            while done < n:
                while prepared < n:
                    sqe = io_uring_get_sqe(&self.ring)
                    if sqe == NULL:      # the submission queue is full: submit this part first
                        break
                    buf = buffers[prepared]
                    io_uring_prep_send(sqe, fds[prepared], PyBytes_AS_STRING(buf),
                                       PyBytes_GET_SIZE(buf), MSG_DONTWAIT | MSG_NOSIGNAL)
                    io_uring_sqe_set_data64(sqe, prepared)
                    prepared += 1
                # Submits what is prepared and waits for one completion: the sends run
                # inline, so all of them have usually completed when this returns.
                ret = io_uring_submit_and_wait(&self.ring, 1)
                self.submissions += 1
                if ret >= 0:
                    self.sends += ret
                elif ret != -EINTR and ret != -EAGAIN and ret != -EBUSY:   # those: reap, retry
                    self.close()
                    short.extend([(i, None) for i in range(n) if not completed[i]])
                    return short
                got = io_uring_peek_batch_cqe(&self.ring, cqes, REAP)
                while got:
                    for k in range(got):
                        i = <Py_ssize_t>cqes[k].user_data
                        completed[i] = 1
                        if cqes[k].res != PyBytes_GET_SIZE(<object>PyList_GET_ITEM(buffers, i)):
                            short.append((i, cqes[k].res))
                    io_uring_cq_advance(&self.ring, got)
                    done += got
                    got = io_uring_peek_batch_cqe(&self.ring, cqes, REAP)
        finally:
            PyMem_Free(completed)
        return short
