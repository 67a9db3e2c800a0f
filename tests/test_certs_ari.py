"""ACME Renewal Information (RFC 9773). Debian's pebble has no renewalInfo resource, so
the CA here is a stand-in of this test: an HTTPS server on loopback (aiohttp, with a
certificate from farts.pki) serving a directory whose renewalInfo points at itself, and
the windows each test sets. The certificate service runs in this process on the real
loop, asking it from its worker thread as it would a CA."""
from __future__ import annotations

import asyncio
import datetime
import json
import random
import ssl
import threading
import time
import urllib.request

import pytest
from aiohttp import web
from conftest import start_node
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from farts import pki
from farts.certs import ari
from farts.certs.config import CertsConfig
from farts.certs.service import CertService, due
from farts.clock import LoopClock
from farts.metrics import Metrics


def test_the_certificate_identifier_of_the_rfc_example():
    # RFC 9773 §4.1: keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4
    # and serial 0x87654321 (DER 00 87 65 43 21: its top bit needs the leading 0).
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example")])
    now = datetime.datetime.now(datetime.UTC)
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(0x87654321).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.AuthorityKeyIdentifier(aki, None, None), critical=False)
            .sign(key, hashes.SHA256()))
    assert ari.cert_id(cert) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


def test_the_renewal_time_is_inside_the_window_or_now_when_it_has_passed():
    # RFC 9773 §4.2: uniformly at random inside suggestedWindow; a past window: renew now.
    rng = random.Random(1)
    times = [ari.renewal_time(ari.Window(1000.0, 2000.0), 500.0, rng) for _ in range(200)]
    assert all(1000.0 <= t <= 2000.0 for t in times)
    assert min(times) < 1250.0 and max(times) > 1750.0   # (spread over it, not one end)
    assert ari.renewal_time(ari.Window(100.0, 200.0), 500.0) == 500.0


def test_due_by_the_window_or_by_the_lifetime_whichever_comes_first():
    assert due(0.0, 90.0, 20.0, 1 / 3, renew_at=15.0)          # the window's time has passed
    assert not due(0.0, 90.0, 20.0, 1 / 3, renew_at=25.0)      # not yet, and 70 of 90 left
    assert due(0.0, 90.0, 61.0, 1 / 3, renew_at=80.0)          # two thirds come first
    assert not due(0.0, 90.0, 20.0, 1 / 3, renew_at=None)      # no window: today's rule


def test_renewal_information_is_parsed_strictly_and_retry_after_bounded():
    w = ari.parse_renewal_info(b'{"suggestedWindow": {"start": "2025-01-02T04:00:00Z", '
                               b'"end": "2025-01-03T04:00:00Z"}, "explanationURL": "https://ca/why"}')
    assert w.end - w.start == 86400 and w.explanation == "https://ca/why"
    for bad in (b"<html>", b"{}", b'{"suggestedWindow": {"start": "2025-01-03T04:00:00Z", "end": "2025-01-02T04:00:00Z"}}',
                b'{"suggestedWindow": {"start": "2025-01-02T04:00:00", "end": "2025-01-03T04:00:00"}}'):
        try:
            ari.parse_renewal_info(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")
    # RFC 9773 §4.3.3: Retry-After honoured within the client's bounds; 6 h without one.
    assert ari.poll_delay(120.0, 60.0, 86400.0) == 120.0
    assert ari.poll_delay(1.0, 60.0, 86400.0) == 60.0
    assert ari.poll_delay(10 * 86400.0, 60.0, 86400.0) == 86400.0
    assert ari.poll_delay(None, 60.0, 86400.0) == 6 * 3600.0
    assert ari.parse_retry_after("300", 0.0) == 300.0
    assert ari.parse_retry_after("Thu, 01 Jan 1970 00:10:00 GMT", 0.0) == 600.0
    assert ari.parse_retry_after("soon", 0.0) is None


def test_the_poll_bounds_are_checked_in_the_config():
    from farts import config
    with pytest.raises(config.ConfigError, match=r"t.toml: certs.ari_poll_min: 600.0 is more than certs.ari_poll_max"):
        config.parse("[certs]\nari_poll_min = 600.0\nari_poll_max = 60.0\n", "t.toml")
    with pytest.raises(config.ConfigError, match=r"t.toml: certs.ari_poll_max"):
        config.parse("[certs]\nari_poll_max = -1.0\n", "t.toml")


def iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StandInCA:
    """The directory and renewalInfo resources of a CA; every path it was asked, in order."""

    def __init__(self, tmp_path) -> None:
        self.ca_dir = tmp_path / "ca"
        pki.make_ca(self.ca_dir)
        pki.issue(self.ca_dir, tmp_path / "ca-https.crt", tmp_path / "ca-https.key", ["127.0.0.1"])
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(tmp_path / "ca-https.crt", tmp_path / "ca-https.key")
        self.offer_ari = True
        self.answer: tuple[int, dict, bytes] = (404, {}, b"")
        self.asked: list[str] = []

    def window(self, start: float, end: float, retry_after: str | None = None) -> None:
        body = json.dumps({"suggestedWindow": {"start": iso(start), "end": iso(end)}}).encode()
        self.answer = (200, {"Retry-After": retry_after} if retry_after else {}, body)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.url = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def dispatch(self, request: web.Request) -> web.Response:
        self.asked.append(request.path)
        if request.path == "/dir":
            directory = {k: f"{self.url}/{k}" for k in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange")}
            if self.offer_ari:
                directory["renewalInfo"] = f"{self.url}/renewalInfo"
            return web.json_response(directory)
        if request.path.startswith("/renewalInfo/"):
            status, headers, body = self.answer
            return web.Response(status=status, headers={"Content-Type": "application/json", **headers}, body=body)
        return web.Response(status=503, text="this stand-in issues nothing")   # (an order reached it)


async def wait_until(check, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def run_with_ca(tmp_path, scenario, **cfg):
    """The stand-in CA, and a CertService holding a fresh 825-day certificate (far from
    two thirds of its lifetime) from another CA with an AKI; runs ``scenario(ca, certs)``."""
    async def main():
        ca = StandInCA(tmp_path)
        await ca.start()
        cert_dir = tmp_path / "certs"
        issuer = tmp_path / "issuer"
        pki.make_ca(issuer)
        pki.issue(issuer, cert_dir / "acme.crt", cert_dir / "acme.key", ["www.farts.test"])
        config = CertsConfig(enabled=True, directory_url=f"{ca.url}/dir", ca_bundle=str(ca.ca_dir / "ca.crt"),
                             retry_min=3600.0, **cfg)
        certs = CertService(config, ["www.farts.test"], cert_dir, tmp_path / "state", Metrics(), LoopClock())
        try:
            await scenario(ca, certs)
        finally:
            await certs.stop()
            await ca.runner.cleanup()
    asyncio.run(main())


def ordered(ca: StandInCA) -> bool:
    return any(p in ("/newNonce", "/newAccount", "/newOrder") for p in ca.asked)


def test_a_window_in_the_past_orders_at_once(tmp_path):
    async def scenario(ca, certs):
        now = time.time()
        ca.window(now - 7200, now - 3600)          # RFC 9773 §4.2: renew immediately
        certs.check()
        assert await wait_until(lambda: ordered(ca)), ca.asked
        assert ca.asked[:2] == ["/dir", "/renewalInfo/" + certs.ari_for]
        assert certs.ari_renew_at is not None and certs.ari_renew_at <= time.time()
        ari_status = json.loads(json.dumps(certs.status()))["ari"]   # (what /api/certs answers)
        assert ari_status["window_end"] == certs.ari_window.end and ari_status["renew_at"] == certs.ari_renew_at
    run_with_ca(tmp_path, scenario)


def test_a_window_in_the_future_waits_and_retry_after_sets_the_next_poll(tmp_path):
    async def scenario(ca, certs):
        now = time.time()
        ca.window(now + 86400, now + 2 * 86400, retry_after="7200")
        certs.check()
        assert await wait_until(lambda: certs.ari_window is not None)
        await asyncio.sleep(0.5)   # (the check after the answer has run)
        assert not ordered(ca) and certs.ordering is None
        assert now + 86400 <= certs.ari_renew_at <= now + 2 * 86400
        # RFC 9773 §4.3.3: asked again after Retry-After (within [ari_poll_min, ari_poll_max]).
        assert 7100 < certs.ari_next_poll - time.time() <= 7200
        asked = len(ca.asked)
        certs.check()                          # (a check before then does not ask again)
        await asyncio.sleep(0.3)
        assert len(ca.asked) == asked
        # The same window asked again keeps the time chosen; a moved window, a new one.
        chosen = certs.ari_renew_at
        certs.ari_next_poll = 0.0
        certs.check()
        assert await wait_until(lambda: len(ca.asked) == asked + 2)
        await asyncio.sleep(0.3)
        assert certs.ari_renew_at == chosen
        ca.window(now - 60, now - 30)          # the CA moves the window into the past
        certs.ari_next_poll = 0.0
        certs.check()
        assert await wait_until(lambda: ordered(ca)), ca.asked
    run_with_ca(tmp_path, scenario, ari_poll_min=10.0)


def test_a_bad_answer_falls_back_to_the_lifetime_rule_and_says_so(tmp_path, caplog):
    async def scenario(ca, certs):
        for answer in ((404, {}, b'{"type": "urn:ietf:params:acme:error:malformed"}'), (200, {}, b"<html>garbage")):
            ca.answer = answer
            certs.ari_next_poll = 0.0
            before = certs.ari_failures
            certs.check()
            assert await wait_until(lambda before=before: certs.ari_failures == before + 1)
            await asyncio.sleep(0.3)
            assert certs.ari_window is None and certs.ari_renew_at is None and certs.ari_error
            assert not ordered(ca) and certs.ordering is None
        assert "renewing by the lifetime rule" in caplog.text
        assert certs.ari_fetches.get(("failed",)) == 2
        # Failing again waits longer (doubling from ari_poll_min).
        assert certs.ari_next_poll - time.time() > 15
    run_with_ca(tmp_path, scenario, ari_poll_min=10.0)


def test_a_ca_without_renewal_information_keeps_todays_rule(tmp_path):
    async def scenario(ca, certs):
        ca.offer_ari = False
        certs.check()
        assert await wait_until(lambda: certs.ari_for != "")
        await asyncio.sleep(0.3)
        assert ca.asked == ["/dir"] and certs.ari_renew_at is None and not ordered(ca)
    run_with_ca(tmp_path, scenario)


def test_a_node_shows_the_window_and_the_chosen_time_in_api_certs(tmp_path):
    """End to end: a node holding a certificate asks the stand-in CA, and /api/certs and
    /metrics say what it was told and chose."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ca = StandInCA(tmp_path)
    asyncio.run_coroutine_threadsafe(ca.start(), loop).result(10)
    now = time.time()
    ca.window(now + 86400, now + 2 * 86400, retry_after="3600")
    issuer = tmp_path / "issuer"
    pki.make_ca(issuer)
    certs = tmp_path / "node" / "certs"
    pki.issue(issuer, certs / "acme.crt", certs / "acme.key", ["www.farts.test"])
    node = start_node(tmp_path, f"""
[[tenants]]
id = "site"
hosts = ["www.farts.test"]

[certs]
enabled = true
directory_url = "{ca.url}/dir"
ca_bundle = "{ca.ca_dir / 'ca.crt'}"
domains = ["www.farts.test"]
""")
    try:
        def status() -> dict:
            with urllib.request.urlopen(node.url("admin", "/api/certs"), timeout=10) as r:
                return json.load(r)["ari"]
        deadline = time.monotonic() + 60
        while status()["renew_at"] is None and time.monotonic() < deadline:
            time.sleep(0.3)
        shown = status()
        assert shown["window_start"] == int(now + 86400) and shown["window_end"] == int(now + 2 * 86400)
        assert shown["window_start"] <= shown["renew_at"] <= shown["window_end"]
        assert 3000 < shown["next_poll"] - time.time() <= 3600 and not shown["last_error"]
        with urllib.request.urlopen(node.url("admin", "/metrics"), timeout=10) as r:
            metrics = r.read().decode()
        assert 'farts_certs_ari_fetches_total{outcome="window"} 1.0' in metrics
        assert not ordered(ca) and node.alive()
    finally:
        node.stop()
        asyncio.run_coroutine_threadsafe(ca.runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
