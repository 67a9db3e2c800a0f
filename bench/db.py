"""The MongoDB endpoint under pymongo, against its ceiling (ping) and an embedded store.

Workloads (a collection of --docs documents, 20 per value of an indexed field "g"):
  ping          admin ping: the round trip of the protocol alone (the ceiling)
  find_one      find_one({"_id": random})
  find20        list(find({"g": random}))          20 documents through the index
  insert_one    insert_one({...})                  sync commits (group commit shares fsyncs)
  update_inc    update_one({"_id": random}, {"$inc": {"n": 1}})
with 1 and 16 concurrent clients (one process each: pymongo threads would share one GIL),
operations/s and p50/p99 latency. The "embedded" rows run the same operations on LMDB
from Python (py-lmdb + bson, same key layout, one sync commit per write, threads for
concurrency) without the wire protocol: what the protocol and the server cost.

    .venv/bin/python bench/db.py [--seconds 3] [--docs 20000] [--clients 1,16] [--pin] [--json FILE]

--pin puts the server on cpu 0 and the clients on cpu 1 (2-core machines). --json writes
every cell (best round) with its latency percentiles and, for the server, its CPU share
over the clients' run (utime + stime from /proc, connection set-up and warm-up included).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import select
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/http.py would shadow the standard library's http package (prometheus-client needs it).
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import bson  # noqa: E402
import lmdb  # noqa: E402
import pymongo  # noqa: E402

WORKLOADS = ("ping", "find_one", "find20", "insert_one", "update_inc")
CONFIG = """
[node]
id = "bench"
workers = 1   # (the default "auto" would add worker processes the figures do not count on)
data_dir = "{data}"
[listeners.http]
enabled = false
[listeners.https]
enabled = false
[listeners.admin]
enabled = false
[db]
enabled = true
port = 0
"""


def start_server(data: Path, pin: bool) -> tuple[subprocess.Popen, int]:
    data.mkdir(parents=True, exist_ok=True)
    (data / "farts.toml").write_text(CONFIG.format(data=data))
    cmd = [sys.executable, "-m", "farts.cli", "--log-level", "WARNING", "serve", "--config", str(data / "farts.toml")]
    if pin and shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT)
    buf, deadline = b"", time.monotonic() + 30
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            buf += os.read(proc.stdout.fileno(), 65536)
            m = re.search(rb"mongodb://[\d.]+:(\d+)/", buf)
            if m and b"Ctrl-C" in buf:
                return proc, int(m.group(1))
    proc.kill()
    raise RuntimeError(f"server did not start: {buf!r}")


def load(port: int, docs: int) -> None:
    with pymongo.MongoClient("127.0.0.1", port) as c:
        col = c.bench.items
        col.drop()
        for start in range(0, docs, 1000):
            col.insert_many([{"_id": i, "g": i // 20, "n": 0, "name": f"item-{i}", "body": "x" * 200}
                             for i in range(start, min(docs, start + 1000))])
        col.create_index("g")


def client_proc(port, workload, seconds, docs, seed, start_at, out, pin, rate=0.0):
    """``rate``: this client's operations a second, paced (0: back to back)."""
    if pin:
        os.sched_setaffinity(0, {1})
    rng = random.Random(seed)
    c = pymongo.MongoClient("127.0.0.1", port, maxPoolSize=1)
    col = c.bench.items
    groups = docs // 20
    ops = {
        "ping": lambda: c.admin.command("ping"),
        "find_one": lambda: col.find_one({"_id": rng.randrange(docs)}),
        "find20": lambda: list(col.find({"g": rng.randrange(groups)})),
        "insert_one": lambda: col.insert_one({"name": "new", "n": 0, "body": "x" * 200}),
        "update_inc": lambda: col.update_one({"_id": rng.randrange(docs)}, {"$inc": {"n": 1}}),
    }
    op = ops[workload]
    for _ in range(50):
        op()
    while time.time() < start_at:
        time.sleep(0.001)
    lat = []
    end = start_at + seconds
    now = time.perf_counter
    while time.time() < end:
        if rate:
            time.sleep(max(0.0, start_at + len(lat) / rate - time.time()))
        t = now()
        op()
        lat.append(now() - t)
    out.put(lat)
    c.close()


def run_clients(port, workload, clients, seconds, docs, pin, rate: float = 0.0) -> list[float]:
    """``rate``: operations a second of all the clients together, paced (0: as fast as they go)."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    start_at = time.time() + 1.0 + 0.05 * clients
    procs = [ctx.Process(target=client_proc, args=(port, workload, seconds, docs, i, start_at, q, pin, rate / clients))
             for i in range(clients)]
    for p in procs:
        p.start()
    lats = [q.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    return [x for lat in lats for x in lat]


# ---- the same operations on LMDB alone ----

class Embedded:
    def __init__(self, path: Path, docs: int) -> None:
        self.env = lmdb.open(str(path), map_size=1 << 32, max_dbs=8, sync=True, metasync=True)
        self.docs_db = self.env.open_db(b"docs")
        self.index_db = self.env.open_db(b"g")
        self.docs = docs
        self.next_id = docs
        with self.env.begin(write=True) as txn:
            for i in range(docs):
                txn.put(b"c\0" + i.to_bytes(8, "big"), bson.encode(
                    {"_id": i, "g": i // 20, "n": 0, "name": f"item-{i}", "body": "x" * 200}), db=self.docs_db)
                txn.put((i // 20).to_bytes(8, "big") + i.to_bytes(8, "big"), b"", db=self.index_db)
        self.lock = threading.Lock()

    def find_one(self, rng):
        with self.env.begin(db=self.docs_db) as txn:
            return bson.decode(txn.get(b"c\0" + rng.randrange(self.docs).to_bytes(8, "big")))

    def find20(self, rng):
        g = rng.randrange(self.docs // 20).to_bytes(8, "big")
        with self.env.begin() as txn:
            cur = txn.cursor(self.index_db)
            out = []
            if cur.set_range(g):
                for k, _ in cur:
                    if not k.startswith(g):
                        break
                    out.append(bson.decode(txn.get(b"c\0" + k[8:], db=self.docs_db)))
            return out

    def insert_one(self, rng):
        with self.lock:
            i = self.next_id
            self.next_id += 1
        with self.env.begin(write=True) as txn:
            txn.put(b"c\0" + i.to_bytes(8, "big"), bson.encode({"_id": i, "name": "new", "n": 0, "body": "x" * 200}),
                    db=self.docs_db)

    def update_inc(self, rng):
        key = b"c\0" + rng.randrange(self.docs).to_bytes(8, "big")
        with self.env.begin(write=True, db=self.docs_db) as txn:
            doc = bson.decode(txn.get(key))
            doc["n"] += 1
            txn.put(key, bson.encode(doc))


def run_embedded(emb: Embedded, workload, clients, seconds) -> list[float]:
    fn = getattr(emb, workload)
    lats: list[list[float]] = [[] for _ in range(clients)]
    start_at = time.time() + 0.2

    def worker(i):
        rng = random.Random(i)
        while time.time() < start_at:
            time.sleep(0.001)
        end = start_at + seconds
        now = time.perf_counter
        lat = lats[i]
        while time.time() < end:
            t = now()
            fn(rng)
            lat.append(now() - t)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for lat in lats for x in lat]


def op_msg(body: dict) -> bytes:
    """An OP_MSG request carrying body."""
    payload = b"\0\0\0\0\0" + bson.encode(body)
    return struct.pack("<iiii", 16 + len(payload), 1, 0, 2013) + payload


def server_cpu(docs: int) -> dict[str, float]:
    """µs of server work per request, without sockets: OP_MSG bytes fed to the connection
    protocol with a transport that drops the reply (codec, dispatch, store, reply encoding)."""
    import asyncio
    import uuid

    from bson.binary import Binary

    from farts.db.config import DBConfig
    from farts.db.server import DBProtocol, DBService
    from farts.db.store import Index
    from farts.metrics import Metrics

    class Sink:
        def write(self, data):
            pass

        def get_extra_info(self, key):
            return ("127.0.0.1", 1)

        def close(self):
            pass

    async def run() -> dict[str, float]:
        svc = DBService(DBConfig(enabled=True, port=0), Path(tempfile.mkdtemp()) / "db", "bench", Metrics())
        await svc.start()
        await svc.commands._write(lambda w: [w.insert("$bench.items", {"_id": i, "g": i // 20, "n": 0,
                                                                        "name": f"item-{i}", "body": "x" * 200})
                                              for i in range(docs)])
        await svc.commands._write(lambda w: w.create_index("$bench.items", Index("g_1", (("g", 1),))), True)
        proto = DBProtocol(svc)
        proto.connection_made(Sink())
        lsid = {"id": Binary(uuid.uuid4().bytes, 4)}
        requests = {"ping": op_msg({"ping": 1, "lsid": lsid, "$db": "admin"}),
                    "find_one": op_msg({"find": "items", "filter": {"_id": 5}, "limit": 1, "singleBatch": True,
                                     "lsid": lsid, "$db": "bench"}),
                    "find20": op_msg({"find": "items", "filter": {"g": 7}, "lsid": lsid, "$db": "bench"})}
        best: dict[str, float] = {}
        for _ in range(5):
            for name, data in requests.items():
                t = time.perf_counter()
                for _ in range(2000):
                    proto.data_received(data)
                best[name] = min(best.get(name, 1e9), (time.perf_counter() - t) / 2000 * 1e6)

        # 16 writers with one insert in flight each, as 16 clients would be (sync commits).
        class Waiter(Sink):
            def __init__(self):
                self.event = asyncio.Event()

            def write(self, data):
                self.event.set()

        async def writer(k: int, n: int) -> None:
            conn, sink = DBProtocol(svc), Waiter()
            conn.connection_made(sink)
            for i in range(n):
                sink.event.clear()
                conn.data_received(op_msg({"insert": "w", "documents": [{"_id": k * 1_000_000 + i, "body": "x" * 200}],
                                        "lsid": lsid, "$db": "bench"}))
                await sink.event.wait()

        commits, ops = svc.store.commits, svc.store.committed_ops
        t = time.perf_counter()
        await asyncio.gather(*(writer(k, 300) for k in range(16)))
        best["insert_16_writers_per_s"] = 16 * 300 / (time.perf_counter() - t)
        best["writes_per_commit"] = (svc.store.committed_ops - ops) / (svc.store.commits - commits)
        await svc.stop()
        return best

    return asyncio.run(run())


def fdatasync_ms(path: Path) -> float:
    fd = os.open(path / "fsync-probe", os.O_CREAT | os.O_WRONLY)
    lat = []
    for i in range(100):
        os.pwrite(fd, b"x" * 4096, (i % 8) * 4096)
        t = time.perf_counter()
        os.fdatasync(fd)
        lat.append(time.perf_counter() - t)
    os.close(fd)
    return statistics.median(lat) * 1e3


def summary(lat: list[float], seconds: float) -> dict:
    lat = sorted(lat)
    cdf = [[q, lat[min(len(lat) - 1, int(len(lat) * q))] * 1e3] for q in (0.5, 0.75, 0.9, 0.99, 0.999)] if lat else []
    return {"ops": len(lat) / seconds, "p50": statistics.median(lat) * 1e3 if lat else 0,
            "p99": lat[int(len(lat) * 0.99)] * 1e3 if lat else 0, "cdf": cdf}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--clients", default="1,16")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--pin", action="store_true")
    ap.add_argument("--no-embedded", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="rounds; each cell keeps its best round")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    clients = [int(x) for x in args.clients.split(",")]
    workloads = args.workloads.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="farts-bench-db-"))
    results: dict[tuple[str, str, int], dict] = {}

    def keep(key, r):
        print(f"{key[0]:9} {key[1]:11} c={key[2]:<3} {r['ops']:10,.0f} ops/s  p50 {r['p50']:6.3f} ms  "
              f"p99 {r['p99']:6.3f} ms", flush=True)
        if key not in results or r["ops"] > results[key]["ops"]:
            results[key] = r

    proc, port = start_server(tmp / "node", args.pin)
    emb = None if args.no_embedded else Embedded(tmp / "embedded", args.docs)
    try:
        load(port, args.docs)
        for _ in range(args.repeat):
            for n in clients:
                for w in workloads:
                    cpu0 = cpu_seconds(proc.pid)
                    r = summary(run_clients(port, w, n, args.seconds, args.docs, args.pin), args.seconds)
                    r["server_cpu_pct"] = 100 * (cpu_seconds(proc.pid) - cpu0) / args.seconds
                    keep(("farts", w, n), r)
                    if emb is not None and w != "ping":
                        keep(("embedded", w, n), summary(run_embedded(emb, w, n, args.seconds), args.seconds))
    finally:
        proc.terminate()
        proc.wait(10)
    print("\n| workload | clients | farts ops/s | p50 | p99 | embedded lmdb ops/s | farts / ping | farts / embedded |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in clients:
        for w in workloads:
            r, e, ping = results[("farts", w, n)], results.get(("embedded", w, n)), results.get(("farts", "ping", n))
            emb_ops = f"{e['ops']:,.0f}" if e else "—"
            vs_ping = f"{r['ops'] / ping['ops']:.2f}" if ping and w != "ping" else "—"
            vs_emb = f"{r['ops'] / e['ops']:.2f}" if e else "—"
            print(f"| {w} | {n} | {r['ops']:,.0f} | {r['p50']:.2f} ms | {r['p99']:.2f} ms | {emb_ops} | "
                  f"{vs_ping} | {vs_emb} |")
    cpu = server_cpu(min(args.docs, 5000))
    print("\nserver work per request, in-process (best of 5 x 2000): "
          + ", ".join(f"{k} {cpu[k]:.1f} us" for k in ("ping", "find_one", "find20")))
    print(f"in-process insert_one, 16 writers, sync: {cpu['insert_16_writers_per_s']:,.0f}/s, "
          f"{cpu['writes_per_commit']:.1f} writes per commit")
    fsync = fdatasync_ms(tmp)
    print(f"fdatasync on this disk: p50 {fsync:.2f} ms (an LMDB sync commit does two)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "params": vars(args), "in_process": cpu, "fdatasync_ms": fsync,
            "results": [dict(r, target=t, workload=w, clients=n, seconds=args.seconds)
                        for (t, w, n), r in results.items()]}, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
