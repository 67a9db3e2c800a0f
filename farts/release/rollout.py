"""A rolling deploy as a sans-IO state machine: one node at a time, canaries first, each
gated on health; on a failure the deploy stops and that node goes back.

The machine takes results and time (``now``) and returns actions; an adapter carries
the actions out (deploy.py: HTTP to each node's admin API) and reports back with
``done(node, ok, detail, now)``. Per node:

    pending ─Verify─▶ verifying ─ok─▶ installing ─ok─▶ restarting ─ok─▶ checking
    checking: CheckHealth every ``poll`` s until healthy ─▶ baking (``bake`` s, canaries
      ``canary_bake``), CheckHealth every ``poll`` s; healthy all along ─▶ done ─▶ next node
    any failure while verifying or installing ─▶ failed (nothing changed on it)
    a failure while restarting, checking or baking, or no healthy answer within
      ``health_timeout`` ─▶ rolling_back ─Rollback─▶ rolled_back (or rollback_failed)
    and the deploy stops there: the nodes after it keep the version they run.

"Healthy" is the adapter's to decide (``/healthz`` ok, mesh member alive, replication
caught up, no new alerts): the machine only counts the answers and the time.
"""
from __future__ import annotations

from dataclasses import dataclass, field

PENDING, VERIFYING, INSTALLING, RESTARTING = "pending", "verifying", "installing", "restarting"
CHECKING, BAKING, DONE = "checking", "baking", "done"
FAILED, ROLLING_BACK, ROLLED_BACK, ROLLBACK_FAILED = "failed", "rolling_back", "rolled_back", "rollback_failed"


@dataclass(frozen=True)
class NodeAction:
    node: str


class Verify(NodeAction):
    """Have the node verify the bundle (and keep it for the install)."""


class Install(NodeAction):
    """Install the verified release into a new environment beside the running one."""


class Restart(NodeAction):
    """Restart the node onto the new environment (a takeover: nothing dropped)."""


class CheckHealth(NodeAction):
    """Is the node healthy, on the new version?"""


class Rollback(NodeAction):
    """Restart the node onto the environment it ran before."""


@dataclass(frozen=True)
class Finished:
    ok: bool
    reason: str


# the action each state waits on, and the state its success leads to
_NEXT = {VERIFYING: (INSTALLING, Install), INSTALLING: (RESTARTING, Restart), RESTARTING: (CHECKING, CheckHealth)}


@dataclass
class NodeProgress:
    node: str
    canary: bool
    state: str = PENDING
    since: float = 0.0
    detail: str = ""
    healthy_since: float | None = None


@dataclass
class Rollout:
    version: str
    nodes: list[str]
    canary: int = 1
    bake: float = 30.0
    canary_bake: float = 60.0
    health_timeout: float = 60.0
    poll: float = 2.0
    progress: list[NodeProgress] = field(default_factory=list)
    current: int = -1
    result: Finished | None = None
    _next_check: float = float("inf")
    _waiting: bool = False   # an action is out and its answer not in

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ValueError("a rollout needs at least one node")
        self.progress = [NodeProgress(n, i < self.canary) for i, n in enumerate(self.nodes)]

    # -- inputs ------------------------------------------------------------------------------
    def start(self, now: float) -> list:
        return self._advance(now)

    def done(self, node: str, ok: bool, detail: str, now: float, final: bool = False) -> list:
        """The answer to the last action sent for ``node``; ``final``: a health check that
        will not get better (the node's new process died): no waiting for the timeout."""
        p = self._node()
        if p is None or p.node != node or not self._waiting or self.result is not None:
            return []   # (a late answer to an action of a node the deploy has left)
        self._waiting = False
        if detail:
            p.detail = detail
        if p.state in _NEXT:
            if not ok:
                return self._fail(p, now, rollback=p.state == RESTARTING)
            state, action = _NEXT[p.state]
            self._enter(p, state, now)
            if state == CHECKING:
                self._next_check = now + self.poll
                return []
            return self._send(action(p.node))
        if p.state in (CHECKING, BAKING):
            if not ok and final:
                return self._fail(p, now, rollback=True)
            return self._health(p, ok, now)
        if p.state == ROLLING_BACK:
            self._enter(p, ROLLED_BACK if ok else ROLLBACK_FAILED, now)
            return self._finish(False, f"{p.node}: {p.detail}; rolled back" if ok else
                                f"{p.node}: rollback failed: {detail}")
        return []

    def tick(self, now: float) -> list:
        """Time passed: health polls, the health deadline, the end of a bake."""
        p = self._node()
        if p is None or self.result is not None:
            return []
        if p.state == CHECKING and now - p.since > self.health_timeout:
            p.detail = f"not healthy within {self.health_timeout:g} s" + (f" ({p.detail})" if p.detail else "")
            return self._fail(p, now, rollback=True)
        if p.state == BAKING and now - p.since >= (self.canary_bake if p.canary else self.bake) \
                and not self._waiting:
            self._enter(p, DONE, now)
            return self._advance(now)
        if p.state in (CHECKING, BAKING) and now >= self._next_check and not self._waiting:
            self._next_check = now + self.poll
            return self._send(CheckHealth(p.node))
        return []

    # -- what it is at -------------------------------------------------------------------------
    def status(self) -> dict:
        return {"version": self.version,
                "state": "running" if self.result is None else ("done" if self.result.ok else "stopped"),
                "reason": self.result.reason if self.result else "",
                "nodes": [{"node": p.node, "canary": p.canary, "state": p.state, "detail": p.detail}
                          for p in self.progress]}

    # -- inside ----------------------------------------------------------------------------------
    def _node(self) -> NodeProgress | None:
        return self.progress[self.current] if 0 <= self.current < len(self.progress) else None

    def _enter(self, p: NodeProgress, state: str, now: float) -> None:
        p.state, p.since = state, now

    def _send(self, action) -> list:
        self._waiting = True
        return [action]

    def _advance(self, now: float) -> list:
        self.current += 1
        p = self._node()
        if p is None:
            return self._finish(True, f"{len(self.nodes)} nodes run {self.version}")
        self._enter(p, VERIFYING, now)
        return self._send(Verify(p.node))

    def _health(self, p: NodeProgress, ok: bool, now: float) -> list:
        if ok and p.state == CHECKING:
            p.healthy_since = now
            self._enter(p, BAKING, now)
        elif not ok and p.state == BAKING:
            p.detail = f"unhealthy while baking: {p.detail}"
            return self._fail(p, now, rollback=True)
        return self.tick(now) if p.state == BAKING else []

    def _fail(self, p: NodeProgress, now: float, rollback: bool) -> list:
        if not rollback:
            self._enter(p, FAILED, now)
            return self._finish(False, f"{p.node}: {p.detail}")
        self._enter(p, ROLLING_BACK, now)
        return self._send(Rollback(p.node))

    def _finish(self, ok: bool, reason: str) -> list:
        self.result = Finished(ok, reason)
        return [self.result]


# A rolling deploy runs two versions side by side by design: that alert is no sign of a
# bad release.
EXPECTED_DURING_A_ROLLOUT = frozenset({"version_mismatch"})


def health_problem(version: str, healthz: int, info: dict | None, member_state: str | None,
                   alerts: list[dict], restarted_at: float) -> str:
    """Why a node is not (yet) healthy on ``version``, or "" when it is: ``healthz`` is
    its /healthz status, ``info`` its /api/release (version, replication caught up),
    ``member_state`` what this node's mesh sees of it (None without a mesh), ``alerts``
    the master's alerts (first_seen: wall time), ``restarted_at`` the wall time of its
    restart (an alert opened since then, anywhere, fails it)."""
    if healthz != 200:
        return f"/healthz answered {healthz or 'nothing'}"
    if info is None:
        return "no answer from /api/release"
    if info.get("successor_exit") is not None:
        return f"its new process exited with status {info['successor_exit']}"
    if info.get("version") != version:
        return f"runs {info.get('version')}, not yet {version}"
    if not info.get("caught_up", True):
        return "database replication not caught up" + (f" ({info['behind']})" if info.get("behind") else "")
    if member_state is not None and member_state != "alive":
        return f"the mesh sees it {member_state}"
    new = sorted(a.get("key", "?") for a in alerts
                 if a.get("first_seen", 0) >= restarted_at and a.get("rule") not in EXPECTED_DURING_A_ROLLOUT)
    if new:
        return "new alert since its restart: " + ", ".join(new)
    return ""
