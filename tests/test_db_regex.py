"""$regex and $jsonSchema `pattern` cannot stall the node (farts/db/regex.py): the classic
catastrophic pattern ^(a+)+$ against "a"*40 + "b" (2**40 ways to split the a's for a
backtracking engine) answers at once in a validator on the writer thread and in a query;
a pattern only a backtracking engine can run (a backreference) that also nests repeats is
refused at create and collMod with 51091, MongoDB's "Regular expression is invalid".

PCRE's meaning (MongoDB's engine) is kept where RE2 differs: $ and \\Z also match before
a final newline, a ] first in a class is a member; the expected answers are PCRE's
documented ones (pcre2pattern: "Circumflex and dollar", "Square brackets").
"""
from __future__ import annotations

import threading

import pytest
import test_db_pymongo
from pymongo.errors import OperationFailure, WriteError

from farts.db import regex
from farts.db.errors import MongoError
from farts.db.query import compile_filter

node, listener, client = test_db_pymongo.node, test_db_pymongo.listener, test_db_pymongo.client
EVIL = "^(a+)+$"
EVIL_TEXT = "a" * 40 + "b"


def answers(fn, timeout: float = 60):
    """fn() run in a daemon thread: its result, or a failure if it has not answered in time
    (a backtracking engine on EVIL_TEXT would run for hours)."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert out, "the pattern did not answer: catastrophic backtracking"
    return out[0]


def test_the_catastrophic_pattern_answers_at_once():
    match = compile_filter({"s": {"$regex": EVIL}})
    assert answers(lambda: match({"s": EVIL_TEXT})) is False
    assert match({"s": "aaaa"}) and not match({"s": "b"})
    schema = compile_filter({"$jsonSchema": {"properties": {"s": {"pattern": EVIL}}}})
    assert answers(lambda: schema({"s": EVIL_TEXT})) is False


@pytest.mark.parametrize("pattern, options, text, found", [
    ("a$", "", "a\n", True),        # $: the end, or before a final newline
    ("a$", "", "a\nb", False),
    ("a$", "m", "a\nb", True),      # m: before any newline
    ("a\\Z", "", "a\n", True),
    ("a\\z", "", "a\n", False),     # \z: the very end
    ("^b", "", "a\nb", False),
    ("^b", "m", "a\nb", True),
    ("[$]", "", "$", True),         # $ in a class is a character
    ("[]a]", "", "]", True),        # ] first in a class is a member
    ("[^]a]", "", "]", False),
    ("[[:digit:]]x", "", "1x", True),
    ("(?<word>ab)c", "", "abc", True),
    ("A.B", "is", "a\nb", True),
    ("A.B", "i", "a\nb", False),
    ("(a)\\1", "", "aa", True),     # a backreference: Python's re (no nested repeat)
    ("a b # comment", "x", "ab", True),
    ("^ab|c", "", "c", True),       # the literal prefix of ^ab is not required by |c
    ("^abc?", "", "ab", True),
    ("^abc", "i", "ABC", True),
    ("^b", "m", "a\nbc", True),
    ("^\\w+$", "", "døden", False),   # \w is ASCII in MongoDB's PCRE (SERVER-23881)
    ("^\\w+$", "", "den_1", True),
])
def test_pcre_meaning(pattern, options, text, found):
    assert (regex.compile(pattern, options).search(text) is not None) is found


@pytest.mark.parametrize("pattern", ["^(a+)+\\1$", "(?=a)(a|aa)*$", "(\\w*)*(?!x)"])
def test_a_pattern_that_needs_backtracking_and_nests_repeats_is_refused(pattern):
    with pytest.raises(MongoError) as e:
        regex.compile(pattern, "")
    assert e.value.code == 51091 and "backtrack without bound" in e.value.message


def test_bad_patterns_and_options():
    with pytest.raises(MongoError) as e:
        regex.compile("(", "")
    assert e.value.code == 51091
    with pytest.raises(MongoError) as e:
        regex.compile("a", "q")
    assert e.value.code == 51108


@pytest.mark.timeout(300)
def test_validators_with_the_catastrophic_pattern_on_a_node(client):
    db = client.rx_validators
    client.drop_database(db.name)
    db.create_collection("schema", validator={"$jsonSchema": {"properties": {"s": {"pattern": EVIL}}}})
    db.create_collection("query", validator={"s": {"$regex": EVIL}})
    for name in ("schema", "query"):
        with pytest.raises(WriteError) as e:
            db[name].insert_one({"_id": 1, "s": EVIL_TEXT})
        assert e.value.code == 121
        db[name].insert_one({"_id": 2, "s": "aaaa"})   # the writer goes on
        assert db[name].find_one({"s": {"$regex": EVIL}}) == {"_id": 2, "s": "aaaa"}
        assert db[name].count_documents({"s": {"$not": {"$regex": EVIL}}}) == 0
    # What only a backtracking engine runs, with nested repeats, is refused before it is kept.
    nested_backref = {"$jsonSchema": {"properties": {"s": {"pattern": "^(a+)+\\1$"}}}}
    with pytest.raises(OperationFailure) as e:
        db.create_collection("refused", validator=nested_backref)
    assert e.value.code == 51091
    with pytest.raises(OperationFailure) as e:
        db.command("collMod", "query", validator={"s": {"$regex": "(a*)*\\1"}})
    assert e.value.code == 51091
    assert "refused" not in db.list_collection_names()
    info = db.command("listCollections", filter={"name": "query"})["cursor"]["firstBatch"][0]
    assert info["options"]["validator"] == {"s": {"$regex": EVIL}}
    with pytest.raises(OperationFailure) as e:
        db.query.find_one({"s": {"$regex": "(a|aa)+\\1"}})
    assert e.value.code == 51091
