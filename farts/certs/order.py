"""One ACME order, start to end (RFC 8555 §7.4), with the well-kept ``acme`` library.

Blocking network I/O: the service runs ``order_certificate`` in a worker thread. It
talks to the event loop only through ``publish``/``withdraw`` (thread-safe callables the
service gives it) for the HTTP-01 answers, which the loop serves.
"""
from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable
from pathlib import Path

import josepy as jose
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

USER_AGENT = "farts-edge"


class OrderFailed(Exception):
    """The CA refused or the order did not complete (the reason is for the log)."""


def account_key(path: Path) -> jose.JWKRSA:
    """The account key, made on first use and kept (0600) beside the certificates' state."""
    if path.exists():
        return jose.JWKRSA.json_loads(path.read_text())
    key = jose.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.json_dumps())
    return key


def order_certificate(directory_url: str, ca_bundle: str | None, state_dir: Path, contact: str,
                      domains: list[str], timeout: float,
                      publish: Callable[[str, str], None], withdraw: Callable[[str], None],
                      challenge: str = "http-01") -> tuple[bytes, bytes]:
    """Orders a certificate for ``domains``; returns (full chain PEM, private key PEM).
    HTTP-01: ``publish(token, key authorization)``; DNS-01: ``publish(_acme-challenge
    name, TXT value)`` (wildcard names need DNS-01). Raises OrderFailed."""
    kind = challenges.DNS01 if challenge == "dns-01" else challenges.HTTP01
    key = account_key(state_dir / "account.json")
    net = client.ClientNetwork(key, user_agent=USER_AGENT, verify_ssl=ca_bundle or True)
    published: list[str] = []
    try:
        directory = client.ClientV2.get_directory(directory_url, net)
        acme = client.ClientV2(directory, net=net)
        registration = state_dir / "account-uri.json"
        if registration.exists():
            net.account = messages.RegistrationResource.json_loads(registration.read_text())
        else:
            reg = messages.NewRegistration.from_data(email=contact or None, terms_of_service_agreed=True)
            net.account = acme.new_account(reg)
            registration.write_text(net.account.json_dumps())
        private = ec.generate_private_key(ec.SECP256R1())
        key_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        order = acme.new_order(crypto_util.make_csr(key_pem, domains))
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue
            chall = next((c for c in authz.body.challenges if isinstance(c.chall, kind)), None)
            if chall is None:
                raise OrderFailed(f"{authz.body.identifier.value}: the CA offers no {challenge} challenge")
            response, validation = chall.response_and_validation(key)
            if kind is challenges.DNS01:
                where = chall.chall.validation_domain_name(authz.body.identifier.value)
            else:
                where = chall.chall.encode("token")
            publish(where, validation)
            published.append(where)
        for authz in order.authorizations:   # (answered once every record is out)
            for chall in authz.body.challenges:
                if isinstance(chall.chall, kind) and authz.body.status != messages.STATUS_VALID:
                    acme.answer_challenge(chall, chall.response(key))
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
        order = acme.poll_and_finalize(order, deadline=deadline)
        return order.fullchain_pem.encode(), key_pem
    except (errors.Error, messages.Error, OSError, ValueError, json.JSONDecodeError) as e:
        raise OrderFailed(f"{type(e).__name__}: {e}") from None
    finally:
        for where in dict.fromkeys(published):
            withdraw(where)
