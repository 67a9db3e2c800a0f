"""The cores `[node] workers = "auto"` starts (farts/cores.py): the CPU affinity, fewer
under a cgroup CPU quota, read from cgroup trees written here (v2 and v1)."""
from __future__ import annotations

import os

from farts.cores import cpu_quota, usable_cores

AFFINITY = len(os.sched_getaffinity(0))


def write(root, path: str, **files: str) -> None:
    d = root / path
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name.replace("_", ".", 1)).write_text(text + "\n")


def test_v2_the_smallest_quota_from_the_process_cgroup_up(tmp_path):
    write(tmp_path, "", cpu_max="max 100000")
    write(tmp_path, "slice", cpu_max="150000 100000")
    write(tmp_path, "slice/service", cpu_max="max 100000")
    assert cpu_quota(tmp_path, "0::/slice/service\n") == 1.5
    assert usable_cores(tmp_path, "0::/slice/service\n") == min(AFFINITY, 2)
    write(tmp_path, "slice/service", cpu_max="50000 100000")
    assert cpu_quota(tmp_path, "0::/slice/service\n") == 0.5
    assert usable_cores(tmp_path, "0::/slice/service\n") == 1   # (never 0)


def test_v1_cpu_controller(tmp_path):
    cgroups = "12:memory:/docker/c1\n4:cpu,cpuacct:/docker/c1\n0::/\n"
    write(tmp_path, "cpu,cpuacct/docker/c1", cpu_cfs_quota_us="200000", cpu_cfs_period_us="100000")
    assert cpu_quota(tmp_path, cgroups) == 2.0
    write(tmp_path, "cpu,cpuacct/docker/c1", cpu_cfs_quota_us="-1", cpu_cfs_period_us="100000")
    assert cpu_quota(tmp_path, cgroups) is None


def test_no_quota_is_the_affinity(tmp_path):
    write(tmp_path, "a", cpu_max="max 100000")
    for cgroups in ("0::/a\n", "0::/missing\n", "", "garbage\n", "1:cpu:/\n"):
        assert cpu_quota(tmp_path, cgroups) is None
        assert usable_cores(tmp_path, cgroups) == AFFINITY
    write(tmp_path, "a", cpu_max="400000 100000")   # more than the affinity allows
    assert usable_cores(tmp_path, "0::/a\n") == min(AFFINITY, 4)


def test_this_machine():
    assert 1 <= usable_cores() <= AFFINITY
