"""The node process's side of the workers: makes the public listening sockets, starts
the worker processes, relays pub/sub to them, sums their metrics, restarts the ones
that exit, and drains them on shutdown.

Listening sockets (sockets.py): for each public listener (HTTP, HTTPS, DNS over UDP and
TCP, the MongoDB endpoint), one SO_REUSEPORT socket per worker, each inherited by its
worker. The node process keeps its copy of every socket and never reads it: when a
worker dies, the connections queued on its socket wait there for the worker started in
its place instead of being reset with it (what a socket owned by the worker alone would
do). DNS: each worker answers from its own copy of the zone, the member map and the geo
index; the node process sends it the member map's changes (mesh) and the zone's run-time
TXT records as they change. MongoDB: the workers hand each accepted connection to the
node process (sockets.py says why), which serves it with its one store.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import pickle
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import farts
from farts.metrics import Metrics
from farts.transport.listener import HTTPStats, Listener
from farts.transport.router import Router

from .hop import ForwardedRouter
from .ipc import Channel, member_to_wire
from .limits import worker_config
from .metrics import Sum, View
from .sockets import Adopter, dns_groups, handed_over, handover_pair, reuseport_group

if TYPE_CHECKING:
    from farts.node import Node

log = logging.getLogger("farts.workers")

START_TIMEOUT = 60.0    # seconds for a worker to say "ready" (imports on a loaded machine)
DRAIN_TIMEOUT = 8.0     # seconds for a worker to finish after "stop", then it is killed
RESTART_DELAYS = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0)   # by crashes in a row (a worker that served
STABLE = 10.0           # for STABLE seconds resets the count)
MAX_UNSENT = 256 * 1024 * 1024   # bytes queued to a worker that does not read them
ASK_TIMEOUT = 2.0       # seconds a worker has to answer (/api/presence counts, /metrics)


class WorkerSlot:
    """One worker's place: the process in it now and what the node knows of it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.ready: asyncio.Future | None = None
        self.open = 0            # its open client connections, as of its last report
        self.crashes = 0         # in a row
        self.started = 0.0
        self.adopter: Adopter | None = None   # the MongoDB connections it hands over


class Supervisor:
    def __init__(self, node: Node, count: int) -> None:
        self.node, self.count = node, count
        self.sockets: dict[str, list[socket.socket]] = {}
        self.slots = [WorkerSlot(i) for i in range(count)]
        self.sum = Sum(node.metrics)
        self.view = View(self.sum)   # what the status page reads with workers
        self.started = self.stopping = False
        self.forwarded_routes: list[dict] = []
        self.forward_to = ""
        # (the node's budgets divided among the workers: limits.py)
        self.worker_config = pickle.dumps(worker_config(node.cfg, count))
        self._tasks: set[asyncio.Task] = set()   # exit watchers, presence counts
        self.refs = itertools.count(1)
        self.asking: dict[int, asyncio.Future] = {}   # ref -> a worker's answer (ask_all)
        m = node.metrics
        self.restarts = m.counter("farts_worker_restarts_total", "Worker processes started again after "
                                  "they exited", ("reason",))
        self.lost = m.counter("farts_worker_lost_connections_total", "Client connections open on a worker "
                              "when it died (as of its last report, at most 0.1 s before)")
        self.behind = m.counter("farts_worker_too_far_behind_total", "Workers killed for not reading "
                                "what the node process sends them (pub/sub events)")
        m.gauge("farts_workers", "Worker processes serving the public listeners", self.serving)
        ps = node.pubsub
        if ps is not None:
            ps.on_delivered.append(self.relay)
        self.txt: dict[str, list[str]] = {}   # the zone's run-time TXT records, for new workers
        if node.dns is not None:
            node.dns.on_txt.append(self.txt_changed)
            node.members.on_change(self.member_changed)
            node.dns.geo.on_swap.append(self.geo_changed)

    # -- starting ------------------------------------------------------------------------
    async def start(self, public: Router, service_routes: list) -> None:
        """Listens (the workers' sockets, and the loopback listener where the workers
        forward the routes served by the node process), then starts the workers."""
        node, cfg = self.node, self.node.cfg
        n = self.count
        for name in ("http", "https"):   # (those of the process this one restarts, or new ones)
            lc = getattr(cfg.listeners, name)
            if lc.enabled:
                self.sockets[name] = handed_over(name, n) or reuseport_group(f"listeners.{name}", lc.host,
                                                                              lc.port, n)
        if node.dns is not None:
            udp, tcp = handed_over("dns_udp", n), handed_over("dns_tcp", n)
            self.sockets["dns_udp"], self.sockets["dns_tcp"] = (udp, tcp) if udp and tcp else \
                dns_groups(cfg.dns.host, cfg.dns.port, n)
            node.dns.address = self.sockets["dns_udp"][0].getsockname()[:2]
        if node.db is not None:
            self.sockets["db"] = handed_over("db", n) or reuseport_group("db", cfg.db.host, cfg.db.port, n)
            node.db.kit.address = self.sockets["db"][0].getsockname()[:2]
        # All forwarded requests come from this host's loopback: no per-IP limit there.
        # They were counted (and logged) by the worker that took them: the hop has its own,
        # unexported, metrics.
        limits = dataclasses.replace(cfg.limits, max_connections_per_ip=cfg.limits.max_connections)
        hop: dict[str, Listener] = {}
        # Its handlers see the client's address and scheme, not the worker's (hop.py).
        forwarded = Listener("forwarded", "http", ForwardedRouter(public), limits, HTTPStats(Metrics(), hop), None,
                             node.clock)
        hop["forwarded"] = forwarded
        await forwarded.start("127.0.0.1", 0)
        node.listeners["forwarded"] = forwarded
        self.forward_to = "{}:{}".format(*forwarded.address)
        self.forwarded_routes = [dataclasses.asdict(route) for route, _ in service_routes]
        for slot in self.slots:
            await self.spawn(slot)
        try:
            await asyncio.wait_for(asyncio.gather(*(s.ready for s in self.slots)), START_TIMEOUT)
        except (TimeoutError, OSError) as e:
            await self.stop()
            if isinstance(e, OSError):
                raise
            raise OSError(0, f"node.workers: not every worker was ready in {START_TIMEOUT:.0f} s") from None
        self.started = True

    async def spawn(self, slot: WorkerSlot) -> None:
        loop = asyncio.get_running_loop()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = {name: group[slot.index].fileno() for name, group in self.sockets.items()}
        if "db" in self.sockets:
            pair, handover = handover_pair()
            slot.adopter = Adopter(pair, self.node.db.adopt)
            fds["handover"] = handover.fileno()
        args = [sys.executable, "-m", "farts.workers.worker", "--ipc", str(theirs.fileno()),
                "--log-level", logging.getLevelName(logging.getLogger().getEffectiveLevel())]
        for name, fd in fds.items():
            args += ["--socket", f"{name}={fd}"]
        # The same interpreter and the same farts (not one found in the working folder).
        root = str(Path(farts.__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONSAFEPATH": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        slot.ready = loop.create_future()
        slot.proc = await asyncio.create_subprocess_exec(
            *args, pass_fds=(theirs.fileno(), *fds.values()), env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=sys.stderr.fileno())   # stdout is the node's banner
        theirs.close()
        if "db" in self.sockets:
            handover.close()
        slot.started = loop.time()
        slot.channel = await Channel.open(mine, lambda msg: self.on_message(slot, msg), lambda: None)
        history = self.node.pubsub.events_after({}, limit=1 << 30) if self.node.pubsub is not None else []
        slot.channel.send({"t": "hello", "index": slot.index, "config": self.worker_config,
                           "forward_to": self.forward_to, "forwarded_routes": self.forwarded_routes,
                           "members": [member_to_wire(m) for m in self.node.members.members()],
                           "txt": self.txt, "geo": self._geo_path()})
        for ev in history:   # (the same event stream as the other workers, from its start)
            slot.channel.send({"t": "event", "ev": ev})
        self._run(self.watch(slot, slot.proc))

    def _run(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- messages from the workers ---------------------------------------------------------
    def on_message(self, slot: WorkerSlot, msg: dict) -> None:
        t = msg["t"]
        if t == "publish":
            self.publish(slot, msg)
        elif t == "count":
            self._run(self.count_subscribers(slot, msg))
        elif t == "counted":
            self.answered(msg)
        elif t == "metrics":
            self.sum.update(slot.index, msg["snapshot"])
            slot.open = msg["open"]
            self.node.stats.slow_log.extend(msg["slow"])   # /api/slow and the status page
            if "ref" in msg:
                self.answered(msg)
        elif t == "open":
            slot.open = msg["n"]
        elif t == "ready":
            log.info("worker %d (pid %d) ready", slot.index, msg["pid"])
            if not slot.ready.done():
                slot.ready.set_result(None)
        else:
            log.warning("unknown IPC message %r from worker %d", t, slot.index)

    def publish(self, slot: WorkerSlot, msg: dict) -> None:
        """Numbers the events here (relayed to every worker as they are delivered), then
        answers with their ids: after the events on the same channel, so the worker has
        applied them when it answers its client."""
        ps = self.node.pubsub
        ids = [ps.publish_json(msg["tenant"], channel, data) for channel, data in msg["messages"]]
        slot.channel.send({"t": "published", "ref": msg["ref"], "ids": ids})

    async def ask_all(self, msg: dict) -> list[dict]:
        """Sends ``msg`` to every running worker; their answers (those in ASK_TIMEOUT)."""
        loop, asked = asyncio.get_running_loop(), []
        for slot in self.slots:
            if slot.channel is not None and slot.ready.done():
                ref = next(self.refs)
                self.asking[ref] = loop.create_future()
                asked.append(ref)
                slot.channel.send({**msg, "ref": ref})
        if not asked:
            return []
        done, _ = await asyncio.wait([self.asking[ref] for ref in asked], timeout=ASK_TIMEOUT)
        for ref in asked:
            self.asking.pop(ref, None)
        return [f.result() for f in done]

    def answered(self, msg: dict) -> None:
        fut = self.asking.pop(msg["ref"], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def count_subscribers(self, slot: WorkerSlot, msg: dict) -> None:
        """/api/presence on a worker: the subscribers of every worker, summed (a worker
        that does not answer in time counts 0)."""
        keys = msg["keys"]
        totals = [0] * len(keys)
        for answer in await self.ask_all({"t": "count", "keys": keys}):
            totals = [a + b for a, b in zip(totals, answer["counts"], strict=True)]
        if slot.channel is not None:
            slot.channel.send({"t": "counted", "ref": msg["ref"], "counts": totals})

    async def render_metrics(self) -> bytes:
        """/metrics: every worker's metrics as of now (each answers with a snapshot), summed
        with this process's."""
        await self.ask_all({"t": "scrape"})
        return self.sum.render()

    def relay(self, event: dict) -> None:
        """Every event the node's pub/sub applies (published here or from the mesh), to
        every worker, in the one order."""
        msg = {"t": "event", "ev": event}
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.send(msg)
                if slot.channel.unsent() > MAX_UNSENT and slot.proc.returncode is None:
                    # A worker that does not read its channel (stuck, or far behind a
                    # burst) is replaced: the next one starts from the history.
                    log.error("worker %d (pid %d) is %d bytes behind on its channel: killed", slot.index,
                              slot.proc.pid, slot.channel.unsent())
                    self.behind.inc()
                    slot.proc.kill()

    def member_changed(self, old, new) -> None:
        """The member map changed (the mesh): every worker's DNS follows."""
        self.send_all({"t": "member", "m": member_to_wire(new)})

    def _geo_path(self) -> str | None:
        return self.node.dns.geo.path if self.node.dns is not None else None

    def geo_changed(self, data) -> None:
        """The node's DNS swapped its geo index: to another database (the one the master
        published), every worker builds that one too; a rebuild of the same file each
        worker does on its own timer."""
        self.send_all({"t": "geo", "path": data.path})

    def txt_changed(self, name: str, values: list[str]) -> None:
        if values:
            self.txt[name] = values
        else:
            self.txt.pop(name, None)
        self.send_all({"t": "txt", "name": name, "values": values})

    def send_all(self, msg: dict) -> None:
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.send(msg)

    # -- exits and restarts ----------------------------------------------------------------
    async def watch(self, slot: WorkerSlot, proc) -> None:
        code = await proc.wait()
        loop = asyncio.get_running_loop()
        slot.channel.close()
        slot.channel = None
        self.sum.retire(slot.index)
        if self.stopping:
            return
        if not self.started and not slot.ready.done():   # one that cannot start fails the start
            slot.ready.set_exception(OSError(0, f"node.workers: worker {slot.index} exited before it was "
                                                f"ready (status {code}; its log is above)"))
            return
        reason = "killed" if code < 0 else "exited"
        log.error("worker %d (pid %d) %s (%s); starting another", slot.index, proc.pid, reason,
                  f"signal {-code}" if code < 0 else f"status {code}")
        self.restarts.inc((reason,))
        if code != 0:
            self.lost.inc(amount=slot.open)
        slot.open = 0
        slot.crashes = 0 if loop.time() - slot.started > STABLE else slot.crashes + 1
        await asyncio.sleep(RESTART_DELAYS[min(slot.crashes, len(RESTART_DELAYS) - 1)])
        if not self.stopping:
            await self.spawn(slot)

    # -- what the node reads -----------------------------------------------------------------
    def urls(self) -> dict[str, str]:
        out = {}
        for name, group in self.sockets.items():
            if name not in ("http", "https"):   # (DNS and MongoDB: the node reads their services)
                continue
            host, port = group[0].getsockname()[:2]
            out[name] = f"{name}://{f'[{host}]' if ':' in host else host}:{port}/"
        return out

    def serving(self) -> int:
        return sum(1 for s in self.slots if s.ready is not None and s.ready.done() and s.proc.returncode is None)

    def states(self) -> dict[str, str]:
        up = self.serving()
        state = "ok" if up == self.count else f"{up} of {self.count} workers up"
        return {name: state for name in self.sockets}

    def open_connections(self) -> int:
        return sum(s.open for s in self.slots)

    # -- a restart (farts/release/handover.py) --------------------------------------------------
    def hand_over(self) -> list[tuple[str, socket.socket]]:
        """The workers' listening sockets, for the process that takes this one over (its
        workers serve them: sockets.handed_over), named "workers.KEY.INDEX"; the workers
        are told to drain, and are not replaced when they exit."""
        self.stopping = True
        self.send_all({"t": "drain"})
        return [(f"workers.{key}.{i}", sock) for key, group in self.sockets.items() for i, sock in enumerate(group)]

    def send_subscribers_over(self, spread: float) -> None:
        """The next process serves: the workers ask their subscribers to reconnect."""
        self.send_all({"t": "reconnect", "spread": spread})

    # -- stopping ----------------------------------------------------------------------------
    async def stop(self) -> None:
        """Drains the workers (each stops accepting and closes its connections), then
        closes the listening sockets."""
        self.stopping = True
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.returncode is None]
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.send({"t": "stop"})
        if procs:
            done, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs],
                                               timeout=DRAIN_TIMEOUT)
            for p in procs:
                if p.returncode is None:
                    log.warning("worker pid %d did not drain in %.0f s: killed", p.pid, DRAIN_TIMEOUT)
                    p.send_signal(signal.SIGKILL)
            if pending:
                await asyncio.wait(pending)
        for t in list(self._tasks):
            t.cancel()
        for slot in self.slots:
            if slot.adopter is not None:
                slot.adopter.close()
        for group in self.sockets.values():
            for s in group:
                s.close()
