"""bench/nodeconf.py: the sections a bench script writes come back from TOML as they went
in, and the node config parser takes the local node they start from."""
from __future__ import annotations

import tomllib

import pytest

from bench.nodeconf import local_node, node_toml
from farts import config


def test_sections_tables_and_arrays_of_tables_round_trip():
    sections = {
        **local_node("/tmp/d \"quoted\"", 8080, 9100, workers=2),
        "limits": {"max_connections": 10, "header_timeout": 2.5},
        "pubsub": {},
        "cdn": {"origins": {"o": {"url": "http://127.0.0.1:1/"}}},
        "routes": [{"prefix": "/", "kind": "static", "body": "ünï\ncode\t\\"}, {"prefix": "/p", "kind": "proxy"}],
        "dns": {"enabled": True, "port": 0, "geo": [{"name": "edge"}], "nodes": [{"id": "n", "lat": 1.5,
                                                                                  "addresses": ["::1"]}]},
    }
    text = node_toml(sections, "written by a test")
    assert text.startswith("# written by a test\n[node]\n") and "[pubsub]\n" in text and "[cdn]" not in text
    assert tomllib.loads(text) == sections
    cfg = config.parse(node_toml(local_node("/tmp/x", 0, 0, workers=1)), "bench.toml")
    assert cfg.node.id == "bench" and cfg.listeners.https.enabled is False and cfg.node.workers == 1


def test_a_value_toml_has_no_form_for_is_refused():
    with pytest.raises(TypeError, match="no TOML value"):
        node_toml({"node": {"id": None}})
