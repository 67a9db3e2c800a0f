"""Issue 19's targets against the peers, checked on a run's rows: the report's verdict
table. A target is a ratio of farts-edge's throughput to a peer's in the same run (and,
where the issue says so, of the two p99s); where a target is not met the table says
where the time goes, from the profiles recorded in bench/RESULTS.md (the section named).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    scenario: str
    variant: str          # the rows' variant ("" for the scenario's only one)
    ours: str
    peer: str
    min_ratio: float      # farts-edge throughput / the peer's, at least
    max_p99_ratio: float | None  # farts-edge p99 / the peer's, at most (None: not part of the goal)
    where: str            # where the time goes (a profile), and the RESULTS.md section


GOALS = (
    Goal("http-fixed", "1024 B", "farts-fixed", "nginx-static-tuned", 1.0, None,
         "py-spy --native on the node under wrk: libc write 56 %, read 33 %, epoll_pwait 6 %, no "
         "Python or Cython frame over 1.5 %: two socket syscalls per request, as nginx "
         "(RESULTS.md, HTTP/1.1 edge: Where the time goes)"),
    Goal("proxy", "1024 B", "farts-proxy", "nginx-proxy", 1.0, 2.0,
         "callgrind per proxied request: 89.3k user-space instructions against nginx's 23.1k, 86 % "
         "of it the interpreter (about 27 Python functions per request); the four socket syscalls "
         "are nginx's too (RESULTS.md, Reverse proxy: Where the time goes)"),
    Goal("cdn-hits", "1 KiB", "farts-cdn", "nginx-cache", 1.3, None,
         "py-spy on the node under wrk: most samples in the one write of the ready answer (the "
         "kernel's loopback send and the receiver's softirq, charged to the sender) and uvloop's loop; "
         "callgrind: 37.7k user instructions per hit; the rest is the transport's generic handler "
         "path (RESULTS.md, CDN cache hits)"),
    Goal("cdn-hits", "100 KiB", "farts-cdn", "nginx-cache", 1.0, None,
         "the head's write and the body's sendfile are about 60 % of the main thread; about 5 us more "
         "per answer than nginx: the handler path's Python and a head built per request (RESULTS.md, "
         "CDN cache hits)"),
    Goal("fanout-1k", "1000 subscribers", "farts", "socketify", 1.5, 1.0,
         "perf record: the node's CPU is 71 % in the kernel (TCP send, loopback receive, waking each "
         "reader); io_uring saves only the syscall entry, ~0.1-0.2 us of a ~1 us send; about 2 events per "
         "flush at this publish rate (RESULTS.md, Pub/sub fanout: io_uring sends)"),
    Goal("fanout-10k", "10000 subscribers", "farts", "socketify", 1.5, 1.0,
         "as at 1,000 subscribers; libc write was 93 % of the samples before io_uring "
         "(RESULTS.md, Pub/sub fanout)"),
    Goal("dns", "dnsload", "farts-dns", "gdnsd", 1.0, None,
         "UDP never reaches Python: fast.dnsloop's recvmmsg/sendmmsg batches of 64 and a reply "
         "cache; the rest is the kernel's UDP path, as gdnsd's (RESULTS.md, Geo DNS)"),
)


def verdicts(summaries: dict[tuple, dict]) -> list[dict]:
    """summaries: (scenario, variant, target, workers) -> report.summary(rows). One verdict
    per goal whose two sides both ran with one worker."""
    out = []
    for g in GOALS:
        ours = summaries.get((g.scenario, g.variant, g.ours, 1))
        peer = summaries.get((g.scenario, g.variant, g.peer, 1))
        if not ours or not peer or not ours["throughput"] or not peer["throughput"]:
            continue
        ratio = ours["throughput"] / peer["throughput"]
        p99 = (ours["p99_ms"] / peer["p99_ms"]) if ours["p99_ms"] and peer["p99_ms"] else None
        met = ratio >= g.min_ratio and (g.max_p99_ratio is None or (p99 is not None and p99 <= g.max_p99_ratio))
        out.append({"goal": g, "ratio": ratio, "p99_ratio": p99, "met": met})
    return out


def markdown(summaries: dict[tuple, dict]) -> list[str]:
    rows = verdicts(summaries)
    if not rows:
        return []
    md = ["## Issue 19's targets in this run", "",
          "| scenario | variant | against | throughput ratio | goal | p99 ratio | goal | met | where the time goes |",
          "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for v in rows:
        g = v["goal"]
        p99 = "-" if v["p99_ratio"] is None else f"{v['p99_ratio']:.2f}"
        md.append(f"| {g.scenario} | {g.variant} | {g.peer} | {v['ratio']:.2f} | >= {g.min_ratio} | {p99} | "
                  f"{'<= ' + str(g.max_p99_ratio) if g.max_p99_ratio else '-'} | {'yes' if v['met'] else '**no**'} | "
                  f"{'' if v['met'] else g.where} |")
    return md + [""]
