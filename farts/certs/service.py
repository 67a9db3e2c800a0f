"""The certificate service: orders from an ACME CA, answers its HTTP-01 challenges, renews.

State machine per node (the decision is ``due``, pure, given ``now``): the certificate
in the HTTPS listener's cert_dir under ``acme.crt``/``acme.key`` is MISSING, VALID until
``renew_remaining`` of its lifetime is left, then DUE; an order runs in a worker thread
(the acme library's blocking HTTP), its HTTP-01 key authorizations published to the loop
as messages; the result is written key first, then the chain, each by rename (0600), and
the listener's reload picks it up without dropping a connection. A failed order is
retried after ``retry_min`` seconds, doubling up to ``retry_max``; the certificate
served meanwhile stays the old one (a node never serves a certificate whose key does not
match: the pair is checked before it is written).

One order per cluster: only the node for which ``may_order()`` is true orders (the node
wires it: with a mesh, the deployment's master); it hands a new pair to ``share`` (the
mesh: farts/certs/peer.py), and every other node takes it through ``receive``, which
installs it only when it is valid for this node (key matches, not expired, covers this
node's names) and newer than the one it has; a refused pair leaves the old one served
and counts ``farts_certs_received_total{outcome="refused"}``.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from farts.clock import Clock, Timer
from farts.metrics import Metrics
from farts.transport.http import Fixed, Request, Response

from . import ari
from .config import CertsConfig
from .order import OrderFailed, order_certificate

log = logging.getLogger("farts.certs")

CERT_NAME = "acme"
CHALLENGE_PREFIX = "/.well-known/acme-challenge/"


def due(not_before: float | None, not_after: float | None, now: float, renew_remaining: float,
        renew_at: float | None = None) -> bool:
    """Whether to order now: no certificate, less than ``renew_remaining`` of its
    lifetime left (wall-clock seconds), or past the time chosen inside the CA's renewal
    window (ACME ARI; None: the CA gave none)."""
    if not_before is None or not_after is None:
        return True
    if renew_at is not None and now >= renew_at:
        return True
    return not_after - now < (not_after - not_before) * renew_remaining


def default_domains(tenants) -> list[str]:
    """Every tenant host that is a DNS name a public CA could validate."""
    out = []
    for t in tenants:
        for host in t.hosts:
            h = host.lower()
            if "." in h and not h.replace(".", "").isdigit() and ":" not in h and h not in out:
                out.append(h)
    return out


class ChallengeHandler:
    """GET /.well-known/acme-challenge/<token> on every tenant host: the key
    authorization of an order in progress (RFC 8555 §8.3), else 404."""

    def __init__(self, tokens: dict[bytes, bytes]) -> None:
        self.tokens = tokens
        self.not_found = Fixed.error(404, "no such challenge")

    def handle(self, req: Request):
        answer = self.tokens.get(req.path[len(CHALLENGE_PREFIX):])
        if answer is None or req.method not in (b"GET", b"HEAD"):
            return self.not_found
        return Response(200, [(b"content-type", b"application/octet-stream")], answer)


class CertService:
    def __init__(self, cfg: CertsConfig, domains: list[str], cert_dir: Path, state_dir: Path,
                 metrics: Metrics, clock: Clock, set_txt=None) -> None:
        self.cfg, self.domains, self.cert_dir, self.state_dir = cfg, domains, cert_dir, state_dir
        self.clock = clock
        self.tokens: dict[bytes, bytes] = {}   # HTTP-01: token -> key authorization
        # DNS-01: the TXT values published per name (a wildcard and its base share one)
        self.set_txt = set_txt
        self.txt: dict[str, list[str]] = {}
        self.handler = ChallengeHandler(self.tokens)
        self.timer: Timer | None = None
        self.ordering: asyncio.Future | None = None
        self.failures_in_a_row = 0
        self.next_try = 0.0
        self.last_error = ""
        self.may_order = lambda: True   # (the node sets who orders; see the module's doc)
        self.share = None               # fn(chain, key): a new pair to the other nodes
        self.received = metrics.counter("farts_certs_received_total",
                                        "Certificates received from another node, by outcome "
                                        "(installed, not_newer, refused, failed: not written)", ("outcome",))
        self.orders = metrics.counter("farts_certs_orders_total", "ACME orders, by outcome", ("outcome",))
        # ACME ARI (RFC 9773): the CA's window for the current certificate (ari_for: its
        # identifier), the time chosen in it, when to ask again.
        self.ari_window: ari.Window | None = None
        self.ari_renew_at: float | None = None
        self.ari_for = ""
        self.ari_next_poll = 0.0
        self.ari_failures = 0
        self.ari_error = ""
        self.ari_polling: asyncio.Future | None = None
        self.ari_fetches = metrics.counter("farts_certs_ari_fetches_total",
                                           "Renewal information fetches (RFC 9773), by outcome "
                                           "(window, not_offered, failed)", ("outcome",))
        metrics.gauge("farts_certs_ari_renew_at_timestamp_seconds",
                      "When the CA's renewal window says to renew (0: no window)",
                      lambda: self.ari_renew_at or 0.0)
        metrics.gauge("farts_certs_not_after_timestamp_seconds",
                      "When the ACME certificate expires (0: none yet)", lambda: self.expiry()[1] or 0.0)

    # -- the certificate on disk --------------------------------------------------------
    def certificate(self) -> x509.Certificate | None:
        try:
            return x509.load_pem_x509_certificate((self.cert_dir / f"{CERT_NAME}.crt").read_bytes())
        except (OSError, ValueError):
            return None

    def expiry(self, cert: x509.Certificate | None = None) -> tuple[float | None, float | None]:
        cert = cert or self.certificate()
        if cert is None:
            return None, None
        return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()

    def status(self) -> dict:
        nb, na = self.expiry()
        window = self.ari_window
        return {"domains": self.domains, "not_before": nb, "not_after": na,
                "ordering": self.ordering is not None, "failures_in_a_row": self.failures_in_a_row,
                "last_error": self.last_error,
                "ari": {"cert_id": self.ari_for, "window_start": window and window.start,
                        "window_end": window and window.end, "explanation": window and window.explanation,
                        "renew_at": self.ari_renew_at, "next_poll": self.ari_next_poll or None,
                        "last_error": self.ari_error}}

    # -- lifetime --------------------------------------------------------------------------
    def start(self) -> None:
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        # (The first check a moment after start: the listeners that answer the CA's
        # challenges start after the services.)
        self.timer = self.clock.every(min(self.cfg.check_interval, self.cfg.retry_min), self.check, first=0.5)

    async def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for task in (self.ordering, self.ari_polling):
            if task is not None:
                await asyncio.wait([task], timeout=5)

    def check(self, _now: float = 0.0) -> None:
        now = self.clock.wall()
        if self.ordering is not None or now < self.next_try or not self.domains or not self.may_order():
            return
        cert = self.certificate()
        renew_at = None
        if cert is not None and self.cfg.ari:
            try:
                ident = ari.cert_id(cert)
            except ValueError:
                ident = ""   # (no AKI: no renewal information to ask for)
            if ident and ident == self.ari_for:
                renew_at = self.ari_renew_at
            # (Not for an expired certificate: RFC 9773 §4.2.)
            if ident and (ident != self.ari_for or now >= self.ari_next_poll) \
                    and self.ari_polling is None and now < cert.not_valid_after_utc.timestamp():
                self.ari_polling = asyncio.ensure_future(self._poll_ari(cert, ident))
        if due(*self.expiry(cert), now, self.cfg.renew_remaining, renew_at):
            if renew_at is not None and now >= renew_at:
                log.info("certs: renewing now, inside the CA's renewal window (RFC 9773)")
            self.renew()

    async def _poll_ari(self, cert: x509.Certificate, ident: str) -> None:
        """Asks the CA's renewalInfo (in a worker thread), keeps the window and a time
        chosen in it, then checks again: a window already open orders at once."""
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        try:
            info = await loop.run_in_executor(None, ari.fetch, cfg.directory_url, cfg.ca_bundle or None,
                                              cert, 30.0, self.clock.wall())
        except ari.AriError as e:
            # (Today's rule decides meanwhile; asked again after a growing delay.)
            self.ari_failures += 1
            self.ari_fetches.inc(("failed",))
            self.ari_window, self.ari_renew_at, self.ari_error = None, None, str(e)
            delay = ari.poll_delay(cfg.ari_poll_min * 2 ** (self.ari_failures - 1), cfg.ari_poll_min, cfg.ari_poll_max)
            log.warning("certs: no renewal information from the CA (%s); renewing by the lifetime rule; "
                        "asking again in %.0f s", e, delay)
        else:
            now = self.clock.wall()
            self.ari_failures, self.ari_error = 0, ""
            if info.window is None:
                self.ari_fetches.inc(("not_offered",))
                self.ari_window = self.ari_renew_at = None
            else:
                self.ari_fetches.inc(("window",))
                if info.window != self.ari_window or ident != self.ari_for:
                    self.ari_renew_at = ari.renewal_time(info.window, now)
                    log.info("certs: the CA's renewal window for %s is %s .. %s; renewing at %s", ident,
                             _utc(info.window.start), _utc(info.window.end), _utc(self.ari_renew_at))
                self.ari_window = info.window
            delay = ari.poll_delay(info.retry_after, cfg.ari_poll_min, cfg.ari_poll_max)
        finally:
            self.ari_polling = None
        self.ari_for = ident
        self.ari_next_poll = self.clock.wall() + delay
        self.check()

    def renew(self) -> asyncio.Future:
        """Starts an order now (or returns the one in progress)."""
        if self.ordering is None:
            self.ordering = asyncio.ensure_future(self._order())
        return self.ordering

    async def _order(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.cfg

        if cfg.challenge == "dns-01":
            def publish(name: str, value: str) -> None:   # (from the worker thread)
                loop.call_soon_threadsafe(self._txt, name, value, True)

            def withdraw(name: str) -> None:
                loop.call_soon_threadsafe(self._txt, name, None, False)
        else:
            def publish(token: str, answer: str) -> None:
                loop.call_soon_threadsafe(self.tokens.__setitem__, token.encode(), answer.encode())

            def withdraw(token: str) -> None:
                loop.call_soon_threadsafe(self.tokens.pop, token.encode(), None)

        log.info("certs: ordering a certificate for %s from %s", ", ".join(self.domains), cfg.directory_url)
        try:
            chain, key = await loop.run_in_executor(None, lambda: order_certificate(
                cfg.directory_url, cfg.ca_bundle or None, self.state_dir, cfg.contact, self.domains,
                cfg.order_timeout, publish, withdraw, cfg.challenge))
            self._validate(chain, key)
            self._write(chain, key)
        except (OrderFailed, OSError, ValueError) as e:
            self.failures_in_a_row += 1
            delay = min(cfg.retry_max, cfg.retry_min * 2 ** (self.failures_in_a_row - 1))
            self.next_try = self.clock.wall() + delay
            self.last_error = str(e)
            self.orders.inc(("failed",))
            log.warning("certs: order failed (%s); the current certificate stays; retry in %.0f s", e, delay)
        else:
            self.failures_in_a_row = 0
            self.last_error = ""
            self.orders.inc(("issued",))
            log.info("certs: installed a certificate for %s", ", ".join(self.domains))
            if self.share is not None:
                self.share(chain, key)
        finally:
            self.ordering = None

    def _txt(self, name: str, value: str | None, add: bool) -> None:
        values = self.txt.setdefault(name, [])
        if add:
            values.append(value)
        else:
            values.clear()
        if self.set_txt is None or not self.set_txt(name, values):
            log.warning("certs: cannot publish the TXT record %s (is it inside this node's DNS zone?)", name)
        if not values:
            del self.txt[name]

    def receive(self, chain: bytes, key_pem: bytes, origin: str) -> str:
        """A pair another node ordered: installed when valid here and newer than ours."""
        try:
            not_after = self._validate(chain, key_pem)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:   # (TypeError: an encrypted key)
            outcome = "refused"
            log.warning("certs: refused the certificate from %s (%s); the current one stays", origin, e)
        else:
            current = self.expiry()[1]
            if current is not None and not_after <= current:
                outcome = "not_newer"
            else:
                try:
                    self._write(chain, key_pem)
                except OSError as e:   # (disk full, permissions: the pair in use stays)
                    outcome = "failed"
                    log.error("certs: could not write the certificate from %s: %s", origin, e)
                else:
                    outcome = "installed"
                    log.info("certs: installed the certificate ordered by %s", origin)
        self.received.inc((outcome,))
        return outcome

    def current_pair(self) -> tuple[bytes, bytes] | None:
        try:
            return ((self.cert_dir / f"{CERT_NAME}.crt").read_bytes(),
                    (self.cert_dir / f"{CERT_NAME}.key").read_bytes())
        except OSError:
            return None

    def _validate(self, chain: bytes, key_pem: bytes) -> float:
        """The leaf's not-after, or ValueError saying why this node must not serve it."""
        leaf = x509.load_pem_x509_certificate(chain)
        key = serialization.load_pem_private_key(key_pem, None)
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            raise ValueError("the certificate's key is not the key it came with")
        if leaf.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
            raise ValueError("the certificate has expired")
        try:
            names = set(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                        .value.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            names = set()
        missing = [d for d in self.domains if d not in names]
        if missing:
            raise ValueError(f"the certificate does not name {', '.join(missing)}")
        return leaf.not_valid_after_utc.timestamp()

    def _write(self, chain: bytes, key_pem: bytes) -> None:
        """Key first, then chain, each by rename (0600): the listener's reload picks up the
        pair without dropping a connection."""
        for name, data in ((f"{CERT_NAME}.key", key_pem), (f"{CERT_NAME}.crt", chain)):
            tmp = self.cert_dir / f".{name}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.cert_dir / name)


def _utc(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


class CertsAdminHandler:
    """GET /api/certs: the certificate's state; POST /api/certs/renew: order now."""

    def __init__(self, certs: CertService) -> None:
        self.certs = certs

    def handle(self, req: Request):
        import json
        if req.method == b"POST" and req.path == b"/api/certs/renew":
            self.certs.renew()
            return Response(202, [(b"content-type", b"application/json")], b'{"ordering": true}\n')
        if req.method not in (b"GET", b"HEAD"):
            return Fixed.error(405)
        return Response(200, [(b"content-type", b"application/json")],
                        json.dumps(self.certs.status(), indent=1).encode() + b"\n")
