"""Config: the example parses, and every kind of mistake names the file and the key."""
import subprocess
import sys

import pytest

from farts import config


def test_example_is_a_valid_config_with_every_section():
    cfg = config.parse(config.EXAMPLE, "example.toml")
    assert cfg.listeners.https.port == 8443
    assert cfg.tenants[0].id == "demo" and cfg.tenants[0].hosts == ["localhost", "127.0.0.1"]
    assert [r.kind for r in cfg.routes] == ["proxy", "static"]
    assert cfg.upstreams["app"].servers == ["127.0.0.1:3000"]
    assert cfg.limits.max_header_bytes == 16384


def test_defaults_without_a_file():
    cfg = config.parse("", "empty.toml")
    assert (cfg.listeners.http.port, cfg.listeners.https.port, cfg.listeners.admin.port) == (8080, 8443, 9100)


@pytest.mark.parametrize("text, message", [
    ('[listeners.https]\nport = "x"', 'listeners.https.port: expected an integer 0-65535 (0: any free port), got "x"'),
    ("[listeners.https]\nport = -1", "listeners.https.port: expected an integer 0-65535 (0: any free port), got -1"),
    ("[limits]\nmax_header_bytes = 1.5", "limits.max_header_bytes: expected an integer >= 256, got 1.5"),
    ("[limits]\nmax_header_bytes = 8", "limits.max_header_bytes: expected an integer >= 256, got 8"),
    ('[[routes]]\nprefix = "/x"\nkind = "static"\nstatus = 204',
     "routes[0].status: expected an HTTP status 200-599 other than 204 and 304, got 204"),
    ('[[routes]]\nprefix = "/x"\nkind = "static"\nstatus = 100',
     "routes[0].status: expected an HTTP status 200-599 other than 204 and 304, got 100"),
    ("[limits]\nheader_timeout = -1", "limits.header_timeout: expected a positive number, got -1"),
    ("[node]\nnmae = 1", "node.nmae: unknown key"),
    ("surprise = 1", "surprise: unknown key"),
    ('[[tenants]]\nid = "a"', "tenants[0].hosts: required key is missing"),
    ('[[tenants]]\nid = "a"\nhosts = "x"', 'tenants[0].hosts: expected a list, got "x"'),
    ('[[tenants]]\nid = "a"\nhosts = ["h"]\n[[tenants]]\nid = "b"\nhosts = ["H"]',
     "tenants[1].hosts: 'H' already belongs to tenant 'a'"),
    ('[[routes]]\nprefix = "/x"\nkind = "proxy"', 'routes[0].upstream: required for kind = "proxy"'),
    ('[[routes]]\nprefix = "/x"\nkind = "proxy"\nupstream = "nope"', "routes[0].upstream: no upstream named 'nope'"),
    ('[[routes]]\nprefix = "x"\nkind = "static"', "routes[0].prefix: expected a path prefix starting with '/'"),
    ('[[routes]]\nprefix = "/x"\nkind = "teleport"', 'routes[0].kind: expected one of "proxy", "static", "admin"'),
    ('[upstreams.app]\nservers = ["nohost"]', "upstreams.app.servers: expected a non-empty list of 'host:port'"),
    ("[http]\nunknown_host_status = 500", "http.unknown_host_status: expected one of 404, 421, got 500"),
    ("[listeners]\nhttp = 5", "listeners.http: expected a table, got 5"),
    ("[listeners.http]\nenabled = 1", "listeners.http.enabled: expected true or false, got 1"),
    ("x = ", "not valid TOML"),
])
def test_errors_name_the_file_and_the_key(text, message):
    with pytest.raises(config.ConfigError) as e:
        config.parse(text, "/srv/farts.toml")
    assert str(e.value).startswith("/srv/farts.toml: ")
    assert message in str(e.value)


def test_data_dir_is_relative_to_the_file(tmp_path):
    f = tmp_path / "sub" / "farts.toml"
    f.parent.mkdir()
    f.write_text('[node]\ndata_dir = "data"\n')
    assert config.load(f).data_dir == (tmp_path / "sub" / "data").resolve()


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "nope.toml")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "farts.cli", *args], capture_output=True, text=True, timeout=60)


def test_cli_config_example_then_check(tmp_path):
    out = run_cli("config", "example")
    assert out.returncode == 0
    f = tmp_path / "example.toml"
    f.write_text(out.stdout)
    checked = run_cli("config", "check", str(f))
    assert checked.returncode == 0, checked.stderr
    assert "ok (1 tenants, 2 routes, 1 upstream groups)" in checked.stdout


def test_cli_config_check_reports_the_key_and_fails(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('[listeners.https]\nport = "x"\n')
    out = run_cli("config", "check", str(f))
    assert out.returncode == 2
    assert f'{f.resolve()}: listeners.https.port: expected an integer 0-65535 (0: any free port), got "x"' in out.stderr


def test_cli_rejects_an_unknown_log_level():
    out = run_cli("--log-level", "nope", "config", "example")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_cli_version():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("farts-edge ")


@pytest.mark.parametrize("text", [
    # A TXT string over 255 bytes: the zone refuses it (RFC 1035 §3.3).
    '[dns]\nenabled = true\nport = 0\n[[dns.records]]\nname = "t"\ntype = "TXT"\nvalue = "' + "x" * 300 + '"\n',
    '[dns]\nenabled = true\nport = 0\n[[dns.records]]\nname = "www"\ntype = "CNAME"\nvalue = "a.farts.test."\n'
    '[[dns.records]]\nname = "www"\ntype = "A"\nvalue = "192.0.2.1"\n',
    '[dns]\nenabled = true\nport = 0\n[[dns.records]]\nname = "x.example.org."\ntype = "A"\nvalue = "192.0.2.1"\n',
    '[listeners.https]\nport = "x"\n',
    '[[routes]]\nprefix = "/x"\nkind = "proxy"\nupstream = "nope"\n',
])
def test_config_check_and_serve_refuse_the_same_configs_with_the_same_error(tmp_path, text):
    f = tmp_path / "farts.toml"
    f.write_text('[node]\ndata_dir = "data"\n[listeners.http]\nport = 0\n[listeners.admin]\nport = 0\n' + text)
    checked = run_cli("config", "check", str(f))
    served = run_cli("serve", "--config", str(f))
    assert checked.returncode == 2 and served.returncode == 2, (checked, served)
    error = [ln for ln in checked.stderr.splitlines() if "config error" in ln]
    assert error and error == [ln for ln in served.stderr.splitlines() if "config error" in ln]
