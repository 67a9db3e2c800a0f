"""BSON comparison order, as MongoDB sorts and compares values.

Types compare by bracket first (MinKey < null/missing < numbers < strings < objects < arrays
< binary < ObjectId < bool < date < Timestamp < regex < MaxKey), then by value inside the
bracket: numbers of any width by numeric value (NaN below every other number), strings by
code point (what UTF-8 byte order gives), objects and arrays element by element.

`sort_key` turns a value into a tuple whose Python order is that order, so sorting is a
plain `sorted(..., key=...)` and `compare` is a comparison of two keys.
"""
from __future__ import annotations

import datetime
import math
import re
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from bson.binary import Binary
from bson.code import Code
from bson.dbref import DBRef
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

from farts.db.errors import BAD_VALUE, error


class _Missing:
    """A path that leads nowhere: compares like null, but is not a value to store."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

# MongoDB's canonical type numbers (bsontypes.h canonicalizeBSONType).
RANK_MINKEY = -1
RANK_NULL = 5
RANK_NUMBER = 10
RANK_STRING = 15
RANK_OBJECT = 20
RANK_ARRAY = 25
RANK_BINARY = 30
RANK_OBJECTID = 35
RANK_BOOL = 40
RANK_DATE = 45
RANK_TIMESTAMP = 47
RANK_REGEX = 50
RANK_CODE = 60
RANK_MAXKEY = 127

_UTC = datetime.UTC
_EPOCH = datetime.datetime(1970, 1, 1)
_REGEX_FLAG_LETTERS = ((re.IGNORECASE, "i"), (re.LOCALE, "l"), (re.MULTILINE, "m"),
                       (re.DOTALL, "s"), (re.UNICODE, "u"), (re.VERBOSE, "x"))


def type_rank(value: Any) -> int:
    """The canonical type bracket of a value (values compare only within one bracket)."""
    if value is None or value is MISSING:
        return RANK_NULL
    t = type(value)
    if t is bool:
        return RANK_BOOL
    if t in _RANK_BY_TYPE:
        return _RANK_BY_TYPE[t]
    if isinstance(value, bool):
        return RANK_BOOL
    if isinstance(value, (int, float, Decimal128)):
        return RANK_NUMBER
    if isinstance(value, Code):
        return RANK_CODE
    if isinstance(value, str):
        return RANK_STRING
    if isinstance(value, (dict, DBRef)):
        return RANK_OBJECT
    if isinstance(value, (list, tuple)):
        return RANK_ARRAY
    if isinstance(value, (bytes, bytearray, uuid.UUID)):
        return RANK_BINARY
    if isinstance(value, ObjectId):
        return RANK_OBJECTID
    if isinstance(value, datetime.datetime):
        return RANK_DATE
    if isinstance(value, Timestamp):
        return RANK_TIMESTAMP
    if isinstance(value, (Regex, re.Pattern)):
        return RANK_REGEX
    if isinstance(value, MinKey):
        return RANK_MINKEY
    if isinstance(value, MaxKey):
        return RANK_MAXKEY
    raise error(BAD_VALUE, f"cannot compare a value of Python type {t.__name__}")


_RANK_BY_TYPE = {int: RANK_NUMBER, float: RANK_NUMBER, str: RANK_STRING, dict: RANK_OBJECT,
                 list: RANK_ARRAY}


def number_value(value: Any) -> int | float | Decimal:
    """A number of any BSON width as a Python number that compares exactly with the others."""
    if isinstance(value, Decimal128):
        return value.to_decimal()
    return value


def is_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, Decimal128):
        return value.to_decimal().is_nan()
    return False


def regex_flags(value: Regex | re.Pattern) -> str:
    """The flags of a regex as MongoDB's option letters, sorted."""
    flags = value.flags
    if isinstance(flags, str):
        return "".join(sorted(flags))
    # Python sets re.UNICODE on every str pattern; MongoDB has no such default flag.
    flags &= ~re.UNICODE
    return "".join(letter for bit, letter in _REGEX_FLAG_LETTERS if flags & bit)


def _date_millis(value: datetime.datetime) -> int:
    if value.tzinfo is not None:
        value = value.astimezone(_UTC).replace(tzinfo=None)
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def sort_key(value: Any) -> tuple:
    """A tuple whose Python ordering is MongoDB's ordering of the value."""
    t = type(value)
    if t is int or t is Int64:
        return (RANK_NUMBER, 1, value)
    if t is str:
        return (RANK_STRING, value)
    rank = type_rank(value)
    if rank == RANK_NUMBER:
        if is_nan(value):
            return (RANK_NUMBER, 0)
        return (RANK_NUMBER, 1, number_value(value))
    if rank == RANK_STRING or rank == RANK_CODE:
        return (rank, str(value))
    if rank == RANK_OBJECT:
        if isinstance(value, DBRef):
            value = value.as_doc()
        # Per element: type bracket, then field name, then value (BSONObj::woCompare).
        return (RANK_OBJECT, tuple(_field_key(k, v) for k, v in value.items()))
    if rank == RANK_ARRAY:
        return (RANK_ARRAY, tuple(sort_key(v) for v in value))
    if rank == RANK_BINARY:
        if isinstance(value, uuid.UUID):  # a codec with uuid_representation decodes subtype 4
            return (RANK_BINARY, 16, 4, value.bytes)
        subtype = value.subtype if isinstance(value, Binary) else 0
        return (RANK_BINARY, len(value), subtype, bytes(value))
    if rank == RANK_OBJECTID:
        return (RANK_OBJECTID, value.binary)
    if rank == RANK_BOOL:
        return (RANK_BOOL, bool(value))
    if rank == RANK_DATE:
        return (RANK_DATE, _date_millis(value))
    if rank == RANK_TIMESTAMP:
        return (RANK_TIMESTAMP, value.time, value.inc)
    if rank == RANK_REGEX:
        return (RANK_REGEX, value.pattern, regex_flags(value))
    return (rank,)


def _field_key(name: str, value: Any) -> tuple:
    key = sort_key(value)
    return (key[0], name, key)


def compare(a: Any, b: Any) -> int:
    """-1, 0 or 1 as MongoDB orders a and b (missing compares as null)."""
    ka, kb = sort_key(a), sort_key(b)
    return (ka > kb) - (ka < kb)


def values_equal(a: Any, b: Any) -> bool:
    """Equality as a MongoDB query sees it: same type bracket and equal value (1 == 1.0)."""
    ta, tb = type(a), type(b)
    if ta is tb and ta in _SCALAR_FAST_TYPES:
        return a == b
    return compare(a, b) == 0


_SCALAR_FAST_TYPES = frozenset({str, int})  # not float: NaN equals NaN here


def _sort_path_values(doc: Any, parts: list[str]) -> list:
    """The values a sort on a dotted path sees: arrays along the way fan out (like index keys)."""
    current = [doc]
    for part in parts:
        following = []
        for value in current:
            if isinstance(value, dict):
                following.append(value.get(part, MISSING))
            elif isinstance(value, list):
                if part.isdigit() and int(part) < len(value):
                    following.append(value[int(part)])
                for element in value:
                    if isinstance(element, dict):
                        following.append(element.get(part, MISSING))
                    elif isinstance(element, list):
                        continue
                    elif not part.isdigit():
                        following.append(MISSING)
            else:
                following.append(MISSING)
        current = following
    leaves = []
    for value in current:
        if isinstance(value, list):
            # An empty array sorts below null (its key is 'undefined').
            leaves.extend(value if value else [_EMPTY_ARRAY])
        else:
            leaves.append(value)
    return leaves


_EMPTY_ARRAY_KEY = (RANK_NULL - 1,)
_EMPTY_ARRAY: Any = object()


def sort_value_key(doc: Any, path: str, direction: int) -> tuple:
    """The key of one document for one sort field: smallest element ascending, largest descending."""
    if "." not in path and isinstance(doc, dict):
        value = doc.get(path, MISSING)
        if type(value) is not list:
            return sort_key(value)
    keys = [_EMPTY_ARRAY_KEY if v is _EMPTY_ARRAY else sort_key(v)
            for v in _sort_path_values(doc, path.split("."))]
    if not keys:
        return sort_key(None)
    return min(keys) if direction > 0 else max(keys)


def parse_sort_spec(spec: Any) -> list[tuple[str, int]]:
    """A sort specification (dict, SON or list of pairs) as (path, 1 | -1) pairs."""
    if spec is None:
        return []
    items = list(spec.items()) if isinstance(spec, dict) else list(spec)
    pairs = []
    for item in items:
        if isinstance(item, str):
            path, direction = item, 1
        else:
            path, direction = item
        if isinstance(direction, dict):
            raise error(BAD_VALUE, f"sort on {{$meta: ...}} for field {path!r} is not supported")
        if isinstance(direction, bool) or not isinstance(direction, (int, float)) or \
                direction not in (1, -1):
            raise error(15975, "$sort key ordering must be 1 (for ascending) or -1 (for descending)")
        if not isinstance(path, str) or not path:
            raise error(BAD_VALUE, f"invalid sort field name {path!r}")
        if path == "$natural":
            pairs.append((path, int(direction)))
            continue
        if path.startswith("$"):
            raise error(BAD_VALUE, f"unsupported sort key {path!r}")
        pairs.append((path, int(direction)))
    return pairs


def sort_documents(docs: Iterable[dict], sort_spec: Any, collate: Any = None) -> list[dict]:
    """The documents in MongoDB's order for a (multi-key, dotted) sort; ties keep input order.
    collate: a collation's value function (strings compared by their collation keys)."""
    pairs = parse_sort_spec(sort_spec)
    docs = list(docs)
    if not pairs:
        return docs

    if pairs[0][0] == "$natural":
        # Insertion order, the order documents arrive in (reversed for -1); nothing else.
        return docs[::-1] if pairs[0][1] < 0 else docs
    if collate is not None:
        keyed = [(collate(doc), doc) for doc in docs]
        for path, direction in reversed(pairs):
            keyed.sort(key=lambda e, p=path, d=direction: sort_value_key(e[0], p, d), reverse=direction < 0)
        return [doc for _, doc in keyed]
    # One stable pass per field, least significant first; reverse=True keeps ties in order.
    for path, direction in reversed(pairs):
        docs.sort(key=lambda doc, p=path, d=direction: sort_value_key(doc, p, d),
                  reverse=direction < 0)
    return docs
