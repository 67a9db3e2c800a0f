"""SWIM in simulation: detection time and false positives at 100 and 1,000 members.

The same `Swim` machine the nodes run, driven by farts/mesh/simnet.py (virtual time,
0.5-5 ms latency, independent random loss per message). Two variants in the same
run, on the same seeds:

- farts: the defaults (Lifeguard: the suspicion timeout starts at
  suspicion_max_mult x the minimum and shrinks with independent confirmations; local
  health slows a node that looks like the slow one);
- swim-classic: the same machine without Lifeguard: one fixed suspicion timeout
  (suspicion_max_mult = 1) and no local health (max_local_health = 0).

For each: a quiet period (no failure) counts false suspicions (distinct member and
incarnation pairs suspected by anyone) and false deaths (declarations of a live
member as dead, by anyone), per member-hour, then members are crashed one
at a time: time from the crash to the first "dead" anywhere and to "dead" in every
live member's view. Idle traffic is counted in messages and msgpack bytes per member.

    .venv/bin/python bench/mesh_sim.py                      # 100 and 1,000 members, 1% loss
    .venv/bin/python bench/mesh_sim.py --members 100 --kills 20 --quiet 300
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import msgpack

# The repository instead of bench/ (whose http.py would shadow the standard library).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from farts.members import DEAD, SUSPECT  # noqa: E402
from farts.mesh.simnet import SimNet  # noqa: E402
from farts.mesh.swim import SwimConfig  # noqa: E402


class CountingNet(SimNet):
    """Counts bytes of what is sent (msgpack, as on the wire) when `counting` is on."""
    counting = False
    bytes_sent = 0

    def _flush(self, node_id):
        if self.counting:
            for _, msg in self.nodes[node_id].outbox:
                self.bytes_sent += len(msgpack.packb(msg)) + 5  # + frame length and kind
        super()._flush(node_id)


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run(members: int, loss: float, quiet: float, kills: int, cfg: SwimConfig, seed: int) -> dict:
    ids = [f"n{i}" for i in range(members)]
    t0 = time.perf_counter()
    net = CountingNet(ids, cfg, seed=seed, loss=loss)
    net.run_until(5.0)  # settle: probe phases spread
    start_log, start_sent = len(net.log), net.sent
    net.counting, net.bytes_sent = True, 0
    net.run_until(5.0 + quiet)
    net.counting = False
    quiet_log = net.log[start_log:]
    false_dead = sum(1 for _, _, _, st, _ in quiet_log if st == DEAD)
    # Distinct suspicions: (member, incarnation) pairs anyone suspected, not how many heard.
    false_suspect = len({(subj, inc) for _, _, subj, st, inc in quiet_log if st == SUSPECT})
    messages = net.sent - start_sent
    rng = random.Random(seed)
    first, every = [], []
    for _ in range(kills):
        victim = rng.choice([i for i in net.live()])
        net.crash(victim)
        t_kill, n_before = net.now, len(net.log)
        deadline = t_kill + 120
        while net.now < deadline:
            net.run_until(net.now + 0.5)
            if all(net.state(o, victim) == DEAD for o in net.live()):
                break
        decl = [t for t, _o, s, st, _ in net.log[n_before:] if s == victim and st == DEAD]
        if decl:
            first.append(min(decl) - t_kill)
            every.append(max(decl) - t_kill)
        net.run_until(net.now + 2)
    hours = quiet * members / 3600
    return {"members": members, "loss": loss, "quiet_s": quiet, "kills": kills,
            "false_dead": false_dead, "false_dead_per_member_hour": false_dead / hours,
            "false_suspect_per_member_hour": false_suspect / hours,
            "detect_first_p50": pct(first, 50), "detect_first_p99": pct(first, 99),
            "detect_all_p50": pct(every, 50), "detect_all_p99": pct(every, 99), "detect_all_max": max(every or [0]),
            "detected": len(every),
            "msgs_per_member_s": messages / quiet / members,
            "bytes_per_member_s": net.bytes_sent / quiet / members,
            "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--loss", type=float, default=0.01)
    ap.add_argument("--quiet", type=float, default=None, help="seconds without failures (default 300 / 60 at 1,000)")
    ap.add_argument("--kills", type=int, default=None, help="crashes (default 20 / 5 at 1,000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    variants = {"farts": SwimConfig(),
                "swim-classic": dataclasses.replace(SwimConfig(), suspicion_max_mult=1.0, max_local_health=0)}
    rows = []
    for n in args.members:
        quiet = args.quiet if args.quiet is not None else (300.0 if n <= 100 else 60.0)
        kills = args.kills if args.kills is not None else (20 if n <= 100 else 5)
        for name, cfg in variants.items():
            r = run(n, args.loss, quiet, kills, cfg, args.seed)
            r["variant"] = name
            rows.append(r)
            print(f"{name:10} n={n:5} loss={args.loss:.0%}  false dead {r['false_dead']} "
                  f"({r['false_dead_per_member_hour']:.3f}/member-h), false suspicions "
                  f"{r['false_suspect_per_member_hour']:.1f}/member-h | detection ({r['detected']}/{kills}) "
                  f"first p50 {r['detect_first_p50']:.2f}s p99 {r['detect_first_p99']:.2f}s, "
                  f"everyone p50 {r['detect_all_p50']:.2f}s p99 {r['detect_all_p99']:.2f}s | "
                  f"{r['msgs_per_member_s']:.2f} msg/s, {r['bytes_per_member_s']:.0f} B/s per member "
                  f"[{r['wall_s']:.0f}s wall]", flush=True)
        a, b = rows[-2], rows[-1]
        print(f"  ratio farts/swim-classic: detection (everyone, p50) {a['detect_all_p50'] / b['detect_all_p50']:.2f}, "
              f"false suspicions {a['false_suspect_per_member_hour'] / max(b['false_suspect_per_member_hour'], 1e-9):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
