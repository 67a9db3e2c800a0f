#!/usr/bin/env python3
"""CPU per HTTP/2 request through an in-process h2c listener (the adapter, the machine,
asyncio; no TLS), driven by h2load, and where it goes (cProfile shares by library).

    python bench/h2listener.py [--requests 50000] [--clients 16] [--streams 10] [--profile]

The listener (uvloop, as `farts-edge up` runs) answers every request with a Fixed 1 KiB
answer, from a handler or (--fixed-route) as the route itself, as a `static` route is; `h2load -c --clients -m --streams -n --requests` (prior knowledge) runs in a
subprocess.  Prints the server's CPU time per request (process CPU minus h2load's, which
is a child: it is not counted); --profile adds cProfile's shares by area (h2 library,
fast.*, farts, asyncio) and the top functions.  On a loaded machine compare figures of
one run, or profile shares.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]  # (bench/h2.py is not h2)
sys.path.insert(0, os.path.dirname(HERE))

import uvloop  # noqa: E402

from farts.config import Limits, Route  # noqa: E402
from farts.metrics import Metrics  # noqa: E402
from farts.transport.http import Fixed  # noqa: E402
from farts.transport.listener import HTTPStats, Listener  # noqa: E402
from farts.transport.router import Router  # noqa: E402

ANSWER = Fixed(200, b"x" * 1024, content_type=b"text/plain")


class Handler:
    def handle(self, req):
        return ANSWER


async def serve(a) -> float:
    handler = ANSWER if a.fixed_route else Handler()
    router = Router(None, [(Route(prefix="/", kind="admin"), handler)], 0)
    listener = Listener("bench", "http", router, Limits(), HTTPStats(Metrics(), {}), h2c=True)
    await listener.start("127.0.0.1", 0)
    host, port = listener.address[:2]
    try:
        cpu = time.process_time()
        proc = await asyncio.create_subprocess_exec(
            a.h2load, "-c", str(a.clients), "-m", str(a.streams), "-n", str(a.requests), "-t1",
            f"http://{host}:{port}/", stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 300)
        cpu = time.process_time() - cpu
        done = [line for line in out.decode().splitlines() if line.startswith("requests:")]
        print(done[0] if done else out.decode()[-400:])
        return cpu
    finally:
        await listener.close()


AREAS = (("h2 library (h2, hyperframe)", ("/h2/", "/hyperframe/")),
         ("fast.*", ("fast.",)), ("farts transport", ("farts/transport",)),
         ("asyncio/uvloop", ("asyncio", "uvloop")))


def shares(stats: pstats.Stats) -> None:
    total = sum(v[2] for v in stats.stats.values())
    by = dict.fromkeys([name for name, _ in AREAS] + ["other"], 0.0)
    for (path, _, func), v in stats.stats.items():
        where = f"{path}:{func}"
        area = next((name for name, keys in AREAS if any(k in where for k in keys)), "other")
        by[area] += v[2]
    for name, t in by.items():
        print(f"  {name:30} {100 * t / total:5.1f} % of own time")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=50000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--streams", type=int, default=10)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--fixed-route", action="store_true",
                   help="the route's handler is the Fixed answer itself (a static route), not a handler returning it")
    p.add_argument("--h2load", default=shutil.which("h2load") or "h2load")
    a = p.parse_args()
    prof = cProfile.Profile() if a.profile else None
    if prof:
        prof.enable()
    cpu = uvloop.run(serve(a))
    if prof:
        prof.disable()
    print(f"server CPU {cpu / a.requests * 1e6:.1f} us per request"
          + (" (under cProfile: compare shares, not this)" if prof else ""))
    if prof:
        stats = pstats.Stats(prof)
        shares(stats)
        stats.sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
