"""The cores this process may use: what ``[node] workers = "auto"`` starts.

Its CPU affinity (taskset, cpuset), fewer when its cgroup allows less CPU time than that
(a container run with ``--cpus 2`` on a 20-thread machine sees 20 cores but gets 2 cores'
worth of time: 20 workers there would only take turns). A quota set on any cgroup above
the process's own limits it too, so each level up to the root is read.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def usable_cores(root: Path = ROOT, cgroups: str | None = None) -> int:
    """``cgroups``: the text of /proc/self/cgroup (read when None)."""
    cores = len(os.sched_getaffinity(0))
    quota = cpu_quota(root, cgroups)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def cpu_quota(root: Path = ROOT, cgroups: str | None = None) -> float | None:
    """The CPUs' worth of time this process's cgroups allow (the smallest quota from
    its cgroup up to the root), None when none is set or none can be read. cgroup v2:
    ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"); v1: ``cpu.cfs_quota_us`` (-1: none)
    and ``cpu.cfs_period_us`` under the cpu controller's mount."""
    if cgroups is None:
        try:
            cgroups = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    quotas = []
    for line in cgroups.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":   # v2
            base, read = root, _v2
        elif "cpu" in controllers.split(","):
            base, read = root / controllers, _v1
            if not base.is_dir():
                base = root / "cpu"
        else:
            continue
        level = base / path.lstrip("/")
        while True:
            quota = read(level)
            if quota is not None:
                quotas.append(quota)
            if level == base or base not in level.parents:
                break
            level = level.parent
    return min(quotas) if quotas else None


def _v2(d: Path) -> float | None:
    try:
        quota, period = (d / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1(d: Path) -> float | None:
    try:
        quota = int((d / "cpu.cfs_quota_us").read_text())
        period = int((d / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
