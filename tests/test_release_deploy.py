"""Deploys on real nodes: each node verifies a bundle before it installs anything (and says
why not, counted); `farts-edge deploy` rolls a real release over three nodes one at a
time, and a release that does not come up is rolled back and stops the deploy."""
from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from conftest import BASE_CONFIG, start_node
from test_release_bundle import flip_byte, make, wheel_name

from farts.release import bundle

ROOT = Path(__file__).resolve().parent.parent


def release_config(keys: Path, **timings) -> str:
    lines = [f'trusted_keys = ["{keys / "release.pub"}"]', "reconnect_spread = 0.5",
             *(f"{k} = {v}" for k, v in timings.items())]
    return "[release]\n" + "\n".join(lines) + "\n"


def deploy(admin: str, path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "farts.cli", "deploy", str(path), "--admin", admin, *args],
                          capture_output=True, text=True, timeout=600)


def metric(node, name: str, label: str) -> float:
    for line in httpx.get(node.url("admin", "/metrics")).text.splitlines():
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
        assert [metric(node, "farts_release_refused_total", f'check="{c}"')
                for c in ("hash", "unknown_key", "platform", "downgrade")] == [1, 1, 1, 1]
        assert not (node.data_dir / "envs" / "0.9.0").exists()
        # through `farts-edge deploy`: the first node refuses, the deploy stops there
        out = deploy(node.url("admin"), tampered, "--node", f"test-node={node.url('admin')}", "--wait")
        assert out.returncode == 1 and "[test-node* failed]" in out.stdout and "SHA-256" in out.stdout, out
        assert httpx.get(node.url("admin", "/api/release")).json()["installed"] == []
    finally:
        node.stop()


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


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_deploy_rolls_three_nodes_and_rolls_back_a_release_that_does_not_come_up(tmp_path, releases):
    keys, good, bad = releases
    cfg = release_config(keys, health_timeout=20, bake=1, canary_bake=2)
    nodes = [start_node(tmp_path / f"n{i}", cfg, base=BASE_CONFIG.replace('"test-node"', f'"n{i}"'))
             for i in (1, 2, 3)]
    targets = [a for n in nodes for a in ("--node", f"n{nodes.index(n) + 1}={n.url('admin')}")]
    info = lambda n: httpx.get(n.url("admin", "/api/release"), timeout=30).json()  # noqa: E731
    try:
        out = deploy(nodes[0].url("admin"), good, *targets, "--canary", "1", "--wait")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "deploy 0.2.0: done [n2* done, n3 done, n1 done]" in out.stdout   # the runner's own node last
        for n in nodes:
            assert (info(n)["version"], info(n)["env"]) == ("0.2.0", "0.2.0")
        before = {n.url("admin"): info(n)["pid"] for n in nodes}

        out = deploy(nodes[0].url("admin"), bad, *targets, "--wait")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "[n2* rolled_back, n3 pending, n1 pending]" in out.stdout, out.stdout
        assert "not healthy within 20 s" in out.stdout
        for _ in range(300):   # n2's rollback: a new process of 0.2.0 takes it over
            if info(nodes[1])["pid"] != before[nodes[1].url("admin")]:
                break
            time.sleep(0.1)
        for n in nodes:   # n2 back on 0.2.0; n1 and n3 never touched
            assert (info(n)["version"], info(n)["env"]) == ("0.2.0", "0.2.0")
        assert info(nodes[1])["pid"] != before[nodes[1].url("admin")]
        assert info(nodes[2])["pid"] == before[nodes[2].url("admin")]
        assert "0.3.0" in info(nodes[1])["installed"] and "0.3.0" not in info(nodes[2])["installed"]
    finally:
        for n in nodes:
            try:
                os.kill(info(n)["pid"], signal.SIGTERM)
            except (OSError, httpx.HTTPError):
                pass
            n.stop()
