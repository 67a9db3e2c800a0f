"""Pub/sub across a mesh whose nodes are restarted one at a time, without sockets.

Three nodes' real ``PubSub``, ``PubSubPeer`` and mesh ``Bus`` on one ``FakeClock``; the
links between them simulated (one ordered stream each way, with a latency; a process that
left the mesh reads nothing more); each node in turn taken over by its next process the
way farts/release/handover.py does it (drain, leave the mesh, hand the history over,
rename the old origin and forward its events, the next process joins and serves, the
subscribers are told to reconnect over a spread and resume with their cursors); one
publisher posting to each node in turn, as tests/test_release_deploy.py's load does.
WebSocket subscribers are real ``WebSocketSubscriber`` objects on recording sinks.

``Sim(seed, history_size).run()`` plays one such rolling deploy and returns, per
subscriber, what it got; ``problems()`` lists every subscriber that lost an event or got
one twice without being told its resume was not recovered.
"""
from __future__ import annotations

import json
import random
from collections import Counter

from test_pubsub_service import RecordingSink

from farts.clock import HLC, FakeClock
from farts.config import Tenant
from farts.members import ALIVE, DRAINING, LEFT, SUSPECT, Member, MemberMap
from farts.mesh.bus import Bus
from farts.mesh.frames import BUS, FrameReader
from farts.metrics import Metrics
from farts.pubsub import PubSub
from farts.pubsub.config import PubSubConfig
from farts.pubsub.peer import PubSubPeer
from farts.pubsub.websocket import WebSocketSubscriber
from farts.transport.http import RAW

TENANT = Tenant("demo", ["demo.example"], api_keys=["key"])
STEP = 0.002          # the simulation advances the clock by this much between flushes


def server_frames(data: bytes, at: int) -> tuple[list[tuple[int, bytes]], int]:
    """(opcode, payload) of each whole unmasked frame in ``data`` from ``at``, and where the
    next one starts."""
    out = []
    while len(data) - at >= 2:
        n, head = data[at + 1] & 0x7F, 2
        if n == 126:
            if len(data) - at < 4:
                break
            n, head = int.from_bytes(data[at + 2:at + 4], "big"), 4
        elif n == 127:
            if len(data) - at < 10:
                break
            n, head = int.from_bytes(data[at + 2:at + 10], "big"), 10
        if len(data) - at < head + n:
            break
        out.append((data[at] & 0x0F, data[at + head:at + head + n]))
        at += head + n
    return out, at


class Wire:
    """One direction of a mesh link: frames arrive in order, ``latency`` later, while the
    receiving side still reads (its own direction, ``back``, is open)."""

    def __init__(self, sim: Sim, src: Proc, dst: Proc) -> None:
        self.sim, self.src, self.dst = sim, src, dst
        self.open = True
        self.back: Wire | None = None
        self.due = 0.0
        self.reader = FrameReader(1 << 24)
        self.reader.hello_seen = True

    def send(self, frame: bytes) -> bool:
        if not self.open:
            return False
        self.due = max(self.due, self.sim.clock.monotonic() + self.sim.latency())
        self.sim.clock.call_at(self.due, self._arrive, frame)
        return True

    def _arrive(self, frame: bytes) -> None:
        if self.back.open:
            for kind, payload in self.reader.feed(frame):
                assert kind == BUS
                self.dst.bus.deliver(self.src.node_id, payload)


class Proc:
    """One node process: its member map, mesh bus and pub/sub service."""

    def __init__(self, sim: Sim, node_id: str) -> None:
        self.sim, self.node_id = sim, node_id
        clock = sim.clock
        self.members = MemberMap()
        self.links: dict[str, Wire] = {}
        self.in_mesh = False
        self.incarnation = 0
        self.bus = Bus(node_id, clock.wall_ms() + sim.next_epoch(), self.members, HLC(clock=clock.wall_ms),
                       lambda: self.links, Metrics())
        self.pubsub = PubSub(node_id, sim.cfg, [TENANT], Metrics(), clock)
        self.peer = PubSubPeer(node_id, self.pubsub, self.bus, clock)
        self.serving = False
        # PubSub.start awaits nothing (it makes the fanout on the running loop): run it through
        start = self.pubsub.start()
        try:
            start.send(None)
        except StopIteration:
            pass


class Client:
    """A WebSocket subscriber's client side: resumes with its last event id when told to."""

    def __init__(self, sim: Sim, name: str) -> None:
        self.sim, self.name = sim, name
        self.got: list = []
        self.last: str | None = None
        self.not_recovered = 0
        self.sink: RecordingSink | None = None
        self.read_up_to = 0
        self.sub: WebSocketSubscriber | None = None
        self.proc: Proc | None = None

    def connect(self, proc: Proc) -> None:
        self.proc, self.sink, self.read_up_to = proc, RecordingSink(RAW), 0
        self.sub = WebSocketSubscriber(proc.pubsub, TENANT)
        self.sub.opened(self.sink, b"")
        cmd = {"op": "subscribe", "channel": "c"}
        if self.last is not None:
            cmd["since"] = self.last
        proc.pubsub.command(self.sub, json.dumps(cmd).encode())

    def read(self) -> None:
        if self.sink is None:
            return
        frames, self.read_up_to = server_frames(self.sink.data, self.read_up_to)
        for opcode, payload in frames:
            if opcode == 8:   # close 1012: come back to the node's next process
                assert int.from_bytes(payload[:2], "big") == 1012, payload
                self.sub.closed(None)
                self.sink = self.sub = None
                self.sim.clock.call_later(self.sim.rng.uniform(0.001, 0.05), self.connect, self.sim.node(self.proc))
                return
            if opcode != 1:
                continue
            msg = json.loads(payload)
            if msg.get("op") == "subscribed":
                self.not_recovered += msg["recovered"] is False and self.last is not None
            elif "data" in msg:
                self.got.append(msg["data"])
                self.last = msg["id"]


class Sim:
    def __init__(self, seed: int, history_size: int = 100, subscribers: int = 4, ids=("n1", "n2", "n3"),
                 duplicates: bool = True, flaps: bool = True, noise: bool = True, churn: bool = False) -> None:
        """``duplicates``: a restarted process's link to a peer may be replaced by a second
        one moments later (both sides dialed; the mesh keeps one and aborts the other, with
        what was in flight on it); ``flaps``: a peer may suspect the restarted process for a
        moment (a probe unanswered on a loaded box); ``noise``: every process broadcasts other
        messages now and then (status samples, master reports: a broadcast lost on an
        aborted link may first show as a gap in those); ``churn``: now and then a link
        between two running processes is closed and dialed again (a slow peer), with what
        was in flight on it and no change of membership."""
        self.duplicates, self.flaps, self.noise, self.churn = duplicates, flaps, noise, churn
        self.rng = random.Random(seed)
        self.clock = FakeClock()
        self.cfg = PubSubConfig(history_size=history_size, ping_interval=1000.0)
        self.ids = list(ids)
        self.stop = False                    # the publisher stops
        self._epochs = 0
        self.procs: dict[str, Proc] = {}     # node id -> its serving (newest) process
        self.every: list[Proc] = []          # every process, for the flushes
        self.clients: list[Client] = []
        self.published: list = []
        self.subscribers = subscribers
        self.log: list[str] = []

    def next_epoch(self) -> int:
        self._epochs += 1
        return self._epochs

    def latency(self) -> float:
        return self.rng.uniform(0.0005, 0.003)

    def node(self, proc: Proc) -> Proc:
        return self.procs[proc.node_id]

    # -- the mesh --------------------------------------------------------------------------
    def link(self, a: Proc, b: Proc, b_sees_a_after: float = 0.0) -> None:
        """A link comes up: ``a`` sees ``b`` alive before its first frame; ``b`` sees ``a``
        alive ``b_sees_a_after`` later (a restarted ``a`` refutes its "left" meanwhile)."""
        if not (a.in_mesh and b.in_mesh):
            return
        ab, ba = Wire(self, a, b), Wire(self, b, a)
        ab.back, ba.back = ba, ab
        a.links[b.node_id], b.links[a.node_id] = ab, ba
        a.members.update(Member(b.node_id, state=ALIVE, incarnation=b.incarnation))
        self.clock.call_later(b_sees_a_after, self._seen, b, a.node_id, ALIVE, a.incarnation)

    def replace_link(self, a: Proc, b: Proc) -> None:
        """A second link between them takes the first one's place; the first is aborted."""
        if a.links.get(b.node_id) is None or b.links.get(a.node_id) is None:
            return
        a.links[b.node_id].open = b.links[a.node_id].open = False
        ab, ba = Wire(self, a, b), Wire(self, b, a)
        ab.back, ba.back = ba, ab
        a.links[b.node_id], b.links[a.node_id] = ab, ba

    def flap(self, peer: Proc, node_id: str, back_after: float) -> None:
        """``peer`` suspects ``node_id`` for ``back_after`` seconds."""
        m = peer.members.get(node_id)
        if m is None or m.state != ALIVE:
            return
        peer.members.update(Member(node_id, state=SUSPECT, incarnation=m.incarnation))
        self.clock.call_later(back_after, self._seen, peer, node_id, ALIVE, m.incarnation + 1)

    def _noise(self, proc: Proc) -> None:
        if proc.in_mesh:
            proc.bus.broadcast("sim.noise", 0)
            self.clock.call_later(self.rng.uniform(0.1, 0.5), self._noise, proc)

    def _churn(self) -> None:
        a, b = self.rng.sample(self.ids, 2)
        self.replace_link(self.procs[a], self.procs[b])
        self.clock.call_later(self.rng.uniform(0.5, 3.0), self._churn)

    def say(self, proc: Proc, state: str) -> None:
        """``proc``'s new state reaches each member it has a link to, one latency later."""
        proc.incarnation += 1
        for peer_id in list(proc.links):
            self.clock.call_later(self.latency(), self._seen, self.procs[peer_id], proc.node_id, state,
                                  proc.incarnation)

    def _seen(self, peer: Proc, node_id: str, state: str, incarnation: int) -> None:
        m = peer.members.get(node_id)
        if m is not None and m.incarnation >= incarnation:
            return
        peer.members.update(Member(node_id, state=state, incarnation=incarnation))
        if state == LEFT:   # (the mesh closes its link to a member that left)
            wire = peer.links.pop(node_id, None)
            if wire is not None:
                wire.open = False

    def close_links(self, proc: Proc) -> None:
        proc.in_mesh = False
        for wire in proc.links.values():
            wire.open = False
        proc.links.clear()

    # -- a restart (farts/release/handover.py) ------------------------------------------------
    def restart(self, node_id: str) -> None:
        old = self.procs[node_id]
        self.log.append(f"{self.clock.now:.3f} restart {node_id}")
        old.serving = False                                # the listening sockets go over
        self.say(old, DRAINING)
        self.clock.call_later(self.rng.uniform(0.001, 0.05), self._leave, old)

    def _leave(self, old: Proc) -> None:
        self.say(old, LEFT)
        self.clock.call_later(0.05, self._released, old)   # (MeshService.stop: its links close 50 ms later)

    def _released(self, old: Proc) -> None:
        self.close_links(old)
        snapshot = old.pubsub.snapshot()
        old.pubsub.rename_origin(f"{old.node_id}~old")
        forwarded: list[dict] = []
        before = old.pubsub.on_local_event

        def forward(event: dict) -> None:
            before(event)
            forwarded.append(event)
        old.pubsub.on_local_event = forward
        new = Proc(self, old.node_id)
        new.incarnation = old.incarnation + 1
        new.pubsub.restore(snapshot)
        self.clock.call_later(self.rng.uniform(0.03, 0.3), self._start, old, new, forwarded)

    def _start(self, old: Proc, new: Proc, forwarded: list) -> None:
        rng = self.rng
        self.procs[new.node_id] = new
        self.every.append(new)
        new.in_mesh = new.serving = True
        for peer_id in self.ids:
            if peer_id != new.node_id:
                peer, up = self.procs[peer_id], rng.uniform(0.005, 0.06)
                self.clock.call_later(up, self.link, new, peer, rng.uniform(0.0, 0.01))
                if self.duplicates and rng.random() < 0.5:
                    self.clock.call_later(up + rng.uniform(0.001, 0.03), self.replace_link, new, peer)
                if self.flaps and rng.random() < 0.5:
                    self.clock.call_later(up + rng.uniform(0.05, 1.5), self.flap, peer, new.node_id,
                                          rng.uniform(0.1, 1.0))
        if self.noise:
            self._noise(new)
        self._forward(old, new, forwarded)
        for c in self.clients:
            if c.proc is old and c.sub is not None:
                self.clock.call_later(rng.uniform(0.0, 0.5), self._tell_to_reconnect, c)
        self.clock.call_later(0.6, setattr, old, "done", True)

    def _forward(self, old: Proc, new: Proc, forwarded: list) -> None:
        """The old process's events, applied by the new one (and broadcast) as they come."""
        while forwarded:
            event = forwarded.pop(0)
            if new.pubsub.apply_remote(event):
                new.pubsub.on_local_event(event)
        if not getattr(old, "done", False):
            self.clock.call_later(0.005, self._forward, old, new, forwarded)

    def _tell_to_reconnect(self, c: Client) -> None:
        if c.sub is not None:
            c.proc.pubsub.ask_to_reconnect(c.sub)

    # -- the load --------------------------------------------------------------------------
    def _publish(self, n: int, old_keepalive: set) -> None:
        node_id = self.ids[n % len(self.ids)]
        proc = self.procs[node_id]
        if not proc.serving:
            # the listener went over: the keep-alive connection to the old process takes one
            # more request; after it, the request waits in the accept queue for the next process
            stale = [p for p in self.every if p.node_id == node_id and p not in old_keepalive and not p.serving]
            if stale:
                old_keepalive.add(stale[-1])
                proc = stale[-1]
            else:
                self.clock.call_later(0.01, self._publish, n, old_keepalive)
                return
        proc.pubsub.publish(TENANT.id, "c", n)
        self.published.append(n)
        if not self.stop:
            self.clock.call_later(0.1 + self.rng.uniform(0.002, 0.02), self._publish, n + 1, old_keepalive)

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> Sim:
        import asyncio

        async def main():   # (on a running loop: the fanouts schedule their flushes on it)
            for node_id in self.ids:
                p = Proc(self, node_id)
                p.in_mesh = p.serving = True
                self.procs[node_id] = p
                self.every.append(p)
            for i, a in enumerate(self.ids):
                for b in self.ids[i + 1:]:
                    self.link(self.procs[a], self.procs[b])
            if self.noise:
                for p in self.every:
                    self._noise(p)
            if self.churn:
                self.clock.call_later(self.rng.uniform(0.5, 3.0), self._churn)
            for node_id in self.ids:
                for k in range(self.subscribers):
                    c = Client(self, f"{node_id}/{k}")
                    c.connect(self.procs[node_id])
                    self.clients.append(c)
            self.clock.call_later(0.05, self._publish, 0, set())
            order = [*self.ids[1:], self.ids[0]]   # (the first node, the deploy's runner, last)
            t = self.rng.uniform(3.0, 14.0)
            for node_id in order:
                self.clock.call_later(t, self.restart, node_id)
                t += self.rng.uniform(3.0, 6.0)
            self._advance(t + 3.0)
            self.stop = True
            self._advance(8.0)   # (the last catch-ups: SETTLE, retries)

        asyncio.run(main())
        return self

    def _advance(self, seconds: float) -> None:
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.advance(STEP)
            for p in self.every:
                p.pubsub.flush()
            for c in self.clients:
                c.read()

    def problems(self) -> list[str]:
        out = []
        want = Counter(self.published)
        for c in self.clients:
            got = Counter(c.got)
            lost = sorted(want - got)
            twice = sorted(got - want)
            if (lost or twice) and not c.not_recovered:
                out.append(f"{c.name}: lost {lost} twice {twice}")
        return out
