"""The SWIM machine alone (simulated clock and network), the frame codec, the HLC."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farts.clock import HLC, pack, unpack
from farts.members import ALIVE, DEAD, LEFT, SUSPECT
from farts.mesh.frames import BUS, HELLO, SWIM, FrameError, FrameReader, Hello, encode
from farts.mesh.simnet import SimNet
from farts.mesh.swim import Swim, SwimConfig

CFG = SwimConfig(push_pull_interval=5.0)
HELLO_FRAME = Hello("n1", "eu", 50.1, 8.7, ("10.0.0.1",), "10.0.0.1:7946", (1, 0), 3).encode()


# ---- the membership machine, deterministic ------------------------------------------


def ids(n):
    return [f"n{i}" for i in range(n)]


def test_a_crashed_member_is_declared_dead_by_everyone_and_nobody_else_is():
    net = SimNet(ids(8), CFG, seed=1)
    net.run_until(5)
    net.crash("n3")
    net.run_until(20)
    for o in net.live():
        assert net.state(o, "n3") == DEAD
        assert all(net.state(o, x) == ALIVE for x in net.live() if x != o)
    assert len(net.declared_dead("n3")) == 7


def test_probes_go_around_a_broken_path_through_other_members():
    net = SimNet(ids(4), CFG, seed=2)
    net.run_until(2)
    net.cut.add(frozenset(("n0", "n1")))  # n0 cannot reach n1 directly, n2 and n3 can
    net.run_until(15)
    assert net.nodes["n0"].stats["indirect_probes"] > 0
    assert not net.declared_dead("n1") and net.state("n0", "n1") == ALIVE


def test_a_paused_member_is_suspected_and_refutes_with_a_higher_incarnation():
    net = SimNet(ids(5), CFG, seed=5)
    net.run_until(2)
    net.crash("n1")  # stopped: everything sent to it meanwhile is lost
    net.run_until(4.0)  # 2 s: longer than a probe round, shorter than the suspicion timeout
    assert any(subj == "n1" and state == SUSPECT for _, _, subj, state, _ in net.log)
    net.crashed.discard("n1")  # resumed, with its old state
    net.run_until(15)
    assert not net.declared_dead("n1")
    assert net.nodes["n1"].stats["refutations"] >= 1 and net.nodes["n1"].incarnation >= 1
    assert all(net.state(o, "n1") == ALIVE and net.nodes[o].peers["n1"].incarnation >= 1
               for o in net.live() if o != "n1")


def test_isolated_member_is_suspected_then_refutes_after_the_cut_heals():
    net = SimNet(ids(5), CFG, seed=3)
    net.run_until(2)
    for other in ids(5)[1:]:
        net.cut.add(frozenset(("n0", other)))
    net.run_until(12)
    assert all(net.state(o, "n0") == DEAD for o in ids(5)[1:])
    # n0's own probes fail without even a nack: it blames itself first (local health)
    # and accuses the others more slowly, but it does get there.
    assert net.nodes["n0"].health > 0
    net.run_until(45)
    assert all(net.state("n0", o) == DEAD for o in ids(5)[1:])
    net.cut.clear()
    net.run_until(80)
    for o in ids(5):
        assert all(net.state(o, x) == ALIVE for x in ids(5) if x != o), {x: net.state(o, x) for x in ids(5)}
    assert net.nodes["n0"].incarnation >= 1
    assert net.nodes["n0"].health == 0  # acks again: back to full speed


def test_restart_rejoins_with_a_higher_incarnation_and_leave_is_left():
    net = SimNet(ids(5), CFG, seed=4)
    net.run_until(2)
    net.crash("n2")
    net.run_until(12)
    assert net.state("n0", "n2") == DEAD
    net.restart("n2", via="n4")
    net.run_until(20)
    assert all(net.state(o, "n2") == ALIVE for o in net.live() if o != "n2")
    assert net.nodes["n0"].peers["n2"].incarnation >= 1
    assert sorted(net.nodes["n2"].peers) == ["n0", "n1", "n3", "n4"]
    net.leave("n1")
    net.run_until(22)
    assert all(net.state(o, "n1") == LEFT for o in net.live())
    assert not any(s == DEAD for _, _, subj, s, _ in net.log if subj == "n1")


def test_new_metadata_reaches_every_member_and_outlives_a_suspicion():
    # A member that drains announces it in its metadata at a new incarnation: everyone
    # has it at once; the lossy network then suspects and refutes, and the meta stays.
    net = SimNet(ids(6), CFG, seed=9, loss=0.1)
    net.run_until(3)
    n2 = net.nodes["n2"]
    n2.announce(net.now, {**n2.meta, "draining": True})
    net._flush("n2")
    net.run_until(3.5)
    for o in net.live():
        if o != "n2":
            assert net.nodes[o].peers["n2"].meta.get("draining") is True, o
            assert net.state(o, "n2") in (ALIVE, SUSPECT)
    net.run_until(40)
    assert all(net.nodes[o].peers["n2"].meta.get("draining") is True for o in net.live() if o != "n2")


def test_dead_members_are_forgotten_after_forget_after():
    net = SimNet(ids(4), SwimConfig(push_pull_interval=5.0, forget_after=30.0), seed=6)
    net.run_until(2)
    net.crash("n3")
    net.run_until(20)
    assert net.state("n0", "n3") == DEAD
    net.run_until(80)
    assert all("n3" not in net.nodes[o].peers for o in net.live())
    assert "n3" in net.nodes["n0"].forgotten


def test_a_new_member_learns_everyone_from_one_sync():
    a = Swim("a", {"region": "x"}, CFG, 0.0)
    b = Swim("b", {}, CFG, 0.0)
    for other in ("c", "d"):
        b.add_peer(0.0, other, 0, {"mesh": other})
    a.add_peer(0.0, "b", 0, {})
    a.connected(0.0, "b")
    (dest, msg), = a.outbox
    b.receive(0.0, "a", msg)
    reply = [m for d, m in b.outbox if d == "a" and m[0] == "sync"]
    a.receive(0.0, "b", reply[0])
    assert sorted(a.peers) == ["b", "c", "d"] and a.peers["c"].meta == {"mesh": "c"}
    assert b.peers["a"].meta == {"region": "x"}


def test_unknown_message_kind_is_an_error_not_a_crash():
    s = Swim("a", {}, CFG, 0.0)
    with pytest.raises(ValueError):
        s.receive(0.0, "b", ["bogus"])


schedule = st.lists(
    st.tuples(st.floats(0, 20), st.sampled_from(["crash", "restart", "cut", "heal"]), st.integers(1, 6),
              st.integers(0, 6)),
    max_size=8)


@settings(max_examples=40)
@given(n=st.integers(3, 7), loss=st.floats(0, 0.25), seed=st.integers(0, 2 ** 16), events=schedule)
def test_random_loss_and_failures_converge(n, loss, seed, events):
    """Under any schedule of loss, crashes, restarts and cuts, once the network heals:
    no live member stays dead in anyone's view, every crashed one is dead in everyone's."""
    names = ids(n)
    net = SimNet(names, CFG, seed=seed, loss=loss)
    for t, kind, a, b in sorted(events):
        net.run_until(t)
        x, y = names[a % n], names[b % n]
        if x == "n0":  # n0 never crashes: someone is always there to rejoin through
            continue
        if kind == "crash" and x not in net.crashed:
            net.crash(x)
        elif kind == "restart" and x in net.crashed:
            net.restart(x, via="n0")
        elif kind == "cut" and x != y:
            net.cut.add(frozenset((x, y)))
        elif kind == "heal":
            net.cut.clear()
    net.run_until(25)
    net.loss = 0.0
    net.cut.clear()
    net.run_until(25 + 60)
    live = net.live()
    for o in live:
        for x in names:
            if x == o:
                continue
            want = DEAD if x in net.crashed else ALIVE
            assert net.state(o, x) == want, (o, x, net.state(o, x))
    assert all(net.state(o, x) != SUSPECT for o in live for x in live if x != o)


# ---- frames ------------------------------------------------------------------------------


def test_frames_decode_across_any_split():
    data = HELLO_FRAME + encode(SWIM, ["ping", 1, []]) + encode(BUS, ["t", "n1", 1, 1, 5, 0, {"x": b"\x00"}])
    for cut in range(len(data)):
        r = FrameReader(1 << 16)
        frames = r.feed(data[:cut]) + r.feed(data[cut:])
        assert [k for k, _ in frames] == [HELLO, SWIM, BUS]
        assert frames[0][1].id == "n1" and frames[0][1].incarnation == 3
        assert frames[2][1][6] == {"x": b"\x00"}


@pytest.mark.parametrize("data, reason", [
    ((1 << 20).to_bytes(4, "big"), "oversized"),
    (b"\x00\x00\x00\x03\xc1\xc1\xc1", "garbage"),
    (b"\x00\x00\x00\x01\x01", "garbage"),
    (encode(99, {}), "unknown_type"),
    (encode(SWIM, ["ping", 1, []]), "no_hello"),
    (encode(HELLO, {"id": "x"}), "bad_hello"),
    (encode(HELLO, {"v": 99, "id": "x", "region": "", "lat": 0, "lon": 0, "addresses": [], "mesh": "a:1",
                    "hlc": [0, 0], "inc": 0}), "version"),
    (HELLO_FRAME + HELLO_FRAME, "unexpected_hello"),
])
def test_bad_frames_are_refused_with_a_reason(data, reason):
    with pytest.raises(FrameError) as e:
        FrameReader(65536).feed(data)
    assert e.value.reason == reason


@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_anything_but_frame_error(data):
    try:
        FrameReader(1024).feed(data)
    except FrameError:
        pass


def test_msgpack_body_round_trips():
    kind, payload = msgpack.unpackb(encode(SWIM, ["ack", 7, []])[4:])
    assert (kind, payload) == (SWIM, ["ack", 7, []])


# ---- hybrid logical clock -------------------------------------------------------------------


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 10 ** 6), st.integers(0, 10 ** 6), st.integers(0, 5))))
def test_hlc_is_monotonic_and_passes_what_it_receives_in_its_wire_form(steps):
    # The mesh sends the process HLC (farts.clock) as (ms, logical) in HELLO and BUS
    # frames: the tuples must order exactly as the packed timestamps do.
    wall = [0]
    clock, last = HLC(clock=lambda: wall[0]), (0, 0)
    for receive, wall[0], rms, rc in steps:
        now = unpack(clock.observe(pack(rms, rc)) if receive else clock.now())
        assert now > last
        if receive:
            assert now > (rms, rc)
        last = now
