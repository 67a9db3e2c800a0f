"""A small certificate authority: what `farts-edge up` needs to serve HTTPS offline.

Keys are ECDSA P-256 (fast handshakes, accepted by every client we test with).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write_key(path: Path, key) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(directory: Path, name: str = "farts-edge local CA") -> tuple[Path, Path]:
    """Writes ca.crt and ca.key into directory (kept if they exist). Returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    crt, key_path = directory / "ca.crt", directory / "ca.key"
    if crt.exists() and key_path.exists():
        return crt, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_key(key_path, key)
    crt.write_bytes(_pem(cert))
    return crt, key_path


NODE_URI = "farts-node:"


def issue(ca_dir: Path, out_crt: Path, out_key: Path, names: list[str], days: int = 825,
          client: bool = False, node_id: str | None = None) -> None:
    """Issues a certificate for names (DNS names or IP addresses), signed by the CA in ca_dir.

    The chain file holds the leaf then the CA, so clients that trust the CA verify it.
    With node_id, it is a mesh node certificate: CN = the id, a URI SAN
    ``farts-node:<id>`` (what a peer checks against the id the node claims), and
    usable as both TLS client and server (mesh links authenticate both ways).
    """
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(NODE_URI + node_id)] if node_id else []
    client = client or node_id is not None
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id or names[0])]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out_crt.parent.mkdir(parents=True, exist_ok=True)
    _write_key(out_key, key)
    out_crt.write_bytes(_pem(cert) + _pem(ca_cert))


def issue_node(ca_dir: Path, out_dir: Path, node_id: str, names: list[str] = ()) -> tuple[Path, Path]:
    """A mesh node certificate in out_dir/<node_id>.crt and .key; returns their paths."""
    crt, key = out_dir / f"{node_id}.crt", out_dir / f"{node_id}.key"
    issue(ca_dir, crt, key, list(names), node_id=node_id)
    return crt, key


def node_id_of(peercert: dict) -> str | None:
    """The node id in a verified peer certificate (ssl's getpeercert() dict), or None."""
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "URI" and value.startswith(NODE_URI):
            return value[len(NODE_URI):]
    return None
