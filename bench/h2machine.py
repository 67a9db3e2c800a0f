#!/usr/bin/env python3
"""CPU per HTTP/2 request through the sans-IO ``H2Machine`` alone (no socket, no TLS).

    python bench/h2machine.py [--requests 20000] [--streams 10] [--profile]

A client (the ``h2`` library) writes GET requests like h2load's (the same header
list, HPACK state carried across them, ``--streams`` per read); the bytes are made
once, then fed to a fresh machine, which answers each with a head and a 1 KiB body
(what the adapter does for a fixed answer).  Prints microseconds per request (best of
--rounds); --profile prints cProfile's top functions instead.  On a loaded machine
compare the figures of one run, or the profile shares.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

# (bench/h2.py would shadow the h2 library: the script's own folder leaves the path)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.dirname(HERE))

from h2.config import H2Configuration  # noqa: E402
from h2.connection import H2Connection  # noqa: E402

from farts.transport.h2conn import PREFACE, H2Limits, H2Machine, RequestHead  # noqa: E402

BODY = b"x" * 1024
FIELDS = [(b"content-type", b"text/plain"), (b"content-length", b"1024")]


def client_reads(requests: int, streams: int) -> list[bytes]:
    """The client's bytes, one element per read the server gets."""
    c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    c.update_settings({4: 1 << 30})                       # INITIAL_WINDOW_SIZE, as h2load
    c.increment_flow_control_window((1 << 31) - 1 - 65535)
    reads = [c.data_to_send()]
    sid = 1
    for _ in range(0, requests, streams):
        for _ in range(streams):
            c.send_headers(sid, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"),
                                 (b":authority", b"127.0.0.1:8443"),
                                 (b"user-agent", b"h2load nghttp2/1.52.0")], end_stream=True)
            sid += 2
        reads.append(c.data_to_send())
    assert reads[0].startswith(PREFACE)
    return reads


def serve(reads: list[bytes]) -> int:
    m = H2Machine(H2Limits(), 0.0)
    n = 0
    for data in reads:
        for ev in m.receive(data, 0.0):
            if type(ev) is RequestHead:
                m.send_head(ev.stream_id, 200, FIELDS, False)
                m.send_data(ev.stream_id, BODY, True)
                n += 1
        m.data_to_send()
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--streams", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    a = p.parse_args()
    reads = client_reads(a.requests, a.streams)
    if a.profile:
        prof = cProfile.Profile()
        prof.runcall(serve, reads)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
        return
    best = min(_timed(reads) for _ in range(a.rounds))
    print(f"H2Machine: {best / a.requests * 1e6:.2f} us per request (best of {a.rounds}, "
          f"{a.requests} requests, {a.streams} per read)")


def _timed(reads: list[bytes]) -> float:
    t = time.process_time()
    serve(reads)
    return time.process_time() - t


if __name__ == "__main__":
    main()
