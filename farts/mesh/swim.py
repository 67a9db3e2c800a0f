"""SWIM membership with Lifeguard's suspicion, as a sans-IO state machine.

Nothing here reads a clock or touches a socket: every call takes ``now`` (seconds,
any monotonic origin), messages arrive through ``receive(now, src, msg)`` and leave
through ``outbox`` as ``(dest_id, msg)`` values, and membership changes are queued in
``changes``. The same class runs inside a node (farts/mesh/service.py drives it with
loop time over TLS links) and in a simulated network (tests, bench/mesh_sim.py).

The protocol (Das et al., "SWIM", 2002; Dadgar et al., "Lifeguard", 2018):

- every ``probe_interval`` one member, round-robin over a shuffled list, gets a
  ``ping``; no ``ack`` within ``probe_timeout`` → ``k`` other members get a
  ``preq`` (ping-request) and probe it for us; still no ack at the end of the
  interval → the member is *suspect*;
- a member that hears of a suspicion probes the suspect at once (not in its
  turn), so confirmations come within one protocol period;
- a suspicion becomes *dead* after a timeout that starts at
  ``suspicion_max_mult`` x the minimum and shrinks towards the minimum as other
  members independently confirm it (Lifeguard: a lone, possibly overloaded
  prober cannot kill a node quickly; a consensus can);
- Lifeguard's local health: a member asked to probe for us answers ``nack`` when the
  target stays silent; when even the nacks do not come back (or we had to refute a
  suspicion of ourselves) the fault is likely ours (CPU starved, paused), and we wait
  one more probe period and timeout per step of ``health`` (0..``max_local_health``)
  before accusing anyone; every ack takes a step back;
- incarnation numbers order claims about a member: a live member that hears it is
  suspected (or declared dead, or left) bumps its incarnation and says ``alive``,
  which overrides any claim with a lower incarnation (a *refutation*);
- changes travel piggybacked on probe traffic, each one ``retransmit_mult x
  log10(n)`` times, fewest-sent first, and always first the news about the
  receiver itself (so a suspected member hears it at its next contact);
- a full state exchange (``sync``) on every new link and every
  ``push_pull_interval`` with a random member heals what gossip missed (after a
  partition, each side's "dead" list meets the live member, who refutes it; one
  member believed dead is also synced with each time, so a side that lost all its
  links still finds its way back). A
  "dead" learned by sync counts only as "suspect": we verify it ourselves;
- a member that declares another dead tells every live member directly (once per
  death; piggybacks would take up to a protocol period per hop);
- ``leave()`` tells every member we left; left members are not probed.

Wire values (msgpack-friendly lists): ``["ping", seq, gossip]``,
``["ack", seq, gossip]``, ``["preq", seq, target, gossip]``, ``["nack", seq]``, ``["gossip", gossip]``,
``["sync", reply_wanted, states]``; a gossip entry is ``[state, id, incarnation,
meta, from]`` and a state record ``[id, incarnation, state, meta]``.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from farts.members import ALIVE, DEAD, LEFT, SUSPECT

# Most gossip entries piggybacked on one message (TCP has no MTU to fit, but a
# message must stay small next to the bus traffic it shares the link with).
MAX_PIGGYBACK = 8


@dataclass(frozen=True)
class SwimConfig:
    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_probes: int = 3
    suspicion_timeout: float = 1.5
    suspicion_max_mult: float = 2.0
    retransmit_mult: int = 4
    push_pull_interval: float = 15.0
    # Lifeguard's local health: up to this many extra probe periods of patience while
    # this node itself looks slow (its indirect probes' nacks do not come back).
    max_local_health: int = 8
    # Dead and left members are forgotten after this long (until then a dead one is
    # still dialed, so a healed partition finds it again).
    forget_after: float = 3600.0


@dataclass
class Peer:
    """A member as this node sees it."""
    id: str
    incarnation: int
    state: str
    meta: dict
    since: float                       # when it entered this state
    last_heard: float | None = None    # last message received from it
    rtt: float | None = None           # last direct probe round trip
    # While suspect: when the suspicion started, who reported it, its bounds.
    suspected_at: float = 0.0
    suspectors: set = field(default_factory=set)
    suspicion_min: float = 0.0
    suspicion_max: float = 0.0


@dataclass
class _Probe:
    target: str
    sent: float
    direct_deadline: float
    end: float
    indirect_sent: bool = False
    acked: bool = False
    nacks_expected: int = 0
    nacks: int = 0


class Swim:
    def __init__(self, me: str, meta: dict, cfg: SwimConfig, now: float,
                 rng: random.Random | None = None, incarnation: int = 0) -> None:
        self.me, self.meta, self.cfg = me, dict(meta), cfg
        self.rng = rng or random.Random()
        self.incarnation = incarnation
        self.peers: dict[str, Peer] = {}
        self.leaving = False
        self.outbox: list[tuple[str, list]] = []
        # (peer, old state or None) for every change of a peer's state, incarnation or meta.
        self.changes: list[tuple[Peer, str | None]] = []
        self.rtt_samples: list[tuple[str, float]] = []
        self.forgotten: list[str] = []   # dead or left members dropped after forget_after
        self.stats = {"suspicions": 0, "refutations": 0, "deaths": 0, "probes": 0,
                      "indirect_probes": 0, "probe_failures": 0}
        self._seq = 0
        self._probes: dict[int, _Probe] = {}
        self._probing: set[str] = set()           # targets with a probe in flight
        # Indirect probes we run for others: our seq -> [requester, their seq, expiry, nack due or None].
        self._relays: dict[int, list] = {}
        # Lifeguard's local health multiplier: 0 healthy; each step adds a probe period
        # and a probe timeout of patience (a slow node must not accuse healthy ones).
        self.health = 0
        self._order: list[str] = []
        self._next_probe = now + self.rng.uniform(0, cfg.probe_interval)
        self._next_sync = now + cfg.push_pull_interval * self.rng.uniform(0.5, 1.0)
        self._suspects: set[str] = set()
        # Gossip queue: peer id -> [entry, times sent]; one (the newest) entry per member.
        self._gossip: dict[str, list] = {}
        self._n_live_cache: int | None = None

    # ---- what the driver calls -------------------------------------------------

    def add_peer(self, now: float, node_id: str, incarnation: int, meta: dict) -> None:
        """A member announced itself (a mesh HELLO, a seed): an ``alive`` claim."""
        self._alive(now, node_id, incarnation, meta)

    def connected(self, now: float, node_id: str) -> None:
        """A new link to node_id: exchange full state with it."""
        self._send(node_id, ["sync", True, self._states()])

    def link_lost(self, now: float, node_id: str) -> None:
        """The transport lost its link to node_id: probe it now instead of in its turn."""
        p = self.peers.get(node_id)
        if p is not None and p.state in (ALIVE, SUSPECT) and node_id not in self._probing:
            self._probe(now, node_id)

    def leave(self, now: float) -> None:
        """Tells every member we are leaving; they mark us ``left`` and stop probing us."""
        self.leaving = True
        self.incarnation += 1
        entry = [LEFT, self.me, self.incarnation, None, self.me]
        for p in self.peers.values():
            if p.state in (ALIVE, SUSPECT):
                self.outbox.append((p.id, ["gossip", [entry]]))

    def announce(self, now: float, meta: dict) -> None:
        """This node's metadata changed (it drains, say): a new incarnation carries it to
        every live member at once, and on in the gossip."""
        self.meta = dict(meta)
        self.incarnation += 1
        entry = [ALIVE, self.me, self.incarnation, self.meta, self.me]
        self._queue(self.me, entry)
        for p in self.peers.values():
            if p.state in (ALIVE, SUSPECT):
                self.outbox.append((p.id, ["gossip", [entry]]))

    def next_wakeup(self) -> float:
        t = min(self._next_probe, self._next_sync)
        for pr in self._probes.values():
            t = min(t, pr.end if pr.indirect_sent else pr.direct_deadline)
        for sid in self._suspects:
            t = min(t, self._suspicion_deadline(self.peers[sid]))
        for relay in self._relays.values():
            if relay[3] is not None:
                t = min(t, relay[3])
        return t

    def tick(self, now: float) -> None:
        if self.leaving:
            return
        for seq, pr in list(self._probes.items()):
            if pr.acked:
                continue
            if not pr.indirect_sent and now >= pr.direct_deadline:
                pr.indirect_sent = True
                self._ask_others(now, seq, pr.target)
            if now >= pr.end:
                del self._probes[seq]
                self._probing.discard(pr.target)
                self.stats["probe_failures"] += 1
                if pr.nacks < pr.nacks_expected:
                    # The members we asked did not even say "no answer": we are the slow one.
                    self.health = min(self.cfg.max_local_health, self.health + 1)
                p = self.peers.get(pr.target)
                if p is not None and p.state in (ALIVE, SUSPECT):
                    self._suspect(now, pr.target, p.incarnation, self.me)
        if now >= self._next_probe:
            self._next_probe = now + self.cfg.probe_interval * (1 + self.health)
            target = self._next_target()
            if target is not None and target not in self._probing:
                self._probe(now, target)
        for sid in list(self._suspects):
            p = self.peers[sid]
            if now >= self._suspicion_deadline(p):
                self._dead(now, sid, p.incarnation, self.me, DEAD)
        for seq, relay in list(self._relays.items()):
            if relay[3] is not None and now >= relay[3]:  # the target is silent: tell the requester
                self._send(relay[0], ["nack", relay[1]])
                relay[3] = None
            if now >= relay[2]:
                del self._relays[seq]
        if now >= self._next_sync:
            # A sync carries the whole member list: past 32 members it is spaced out with
            # log2(n) (as memberlist does), so its share of traffic does not grow as n^2.
            n = self._n_live()
            scale = 1 + max(0, math.ceil(math.log2(n / 32))) if n > 32 else 1
            self._next_sync = now + self.cfg.push_pull_interval * scale
            live = [p.id for p in self.peers.values() if p.state in (ALIVE, SUSPECT)]
            if live:
                self._send(self.rng.choice(live), ["sync", True, self._states()])
            # And one member we think dead: if it lives (a healed partition, a false
            # death), its answer brings each side back into the other's view.
            dead = [p.id for p in self.peers.values() if p.state == DEAD]
            if dead:
                self._send(self.rng.choice(dead), ["sync", True, self._states()])
            for pid in [p.id for p in self.peers.values()
                        if p.state in (DEAD, LEFT) and now - p.since >= self.cfg.forget_after]:
                del self.peers[pid]
                self.forgotten.append(pid)
                self._n_live_cache = None

    def receive(self, now: float, src: str, msg: list) -> None:
        """One message from src (already authenticated by the transport)."""
        p = self.peers.get(src)
        if p is not None:
            p.last_heard = now
        kind = msg[0]
        if kind == "ping":
            self._merge(now, msg[2])
            self._send(src, ["ack", msg[1]])
        elif kind == "ack":
            self._merge(now, msg[2])
            self._ack(now, src, msg[1])
        elif kind == "preq":
            self._merge(now, msg[3])
            target = msg[2]
            seq = self._next_seq()
            self._relays[seq] = [src, msg[1], now + self.cfg.probe_interval, now + self.cfg.probe_timeout * 0.8]
            self._send(target, ["ping", seq])
        elif kind == "nack":
            pr = self._probes.get(msg[1])
            if pr is not None:
                pr.nacks += 1
        elif kind == "gossip":
            self._merge(now, msg[1])
        elif kind == "sync":
            for node_id, inc, state, meta in msg[2]:
                # A remote "dead" is only a suspicion here: we check it ourselves.
                self._apply(now, SUSPECT if state == DEAD else state, node_id, inc, meta, src)
            if msg[1]:
                self._send(src, ["sync", False, self._states()])
        else:
            raise ValueError(f"unknown SWIM message {kind!r}")

    # ---- probing -------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _next_target(self) -> str | None:
        for _ in range(2):
            while self._order:
                pid = self._order.pop()
                p = self.peers.get(pid)
                if p is not None and p.state in (ALIVE, SUSPECT):
                    return pid
            self._order = [p.id for p in self.peers.values() if p.state in (ALIVE, SUSPECT)]
            self.rng.shuffle(self._order)
        return None

    def _probe(self, now: float, target: str) -> None:
        seq = self._next_seq()
        scale = 1 + self.health
        self._probes[seq] = _Probe(target, now, now + self.cfg.probe_timeout * scale,
                                   now + self.cfg.probe_interval * scale)
        self._probing.add(target)
        self.stats["probes"] += 1
        self._send(target, ["ping", seq])

    def _ask_others(self, now: float, seq: int, target: str) -> None:
        others = [p.id for p in self.peers.values() if p.state == ALIVE and p.id != target]
        chosen = self.rng.sample(others, min(self.cfg.indirect_probes, len(others)))
        self._probes[seq].nacks_expected = len(chosen)
        for pid in chosen:
            self.stats["indirect_probes"] += 1
            self._send(pid, ["preq", seq, target])

    def _ack(self, now: float, src: str, seq: int) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None:  # we probed for someone else: pass the ack on
            self._send(relay[0], ["ack", relay[1]])
            return
        pr = self._probes.pop(seq, None)
        if pr is None:
            return  # late: the probe already ended
        self._probing.discard(pr.target)
        pr.acked = True
        self.health = max(0, self.health - 1)
        if src == pr.target:
            p = self.peers.get(src)
            rtt = now - pr.sent
            if p is not None:
                p.rtt = rtt
            self.rtt_samples.append((src, rtt))

    # ---- state changes -------------------------------------------------------

    def _n_live(self) -> int:
        if self._n_live_cache is None:
            self._n_live_cache = 1 + sum(1 for p in self.peers.values() if p.state in (ALIVE, SUSPECT))
        return self._n_live_cache

    def _suspicion_deadline(self, p: Peer) -> float:
        # Lifeguard: max - (max - min) * log(C + 1) / log(K + 1), C confirmations of K expected.
        k = min(self.cfg.indirect_probes, max(0, self._n_live() - 2))
        c = max(0, len(p.suspectors) - 1)
        frac = 1.0 if k == 0 else min(1.0, math.log(c + 1) / math.log(k + 1))
        return p.suspected_at + max(p.suspicion_min, p.suspicion_max - (p.suspicion_max - p.suspicion_min) * frac)

    def _changed(self, p: Peer, old: str | None) -> None:
        self._n_live_cache = None
        self.changes.append((p, old))

    def _refute(self, incarnation: int) -> None:
        self.incarnation = max(self.incarnation, incarnation) + 1
        # Being suspected means others did not hear from us in time: likely our fault.
        self.health = min(self.cfg.max_local_health, self.health + 1)
        self.stats["refutations"] += 1
        self._queue(self.me, [ALIVE, self.me, self.incarnation, self.meta, self.me])

    def _alive(self, now: float, node_id: str, inc: int, meta: dict | None) -> None:
        if node_id == self.me:
            if inc > self.incarnation and not self.leaving:  # an older life of ours
                self._refute(inc)
            return
        p = self.peers.get(node_id)
        if p is None:
            p = self.peers[node_id] = Peer(node_id, inc, ALIVE, dict(meta or {}), now, last_heard=None)
            self._queue(node_id, [ALIVE, node_id, inc, p.meta, self.me])
            self._changed(p, None)
            return
        if inc <= p.incarnation:
            return
        old = p.state
        p.incarnation, p.state = inc, ALIVE
        if meta is not None:
            p.meta = dict(meta)
        if old != ALIVE:
            p.since = now
        self._suspects.discard(node_id)
        p.suspectors = set()
        self._queue(node_id, [ALIVE, node_id, inc, p.meta, self.me])
        self._changed(p, old)

    def _accused(self, node_id: str, inc: int) -> Peer | None:
        """The peer a suspect/dead report at incarnation ``inc`` applies to, or None: a
        report about this node is refuted, a stale one (older incarnation, or no news
        about a node already dead or gone) is ignored."""
        if node_id == self.me:
            if not self.leaving and inc >= self.incarnation:
                self._refute(inc)
            return None
        p = self.peers.get(node_id)
        if p is None or inc < p.incarnation:
            return None
        if p.state in (DEAD, LEFT) and inc <= p.incarnation:
            return None
        return p

    def _suspect(self, now: float, node_id: str, inc: int, by: str) -> None:
        p = self._accused(node_id, inc)
        if p is None:
            return
        if p.state == SUSPECT and inc == p.incarnation:
            if by not in p.suspectors:  # a confirmation: spread it, shorten the timeout
                p.suspectors.add(by)
                self._queue(node_id, [SUSPECT, node_id, inc, None, by])
            return
        old = p.state
        p.state, p.incarnation, p.since = SUSPECT, inc, now
        p.suspected_at, p.suspectors = now, {by}
        base = self.cfg.suspicion_timeout * max(1.0, math.log10(self._n_live()))
        p.suspicion_min, p.suspicion_max = base, base * self.cfg.suspicion_max_mult
        self._suspects.add(node_id)
        self.stats["suspicions"] += 1
        self._queue(node_id, [SUSPECT, node_id, inc, None, by])
        self._changed(p, old)
        if by != self.me and node_id not in self._probing and not self.leaving:
            # Check it ourselves now: a confirmation (or the ack that starts our own
            # doubt about the suspicion) comes a protocol period sooner than in its turn.
            self._probe(now, node_id)

    def _dead(self, now: float, node_id: str, inc: int, by: str, state: str) -> None:
        p = self._accused(node_id, inc)
        if p is None:
            return
        old = p.state
        p.state, p.incarnation, p.since = state, inc, now
        self._suspects.discard(node_id)
        self._probing.discard(node_id)
        if state == DEAD:
            self.stats["deaths"] += 1
        entry = [state, node_id, inc, None, by]
        self._queue(node_id, entry)
        self._changed(p, old)
        if by == self.me:
            # Our own verdict goes to every live member at once (one small message each,
            # once per death) rather than waiting for piggybacks: all views agree sooner.
            for q in self.peers.values():
                if q.state in (ALIVE, SUSPECT):
                    self.outbox.append((q.id, ["gossip", [entry]]))

    def _apply(self, now: float, state: str, node_id: str, inc: int, meta, by: str) -> None:
        if state == ALIVE:
            self._alive(now, node_id, inc, meta)
        elif state == SUSPECT:
            self._suspect(now, node_id, inc, by)
        elif state in (DEAD, LEFT):
            self._dead(now, node_id, inc, by, state)

    def _merge(self, now: float, gossip: list) -> None:
        for state, node_id, inc, meta, by in gossip:
            self._apply(now, state, node_id, inc, meta, by)

    def _states(self) -> list:
        out = [[self.me, self.incarnation, LEFT if self.leaving else ALIVE, self.meta]]
        out += [[p.id, p.incarnation, p.state, p.meta] for p in self.peers.values()]
        return out

    # ---- dissemination -------------------------------------------------------

    def _queue(self, about: str, entry: list) -> None:
        self._gossip[about] = [entry, 0]

    def _send(self, dest: str, msg: list) -> None:
        """Queues msg for dest with gossip piggybacked (ping, ack, preq carry it)."""
        if msg[0] in ("ping", "ack", "preq"):
            msg.append(self._piggyback(dest))
        self.outbox.append((dest, msg))

    def _piggyback(self, dest: str) -> list:
        if not self._gossip:
            return []
        limit = self.cfg.retransmit_mult * max(1, math.ceil(math.log10(self._n_live() + 1)))
        chosen = []
        about_dest = self._gossip.get(dest)
        if about_dest is not None:
            chosen.append(dest)
        if len(self._gossip) <= MAX_PIGGYBACK:
            candidates = [k for k in self._gossip if k != dest]
        else:
            candidates = sorted((k for k in self._gossip if k != dest), key=lambda k: self._gossip[k][1])
        chosen += candidates[:MAX_PIGGYBACK - len(chosen)]
        out = []
        for k in chosen:
            item = self._gossip[k]
            out.append(item[0])
            item[1] += 1
            if item[1] >= limit:
                del self._gossip[k]
        return out
