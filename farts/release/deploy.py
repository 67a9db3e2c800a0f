"""The deploy's adapters, on the admin listener.

Every node: ``/api/release`` (what it runs), ``/api/release/stage`` (a bundle in, verified
here against this node's ``release.trusted_keys``: signature, hashes, platform,
downgrade; refused with 422, a log line, ``farts_release_refused_total`` and the master's
``bundle_refused`` alert),
``/api/release/install?version=V`` (the staged wheel, its hash checked again, into
``envs_dir/V``, beside the running environment), ``/api/release/restart?env=V|base``
(a new process on that environment takes this one over: handover.py).

The node that receives ``POST /api/deploy`` (``farts-edge deploy``) runs the rollout
(rollout.py) over the nodes' admin APIs; ``GET /api/deploy`` is its progress. With a
mesh, the bundle goes to each member over it (peer.py: pulled in chunks, verified
there as over HTTP); a node outside the mesh (``--node ID=URL``) gets it on its
``/api/release/stage``. Each node's health gate (rollout.health_problem) is its /healthz
and /api/release (version, replication caught up) and what the runner's node sees of it
(its mesh state, the master's alerts: a ``ClusterView`` node.py hands over). (The
master of the deployment, issue 14, is where the rollout belongs; this node runs it
until then, and deploys itself last: its own restart hands the rollout to its next
process, which goes on with it.)
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode

from farts import __version__
from farts.transport.http import Fixed, Request, Response

from . import bundle
from .peer import BundlePeer
from .rollout import (
    RESTARTING,
    CheckHealth,
    Finished,
    Install,
    NodeProgress,
    Restart,
    Rollback,
    Rollout,
    Verify,
    health_problem,
)

log = logging.getLogger("farts.release")

JSON = [(b"content-type", b"application/json")]
BASE = "base"   # the environment the node was first started from (no release env)


def _json(status: int, obj) -> Response:
    return Response(status, JSON, json.dumps(obj, indent=1).encode() + b"\n")


def _query(req: Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(req.query.decode("latin-1")).items()}


def _check_of(reason: str) -> str:
    """The metric label of a refusal: which check said no."""
    for words, check in (("not trusted", "unknown_key"), ("expired", "expired_key"),
                         ("signature", "signature"), ("SHA-256", "hash"), ("bytes, the manifest", "hash"),
                         ("platform", "platform"), ("downgrade", "downgrade")):
        if words in reason:
            return check
    return "malformed"


class ReleaseNode:
    """This node's side of a deploy: stage, install, restart, and what it runs."""

    def __init__(self, cfg, metrics, behind: Callable[[], str] = str,
                 alert: Callable[[str], None] = lambda reason: None) -> None:
        """``behind()``: why the database is not caught up with the other nodes ("" when it
        is); ``alert(reason)``: a refused bundle, for the master's alert (node.py hands it
        over; called in the thread pool)."""
        self.cfg, self.behind, self.alert = cfg, behind, alert
        self.trusted = [bundle.load_public_key(cfg.path(k)) for k in cfg.release.trusted_keys]
        self.envs = cfg.path(cfg.release.envs_dir)
        self.env = os.environ.get("FARTS_RELEASE_ENV", BASE)
        self.refused = metrics.counter("farts_release_refused_total",
                                       "Release bundles this node refused, by the check that failed", ("check",))
        self.staged: dict[str, bundle.Release] = {}
        self.successor: subprocess.Popen | None = None   # the process restart() started

    def info(self) -> dict:
        behind = self.behind()
        installed = sorted(p.name for p in self.envs.iterdir() if p.is_dir()) if self.envs.is_dir() else []
        return {"node": self.cfg.node.id, "version": __version__, "env": self.env, "pid": os.getpid(),
                "installed": installed, "caught_up": not behind, "behind": behind,
                # (it took over and this process ends; or it died, and this one goes on)
                "successor_exit": self.successor.poll() if self.successor is not None else None}

    def stage(self, data: bytes, allow_downgrade: bool) -> bundle.Release:
        """Blocking (thread pool): verify the bundle; keep it for install. Raises Refused."""
        self.envs.mkdir(parents=True, exist_ok=True)
        tmp = self.envs / f".incoming-{os.getpid()}-{len(data)}.tar"
        tmp.write_bytes(data)
        try:
            release = bundle.verify(tmp, self.trusted, current=__version__, allow_downgrade=allow_downgrade)
        except bundle.Refused as e:
            tmp.unlink()
            self.refused.inc((_check_of(str(e)),))
            log.warning("release bundle refused: %s", e)
            self.alert(str(e))
            raise
        path = self.envs / f"{release.version}.tar"
        os.replace(tmp, path)
        release = bundle.Release(path, release.version, release.manifest, release.wheel)
        self.staged[release.version] = release
        log.info("release %s staged (verified: signer %s, %s)", release.version, release.manifest["key"], release.wheel)
        return release

    def install(self, version: str) -> Path:
        """Blocking: the staged wheel (hash checked again) into envs_dir/<version>."""
        release = self.staged.get(version)
        if release is None:
            raise bundle.Refused(f"no verified bundle of {version} staged here")
        target = self.envs / version
        wheel = bundle.extract_wheel(release, self.envs / ".wheels")
        # The bundle carries farts-edge itself; its dependencies come from this interpreter's
        # environment (--no-deps), which every release env sits on top of.
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade",
                            "--target", str(target), str(wheel)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"pip install failed: {r.stderr[-2000:]}")
        log.info("release %s installed in %s", version, target)
        return target

    def restart(self, env: str) -> int:
        """Starts the process that takes this one over, on ``env`` (a version installed
        here, or "base"); returns its pid."""
        base = os.environ.get("FARTS_BASE_PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        if env != BASE and not (self.envs / env).is_dir():
            raise bundle.Refused(f"no environment {env} installed here")
        path = base if env == BASE else os.pathsep.join(filter(None, [str(self.envs / env), base]))
        # The new process keeps this one's output and process group: whoever started the
        # node (`up --nodes N`, a service manager) still reads its output and can stop it.
        proc = subprocess.Popen(
            [sys.executable, "-m", "farts.cli", "serve", "--config", str(Path(self.cfg.source).resolve()),
             "--takeover"],
            env={**os.environ, "PYTHONPATH": path, "FARTS_RELEASE_ENV": env, "FARTS_BASE_PYTHONPATH": base,
                 "PYTHONSAFEPATH": "1"})
        log.info("restarting onto %s: process %d takes over", env, proc.pid)
        self.successor = proc
        return proc.pid


class ReleaseAdminHandler:
    """/api/release... and /api/deploy on the admin listener."""

    def __init__(self, node: ReleaseNode, deployer: Deployer) -> None:
        self.node, self.deployer = node, deployer

    def handle(self, req: Request):
        path = req.path
        if path == b"/api/release" and req.method in (b"GET", b"HEAD"):
            return _json(200, self.node.info())
        if path == b"/api/deploy" and req.method in (b"GET", b"HEAD"):
            # The last deploy asked here went to the master (a rollout this node ran
            # before, finished, is not the one its asker follows).
            if self.deployer.runner_url:
                return self._forward("GET", self.deployer.runner_url, "/api/deploy")
            return _json(200, self.deployer.status())
        if req.method != b"POST":
            return Fixed.error(405)
        return self._post(req)

    async def _post(self, req: Request) -> Response:
        q = _query(req)
        loop = asyncio.get_running_loop()
        node = self.node
        try:
            if req.path == b"/api/release/stage":
                data = await req.body.read() if req.body is not None else b""
                release = await loop.run_in_executor(None, node.stage, data, q.get("allow_downgrade") == "1")
                return _json(200, {"node": node.cfg.node.id, "staged": release.version, "wheel": release.wheel})
            if req.path == b"/api/release/install":
                target = await loop.run_in_executor(None, node.install, q.get("version", ""))
                return _json(200, {"node": node.cfg.node.id, "installed": str(target)})
            if req.path == b"/api/release/restart":
                return _json(202, {"node": node.cfg.node.id, "pid": node.restart(q.get("env", BASE))})
            if req.path == b"/api/deploy":
                data = await req.body.read() if req.body is not None else b""
                nodes = json.loads(req.header(b"x-deploy-nodes") or b"{}")
                # The deployment's master runs a deploy (it outlives any one node's restart
                # but its own, which hands the rollout to its next process); asked here, this
                # node hands it over, once ("from" says it was).
                master, me = self.deployer.cluster.master(), node.cfg.node.id
                url = (nodes or self.deployer.peers()).get(master) if master not in (None, me) \
                    and "from" not in q else None
                if url:
                    self.deployer.runner_url = url
                    return await self._forward("POST", url, "/api/deploy?" + urlencode({**q, "from": me}), data,
                                               {"x-deploy-nodes": json.dumps(nodes)})
                started = await self.deployer.start(data, nodes, q)
                return _json(202, started)
        except bundle.Refused as e:
            return _json(422, {"node": node.cfg.node.id, "refused": str(e)})
        except (OSError, RuntimeError, ValueError) as e:
            log.warning("%s failed: %s", req.path.decode(), e)
            return _json(500, {"node": node.cfg.node.id, "error": str(e)})
        return Fixed.error(404)

    async def _forward(self, method: str, url: str, path: str, data: bytes | None = None,
                       headers: dict | None = None) -> Response:
        status, body = await asyncio.get_running_loop().run_in_executor(
            None, _call, method, url.rstrip("/") + path, data, 600, headers)
        return _json(status or 502, body)


def _call(method: str, url: str, data: bytes | None = None, timeout: float = 600,
          headers: dict | None = None) -> tuple[int, dict]:
    """Blocking (thread pool): one admin API call to a node."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.load(e)
        except ValueError:
            return e.code, {"error": e.reason}
    except (OSError, ValueError) as e:
        return 0, {"error": str(e)}


@dataclass(frozen=True)
class ClusterView:
    """What the runner reads of the cluster on its own node for the health gate (node.py
    hands it over): the state its mesh sees a member in (None without a mesh), and the
    master's alerts (from the replicated store every node reads)."""
    member_state: Callable[[str], str | None] = lambda node: None
    alerts: Callable[[], list[dict]] = lambda: []
    master: Callable[[], str | None] = lambda: None   # this deployment's master (None: none known)


class Deployer:
    """Runs one rollout at a time from this node over the nodes' admin APIs."""

    def __init__(self, me: str, clock, peers: Callable[[], dict[str, str]], settings: dict | None = None,
                 cluster: ClusterView = ClusterView()) -> None:
        self.me, self.clock, self.peers, self.cluster = me, clock, peers, cluster
        self.bundles: BundlePeer | None = None   # (with a mesh: bundles go to its members over it)
        self.runner_url = ""   # the admin API of the master this node handed its last deploy to
        self.settings = settings or {}   # Rollout's timings (tests shorten them)
        self.rollout: Rollout | None = None
        self.deployment = ""
        self.urls: dict[str, str] = {}
        self.previous: dict[str, str] = {}   # node -> the env it ran before its restart
        self.restarted_at: dict[str, float] = {}   # node -> wall time of its restart (new alerts: after)
        self.bundle = b""
        self.allow_downgrade = False
        self._timer = None
        self.handed_over = False   # the rollout went on in this node's next process

    # -- across this node's own restart (handover.py carries it) -------------------------------
    def export(self) -> dict | None:
        """The running rollout, for the next process of this node; it stops here."""
        if self.rollout is None or self.rollout.result is not None:
            return None
        self.handed_over = True
        self._timer.cancel()
        return {"rollout": dataclasses.asdict(self.rollout), "now": self.clock.monotonic(),
                "deployment": self.deployment, "urls": self.urls, "previous": self.previous,
                "restarted_at": self.restarted_at,
                "bundle": base64.b64encode(self.bundle).decode(), "allow_downgrade": self.allow_downgrade}

    def resume(self, state: dict | None) -> None:
        """Goes on with a rollout the process before this one ran (this process is its
        restart of this node: that step is done)."""
        if not state:
            return
        now = self.clock.monotonic()
        shift = now - state["now"]   # (each process's monotonic clock: times move over as ages)
        r = dict(state["rollout"])
        progress = [NodeProgress(**p) for p in r.pop("progress")]
        for p in progress:
            p.since += shift
            p.healthy_since = None if p.healthy_since is None else p.healthy_since + shift
        self.rollout = Rollout(**r)
        self.rollout.progress = progress
        if self.rollout._next_check != float("inf"):
            self.rollout._next_check += shift
        self.deployment, self.urls, self.previous = state["deployment"], state["urls"], state["previous"]
        self.restarted_at = state.get("restarted_at", {})   # (a runner of an older release has none)
        self.bundle, self.allow_downgrade = base64.b64decode(state["bundle"]), state["allow_downgrade"]
        log.info("deploy %s: going on after this node's restart", self.rollout.version)
        self._timer = self.clock.every(0.5, lambda now: self._run(self.rollout.tick(now)))
        current = self.rollout.progress[self.rollout.current]
        if current.node == self.me and current.state == RESTARTING:
            self._run(self.rollout.done(self.me, True, "", now))

    def status(self) -> dict:
        if self.rollout is None:
            return {"state": "none"}
        return {"deployment": self.deployment, "runner": self.me, **self.rollout.status()}

    async def start(self, data: bytes, nodes: dict[str, str], q: dict) -> dict:
        if self.rollout is not None and self.rollout.result is None:
            raise ValueError("a deploy is running already (GET /api/deploy)")
        self.runner_url = ""
        urls = nodes or self.peers()
        if not urls:
            raise ValueError("no nodes to deploy to")
        # This node last: its own restart hands the rollout over (export/resume).
        order = sorted(urls, key=lambda n: (n == self.me, n))
        self.urls, self.bundle, self.previous, self.restarted_at = urls, data, {}, {}
        self.deployment = q.get("deployment", "")
        self.allow_downgrade = q.get("allow_downgrade") == "1"
        version = json.loads(_manifest_of(data))["version"]
        self.rollout = Rollout(version, order, canary=int(q.get("canary", 1)), **self.settings)
        self._timer = self.clock.every(0.5, lambda now: self._run(self.rollout.tick(now)))
        self._run(self.rollout.start(self.clock.monotonic()))
        return self.status()

    def _run(self, actions) -> None:
        if self.handed_over:
            return
        for a in actions:
            if isinstance(a, Finished):
                log.log(logging.INFO if a.ok else logging.ERROR, "deploy %s: %s", self.rollout.version, a.reason)
                self._timer.cancel()
            else:
                asyncio.ensure_future(self._carry(a))

    async def _carry(self, a) -> None:
        url = self.urls[a.node].rstrip("/")
        version = self.rollout.version

        def call(method, path, data=None):
            return asyncio.get_running_loop().run_in_executor(None, _call, method, url + path, data)
        if isinstance(a, Verify) and self.bundles is not None and self.bundles.linked(a.node):
            ok, why = await self.bundles.send(a.node, version, self.bundle, self.allow_downgrade)
            status, body = (200, {}) if ok else (422, {"refused": why})
        elif isinstance(a, Verify):   # (this node itself, or a node outside the mesh: --node ID=URL)
            q = "?allow_downgrade=1" if self.allow_downgrade else ""
            status, body = await call("POST", "/api/release/stage" + q, self.bundle)
        elif isinstance(a, Install):
            status, body = await call("POST", "/api/release/install?" + urlencode({"version": version}))
        elif isinstance(a, Restart):
            status, body = await call("GET", "/api/release")
            if status == 200:
                self.previous[a.node] = body["env"]
                self.restarted_at[a.node] = self.clock.wall()
                status, body = await call("POST", "/api/release/restart?" + urlencode({"env": version}))
        elif isinstance(a, CheckHealth):
            healthz, _ = await call("GET", "/healthz")
            info = None
            if healthz == 200:
                status, body = await call("GET", "/api/release")
                info = body if status == 200 else None
            problem = health_problem(version, healthz, info, self.cluster.member_state(a.node),
                                     self.cluster.alerts(), self.restarted_at.get(a.node, 0.0))
            if info is not None and info.get("successor_exit") is not None:
                self._run(self.rollout.done(a.node, False, problem, self.clock.monotonic(), final=True))
                return
            status, body = (200, {}) if not problem else (0, {"error": problem})
        elif isinstance(a, Rollback):
            env = self.previous.get(a.node, BASE)
            status, body = await call("POST", "/api/release/restart?" + urlencode({"env": env}))
        ok = 200 <= status < 300
        detail = "" if ok else str(body.get("refused") or body.get("error") or body)[:500]
        self._run(self.rollout.done(a.node, ok, detail, self.clock.monotonic()))


def _manifest_of(data: bytes) -> bytes:
    import io
    import tarfile
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            return tar.extractfile(bundle.MANIFEST).read()
    except (tarfile.TarError, KeyError, AttributeError) as e:
        raise bundle.Refused(f"not a release bundle ({e})") from None


def mesh_admin_urls(mesh_status: dict | None, me: str, admin: tuple[str, int] | None) -> dict[str, str]:
    """The nodes a deploy goes to by default: every member of this node's mesh, its admin
    API at its mesh host on this node's admin port (how `up --nodes N` lays nodes out;
    `farts-edge deploy --node ID=URL` says otherwise)."""
    if admin is None:
        return {}
    urls = {me: f"http://{f'[{admin[0]}]' if ':' in admin[0] else admin[0]}:{admin[1]}/"}
    for m in (mesh_status or {}).get("members", []):
        host = (m.get("mesh") or "").rpartition(":")[0]
        if not m.get("self") and host and m.get("state") in ("alive", "draining"):
            urls[m["id"]] = f"http://{host}:{admin[1]}/"
    return urls


def admin_routes(cfg, metrics, clock, peers: Callable[[], dict[str, str]], handover,
                 cluster: ClusterView = ClusterView(), behind: Callable[[], str] = str,
                 bus=None, alert: Callable[[str], None] = lambda reason: None) -> list:
    """The routes, and the deploy's place in the handover: a rollout this node runs goes
    on in its next process. ``alert(reason)``: a bundle this node refused (ReleaseNode)."""
    from farts.config import Route
    r = cfg.release
    timings = {"bake": r.bake, "canary_bake": r.canary_bake, "health_timeout": r.health_timeout}
    deployer = Deployer(cfg.node.id, clock, peers, timings, cluster)
    handover.carry["deploy"] = (deployer.export, deployer.resume)
    deployer.resume(handover.carried.get("deploy"))
    # (a key of its own: a process of a release before it ignores it)
    def resume_runner(url: str | None) -> None:
        deployer.runner_url = url or ""
    handover.carry["deploy_runner"] = (lambda: deployer.runner_url, resume_runner)
    resume_runner(handover.carried.get("deploy_runner"))
    node = ReleaseNode(cfg, metrics, behind, alert)
    if bus is not None:   # bundles come and go over the mesh (peer.py)
        deployer.bundles = BundlePeer(cfg.node.id, bus, clock, node.stage, bundle.Refused)
    handler = ReleaseAdminHandler(node, deployer)
    big = 1 << 30   # a bundle is a wheel or a few: tens of MB
    return [(Route(prefix="/api/release", kind="admin", max_body_bytes=big), handler),
            (Route(prefix="/api/deploy", kind="admin", max_body_bytes=big), handler)]
