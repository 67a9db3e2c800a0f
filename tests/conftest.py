"""Fixtures that start real nodes (the `farts-edge serve` command, as a subprocess) on loopback.

Tests write a config with port 0 everywhere; the node prints the URLs it bound, and
the fixture reads them, so parallel or repeated runs never fight over ports.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings

from farts import pki

# CI runs the same examples every time (a red build is then reproducible, never a
# coin toss); FARTS_HYPOTHESIS=explore searches new ones locally.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("FARTS_HYPOTHESIS", "ci"))


def pytest_sessionstart(session):
    """Refuses to test compiled modules older than their sources: an edit of a .pyx or of
    a compiled .py (setup.py's COMPILED) would otherwise go untested, shadowed by the old
    build."""
    root = Path(__file__).resolve().parent.parent
    stale = []
    for built in [*root.glob("fast/*.so"), *root.glob("farts/**/*.so")]:
        stem = built.name.split(".")[0]
        for source in (built.with_name(stem + ".pyx"), built.with_name(stem + ".pxd"),
                       built.with_name(stem + ".py")):
            if source.exists() and built.stat().st_mtime < source.stat().st_mtime:
                stale.append(str(source.relative_to(root)))
    if stale:
        raise pytest.UsageError(f"compiled modules older than their sources ({', '.join(stale)}): "
                                "run `.venv/bin/python setup.py build_ext --inplace` (ci/setup does)")


URL_LINE = re.compile(rb"^\s+(\w+)\s+(https?://\S+)")


@dataclass
class RunningNode:
    proc: subprocess.Popen
    urls: dict[str, str]
    data_dir: Path
    log_path: Path
    ca: Path
    output: list[bytes] = field(default_factory=list)

    def url(self, listener: str, path: str = "/") -> str:
        return self.urls[listener].rstrip("/") + path

    def port(self, listener: str) -> int:
        return int(self.urls[listener].rsplit(":", 1)[1].strip("/"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


BASE_CONFIG = """
[node]
id = "test-node"
data_dir = "{data_dir}"

[listeners.http]
port = 0
[listeners.https]
port = 0
reload_interval = 0.2
[listeners.admin]
port = 0

[[tenants]]
id = "demo"
hosts = ["localhost", "127.0.0.1"]
api_keys = ["demo-key"]
secret = "demo-secret"

[[tenants]]
id = "other"
hosts = ["other.test"]
api_keys = ["other-key"]
secret = "other-secret"
"""


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_certs(data_dir: Path) -> Path:
    """A CA under data_dir/ca and a localhost certificate in data_dir/certs."""
    ca_dir = data_dir / "ca"
    pki.make_ca(ca_dir)
    pki.issue(ca_dir, data_dir / "certs" / "localhost.crt", data_dir / "certs" / "localhost.key",
              ["localhost", "127.0.0.1"])
    return ca_dir / "ca.crt"


def with_workers(base: str, workers: int) -> str:
    """``base`` with ``[node] workers`` (unless it says it itself), 1 unless a test asks for
    more: a test that starts a node for another reason runs one process, not the default's
    one per core (the tests of worker processes ask for 3; those of `farts-edge up` run the
    default)."""
    if re.search(r"^workers\s*=", base, re.M):
        return base
    line = f"workers = {workers}\n"
    out, found = re.subn(r"^\[node\]\n", lambda m: m.group(0) + line, base, count=1, flags=re.M)
    return out if found else "[node]\n" + line + base


def start_node(tmp_path: Path, extra_config: str = "", base: str = BASE_CONFIG,
               env: dict | None = None, args: tuple = (), serve_args: tuple = (), workers: int = 1) -> RunningNode:
    data_dir = tmp_path / "node"
    data_dir.mkdir(parents=True, exist_ok=True)
    ca = make_certs(data_dir)
    base = with_workers(base, workers)
    config = data_dir / "farts.toml"
    config.write_text(base.format(data_dir=data_dir) + textwrap.dedent(extra_config))
    log_path = data_dir / "node.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "farts.cli", *args, "serve", "--config", str(config), *serve_args],
        stdout=subprocess.PIPE, stderr=open(log_path, "wb"),  # noqa: SIM115
        env={**os.environ, **(env or {})})
    urls: dict[str, str] = {}
    node = RunningNode(proc, urls, data_dir, log_path, ca)
    deadline = time.monotonic() + 20
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            for line in buf.splitlines():
                m = URL_LINE.match(line)
                if m:
                    urls[m.group(1).decode()] = m.group(2).decode()
            if b"Ctrl-C stops the node." in buf:
                node.output.append(buf)
                return node
        elif proc.poll() is not None:
            break
    node.stop(signal.SIGKILL)
    raise RuntimeError(f"node did not start; output {buf!r}; log:\n{log_path.read_text()}")


# A test of a service in a node, run with the node in one process and with three worker
# processes (farts/workers/): its node_factory's nodes get ``[node] workers`` from it.
WORKERS_1_AND_3 = pytest.mark.parametrize("workers", [1, 3], indirect=True, ids=["workers1", "workers3"])


@pytest.fixture
def workers(request) -> int:
    return getattr(request, "param", 1)


@pytest.fixture
def node_factory(tmp_path, workers):
    started: list[RunningNode] = []

    def factory(extra_config: str = "", **kw) -> RunningNode:
        kw.setdefault("workers", workers)
        node = start_node(tmp_path / f"n{len(started)}", extra_config, **kw)
        started.append(node)
        return node

    yield factory
    for node in started:
        node.stop()


@contextlib.contextmanager
def locked(path: Path):
    """Held by one process at a time (the xdist processes of ci/test, or other runs)."""
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture
def default_ports():
    """For a test of `farts-edge up` on its fixed default ports (8080, 8443, 5353, 27017,
    9100...): one such test at a time on this machine (ci/test runs two processes)."""
    with locked(Path(tempfile.gettempdir()) / "farts-tests-default-ports.lock"):
        yield


@pytest.fixture(scope="session")
def release_build(tmp_path_factory):
    """One real `farts-edge release build` of this checkout for the test run (compiling every
    module is a minute): (the keys dir, the bundle, its process). The wheel test checks and
    installs it; the deploy test re-versions its wheel (tests/release_helpers.py).

    Under pytest-xdist (ci/test) each process has its own session: the first to get here
    builds into the run's shared temp folder under a lock, the others wait and reuse it."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    d = shared / "release-build"
    with locked(shared / "release-build.lock"):
        if not (d / "build.json").exists():
            d.mkdir(exist_ok=True)
            run = lambda *a: subprocess.run(  # noqa: E731
                [sys.executable, "-m", "farts.cli", "release", *a], cwd=Path(__file__).resolve().parent.parent,
                capture_output=True, text=True, timeout=800)
            keygen = run("keygen", "--out", str(d / "keys"))
            assert keygen.returncode == 0, keygen.stderr
            build = run("build", "--key", str(d / "keys" / "release.key"), "--out", str(d / "release.tar"))
            (d / "build.json").write_text(json.dumps([build.args, build.returncode, build.stdout, build.stderr]))
    build = subprocess.CompletedProcess(*json.loads((d / "build.json").read_text()))
    return d / "keys", d / "release.tar", build
