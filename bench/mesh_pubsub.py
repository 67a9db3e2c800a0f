"""Cross-node pub/sub latency: publish on node 1, WebSocket subscribers on nodes 1-3.

Three `farts-edge serve` processes joined by the mesh (default timing). The publisher
POSTs to node 1's /api/publish at --rate events/s (batches of --batch), each event's
data carrying its send time; subscribers (the websockets library, in this process)
on node 1 (local fanout, the baseline) and on nodes 2 and 3 (across the mesh) record
publish-to-delivery latency. Same clock (this process) at both ends.

    .venv/bin/python bench/mesh_pubsub.py --rate 1000 --seconds 10
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the repository, not bench/ (bench/http.py shadows the standard library)
sys.path.append(str(ROOT / "bench"))  # after the standard library: for bench/mesh.py

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402
import websockets  # noqa: E402
from mesh import Node, pct, wait  # noqa: E402

from bench.nodeconf import node_toml  # noqa: E402
from farts import pki  # noqa: E402

PUBSUB = node_toml({"tenants": [{"id": "demo", "hosts": ["127.0.0.1"], "api_keys": ["demo-key"]}],
          "routes": [{"prefix": "/live", "kind": "pubsub"}, {"prefix": "/api/publish", "kind": "pubsub"}]})



async def run(nodes: list, rate: int, seconds: float, batch: int) -> dict:
    lat: dict[str, list[float]] = {n.id: [] for n in nodes}
    subs = []
    for n in nodes:
        ws = await websockets.connect(f"ws://{n.http_hostport}/live", max_size=None)
        await ws.send(json.dumps({"op": "subscribe", "channel": "bench"}))
        json.loads(await ws.recv())
        subs.append((n.id, ws))

    async def reader(node_id, ws):
        try:
            async for raw in ws:
                t = time.perf_counter()
                msg = json.loads(raw)
                if isinstance(msg.get("data"), dict) and "t" in msg["data"]:
                    lat[node_id].append(t - msg["data"]["t"])
        except websockets.ConnectionClosed:
            pass

    readers = [asyncio.ensure_future(reader(i, ws)) for i, ws in subs]
    sent = 0
    async with httpx.AsyncClient(base_url=f"http://{nodes[0].http_hostport}",
                                 headers={"authorization": "Bearer demo-key"}) as client:
        start = time.perf_counter()
        interval = batch / rate
        k = 0
        while time.perf_counter() - start < seconds:
            due = start + k * interval
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            now = time.perf_counter()
            r = await client.post("/api/publish", json={"messages": [
                {"channel": "bench", "data": {"t": now, "i": sent + j}} for j in range(batch)]})
            r.raise_for_status()
            sent += batch
            k += 1
        elapsed = time.perf_counter() - start
    await asyncio.sleep(2)
    for _, ws in subs:
        await ws.close()
    for r in readers:
        r.cancel()
    return {"sent": sent, "rate": sent / elapsed, "latency": lat}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--batch", type=int, default=10, help="events per POST")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mesh-pubsub-bench-"))
    pki.make_ca(root / "ca")
    nodes = []
    try:
        for i in (1, 2, 3):
            seeds = [nodes[0].mesh()] if nodes else []
            nodes.append(Node(root, f"node-{i}", seeds, extra=PUBSUB))
        assert wait(lambda: all(len([s for s in n.states().values() if s == "alive"]) == 3 for n in nodes), 30)
        time.sleep(2)
        out = asyncio.run(run(nodes, args.rate, args.seconds, args.batch))
        print(f"published {out['sent']} events at {out['rate']:.0f}/s on node-1 ({args.batch} per POST)")
        base = None
        for n in nodes:
            v = out["latency"][n.id]
            where = "local fanout" if n.id == "node-1" else "across the mesh"
            p50, p99 = pct(v, 50) * 1000, pct(v, 99) * 1000
            base = base or p50
            print(f"  {n.id} ({where}): {len(v)} received, p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
                  f"max {max(v) * 1000:.2f} ms, p50 ratio to local {p50 / base:.2f}")
    finally:
        for n in nodes:
            n.proc.send_signal(signal.SIGKILL)
            n.proc.wait()


if __name__ == "__main__":
    main()
