"""The scenarios: which bench script measures what, against which peers, and how its own
JSON becomes rows of the common schema (schema.row).

The scripts are run as they are (each starts, pins, checks and stops its own servers);
a scenario only chooses their arguments (full or --smoke) and the targets whose tools are
installed, and reads their --json back.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from .schema import row

WRK_CDF = (("p50_ms", 0.50), ("p75_ms", 0.75), ("p90_ms", 0.90), ("p99_ms", 0.99))


def have_exe(name: str) -> bool:
    return bool(shutil.which(name)) or os.access(f"/usr/sbin/{name}", os.X_OK)


def have_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def missing(needs: tuple[str, ...]) -> list[str]:
    """Of needs ("exe:wrk", "py:socketify"), those not on this machine."""
    out = []
    for need in needs:
        kind, _, name = need.partition(":")
        if not (have_exe(name) if kind == "exe" else have_module(name)):
            out.append(need)
    return out


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    script: str                       # bench/<script>
    targets: dict[str, tuple[str, ...]]  # target -> what it needs; the first is farts-edge's
    argv: Callable[[list[str], bool], list[str]]  # (targets, smoke) -> script arguments
    rows: Callable[[object, dict], list[dict]]     # (the script's JSON, context) -> rows
    smoke: bool = True                # part of `run --smoke` when no scenario is named
    smoke_targets: tuple[str, ...] = ()  # with --smoke: only these (default: all)
    unsupported: str | None = None    # why the script cannot measure it yet
    json_flag: str = "--json"


# ---------------------------------------------------------------- normalisers


def wrk_cdf(r: dict) -> list | None:
    pts = [[q, r[k]] for k, q in WRK_CDF if r.get(k) is not None]
    return pts or None


def http_rows(scenario: str) -> Callable[[object, dict], list[dict]]:
    def rows(doc, ctx) -> list[dict]:
        out = []
        for r in doc["results"]:
            if "rps" not in r:
                continue
            out.append(row(scenario, r["name"], metric="requests/s", throughput=r["rps"],
                           variant=f"{doc['params'].get('size', 1024)} B", workers=r.get("workers"),
                           p50_ms=r.get("p50_ms"), p99_ms=r.get("p99_ms"), duration_s=r.get("duration_s"),
                           server_cpu_pct=r.get("server_cpu_pct"), per_cpu_s=r.get("rps_per_server_cpu"),
                           ok=r["ok"], error=r.get("error"), latency_cdf=wrk_cdf(r),
                           extra={k: r[k] for k in ("upstream_cpu_pct", "others_cpu_pct", "wrk_cpu_pct")
                                  if k in r}))
        return out
    return rows


def h2_rows(doc, ctx) -> list[dict]:
    failed = {r["name"] for r in doc["results"] if not r["ok"]}
    return [row("tls-h2", name, metric="requests/s", throughput=r["rps"], variant="1 KiB, TLS 1.3, h2",
                p50_ms=r.get("p50_ms"), p99_ms=r.get("p99_ms"), duration_s=doc["args"]["seconds"],
                server_cpu_pct=r.get("server_cpu_pct"), ok=name not in failed, latency_cdf=r.get("latency_cdf"),
                error="a round had failed requests" if name in failed else None)
            for name, r in doc["best"].items()]


def cdn_rows(doc, ctx) -> list[dict]:
    best: dict = {}
    for r in doc:  # one row per round: each target's best round counts
        k = (r["name"], r["size"])
        if k not in best or r["rps"] > best[k]["rps"]:
            best[k] = r
    out = []
    for (name, size), r in best.items():
        cpu = r.get("cpu_us_per_req")
        out.append(row(ctx["scenario"], name, metric="responses/s", throughput=r["rps"],
                       variant=f"{size // 1024} KiB" if size >= 1024 else f"{size} B",
                       p50_ms=r.get("p50_ms"), p99_ms=r.get("p99_ms"), duration_s=r.get("duration_s"),
                       server_cpu_pct=r.get("server_cpu_pct"), per_cpu_s=1e6 / cpu if cpu else None,
                       ok=all(x["ok"] for x in doc if (x["name"], x["size"]) == (name, size)),
                       latency_cdf=wrk_cdf(r), extra={"mib_per_s": r.get("mib_per_s")}))
    return out


def fanout_rows(doc, ctx) -> list[dict]:
    out = []
    for r in doc["results"]:
        if "deliveries_per_s" not in r:
            continue
        out.append(row(ctx["scenario"], r["name"], metric="deliveries/s", throughput=r["deliveries_per_s"],
                       variant=f"{r['subscribers']} subscribers", workers=r.get("workers"),
                       p50_ms=r.get("p50_ms"), p99_ms=r.get("p99_ms"), duration_s=doc["params"]["seconds"],
                       server_cpu_pct=r.get("server_cpu_pct"), per_cpu_s=r.get("per_server_cpu_s"),
                       ok=r["ok"], error=r.get("error"), latency_cdf=r.get("latency_cdf"),
                       extra={"subscribers": r["subscribers"], "kib_per_conn": r.get("kib_per_conn"),
                              "deliveries_per_send": r.get("deliveries_per_send")}))
    return out


def dns_rows(doc, ctx) -> list[dict]:
    out = []
    for key, r in doc["results"].items():
        target, tool = key.split("/")
        cpu = r.get("server_cpu")  # CPU-seconds per second (a fraction of one core)
        # UDP: the queries still in flight when the load generator stops count as lost.
        lost = r.get("lost", 0) / max(1, r.get("sent") or r["qps"] * ctx["seconds"])
        out.append(row("dns", target if target != "farts" else "farts-dns", metric="queries/s",
                       throughput=r["qps"], variant=tool, p50_ms=r.get("p50_ms"), p99_ms=r.get("p99_ms"),
                       duration_s=ctx["seconds"], server_cpu_pct=100 * cpu if cpu else None,
                       ok=lost < 0.01, error=f"{lost:.1%} of the queries lost" if lost >= 0.01 else None,
                       extra={"avg_ms": r.get("avg_ms"), "lost": r.get("lost")}))
    return out


def db_rows(doc, ctx) -> list[dict]:
    return [row("db", "farts-db" if r["target"] == "farts" else "embedded-lmdb", metric="operations/s",
                throughput=r["ops"], variant=f"{r['workload']} x{r['clients']}", p50_ms=r["p50"],
                p99_ms=r["p99"], duration_s=r["seconds"], server_cpu_pct=r.get("server_cpu_pct"),
                latency_cdf=r.get("cdf"), extra={"clients": r["clients"], "workload": r["workload"]})
            for r in doc["results"]]


def replication_rows(doc, ctx) -> list[dict]:
    lag = doc["lag"]
    followers = [v for v in lag.values() if isinstance(v, dict)]
    return [row("replication", "farts-replication", metric="writes/s", throughput=lag["rate"],
                variant=f"3 nodes, {doc['params']['rate']} writes/s offered",
                p50_ms=1e3 * max(f["p50"] for f in followers), p99_ms=1e3 * max(f["p99"] for f in followers),
                duration_s=doc["params"]["seconds"], ok=doc["ok"],
                error=None if doc["ok"] else "catch-up or snapshot incomplete",
                extra={"ack_p50_ms": 1e3 * lag["ack_p50"], "ack_p99_ms": 1e3 * lag["ack_p99"],
                       "catchup": doc.get("catchup"), "snapshot": doc.get("snapshot"),
                       "latency": "replication lag to the slowest follower"})]


# ---------------------------------------------------------------- arguments

SMOKE_WRK = ["--seconds", "1", "--warmup", "0", "--wait-idle", "0"]


def http_argv(targets: list[str], smoke: bool) -> list[str]:
    return ["--only", ",".join(targets), *(SMOKE_WRK if smoke else ["--repeat", "3"])]


def h2_argv(targets: list[str], smoke: bool) -> list[str]:
    return ["--only", ",".join(targets),
            *(["--rounds", "1", "--seconds", "1", "--warmup", "1", "--idle-wait", "0"] if smoke else [])]


def cdn_argv(misses: bool) -> Callable[[list[str], bool], list[str]]:
    def argv(targets: list[str], smoke: bool) -> list[str]:
        out = ["--only", ",".join(targets)]
        if misses:  # 1 KiB only: misses at 100 KiB would write gigabytes into the caches
            out += ["--misses", "--sizes", "1024"]
        elif smoke:
            out += ["--sizes", "1024"]
        if smoke:
            out += ["--rounds", "1", "--seconds", "1", "--warmup", "1", "--idle-wait", "0"]
        return out
    return argv


def fanout_argv(n: int) -> Callable[[list[str], bool], list[str]]:
    def argv(targets: list[str], smoke: bool) -> list[str]:
        if smoke:  # plumbing only: a hundred subscribers, one short window
            return ["--only", ",".join(targets), "--subscribers", "100", "--seconds", "1",
                    "--warmup", "0.5", "--settle", "0.2", "--wait-idle", "0", "--no-perf",
                    "--client-procs", "1", "--drain", "5"]
        return ["--only", ",".join(targets), "--subscribers", str(n), "--repeat", "3"]
    return argv


def dns_argv(targets: list[str], smoke: bool) -> list[str]:
    tools = "dnsload,dnsperf" if have_exe("dnsperf") and not smoke else "dnsload"
    return ["--only", ",".join("farts" if t == "farts-dns" else t for t in targets), "--tools", tools, *(["--seconds", "1", "--repeat", "1"] if smoke else [])]


def db_argv(targets: list[str], smoke: bool) -> list[str]:
    out = ["--pin"] if have_exe("taskset") and (os.cpu_count() or 1) > 1 else []
    if "embedded-lmdb" not in targets:
        out.append("--no-embedded")
    if smoke:
        out += ["--seconds", "1", "--docs", "1000", "--clients", "1", "--workloads", "ping,find_one,insert_one"]
    return out


def replication_argv(targets: list[str], smoke: bool) -> list[str]:
    return ["--rate", "100", "--seconds", "2", "--catchup", "1000"] if smoke else []


HTTP = ("exe:wrk", "exe:taskset")
NGINX = (*HTTP, "exe:nginx")
H2 = ("exe:h2load", "exe:curl", "exe:taskset")
FANOUT = ("exe:taskset",)

SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("http-fixed", "HTTP/1.1 keep-alive, a 1 KiB fixed answer (wrk)", "http.py",
             {"farts-fixed": HTTP, "nginx-static-tuned": NGINX, "nginx-static": NGINX,
              "bare-uvloop-httptools": (*HTTP, "py:httptools", "py:uvloop"), "uvicorn": (*HTTP, "py:uvicorn")},
             http_argv, http_rows("http-fixed"), smoke_targets=("farts-fixed", "nginx-static-tuned")),
    Scenario("proxy", "HTTP/1.1 reverse proxy to one shared nginx upstream (wrk)", "http.py",
             {"farts-proxy": NGINX, "nginx-proxy": NGINX}, http_argv, http_rows("proxy")),
    Scenario("tls-h2", "HTTP/2 over TLS 1.3, a 1 KiB answer (h2load)", "h2.py",
             {"farts": H2, "nginx": (*H2, "exe:nginx")}, h2_argv, h2_rows),
    Scenario("cdn-hits", "CDN cache hits, 1 KiB and 100 KiB objects (wrk)", "cdn.py",
             {"farts-cdn": NGINX, "nginx-cache": NGINX, "nginx-cache-nosf": NGINX}, cdn_argv(False), cdn_rows,
             smoke_targets=("farts-cdn", "nginx-cache")),
    Scenario("cdn-misses", "CDN misses: every request a new key, filled from the origin (wrk)", "cdn.py",
             {"farts-cdn": NGINX, "nginx-cache": NGINX, "nginx-cache-nosf": NGINX}, cdn_argv(True), cdn_rows,
             smoke_targets=("farts-cdn", "nginx-cache")),
    *[Scenario(f"fanout-{label}", f"pub/sub fanout to {n:,} WebSocket subscribers", "fanout.py",
               {"farts": FANOUT, "socketify": (*FANOUT, "py:socketify"), "websockets": (*FANOUT, "py:websockets")},
               fanout_argv(n), fanout_rows, smoke=label == "1k", smoke_targets=("farts",),
               unsupported=("bench/fanout.py takes at most 15000 subscribers (it raises the server's "
                            "open-file limit to 20000, and one loopback address pair has ~28k ephemeral "
                            "ports): 100k needs more client addresses and a higher hard limit") if n > 15000 else None)
      for label, n in (("1k", 1000), ("10k", 10000), ("100k", 100000))],
    Scenario("dns", "geo DNS over UDP, the ECS query mix (dnsload, dnsperf)", "dns.py",
             {"farts-dns": ("exe:gcc", "exe:taskset"), "gdnsd": ("exe:gcc", "exe:taskset", "exe:gdnsd"),
              "knot": ("exe:gcc", "exe:taskset", "exe:knotd")}, dns_argv, dns_rows, smoke=False),
    Scenario("db", "the MongoDB endpoint under pymongo, against embedded LMDB", "db.py",
             {"farts-db": ("py:pymongo",), "embedded-lmdb": ("py:lmdb",)}, db_argv, db_rows),
    Scenario("replication", "3-node replication: lag at a steady write rate, catch-up, snapshot",
             "replication.py", {"farts-replication": ("py:pymongo",)}, replication_argv, replication_rows,
             smoke=False),
]}

