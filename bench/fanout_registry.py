"""Deliveries/s of fast.fanout (publish + flush, no sockets) against the same loop in
plain Python (a dict of subscribers per channel, a pending list per subscriber).

Both hand every subscriber's bytes to a transport whose ``write`` does nothing, so this
measures the registry and queueing cost per delivery, not the kernel. Workloads on one
channel of N subscribers: ``single`` (one event per flush, the common live case) and
``burst`` (10 events per flush, coalesced into one write per subscriber).

    .venv/bin/python bench/fanout_registry.py [--subscribers 1000] [--seconds 5]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from microbench import best_rates  # noqa: E402  (bench/ is the script's own folder)

from fast.fanout import Fanout, Subscriber  # noqa: E402


class NullTransport:
    __slots__ = ()

    def write(self, data):
        pass

    def get_write_buffer_size(self):
        return 0


class Sub(Subscriber):
    __slots__ = ()


class PySub:
    __slots__ = ("transport", "sse", "paused", "pending", "queued")

    def __init__(self):
        self.transport = NullTransport()
        self.sse = self.paused = self.queued = False
        self.pending = None


class PyFanout:
    """The reference: what the service would do without fast/fanout.pyx."""

    def __init__(self, max_buffer=1 << 20):
        self.channels = {}
        self.dirty = []
        self.max_buffer = max_buffer

    def subscribe(self, key, sub):
        self.channels.setdefault(key, {})[sub] = None

    def publish(self, key, ws, sse):
        subs = self.channels.get(key)
        if not subs:
            return 0
        dirty = self.dirty
        for sub in subs:
            piece = sse if sub.sse else ws
            if sub.pending is None:
                sub.pending = [piece]
            else:
                sub.pending.append(piece)
            if not sub.queued:
                sub.queued = True
                dirty.append(sub)
        return len(subs)

    def flush(self):
        dirty, self.dirty = self.dirty, []
        for sub in dirty:
            sub.queued = False
            pending, sub.pending = sub.pending, None
            t = sub.transport
            t.write(pending[0] if len(pending) == 1 else b"".join(pending))
            if sub.paused and t.get_write_buffer_size() > self.max_buffer:
                pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    n = args.subscribers
    frame = b"\x81\x64" + b"x" * 100

    fast = Fanout(lambda fn: None, lambda s: None)
    for _ in range(n):
        s = Sub()
        s.transport = NullTransport()
        fast.subscribe("c", s)
    ref = PyFanout()
    for _ in range(n):
        ref.subscribe("c", PySub())

    def run(fo, events):
        def batch():
            for _ in range(events):
                fo.publish("c", frame, frame)
            fo.flush()
        return batch

    rates = best_rates({
        "fast single": (run(fast, 1), n), "python single": (run(ref, 1), n),
        "fast burst": (run(fast, 10), 10 * n), "python burst": (run(ref, 10), 10 * n),
    }, args.seconds)
    print(f"{'workload':10} {'fast.fanout':>14} {'python':>14} {'ratio':>7}   (deliveries/s, {n} subscribers)")
    for w in ("single", "burst"):
        f, p = rates[f"fast {w}"], rates[f"python {w}"]
        print(f"{w:10} {f:14,.0f} {p:14,.0f} {f / p:6.2f}x")


if __name__ == "__main__":
    main()
