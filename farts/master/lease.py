"""The master lease of one deployment, sans-IO: messages and ``now`` in, actions out.

Every node of a deployment runs one ``Lease``. It is two things at once:

- a **voter**: it promises its vote for an epoch to one candidate for ``duration``
  seconds of its own clock, counted from when the request *arrived*. The promise
  (epoch, holder) is persisted before the vote leaves (``Persist`` comes before the
  ``Send`` in the actions), so a restarted node never promises an epoch twice; its
  deadline is not (monotonic time does not survive a restart): a restored promise
  lasts ``duration`` from the restart.
- a **role** (follower, candidate, master), the table ``TRANSITIONS`` below.

The voting rule, for a request (epoch e, candidate c) against the promise (E, H, until):
grant if ``e == E and H == c`` (a renewal), or ``e > E`` and the promise is over or is
to c. Otherwise refuse, saying E and H. So each epoch is promised to at most one node
by each voter, and a majority of the configured nodes (``nodes``) for two candidates
would need a voter that promised both: **at most one master per epoch**.

Timing: a candidate counts its lease from when it *sent* the request, and only for
``duration * (1 - drift) / (1 + drift)`` of its own clock, where ``drift`` bounds how
much faster or slower than real time any node's clock runs. Every voter of the majority
keeps its promise for ``duration`` of its clock from a later moment, so the master's
lease ends (and it stops acting) before any of those promises does, and no other
candidate can have a majority before then: a master cut off in a minority partition
stops before the majority side can elect another, and the new master has a higher
epoch (the fencing token every side effect carries).

Takeover bound after a master dies without a word: its voters' promises run out at
most ``duration`` after its last renewal, then a follower campaigns after its back-off
(``rank * step`` plus up to one ``step`` of jitter, ``step = duration / 10``, rank
its place among the n configured nodes by id), one request round trip later it is
master: at most ``duration * (1 + n / 10)`` plus a round trip. A graceful stop sends ``Release``:
followers campaign at once.

Known cost: a node cut off alone keeps campaigning, each time one epoch higher (its own
vote only); back in, it refuses the master's renewals (their epoch is below its promise)
until the next election, so the master renews on the other nodes' votes alone meanwhile.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("farts.master.lease")

FOLLOWER, CANDIDATE, MASTER, STOPPED = "follower", "candidate", "master", "stopped"

# state, event -> (what is done, the next state). Events come from the deadlines
# (tick) and from the votes of this node's requests; every other input (requests to
# vote, announcements, releases) is the voter's and moves no role but by these.
TRANSITIONS: dict[tuple[str, str], tuple[str, str]] = {
    (FOLLOWER, "campaign_due"): ("campaign", CANDIDATE),     # no live lease seen: ask for epoch+1
    (FOLLOWER, "stop"): ("nothing", STOPPED),
    (CANDIDATE, "majority"): ("take", MASTER),               # act from now, until sent + guard
    (CANDIDATE, "lost"): ("back_off", FOLLOWER),             # refused by too many to win
    (CANDIDATE, "round_over"): ("back_off", FOLLOWER),       # no majority in time
    (CANDIDATE, "stop"): ("nothing", STOPPED),
    (MASTER, "renew_due"): ("renew", MASTER),                # same epoch, a new round
    (MASTER, "majority"): ("extend", MASTER),                # lease counted from this round's send
    (MASTER, "expired"): ("step_down", FOLLOWER),            # renewals failed: stop acting now
    (MASTER, "superseded"): ("step_down", FOLLOWER),         # a higher epoch was announced or recorded
    (MASTER, "stop"): ("release", STOPPED),                  # stop acting, then tell the voters
}


# ---- what the machine asks its adapter to do ----------------------------------------


@dataclass(frozen=True, slots=True)
class Ask:
    """Vote for ``candidate`` at ``epoch`` (``round`` matches the answers to the request)."""
    epoch: int
    candidate: str
    round: int


@dataclass(frozen=True, slots=True)
class Vote:
    epoch: int
    candidate: str
    round: int
    granted: bool
    promised_epoch: int        # the voter's promise after this request
    promised_to: str | None


@dataclass(frozen=True, slots=True)
class Held:
    """The master's announcement, on taking the lease and on every renewal."""
    epoch: int
    holder: str


@dataclass(frozen=True, slots=True)
class Release:
    """The master stopped acting (a graceful stop): its voters are free at once."""
    epoch: int
    holder: str


@dataclass(frozen=True, slots=True)
class Send:
    to: str                          # a node id of the deployment
    message: Ask | Vote


@dataclass(frozen=True, slots=True)
class Broadcast:
    message: Held | Release


@dataclass(frozen=True, slots=True)
class Persist:
    """Write (epoch, holder) durably before doing the actions after it."""
    epoch: int
    holder: str | None


@dataclass(frozen=True, slots=True)
class Role:
    """This node starts (active) or stops acting as master, with this fencing epoch."""
    active: bool
    epoch: int


Action = Send | Broadcast | Persist | Role


@dataclass
class Promise:
    epoch: int = 0
    holder: str | None = None
    until: float = float("-inf")     # local monotonic time; -inf: none running


class Lease:
    def __init__(self, me: str, nodes: list[str], duration: float, drift: float, now: float,
                 rand: Callable[[], float], promised: tuple[int, str | None] = (0, None)) -> None:
        """``nodes``: the deployment's configured nodes (a majority of them decides);
        ``promised``: the persisted promise (epoch, holder) from before a restart;
        ``rand``: uniform in [0, 1), the jitter of the back-off."""
        if me not in nodes:
            raise ValueError(f"{me!r} is not one of the deployment's nodes {nodes}")
        if not 0 <= drift < 0.5:
            raise ValueError("drift must be in [0, 0.5)")
        self.me, self.nodes = me, sorted(set(nodes))
        self.duration, self.drift, self.rand = duration, drift, rand
        self.majority = len(self.nodes) // 2 + 1
        self.guard = duration * (1 - drift) / (1 + drift)
        self.step = duration / 10
        self.rank = self.nodes.index(me)
        self.state = FOLLOWER
        epoch, holder = promised
        # A promise from before the restart may still bind the holder: keep it a full duration.
        self.promise = Promise(epoch, holder, now + duration if holder is not None else float("-inf"))
        self.known_epoch = epoch         # the highest epoch heard of
        self.epoch = 0                   # this node's epoch as candidate or master
        self.round = 0
        self.sent_at = 0.0               # when this round's requests left
        self.grants: set[str] = set()
        self.refusals: set[str] = set()
        self.round_deadline = float("inf")
        self.valid_until = float("-inf")  # master: acting until then
        self.renew_at = float("inf")
        self.failures = 0                 # campaigns lost in a row (the back-off doubles)
        self.holder_seen: tuple[str, int] | None = None   # (holder, epoch) last announced
        self.seen_until = float("-inf")   # a holder's announcement lasts duration from its arrival
        self.campaign_at = self._campaign_time(now)
        self.changes = 0                  # times this node became master

    # ---- queries ----------------------------------------------------------------------

    def acting(self, now: float) -> bool:
        return self.state == MASTER and now < self.valid_until

    def master(self, now: float) -> tuple[str | None, int]:
        """(the master this node knows of, its epoch), or (None, the highest epoch heard)."""
        if self.state == MASTER:
            return self.me, self.epoch
        if self.holder_seen is not None and now < self.seen_until:
            return self.holder_seen
        return None, self.known_epoch

    def next_deadline(self) -> float:
        if self.state == FOLLOWER:
            return self.campaign_at
        if self.state == CANDIDATE:
            return self.round_deadline
        if self.state == MASTER:
            return min(self.valid_until, self.renew_at, self.round_deadline)
        return float("inf")

    # ---- inputs -----------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """The deadlines that passed by ``now``."""
        if self.state == FOLLOWER and now >= self.campaign_at:
            return self._fire("campaign_due", now)
        if self.state == CANDIDATE and now >= self.round_deadline:
            return self._fire("round_over", now)
        if self.state == MASTER:
            if now >= self.valid_until:
                return self._fire("expired", now)
            if now >= self.round_deadline:
                self.round_deadline = float("inf")    # that renewal failed; the next one is due
            if now >= self.renew_at:
                return self._fire("renew_due", now)
        return []

    def stop(self, now: float) -> list[Action]:
        return self._fire("stop", now)

    def on_ask(self, ask: Ask, sender: str, now: float) -> list[Action]:
        """A candidate's request (``sender``: who the mesh says sent it)."""
        if ask.candidate != sender or sender not in self.nodes:
            return []
        out, vote = self._vote(ask, now)
        if vote.granted and self.state == FOLLOWER:
            self.campaign_at = self._campaign_time(now)
        return out + [Send(sender, vote)]

    def on_vote(self, vote: Vote, sender: str, now: float) -> list[Action]:
        # A refusal that names a higher epoch is only learnt: the voter may have promised
        # it after this master's promise there ran out, which ends nothing while the
        # rest of the majority holds (the next campaign starts above it).
        self._learn(vote.promised_epoch)
        if sender not in self.nodes or vote.candidate != self.me or vote.round != self.round \
                or vote.epoch != self.epoch or self.state not in (CANDIDATE, MASTER) \
                or self.round_deadline == float("inf"):
            return []       # late, or for an earlier round
        (self.grants if vote.granted else self.refusals).add(sender)
        if vote.granted and len(self.grants) == self.majority:
            return self._fire("majority", now)
        if not vote.granted and len(self.refusals) > len(self.nodes) - self.majority:
            return self._fire("lost", now)
        return []

    def on_held(self, held: Held, sender: str, now: float) -> list[Action]:
        if held.holder != sender or sender not in self.nodes or sender == self.me:
            return []
        self._learn(held.epoch)
        self.holder_seen, self.seen_until = (held.holder, held.epoch), now + self.duration
        if self.state == FOLLOWER:
            self.campaign_at = self._campaign_time(now)
        return self._superseded(now, held.epoch)

    def on_release(self, rel: Release, sender: str, now: float) -> list[Action]:
        if rel.holder != sender or sender not in self.nodes:
            return []
        self._learn(rel.epoch)
        p = self.promise
        if p.holder == rel.holder and p.epoch == rel.epoch:
            p.until = min(p.until, now)           # free at once (the epoch stays used)
        if self.holder_seen == (rel.holder, rel.epoch):
            self.seen_until = now
        if self.state == FOLLOWER:
            self.campaign_at = self._campaign_time(now)
        return []

    def observe_epoch(self, epoch: int, now: float) -> list[Action]:
        """An epoch seen elsewhere (the fencing record in the store): a higher one than
        this master's means another master acted, so this one has stopped."""
        self._learn(epoch)
        return self._superseded(now, epoch)

    # ---- the voter --------------------------------------------------------------------

    def _vote(self, ask: Ask, now: float) -> tuple[list[Action], Vote]:
        p = self.promise
        renewal = ask.epoch == p.epoch and p.holder == ask.candidate
        fresh = ask.epoch > p.epoch and (now >= p.until or p.holder == ask.candidate)
        out: list[Action] = []
        if renewal or fresh:
            if (p.epoch, p.holder) != (ask.epoch, ask.candidate):
                out.append(Persist(ask.epoch, ask.candidate))
            p.epoch, p.holder, p.until = ask.epoch, ask.candidate, now + self.duration
            self._learn(ask.epoch)
        return out, Vote(ask.epoch, ask.candidate, ask.round, renewal or fresh, p.epoch, p.holder)

    # ---- the role ---------------------------------------------------------------------

    def _fire(self, event: str, now: float) -> list[Action]:
        done, next_state = TRANSITIONS.get((self.state, event), (None, None))
        if done is None:
            return []
        log.debug("lease %s: %s --%s--> %s (%s)", self.me, self.state, event, next_state, done)
        self.state = next_state
        return getattr(self, "_" + done)(now)

    def _nothing(self, now: float) -> list[Action]:
        return []

    def _campaign(self, now: float) -> list[Action]:
        self.epoch = max(self.known_epoch, self.promise.epoch) + 1
        return self._ask(now)

    def _renew(self, now: float) -> list[Action]:
        return self._ask(now)

    def _ask(self, now: float) -> list[Action]:
        self.round += 1
        self.sent_at = now
        self.round_deadline = now + 3 * self.step
        self.renew_at = now + self.duration / 3
        ask = Ask(self.epoch, self.me, self.round)
        out, vote = self._vote(ask, now)
        self.grants, self.refusals = ({self.me}, set()) if vote.granted else (set(), {self.me})
        out += [Send(n, ask) for n in self.nodes if n != self.me]
        if len(self.grants) >= self.majority:   # a deployment of one node
            out += self._fire("majority", now)
        return out

    def _take(self, now: float) -> list[Action]:
        self.failures = 0
        self.changes += 1
        self.valid_until = self.sent_at + self.guard
        self.round_deadline = float("inf")
        self.holder_seen = None
        log.info("master lease: %s is master of epoch %d", self.me, self.epoch)
        return [Role(True, self.epoch), Broadcast(Held(self.epoch, self.me))]

    def _extend(self, now: float) -> list[Action]:
        self.valid_until = max(self.valid_until, self.sent_at + self.guard)
        self.round_deadline = float("inf")
        return [Broadcast(Held(self.epoch, self.me))]

    def _back_off(self, now: float) -> list[Action]:
        self.failures += 1
        self.round_deadline = float("inf")
        p = self.promise
        if p.holder == self.me and p.epoch == self.epoch:
            p.until = min(p.until, now)   # never acted on it: this node's vote is free again
        self.campaign_at = self._campaign_time(now)
        return []

    def _step_down(self, now: float) -> list[Action]:
        log.warning("master lease: %s stops acting as master of epoch %d", self.me, self.epoch)
        self.valid_until = float("-inf")
        self.round_deadline, self.renew_at = float("inf"), float("inf")
        self.campaign_at = self._campaign_time(now)
        return [Role(False, self.epoch)]

    def _release(self, now: float) -> list[Action]:
        out = self._step_down(now)
        p = self.promise
        if p.holder == self.me and p.epoch == self.epoch:
            p.until = min(p.until, now)
        return out + [Broadcast(Release(self.epoch, self.me))]

    def _superseded(self, now: float, epoch: int) -> list[Action]:
        if self.state == MASTER and epoch > self.epoch:
            return self._fire("superseded", now)
        return []

    def _learn(self, epoch: int) -> None:
        self.known_epoch = max(self.known_epoch, epoch)

    def _campaign_time(self, now: float) -> float:
        """When a follower asks, if nothing is heard meanwhile: once every lease it knows
        of could have run out, after its back-off (by rank, doubling after lost campaigns)."""
        bound = self.promise.until if self.promise.holder != self.me else now
        back_off = (self.rank + self.rand()) * self.step * min(2 ** self.failures, 8)
        return max(now, bound, self.seen_until) + back_off
