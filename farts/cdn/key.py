"""Cache keys.  ``tenant NUL path?query NUL scheme NUL host`` (the base key), then, for
objects whose origin answered ``Vary``, ``NUL name=value`` for each field it names, in
name order (``NUL ae=<codings>`` for Accept-Encoding, its codings normalized).  The
tenant comes first so a purge by tenant or by (tenant, path prefix) is a prefix match,
and no key of one tenant is ever a key of another (tenant ids contain no NUL)."""
from __future__ import annotations

SEP = b"\0"
AE_ONLY = (b"accept-encoding",)


def base_key(tenant: str, target: bytes, scheme: str, host: bytes) -> bytes:
    return b"".join((tenant.encode(), SEP, target, SEP, scheme.encode(), SEP, host))


def tenant_prefix(tenant: str, path_prefix: str = "") -> bytes:
    return tenant.encode() + SEP + path_prefix.encode()


def target_of(key: bytes) -> bytes:
    return key.split(SEP, 2)[1]


def accept_encoding(value: bytes | None) -> bytes:
    """The codings a client accepts, normalized (sorted, no q=0, no parameters)."""
    if not value:
        return b""
    out = set()
    for part in value.lower().split(b","):
        coding, _, params = part.partition(b";")
        q = params.replace(b" ", b"")
        if coding.strip() and q not in (b"q=0", b"q=0.0", b"q=0.00", b"q=0.000"):
            out.add(coding.strip())
    return b",".join(sorted(out))


def field_value(value: bytes | None) -> bytes:
    """A request field's value as a variant selects on it (RFC 9111 §4.1): whitespace
    around its list members ignored."""
    if not value:
        return b""
    return b",".join(p.strip() for p in value.split(b","))


def variant_key(base: bytes, names: tuple[bytes, ...], header) -> bytes:
    """The key of the variant a request selects, ``header(name)`` reading its fields."""
    if not names:
        return base
    if names == AE_ONLY:  # the usual Vary, as cheap on the hit path as it always was
        return base + SEP + b"ae=" + accept_encoding(header(b"accept-encoding"))
    parts = [base]
    for name in names:
        if name == b"accept-encoding":
            parts.append(b"ae=" + accept_encoding(header(name)))
        else:
            parts.append(name + b"=" + field_value(header(name)))
    return SEP.join(parts)


def base_of(key: bytes) -> bytes:
    """The base key of a (variant) key."""
    return SEP.join(key.split(SEP, 4)[:4])


def parse_vary(value: bytes | None) -> tuple[bytes, ...] | None:
    """The Vary names of a response, sorted; None for ``*`` (never matched: not stored,
    RFC 9111 §4.1)."""
    if not value:
        return ()
    names = tuple(sorted({n.strip().lower() for n in value.split(b",") if n.strip()}))
    return None if b"*" in names else names
