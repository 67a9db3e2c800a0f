"""The configuration a worker serves with: the node's budgets divided among its workers.

A worker enforces its limits alone (no round trip to the node process on the accept
path). What the config states for the node is split so that the node as a whole stays
within it: each of N workers gets ceil(limit / N) of

- ``limits.max_connections`` and ``max_tls_handshakes`` (node-wide: at most the limit,
  plus N - 1 for the rounding up);
- ``limits.max_connections_per_ip`` and ``max_tls_handshakes_per_ip``: a client's
  connections are spread over the workers by the kernel's hash of their source ports,
  so the node admits at most about the limit from one address; one that lands unevenly
  is refused a little before it (at 1000 over 4 workers, a few per cent; a small cap over
  many workers, more: keep such caps at several times the worker count);
- ``dns.max_tcp_connections``, and the response rate limit (``dns.rrl_rate`` and
  ``rrl_burst`` per client network): a resolver's queries come from random source ports,
  spread over the workers, so the node answers it at about the configured rate (one
  that always sends from one port meets a single worker: 1/N of it);
- each upstream's ``pool_size`` (idle keep-alive connections kept to it).

Not divided: limits of one connection or one request (sizes, timeouts, streams, pub/sub
per-connection limits), which mean the same in any process; and the MongoDB endpoint's,
enforced by the node process, which serves every connection the workers accept.
"""
from __future__ import annotations

import dataclasses

from farts.config import Config


def share(value: int, n: int) -> int:
    return max(1, -(-value // n))


def worker_config(cfg: Config, n: int) -> Config:
    """The config each of ``n`` workers serves with."""
    lim = cfg.limits
    limits = dataclasses.replace(
        lim, max_connections=share(lim.max_connections, n), max_connections_per_ip=share(lim.max_connections_per_ip, n),
        max_tls_handshakes=share(lim.max_tls_handshakes, n),
        max_tls_handshakes_per_ip=share(lim.max_tls_handshakes_per_ip, n))
    dns = dataclasses.replace(cfg.dns, max_tcp_connections=share(cfg.dns.max_tcp_connections, n),
                              rrl_rate=cfg.dns.rrl_rate / n, rrl_burst=max(1.0, cfg.dns.rrl_burst / n))
    upstreams = {name: dataclasses.replace(up, pool_size=share(up.pool_size, n) if up.pool_size else 0)
                 for name, up in cfg.upstreams.items()}
    return dataclasses.replace(cfg, limits=limits, sections={**cfg.sections, "dns": dns, "upstreams": upstreams})
