"""Deploys on real nodes: each node verifies a bundle before it installs anything (and says
why not, counted); `farts-edge deploy` rolls a real release over a 3-node mesh under load
one node at a time (the master runs it, the bundle goes over the mesh), and a release
that does not come up is rolled back and stops the deploy."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections import Counter
from pathlib import Path

import httpx
import pymongo
import pytest
from conftest import BASE_CONFIG, start_node
from mesh_helpers import make_ca, mesh_address, start_mesh_node, states, wait_for
from test_pubsub import PUBSUB_ROUTES, ws_url
from test_release_bundle import flip_byte, make, wheel_name
from test_release_restart import Load, Subscriber, delivered, mongo_writer

from farts.release import bundle

ROOT = Path(__file__).resolve().parent.parent


def release_config(keys: Path, **timings) -> str:
    lines = [f'trusted_keys = ["{keys / "release.pub"}"]', "reconnect_spread = 0.5",
             *(f"{k} = {v}" for k, v in timings.items())]
    return "[release]\n" + "\n".join(lines) + "\n"


def deploy(admin: str, path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "farts.cli", "deploy", str(path), "--admin", admin, *args],
                          capture_output=True, text=True, timeout=600)


def metric(admin: str, name: str, label: str) -> float:
    for line in httpx.get(admin.rstrip("/") + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_node_refuses_bad_bundles_with_the_reason_and_counts_them(tmp_path):
    key_path, _ = bundle.keygen(tmp_path / "keys")
    key = bundle.load_private_key(key_path)
    node = start_node(tmp_path, release_config(tmp_path / "keys"))
    try:
        stage = node.url("admin", "/api/release/stage")
        tampered = make(tmp_path, key, "0.9.0")
        flip_byte(tampered, wheel_name("0.9.0"), 100)
        r = httpx.post(stage, content=tampered.read_bytes())
        assert r.status_code == 422 and "SHA-256 differs" in r.json()["refused"]
        other_key = bundle.load_private_key(bundle.keygen(tmp_path / "other")[0])
        (tmp_path / "o").mkdir()
        r = httpx.post(stage, content=make(tmp_path / "o", other_key, "0.9.0").read_bytes())
        assert r.status_code == 422 and "not trusted" in r.json()["refused"]
        r = httpx.post(stage, content=make(tmp_path, key, "0.9.1", platform="macosx_11_0_arm64").read_bytes())
        assert r.status_code == 422 and "no wheel for this platform" in r.json()["refused"]
        r = httpx.post(stage, content=make(tmp_path, key, "0.0.1").read_bytes())
        assert r.status_code == 422 and "downgrade" in r.json()["refused"]
        assert [metric(node.url("admin"), "farts_release_refused_total", f'check="{c}"')
                for c in ("hash", "unknown_key", "platform", "downgrade")] == [1, 1, 1, 1]
        assert not (node.data_dir / "envs" / "0.9.0").exists()
        # through `farts-edge deploy`: the first node refuses, the deploy stops there
        out = deploy(node.url("admin"), tampered, "--node", f"test-node={node.url('admin')}", "--wait")
        assert out.returncode == 1 and "[test-node* failed]" in out.stdout and "SHA-256" in out.stdout, out
        assert httpx.get(node.url("admin", "/api/release")).json()["installed"] == []
    finally:
        node.stop()


def open_alerts(admin: str) -> dict[str, str]:
    """key -> summary of the master's open alerts (read from the replicated store)."""
    alerts = httpx.get(admin.rstrip("/") + "/api/master/alerts", timeout=30).json()["alerts"]
    return {a["key"]: a["summary"] for a in alerts if a.get("resolved") is None}


@pytest.mark.timeout(180)
def test_a_bundle_refused_over_the_mesh_raises_the_masters_alert(tmp_path):
    """The deploy's canary refuses a tampered bundle it got over the mesh; it records the
    refusal in the replicated store, and the master opens ``bundle_refused:<node>`` with
    the reason (default rules), visible on every node's /api/master/alerts."""
    key_path, _ = bundle.keygen(tmp_path / "keys")
    tampered = make(tmp_path, bundle.load_private_key(key_path), "9.0.0")
    flip_byte(tampered, wheel_name("9.0.0"), 100)
    ids = ["n1", "n2"]
    extra = ("\n[db]\nenabled = true\nport = 0\n"
             + f"[master]\nenabled = true\nnodes = {json.dumps(ids)}\nlease_seconds = 2\n"
             + "[master.alerts]\ninterval = 1\n" + release_config(tmp_path / "keys"))
    ca = make_ca(tmp_path)
    n1 = start_mesh_node(tmp_path, ca, "n1", [], extra=extra)
    n2 = start_mesh_node(tmp_path, ca, "n2", [mesh_address(n1)], extra=extra)
    admin = {"n1": n1.url("admin"), "n2": n2.url("admin")}
    try:
        master = wait_for(lambda: (httpx.get(admin["n1"] + "api/master").json()["deployments"].get("global")
                                   or {}).get("master"), 30)
        assert master in ids
        canary = next(i for i in ids if i != master)
        out = deploy(admin["n1"], tampered, *(a for i in ids for a in ("--node", f"{i}={admin[i]}")), "--wait")
        assert out.returncode == 1 and f"[{canary}* failed" in out.stdout and "SHA-256" in out.stdout, out
        assert wait_for(lambda: f"bundle_refused:{canary}" in open_alerts(admin[master]), 30), \
            open_alerts(admin[master])
        summary = open_alerts(admin[canary])[f"bundle_refused:{canary}"]
        assert f"node {canary} refused 1 release bundle(s)" in summary and "SHA-256 differs" in summary, summary
        assert f"bundle_refused:{master}" not in open_alerts(admin[master])
    finally:
        n2.stop()
        n1.stop()


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def broken_wheel(out: Path, version: str) -> Path:
    """A release that installs and cannot start: its farts package fails on import."""
    info = f"farts_edge-{version}.dist-info"
    files = {"farts/__init__.py": b"raise SystemExit('this release is broken on purpose')\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: farts-edge\nVersion: {version}\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{n},{_record_hash(d)},{len(d)}\n" for n, d in files.items()) + f"{info}/RECORD,,\n"
    path = out / f"farts_edge-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for n, d in {**files, f"{info}/RECORD": record.encode()}.items():
            z.writestr(n, d)
    return path


def reversioned(wheel: Path, version: str, out: Path) -> Path:
    """The same wheel as another version: its dist-info renamed, METADATA's Version and the
    RECORD rewritten (what a build of the checkout at that version would differ in)."""
    name, old, rest = wheel.name.split("-", 2)
    old_info, new_info = f"{name}-{old}.dist-info/", f"{name}-{version}.dist-info/"
    files = {}
    with zipfile.ZipFile(wheel) as z:
        for n in z.namelist():
            data = z.read(n)
            if n == old_info + "METADATA":
                data = data.replace(f"\nVersion: {old}\n".encode(), f"\nVersion: {version}\n".encode(), 1)
            files[new_info + n[len(old_info):] if n.startswith(old_info) else n] = data
    record = new_info + "RECORD"
    files[record] = ("".join(f"{n},{_record_hash(d)},{len(d)}\n" for n, d in files.items() if n != record)
                     + f"{record},,\n").encode()
    path = out / f"{name}-{version}-{rest}"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in files.items():
            z.writestr(n, d)
    return path


@pytest.fixture(scope="module")
def releases(tmp_path_factory, release_build):
    """This checkout's real wheel (conftest's one build of the session) as version 0.2.0,
    and a broken 0.3.0."""
    d = tmp_path_factory.mktemp("releases")
    keys, built, build = release_build
    assert build.returncode == 0, build.stderr[-3000:]
    with tarfile.open(built) as tar:
        (wheel,) = [m for m in tar.getnames() if m.endswith(".whl")]
        tar.extract(wheel, d, filter="data")
    key = bundle.load_private_key(keys / "release.key")
    good = bundle.make_bundle(key, [reversioned(d / wheel, "0.2.0", d)], "0.2.0", {"commit": "this checkout"},
                              d / "good-0.2.0.tar")
    bad = bundle.make_bundle(key, [broken_wheel(d, "0.3.0")], "0.3.0", {"commit": "broken on purpose"},
                             d / "bad-0.3.0.tar")
    return keys, good, bad


SUBSCRIBERS = int(os.environ.get("FARTS_DEPLOY_SUBSCRIBERS", "1000"))
IDS = ["n1", "n2", "n3"]


def cluster_config(keys: Path) -> str:
    """The [mesh] node's other tables: pub/sub, a static route, the database, the master
    (its alerts each second: the deploy's gate reads them) and the release keys."""
    tenants = BASE_CONFIG[BASE_CONFIG.index("[[tenants]]"):]
    return ("\n" + tenants + PUBSUB_ROUTES + '[[routes]]\nprefix = "/ping"\nkind = "static"\nbody = "pong"\n'
            + "[db]\nenabled = true\nport = 0\n"
            + f"[master]\nenabled = true\nnodes = {json.dumps(IDS)}\nlease_seconds = 2\n"
            + "[master.alerts]\ninterval = 1\n"
            + "".join(f'[[master.alerts.rules]]\nrule = "{r}"\n' for r in ("node_dead", "replication_lag",
                                                                            "version_mismatch"))
            + release_config(keys, health_timeout=60, bake=1, canary_bake=2))


def show_status(admin: str) -> str:
    return subprocess.run([sys.executable, "-m", "farts.cli", "status", "--admin", admin],
                          capture_output=True, text=True, timeout=60).stdout


@pytest.mark.slow
@pytest.mark.timeout(540)   # (about 150 s on CI; a busier machine restarts each node slower)
def test_a_cluster_under_load_rolls_to_a_new_release_and_back_from_a_broken_one(tmp_path, releases):
    keys, good, bad = releases
    ca, extra = make_ca(tmp_path), cluster_config(keys)
    nodes: dict = {}
    for node_id in IDS:
        nodes[node_id] = start_mesh_node(tmp_path, ca, node_id, [mesh_address(nodes["n1"])] if nodes else [],
                                         extra=extra)
    admin = {i: n.url("admin") for i, n in nodes.items()}
    info = lambda i: httpx.get(admin[i] + "api/release", timeout=30).json()  # noqa: E731
    pids = {i: n.proc.pid for i, n in nodes.items()}
    try:
        assert wait_for(lambda: all({s for s, _ in states(n).values()} == {"alive"} and len(states(n)) == 3
                                    for n in nodes.values()), 30)
        master = wait_for(lambda: (httpx.get(admin["n1"] + "api/master").json()["deployments"].get("global")
                                   or {}).get("master"), 30)
        assert master in IDS
        first_runner = master   # the master that runs deploy A
        targets = [a for i in IDS for a in ("--node", f"{i}={admin[i]}")]
        db = {i: re.search(r"db\s+mongodb://([\d.]+):(\d+)/", b"".join(n.output).decode()).groups()
              for i, n in nodes.items()}

        async def main():
            subs = [Subscriber(ws_url(nodes[IDS[k % 3]])) for k in range(SUBSCRIBERS)]
            ready = [asyncio.Event() for _ in subs]
            tasks = [asyncio.ensure_future(s.run(r)) for s, r in zip(subs, ready, strict=True)]
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 120)
            # (events published on each node in turn: they cross the mesh while its nodes restart)
            load = Load([n.url("http", "/api/publish") for n in nodes.values()],
                        [n.url("http", "/ping") for n in nodes.values()], pause=0.1, ping_pause=0.02)
            stop_db, acked, db_errors = threading.Event(), [], []
            writer = threading.Thread(target=mongo_writer, args=(*db["n3"][:1], int(db["n3"][1]), stop_db, acked,
                                                                  db_errors))
            writer.start()
            try:
                # A: this checkout as 0.2.0, asked of n1, run by the master, over the mesh.
                # (The master as it is now: the subscribers took a while; its lease is short.)
                nonlocal first_runner
                first_runner = httpx.get(admin["n1"] + "api/master").json()["deployments"]["global"]["master"]
                rolled = await asyncio.to_thread(deploy, admin["n1"], good, *targets, "--canary", "1", "--wait")
                assert rolled.returncode == 0, rolled.stdout + rolled.stderr
                order = [i for i in IDS if i != first_runner] + [first_runner]   # the runner's own node last
                assert f"deploy 0.2.0: done [{order[0]}* done, {order[1]} done, {order[2]} done]" in rolled.stdout
                for i in IDS:
                    assert (info(i)["version"], info(i)["env"]) == ("0.2.0", "0.2.0")
                    assert info(i)["pid"] != pids[i]
                seen = await asyncio.to_thread(wait_for, lambda: show_status(admin["n1"]).count(" 0.2.0") == 3, 30)
                assert seen, show_status(admin["n1"])
                # B: a release that cannot start: the canary rolls back, the deploy stops
                before = {i: info(i)["pid"] for i in IDS}
                runner = httpx.get(admin["n1"] + "api/master").json()["deployments"]["global"]["master"]
                order = [i for i in IDS if i != runner] + [runner]
                broken = await asyncio.to_thread(deploy, admin["n1"], bad, *targets, "--wait")
                assert broken.returncode == 1, broken.stdout + broken.stderr
                assert f"[{order[0]}* rolled_back, {order[1]} pending, {order[2]} pending]" in broken.stdout, \
                    broken.stdout
                assert "its new process exited with status 1" in broken.stdout
                status = await asyncio.to_thread(deploy, admin["n1"], Path("status"))
                assert "deploy 0.3.0: stopped" in status.stdout, status.stdout
                await asyncio.to_thread(wait_for, lambda: info(order[0])["pid"] != before[order[0]], 60)
                for i in IDS:   # the canary back on 0.2.0 (a new process), the others never touched
                    assert (info(i)["version"], info(i)["env"]) == ("0.2.0", "0.2.0")
                assert info(order[0])["pid"] != before[order[0]]
                assert [info(i)["pid"] for i in order[1:]] == [before[i] for i in order[1:]]
                assert "0.3.0" in info(order[0])["installed"] and "0.3.0" not in info(order[1])["installed"]
                await asyncio.sleep(1.0)
            finally:
                await load.finish()
                stop_db.set()
                await asyncio.to_thread(writer.join, 60)
            await delivered(subs, tasks, load.published)
            return subs, load, acked

        subs, load, acked = asyncio.run(main())
        assert load.failures == []
        assert len(load.published) > 50
        # every event once: resumed after each restart of its node, no gap, no repeat
        want = Counter(map(str, load.published))
        wrong = [(s.url, sorted(want - Counter(map(str, s.got))), sorted(Counter(map(str, s.got)) - want),
                  s.not_recovered) for s in subs]
        wrong = [w for w in wrong if w[1] or w[2]]
        assert wrong == [], (f"{len(wrong)} subscribers: (node, lost, twice, resumes not recovered)", wrong[:10])
        assert all(s.restarts >= 1 for s in subs)
        assert len(acked) > 20
        client = pymongo.MongoClient(db["n3"][0], int(db["n3"][1]), serverSelectionTimeoutMS=10000)
        present = {d["_id"] for d in client.restart.writes.find({}, {"_id": 1})}
        client.close()
        assert set(acked) <= present, sorted(set(acked) - present)[:20]
        # the bundle went over the mesh: each node but the runner received it there
        for i in IDS:
            assert ("release 0.2.0: received over the mesh from" in nodes[i].log()) == (i != first_runner), i
    finally:
        for i, n in nodes.items():
            try:
                os.kill(info(i)["pid"], signal.SIGTERM)
            except (OSError, httpx.HTTPError):
                pass
            n.stop()

