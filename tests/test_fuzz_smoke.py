"""The listener fuzz harness (bench/fuzz.py) in its smoke mode: a few seconds of mutated
input on every listener of a real node, which must stay healthy (answers on every
listener, no traceback in its log, RSS bounded). The long run is by hand; its figures
are in bench/RESULTS.md."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_listener_survives_a_smoke_run_of_the_fuzzer():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "fuzz.py"), "--smoke", "--seed", "7"],
                         capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| listener")
            and not ln.startswith("| ---")]
    assert len(rows) == 8, out.stdout        # every listener was driven
    assert all(int(r.split("|")[2].replace(",", "")) > 0 for r in rows), rows   # with inputs
    assert "failures: 0" in out.stdout
