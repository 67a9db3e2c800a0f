#!/usr/bin/env python3
"""Webhook deliveries per second to a local receiver, at 1 KiB payloads, on one core.

    PYTHONPATH=. python bench/webhooks.py [--deliveries 20000] [--per-destination 32] [--sync] [--smoke] [--json FILE]

The delivering side is the real service (farts.webhooks.service.Webhooks on an LMDB
Store, the node's pooled client, signatures, the scheduler, outcomes written back in
batches) in this process, pinned to one CPU; the receiver is an aiohttp server in another
process pinned to the other CPU (when there are two), checking every signature. The
deliveries are enqueued first (not timed), then this node is made master and the clock
runs until the receiver has them all. Printed: deliveries/s, the p50/p99 of one attempt
(request written to the answer read), the CPU seconds this process used per 1,000
deliveries. Target (issue 14): >= 2,000 deliveries/s.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import sys

# bench/http.py would shadow the standard library's http package (aiohttp, urllib need it).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

SECRET = b"bench-secret"


def receiver(port_file: str) -> None:
    """The receiver process: verifies each signature, answers 204, counts."""
    from aiohttp import web

    count = {"ok": 0, "bad": 0}

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        ts = request.headers["Webhook-Timestamp"]
        want = "v1=" + hmac.new(SECRET, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, request.headers["Webhook-Signature"]):
            count["bad"] += 1
            return web.Response(status=400)
        count["ok"] += 1
        return web.Response(status=204)

    async def counts(request: web.Request) -> web.Response:
        return web.json_response(count)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hook", handle)
        app.router.add_get("/count", counts)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        Path(port_file).write_text(str(runner.addresses[0][1]))
        await asyncio.Event().wait()

    asyncio.run(main())


async def deliver(args, port: int) -> dict:
    from farts.clock import LoopClock
    from farts.config import Tenant
    from farts.db.store import Store
    from farts.metrics import Metrics
    from farts.transport.client import Client
    from farts.webhooks import queue
    from farts.webhooks.config import WebhooksConfig
    from farts.webhooks.service import Webhooks

    tmp = tempfile.mkdtemp(prefix="farts-bench-webhooks-")
    store = Store(Path(tmp) / "db", "bench", sync=args.sync)
    clock = LoopClock()
    client = Client(clock, pool_size=256)
    metrics = Metrics()
    cfg = WebhooksConfig(enabled=True, allow_loopback=True, per_destination=args.per_destination)
    hooks = Webhooks(cfg, [Tenant("bench", ["localhost"], ["k"], SECRET.decode())], lambda: store, metrics,
                     clock, client)
    await hooks.start()
    latencies: list[float] = []
    send = hooks._send

    async def timed(doc, body, d):
        t = time.perf_counter()
        result = await send(doc, body, d)
        latencies.append(time.perf_counter() - t)
        return result
    hooks._send = timed
    payload = {"text": "x" * 950}      # a 1 KiB envelope
    url = f"http://127.0.0.1:{port}/hook"
    for start in range(0, args.deliveries, 1000):
        n = min(1000, args.deliveries - start)
        await hooks.enqueue("bench", [{"url": url, "event": "comment.created", "payload": payload}] * n)
    first = queue.listing(store, limit=1)["pending"]["deliveries"][0]["_id"]
    with store.read() as txn:
        size = len(store.get(txn, queue.QUEUE_NS, first)["body"])
    delivered = metrics.get("farts_webhooks_delivered_total")
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    hooks.set_master(1)
    while delivered.get() < args.deliveries:
        await asyncio.sleep(0.01)
        if time.perf_counter() - t0 > args.timeout:
            break
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    done = delivered.get()
    await asyncio.sleep(0.2)        # the last outcomes written
    await hooks.stop()
    client.close()
    store.close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {"deliveries": int(done), "seconds": round(elapsed, 3), "per_second": round(done / elapsed),
            "body_bytes": size, "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2),
            "cpu_s_per_1000": round(cpu / max(done, 1) * 1000, 3), "sync": args.sync,
            "per_destination": args.per_destination}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deliveries", type=int, default=20000)
    p.add_argument("--per-destination", type=int, default=32,
                   help="webhooks.per_destination: attempts at once to the one receiver (the config's default)")
    p.add_argument("--sync", action="store_true", help="fsync each store commit (db.sync = true)")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--smoke", action="store_true", help="a short run (2,000 deliveries)")
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--receiver", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.receiver:
        receiver(args.receiver)
        return 0
    if args.smoke:
        args.deliveries = 2000
    cpus = sorted(os.sched_getaffinity(0))
    port_file = tempfile.mktemp(prefix="farts-bench-port-")
    rx = subprocess.Popen([sys.executable, __file__, "--receiver", port_file])
    try:
        if len(cpus) > 1:
            os.sched_setaffinity(rx.pid, {cpus[1]})
        os.sched_setaffinity(0, {cpus[0]})    # the delivering side: one core
        for _ in range(500):
            if os.path.exists(port_file) and Path(port_file).read_text():
                break
            time.sleep(0.02)
        port = int(Path(port_file).read_text())
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
        result = asyncio.run(deliver(args, port))
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=10) as r:
            result["receiver"] = json.load(r)
    finally:
        rx.terminate()
        rx.wait(10)
        if os.path.exists(port_file):
            os.unlink(port_file)
    print(f"webhooks: {result['per_second']} deliveries/s ({result['deliveries']} in {result['seconds']} s, "
          f"{result['body_bytes']}-byte bodies, one core), attempt p50 {result['p50_ms']} ms, "
          f"p99 {result['p99_ms']} ms, {result['cpu_s_per_1000']} CPU s per 1,000; receiver {result['receiver']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if result["deliveries"] == args.deliveries and not result["receiver"]["bad"] else 1


if __name__ == "__main__":
    sys.exit(main())
