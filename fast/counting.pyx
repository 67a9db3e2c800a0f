# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, binding=False
"""The counting of the hot paths in C: one counter series (``Count``) and one histogram
series (``Series``), each a bound object whose ``inc()`` / ``observe(v)`` is one C call,
with no label tuple, no dict lookup and no Python number allocated per event.

farts/metrics.py keeps them by label tuple and turns them into Prometheus families when
/metrics is read; the hot paths (an HTTP listener's answered requests, the proxy's
upstream latency) hold the series they count into (``series_for``).

Counts are unsigned 64-bit integers (read back as Python ints, as the plain-Python
metrics kept them); a histogram's sum is a C double, which adds exactly as a Python float
does. Sans-IO, no clock.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint64_t


cdef class Count:
    """One counter series: a whole count (a C uint64) plus what was added as fractions (a
    double: a counter fed floats, as another process's exposition reads back). Its value
    is an int while only ints were added, as the plain-Python counter's was.
    ``counted``: whether anything was added, even 0 (the series is exported from then on)."""

    cdef uint64_t n
    cdef double part
    cdef readonly bint counted

    def inc(self) -> None:
        self.n += 1
        self.counted = True

    def add(self, amount) -> None:
        """ValueError for an amount below 0 (a counter only goes up), or not an int or a float."""
        if isinstance(amount, int):
            if amount < 0:
                raise ValueError(f"counter amount {amount!r}: a counter only goes up")
            self.n += <uint64_t>amount
        elif isinstance(amount, float):
            if not amount >= 0:
                raise ValueError(f"counter amount {amount!r}: a counter only goes up")
            self.part += amount
        else:
            raise ValueError(f"counter amount {amount!r}: not an int or a float")
        self.counted = True

    @property
    def value(self) -> int | float:
        return self.n if self.part == 0 else self.n + self.part


cdef class Series:
    """One histogram series: a count per bucket (``bounds``, then +Inf) and the sum.

    A value goes in the first bucket whose bound is >= it (Prometheus' ``le``; as
    ``bisect_left`` on the bounds). The bounds are searched in order from the smallest:
    they are a dozen or two, and most values (latencies) fall in the first few.

    As a sequence it reads as [count per bucket..., +Inf count, sum], the layout the
    metrics kept as a list (the status page and tests read it so)."""

    cdef double *bounds
    cdef uint64_t *counts   # len(bounds) + 1: +Inf last
    cdef Py_ssize_t n       # len(bounds)
    cdef double total

    def __cinit__(self, bounds):
        cdef Py_ssize_t i
        self.n = len(bounds)
        self.bounds = <double *>PyMem_Malloc(self.n * sizeof(double))
        self.counts = <uint64_t *>PyMem_Malloc((self.n + 1) * sizeof(uint64_t))
        if self.bounds == NULL or self.counts == NULL:
            raise MemoryError()
        for i in range(self.n):
            self.bounds[i] = bounds[i]
            if i and not self.bounds[i] > self.bounds[i - 1]:
                raise ValueError("histogram bounds must increase")
        for i in range(self.n + 1):
            self.counts[i] = 0
        self.total = 0.0

    def __dealloc__(self):
        PyMem_Free(self.bounds)
        PyMem_Free(self.counts)

    def observe(self, double value) -> None:
        cdef Py_ssize_t i = 0
        while i < self.n and self.bounds[i] < value:
            i += 1
        self.counts[i] += 1
        self.total += value

    def add(self, counts, double total) -> None:
        """Adds ``counts`` (one per bucket, +Inf last) and ``total`` to the sum: another
        process's series, read back from its exposition."""
        cdef Py_ssize_t i
        cdef double c
        if len(counts) != self.n + 1:
            raise ValueError(f"{len(counts)} bucket counts for {self.n + 1} buckets")
        for i in range(self.n + 1):
            if not counts[i] >= 0:
                raise ValueError(f"bucket count {counts[i]!r}: a count is a number >= 0")
        for i in range(self.n + 1):
            c = counts[i]   # (an int or a float: the exposition's numbers are floats)
            self.counts[i] += <uint64_t>c
        self.total += total

    @property
    def count(self) -> int:
        """Values observed (all buckets)."""
        cdef uint64_t c = 0
        cdef Py_ssize_t i
        for i in range(self.n + 1):
            c += self.counts[i]
        return c

    @property
    def sum(self) -> float:
        return self.total

    def bucket_counts(self) -> list:
        """The count of each bucket (not cumulative), +Inf last."""
        return [self.counts[i] for i in range(self.n + 1)]

    def __len__(self) -> int:
        return self.n + 2

    def __getitem__(self, i):
        cdef Py_ssize_t at
        if isinstance(i, slice):
            return [*self.bucket_counts(), self.total][i]
        at = i
        if at < 0:
            at += self.n + 2
        if not 0 <= at < self.n + 2:
            raise IndexError("Series index out of range")
        return self.counts[at] if at <= self.n else self.total
