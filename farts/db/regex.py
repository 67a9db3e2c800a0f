"""$regex (and $jsonSchema `pattern`) compiled so that no pattern can stall a thread.

A backtracking engine takes exponential time on patterns like ``^(a+)+$`` against
"aaa…b", and validators run on the store's single writer thread: one such insert would
stop every write of the node. So a pattern runs in RE2 (google-re2), whose time is linear
in the text, with PCRE's meaning kept where the two differ (``$`` and ``\\Z`` also match
before a final newline). Only what RE2 lacks (backreferences, lookaround, the ``x``
option) runs in Python's re, and there a pattern that can backtrack without bound (a
repeated group holding another repeat or an alternation) is refused as invalid, at
create/collMod for a validator and at the query for a filter.
"""
from __future__ import annotations

import re
from re import _constants as sre
from re import _parser as sre_parse

import re2

from farts.db.errors import error

INVALID = 51091   # MongoDB's "Regular expression is invalid"
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE, "u": 0}
_END = "(?:\\n?\\z)"   # PCRE's $ without m, and \Z: the end, or before a final newline
_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT)


def compile(pattern: str, options: str):
    """The compiled pattern (its .search(text) finds a match or None) for MongoDB's options."""
    for letter in options:
        if letter not in _FLAGS:
            raise error(51108, f"invalid flag in regex options: {letter}")
    if "x" not in options:   # RE2 has no extended (verbose) syntax
        try:
            return _Linear(re2.compile(_pcre_to_re2(pattern, "m" in options), _re2_options(options)),
                           _literal_prefix(pattern) if "i" not in options and "m" not in options else "")
        except re2.error:
            pass   # a feature RE2 lacks (or a bad pattern): Python's re says which
    flags = 0
    for letter in options:
        flags |= _FLAGS[letter]
    python = _pcre_to_python(pattern)
    try:
        compiled = re.compile(python, flags)
    except re.error as e:
        raise error(INVALID, f"Regular expression is invalid: {e}") from None
    if _can_backtrack_without_bound(sre_parse.parse(python, flags)):
        raise error(INVALID, f"Regular expression is invalid: /{pattern}/ repeats a group that holds another "
                             "repeat or an alternation, and uses a feature the linear-time engine lacks "
                             "(backreference, lookaround or the x option): it could backtrack without bound")
    return compiled


class _Linear:
    """An RE2 program whose search(text) only tells whether it matches (all $regex needs):
    RE2's own Match on the UTF-8 text, without the wrapper's span decoding (8x slower)."""
    __slots__ = ("_match", "_prefix")

    def __init__(self, compiled, prefix: str) -> None:
        self._match = compiled._regexp.Match
        self._prefix = prefix   # what every match starts with (^abc...): most texts are refused by it

    def search(self, text: str) -> bool | None:
        if not text.startswith(self._prefix):
            return None
        data = text.encode("utf-8", "surrogatepass")
        return True if self._match(_UNANCHORED, data, 0, len(data))[0] != _NO_MATCH else None


_UNANCHORED, _NO_MATCH = re2._Anchor.UNANCHORED, re2._NULL_SPAN
_re2_choices: dict[tuple[bool, bool], object] = {}


def _literal_prefix(pattern: str) -> str:
    """The plain characters after a leading ^ (without i or m): a match starts with them."""
    if not pattern.startswith("^") or "|" in pattern:   # ^a|b: b need not start with a
        return ""
    end = 1
    while end < len(pattern) and pattern[end] not in "\\.[]()*+?{}|^$":
        end += 1
    if end < len(pattern) and pattern[end] in "*+?{":
        end -= 1   # the last character is repeated (or optional): not part of every match
    return pattern[1:max(end, 1)]


def _re2_options(options: str):
    key = ("i" in options, "s" in options)
    o = _re2_choices.get(key)
    if o is None:
        o = _re2_choices[key] = re2.Options()
        o.log_errors = False   # a pattern RE2 cannot serve goes to Python's re, not to stderr
        o.never_capture = True
        o.case_sensitive, o.dot_nl = not key[0], key[1]
    return o


def _pcre_to_re2(pattern: str, multiline: bool) -> str:
    """The pattern in RE2's syntax with PCRE's meaning: m as an inline flag, and $ (without
    m) and \\Z matching before a final newline too (RE2's $ is the very end)."""
    out = ["(?m)"] if multiline else []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            pair = pattern[i:i + 2]
            out.append(_END if pair == "\\Z" and not in_class else pair)
            i += 2
            continue
        if in_class:
            if c == "[" and pattern.startswith("[:", i) and (close := pattern.find(":]", i + 2)) >= 0:
                out.append(pattern[i:close + 2])   # a POSIX class: its ] does not end the set
                i = close + 2
                continue
            in_class = c != "]"
        elif c == "[":
            in_class = True
            out.append(c)
            i += 1
            if pattern.startswith("^", i):
                out.append("^")
                i += 1
            if pattern.startswith("]", i):   # a ] first in a set is a member
                out.append("]")
                i += 1
            continue
        elif c == "$" and not multiline:
            c = _END
        out.append(c)
        i += 1
    return "".join(out)


def _pcre_to_python(pattern: str) -> str:
    """The few PCRE spellings Python's re lacks: (?<name>...), \\z and PCRE's \\Z."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            pair = pattern[i:i + 2]
            out.append({"\\z": "\\Z", "\\Z": "(?=\\n?\\Z)"}.get(pair, pair))
            i += 2
            continue
        if pattern.startswith("(?<", i) and pattern[i + 3:i + 4] not in ("=", "!"):
            out.append("(?P<")
            i += 3
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _can_backtrack_without_bound(parsed, inside_repeat: bool = False) -> bool:
    """Whether a repeat (of more than one) holds another repeat or an alternation: the
    shape whose ways to split a text grow exponentially with its length."""
    for op, av in parsed:
        if op in _REPEATS:
            low, high, body = av
            if inside_repeat and high > 1:
                return True
            if _can_backtrack_without_bound(body, inside_repeat or high > 1):
                return True
        elif op is sre.BRANCH:
            if inside_repeat:
                return True
            if any(_can_backtrack_without_bound(b, inside_repeat) for b in av[1]):
                return True
        elif op is sre.SUBPATTERN:
            if _can_backtrack_without_bound(av[3], inside_repeat):
                return True
        elif op in (sre.ASSERT, sre.ASSERT_NOT):
            if _can_backtrack_without_bound(av[1], inside_repeat):
                return True
        elif op is sre.ATOMIC_GROUP:
            if _can_backtrack_without_bound(av, inside_repeat):
                return True
        elif op is sre.GROUPREF_EXISTS:
            if any(p is not None and _can_backtrack_without_bound(p, inside_repeat) for p in av[1:]):
                return True
    return False
