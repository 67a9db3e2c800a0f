"""A worker process: serves the node's public listeners (HTTP/HTTPS, DNS, MongoDB's
accepts) on the listening sockets the node process made, and talks to the node process
over its IPC channel.

What it serves itself, holding no state another process needs: fixed routes, the
reverse proxy (its own upstream pools), pub/sub subscribers (its own copy of the
history, fed by the node process in the node's order) and DNS (its own zone, geo index
and copy of the member map, whose changes and run-time TXT records the node process
sends). MongoDB connections it accepts are handed to the node process (sockets.py). A
publish (POST /api/publish) goes to the node process, which numbers it, sends it to the
mesh and relays it to every worker, this one included. Every other route (CDN, the
admin API on public hosts, ACME challenges, webhooks...) is forwarded with the reverse
proxy to the node process's "forwarded" loopback listener, where the one cache / queue /
store of the node is.

    python -m farts.workers.worker --ipc FD [--socket NAME=FD ...] [--log-level L]

(NAME: http, https, dns_udp, dns_tcp, db, handover; see supervisor.py)

The configuration and the rest come in the node's "hello" message.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import logging
import os
import pickle
import random
import signal
import socket
import sys

from farts.clock import LoopClock
from farts.config import Config, Route
from farts.members import MemberMap
from farts.metrics import Metrics
from farts.proxy import ProxyHandler, ProxyStats
from farts.proxy.config import Upstream
from farts.pubsub import PubSub
from farts.transport.client import Client
from farts.transport.http import Fixed
from farts.transport.listener import AccessLog, HTTPStats, Listener
from farts.transport.router import Router
from farts.transport.tls import ALPN, ALPN_HTTP1, CertStore

from .ipc import Channel, member_from_wire
from .metrics import OPEN_INTERVAL, PUSH_INTERVAL, snapshot
from .sockets import HandOver

log = logging.getLogger("farts.workers")

class Worker:
    def __init__(self, ipc: socket.socket, sockets: dict[str, socket.socket]) -> None:
        self.ipc_sock, self.sockets = ipc, sockets
        self.channel: Channel | None = None
        self.hello: asyncio.Future = asyncio.get_running_loop().create_future()
        self.done = asyncio.Event()
        self.refs = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.listeners: dict[str, Listener] = {}
        self.pubsub: PubSub | None = None
        self.backlog: list[dict] = []   # events relayed before the pub/sub was built
        self.members = MemberMap()      # the node's member map, as the node process sends it
        self.txt: dict[str, list[str]] = {}
        self.dns = None
        self.geo_loading: asyncio.Task | None = None   # (kept: tasks are weak)
        self.db_handover: HandOver | None = None
        self.clock: LoopClock | None = None
        self.stopping_dns: asyncio.Task | None = None

    def _reload_geo(self, path: str) -> None:
        async def load():
            try:
                await self.dns.geo.load(path)
            except Exception as e:   # (the node process built it; a failure here keeps the old one)
                log.error("worker: the geo database %s did not build here (%s): the old one stays", path, e)
        self.geo_loading = asyncio.ensure_future(load())

    # -- messages from the node process -------------------------------------------------
    def on_message(self, msg: dict) -> None:
        t = msg["t"]
        if t == "event":
            if self.pubsub is not None:
                self.pubsub.apply_relayed(msg["ev"])
            else:
                self.backlog.append(msg["ev"])
        elif t in ("published", "counted"):   # the answer to one of our requests
            fut = self.pending.pop(msg["ref"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg["ids"] if t == "published" else msg["counts"])
        elif t == "scrape":
            self.push(msg["ref"])
        elif t == "count":   # the node process sums the subscribers of every worker
            fanout = self.pubsub.fanout
            self.channel.send({"t": "counted", "ref": msg["ref"], "counts": [fanout.count(k) for k in msg["keys"]]})
        elif t == "member":
            self.members.update(member_from_wire(msg["m"]))
        elif t == "txt":
            self.txt[msg["name"]] = msg["values"]
            if self.dns is not None:
                self.dns.set_txt(msg["name"], msg["values"])
        elif t == "geo":
            if self.dns is not None and msg["path"] != self.dns.geo.path:
                self._reload_geo(msg["path"])
        elif t == "hello":
            for m in msg["members"]:
                self.members.update(member_from_wire(m))
            self.txt.update(msg["txt"])
            if not self.hello.done():
                self.hello.set_result(msg)
        elif t == "drain":
            self.drain()
        elif t == "reconnect":
            self.send_subscribers_over(msg["spread"])
        elif t == "stop":
            self.done.set()
        else:
            log.warning("worker: unknown IPC message %r", t)

    def on_lost(self) -> None:
        # The node process is gone: nothing to serve for (its listening sockets go with us).
        log.error("worker %d: the node process is gone, exiting", os.getpid())
        os._exit(1)

    def ask(self, msg: dict) -> asyncio.Future:
        """Sends a request to the node process; the future gets its answer."""
        ref = msg["ref"] = next(self.refs)
        fut = self.pending[ref] = asyncio.get_running_loop().create_future()
        self.channel.send(msg)
        return fut

    async def publish(self, tenant_id: str, messages: list) -> list[str]:
        return await self.ask({"t": "publish", "tenant": tenant_id, "messages": messages})

    async def count(self, keys: list[str]) -> list[int]:
        return await self.ask({"t": "count", "keys": keys})

    # -- lifetime -----------------------------------------------------------------------
    async def run(self) -> None:
        self.channel = await Channel.open(self.ipc_sock, self.on_message, self.on_lost)
        hello = await self.hello
        cfg: Config = pickle.loads(hello["config"])
        clock = self.clock = LoopClock()
        metrics = Metrics()
        client = Client(clock)
        stats = HTTPStats(metrics, self.listeners, cfg.node.region, cfg.admin.slow_requests_kept)
        proxy_stats = ProxyStats(metrics)
        self.pubsub = ps = PubSub(cfg.node.id, cfg.pubsub, cfg.tenants, metrics, clock)
        await ps.start()
        ps.forward_publish, ps.count_everywhere = self.publish, self.count
        for ev in self.backlog:
            ps.apply_relayed(ev)
        self.backlog = []
        upstreams = {name: ProxyHandler(name, up, cfg.node.id, proxy_stats, client,
                                        cfg.limits.slow_request_seconds)
                     for name, up in cfg.upstreams.items()}
        # (Never marked down after failed connects: there is no other node process to try.)
        to_node = ProxyHandler("node-process", Upstream(servers=[hello["forward_to"]], max_fails=1 << 30),
                               cfg.node.id, proxy_stats, client, cfg.limits.slow_request_seconds)

        def handler(route: Route):
            if route.kind == "static":
                return Fixed(route.status, route.body.encode(), route.content_type.encode())
            if route.kind == "proxy":
                return upstreams[route.upstream]
            if route.kind == "pubsub":
                return ps
            return to_node

        routes = [(r, handler(r)) for r in cfg.routes]
        routes += [(Route(**fields), to_node) for fields in hello["forwarded_routes"]]
        router = Router(cfg.tenants, routes, cfg.limits.max_body_bytes, cfg.http.unknown_host_status,
                        cfg.http.encoded_slashes)
        access = AccessLog(cfg.http.access_log_sample, cfg.http.access_log)
        certs = None
        if "dns_udp" in self.sockets:
            from farts.dns.geoindex import GeoSource  # (the geo index builder only when used)
            from farts.dns.server import DNSServer
            # The database the node process serves (the master's published one, or the configured one)
            geo = GeoSource(hello["geo"], cfg.dns.rebuild_interval, clock=clock) if hello.get("geo") else None
            self.dns = DNSServer(cfg.dns, self.members, metrics, cfg.source, geo=geo, limits=cfg.limits,
                                 clock=clock)
            for name, values in self.txt.items():
                self.dns.set_txt(name, values)
            # Its geo index first: a worker answering before its index is built would answer
            # otherwise than the others (the default region), which one depending on the
            # query's source port. (Queries wait meanwhile in the socket, read once it serves.)
            await self.dns.geo.check()
            await self.dns.start(sockets=(self.sockets.pop("dns_udp"), self.sockets.pop("dns_tcp")))
        if "db" in self.sockets:
            failed = metrics.counter("farts_worker_handover_failed_total", "MongoDB connections a worker "
                                     "accepted and could not hand to the node process (closed)")
            self.db_handover = HandOver(self.sockets.pop("db"), self.sockets.pop("handover"), failed.inc)
            self.db_handover.start()
        for name, sock in self.sockets.items():
            li = Listener(name, name, router, cfg.limits, stats, access, clock,
                          h2c=name == "http" and cfg.listeners.http.h2c)
            context = None
            if name == "https":
                https = cfg.listeners.https
                certs = CertStore(cfg.path(https.cert_dir), clock, ALPN if https.http2 else ALPN_HTTP1)
                context = certs.listening
                watch = certs.watch(https.reload_interval)
            await li.start("", 0, context, sock=sock)
            self.listeners[name] = li
        self.metrics, self.slow_log, self.slow_sent = metrics, stats.slow_log, None
        push = clock.every(PUSH_INTERVAL, lambda now: self.push())
        self.open_sent = 0
        report = clock.every(OPEN_INTERVAL, lambda now: self.report_open())
        gc.freeze()   # (what is built lives as long as the worker: farts/node.py says why)
        self.channel.send({"t": "ready", "pid": os.getpid()})
        await self.done.wait()
        # Drain: stop accepting (the node keeps the listening sockets, whose queued
        # connections the next worker takes), finish or close what is open.
        push.cancel()
        report.cancel()
        if certs is not None:
            watch.cancel()
        if self.db_handover is not None:
            self.db_handover.stop()
        if self.dns is not None:
            await self.dns.stop()
        if self.stopping_dns is not None:
            await self.stopping_dns
        for li in self.listeners.values():
            await li.close()
        await ps.stop()
        for up in (*upstreams.values(), to_node):
            up.close()
        client.close()
        self.push()
        self.channel.close()

    # -- a restart (farts/release/handover.py) ----------------------------------------------
    def drain(self) -> None:
        """The next process's workers serve this worker's listening sockets from now on (the
        node process handed them over): it stops accepting, as the node process's own
        listeners do (each HTTP/1.1 connection closes after its next answer, HTTP/2 ones get
        a GOAWAY), stops answering DNS and handing MongoDB connections over, and finishes
        what is open until told to stop."""
        for li in self.listeners.values():
            li.drain()
        if self.db_handover is not None:
            self.db_handover.stop()
            self.db_handover = None
        if self.dns is not None:
            self.stopping_dns, self.dns = asyncio.ensure_future(self.dns.stop()), None

    def send_subscribers_over(self, spread: float) -> None:
        """The next process serves: each subscriber is asked to reconnect (with its cursor),
        spread over ``spread`` seconds, as the node process asks its own."""
        ps = self.pubsub
        for sub in [*ps.channels.websockets, *ps.channels.streams]:
            self.clock.call_later(random.random() * spread, ps.ask_to_reconnect, sub)

    def new_slow(self) -> list[dict]:
        """The slow requests logged since the last push (for the node's /api/slow)."""
        entries = list(self.slow_log)
        for i in range(len(entries) - 1, -1, -1):
            if entries[i] is self.slow_sent:
                entries = entries[i + 1:]
                break
        if entries:
            self.slow_sent = entries[-1]
        return entries

    def open_connections(self) -> int:
        """Client connections open now: HTTP (WebSocket and SSE subscribers included) and
        DNS over TCP."""
        return (sum(li.open for li in self.listeners.values())
                + (self.dns.kit.open if self.dns is not None else 0))

    def report_open(self) -> None:
        """The open connections to the node when they changed (what a crash would lose)."""
        n = self.open_connections()
        if n != self.open_sent:
            self.open_sent = n
            self.channel.send({"t": "open", "n": n})

    def push(self, ref: int | None = None) -> None:
        """This worker's metrics to the node: every PUSH_INTERVAL (so that a worker that
        dies leaves its counters), and as the answer to a scrape (``ref``)."""
        msg = {"t": "metrics", "snapshot": snapshot(self.metrics), "open": self.open_connections(),
               "slow": self.new_slow()}
        if ref is not None:
            msg["ref"] = ref
        self.channel.send(msg)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="farts.workers.worker")
    p.add_argument("--ipc", type=int, required=True)
    p.add_argument("--socket", action="append", default=[], metavar="NAME=FD")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[worker {os.getpid()}]: %(message)s")
    # A terminal's Ctrl-C reaches the whole process group: the node process drains the
    # workers in order. SIGTERM to a worker alone drains it (and the node starts another).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sockets = {name: socket.socket(fileno=int(fd)) for name, fd in (a.split("=", 1) for a in args.socket)}

    async def run() -> None:
        worker = Worker(socket.socket(fileno=args.ipc), sockets)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.done.set)
        await worker.run()

    import uvloop
    uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
