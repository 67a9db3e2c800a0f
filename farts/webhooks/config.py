"""The webhooks config section ``[webhooks]``."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from farts.config import NON_NEGATIVE, POSITIVE, Check, ConfigError, Section, address_ok, setting


def _networks_ok(values: list[str]) -> bool:
    try:
        for v in values:
            ipaddress.ip_network(v, strict=False)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class WebhooksConfig:
    enabled: bool = False
    # Seconds a delivery is retried after it was enqueued; then it is dead-lettered
    # (`farts-edge webhooks retry ID` puts it back).
    window: float = setting(86400.0, POSITIVE)
    # Exponential backoff between attempts: backoff_min doubling up to backoff_max, each
    # delay drawn between half and all of it (jitter); a Retry-After of 429/503 is honoured.
    backoff_min: float = setting(1.0, POSITIVE)
    backoff_max: float = setting(3600.0, POSITIVE)
    connect_timeout: float = setting(5.0, POSITIVE)
    timeout: float = setting(10.0, POSITIVE)      # seconds for the receiver's answer
    max_in_flight: int = setting(512, POSITIVE)   # requests at once, all destinations
    per_destination: int = setting(32, POSITIVE)  # requests at once to one scheme://host:port
    # Circuit breaker: after this many failures in a row a destination gets no request for
    # breaker_cooldown seconds, then one probe (its success closes the circuit).
    breaker_failures: int = setting(10, POSITIVE)
    breaker_cooldown: float = setting(30.0, POSITIVE)
    # Server-side request forgery: destinations whose name resolves to loopback, private
    # (RFC 1918, fc00::/7, 100.64/10), link-local, multicast, unspecified or reserved
    # addresses are refused unless allowed here (`farts-edge up` writes allow_loopback).
    allow_loopback: bool = False
    allow_private: bool = False
    allow_networks: list[str] = setting([], Check(_networks_ok, "a list of networks like \"10.1.0.0/16\""))
    # Egress through HTTP CONNECT proxies ("host:port"), so deliveries leave from chosen
    # addresses; a delivery uses one of them, the next on its next attempt.
    proxies: list[str] = setting([], Check(lambda v: all(address_ok(a) for a in v), "a list of 'host:port'"))
    # The signing secret of each tenant (by id); a tenant without one signs with its `secret`.
    secrets: dict[str, str] = setting({})
    max_payload_bytes: int = setting(262144, POSITIVE)
    # The collection a tenant's app inserts into through the MongoDB endpoint to enqueue
    # ("database.collection"; the active node moves each document into the queue).
    collection: str = setting("farts.webhooks", Check(lambda v: "." in v.strip(".") and "$" not in v,
                                                       "\"database.collection\""))
    # Seconds between the active node's looks at the queue for what other nodes enqueued
    # (in the operation log; the full scans of every key now and then are spaced out with a
    # long backlog, so that they take at most 1/20 of the loop).
    scan_interval: float = setting(0.5, POSITIVE)
    dns_cache_seconds: float = setting(30.0, NON_NEGATIVE)


def _cross_check(cfg) -> None:
    w = cfg.webhooks
    if w.enabled and not cfg.db.enabled:
        raise ConfigError(f"{cfg.source}: webhooks.enabled: needs [db] enabled (the queue is in the database)")
    if w.backoff_min > w.backoff_max:
        raise ConfigError(f"{cfg.source}: webhooks.backoff_min: more than webhooks.backoff_max")
    tenants = {t.id for t in cfg.tenants}
    for tenant in w.secrets:
        if tenant not in tenants:
            raise ConfigError(f"{cfg.source}: webhooks.secrets.{tenant}: no tenant named {tenant!r}")


SECTION = Section("webhooks", WebhooksConfig, WebhooksConfig, _cross_check)
