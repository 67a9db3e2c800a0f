"""node.py is a table of services: a service added by one row gets its config section,
its route kind, its start/stop place and its peer protocol, with no other edit. No
sockets: every listener is off."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from farts import config
from farts.config import POSITIVE, ConfigError, Section, setting
from farts.node import SERVICES, Node, Service

NO_LISTENERS = """
[listeners.http]
enabled = false
[listeners.https]
enabled = false
[listeners.admin]
enabled = false
"""


@dataclass(frozen=True)
class EchoConfig:
    greeting: str = "hi"
    repeat: int = setting(1, POSITIVE)


class Echo:
    def __init__(self, cfg: EchoConfig, log: list) -> None:
        self.cfg, self.log = cfg, log

    async def start(self) -> None:
        self.log.append("echo start")

    def stop(self) -> None:
        self.log.append("echo stop")


ECHO_SECTION = Section("echo", EchoConfig, EchoConfig, route_kinds=("echo",))


@pytest.fixture
def echo_registered(monkeypatch):
    config.sections()  # the composition root's sections first
    monkeypatch.setitem(config._sections, "echo", ECHO_SECTION)


def echo_row(log: list) -> Service:
    return Service("echo", ECHO_SECTION, build=lambda n: Echo(n.cfg.echo, log), start_rank=5, stop_rank=5,
                   routes={"echo": lambda n, echo, route: ("echo handler", echo, route.prefix)})


def test_a_registered_section_is_parsed_checked_and_read_as_an_attribute(echo_registered):
    cfg = config.parse('[echo]\ngreeting = "hello"\nrepeat = 3', "/srv/farts.toml")
    assert cfg.echo == EchoConfig("hello", 3)
    assert config.parse("", "x.toml").echo == EchoConfig()
    with pytest.raises(ConfigError, match=r"^/srv/farts.toml: echo.repeat: expected a positive number, got 0"):
        config.parse("[echo]\nrepeat = 0", "/srv/farts.toml")
    with pytest.raises(ConfigError, match=r"echo.gretting: unknown key"):
        config.parse("[echo]\ngretting = 1", "/srv/farts.toml")


def test_an_unregistered_section_or_route_kind_is_refused():
    with pytest.raises(ConfigError, match="echo: unknown key"):
        config.parse("[echo]\nrepeat = 1", "x.toml")
    with pytest.raises(ConfigError, match=r'routes\[0\].kind: expected one of "proxy", "static", "admin"'):
        config.parse('[[routes]]\nprefix = "/e"\nkind = "echo"', "x.toml")


def test_a_row_gives_its_service_a_route_kind_and_a_place_in_start_and_stop(echo_registered):
    log: list = []
    cfg = config.parse(NO_LISTENERS + '[[routes]]\nprefix = "/e/"\nkind = "echo"', "x.toml")

    async def main():
        node = Node(cfg, SERVICES + (echo_row(log),))
        echo = node.services["echo"]
        assert node._handler_for(cfg.routes[0]) == ("echo handler", echo, "/e/")
        await node.start()
        await node.stop()

    asyncio.run(main())
    assert log == ["echo start", "echo stop"]


def test_services_start_and_stop_in_their_ranks_not_the_table_order(echo_registered):
    log: list = []
    early, late = (Service(name, None, build=lambda n, name=name: name, start=log.append,
                           stop=lambda s: log.append("stop " + s), start_rank=rank, stop_rank=rank)
                   for name, rank in (("early", 1), ("late", 90)))
    cfg = config.parse(NO_LISTENERS, "x.toml")

    async def main():
        node = Node(cfg, (late, early))
        await node.start()
        await node.stop()

    asyncio.run(main())
    assert log == ["early", "late", "stop early", "stop late"]
