"""[master] and [node] deployment: what is accepted, and errors that name the key and the file."""
from __future__ import annotations

import pytest

from farts import config, quickstart
from farts.config import ConfigError

DB = "[db]\nenabled = true\n"


def parse(text: str):
    return config.parse(text, "/srv/farts.toml")


def test_a_master_section_with_crons_and_escalation_is_read():
    cfg = parse(DB + """
[node]
deployment = "eu"
[upstreams.app]
servers = ["127.0.0.1:3000"]
[master]
enabled = true
[[master.crons]]
name = "report"
schedule = "0 3 * * 1-5"
timezone = "Europe/Paris"
upstream = "app"
catch_up = "all"
[[master.alerts.escalation]]
name = "room"
targets = ["https://chat.example/hook"]
""")
    assert cfg.node.deployment == "eu" and cfg.master.crons[0].catch_up == "all"
    assert [r.rule for r in cfg.master.alerts.rules][:2] == ["node_dead", "replication_lag"]   # the defaults
    assert config.parse("", "x.toml").node.deployment == "global"


@pytest.mark.parametrize("text, message", [
    ("[master]\nenabled = true\n", r"master.enabled: needs \[db\] enabled"),
    (DB + "[mesh]\nenabled = true\n[master]\nenabled = true\n", r"master.nodes: required with \[mesh\] enabled"),
    (DB + '[master]\nenabled = true\nnodes = ["a", "b"]\n', "master.nodes: must include this node"),
    (DB + '[master]\nenabled = true\n[[master.crons]]\nname = "x"\nschedule = "* * *"\nupstream = "app"\n',
     r'master.crons\[0\].schedule: expected a 5-field cron schedule'),
    (DB + '[master]\nenabled = true\n[[master.crons]]\nname = "x"\nschedule = "* * * * *"\ntimezone = "Mars/Olympus"\n',
     r"master.crons\[0\].timezone: expected an IANA time zone"),
    (DB + '[master]\nenabled = true\n[[master.crons]]\nname = "x"\nschedule = "* * * * *"\nupstream = "nope"\n',
     r"master.crons\[0\].upstream: no upstream named 'nope'"),
    (DB + '[master]\nenabled = true\n[[master.crons]]\nname = "a@b"\nschedule = "* * * * *"\n',
     r"master.crons\[0\].name: expected a name without '@'"),
    (DB + '[master]\nclock_drift = 0.7\n', "master.clock_drift: expected a number 0 <= drift < 0.5"),
    (DB + '[master]\n[[master.alerts.rules]]\nrule = "coffee"\n', r'master.alerts.rules\[0\].rule: expected one of'),
    (DB + '[master]\nenabled = true\n[[master.crons]]\nname = "geo"\nschedule = "0 4 * * 3"\naction = "task"\n'
     'task = "geoip_rebuild"\n', r"master.crons\[0\].task: geoip_rebuild needs master.geoip.url"),
    (DB + '[master.geoip]\nurl = "ftp://example.com/db.tar.gz"\n', r"master.geoip.url: expected an http:// or https:// URL"),
])
def test_bad_master_settings_are_refused_naming_the_key_and_the_file(text, message):
    with pytest.raises(ConfigError, match="^/srv/farts.toml: " + message):
        parse(text)


def test_up_writes_a_master_for_the_local_cluster(tmp_path):
    for i, path in enumerate(quickstart.prepare_cluster(tmp_path / "cluster", 3), 1):
        cfg = config.load(path)
        assert cfg.node.id == f"node-{i}" and cfg.master.enabled
        assert cfg.master.nodes == ["node-1", "node-2", "node-3"]
    single = config.load(quickstart.prepare(tmp_path / "single"))
    assert single.master.enabled and single.master.nodes == []   # no mesh: the node alone
