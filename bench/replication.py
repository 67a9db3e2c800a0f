"""Database replication between 3 local nodes: lag at a steady write rate, catch-up, snapshot.

Three `farts-edge serve` processes joined by the mesh (default timing) with [db] enabled
(fsync on, as by default).

- lag: --writers processes insert --rate documents/s in all into node 1 (insert_many of
  --batch, paced), each stamped with its send time; one poller process per other node
  reads new documents every 2 ms (per writer, find _id > the last seen, sorted; so lags
  are up to ~2 ms late) and records when each first shows up there. Lag = seen there - sent (the same monotonic clock: CLOCK_MONOTONIC is
  system-wide). The local acknowledgement latency is the baseline.
- catch-up: node 3 is killed (-9), --catchup documents are written on node 1, node 3 is
  restarted on its data; the time from its restart (listening) until it has them all.
- snapshot: a new node 4 joins after that; the others no longer hold the records it
  lacks (every member had them), so it gets a snapshot: the time until it has every
  document, and the snapshot bytes the others sent.
- partition: node 3's mesh links run through TCP relays in this process (it advertises
  one, its seed is another), so cutting them partitions it from nodes 1 and 2 without
  touching the host's network. For --partition seconds a writer on node 1 and one on
  node 3 each insert --rate/2 documents/s (insert_many of --batch) and increment one
  shared counter by the batch size; then the relays heal and the time until every node
  has every acknowledged document and the counter is the sum of the acknowledged
  increments is the convergence time (polled every 0.1 s; the links' redial backoff is
  in it); the three dumps are then compared whole.

    .venv/bin/python bench/replication.py --rate 1000 --seconds 10 --catchup 50000
    .venv/bin/python bench/replication.py --rate 10000 --batch 100 --writers 2 --seconds 10 --scenarios lag
    .venv/bin/python bench/replication.py --rate 10000 --batch 100 --partition 30 --scenarios partition
    .venv/bin/python bench/replication.py --overhead --seconds 3
    .venv/bin/python bench/replication.py --overhead --seconds 3 --workloads insert_one --clients 16 --paced 800
    .venv/bin/python bench/replication.py --overhead --seconds 3 --clients 16 --peers 2 --pin --paced 2500
    .venv/bin/python bench/replication.py --in-process 20000

--in-process: no node processes, CPU time rather than throughput (steadier on a shared
machine): (1) catch-up between two LMDB stores (fsync off) through ``Replica`` with the
messages in wire form (msgpack), one process: records/s and CPU microseconds per record,
sender and receiver together; (2) the store's CPU per insert and per update (one write a
commit) without and with replication: the local cost of the merge metadata and effects.

--json FILE writes the figures of the scenarios run (lag, catch-up, partition, snapshot:
seconds, ops/s, MB/s, and whether each completed) for the harness (python -m bench run
replication).
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
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import pymongo  # noqa: E402
from mesh import Node, pct, wait  # noqa: E402

from farts import pki  # noqa: E402

DB = "\n[db]\nenabled = true\nport = 0\n"


def client(port: int) -> pymongo.MongoClient:
    return pymongo.MongoClient("127.0.0.1", port, serverSelectionTimeoutMS=10_000)


SPAN = 1_000_000_000   # writer w's _ids are w * SPAN + 0, 1, ...


def poller(port: int, until: float, writers: int, out) -> None:
    """Records (id, first seen) of every new document on one node until `until`."""
    coll = client(port).bench.lag
    last, seen = [w * SPAN - 1 for w in range(writers)], []
    while time.monotonic() < until:
        for w in range(writers):
            docs = list(coll.find({"_id": {"$gt": last[w], "$lt": (w + 1) * SPAN}}, {"_id": 1}).sort("_id", 1))
            now = time.monotonic()
            for d in docs:
                seen.append((d["_id"], now))
            if docs:
                last[w] = docs[-1]["_id"]
        time.sleep(0.002)   # polls every ~2 ms (a tight loop would take a core of the 2 from the nodes)
    out.put(seen)


def writer(port: int, w: int, rate: float, seconds: float, batch: int, start: float, out) -> None:
    """Paced insert_many batches stamped with their send time; reports (sent, ack latencies)."""
    coll = client(port).bench.lag
    sent: dict[int, float] = {}
    acked: list[float] = []
    k = 0
    while time.monotonic() - start < seconds:
        time.sleep(max(0.0, start + (k // batch) * batch / rate - time.monotonic()))
        t = time.monotonic()
        coll.insert_many([{"_id": w * SPAN + k + j, "t": t} for j in range(batch)])
        acked.append(time.monotonic() - t)
        for j in range(batch):
            sent[w * SPAN + k + j] = t
        k += batch
    out.put((sent, acked, time.monotonic() - start))


def lag(nodes: list[Node], rate: int, seconds: float, batch: int, writers: int) -> dict:
    polls, writes = mp.Queue(), mp.Queue()
    until = time.monotonic() + seconds + 6
    procs = [mp.Process(target=poller, args=(n.db_port, until, writers, polls)) for n in nodes[1:]]
    for p in procs:
        p.start()
    start = time.monotonic() + 1.0
    procs += [mp.Process(target=writer, args=(nodes[0].db_port, w, rate / writers, seconds, batch, start, writes))
              for w in range(writers)]
    for p in procs[len(nodes) - 1:]:
        p.start()
    sent: dict[int, float] = {}
    acked: list[float] = []
    elapsed = 0.0
    for _ in range(writers):
        s, a, e = writes.get()
        sent.update(s)
        acked += a
        elapsed = max(elapsed, e)
    results = [polls.get() for _ in nodes[1:]]
    for p in procs:
        p.join()
    out = {"written": len(sent), "rate": len(sent) / elapsed, "ack_p50": pct(acked, 50), "ack_p99": pct(acked, 99)}
    for n, seen in zip(nodes[1:], results, strict=True):
        lags = [at - sent[i] for i, at in seen if i in sent]
        out[n.id] = {"seen": len(lags), "p50": pct(lags, 50), "p99": pct(lags, 99), "max": max(lags)}
    return out


class Relay:
    """A TCP relay on loopback, run on its own event loop thread, that can be cut (every
    connection reset, new ones closed at once) and healed: a partition of the links that
    go through it, the host's network untouched."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.target: tuple[str, int] | None = None
        self.cut = False
        self.pairs: set = set()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(asyncio.start_server(self._accepted, sock=self.sock),
                                         self.loop).result()

    async def _accepted(self, reader, writer) -> None:
        if self.cut or self.target is None:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self.pairs.add(pair)

        async def pipe(src, dst) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.pairs.discard(pair)

    def set_cut(self, cut: bool) -> None:
        def apply() -> None:
            self.cut = cut
            for pair in list(self.pairs) if cut else ():
                for w in pair:
                    w.transport.abort()
        self.loop.call_soon_threadsafe(apply)


def mesh_listener(node: Node) -> tuple[str, int]:
    """Where the node's mesh really listens (its advertised address may be a relay's)."""
    url = json.loads(node.get("/api/status"))["listeners"]["mesh"]
    host, port = url.removeprefix("mesh://").rstrip("/").rsplit(":", 1)
    return host, int(port)


def partition_writer(port: int, tag: str, rate: float, seconds: float, batch: int, out) -> None:
    """Paced inserts of distinct documents and increments of one shared counter; reports
    what was acknowledged."""
    db = pymongo.MongoClient("127.0.0.1", port, serverSelectionTimeoutMS=5000, retryWrites=False).bench
    inserted = incs = k = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        time.sleep(max(0.0, start + k * batch / rate - time.monotonic()))
        try:
            db.part.insert_many([{"_id": f"{tag}-{k * batch + j}", "pad": "x" * 50} for j in range(batch)])
            inserted += batch
            db.counter.update_one({"_id": "ctr"}, {"$inc": {"n": batch}}, upsert=True)
            incs += batch
        except pymongo.errors.PyMongoError:
            pass
        k += 1
    out.put((tag, inserted, incs))


def partition(nodes: list[Node], relays: list[Relay], rate: int, seconds: float, batch: int) -> dict:
    ids = sorted(n.id for n in nodes)
    for r in relays:
        r.set_cut(True)
    assert wait(lambda: nodes[0].states().get("node-3") == "dead" and nodes[2].states().get("node-1") == "dead",
                60), "the partition was not seen"
    q: mp.Queue = mp.Queue()
    writers = [mp.Process(target=partition_writer, args=(n.db_port, n.id, rate / 2, seconds, batch, q))
               for n in (nodes[0], nodes[2])]
    for w in writers:
        w.start()
    acked = [q.get() for _ in writers]
    for w in writers:
        w.join()
    docs, incs = sum(a[1] for a in acked), sum(a[2] for a in acked)
    healed = time.monotonic()
    for r in relays:
        r.set_cut(False)

    def converged(node: Node) -> bool:
        try:
            db = client(node.db_port).bench
            ctr = db.counter.find_one({"_id": "ctr"}) or {}
            return db.part.estimated_document_count() == docs and ctr.get("n") == incs
        except pymongo.errors.PyMongoError:
            return False
    mesh_back = None
    while time.monotonic() - healed < 300:
        if mesh_back is None and all(sorted(n.states()) == ids and set(n.states().values()) == {"alive"}
                                     for n in nodes):
            mesh_back = time.monotonic() - healed
        if all(converged(n) for n in nodes):
            break
        time.sleep(0.1)
    took = time.monotonic() - healed
    dumps = [list(client(n.db_port).bench.part.find().sort("_id", 1)) for n in nodes]
    same = all(d == dumps[0] for d in dumps) and len(dumps[0]) == docs
    print(f"partition: {seconds:.0f} s with writes on both sides ({', '.join(f'{t}: {i} documents' for t, i, _ in acked)}, "
          f"{docs / seconds:,.0f}/s in all), healed: mesh whole again after "
          f"{mesh_back if mesh_back is not None else float('nan'):.2f} s, converged after {took:.2f} s "
          f"(counter {incs}); dumps {'identical' if same else 'DIFFER'}")
    return {"seconds": seconds, "documents": docs, "writes_per_s": docs / seconds, "mesh_back_s": mesh_back,
            "converged_s": took, "complete": same}


def in_process(n: int) -> None:
    import msgpack

    from farts.db.replica import Replica
    from farts.db.store import Store

    root = Path(tempfile.mkdtemp(prefix="farts-repl-inproc-"))
    a, b = (Store(root / x, x, sync=False, replicated=True) for x in "ab")
    for k in range(0, n, 1000):
        a.submit(lambda w, k=k: [w.insert("t$bench.bulk", {"_id": k + j, "pad": "x" * 100})
                                 for j in range(min(1000, n - k))]).result()
    replicas = {"a": Replica("a", a, ("b",)), "b": Replica("b", b, ("a",))}
    wall, cpu = time.perf_counter(), time.process_time()
    flight = [("b", "a", m) for _, m in replicas["b"].link_up("a", 0.0)]
    now = 0.0
    while b.applied().get("a", (0, 0))[0] < n:
        if not flight:   # a lost window: the periodic status asks again
            now += 1.0
            flight = [("b", "a", m) for _, m in replicas["b"].tick(now) if m.TYPE == "db.status"]
        src, dst, msg = flight.pop(0)
        msg = type(msg).from_wire(msgpack.unpackb(msgpack.packb(msg.to_wire())))
        rep = replicas[dst]
        out = rep.receive(msg, src, now)
        while rep.waiting:
            for f in rep.waiting:
                f.result()
            out += rep.committed(now)
        flight += [(dst, to or src, m) for to, m in out]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"in-process catch-up: {n} records in {wall:.2f} s ({n / wall:,.0f} records/s), "
          f"{cpu / n * 1e6:.1f} us CPU a record (both sides)")
    a.close()
    b.close()
    writes = n // 4
    for replicated in (False, True, False, True):
        s = Store(Path(tempfile.mkdtemp(dir=root)), "a", sync=False, replicated=replicated)
        c0 = time.process_time()
        for i in range(writes):
            s.submit(lambda w, i=i: w.insert("t$b.items", {"_id": i, "name": f"user{i}", "n": i,
                                                           "pad": "x" * 100})).result()
        c1 = time.process_time()
        for i in range(writes):
            s.submit(lambda w, i=i: w.replace("t$b.items", w.get("t$b.items", i), {**w.get("t$b.items", i), "n": i + 1},
                                               {"op": "u", "u": {"$inc": {"n": 1}}, "now": None})).result()
        c2 = time.process_time()
        s.close()
        print(f"store {'with' if replicated else 'without'} replication: insert {(c1 - c0) / writes * 1e6:.1f} us CPU, "
              f"update ($inc) {(c2 - c1) / writes * 1e6:.1f} us CPU")


def command_cpu(writes: int, clients: int = 16, modes=(False, True), rounds: int = 3, peers: int = 2) -> None:
    """The CPU of an insert through the whole command path (OP_MSG bytes in, reply out,
    bench/db.py's way) on a node alone and on a replicating node whose two peers are
    stand-ins on an in-process bus: they unpack each Records frame (msgpack, as the mesh
    does) and acknowledge its last record with a Status, like a peer that applied it;
    their time is taken out. LMDB without fsync (its cost is the disk's), no TLS (each
    frame is two encryptions on a real mesh: frames per insert are counted). ``peers``:
    how many stand-ins (0: a replicating node alone in its deployment). The writer
    thread's share of the CPU (the store's transactions) is shown apart. Under
    callgrind (instruction counts do not depend on the machine's load), one mode a run:

        valgrind --tool=callgrind --callgrind-out-file=/dev/null python -c \
          'import bench.replication as r; r.command_cpu(1600, modes=(True,), rounds=1)'
    """
    import msgpack

    from farts.clock import LoopClock
    from farts.db.config import DBConfig
    from farts.db.replica import Records, Status
    from farts.db.server import DBProtocol, DBService
    from farts.members import Member, MemberMap
    from farts.metrics import Metrics
    from farts.peer import Envelope

    sys.path.append(str(ROOT / "bench"))
    import db as dbbench

    class Bus:
        """Node a and two stand-in peers that acknowledge what they receive."""

        def __init__(self) -> None:
            self.others = ("b", "c")[:peers]
            self.map = MemberMap([Member(n) for n in ("a", *self.others)])
            self.subs: dict = {}
            self.frames = 0
            self.peer_cpu = 0.0

        def members(self):
            return self.map.members()

        def on_member_change(self, fn):
            return self.map.on_change(fn)

        def subscribe(self, cls, fn):
            self.subs[cls] = fn
            return lambda: None

        def broadcast(self, msg) -> int:
            return sum(self.send(n, msg) for n in self.others)

        def send(self, node_id, msg) -> bool:
            wire = msgpack.packb(msg.to_wire())
            self.frames += 1
            if isinstance(msg, Records):
                asyncio.get_running_loop().call_soon(self._ack, node_id, wire)
            return True

        def _ack(self, node_id: str, wire: bytes) -> None:
            t = time.thread_time()
            _, seq, hlc, _, _ = msgpack.unpackb(wire)[-1]
            status = msgpack.packb(Status({"a": seq}, hlc, hlc, 0).to_wire())
            self.peer_cpu += time.thread_time() - t
            self.subs[Status](Status.from_wire(msgpack.unpackb(status)), Envelope(node_id))

    async def run(replicated: bool) -> dict:
        import uuid

        from bson.binary import Binary
        svc = DBService(DBConfig(enabled=True, port=0, sync=False), Path(tempfile.mkdtemp()) / "db", "a", Metrics(),
                        clock=LoopClock())
        bus = Bus()
        if replicated:   # (no peer: the deployment's first node, its mesh without seeds)
            svc.replicate(bus, seeded=bool(bus.others))
        await svc.start()
        lsid = {"id": Binary(uuid.uuid4().bytes, 4)}

        class Waiter:
            def __init__(self) -> None:
                self.event = asyncio.Event()

            def write(self, data) -> None:
                self.event.set()

            def get_extra_info(self, key):
                return ("127.0.0.1", 1)

            def close(self) -> None:
                pass

        async def writer(k: int, n: int) -> None:
            conn, sink = DBProtocol(svc), Waiter()
            conn.connection_made(sink)
            for i in range(n):
                sink.event.clear()
                conn.data_received(dbbench.op_msg({"insert": "w", "documents": [
                    {"_id": k * 1_000_000 + i, "name": f"user{i}", "n": i, "body": "x" * 200}],
                    "lsid": lsid, "$db": "bench"}))
                await sink.event.wait()

        if replicated:   # the stand-ins' vectors: writes need them after the start
            for n in bus.others:
                bus.subs[Status](Status({}, 1, 1, 0), Envelope(n))
        await asyncio.gather(*(writer(k, 20) for k in range(clients)))   # warm-up
        commits, ops, frames = svc.store.commits, svc.store.committed_ops, bus.frames
        await asyncio.sleep(0.1)
        tid = svc.store._thread.native_id
        cpu, store_cpu, bus.peer_cpu = time.process_time(), thread_cpu(tid), 0.0
        await asyncio.gather(*(writer(k, writes // clients) for k in range(100, 100 + clients)))
        cpu, store_cpu = time.process_time() - cpu - bus.peer_cpu, thread_cpu(tid) - store_cpu
        n = writes // clients * clients
        out = {"us": cpu / n * 1e6, "store_us": store_cpu / n * 1e6,
               "per_commit": (svc.store.committed_ops - ops) / (svc.store.commits - commits),
               "frames": (bus.frames - frames) / n}
        await svc.stop()
        return out

    rows: dict[bool, list] = {m: [] for m in modes}
    for _ in range(rounds):
        for replicated in modes:
            rows[replicated].append(asyncio.run(run(replicated)))
    for replicated, rs in rows.items():
        us = " / ".join(f"{r['us']:.0f}" for r in rs)
        store_us = " / ".join(f"{r['store_us']:.0f}" for r in rs)
        print(f"{'replicating' if replicated else 'lone':11} node ({peers} peers), insert x{clients} in process: "
              f"{us} us CPU an insert ({store_us} in the writer thread), "
              f"{rs[-1]['per_commit']:.1f} writes a commit, {rs[-1]['frames']:.3f} frames an insert")
    if len(modes) == 2:
        print(f"CPU ratio (best of each): {min(r['us'] for r in rows[True]) / min(r['us'] for r in rows[False]):.2f}")


def thread_cpu(tid: int) -> float:
    """CPU seconds of one thread of this process (/proc: user and system)."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ops(node: Node, kind: str) -> float:
    """farts_db_replication_ops{kind=...} of a node."""
    for line in node.get("/metrics").decode().splitlines():
        if line.startswith("farts_db_replication_ops{") and f'kind="{kind}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def count(node: Node) -> int:
    try:
        return client(node.db_port).bench.bulk.estimated_document_count()
    except pymongo.errors.PyMongoError:
        return -1


def server_counts(port: int) -> tuple[int, int]:
    """(commits, committed writes) of a node's store (serverStatus)."""
    with pymongo.MongoClient("127.0.0.1", port) as c:
        f = c.admin.command("serverStatus")["farts"]
    return f["commits"], f["committedWrites"]


def frames_sent(node: Node, metric: str = "farts_mesh_bus_sent_total") -> float:
    """Mesh bus messages this node queued to its peers (every type; or ``metric``: the
    ones it received, farts_mesh_bus_received_total)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in node.get("/metrics").decode().splitlines()
               if line.startswith(metric + "{"))


def overhead(seconds: float, peers: int, workloads=("insert_one", "find_one"), clients_list=(1, 16),
             rounds: int = 2, rate: float = 0.0, pin: bool = False) -> None:
    """The local cost of replication: the same workloads on a lone node (no mesh: its own
    database) and on node 1 of 1 + peers replicating nodes, alternating, ``rounds`` rounds.
    Also each node's CPU while idle (ms a second, over 2 s), and per operation the store's
    commits and (replicating) the mesh messages it sent. ``rate``: the clients' operations
    a second, paced, so that both nodes do the same work a second (CPU per operation falls
    as the rate rises: more writes a commit, more requests a loop iteration). ``pin``: the
    measured node (lone or node 1) on core 0, its peers and the clients on core 1, as if
    the peers were other machines (on two shared cores their CPU is taken from the node's,
    and its per-operation CPU grows with the switching: a figure of the machine, not of
    replication)."""
    import db as dbbench  # bench/db.py

    root = Path(tempfile.mkdtemp(prefix="farts-repl-overhead-"))
    pki.make_ca(root / "ca")
    plain, plain_port = dbbench.start_server(root / "plain", False)
    nodes: list[Node] = []
    try:
        for i in range(1, peers + 2):
            nodes.append(Node(root, f"node-{i}", [nodes[-1].mesh()] if nodes else [], DB))
        docs = 20_000
        for port in (plain_port, nodes[0].db_port):
            dbbench.load(port, docs)
        assert wait(lambda: all(count_items(n) == docs for n in nodes), 120), "not replicated"
        pids = [plain.pid] + [n.proc.pid for n in nodes]
        if pin:   # (every thread: taskset -a)
            for pid, core in [(plain.pid, 0), (nodes[0].proc.pid, 0)] + [(n.proc.pid, 1) for n in nodes[1:]]:
                subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(pid)], stdout=subprocess.DEVNULL,
                               check=True)
        time.sleep(1.0)   # the load's compaction and retention settle
        idle0 = [dbbench.cpu_seconds(p) for p in pids]
        time.sleep(2.0)
        idle = [(dbbench.cpu_seconds(p) - c) / 2.0 * 1000 for p, c in zip(pids, idle0, strict=True)]
        print(f"idle CPU: lone node {idle[0]:.1f} ms/s, replicating node {idle[1]:.1f} ms/s, "
              f"peers {' / '.join(f'{v:.1f}' for v in idle[2:])} ms/s")
        rows: dict = {}
        for _ in range(rounds):
            for workload in workloads:
                for clients in clients_list:
                    for name, port, pid in (("plain", plain_port, plain.pid),
                                            ("replicated", nodes[0].db_port, nodes[0].proc.pid)):
                        others = [n.proc.pid for n in nodes[1:]] if name == "replicated" else []
                        counts0 = server_counts(port)
                        frames0 = frames_sent(nodes[0]) if name == "replicated" else 0.0
                        got0 = frames_sent(nodes[0], "farts_mesh_bus_received_total") if name == "replicated" else 0.0
                        cpu0 = [dbbench.cpu_seconds(p) for p in [pid, *others]]
                        lat = dbbench.run_clients(port, workload, clients, seconds, docs, pin, rate)
                        cpu = [dbbench.cpu_seconds(p) - c for p, c in zip([pid, *others], cpu0, strict=True)]
                        counts = [b - a for a, b in zip(counts0, server_counts(port), strict=True)]
                        frames = frames_sent(nodes[0]) - frames0 if name == "replicated" else 0.0
                        got = frames_sent(nodes[0], "farts_mesh_bus_received_total") - got0 if name == "replicated" else 0.0
                        row = rows.setdefault((workload, clients, name),
                                              {"ops": [], "us": [], "peers_us": [], "per_commit": [], "frames": [],
                                               "got": [], "p99": []})
                        row["ops"].append(len(lat) / seconds)
                        row["p99"].append(pct(lat, 99) * 1000)
                        row["got"].append(got / len(lat))
                        # CPU per operation (the client's warm-up included: a few % more)
                        row["us"].append(cpu[0] / len(lat) * 1e6)
                        row["peers_us"].append(sum(cpu[1:]) / len(lat) * 1e6 / max(1, len(others)))
                        row["per_commit"].append(counts[1] / max(1, counts[0]))
                        row["frames"].append(frames / len(lat))
        # CPU per operation is what the shared machine cannot skew much: the ops/s of a
        # replicating node also lose the cores its peers take on the same host.
        for workload in workloads:
            for clients in clients_list:
                p, r = rows[(workload, clients, "plain")], rows[(workload, clients, "replicated")]
                writes = f", writes a commit {p['per_commit'][-1]:.1f} / {r['per_commit'][-1]:.1f}, " \
                         f"mesh messages an op sent {r['frames'][-1]:.3f} received {r['got'][-1]:.3f}" \
                    if workload != "find_one" else ""
                print(f"{workload} x{clients}: lone node {' / '.join(f'{v:,.0f}' for v in p['ops'])} ops/s "
                      f"(p99 {' / '.join(f'{v:.2f}' for v in p['p99'])} ms) "
                      f"{' / '.join(f'{v:.0f}' for v in p['us'])} us CPU/op, "
                      f"replicating node {' / '.join(f'{v:,.0f}' for v in r['ops'])} ops/s "
                      f"(p99 {' / '.join(f'{v:.2f}' for v in r['p99'])} ms) "
                      f"{' / '.join(f'{v:.0f}' for v in r['us'])} us CPU/op "
                      f"(each peer {' / '.join(f'{v:.0f}' for v in r['peers_us'])} us), "
                      f"ops ratio {sum(r['ops']) / sum(p['ops']):.2f}, "
                      f"CPU ratio {min(r['us']) / min(p['us']):.2f} ({peers} peers){writes}")
    finally:
        plain.kill()
        plain.wait()
        for n in nodes:
            n.proc.send_signal(signal.SIGKILL)
            n.proc.wait()


def count_items(node: Node) -> int:
    try:
        return client(node.db_port).bench.items.estimated_document_count()
    except pymongo.errors.PyMongoError:
        return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--writers", type=int, default=1, help="writer processes of the lag scenario, each --rate/N")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--catchup", type=int, default=50_000)
    ap.add_argument("--overhead", action="store_true",
                    help="instead: bench/db.py's insert_one and find_one on a node without the mesh and "
                         "on node 1 of 3 replicating nodes, alternating, --seconds each")
    ap.add_argument("--peers", type=int, default=2, help="with --overhead or --command-cpu (at most 2 there): "
                                                         "how many other nodes replicate")
    ap.add_argument("--workloads", default="insert_one,find_one", help="with --overhead: bench/db.py workloads")
    ap.add_argument("--clients", default="1,16", help="with --overhead or --command-cpu: client counts")
    ap.add_argument("--rounds", type=int, default=2, help="with --overhead: rounds (lone and replicating alternate)")
    ap.add_argument("--pin", action="store_true",
                    help="with --overhead: the measured node on core 0; its peers and the clients on core 1")
    ap.add_argument("--paced", type=float, default=0.0, metavar="OPS",
                    help="with --overhead: the clients' operations a second in all, paced (default: unpaced)")
    ap.add_argument("--partition", type=float, default=30.0, help="seconds of the partition scenario")
    ap.add_argument("--in-process", type=int, default=0, metavar="N",
                    help="instead: catch-up of N records between two stores in this process, and the "
                         "store's CPU per write without and with replication")
    ap.add_argument("--command-cpu", type=int, default=0, metavar="N",
                    help="instead: CPU of N inserts through the command path, alone and replicating "
                         "(stand-in peers on an in-process bus)")
    ap.add_argument("--scenarios", default="lag,catchup,snapshot",
                    help="comma-separated, of: lag, catchup, partition, snapshot (run in that order)")
    ap.add_argument("--json", help="write the figures here (not with --overhead or --in-process)")
    args = ap.parse_args()
    scenarios = args.scenarios.split(",")
    if args.overhead:
        overhead(args.seconds, args.peers, args.workloads.split(","), [int(c) for c in args.clients.split(",")],
                 args.rounds, args.paced, args.pin)
        return
    if args.in_process:
        in_process(args.in_process)
        return
    if args.command_cpu:
        for clients in [int(c) for c in args.clients.split(",")]:
            command_cpu(args.command_cpu, clients, peers=args.peers)
        return
    root = Path(tempfile.mkdtemp(prefix="farts-repl-bench-"))
    pki.make_ca(root / "ca")
    nodes: list[Node] = []
    relays = [Relay(), Relay()]   # to node 3 (it advertises it), to node 1 (node 3's seed)

    def node3() -> Node:
        if "partition" not in scenarios:
            return Node(root, "node-3", [nodes[0].mesh()], DB)
        relays[1].target = mesh_listener(nodes[0])
        node = Node(root, "node-3", [relays[1].address], f'advertise = "{relays[0].address}"\n' + DB)
        relays[0].target = mesh_listener(node)
        return node

    try:
        for i in range(1, 3):
            nodes.append(Node(root, f"node-{i}", [nodes[-1].mesh()] if nodes else [], DB))
        nodes.append(node3())
        ids = sorted(n.id for n in nodes)
        assert wait(lambda: all(sorted(n.states()) == ids and set(n.states().values()) == {"alive"}
                                for n in nodes), 30), "mesh did not form"
        figures: dict = {}
        if "lag" in scenarios:
            figures["lag"] = lag_scenario(nodes, args)
        if "catchup" in scenarios:
            figures["catchup"] = catchup(nodes, args, node3)
        if "partition" in scenarios:   # before node 4 joins: it would link to node 3 directly
            figures["partition"] = partition(nodes, relays, args.rate, args.partition, args.batch)
        if "snapshot" in scenarios:
            figures["snapshot"] = snapshot(root, nodes, args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"params": vars(args), **figures,
                           "ok": all(x.get("complete", True) for x in figures.values())}, f, indent=1)
    finally:
        for n in nodes:
            n.proc.send_signal(signal.SIGKILL)
            n.proc.wait()


def lag_scenario(nodes: list[Node], args) -> dict:
    r = lag(nodes, args.rate, args.seconds, args.batch, args.writers)
    print(f"lag at {r['rate']:.0f} writes/s ({r['written']} documents, batches of {args.batch}, "
          f"{args.writers} writer process(es)): "
          f"local ack p50 {r['ack_p50'] * 1000:.2f} ms p99 {r['ack_p99'] * 1000:.2f} ms")
    for n in nodes[1:]:
        x = r[n.id]
        print(f"  {n.id}: seen {x['seen']}, lag p50 {x['p50'] * 1000:.2f} ms, p99 {x['p99'] * 1000:.2f} ms, "
              f"max {x['max'] * 1000:.1f} ms")
    return r


def catchup(nodes: list[Node], args, restart) -> dict:
    """Node 3 down while node 1 writes, then back on its data."""
    victim = nodes[2]
    victim.proc.kill()
    victim.proc.wait()
    coll = client(nodes[0].db_port).bench.bulk
    for k in range(0, args.catchup, 1000):
        coll.insert_many([{"_id": k + j, "pad": "x" * 100} for j in range(min(1000, args.catchup - k))])
    nodes[2] = restart()
    started = time.monotonic()
    first = []

    def progress():
        n = count(nodes[2])
        if n > 0 and not first:
            first.append((time.monotonic(), n))
        return n == args.catchup
    ok = wait(progress, 300)
    done = time.monotonic()
    t0, n0 = first[0] if first else (started, 0)
    out = {"records": args.catchup, "seconds_from_restart": done - started, "seconds_from_first": done - t0,
           "ops_per_s": (args.catchup - n0) / max(done - t0, 1e-9), "complete": ok,
           "duplicates": ops(nodes[2], "duplicates")}
    print(f"catch-up: {args.catchup} records in {done - started:.2f} s from restart (listening), "
          f"{done - t0:.2f} s from the first applied ({out['ops_per_s']:,.0f} ops/s)"
          + ("" if ok else f" INCOMPLETE: {count(nodes[2])}"))
    print(f"  node-3 after catch-up: applied {ops(nodes[2], 'applied'):.0f}, "
          f"duplicates received {out['duplicates']:.0f}")
    return out


def snapshot(root: Path, nodes: list[Node], args) -> dict:
    """A new node: a snapshot, then the tail."""
    before = sum(n.counter_plain("farts_db_replication_snapshot_bytes") for n in nodes)
    nodes.append(Node(root, "node-4", [nodes[0].mesh()], DB))
    started = time.monotonic()
    ok = wait(lambda: count(nodes[3]) == args.catchup, 300)
    took = time.monotonic() - started
    sent = sum(n.counter_plain("farts_db_replication_snapshot_bytes") for n in nodes[:3]) - before
    print(f"snapshot: {args.catchup} documents to a new node in {took:.2f} s from its start, "
          f"{sent / 1e6:.1f} MB of snapshot sent ({sent / 1e6 / took:.1f} MB/s)"
          + ("" if ok else f" INCOMPLETE: {count(nodes[3])}"))
    return {"documents": args.catchup, "seconds": took, "mb": sent / 1e6, "mb_per_s": sent / 1e6 / took,
            "complete": ok}


if __name__ == "__main__":
    main()
