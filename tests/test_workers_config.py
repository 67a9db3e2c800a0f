"""`[node] workers`: a number of processes or "auto", refused otherwise with the key and file."""
from __future__ import annotations

import os

import pytest

from farts import config


@pytest.mark.parametrize("value, count", [("1", 1), ("3", 3), ('"auto"', len(os.sched_getaffinity(0)))])
def test_workers_setting(value, count):
    assert config.parse(f"[node]\nworkers = {value}\n").node.worker_count == count


@pytest.mark.parametrize("value", ["0", "257", '"all"', "true", "1.5"])
def test_bad_workers_setting_names_key_and_file(value):
    with pytest.raises(config.ConfigError, match=r'^farts\.toml: node\.workers: expected a number of processes '
                                                 r'1-256, or "auto"'):
        config.parse(f"[node]\nworkers = {value}\n", "farts.toml")
