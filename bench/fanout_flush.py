#!/usr/bin/env python3
"""The fanout's flush alone, io_uring against send(): CPU time per delivery.

    python bench/fanout_flush.py [--subscribers 1000,10000] [--flushes 200] [--events 2]

bench/fanout.py measures the whole node (HTTP publish API, WebSocket framing, the
publisher and subscribers on a shared core), whose figures swing with whatever else
runs on the machine.  This measures only what the io_uring path changes: the CPU time
(process_time: user + system, the kernel's TCP work included) of ``Fanout.flush`` over
N loopback sockets, each flush carrying --events events of 100 bytes to every
subscriber, with a Fanout that has a SendRing and one that has not (alternating, so
that both see the same machine), and the send syscalls per flush.

A child process (pinned to --reader-cpu where taskset exists) holds the N client
sockets and reads them with epoll, so that every send wakes a reader as in a real
fanout; the flushing process is pinned to --flush-cpu.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[0] = ROOT   # not bench/: its http.py would shadow the standard library's

from fast.fanout import Fanout, Subscriber  # noqa: E402
from fast.uring import SendRing  # noqa: E402

READER = r"""
import selectors, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
sel = selectors.EpollSelector()
for s in socks:
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if not key.fileobj.recv(1 << 16):
            sys.exit(0)
"""


class Sink(Subscriber):
    """A subscriber whose transport is its socket (what it did not take is an error here:
    the reader keeps up, and a flush never leaves bytes behind)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.transport = self
        self.left = 0

    def write(self, data: bytes) -> None:
        self.left += len(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if cpu != "none" and shutil.which("taskset") else argv


def measure(n: int, flushes: int, events: int, reader_cpu: str) -> dict:
    listener = socket.create_server(("127.0.0.1", 0), backlog=n)
    reader = subprocess.Popen(pinned(reader_cpu, [sys.executable, "-c", READER,
                                                  str(listener.getsockname()[1]), str(n)]),
                              stdout=subprocess.PIPE)
    subs = []
    for _ in range(n):
        sock, _ = listener.accept()
        sock.setblocking(False)
        subs.append(Sink(sock))
    assert reader.stdout.readline() == b"ready\n"
    frame = b"\x81\x64" + b"x" * 100
    out = {}
    try:
        ring = SendRing()
        fanouts = {"io_uring": Fanout(lambda cb: None, lambda s: None, ring=ring),
                   "send()": Fanout(lambda cb: None, lambda s: None)}
        for fo in fanouts.values():
            for s in subs:
                fo.subscribe("c", s)
        cpu = dict.fromkeys(fanouts, 0.0)
        for _ in range(flushes):
            for name, fo in fanouts.items():
                for _e in range(events):
                    fo.publish("c", frame, frame)
                t = time.process_time()
                fo.flush()
                cpu[name] += time.process_time() - t
                time.sleep(0.002)   # the reader drains (its CPU is not counted)
        for name in fanouts:
            out[name] = {"us_per_delivery": 1e6 * cpu[name] / (flushes * n * events),
                         "us_per_flush": 1e6 * cpu[name] / flushes}
        out["io_uring"]["syscalls_per_flush"] = ring.submissions / flushes
        out["send()"]["syscalls_per_flush"] = float(n)
        out["left_behind"] = sum(s.left for s in subs)
    finally:
        for s in subs:
            s.sock.close()
        reader.wait(30)
        listener.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", default="1000,10000")
    ap.add_argument("--flushes", type=int, default=200)
    ap.add_argument("--events", type=int, default=2, help="events per flush (default 2)")
    ap.add_argument("--flush-cpu", default="0")
    ap.add_argument("--reader-cpu", default="1")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 40000), hard))
    if args.flush_cpu != "none" and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(args.flush_cpu)})
    print(f"flush CPU time, {args.flushes} flushes of {args.events} x 100-byte events; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    print("| subscribers | path | CPU us / delivery | CPU ms / flush | send syscalls / flush |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for n in (int(x) for x in args.subscribers.split(",")):
        r = measure(n, args.flushes, args.events, args.reader_cpu)
        for name in ("io_uring", "send()"):
            print(f"| {n:,} | {name} | {r[name]['us_per_delivery']:.3f} | {r[name]['us_per_flush'] / 1000:.2f} "
                  f"| {r[name]['syscalls_per_flush']:.0f} |")
        print(f"| {n:,} | send() / io_uring CPU | {r['send()']['us_per_delivery'] / r['io_uring']['us_per_delivery']:.2f}x "
              f"| | (bytes left to the transport: {r['left_behind']}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
