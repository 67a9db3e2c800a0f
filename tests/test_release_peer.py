"""A bundle over the mesh, without sockets: the chunked transfer (window, acks, the whole
bundle's hash), two nodes' BundlePeers on an in-memory bus with the real verification
(bundle.verify through ReleaseNode.stage's contract), and bad messages refused."""
from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
from test_release_bundle import wheel_name

from farts.clock import FakeClock
from farts.members import Member
from farts.peer import BadMessage, Envelope
from farts.release import bundle
from farts.release.peer import (
    CHUNK,
    WINDOW,
    BundleAck,
    BundleChunk,
    BundlePeer,
    BundleVerdict,
    Receiving,
    Sending,
)


def test_the_transfer_keeps_a_window_and_the_receiver_gets_the_bundle_whole():
    data = os.urandom(CHUNK * 9 + 123)
    s = Sending("0.2.0", data, False)
    out = s.start()
    assert len(out) == WINDOW
    r = Receiving(out[0])
    got, acks = None, 0
    while out:
        c = out.pop(0)
        got = r.chunk(c)
        out += s.ack(len(r.buf))
        acks += 1
        assert s.next - s.acked <= CHUNK * WINDOW
    assert got == data and acks == 10
    assert s.ack(5) == [] and s.ack(len(data) + 1) == []   # stale and impossible acks change nothing


def test_a_bundle_that_does_not_match_its_hash_is_refused_by_the_receiver():
    data = os.urandom(CHUNK + 10)
    s = Sending("0.2.0", data, False)
    first, second = s.start()
    r = Receiving(first)
    assert r.chunk(first) is None
    with pytest.raises(ValueError, match="SHA-256"):
        r.chunk(BundleChunk("0.2.0", second.offset, second.total, second.sha256, False,
                            b"x" + second.data[1:]))


class Bus:
    """Two nodes' buses in one loop: a send is delivered at the loop's next turn."""

    def __init__(self, me: str, net: dict) -> None:
        self.me, self.net, self.handlers, self.sent = me, net, {}, []
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


@pytest.mark.parametrize("cls,body", [
    (BundleChunk, {"version": "1", "offset": 0, "total": 10, "sha256": "0" * 64, "allow_downgrade": False,
                   "data": b"x" * 11}),
    (BundleChunk, {"version": "1", "offset": 10, "total": 10, "sha256": "0" * 64, "allow_downgrade": False,
                   "data": b"x"}),
    (BundleChunk, {"version": "1", "offset": 0, "total": 10, "sha256": "short", "allow_downgrade": False,
                   "data": b"x"}),
    (BundleChunk, {"version": "1", "offset": 0, "total": 2 << 30, "sha256": "0" * 64, "allow_downgrade": False,
                   "data": b"x"}),
    (BundleChunk, ["not", "a", "table"]),
    (BundleAck, ["1", -1]), (BundleAck, {"version": "1"}),
    (BundleVerdict, ["1", "yes", ""]), (BundleVerdict, ["1", False, "x" * 5000]),
])
def test_bad_transfer_messages_are_refused(cls, body):
    with pytest.raises(BadMessage):
        cls.from_wire(body)


def test_the_chunk_hash_is_the_whole_bundles():
    data = b"y" * (CHUNK + 1)
    assert Sending("1", data, False).start()[0].sha256 == hashlib.sha256(data).hexdigest()
