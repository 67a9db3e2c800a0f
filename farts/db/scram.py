"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as MongoDB speaks it, server side, sans-IO.

Credentials are derived once from the configured passwords (PBKDF2 is deliberately
slow); a conversation is two client messages: client-first → server-first (nonce,
salt, iterations), client-final (proof) → server-final (the server's signature, so
the client knows it spoke to a server that knows the password).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from pymongo.saslprep import saslprep

MECHANISM = "SCRAM-SHA-256"
ITERATIONS = 15000  # MongoDB's default for SCRAM-SHA-256


class AuthError(Exception):
    """Any failed step; the client only learns 'Authentication failed.'"""


@dataclass(frozen=True)
class Credential:
    user: str
    tenant: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def make_credential(user: str, password: str, tenant: str, iterations: int = ITERATIONS,
                    salt: bytes | None = None) -> Credential:
    salt = salt or secrets.token_bytes(28)
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return Credential(user, tenant, salt, iterations, hashlib.sha256(client_key).digest(),
                      _hmac(salted, b"Server Key"))


def _attrs(message: str) -> dict[str, str]:
    out = {}
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise AuthError(f"malformed SCRAM attribute {part[:20]!r}")
        out.setdefault(part[0], part[2:])
    return out


def _unescape_name(name: str) -> str:
    if "=" in name.replace("=2C", "").replace("=3D", ""):
        raise AuthError("malformed user name")
    return name.replace("=2C", ",").replace("=3D", "=")


def client_final(user: str, password: str, client_nonce: str, server_first: str) -> str:
    """The client's final message (RFC 5802 §3) for a login started with ``n,,n=USER,r=NONCE``:
    what a driver sends to ``saslContinue``. The node never logs in anywhere; the tests and
    bench/fuzz.py do, on raw sockets, and this is the one copy of the client's proof."""
    attrs = _attrs(server_first)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = _hmac(salted, b"Client Key")
    without_proof = f"c=biws,r={attrs['r']}"
    auth_message = f"n={user},r={client_nonce},{server_first},{without_proof}".encode()
    signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
    return f"{without_proof},p={proof}"


class ScramServer:
    """One conversation. step() takes a client payload and returns the server payload."""

    def __init__(self, credentials: dict[str, Credential], server_nonce: str | None = None) -> None:
        self.credentials = credentials
        self._server_nonce = server_nonce  # fixed only by tests (RFC 7677's example)
        self.state = "start"
        self.credential: Credential | None = None
        self._nonce = ""
        self._first_bare = ""
        self._server_first = ""

    @property
    def done(self) -> bool:
        return self.state == "done"

    def step(self, payload: bytes) -> bytes:
        try:
            text = bytes(payload).decode("utf-8")
        except UnicodeDecodeError:
            raise AuthError("SCRAM payload is not UTF-8") from None
        if self.state == "start":
            return self._first(text)
        if self.state == "first":
            return self._final(text)
        raise AuthError("SCRAM conversation already finished")

    def _first(self, text: str) -> bytes:
        if not text.startswith(("n,", "y,")):
            raise AuthError("channel binding is not supported" if text.startswith("p=")
                            else "malformed SCRAM client-first message")
        gs2_end = text.find(",", 2)
        if gs2_end < 0:
            raise AuthError("malformed SCRAM client-first message")
        self._first_bare = text[gs2_end + 1:]
        attrs = _attrs(self._first_bare)
        if "n" not in attrs or "r" not in attrs or "m" in attrs:
            raise AuthError("SCRAM client-first message lacks a name or a nonce")
        user = _unescape_name(attrs["n"])
        cred = self.credentials.get(user)
        # An unknown user gets a made-up salt and fails at the proof: no user enumeration.
        self.credential = cred
        salt = cred.salt if cred else hashlib.sha256(b"unknown:" + user.encode()).digest()[:28]
        iterations = cred.iterations if cred else ITERATIONS
        self._nonce = attrs["r"] + (self._server_nonce or base64.b64encode(secrets.token_bytes(24)).decode())
        self._server_first = f"r={self._nonce},s={base64.b64encode(salt).decode()},i={iterations}"
        self.state = "first"
        return self._server_first.encode()

    def _final(self, text: str) -> bytes:
        self.state = "failed"
        proof_at = text.rfind(",p=")
        if proof_at < 0:
            raise AuthError("SCRAM client-final message has no proof")
        without_proof = text[:proof_at]
        attrs = _attrs(text)
        if attrs.get("r") != self._nonce:
            raise AuthError("SCRAM nonce mismatch")
        if attrs.get("c") not in ("biws", "eSws"):  # base64 of "n,," and "y,,"
            raise AuthError("SCRAM channel binding mismatch")
        try:
            proof = base64.b64decode(attrs["p"], validate=True)
        except (ValueError, KeyError):
            raise AuthError("SCRAM proof is not base64") from None
        cred = self.credential
        auth_message = f"{self._first_bare},{self._server_first},{without_proof}".encode()
        if cred is None or len(proof) != 32:
            raise AuthError("Authentication failed.")
        signature = _hmac(cred.stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), cred.stored_key):
            raise AuthError("Authentication failed.")
        self.state = "done"
        return b"v=" + base64.b64encode(_hmac(cred.server_key, auth_message))
