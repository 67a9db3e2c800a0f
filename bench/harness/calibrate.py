"""This machine's speed on one CPU-bound micro-workload, on one core and on all of them.

The workload (`unit`) is the interpreter-bound kind of work a node's Python does per
request: split an HTTP/1.1 request head into lines and headers, route on the path,
format a small JSON answer and its head, checksum it. No I/O, no allocation beyond
small bytes and a dict, a few KiB of working set: like the single-thread tests of the
published CPU benchmarks (integer, branchy, cache-resident), it measures a core's speed
at running code, not memory bandwidth.

How it maps to the published scores in bench/profiles: we ASSUME that the ratio of
this workload's rate between two machines equals the ratio of their published
single-thread scores (and likewise that its all-core/one-core ratio equals the
published multi/single ratio). Run `python -m bench calibrate --save PROFILE` on a
machine of a profile's class to replace that assumption by a measurement: `project`
then uses the measured ratio.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import platform
import time
import zlib

REQUEST = (b"GET /api/items/42?view=full HTTP/1.1\r\nHost: edge.example.net\r\n"
           b"User-Agent: calibrate/1\r\nAccept: application/json\r\nCookie: a=b; session=c0ffee\r\n"
           b"X-Forwarded-For: 192.0.2.7\r\n\r\n")
WORKLOAD = "HTTP/1.1 head parse + route + JSON answer format + crc32, pure Python (bench/harness/calibrate.py)"


def unit() -> int:
    head, _, _ = REQUEST.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, target, _version = lines[0].split(b" ")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    path, _, query = target.partition(b"?")
    parts = [p for p in path.split(b"/") if p]
    body = b'{"id": %s, "host": "%s", "query": "%s", "method": "%s"}' % (
        parts[-1], headers[b"host"], query, method)
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)
    return zlib.crc32(answer)


def rate(seconds: float) -> float:
    """Units per second on this process's core, over about `seconds`."""
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(1000):
            unit()
        count += 1000
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def _child(seconds: float, start_at: float, out) -> None:
    while time.time() < start_at:
        time.sleep(0.001)
    out.put(rate(seconds))


def measure(seconds: float = 3.0) -> dict:
    """Best of three one-process rounds, then one round with a process per usable CPU."""
    single = max(rate(seconds / 3) for _ in range(3))
    n = len(os.sched_getaffinity(0))
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    start_at = time.time() + 0.2
    procs = [ctx.Process(target=_child, args=(seconds, start_at, q)) for _ in range(n)]
    for p in procs:
        p.start()
    rates = [q.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    multi = sum(rates)
    return {"workload": WORKLOAD, "python": platform.python_version(), "seconds": seconds,
            "single_per_s": round(single), "multi_per_s": round(multi), "processes": n,
            "parallel_speedup": round(multi / single, 2), "loadavg": [round(x, 2) for x in os.getloadavg()],
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
