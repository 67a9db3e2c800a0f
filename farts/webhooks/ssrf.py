"""Server-side request forgery: which destinations a webhook may go to.

A tenant chooses the URL, so a delivery could be aimed at the node's own admin
listener, a cloud metadata address (169.254.169.254) or a private network behind the
node. The URL's name is resolved first and every address it resolves to is checked;
the connection then goes to the checked address (never resolved again: a name that
answers a public address to the check and a private one to the connect gets nowhere).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_SHARED = ipaddress.ip_network("100.64.0.0/10")   # carrier-grade NAT: private in all but name
# NAT64's well-known prefix (RFC 6052): a NAT64 gateway sends 64:ff9b::AABB:CCDD to
# A.B.C.D. Python's ipaddress calls it not global up to 3.11 and global from 3.12 on:
# judged here as its IPv4 address, whatever the version says.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(ValueError):
    """The destination may not be delivered to (the reason says why)."""


@dataclass(frozen=True, slots=True)
class Destination:
    scheme: str
    host: str         # a name or an address literal (IPv6 without brackets)
    port: int
    target: bytes     # path and query, what goes on the request line

    @property
    def key(self) -> str:
        """What concurrency limits and the circuit breaker count by."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_url(url: str) -> Destination:
    """Raises Refused on anything but an http(s) URL with a host and no credentials."""
    if not isinstance(url, str) or len(url) > 2048:
        raise Refused("url: a string of at most 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise Refused(f"url: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise Refused("url: only http:// and https:// URLs")
    if not parts.hostname:
        raise Refused("url: no host")
    if parts.username is not None or parts.password is not None:
        raise Refused("url: credentials in the URL are not sent")
    if any(c in url for c in "\r\n\t ") or any(ord(c) < 0x21 or ord(c) > 0x7e for c in url):
        raise Refused("url: characters outside printable ASCII (percent-encode them)")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Destination(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80),
                       target.encode())


class Policy:
    def __init__(self, allow_loopback: bool = False, allow_private: bool = False,
                 allow_networks: list[str] | tuple[str, ...] = ()) -> None:
        self.allow_loopback, self.allow_private = allow_loopback, allow_private
        self.networks = [ipaddress.ip_network(n, strict=False) for n in allow_networks]

    def problem(self, address: str) -> str | None:
        """Why a delivery may not go to this address, or None."""
        ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.is_site_local:     # fec0::/10: deprecated, still routed inside some sites
                return f"{ip} is a site-local address (webhooks.allow_networks)"
            # An IPv4 address inside an IPv6 one (::ffff:a.b.c.d; NAT64's 64:ff9b::AABB:CCDD and
            # 6to4's 2002:AABB:CCDD::, which a host with such a route sends to A.B.C.D) is
            # judged as that IPv4 address.
            if ip in _NAT64:
                ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            else:
                ip = ip.ipv4_mapped or ip.sixtofour or ip
        if any(ip in n for n in self.networks):
            return None
        if ip.is_loopback:
            return None if self.allow_loopback else f"{ip} is a loopback address (webhooks.allow_loopback)"
        if ip.is_unspecified:
            return f"{ip} is the unspecified address"
        if ip.is_link_local:
            return f"{ip} is a link-local address (webhooks.allow_networks)"
        if ip.is_multicast:
            return f"{ip} is a multicast address"
        if ip.is_private or ip in _SHARED:
            if self.allow_private and not ip.is_reserved:
                return None
            return f"{ip} is a private address (webhooks.allow_private)"
        if ip.is_reserved or not ip.is_global:
            return f"{ip} is a reserved address (webhooks.allow_networks)"
        return None

    def check(self, host: str, addresses: list[str]) -> str:
        """The address to connect to: the first of those ``host`` resolved to, when every
        one of them is allowed (else Refused, naming the first that is not)."""
        if not addresses:
            raise Refused(f"{host}: resolves to no address")
        for a in addresses:
            why = self.problem(a)
            if why is not None:
                raise Refused(f"{host}: {why}" if host != a else why)
        return addresses[0]
