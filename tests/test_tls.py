"""TLS termination: SNI picks the certificate, TLS 1.2+ only, ALPN, hot reload."""
from __future__ import annotations

import socket
import ssl
import subprocess
import time

import httpx
import pytest
from cryptography import x509

from farts import pki

ROUTES = """
[[routes]]
prefix = "/"
kind = "static"
body = "over tls\\n"
"""


@pytest.fixture
def node(node_factory):
    return node_factory(ROUTES)


def peer_cert(port: int, server_name: str, ca: str, alpn=("h2", "http/1.1"),
              **ctx_options) -> tuple[x509.Certificate, ssl.SSLSocket]:
    ctx = ssl.create_default_context(cafile=ca)
    for k, v in ctx_options.items():
        setattr(ctx, k, v)
    ctx.set_alpn_protocols(list(alpn))
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname=server_name)
    return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)), s


def test_curl_over_https_with_sni(node):
    out = subprocess.run(["curl", "-s", "--cacert", str(node.ca), node.url("https", "/").replace("127.0.0.1", "localhost")],
                         capture_output=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"over tls\n"
    r = httpx.get(node.url("https", "/"), verify=ssl.create_default_context(cafile=str(node.ca)))
    assert r.text == "over tls\n"


def test_sni_picks_the_certificate_for_the_name(node):
    ca_dir = node.data_dir / "ca"
    pki.issue(ca_dir, node.data_dir / "certs" / "other.crt", node.data_dir / "certs" / "other.key", ["other.test"])
    time.sleep(1.0)  # reload_interval is 0.2 s in tests
    port = node.port("https")
    cert, s = peer_cert(port, "other.test", str(node.ca))
    s.close()
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["other.test"]
    cert, s = peer_cert(port, "localhost", str(node.ca))
    s.close()
    assert "localhost" in cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    # curl with SNI other.test gets the other tenant's certificate, verified by the CA.
    out = subprocess.run(["curl", "-s", "--cacert", str(node.ca), "--resolve", f"other.test:{port}:127.0.0.1",
                          f"https://other.test:{port}/"], capture_output=True, timeout=10)
    assert out.returncode == 0 and out.stdout == b"over tls\n", out.stderr


def test_alpn_prefers_h2_then_http11_and_tls13_is_used(node):
    _, s = peer_cert(node.port("https"), "localhost", str(node.ca))
    assert s.selected_alpn_protocol() == "h2"
    assert s.version() == "TLSv1.3"
    s.close()
    _, s = peer_cert(node.port("https"), "localhost", str(node.ca), alpn=["http/1.1"])
    assert s.selected_alpn_protocol() == "http/1.1"
    s.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls12_is_accepted_and_tls11_refused(node):
    _, s = peer_cert(node.port("https"), "localhost", str(node.ca), maximum_version=ssl.TLSVersion.TLSv1_2)
    assert s.version() == "TLSv1.2"
    s.close()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer TLS 1.1; the server must refuse
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    raw = socket.create_connection(("127.0.0.1", node.port("https")), timeout=5)
    # (This client does speak TLS 1.1 to a server that allows it; the alert is the node's.)
    # uvloop closes without an alert, hence EOF rather than protocol_version.
    with pytest.raises(ssl.SSLError, match="(?i)version|EOF"):
        ctx.wrap_socket(raw, server_hostname="localhost")
    raw.close()


def test_certificates_hot_reload(node):
    port = node.port("https")
    before, s = peer_cert(port, "localhost", str(node.ca))
    s.close()
    certs = node.data_dir / "certs"
    pki.issue(node.data_dir / "ca", certs / "new.crt", certs / "new.key", ["localhost"])
    (certs / "new.key").replace(certs / "localhost.key.tmp")
    (certs / "new.crt").replace(certs / "localhost.crt")
    (certs / "localhost.key.tmp").replace(certs / "localhost.key")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        after, s = peer_cert(port, "localhost", str(node.ca))
        s.close()
        if after.serial_number != before.serial_number:
            break
        time.sleep(0.2)
    assert after.serial_number != before.serial_number
    assert "loaded certificates" in node.log()


def test_plain_http_on_the_tls_port_does_not_hurt(node):
    s = socket.create_connection(("127.0.0.1", node.port("https")), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    try:
        s.recv(100)
    except (ConnectionResetError, TimeoutError):
        pass
    s.close()
    r = httpx.get(node.url("https", "/"), verify=ssl.create_default_context(cafile=str(node.ca)))
    assert r.status_code == 200


def test_the_certificate_directory_is_checked_on_the_clock(tmp_path):
    """The reload check is a clock entry: a new pair is picked up at the next tick, a
    broken one keeps the old set."""
    from farts.clock import FakeClock
    from farts.transport.tls import CertStore

    pki.make_ca(tmp_path / "ca")
    certs = tmp_path / "certs"
    pki.issue(tmp_path / "ca", certs / "a.crt", certs / "a.key", ["a.test"])
    clock = FakeClock()
    store = CertStore(certs, clock)
    timer = store.watch(2.0)
    assert store.reloads == 1 and store.context_for("b.test") is None
    pki.issue(tmp_path / "ca", certs / "b.crt", certs / "b.key", ["b.test"])
    clock.advance(1.0)
    assert store.reloads == 1
    clock.advance(1.5)
    assert store.reloads == 2 and store.context_for("b.test") is not None
    (certs / "a.crt").write_text("not a certificate")
    (certs / "b.crt").write_text("not a certificate")
    clock.advance(2.0)
    assert store.reloads == 2 and store.context_for("b.test") is not None
    timer.cancel()
    assert clock.pending() == 0


def test_tls_handshakes_in_flight_are_bounded_per_ip(node_factory):
    node = node_factory("[limits]\nmax_tls_handshakes_per_ip = 4\n" + ROUTES)
    port = node.port("https")
    ctx = ssl.create_default_context(cafile=str(node.ca))
    # Four connections from 127.0.0.1 that never send a ClientHello hold its four places.
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
    try:
        deadline = time.monotonic() + 10   # (until the node has accepted those four)
        while True:
            try:
                ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                                server_hostname="localhost").close()
                refused = False
            except (ssl.SSLError, OSError):   # closed at accept
                refused = True
            if refused or time.monotonic() > deadline:
                break
        assert refused
        # Another address is served meanwhile.
        other = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0))
        with ctx.wrap_socket(other, server_hostname="localhost") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for s in idle:
            s.close()
    # Their places are free again once they are gone.
    deadline = time.monotonic() + 10
    while True:
        r = subprocess.run(["curl", "-sS", "--cacert", str(node.ca), node.url("https", "/")],
                           capture_output=True, timeout=10)
        if r.returncode == 0 or time.monotonic() > deadline:
            break
    assert r.stdout == b"over tls\n", r.stderr
    text = httpx.get(node.url("admin", "/metrics")).text
    assert any("max_handshakes_per_ip" in ln and not ln.rstrip().endswith(" 0.0")
               for ln in text.splitlines() if ln.startswith("farts_http_connections_refused_total")), text
