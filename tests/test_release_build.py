"""`farts-edge release build` on this checkout: a real wheel, signed; `verify` accepts it."""
from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from farts.release import bundle

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(900)   # compiling fast/ on a busy 2-core machine takes minutes
def test_build_signs_this_checkouts_wheel_and_verify_accepts_it(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "farts.cli", "release", *a], cwd=ROOT,  # noqa: E731
                                    capture_output=True, text=True, timeout=800)
    keygen = run("keygen", "--out", str(tmp_path / "keys"))
    assert keygen.returncode == 0, keygen.stderr
    out = tmp_path / "release.tar"
    build = run("build", "--key", str(tmp_path / "keys" / "release.key"), "--out", str(out))
    assert build.returncode == 0, build.stderr[-3000:]
    assert "  | " in build.stderr   # the wheel build's own output, shown as it goes
    release = bundle.verify(out, [bundle.load_public_key(tmp_path / "keys" / "release.pub")])
    assert release.wheel.startswith(f"farts_edge-{release.version}-") and release.wheel.endswith(".whl")
    b = release.manifest["build"]
    assert b["commit"] and b["python"] and b["platform_tags"] and b["built_at"]
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == sorted([bundle.MANIFEST, bundle.SIGNATURE, release.wheel])
    verify = run("verify", "--trust", str(tmp_path / "keys" / "release.pub"), "--current", "0.0.1", str(out))
    assert verify.returncode == 0 and "valid" in verify.stdout, verify.stderr
