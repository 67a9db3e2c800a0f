"""The mesh with real node processes on loopback: failure detection and idle bandwidth.

N `farts-edge serve` processes (default 5) with the default mesh timing
(probe_interval 1 s, probe_timeout 0.5 s, suspicion_timeout 1.5 s x up to 2), one CA.

- idle: bytes and frames each node sends per second per member, from the nodes' own
  farts_mesh_bytes_total / farts_mesh_frames_total counters over --idle seconds;
- pauses: --pauses times, SIGSTOP of a random node for --pause seconds (a GC pause, a
  VM steal), then 5 s of watching that no other node declares it dead;
- kills: --kills times, `kill -9` of a random node other than node-1, then the time
  until the first and until every other node's /api/mesh shows it dead (polled every
  50 ms, so figures are up to 50 ms late); the node is restarted and rejoins before
  the next kill.

    .venv/bin/python bench/mesh.py --nodes 5 --kills 20 --idle 30 --pauses 10
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the repository, not bench/ (bench/http.py shadows the standard library)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

from bench.nodeconf import local_node, node_toml  # noqa: E402
from farts import pki  # noqa: E402


class Node:
    def __init__(self, root: Path, node_id: str, seeds: list[str], extra: str = "") -> None:
        """``extra``: TOML text after the config's last table, [mesh] (keys of [mesh], then
        other tables: ``bench.nodeconf.node_toml``)."""
        self.id, d = node_id, root / node_id
        if not (d / "node.crt").exists():
            pki.issue(root / "ca", d / "node.crt", d / "node.key", ["127.0.0.1"], node_id=node_id)
        mesh = {"enabled": True, "port": 0, "seeds": seeds, "ca": str(root / "ca" / "ca.crt"), "cert": "node.crt",
                "key": "node.key"}
        (d / "farts.toml").write_text(node_toml({**local_node(d, node_id=node_id, hosts=(), workers=1),
                                                 "mesh": mesh}) + extra)
        self.proc = subprocess.Popen([sys.executable, "-m", "farts.cli", "--log-level", "WARNING", "serve",
                                      "--config", str(d / "farts.toml")], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=open(d / "node.log", "ab"))  # noqa: SIM115
        buf, deadline = b"", time.monotonic() + 30
        while b"Ctrl-C stops the node." not in buf and time.monotonic() < deadline:
            if select.select([self.proc.stdout], [], [], 0.2)[0]:
                buf += os.read(self.proc.stdout.fileno(), 65536)
        self.admin = re.search(rb"admin\s+(http://\S+)", buf).group(1).decode().rstrip("/")
        self.http_hostport = re.search(rb"http\s+http://(\S+?)/", buf).group(1).decode()
        db = re.search(rb"db\s+mongodb://[\d.]+:(\d+)/", buf)   # with [db] enabled
        self.db_port = int(db.group(1)) if db else None

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.admin + path, timeout=5) as r:
            return r.read()

    def states(self) -> dict[str, str]:
        try:
            return {m["id"]: m["state"] for m in json.loads(self.get("/api/mesh"))["members"]}
        except OSError:
            return {}

    def mesh(self) -> str:
        return next(m["mesh"] for m in json.loads(self.get("/api/mesh"))["members"] if m["self"])

    def plain(self, name: str) -> float:
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def counter_plain(self, name: str) -> float:
        """A metric without labels (0 when the node does not answer)."""
        try:
            return self.plain(name)
        except OSError:
            return 0.0

    def counter(self, name: str) -> float:
        total = 0.0
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith(name + "{") and 'direction="out"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


def wait(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--pauses", type=int, default=10, help="SIGSTOPs of --pause seconds (no death expected)")
    ap.add_argument("--pause", type=float, default=1.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mesh-bench-"))
    pki.make_ca(root / "ca")
    nodes: dict[str, Node] = {}
    result: dict = {"nodes": args.nodes}
    try:
        for i in range(1, args.nodes + 1):
            seeds = [nodes["node-1"].mesh()] if i > 1 else []
            nodes[f"node-{i}"] = Node(root, f"node-{i}", seeds)
        ids = set(nodes)
        assert wait(lambda: all(set(n.states()) == ids and set(n.states().values()) == {"alive"}
                                for n in nodes.values()), 30), "cluster did not form"
        time.sleep(3)
        before = {i: (n.counter("farts_mesh_bytes_total"), n.counter("farts_mesh_frames_total"))
                  for i, n in nodes.items()}
        time.sleep(args.idle)
        per_member = []
        for i, n in nodes.items():
            b = (n.counter("farts_mesh_bytes_total") - before[i][0]) / args.idle / (args.nodes - 1)
            f = (n.counter("farts_mesh_frames_total") - before[i][1]) / args.idle / (args.nodes - 1)
            per_member.append((b, f))
        result["idle_bytes_per_s_per_member"] = statistics.mean(b for b, _ in per_member)
        result["idle_frames_per_s_per_member"] = statistics.mean(f for _, f in per_member)
        # On the wire each frame is at least one TLS 1.3 record (5 B header, 16 B tag, 1 B
        # type) in one TCP/IPv4 segment (52 B with timestamps); ACKs not counted.
        result["idle_wire_bytes_per_s_per_member"] = (result["idle_bytes_per_s_per_member"]
                                                      + result["idle_frames_per_s_per_member"] * (22 + 52))
        print(f"idle: {result['idle_bytes_per_s_per_member']:.0f} B/s of frames and "
              f"{result['idle_frames_per_s_per_member']:.2f} frames/s sent per node per member, "
              f"~{result['idle_wire_bytes_per_s_per_member']:.0f} B/s on the wire "
              f"({args.nodes} nodes, {args.idle:.0f} s)", flush=True)

        rng = random.Random(1)
        deaths = suspected = 0
        for k in range(args.pauses):
            victim = rng.choice(sorted(ids))
            others = [n for i, n in nodes.items() if i != victim]
            s0 = sum(n.plain("farts_mesh_suspicions_total") for n in others)
            nodes[victim].proc.send_signal(signal.SIGSTOP)
            time.sleep(args.pause)
            nodes[victim].proc.send_signal(signal.SIGCONT)
            died = False
            end = time.monotonic() + 5
            while time.monotonic() < end:
                died = died or any(n.states().get(victim) == "dead" for n in others)
                time.sleep(0.1)
            s1 = sum(n.plain("farts_mesh_suspicions_total") for n in others)
            deaths += died
            suspected += s1 > s0
            print(f"pause {k + 1:2}: {victim} stopped {args.pause:.1f} s: "
                  f"{'DECLARED DEAD' if died else 'not dead'}, {s1 - s0:.0f} suspicion(s) started", flush=True)
            assert wait(lambda v=victim: all(n.states().get(v) == "alive" for n in nodes.values()), 30)
        if args.pauses:
            result.update(pauses=args.pauses, pause_s=args.pause, pause_deaths=deaths, pause_suspected=suspected)
            print(f"{args.pauses} pauses of {args.pause:.1f} s: {deaths} declared dead, {suspected} with suspicions "
                  f"(and refuted)", flush=True)
        first, every = [], []
        for k in range(args.kills):
            victim = rng.choice(sorted(ids - {"node-1"}))
            others = [n for i, n in nodes.items() if i != victim]
            nodes[victim].proc.kill()
            nodes[victim].proc.wait()
            t0 = time.monotonic()
            seen_first = None
            deadline = t0 + 30
            while time.monotonic() < deadline:
                views = [n.states().get(victim) for n in others]
                now = time.monotonic() - t0
                if seen_first is None and "dead" in views:
                    seen_first = now
                if all(v == "dead" for v in views):
                    first.append(seen_first)
                    every.append(now)
                    break
                time.sleep(0.05)
            else:
                print(f"kill {k + 1}: {victim} not declared dead by everyone within 30 s", flush=True)
            print(f"kill {k + 1:2}: {victim} dead at first node after {seen_first or float('nan'):.2f} s, "
                  f"at all after {every[-1] if every else float('nan'):.2f} s", flush=True)
            nodes[victim] = Node(root, victim, [nodes["node-1"].mesh()])
            assert wait(lambda v=victim: all(n.states().get(v) == "alive" for n in nodes.values()), 30), \
                f"{victim} did not rejoin"
            time.sleep(1)
        if every:
            result.update(kills=len(every), first_p50=pct(first, 50), first_p90=pct(first, 90),
                          first_max=max(first), all_p50=pct(every, 50), all_p90=pct(every, 90),
                          all_max=max(every), all_min=min(every))
            print(f"detection over {len(every)} kills: first node p50 {result['first_p50']:.2f} s, "
                  f"p90 {result['first_p90']:.2f} s, max {result['first_max']:.2f} s; every node p50 "
                  f"{result['all_p50']:.2f} s, p90 {result['all_p90']:.2f} s, min {result['all_min']:.2f} s, "
                  f"max {result['all_max']:.2f} s", flush=True)
    finally:
        for n in nodes.values():
            n.proc.send_signal(signal.SIGKILL)
            n.proc.wait()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
