"""The admin config section ``[admin]``: who may read the admin listener, and what the
status page keeps."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from farts.config import POSITIVE, Check, ConfigError, Section, setting


@dataclass(frozen=True)
class AdminConfig:
    # A bearer token: when set, every admin request but /healthz needs
    # "Authorization: Bearer <token>". Required when listeners.admin is bound to an
    # address other than loopback (config check refuses it otherwise).
    token: str = ""
    # Slow requests (over limits.slow_request_seconds) kept for /api/slow, newest first.
    slow_requests_kept: int = setting(100, POSITIVE)
    # The status page's charts: one sample of every node each sample_interval, kept for
    # history_seconds in memory (no time-series database).
    sample_interval: float = setting(1.0, Check(lambda v: 0.1 <= v <= 10, "a number 0.1-10 (seconds)"))
    history_seconds: float = setting(900.0, Check(lambda v: 10 <= v <= 86400, "a number 10-86400 (seconds)"))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cross_check(cfg) -> None:
    admin = cfg.listeners.admin
    if admin.enabled and not is_loopback(admin.host) and not cfg.admin.token:
        raise ConfigError(f"{cfg.source}: admin.token: required when listeners.admin.host "
                          f"({admin.host!r}) is not a loopback address: the admin listener shows "
                          "the whole node (set a long random token; clients send "
                          "'Authorization: Bearer <token>')")


SECTION = Section("admin", AdminConfig, AdminConfig, _cross_check)
