"""The master config section ``[master]`` (the deployment itself is ``[node] deployment``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from farts.config import NON_NEGATIVE, POSITIVE, Check, ConfigError, Section, one_of, setting

CATCH_UP = ("once", "all", "skip")
SEVERITIES = ("info", "warning", "critical")
# rule -> (what its threshold means, the default threshold)
RULES = {
    "node_dead": ("seconds a node of the deployment has been dead", 0.0),
    "replication_lag": ("replication lag in milliseconds", 30_000.0),
    "cert_expiring": ("days left on a certificate", 14.0),
    "slow_requests": ("slow requests (over limits.slow_request_seconds) per minute on a node", 60.0),
    "webhook_dead_letters": ("webhook deliveries dead-lettered in the last 10 minutes", 1.0),
    "disk_full": ("share of the data disk used, 0-1", 0.9),
    "version_mismatch": ("nodes running another version than the most common one", 1.0),
    "cron_failed": ("runs of a cron that failed in a row (a built-in task too: a bad GeoIP download)", 1.0),
    "bundle_refused": ("release bundles a node refused in the last hour (tampered, untrusted, wrong platform, "
                       "a downgrade)", 1.0),
}


def _schedule_ok(v: str) -> bool:
    from croniter import croniter  # (only read when a config has crons)
    return len(v.split()) in (5, 6) and croniter.is_valid(v)


def _zone_ok(v: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class CronConfig:
    name: str = setting(check=Check(lambda v: bool(v) and "@" not in v and len(v) <= 100,
                                    "a name without '@', up to 100 characters"))
    # Five fields (minute hour day-of-month month day-of-week), read in `timezone`; a
    # sixth, seconds, is accepted (per-second schedules for tests).
    schedule: str = setting(check=Check(_schedule_ok, "a 5-field cron schedule, e.g. \"*/5 * * * *\""))
    timezone: str = setting("UTC", Check(_zone_ok, "an IANA time zone name, e.g. \"Europe/Paris\""))
    # "http": `method` `path` to the servers of [upstreams.<upstream>] (each tried in turn),
    # with the headers Idempotency-Key: <name>@<slot> and X-Farts-Master-Epoch; a 2xx is done.
    # "task": a built-in task of the node, by name (`task`).
    action: str = setting("http", one_of("http", "task"))
    upstream: str = ""
    method: str = setting("POST", one_of("GET", "POST", "PUT", "PATCH", "DELETE"))
    path: str = setting("/", Check(lambda v: v.startswith("/"), "a path starting with '/'"))
    body: str = ""                          # sent as it is (application/json when it parses as JSON)
    task: str = ""
    timeout: float = setting(30.0, POSITIVE)          # seconds per attempt
    retries: int = setting(2, NON_NEGATIVE)           # attempts after the first that failed
    retry_delay: float = setting(5.0, NON_NEGATIVE)   # before the first retry, doubling
    # Slots that fell while no master was alive: run the latest once, run all of them in
    # order, or skip them (each is recorded either way).
    catch_up: str = setting("once", one_of(*CATCH_UP))


@dataclass(frozen=True)
class AlertRule:
    rule: str = setting(check=one_of(*RULES))
    threshold: float = setting(-1.0)        # -1: the rule's default (see RULES)
    severity: str = setting("warning", one_of(*SEVERITIES))
    # Only during the bake period after a deploy (a node's version changed).
    after_deploy: bool = False


@dataclass(frozen=True)
class Tier:
    name: str = setting(check=Check(bool, "a name (room, floor, building...)"))
    # Webhook URLs a notification is POSTed to (JSON): a chat room's incoming webhook,
    # a pager's API, an e-mail gateway.
    targets: list[str] = setting([], Check(lambda v: all(u.startswith(("http://", "https://")) for u in v),
                                           "a list of http:// or https:// URLs"))
    # Seconds an unacknowledged alert stays at this tier before the next one is told.
    delay: float = setting(300.0, POSITIVE)


def _default_rules() -> list[AlertRule]:
    return [AlertRule(name, severity="critical" if name in ("node_dead", "disk_full", "bundle_refused")
                      else "warning")
            for name in RULES]


@dataclass(frozen=True)
class AlertsConfig:
    rules: list[AlertRule] = field(default_factory=_default_rules)
    interval: float = setting(10.0, POSITIVE)     # seconds between evaluations
    bake_seconds: float = setting(1800.0, NON_NEGATIVE)
    # The escalation policy: "first the room, then the floor, then the building".
    escalation: list[Tier] = setting([])


def _url_ok(v: str) -> bool:
    return v == "" or v.startswith(("http://", "https://"))


@dataclass(frozen=True)
class GeoIPConfig:
    """The built-in task ``geoip_rebuild``: off until ``url`` is set (nothing is
    downloaded by default)."""
    # The tar.gz of the database, e.g. MaxMind's permalink
    # https://download.maxmind.com/app/geoip_download?edition_id=GeoLite2-City&license_key={license_key}&suffix=tar.gz
    # ("{license_key}" is replaced by the key).
    url: str = setting("", Check(_url_ok, "an http:// or https:// URL"))
    # Its SHA-256 companion; empty: the url with suffix=tar.gz.sha256 (MaxMind's form),
    # else the url + ".sha256".
    sha256_url: str = setting("", Check(_url_ok, "an http:// or https:// URL"))
    # The licence key, here or (better) in the environment variable named by license_key_env.
    license_key: str = ""
    license_key_env: str = "MAXMIND_LICENSE_KEY"
    # With MaxMind's newer download URLs: HTTP basic auth, account id and licence key.
    account_id: str = ""
    # The mmdb's metadata database_type a download must have (empty: any).
    database_type: str = "GeoLite2-City"
    max_bytes: int = setting(512 * 1024 * 1024, POSITIVE)   # of the download and of the mmdb


@dataclass(frozen=True)
class MasterConfig:
    enabled: bool = False
    # The ids of this deployment's nodes ([node] deployment); a majority of them decides
    # the master. Empty without a mesh: this node alone.
    nodes: list[str] = setting([])
    # The lease: a master renews it every third of this; a dead master is replaced after
    # at most lease_seconds * (1 + len(nodes) / 10) plus a round trip.
    lease_seconds: float = setting(6.0, Check(lambda v: v >= 0.5, "a number of seconds >= 0.5"))
    # How much faster or slower than real time any node's clock may run (a rate: 0.05 is
    # 5%); the master stops acting this much early.
    clock_drift: float = setting(0.05, Check(lambda v: 0 <= v < 0.5, "a number 0 <= drift < 0.5"))
    crons: list[CronConfig] = setting([])
    history: int = setting(20, POSITIVE)        # runs kept per cron
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    geoip: GeoIPConfig = field(default_factory=GeoIPConfig)


def deployment_nodes(cfg) -> list[str]:
    m = cfg.master
    return list(m.nodes) or [cfg.node.id]


def _cross_check(cfg) -> None:
    m, src = cfg.master, cfg.source
    if not m.enabled:
        return
    if not cfg.db.enabled:
        raise ConfigError(f"{src}: master.enabled: needs [db] enabled (the crons' slots, the alerts and "
                          "their acks are kept in the replicated database)")
    if not m.nodes and cfg.mesh.enabled:
        raise ConfigError(f"{src}: master.nodes: required with [mesh] enabled: the ids of the nodes of "
                          f"deployment {cfg.node.deployment!r} (a majority of them decides the master)")
    if m.nodes and cfg.node.id not in m.nodes:
        raise ConfigError(f"{src}: master.nodes: must include this node ({cfg.node.id!r})")
    if len(set(m.nodes)) != len(m.nodes):
        raise ConfigError(f"{src}: master.nodes: a node is listed twice")
    names = set()
    for i, c in enumerate(m.crons):
        key = f"master.crons[{i}]"
        if c.name in names:
            raise ConfigError(f"{src}: {key}.name: duplicate cron {c.name!r}")
        names.add(c.name)
        if c.action == "http" and c.upstream not in cfg.upstreams:
            raise ConfigError(f"{src}: {key}.upstream: no upstream named {c.upstream!r} "
                              f"(known: {', '.join(sorted(cfg.upstreams)) or 'none'})")
        if c.action == "task" and not c.task:
            raise ConfigError(f"{src}: {key}.task: required with action = \"task\"")
        if c.action == "task" and c.task == "geoip_rebuild" and not m.geoip.url:
            raise ConfigError(f"{src}: {key}.task: geoip_rebuild needs master.geoip.url (the database to download)")
    for i, t in enumerate(m.alerts.escalation):
        if not t.targets:
            raise ConfigError(f"{src}: master.alerts.escalation[{i}].targets: at least one URL")


SECTION = Section("master", MasterConfig, MasterConfig, _cross_check)
