"""The lease's wire messages (farts/master/peer.py): round trips, bad bodies refused, and
the view of every deployment's master from announcements."""
from __future__ import annotations

import pytest

from farts.master import lease
from farts.master.peer import (
    LeaseAsk,
    LeaseHeld,
    LeaseRelease,
    LeaseVote,
    Masters,
    NodeReport,
    wrap,
)
from farts.peer import BadMessage

MESSAGES = [lease.Ask(3, "n1", 7), lease.Vote(3, "n1", 7, True, 3, "n1"), lease.Vote(3, "n1", 7, False, 5, None),
            lease.Held(3, "n1"), lease.Release(3, "n1")]


@pytest.mark.parametrize("message", MESSAGES)
def test_lease_messages_round_trip_with_their_deployment(message):
    wire = wrap("eu", message)
    back = type(wire).from_wire(wire.to_wire())
    assert back.deployment == "eu" and back.message == message


@pytest.mark.parametrize("cls, body", [
    (LeaseAsk, {"d": "eu", "epoch": -1, "candidate": "n1", "round": 1}),
    (LeaseAsk, {"d": "eu", "epoch": 1, "candidate": "", "round": 1}),
    (LeaseAsk, {"d": "eu", "epoch": 1, "candidate": "n1"}),
    (LeaseVote, {"d": "eu", "epoch": 1, "candidate": "n1", "round": 1, "granted": 1, "promised_epoch": 1,
                 "promised_to": None}),
    (LeaseHeld, {"d": "x" * 200, "epoch": 1, "holder": "n1"}),
    (LeaseRelease, ["eu", 1, "n1"]),
    (LeaseHeld, {"d": "eu", "epoch": True, "holder": "n1"}),
    (NodeReport, {"d": "eu", "version": "1", "disk_used": 1.5}),
])
def test_bad_bodies_are_refused(cls, body):
    with pytest.raises(BadMessage):
        cls.from_wire(body)


def test_the_masters_view_follows_announcements_and_releases():
    m = Masters(6.0)
    m.held("eu", lease.Held(4, "n2"), 100.0)
    m.held("us", lease.Held(1, "u1"), 100.0)
    assert m.view(101.0) == {"eu": {"master": "n2", "epoch": 4}, "us": {"master": "u1", "epoch": 1}}
    m.released("eu", lease.Release(3, "n2"))           # an older epoch's release: no effect
    assert m.view(101.0)["eu"]["master"] == "n2"
    m.released("eu", lease.Release(4, "n2"))
    assert m.view(101.0)["eu"] == {"master": None, "epoch": 4}
    assert m.view(107.0)["us"] == {"master": None, "epoch": 1}   # not renewed for a lease: unknown
