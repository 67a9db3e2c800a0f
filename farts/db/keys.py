"""Order-preserving byte keys for BSON values, and the index plan for a filter.

LMDB compares keys as bytes, so an index key must sort like the values it stands for:
type bracket first (the byte of MongoDB's canonical type number), then the value in a
prefix-free encoding, so a compound key is the concatenation of its parts and a scan
over a prefix selects exactly the documents whose leading fields equal it.

Exact order: null, numbers, strings, binary, ObjectId, bool, dates, timestamps (what
range scans use). Objects, arrays and regexes get a key that is exact for equality
only; the planner never uses a range over them.
"""
from __future__ import annotations

import datetime
import itertools
import math
import re
import struct
from dataclasses import dataclass

import bson
from bson.binary import Binary
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

R_MINKEY, R_NULL, R_NUMBER, R_STRING, R_OBJECT, R_ARRAY = 0x01, 0x05, 0x0A, 0x0F, 0x14, 0x19
R_BINARY, R_OBJECTID, R_BOOL, R_DATE, R_TIMESTAMP, R_REGEX, R_OTHER, R_MAXKEY = \
    0x1E, 0x23, 0x28, 0x2D, 0x2F, 0x32, 0x3C, 0x7F
_EPOCH = datetime.datetime(1970, 1, 1)
_DOUBLE = struct.Struct(">d")
_U64 = struct.Struct(">Q")
_SIGN = 1 << 63


def _escaped(data: bytes) -> bytes:
    # 0x00 → 0x00 0xFF, then a 0x00 0x00 terminator: prefix-free and order-preserving.
    return data.replace(b"\0", b"\0\xff") + b"\0\0"


def _number(value) -> bytes:
    if isinstance(value, Decimal128):
        d = value.to_decimal()
        f = float(d) if not d.is_nan() else math.nan
        delta = 0
    elif isinstance(value, float):
        f, delta = value, 0
    else:  # ints beyond 2**53 keep their exact order through the remainder
        f = float(value)
        delta = value - int(f) if math.isfinite(f) else 0
    if math.isnan(f):
        head = b"\0" * 8  # NaN sorts below every number
    else:
        if f == 0:
            f = 0.0  # -0.0 == 0.0
        (bits,) = _U64.unpack(_DOUBLE.pack(f))
        head = _U64.pack(bits ^ 0xFFFFFFFFFFFFFFFF if bits & _SIGN else bits | _SIGN)
    return bytes((R_NUMBER,)) + head + struct.pack(">I", delta + (1 << 31))


def _millis(value: datetime.datetime) -> int:
    if value.tzinfo is not None:
        value = value.astimezone(datetime.UTC).replace(tzinfo=None)
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def encode(value) -> bytes:
    """The key of one value (missing and null share a key, as in MongoDB indexes)."""
    t = type(value)
    if t is str:
        return b"\x0f" + _escaped(value.encode("utf-8", "surrogatepass"))
    if t is bool:
        return b"\x28\x01" if value else b"\x28\x00"
    if t in (int, float, Int64) or isinstance(value, Decimal128):
        return _number(value)
    if value is None:
        return b"\x05"
    if t is ObjectId:
        return b"\x23" + value.binary
    if isinstance(value, datetime.datetime):
        return b"\x2d" + _U64.pack((_millis(value) + _SIGN) & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, DatetimeMS):
        return b"\x2d" + _U64.pack((int(value) + _SIGN) & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, dict):
        return b"\x14" + _escaped(bson.encode(value))
    if isinstance(value, (list, tuple)):
        return b"\x19" + _escaped(bson.encode({"": list(value)}))
    if isinstance(value, (bytes, Binary)):
        subtype = value.subtype if isinstance(value, Binary) else 0
        return b"\x1e" + struct.pack(">IB", len(value), subtype) + bytes(value)
    if isinstance(value, Timestamp):
        return b"\x2f" + struct.pack(">II", value.time, value.inc)
    if isinstance(value, (Regex, re.Pattern)):
        flags = value.flags if isinstance(value.flags, str) else str(int(value.flags))
        return b"\x32" + _escaped(value.pattern.encode() if isinstance(value.pattern, str)
                                  else value.pattern) + _escaped(flags.encode())
    if isinstance(value, MinKey):
        return b"\x01"
    if isinstance(value, MaxKey):
        return b"\x7f"
    return b"\x3c" + _escaped(bson.encode({"": value}))


def invert(key: bytes) -> bytes:
    """A descending field's key: every byte inverted (reverses order, stays prefix-free)."""
    return bytes(255 - b for b in key)


# Values an index can look up by equality (arrays, objects and regexes match in ways
# a point lookup would miss, so those filters scan).
_POINT_TYPES = (str, bool, int, float, Int64, Decimal128, ObjectId, datetime.datetime,
                type(None), Timestamp, bytes, Binary)
# Values whose bracket has an exact byte order, so a range scan is right.
_RANGE_TYPES = (str, int, float, Int64, Decimal128, ObjectId, datetime.datetime, Timestamp)


def path_values(doc, path: str) -> tuple[list, bool]:
    """The values an index on `path` holds for doc, and whether an array was crossed."""
    out: list = []
    arrays = [False]

    def walk(value, parts: list[str], i: int) -> None:
        if i == len(parts):
            if isinstance(value, list):
                arrays[0] = True
                out.extend(value if value else [None])
            else:
                out.append(value)
            return
        part = parts[i]
        if isinstance(value, dict):
            if part in value:
                walk(value[part], parts, i + 1)
            else:
                out.append(None)
        elif isinstance(value, list):
            arrays[0] = True
            before = len(out)
            if part.isdigit() and int(part) < len(value):
                walk(value[int(part)], parts, i + 1)
            for element in value:
                if isinstance(element, dict):
                    walk(element, parts, i)
            if len(out) == before:
                out.append(None)
        else:
            out.append(None)

    walk(doc, path.split("."), 0)
    return out, arrays[0]


def index_keys(doc: dict, fields, key=encode) -> tuple[dict[bytes, tuple], bool]:
    """Every key of doc in a (compound) index → the field values it stands for, and
    whether the index becomes multikey (an array on an indexed path). ``key``: a
    value's key (a collated index's: farts.db.collation.index_keys)."""
    parts, multikey = [], False
    for path, direction in fields:
        values, crossed = path_values(doc, path)
        multikey |= crossed
        encoded = {}
        for v in values:
            k = key(v)
            encoded.setdefault(invert(k) if direction < 0 else k, v)
        parts.append(list(encoded.items()))
    out = {}
    for combo in itertools.product(*parts):
        out.setdefault(b"".join(k for k, _ in combo), tuple(v for _, v in combo))
    return out, multikey


# ---- planning ----

@dataclass
class Bounds:
    """What a filter says about one field: point values, or a range inside one bracket."""
    points: list | None = None
    low: tuple[bytes, bool] | None = None    # (key, inclusive)
    high: tuple[bytes, bool] | None = None


def field_bounds(flt: dict) -> dict[str, Bounds]:
    """Constraints an index can serve, from the top level of a filter (and of its $and).

    Every constraint is implied by the filter, so the index yields a superset of the
    matches and the compiled filter decides; anything the planner does not understand
    is simply not a constraint.
    """
    out: dict[str, Bounds] = {}

    def add(path: str, cond) -> None:
        b = out.setdefault(path, Bounds())
        if isinstance(cond, dict) and cond and all(isinstance(k, str) and k.startswith("$") for k in cond):
            for op, v in cond.items():
                if op == "$eq" and isinstance(v, _POINT_TYPES):
                    b.points = [v]
                elif op == "$in" and isinstance(v, list) and v and all(isinstance(x, _POINT_TYPES) for x in v):
                    if b.points is None:
                        b.points = list(v)
                elif op in ("$gt", "$gte") and isinstance(v, _RANGE_TYPES) and not isinstance(v, bool):
                    k = encode(v)
                    if b.low is None or k > b.low[0]:
                        b.low = (k, op == "$gte")
                elif op in ("$lt", "$lte") and isinstance(v, _RANGE_TYPES) and not isinstance(v, bool):
                    k = encode(v)
                    if b.high is None or k < b.high[0]:
                        b.high = (k, op == "$lte")
        elif isinstance(cond, _POINT_TYPES) and not isinstance(cond, dict):
            b.points = [cond]

    def visit(f: dict) -> None:
        for key, cond in f.items():
            if key == "$and" and isinstance(cond, list):
                for sub in cond:
                    if isinstance(sub, dict):
                        visit(sub)
            elif isinstance(key, str) and not key.startswith("$"):
                add(key, cond)

    if isinstance(flt, dict):
        visit(flt)
    return {k: b for k, b in out.items() if b.points or b.low or b.high}


@dataclass
class Scan:
    """Key ranges to read from one index: [start, stop) pairs plus a prefix test."""
    index: str
    ranges: list[tuple[bytes, bytes | None]]
    point_fields: int
    ranged: bool


MAX_POINTS = 1000


def plan_index(name: str, fields: list[tuple[str, int]], multikey: bool, bounds: dict[str, Bounds]) -> Scan | None:
    prefixes = [b""]
    used = 0
    for path, direction in fields:
        b = bounds.get(path)
        if b is None or not b.points or len(prefixes) * len(b.points) > MAX_POINTS:
            break
        keys = sorted({encode(v) for v in b.points})
        keys = [invert(k) for k in keys] if direction < 0 else keys
        prefixes = [p + k for p in prefixes for k in keys]
        used += 1
    ranged = False
    ranges: list[tuple[bytes, bytes | None]] = []
    nxt = fields[used] if used < len(fields) else None
    b = bounds.get(nxt[0]) if nxt else None
    if b is not None and not b.points and (b.low or b.high):
        low, high = b.low, b.high
        if low and high and low[0][0] != high[0][0]:
            high = None  # different brackets match nothing together; scan the lower one
        if multikey and low and high:
            high = None  # an array can meet each bound with a different element
        rank = (low or high)[0][0]
        for p in prefixes:
            if nxt[1] > 0:
                start = (p + low[0] if low[1] else p + low[0] + b"\xff") if low else p + bytes((rank,))
                stop = (p + high[0] + b"\xff" if high[1] else p + high[0]) if high else p + bytes((rank + 1,))
            else:  # a descending field: inverted keys, so the high bound comes first
                start = (p + invert(high[0]) if high[1] else p + invert(high[0]) + b"\xff") if high \
                    else p + bytes((255 - rank,))
                stop = (p + invert(low[0]) + b"\xff" if low[1] else p + invert(low[0])) if low \
                    else p + bytes((256 - rank,))
            ranges.append((start, stop))
        ranged = True
    elif used:
        ranges = [(p, _prefix_end(p)) for p in prefixes]
    if not used and not ranged:
        return None
    return Scan(name, ranges, used, ranged)


def _prefix_end(prefix: bytes) -> bytes | None:
    """The first key after every key starting with prefix."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return None
    p[-1] += 1
    return bytes(p)


prefix_end = _prefix_end
