"""TLS termination: a directory of certificates, chosen by SNI, reloaded when it changes.

The directory holds ``<name>.crt`` (the chain, leaf first) and ``<name>.key`` pairs.
Each pair becomes one ``ssl.SSLContext``; the names it serves come from the leaf's
subjectAltName (DNS names, wildcards and IP addresses). The listening context carries
the first pair as the default (clients without SNI) and an SNI callback that switches
each connection to the context for its name. Reload swaps the name map in one
assignment: handshakes in progress keep the context they started with.
"""
from __future__ import annotations

import logging
import ssl
from pathlib import Path

from cryptography import x509

from farts.clock import Clock, LoopClock, Timer

log = logging.getLogger("farts.tls")

# What ALPN offers, in the server's order of preference (the listener picks the HTTP
# machine by the protocol chosen: h2conn for "h2", h1 otherwise).
ALPN = ["h2", "http/1.1"]
ALPN_HTTP1 = ["http/1.1"]


def _context(cert: Path, key: Path, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(alpn)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(cert, key)
    return ctx


def names_in(cert_path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return [cn[0].value.lower()] if cn else []
    return ([n.lower() for n in san.get_values_for_type(x509.DNSName)]
            + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)])


class CertStore:
    def __init__(self, cert_dir: Path, clock: Clock | None = None, alpn: list[str] = ALPN) -> None:
        self.cert_dir = cert_dir
        self.alpn = alpn
        self.clock = clock or LoopClock()
        self.by_name: dict[str, ssl.SSLContext] = {}
        self.default: ssl.SSLContext | None = None
        self._seen: dict[str, float] = {}
        self.listening = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.listening.minimum_version = ssl.TLSVersion.TLSv1_2
        self.listening.set_alpn_protocols(alpn)
        self.listening.sni_callback = self._on_sni
        self.reloads = 0
        self.load()

    def _files(self) -> dict[str, float]:
        found = {}
        for path in sorted(self.cert_dir.glob("*.crt")) + sorted(self.cert_dir.glob("*.key")):
            try:
                found[path.name] = path.stat().st_mtime_ns
            except FileNotFoundError:
                pass
        return found

    def load(self) -> None:
        """(Re)build the name map from the directory. Raises if it holds no usable pair."""
        seen = self._files()
        by_name: dict[str, ssl.SSLContext] = {}
        first: tuple[Path, Path] | None = None
        for cert in sorted(self.cert_dir.glob("*.crt")):
            key = cert.with_suffix(".key")
            if not key.exists():
                continue
            try:
                ctx = _context(cert, key, self.alpn)
                names = names_in(cert)
            except (ssl.SSLError, ValueError, OSError) as e:
                log.error("certificate %s not loaded: %s", cert, e)
                continue
            first = first or (cert, key)
            for name in names:
                by_name.setdefault(name, ctx)
        if first is None:
            raise FileNotFoundError(f"{self.cert_dir}: no usable <name>.crt/<name>.key pair")
        self.listening.load_cert_chain(*first)
        self.by_name = by_name
        self._seen = seen
        self.reloads += 1
        log.info("loaded certificates for %s", ", ".join(sorted(by_name)))

    def context_for(self, name: str) -> ssl.SSLContext | None:
        name = name.lower().rstrip(".")
        ctx = self.by_name.get(name)
        if ctx is None and "." in name:
            ctx = self.by_name.get("*." + name.split(".", 1)[1])
        return ctx

    def _on_sni(self, sslobj: ssl.SSLObject, name: str | None, _ctx) -> None:
        if name:
            ctx = self.context_for(name)
            if ctx is not None:
                sslobj.context = ctx

    def changed(self) -> bool:
        return self._files() != self._seen

    def check(self, _now: float = 0.0) -> None:
        """Reloads if a file in the directory changed; a bad new set keeps the old one."""
        if self.changed():
            try:
                self.load()
            except (OSError, ssl.SSLError) as e:
                log.error("certificate reload failed, keeping the old ones: %s", e)

    def watch(self, interval: float) -> Timer:
        """Checks the directory every ``interval`` s; cancel the returned timer to stop."""
        return self.clock.every(interval, self.check)
