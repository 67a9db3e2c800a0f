"""What machine a run was on: CPU model, cores, memory, kernel, load, tool versions, git."""
from __future__ import annotations

import os
import platform
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _first(path: str, key: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _out(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def git_head() -> str:
    head = _out(["git", "-C", ROOT, "log", "-1", "--format=%h %s"])[:80]
    dirty = _out(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"])
    return (head or "?") + (" (+ uncommitted changes)" if dirty else "")


def describe() -> dict:
    mem_kib = _first("/proc/meminfo", "MemTotal")
    flags = _first("/proc/cpuinfo", "flags") or ""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 1
    return {
        "cpu_model": _first("/proc/cpuinfo", "model name") or platform.processor() or "?",
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "hypervisor": "hypervisor" in flags.split(),
        "mem_gib": round(int(mem_kib.split()[0]) / 2**20, 1) if mem_kib else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "hostname": platform.node(),
        "git": git_head(),
        "tools": {name: (_out(argv).splitlines() or ["-"])[0][:60]
                  for name, argv in (("wrk", ["wrk", "-v"]), ("nginx", ["nginx", "-v"]),
                                     ("h2load", ["h2load", "--version"]))},
    }
