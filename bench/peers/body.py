"""The response body every target of bench/http.py serves: the same bytes everywhere.

Plain ASCII (safe in a TOML string, an nginx file and a Python literal), ending in a
newline, exactly ``size`` bytes.
"""
from __future__ import annotations

PATTERN = b"farts-edge bench 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n"


def make_body(size: int = 1024) -> bytes:
    if size <= 0:
        return b""
    out = (PATTERN * (size // len(PATTERN) + 1))[: size - 1] + b"\n"
    assert len(out) == size
    return out
