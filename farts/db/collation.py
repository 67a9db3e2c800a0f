"""Collation: MongoDB's locale-aware string comparison, with ICU (PyICU).

A collation turns every string into its ICU sort key (bytes whose byte order is the
collation's order, equal exactly when the strings compare equal at its strength), kept as
a latin-1 str so that the query engine, the sorts and $group compare collated strings by
plain code point. A read with a collation matches its filter against the collated
document (the caller gets the stored one back) and sorts by collated values; $regex,
$expr and $where clauses still see the stored strings, as MongoDB's do. Field names are
never collated.

An index with a collation holds its strings' sort keys too (``index_keys``); a query
reads it when its collation is the index's (``Plan``, ``index_bounds``), and any index
for bounds that have no strings in them.

{locale: "simple"} (or no collation) is binary comparison: no ICU involved.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bson.regex import Regex

from farts.db import keys
from farts.db.errors import BAD_VALUE, TYPE_MISMATCH, error
from farts.db.query import compile_filter

try:
    import icu
except ImportError:   # the endpoint still serves "simple" and refuses the rest, saying why
    icu = None

# The fields of a collation document, their types and MongoDB's defaults.
_FIELDS: dict[str, tuple[type, Any]] = {
    "locale": (str, None), "caseLevel": (bool, False), "caseFirst": (str, "off"), "strength": (int, 3),
    "numericOrdering": (bool, False), "alternate": (str, "non-ignorable"), "maxVariable": (str, "punct"),
    "normalization": (bool, False), "backwards": (bool, False), "version": (str, None),
}
_CHOICES = {"caseFirst": ("upper", "lower", "off"), "alternate": ("non-ignorable", "shifted"),
            "maxVariable": ("punct", "space")}
# Clauses a collation does not reach: they see the stored strings.
_RAW_OPERATORS = ("$regex", "$options", "$type", "$expr", "$where", "$jsonSchema", "$comment")


class Collation:
    def __init__(self, spec: dict, collator) -> None:
        self.spec = spec   # the full document, as MongoDB reports it (listIndexes, listCollections)
        self.identity = tuple(spec.items())   # an index's collation (hashable; () is binary)
        self._key = collator.getSortKey
        self._cache: dict[str, str] = {}

    def key(self, s: str) -> str:
        k = self._cache.get(s)
        if k is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            k = self._cache[s] = self._key(s).decode("latin-1")
        return k

    def value(self, v: Any) -> Any:
        """v with every string in it (not field names) replaced by its collation key."""
        t = type(v)
        if t is str:
            return self.key(v)
        if t is dict:
            return {k: self.value(x) for k, x in v.items()}
        if t is list:
            return [self.value(x) for x in v]
        return v

    def filter_value(self, v: Any) -> Any:
        """A filter's value with its strings collated, but not under _RAW_OPERATORS."""
        if type(v) is dict:
            return {k: x if k in _RAW_OPERATORS else self.filter_value(x) for k, x in v.items()}
        if type(v) is list:
            return [self.filter_value(x) for x in v]
        return self.value(v)

    def matcher(self, flt: dict | None) -> Callable[[Any], bool]:
        """The filter under this collation: its clauses with a regex (or $expr, $where)
        against the stored document, the others against the collated one."""
        raw, collated = {}, {}
        for name, value in (flt or {}).items():
            if name in _RAW_OPERATORS or _has_regex(value):
                raw[name] = value
            else:
                collated[name] = self.filter_value(value)
        on_stored, on_collated = compile_filter(raw), compile_filter(collated)
        if not collated:
            return on_stored
        return lambda doc: on_collated(self.value(doc)) and on_stored(doc)


def _has_regex(v: Any) -> bool:
    if isinstance(v, Regex) or type(v).__name__ == "Pattern":
        return True
    if isinstance(v, dict):
        return "$regex" in v or any(_has_regex(x) for x in v.values())
    if isinstance(v, list):
        return any(_has_regex(x) for x in v)
    return False


_parsed: dict[tuple, Collation | None] = {}
_STRENGTHS = [icu.Collator.PRIMARY, icu.Collator.SECONDARY, icu.Collator.TERTIARY, icu.Collator.QUATERNARY,
              icu.Collator.IDENTICAL] if icu is not None else []


def parse(spec: Any) -> Collation | None:
    """The collation a command's (or an index's, a collection's) `collation` asks for;
    None for binary comparison ("simple"). Raises MongoDB's errors for a bad document and
    a clear one for a locale ICU cannot serve here."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise error(TYPE_MISMATCH, "BSON field 'collation' is the wrong type, expected type 'object'", "TypeMismatch")
    cache_key = tuple((k, repr(v)) for k, v in spec.items())
    if cache_key in _parsed:
        return _parsed[cache_key]
    for name, value in spec.items():
        if name not in _FIELDS:
            raise error(40415, f"BSON field 'collation.{name}' is an unknown field.")
        kind = _FIELDS[name][0]
        if kind is int:
            # (a double may be NaN or infinite: int() of those raises, so they are refused first)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value != int(value):
                raise error(TYPE_MISMATCH, f"BSON field 'collation.{name}' is the wrong type, expected a number",
                            "TypeMismatch")
        elif not isinstance(value, kind):
            raise error(TYPE_MISMATCH, f"BSON field 'collation.{name}' is the wrong type, expected "
                                       f"{'a string' if kind is str else 'a boolean'}", "TypeMismatch")
        if name in _CHOICES and value not in _CHOICES[name]:
            raise error(BAD_VALUE, f"Field '{name}' must be one of {', '.join(_CHOICES[name])}. Got: {value}")
    if "locale" not in spec:
        raise error(40414, "BSON field 'collation.locale' is missing but a required field")
    locale = spec["locale"]
    if locale == "simple":
        if len(spec) > 1:
            raise error(BAD_VALUE, "Collation with locale 'simple' cannot have any other fields")
        _parsed[cache_key] = None
        return None
    strength = int(spec.get("strength", 3))
    if not 1 <= strength <= 5:
        raise error(BAD_VALUE, f"Field 'strength' must be an integer 1 through 5. Got: {strength}")
    if icu is None:
        raise error(BAD_VALUE, f"collation locale '{locale}' cannot be served: this server has no ICU "
                               "(install PyICU); only {locale: 'simple'} is available")
    if locale.split("@", 1)[0] not in _available() and locale != "root":
        raise error(BAD_VALUE, f"Field 'locale' is invalid in: {{ locale: \"{locale}\" }}")
    collator = icu.Collator.createInstance(icu.Locale(locale))
    _configure(collator, {**spec, "strength": strength})
    full = {**_effective(collator), "locale": locale, "maxVariable": spec.get("maxVariable", "punct"),
            "version": icu.ICU_VERSION}
    full = {name: full[name] for name in _FIELDS}   # MongoDB's field order
    c = Collation(full, collator)
    if len(_parsed) > 1000:
        _parsed.clear()
    _parsed[cache_key] = c
    return c


def _available() -> set[str]:
    """The locales ICU has data for (collation tailorings, and the locales that use the root order)."""
    global _locales
    if _locales is None:
        _locales = set(icu.Collator.getAvailableLocales()) | set(icu.Locale.getAvailableLocales())
    return _locales


_locales: set[str] | None = None


def _configure(collator, spec: dict) -> None:
    """Sets the attributes the collation names; the others keep the locale's own defaults
    (fr_CA compares accents from the end, da puts upper case first), as MongoDB's do."""
    a, v = icu.UCollAttribute, icu.UCollAttributeValue
    on = {True: v.ON, False: v.OFF}
    collator.setStrength(_STRENGTHS[spec["strength"] - 1])
    for name, attribute in (("caseLevel", a.CASE_LEVEL), ("numericOrdering", a.NUMERIC_COLLATION),
                            ("normalization", a.NORMALIZATION_MODE), ("backwards", a.FRENCH_COLLATION)):
        if name in spec:
            collator.setAttribute(attribute, on[spec[name]])
    if "caseFirst" in spec:
        collator.setAttribute(a.CASE_FIRST, {"upper": v.UPPER_FIRST, "lower": v.LOWER_FIRST, "off": v.OFF}[spec["caseFirst"]])
    if "alternate" in spec:
        collator.setAttribute(a.ALTERNATE_HANDLING, v.SHIFTED if spec["alternate"] == "shifted" else v.NON_IGNORABLE)
    if spec.get("maxVariable") == "space":
        # ICU pins the variable top to the end of the group of the character given (PyICU
        # has no setMaxVariable): space alone is ignorable, punctuation no longer is.
        collator.setVariableTop(" ")


def _effective(collator) -> dict:
    """The collation document of what the collator does (as MongoDB reports it)."""
    a, v = icu.UCollAttribute, icu.UCollAttributeValue
    get = collator.getAttribute
    return {"caseLevel": get(a.CASE_LEVEL) == v.ON,
            "caseFirst": {v.UPPER_FIRST: "upper", v.LOWER_FIRST: "lower"}.get(get(a.CASE_FIRST), "off"),
            "strength": _STRENGTHS.index(collator.getStrength()) + 1,
            "numericOrdering": get(a.NUMERIC_COLLATION) == v.ON,
            "alternate": "shifted" if get(a.ALTERNATE_HANDLING) == v.SHIFTED else "non-ignorable",
            "normalization": get(a.NORMALIZATION_MODE) == v.ON,
            "backwards": get(a.FRENCH_COLLATION) == v.ON}


class Plan(dict):
    """The filter a collated query picks an index by: the filter as given, with the
    collation's identity and the filter collated (the bounds of its strings in an index
    of the same collation)."""
    __slots__ = ("collation", "collated")


def plan_and_matcher(flt: dict | None, collation: Collation | None) -> tuple[dict, Callable[[Any], bool] | None]:
    """(the filter the store picks an index by, the predicate) of flt under a collation."""
    if collation is None:
        return flt or {}, compile_filter(flt) if flt else None
    plan = Plan(flt or {})
    plan.collation, plan.collated = collation.identity, collation.filter_value(flt or {})
    return plan, collation.matcher(flt)


def plan_collation(plan: dict) -> tuple:
    """The identity of the collation a plan was made under (() for binary)."""
    return plan.collation if type(plan) is Plan else ()


def index_bounds(plan: dict) -> Callable[[tuple], dict[str, keys.Bounds]]:
    """The bounds of plan that an index of a given collation (its identity) can serve: all
    of them (strings collated) in an index of the plan's collation, else those without a
    string (numbers, dates, ... have the same key under every collation)."""
    given = keys.field_bounds(plan) if plan else {}
    query = plan_collation(plan)
    same = keys.field_bounds(plan.collated) if query else given
    other: list[dict] = []   # made when an index of another collation asks (most queries never do)

    def bounds(index_collation: tuple) -> dict[str, keys.Bounds]:
        if index_collation == query or not given:
            return same
        if not other:
            other.append({path: b for path, b in given.items() if not _has_string(b)})
        return other[0]
    return bounds


def _has_string(b: keys.Bounds) -> bool:
    return any(type(v) is str for v in b.points or ()) or \
        any(bound is not None and bound[0][0] == keys.R_STRING for bound in (b.low, b.high))


_of_index: dict[tuple, Collation] = {}


def index_keys(doc: dict, index) -> tuple[dict[bytes, tuple], bool]:
    """keys.index_keys of doc in index (a farts.db.store.Index), its strings as their sort
    keys when the index has a collation (the values, for a DuplicateKey error, as stored)."""
    if not index.collation:
        return keys.index_keys(doc, index.fields)
    c = _of_index.get(index.collation)
    if c is None:
        c = _of_index[index.collation] = parse(dict(index.collation))
    return keys.index_keys(doc, index.fields, lambda v: keys.encode(c.value(v)))
