"""The CDN config section ``[cdn]`` (with ``[cdn.origins.<name>]``) and the ``cdn`` route kind."""
from __future__ import annotations

from dataclasses import dataclass

from farts.config import NON_NEGATIVE, POSITIVE, Check, ConfigError, Section, one_of, setting


@dataclass(frozen=True)
class CDNOrigin:
    # "http": url is the base URL the path after the route prefix is appended to;
    # "s3": url is the endpoint, objects are path-style <url>/<bucket>/<key>, signed with
    # AWS Signature V4 when access_key_id is set; "dir": files under path (relative to
    # data_dir), the built-in origin of `farts-edge up`.
    kind: str = setting("http", one_of("http", "s3", "dir"))
    url: str = setting("", Check(lambda v: v == "" or v.startswith(("http://", "https://")),
                                  "an http:// or https:// URL"))
    bucket: str = ""
    region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key: str = ""
    path: str = "origin"
    connect_timeout: float = setting(2.0, POSITIVE)
    read_timeout: float = setting(30.0, POSITIVE)


@dataclass(frozen=True)
class CDNConfig:
    # Bytes of object bodies kept under data_dir/cache; least recently used go first.
    capacity_bytes: int = setting(1024 * 1024 * 1024, POSITIVE)
    # Larger objects are passed through to the client, not stored.
    max_object_bytes: int = setting(256 * 1024 * 1024, POSITIVE)
    # Objects up to this size are also kept in memory as a ready response (0: none), up
    # to memory_capacity_bytes in all.
    memory_object_bytes: int = setting(16 * 1024, NON_NEGATIVE)
    memory_capacity_bytes: int = setting(64 * 1024 * 1024, NON_NEGATIVE)
    # Seconds to keep origin 404/410 answers (0: not cached); 5xx are never cached.
    negative_ttl: float = setting(0.0, NON_NEGATIVE)
    # Variants kept per URI for answers with Vary; storing one more drops the oldest.
    max_variants_per_uri: int = setting(16, POSITIVE)
    # A client's own Cache-Control (max-age, min-fresh, max-stale, no-cache, only-if-cached;
    # RFC 9111 §5.2.1): "ignore" (as nginx does: clients cannot send the edge to the origin,
    # and the hit path looks at no more fields) or "honor".
    request_cache_control: str = setting("ignore", one_of("ignore", "honor"))
    # Partial content (RFC 9111 §3.3, §3.4): when set, a Range request that finds nothing
    # stored asks the origin for that range, widened to at least this many bytes, instead
    # of the whole object; the origin's 206 is stored and combined with other parts of the
    # same strong ETag, a whole object once they cover it (0: off, the whole is fetched).
    range_fill_min_bytes: int = setting(0, NON_NEGATIVE)
    # Seconds between flushes of the recency order to LMDB (what a restart keeps).
    flush_interval: float = setting(2.0, POSITIVE)
    origins: dict[str, CDNOrigin] = setting({})


def _cross_check(cfg) -> None:
    src = cfg.source
    for name, o in cfg.cdn.origins.items():
        if o.kind in ("http", "s3") and not o.url:
            raise ConfigError(f"{src}: cdn.origins.{name}.url: required for kind = \"{o.kind}\"")
        if o.kind == "s3" and not o.bucket:
            raise ConfigError(f"{src}: cdn.origins.{name}.bucket: required for kind = \"s3\"")
    for i, r in enumerate(cfg.routes):
        if r.kind == "cdn" and r.origin not in cfg.cdn.origins:
            raise ConfigError(f"{src}: routes[{i}].origin: no CDN origin named {r.origin!r} "
                              f"(known: {', '.join(cfg.cdn.origins) or 'none'})")
        if r.kind == "cdn" and r.methods and "GET" not in r.methods:
            raise ConfigError(f"{src}: routes[{i}].methods: must include \"GET\" (a CDN route "
                              f"answers GET from its cache), got {r.methods!r}")


SECTION = Section("cdn", CDNConfig, CDNConfig, _cross_check, route_kinds=("cdn",))
