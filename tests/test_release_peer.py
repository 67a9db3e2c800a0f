"""A bundle over the mesh, without sockets: two nodes' BundlePeers on an in-memory bus
with the real verification (bundle.verify through ReleaseNode.stage's contract), a
transfer that fails answered with a verdict, and bad messages refused. (The chunked
transfer itself: test_transfer.py.)"""
from __future__ import annotations

import asyncio
import os

import pytest
from test_release_bundle import wheel_name

from farts import transfer
from farts.clock import FakeClock
from farts.members import Member
from farts.peer import BadMessage, Envelope
from farts.release import bundle
from farts.release.peer import STALL, BundleAsk, BundleChunk, BundleOffer, BundlePeer, BundleVerdict
from farts.transfer import CHUNK


class Bus:
    """Two nodes' buses in one loop: a send is delivered at the loop's next turn."""

    def __init__(self, me: str, net: dict, lose=lambda msg: False) -> None:
        self.me, self.net, self.handlers, self.sent, self.lose = me, net, {}, [], lose
        net[me] = self

    def members(self):
        return [Member(n) for n in self.net]

    def subscribe(self, cls, fn):
        self.handlers[cls] = fn
        return lambda: None

    def send(self, node: str, msg) -> bool:
        other = self.net.get(node)
        if other is None:
            return False
        self.sent.append(msg)
        if self.lose(msg):
            return True
        wire = type(msg).from_wire(msg.to_wire())   # what the other side parses
        asyncio.get_running_loop().call_soon(other.handlers[type(msg)], wire, Envelope(self.me))
        return True


def test_two_nodes_a_good_bundle_is_verified_there_a_bad_one_refused_with_the_reason(tmp_path):
    key_path, pub_path = bundle.keygen(tmp_path / "keys")
    key, trusted = bundle.load_private_key(key_path), [bundle.load_public_key(pub_path)]
    (tmp_path / "w").mkdir()
    wheel = tmp_path / "w" / wheel_name("0.2.0")
    wheel.write_bytes(os.urandom(CHUNK * 3))
    good = bundle.make_bundle(key, [wheel], "0.2.0", {}, tmp_path / "good.tar").read_bytes()
    staged = []

    def stage(data: bytes, allow_downgrade: bool) -> str:   # ReleaseNode.stage's contract
        path = tmp_path / "in.tar"
        path.write_bytes(data)
        staged.append(bundle.verify(path, trusted, current="0.1.0", allow_downgrade=allow_downgrade).version)
        return staged[-1]

    async def main():
        net, clock = {}, FakeClock()
        runner = BundlePeer("n1", Bus("n1", net), clock, stage, bundle.Refused)
        BundlePeer("n2", Bus("n2", net), clock, stage, bundle.Refused)
        assert runner.linked("n2") and not runner.linked("n1") and not runner.linked("n9")
        assert await runner.send("n2", "0.2.0", good, False) == (True, "")
        tampered = bytearray(good)
        tampered[len(good) // 2] ^= 1   # (inside the wheel)
        assert await runner.send("n2", "0.2.0", bytes(tampered), False) == (
            False, f"{wheel.name}: SHA-256 differs from the manifest's (the file was changed)")
        assert await runner.send("n9", "0.2.0", good, False) == (False, "no mesh link to n9 (or its queue is full)")
        return net
    net = asyncio.run(main())
    assert staged == ["0.2.0"]
    chunks = [m for m in net["n1"].sent if isinstance(m, BundleChunk)]
    assert max(len(c.data) for c in chunks) == CHUNK and len(good) > 3 * CHUNK


def test_a_transfer_that_stalls_is_answered_a_failure_and_a_silent_node_times_out():
    async def main():
        net, clock = {}, FakeClock()
        runner = BundlePeer("n1", Bus("n1", net, lose=lambda m: isinstance(m, BundleChunk)), clock,
                            lambda data, allow_downgrade: "0.2.0", bundle.Refused)
        BundlePeer("n2", Bus("n2", net), clock, lambda data, allow_downgrade: "0.2.0", bundle.Refused)
        sending = asyncio.ensure_future(runner.send("n2", "0.2.0", os.urandom(CHUNK * 2), False))
        while not any(isinstance(m, BundleAsk) for m in net["n2"].sent):
            await asyncio.sleep(0)
        while not sending.done():   # (the node asks again, then gives up and says so)
            clock.advance(transfer.STALL)
            await asyncio.sleep(0.01)
        ok, why = sending.result()
        assert not ok and why.startswith("the transfer failed: no chunk from n1")
        assert sum(isinstance(m, BundleAsk) for m in net["n2"].sent) == 2 * (1 + transfer.STALL_TRIES)

        net["n3"] = Bus("n3", {})          # linked, but nothing there answers
        net["n3"].handlers = {BundleOffer: lambda m, e: None}
        sending = asyncio.ensure_future(runner.send("n3", "0.2.0", b"x", False))
        while not net["n1"].sent or not isinstance(net["n1"].sent[-1], BundleOffer):
            await asyncio.sleep(0)
        clock.advance(STALL)
        assert await sending == (False, f"no answer over the mesh from n3 for {STALL:g} s")
    asyncio.run(main())


@pytest.mark.parametrize("cls,body", [
    (BundleOffer, {"version": "1", "sha256": "0" * 64, "size": 2 << 30, "allow_downgrade": False}),
    (BundleOffer, {"version": "1", "sha256": "short", "size": 10, "allow_downgrade": False}),
    (BundleOffer, {"version": "", "sha256": "0" * 64, "size": 10, "allow_downgrade": False}),
    (BundleOffer, {"version": "1", "sha256": "0" * 64, "size": 10, "allow_downgrade": "no"}),
    (BundleChunk, {"sha256": "0" * 64, "index": 0, "data": b"x" * (CHUNK + 1)}),
    (BundleChunk, ["not", "a", "table"]),
    (BundleAsk, {"sha256": "0" * 64, "index": -1}),
    (BundleVerdict, ["1", "yes", ""]), (BundleVerdict, ["1", False, "x" * 5000]),
])
def test_bad_transfer_messages_are_refused(cls, body):
    with pytest.raises(BadMessage):
        cls.from_wire(body)
