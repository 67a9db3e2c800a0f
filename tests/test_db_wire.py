"""The MongoDB endpoint's pure parts: wire codec, index keys, HLC, SCRAM (no sockets)."""
from __future__ import annotations

import base64
import datetime
import struct
import zlib

import bson
import pytest
import zstandard
from bson.int64 import Int64
from bson.objectid import ObjectId
from hypothesis import given
from hypothesis import strategies as st

from farts.clock import HLC, unpack
from farts.db import keys, scram, wire
from farts.db.ordering import compare


def op_msg(body: dict, request_id: int = 7, flags: int = 0, sequences: dict | None = None,
           checksum: bool = False) -> bytes:
    payload = struct.pack("<I", flags | (wire.CHECKSUM_PRESENT if checksum else 0))
    payload += b"\0" + bson.encode(body)
    for ident, docs in (sequences or {}).items():
        section = ident.encode() + b"\0" + b"".join(bson.encode(d) for d in docs)
        payload += b"\1" + struct.pack("<i", 4 + len(section)) + section
    frame = struct.pack("<iiii", 16 + len(payload) + (4 if checksum else 0), request_id, 0, wire.OP_MSG) + payload
    if checksum:
        frame += struct.pack("<I", wire.crc32c(frame))
    return frame


def test_crc32c_matches_the_standard_check_value():
    assert wire.crc32c(b"123456789") == 0xE3069283   # the CRC-32C check value (RFC 3720)


def _crc32c_bitwise(data: bytes) -> int:
    """CRC-32C by its definition (reflected polynomial 0x82F63B78), one bit at a time."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


@given(st.binary(max_size=300), st.integers(0, 300))
def test_crc32c_agrees_with_the_definition_whole_and_in_pieces(data, cut):
    assert wire.crc32c(data) == _crc32c_bitwise(data)
    assert wire.crc32c(memoryview(data)[cut:], wire.crc32c(data[:cut])) == _crc32c_bitwise(data)


def test_op_msg_with_document_sequence_and_split_delivery():
    frame = op_msg({"insert": "c", "$db": "d"}, sequences={"documents": [{"a": 1}, {"a": 2}]})
    codec = wire.WireCodec()
    assert codec.receive(frame[:10]) == []          # a partial header waits
    assert codec.receive(frame[10:30]) == []        # a partial body waits
    (req,) = codec.receive(frame[30:] + frame[:20])  # the rest, and the start of a second one
    assert isinstance(req, wire.Request) and req.request_id == 7
    assert req.body == {"insert": "c", "$db": "d"}
    assert req.sequences == {"documents": [{"a": 1}, {"a": 2}]}
    (second,) = codec.receive(frame[20:])
    assert second.sequences == req.sequences


def test_checksum_verified_and_mismatch_is_a_bad_request():
    good = op_msg({"ping": 1, "$db": "admin"}, checksum=True)
    (req,) = wire.WireCodec().receive(good)
    assert isinstance(req, wire.Request) and req.body["ping"] == 1
    bad = good[:-1] + bytes([good[-1] ^ 1])
    codec = wire.WireCodec()
    (ev,) = codec.receive(bad)
    assert isinstance(ev, wire.BadRequest) and "checksum" in ev.message
    (again,) = codec.receive(good)          # framing intact: the connection goes on
    assert isinstance(again, wire.Request)


@pytest.mark.parametrize("name", ["zlib", "zstd"])
def test_op_compressed_roundtrip(name):
    inner = op_msg({"find": "c", "$db": "d"}, request_id=9)
    body = inner[16:]
    data = zlib.compress(body) if name == "zlib" else zstandard.ZstdCompressor().compress(body)
    frame = struct.pack("<iiii", 16 + 9 + len(data), 9, 0, wire.OP_COMPRESSED) + \
        struct.pack("<iiB", wire.OP_MSG, len(body), wire.COMPRESSORS[name]) + data
    (req,) = wire.WireCodec().receive(frame)
    assert req.body == {"find": "c", "$db": "d"} and req.compressor == name
    reply = wire.encode_msg(9, {"ok": 1.0}, name)
    length, _, response_to, op = struct.unpack_from("<iiii", reply)
    assert (length, response_to, op) == (len(reply), 9, wire.OP_COMPRESSED)


def test_invalid_bson_is_a_bad_request_not_a_crash():
    body = bson.encode({"ping": 1})
    broken = body[:-1] + b"\x07"      # wrong terminator
    payload = struct.pack("<I", 0) + b"\0" + broken
    frame = struct.pack("<iiii", 16 + len(payload), 3, 0, wire.OP_MSG) + payload
    (ev,) = wire.WireCodec().receive(frame)
    assert isinstance(ev, wire.BadRequest) and ev.code == 22 and ev.request_id == 3


def test_section_overrunning_the_frame_is_a_bad_request():
    payload = struct.pack("<I", 0) + b"\0" + struct.pack("<i", 1000) + b"\0" * 8
    frame = struct.pack("<iiii", 16 + len(payload), 4, 0, wire.OP_MSG) + payload
    (ev,) = wire.WireCodec().receive(frame)
    assert isinstance(ev, wire.BadRequest) and "claims" in ev.message


def test_oversized_and_unknown_opcode_are_fatal():
    codec = wire.WireCodec(max_message_bytes=1024)
    (ev,) = codec.receive(struct.pack("<iiii", 4096, 5, 0, wire.OP_MSG))
    assert isinstance(ev, wire.Fatal) and ev.request_id == 5 and codec.closed
    assert codec.receive(op_msg({"ping": 1, "$db": "a"})) == []   # nothing after a fatal
    (ev,) = wire.WireCodec().receive(struct.pack("<iiii", 20, 6, 0, 2002) + b"\0" * 4)
    assert isinstance(ev, wire.Fatal) and "opcode 2002" in ev.message


def test_legacy_op_query_ismaster_and_op_reply():
    q = bson.encode({"isMaster": 1, "client": {"driver": {"name": "x"}}})
    payload = struct.pack("<i", 0) + b"admin.$cmd\0" + struct.pack("<ii", 0, -1) + q
    frame = struct.pack("<iiii", 16 + len(payload), 11, 0, wire.OP_QUERY) + payload
    (req,) = wire.WireCodec().receive(frame)
    assert req.op_code == wire.OP_QUERY and req.body["isMaster"] == 1 and req.body["$db"] == "admin"
    reply = wire.encode_reply(11, {"ismaster": True, "ok": 1.0})
    _, _, response_to, op = struct.unpack_from("<iiii", reply)
    flags, cursor_id, start, n = struct.unpack_from("<iqii", reply, 16)
    assert (response_to, op, n) == (11, wire.OP_REPLY, 1)
    assert bson.decode(reply[36:]) == {"ismaster": True, "ok": 1.0}


# ---- index keys: byte order must be MongoDB's order (differential against ordering.compare) ----

ordered_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 63), 2 ** 63 - 1).map(lambda i: Int64(i) if abs(i) > 2 ** 40 else i),
    st.floats(allow_nan=False), st.text(max_size=8),
    st.binary(max_size=6).map(lambda b: ObjectId(b.ljust(12, b"\0")[:12])),
    st.datetimes(min_value=datetime.datetime(1900, 1, 1)).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
)


@given(ordered_scalars, ordered_scalars)
def test_key_order_matches_mongodb_order(a, b):
    ka, kb = keys.encode(a), keys.encode(b)
    assert (ka > kb) - (ka < kb) == compare(a, b), (a, b)


@given(st.lists(ordered_scalars, min_size=2, max_size=2), st.lists(ordered_scalars, min_size=2, max_size=2),
       st.sampled_from([1, -1]))
def test_compound_keys_compare_field_by_field(a, b, direction):
    fields = [("x", 1), ("y", direction)]
    ka = next(iter(keys.index_keys({"x": a[0], "y": a[1]}, fields)[0]))
    kb = next(iter(keys.index_keys({"x": b[0], "y": b[1]}, fields)[0]))
    expected = compare(a[0], b[0]) or compare(a[1], b[1]) * direction
    assert (ka > kb) - (ka < kb) == expected


def test_index_keys_fan_out_arrays_and_missing_is_null():
    got, multikey = keys.index_keys({"a": [{"b": 1}, {"b": 2}, {"c": 3}]}, [("a.b", 1)])
    assert multikey and set(got.values()) == {(1,), (2,), (None,)}
    got, multikey = keys.index_keys({"z": 1}, [("a", 1)])
    assert not multikey and list(got.values()) == [(None,)]
    assert keys.encode(5) == keys.encode(5.0) == keys.encode(Int64(5))
    assert keys.encode(2 ** 53 + 1) > keys.encode(2 ** 53)


def test_planner_uses_points_and_ranges_but_not_arrays():
    b = keys.field_bounds({"a": 5, "b": {"$gte": 2, "$lt": 9}, "c": [1, 2], "$and": [{"d": {"$in": [1, 2]}}]})
    assert set(b) == {"a", "b", "d"}
    scan = keys.plan_index("a_1_b_1", [("a", 1), ("b", 1)], False, b)
    assert scan.point_fields == 1 and scan.ranged and len(scan.ranges) == 1
    assert keys.plan_index("c_1", [("c", 1)], False, b) is None


# ---- hybrid logical clock ----

def test_hlc_monotonic_when_wall_clock_stalls_or_goes_back():
    wall = [1000]
    clock = HLC(clock=lambda: wall[0])
    a = clock.now()
    wall[0] = 900                         # the clock went back
    b = clock.now()
    c = clock.now()
    assert a < b < c and unpack(c) == (1000, 2)
    remote = clock.observe((5000 << 16) | 7)  # a peer ahead of us
    assert unpack(remote) == (5000, 8) and clock.now() > remote


# ---- SCRAM-SHA-256: RFC 7677's example conversation ----

def test_scram_sha256_rfc7677_vector():
    cred = scram.make_credential("user", "pencil", "demo", 4096, base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    server = scram.ScramServer({"user": cred}, server_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    first = server.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert first == b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    final = server.step(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert final == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=" and server.done


def test_scram_wrong_proof_and_unknown_user_fail_alike():
    cred = scram.make_credential("user", "pencil", "demo", 4096)
    for name in ("user", "nobody"):
        server = scram.ScramServer({"user": cred})
        first = server.step(f"n,,n={name},r=abc".encode()).decode()
        nonce = first.split(",")[0][2:]
        with pytest.raises(scram.AuthError, match="Authentication failed"):
            server.step(f"c=biws,r={nonce},p={base64.b64encode(b'x' * 32).decode()}".encode())


def test_up_template_serves_the_database_on_27017_without_auth():
    from farts import config, quickstart
    text = quickstart.TEMPLATE.replace("{api_key}", "k").replace("{secret}", "s")
    cfg = config.parse(text, "farts.toml")
    assert cfg.db.enabled and cfg.db.port == 27017 and cfg.db.host == "127.0.0.1" and not cfg.db.auth
    example = config.parse(config.EXAMPLE, "example.toml")
    assert example.db.users[0].tenant == "demo" and example.db.sync


def test_db_config_errors_name_the_key(tmp_path):
    from farts import config
    from farts.db.server import DBService
    from farts.metrics import Metrics
    with pytest.raises(config.ConfigError, match=r"db.max_message_bytes: expected an integer 1024-48000000"):
        config.parse("[db]\nmax_message_bytes = 100000000\n", "f.toml")
    with pytest.raises(config.ConfigError, match=r"db.users\[0\].tenant: required key is missing"):
        config.parse('[[db.users]]\nname = "a"\npassword = "b"\n', "f.toml")
    cfg = config.parse('[db]\nauth = true\n[[db.users]]\nname = "a"\npassword = "b"\ntenant = "nope"\n', "f.toml")
    with pytest.raises(config.ConfigError, match=r"f.toml: db.users\[0\].tenant: no tenant named 'nope'"):
        DBService(cfg.db, tmp_path, "n", Metrics(), {"demo"}, "f.toml")
    # Replication settings (oplog retention, status interval, the primary).
    with pytest.raises(config.ConfigError, match=r"f.toml: db.oplog_retain_records: expected a positive number"):
        config.parse("[db]\noplog_retain_records = 0\n", "f.toml")
    with pytest.raises(config.ConfigError, match=r"f.toml: db.oplog_retain_seconds: expected a positive number"):
        config.parse("[db]\noplog_retain_seconds = -1\n", "f.toml")
    with pytest.raises(config.ConfigError, match=r"f.toml: db.status_interval: expected a number of seconds"):
        config.parse("[db]\nstatus_interval = 100\n", "f.toml")
    with pytest.raises(config.ConfigError, match=r"f.toml: db.primary: expected a string"):
        config.parse("[db]\nprimary = 3\n", "f.toml")
