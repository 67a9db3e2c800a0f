"""The wheel: built with `python -m build --wheel` (through `farts-edge release build`, which
signs it into a release bundle), installed into a new venv, it works alone."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from farts.release import bundle

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
# Compiling every fast/ module and installing the runtime dependencies into a new venv
# takes minutes on a busy 2-core machine: past the suite's default 120 s.
@pytest.mark.timeout(900)
def test_wheel_installs_into_a_fresh_venv_with_compiled_modules(tmp_path, release_build):
    # One build for two things (a wheel build is minutes; conftest's release_build):
    # `farts-edge release build` runs `python -m build --wheel --no-isolation` on a copy
    # of the files git knows (what a clean clone holds, without build/ leftovers or
    # in-place .so files) and signs the wheel into a bundle; `release verify` accepts it;
    # the wheel inside is then checked and installed into a new venv.
    keys, out, build = release_build
    assert build.returncode == 0, build.stderr[-3000:]
    assert "  | " in build.stderr   # the wheel build's own output, shown as it goes
    run = lambda *a: subprocess.run([sys.executable, "-m", "farts.cli", "release", *a], cwd=ROOT,  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    release = bundle.verify(out, [bundle.load_public_key(keys / "release.pub")])
    assert release.wheel.startswith(f"farts_edge-{release.version}-") and release.wheel.endswith(".whl")
    b = release.manifest["build"]
    assert b["commit"] and b["python"] and b["platform_tags"] and b["built_at"]
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == sorted([bundle.MANIFEST, bundle.SIGNATURE, release.wheel])
        tar.extract(release.wheel, tmp_path / "dist", filter="data")
    verify = run("verify", "--trust", str(keys / "release.pub"), "--current", "0.0.1", str(out))
    assert verify.returncode == 0 and "valid" in verify.stdout, verify.stderr

    dist = tmp_path / "dist"
    wheel = dist / release.wheel
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("fast/http1.") and n.endswith(".so") for n in names), names
    assert any(n.startswith("farts/transport/h1.") and n.endswith(".so") for n in names), names
    assert any(n.startswith("farts/proxy/handler.") and n.endswith(".so") for n in names), names
    assert not any(n.endswith((".pyx", ".c")) for n in names)
    # The status page ships inside the wheel (package data, no build step at install).
    for page in ("index.html", "app.js", "app.css", "land.js"):
        assert f"farts/admin/static/{page}" in names, names

    # auditwheel turns it into a manylinux wheel (the one to publish); install that one.
    bin_dir = str(Path(sys.executable).parent)
    repair = subprocess.run([str(Path(bin_dir) / "auditwheel"), "repair", "-w", str(dist / "manylinux"), str(wheel)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]})
    assert repair.returncode == 0, repair.stderr[-3000:]
    (wheel,) = (dist / "manylinux").glob(f"farts_edge-*manylinux*_{platform.machine()}.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]

    # Run from an empty folder, without PYTHONPATH, so the source tree cannot be imported
    # by accident.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    version = subprocess.run([str(env_dir / "bin" / "farts-edge"), "--version"], cwd=tmp_path, env=clean,
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("farts-edge 0."), version.stderr
    probe = ("import fast.http1, importlib.machinery as m, farts, farts.transport.h1 as h1; "
             "assert fast.http1.__file__.endswith(tuple(m.EXTENSION_SUFFIXES)), fast.http1.__file__; "
             "assert h1.__file__.endswith(tuple(m.EXTENSION_SUFFIXES)), h1.__file__; "
             "assert 'site-packages' in fast.http1.__file__ and 'site-packages' in farts.__file__; "
             "print(fast.http1.RequestParser().feed(b'GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n')[0].host)")
    out = subprocess.run([str(py), "-c", probe], cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "b'a'"
    # ... and the installed package serves it (read through importlib.resources).
    page = subprocess.run([str(py), "-c", "from farts.admin import _static_files as f; "
                           "print(sorted(k.decode() for k in f()))"],
                          cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=60)
    assert page.returncode == 0, page.stderr
    assert "/static/app.js" in page.stdout and "'/'" in page.stdout
