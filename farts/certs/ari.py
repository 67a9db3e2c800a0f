"""ACME Renewal Information (RFC 9773): when the CA would like a certificate renewed.

The CA's directory names a ``renewalInfo`` URL; a GET of ``<renewalInfo>/<certificate
identifier>`` (unauthenticated, §4.2) answers a ``suggestedWindow`` (start, end) and a
``Retry-After`` saying when to ask again (§4.3). The client renews at a time chosen
uniformly at random inside the window, at once when the window is already in the past
(§4.2). The decisions here are pure (``now`` passed in); ``fetch`` is the blocking GET,
run in a worker thread by the service.
"""
from __future__ import annotations

import base64
import datetime
import email.utils
import json
import random
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass

from cryptography import x509

USER_AGENT = "farts-edge"
DEFAULT_POLL = 6 * 3600.0   # (when the CA sends no Retry-After; RFC 9773 §4.3.3's example)


class AriError(Exception):
    """The renewal information could not be had (the reason is for the log)."""


@dataclass(frozen=True)
class Window:
    start: float          # wall-clock seconds
    end: float
    explanation: str = ""  # the CA's explanationURL, when it gives one


@dataclass(frozen=True)
class RenewalInfo:
    window: Window | None        # None: the CA offers no renewal information
    retry_after: float | None    # seconds, as the CA said (unbounded), or None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 §4.1: base64url(AKI keyIdentifier) "." base64url(serial's DER integer
    content octets, with the leading 0 a positive number whose top bit is set needs).
    ValueError when the certificate has no Authority Key Identifier."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        aki = None
    if not aki:
        raise ValueError("the certificate has no Authority Key Identifier")
    serial = cert.serial_number
    return _b64url(aki) + "." + _b64url(serial.to_bytes(serial.bit_length() // 8 + 1, "big", signed=True))


def renewal_time(window: Window, now: float, rng: random.Random | None = None) -> float:
    """§4.2: a time chosen uniformly at random inside the window; ``now`` when the
    window has already passed (renew at once)."""
    if window.end <= now:
        return now
    return (rng or random).uniform(window.start, window.end)


def poll_delay(retry_after: float | None, least: float, most: float) -> float:
    """When to ask again (§4.3.3): the CA's Retry-After, or 6 h without one, bounded so
    that a CA cannot make the client poll in a loop or never again."""
    return min(most, max(least, DEFAULT_POLL if retry_after is None else retry_after))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After (RFC 9110 §10.2.3): delay-seconds or an HTTP-date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return email.utils.parsedate_to_datetime(value).timestamp() - now
    except (TypeError, ValueError):
        return None


def _rfc3339(value) -> float:
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r}")
    when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError(f"a timestamp without a time zone: {value!r}")
    return when.timestamp()


def parse_renewal_info(body: bytes) -> Window:
    """The RenewalInfo object (§4.2); ValueError on anything else, including a window
    whose end is not after its start (§4.2: the client treats that as an error)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None
    window = doc.get("suggestedWindow") if isinstance(doc, dict) else None
    if not isinstance(window, dict):
        raise ValueError("no suggestedWindow")
    start, end = _rfc3339(window.get("start")), _rfc3339(window.get("end"))
    if end <= start:
        raise ValueError("suggestedWindow ends before it starts")
    explanation = doc.get("explanationURL")
    return Window(start, end, explanation if isinstance(explanation, str) else "")


def fetch(directory_url: str, ca_bundle: str | None, cert: x509.Certificate, timeout: float,
          now: float) -> RenewalInfo:
    """Blocking: the directory, then its renewalInfo for ``cert``. Raises AriError."""
    context = ssl.create_default_context(cafile=ca_bundle or None)

    def get(url: str) -> tuple[bytes, str | None]:
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.read(1 << 20), r.headers.get("Retry-After")

    try:
        directory = json.loads(get(directory_url)[0])
        base = directory.get("renewalInfo") if isinstance(directory, dict) else None
        if not isinstance(base, str) or not base.startswith("https://"):
            return RenewalInfo(None, None)
        url = base.rstrip("/") + "/" + cert_id(cert)
        body, retry_after = get(url)
        return RenewalInfo(parse_renewal_info(body), parse_retry_after(retry_after, now))
    except urllib.error.HTTPError as e:
        raise AriError(f"{e.url}: HTTP {e.code}") from None
    except (OSError, ValueError) as e:
        raise AriError(f"{type(e).__name__}: {e}") from None
