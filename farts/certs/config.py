"""The certificates config section ``[certs]``."""
from __future__ import annotations

from dataclasses import dataclass

from farts.config import POSITIVE, Check, ConfigError, Section, one_of, setting


@dataclass(frozen=True)
class CertsConfig:
    enabled: bool = False
    # The CA's ACME directory, e.g. https://acme-v02.api.letsencrypt.org/directory.
    directory_url: str = setting("", Check(lambda v: not v or v.startswith("https://"), "an https:// URL"))
    contact: str = ""                      # an email address for the account (optional)
    # The names ordered, in one certificate; empty: every tenant host that is a DNS name
    # with a dot (not localhost, not an IP address).
    domains: list[str] = setting([])
    # http-01: answered on every tenant host by the HTTP listener; dns-01: a TXT record
    # on every node's DNS (the names must be inside dns.zone; needed for wildcards).
    challenge: str = setting("http-01", one_of("http-01", "dns-01"))
    ca_bundle: str = ""                    # a CA file to trust for the directory (a private or test CA)
    # Renew when less than this share of the certificate's lifetime is left (1/3: at two
    # thirds of it), checking every check_interval seconds; after a failure, retry after
    # retry_min seconds, doubling up to retry_max.
    renew_remaining: float = setting(1 / 3, Check(lambda v: 0 < v < 1, "a number between 0 and 1"))
    check_interval: float = setting(3600.0, POSITIVE)
    retry_min: float = setting(60.0, POSITIVE)
    retry_max: float = setting(6 * 3600.0, POSITIVE)
    # ACME Renewal Information (RFC 9773): when the CA's directory offers it, renew at a
    # time chosen inside the window it suggests (or at two thirds, whichever comes
    # first); ask again when its Retry-After says, bounded to [ari_poll_min, ari_poll_max].
    ari: bool = True
    ari_poll_min: float = setting(60.0, POSITIVE)
    ari_poll_max: float = setting(24 * 3600.0, POSITIVE)
    # Seconds an order may take (validation, finalization) before it counts as failed.
    order_timeout: float = setting(120.0, POSITIVE)


def _cross_check(cfg) -> None:
    c = cfg.certs
    if c.ari_poll_min > c.ari_poll_max:
        raise ConfigError(f"{cfg.source}: certs.ari_poll_min: {c.ari_poll_min} is more than certs.ari_poll_max ({c.ari_poll_max})")
    if c.enabled and not c.directory_url:
        raise ConfigError(f"{cfg.source}: certs.directory_url: required when certs.enabled = true")
    if c.enabled and c.challenge == "dns-01" and not cfg.dns.enabled:
        raise ConfigError(f"{cfg.source}: certs.challenge: dns-01 needs [dns] enabled (the TXT records are served there)")
    if c.enabled and not cfg.listeners.https.enabled:
        raise ConfigError(f"{cfg.source}: certs.enabled: needs listeners.https (the certificates go to its cert_dir)")


SECTION = Section("certs", CertsConfig, CertsConfig, _cross_check)
