"""The node's limits with worker processes: each worker enforces its share of the node's
budgets (farts/workers/limits.py), so the node as a whole stays within what the config
states, without a round trip to the node process on the accept path."""
from __future__ import annotations

import socket

from conftest import BASE_CONFIG
from test_workers_node import metric

from farts import config
from farts.workers.limits import worker_config

CONFIG = """
[limits]
max_connections = 1000
max_connections_per_ip = 6
max_tls_handshakes = 10
max_tls_handshakes_per_ip = 4

[dns]
rrl_rate = 90.0
rrl_burst = 2.0
max_tcp_connections = 10

[upstreams.app]
servers = ["127.0.0.1:9"]
pool_size = 8

[[routes]]
prefix = "/hello"
kind = "static"
body = "hello"
"""


def test_budgets_are_divided_rounding_up_and_per_request_limits_are_not():
    cfg = config.parse(CONFIG, "t.toml")
    w = worker_config(cfg, 4)
    assert (w.limits.max_connections, w.limits.max_connections_per_ip) == (250, 2)
    assert (w.limits.max_tls_handshakes, w.limits.max_tls_handshakes_per_ip) == (3, 1)
    assert (w.dns.rrl_rate, w.dns.rrl_burst, w.dns.max_tcp_connections) == (22.5, 1.0, 3)
    assert w.upstreams["app"].pool_size == 2
    assert (w.limits.max_body_bytes, w.limits.idle_timeout, w.limits.max_concurrent_streams) == (
        cfg.limits.max_body_bytes, cfg.limits.idle_timeout, cfg.limits.max_concurrent_streams)
    assert worker_config(cfg, 1) == cfg


def served(sock: socket.socket) -> bool:
    try:
        sock.sendall(b"GET /hello HTTP/1.1\r\nhost: localhost\r\n\r\n")
        return sock.recv(4096).startswith(b"HTTP/1.1 200")
    except OSError:   # refused at accept: reset
        return False


def test_the_per_ip_cap_holds_for_the_node_not_per_worker(node_factory):
    """30 connections from one address to three workers with a cap of 6: each worker
    admits 2 (without the division, each would admit 6: 18 in all)."""
    base = BASE_CONFIG.replace('data_dir = "{data_dir}"', 'data_dir = "{data_dir}"\nworkers = 3')
    node = node_factory(CONFIG, base=base)
    socks = [socket.create_connection(("127.0.0.1", node.port("http")), timeout=10) for _ in range(30)]
    try:
        answered = sum(served(s) for s in socks)
        assert 2 <= answered <= 6
        refused = metric(node, "farts_http_connections_refused_total", reason="max_connections_per_ip")
        assert refused == 30 - answered
    finally:
        for s in socks:
            s.close()
