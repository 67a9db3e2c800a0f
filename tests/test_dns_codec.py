"""fast.dns: query decoder and response encoder, differential against dnspython."""

import faulthandler
import socket
import struct
import sys

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from dns.rdtypes.ANY.CAA import CAA as RdCAA
from dns.rdtypes.ANY.CNAME import CNAME as RdCNAME
from dns.rdtypes.ANY.HINFO import HINFO as RdHINFO
from dns.rdtypes.ANY.MX import MX as RdMX
from dns.rdtypes.ANY.NS import NS as RdNS
from dns.rdtypes.ANY.PTR import PTR as RdPTR
from dns.rdtypes.ANY.SOA import SOA as RdSOA
from dns.rdtypes.ANY.TXT import TXT as RdTXT
from dns.rdtypes.IN.A import A as RdA
from dns.rdtypes.IN.AAAA import AAAA as RdAAAA
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from fast import dns as fd
from fast.dns import ParseError, Query, Record, encode_response, error_response, parse_query

FEW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The response tests draw whole messages: shrinking one takes minutes (past the suite's
# timeout), so they report the failing example as found.
HEAVY = settings(FEW, phases=[Phase.explicit, Phase.reuse, Phase.generate])
IN = dns.rdataclass.IN


@pytest.fixture(autouse=True)
def watchdog():
    """A pointer-loop guard that fails spins in C holding the GIL, where no pytest-timeout
    method can interrupt it; faulthandler's C watchdog aborts the run with a traceback
    (to the process's real standard error, which pytest does not capture)."""
    faulthandler.dump_traceback_later(60, exit=True, file=sys.__stderr__)
    yield
    faulthandler.cancel_dump_traceback_later()

# ---------------------------------------------------------------------------------------
# Strategies

HOST_LABEL = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1,
                     max_size=20).map(str.encode)
ODD_LABEL = st.binary(min_size=1, max_size=63)   # any bytes: exercises the \DDD and \. escapes
LABEL = st.one_of(HOST_LABEL, HOST_LABEL, HOST_LABEL, ODD_LABEL)


def _fits(labels):
    return sum(len(label) + 1 for label in labels) + 1 <= 255


NAME = st.lists(LABEL, max_size=6).filter(_fits).map(lambda ls: dns.name.Name([*ls, b""]))


def text_of(name):
    """What fast.dns calls qname: presentation form, no final dot, b"" for the root."""
    return b"" if name == dns.name.root else name.to_text(omit_final_dot=True).encode()


def recase(name, data):
    """``name`` with the case of some ASCII letters flipped (same name to DNS)."""
    flips = data.draw(st.integers(0, 2**64 - 1))
    labels = []
    i = 0
    for label in name.labels:
        out = bytearray(label)
        for j, c in enumerate(out):
            if flips >> (i % 64) & 1 and chr(c).isalpha() and c < 128:
                out[j] = c ^ 0x20
            i += 1
        labels.append(bytes(out))
    return dns.name.Name(labels)


ECS = st.one_of(
    st.tuples(st.integers(0, 2**32 - 1).map(lambda v: socket.inet_ntoa(struct.pack("!I", v))),
              st.integers(0, 32)),
    st.tuples(st.binary(min_size=16, max_size=16).map(lambda b: socket.inet_ntop(socket.AF_INET6, b)),
              st.integers(0, 128)),
).map(lambda t: dns.edns.ECSOption(t[0], t[1]))

OTHER_OPTION = st.one_of(
    st.one_of(st.binary(min_size=8, max_size=8), st.binary(min_size=16, max_size=40)).map(
        lambda b: dns.edns.GenericOption(10, b)),   # cookie
    st.just(dns.edns.GenericOption(3, b"")),                                              # NSID
    st.integers(0, 30).map(lambda n: dns.edns.GenericOption(12, b"\x00" * n)),           # padding
)


@st.composite
def queries(draw, with_edns=None):
    """(wire, dnspython message, the Name asked) for a query dnspython writes."""
    name = draw(NAME)
    rdtype = draw(st.one_of(st.sampled_from([1, 28, 5, 2, 6, 15, 16, 257, 255, 12, 13]),
                            st.integers(1, 65535)))
    rdclass = draw(st.sampled_from([1, 1, 1, 3, 255, 4]))
    edns = draw(st.booleans()) if with_edns is None else with_edns
    kw = {}
    if edns:
        options = []
        if draw(st.booleans()):
            options.append(draw(ECS))
        options.extend(draw(st.lists(OTHER_OPTION, max_size=2)))
        draw(st.randoms()).shuffle(options)
        kw = dict(use_edns=0, payload=draw(st.sampled_from([0, 100, 512, 1232, 1400, 4096, 65535])),
                  want_dnssec=draw(st.booleans()), options=options)
    flags = dns.flags.RD if draw(st.booleans()) else 0
    flags |= dns.flags.CD if draw(st.booleans()) else 0
    msg = dns.message.make_query(name, rdtype, rdclass, flags=flags, **kw)
    msg.id = draw(st.integers(0, 65535))
    return msg.to_wire(), msg, name


# ---------------------------------------------------------------------------------------
# Decoder: differential


def expected_fields(msg, name, wire):
    ecs = None
    for opt in msg.options:
        if isinstance(opt, dns.edns.ECSOption):
            af = socket.AF_INET if opt.family == 1 else socket.AF_INET6
            ecs = (opt.family, opt.srclen, opt.scopelen, socket.inet_pton(af, opt.address))
    q = msg.question[0]
    return dict(
        id=msg.id, flags=msg.flags, opcode=0, rd=bool(msg.flags & dns.flags.RD),
        qname=text_of(name), qname_lower=text_of(name).lower(), qtype=q.rdtype, qclass=q.rdclass,
        edns=msg.edns >= 0, udp_size=max(512, msg.payload) if msg.edns >= 0 else 512,
        do=bool(msg.ednsflags & dns.flags.DO), edns_version=max(msg.edns, 0), ecs=ecs,
        question_end=12 + len(name.to_wire()) + 4, wire=wire,
    )


def fields(q):
    return {k: getattr(q, k) for k in (
        "id", "flags", "opcode", "rd", "qname", "qname_lower", "qtype", "qclass", "edns",
        "udp_size", "do", "edns_version", "ecs", "question_end", "wire")}


@FEW
@given(queries())
def test_queries_written_by_dnspython_parse_to_the_same_fields(case):
    wire, _, name = case
    q = parse_query(wire)
    assert type(q) is Query, q
    reparsed = dns.message.from_wire(wire)   # the fields as dnspython reads them back
    assert fields(q) == expected_fields(reparsed, name, wire)
    assert q.question == wire[12:q.question_end]
    assert dns.name.from_wire(wire, 12)[0].labels == name.labels   # question kept verbatim
    assert parse_query(bytearray(wire)).qname == q.qname


def test_qname_forms():
    wire = dns.message.make_query("Edge.Farts.test", "A").to_wire()
    q = parse_query(wire)
    assert q.qname == b"Edge.Farts.test" and q.qname_lower == b"edge.farts.test"
    lower = parse_query(dns.message.make_query("edge.farts.test", "A").to_wire())
    assert lower.qname_lower is lower.qname
    odd = dns.name.Name([b"a.b", b"\x00 \\\x7f\xff", b"Z", b""])
    q = parse_query(dns.message.make_query(odd, "A").to_wire())
    assert q.qname == rb"a\.b.\000\032\\\127\255.Z" and q.qname_lower == rb"a\.b.\000\032\\\127\255.z"
    root = parse_query(dns.message.make_query(dns.name.root, "NS").to_wire())
    assert root.qname == b"" and root.qtype == 2 and root.question_end == 17


def test_query_without_edns_defaults():
    q = parse_query(dns.message.make_query("a.test", "AAAA", use_edns=False).to_wire())
    assert (q.edns, q.udp_size, q.do, q.edns_version, q.ecs) == (False, 512, False, 0, None)


def test_small_advertised_size_counts_as_512():
    q = parse_query(dns.message.make_query("a.test", "A", use_edns=0, payload=100).to_wire())
    assert q.edns and q.udp_size == 512


# ---------------------------------------------------------------------------------------
# Decoder: robustness


@FEW
@given(queries())
def test_every_prefix_of_a_query_is_an_error(case):
    wire, msg, _ = case
    for n in range(len(wire)):
        err = parse_query(wire[:n])
        assert type(err) is ParseError, (n, err)
        if n < 12:
            assert err.drop and err.id == 0
        else:
            assert not err.drop and err.rcode == fd.FORMERR
            assert (err.id, err.flags) == (msg.id, msg.flags)
            reply = dns.message.from_wire(error_response(err))
            assert reply.id == msg.id and reply.rcode() == dns.rcode.FORMERR
            assert reply.flags & dns.flags.QR and not reply.question


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data):
    result = parse_query(data)
    assert type(result) in (Query, ParseError)
    if type(result) is ParseError and not result.drop:
        assert dns.message.from_wire(error_response(result)).id == result.id


@FEW
@given(queries(), st.data())
def test_mutated_queries_never_raise_and_agree_with_dnspython(case, data):
    wire, _, _ = case
    buf = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        buf += data.draw(st.binary(max_size=8))
    result = parse_query(bytes(buf))
    assert type(result) in (Query, ParseError)
    if type(result) is not Query:
        event(f"rejected: {result.reason}")
        return
    try:
        ref = dns.message.from_wire(bytes(buf))
    except Exception:
        event("accepted; dnspython rejects")
        return
    event("accepted by both")  # records we skip without decoding (e.g. TSIG) may be invalid to dnspython
    name = ref.question[0].name
    expected = expected_fields(ref, name, bytes(buf))
    if result.edns_version != 0:
        expected["ecs"] = None   # options of unknown EDNS versions are not interpreted
    assert fields(result) == expected
    # whatever we accept, we can answer, and dnspython can read the answer
    reply = dns.message.from_wire(encode_response(result, answers=[(b"x.test", 1, 5, b"\x01\x02\x03\x04")]))
    assert reply.id == result.id and reply.question[0].name.labels == name.labels


# ---------------------------------------------------------------------------------------
# Decoder: each rule


def header(id=0x1234, flags=0x0100, qd=1, an=0, ns=0, ar=0):
    return struct.pack("!6H", id, flags, qd, an, ns, ar)


QUESTION = b"\x04Edge\x05Farts\x04test\x00" + struct.pack("!HH", 1, 1)


def opt(payload=1232, ext_rcode=0, version=0, flags=0, options=b"", owner=b"\x00"):
    return owner + struct.pack("!HHBBHH", 41, payload, ext_rcode, version, flags, len(options)) + options


def ecs_option(family, src, scope, addr):
    return struct.pack("!HHHBB", 8, 4 + len(addr), family, src, scope) + addr


def formerr(data, reason_part):
    err = parse_query(data)
    assert type(err) is ParseError and err.rcode == fd.FORMERR and not err.drop, err
    assert reason_part in err.reason, err.reason
    assert err.id == 0x1234
    return err


def test_valid_handcrafted_query():
    q = parse_query(header(ar=1) + QUESTION + opt(options=ecs_option(1, 24, 0, b"\xc0\x00\x02")))
    assert type(q) is Query and q.qname == b"Edge.Farts.test" and q.ecs == (1, 24, 0, b"\xc0\x00\x02\x00")


def test_short_messages_and_responses_are_dropped():
    for n in range(12):
        err = parse_query(header()[:n])
        assert type(err) is ParseError and err.drop
    err = parse_query(header(flags=0x8100) + QUESTION)
    assert type(err) is ParseError and err.drop and err.id == 0x1234 and "QR" in err.reason
    with pytest.raises(ValueError):
        error_response(err)


@pytest.mark.parametrize("opcode", [1, 2, 4, 5, 15])
def test_other_opcodes_are_notimp(opcode):
    err = parse_query(header(flags=opcode << 11 | 0x0100) + QUESTION)
    assert type(err) is ParseError and err.rcode == fd.NOTIMP and not err.drop
    reply = dns.message.from_wire(error_response(err))
    assert reply.rcode() == dns.rcode.NOTIMP and reply.opcode() == opcode
    assert reply.flags & dns.flags.RD and reply.id == 0x1234


@pytest.mark.parametrize("qd", [0, 2])
def test_qdcount_must_be_1(qd):
    formerr(header(qd=qd) + QUESTION * qd, "QDCOUNT")


def test_answer_or_authority_records_in_a_query_are_formerr():
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + b"\x01\x02\x03\x04"
    formerr(header(an=1) + QUESTION + rr, "answer or authority")
    formerr(header(ns=1) + QUESTION + rr, "answer or authority")


def test_two_opt_records_are_formerr():
    formerr(header(ar=2) + QUESTION + opt() + opt(), "more than one OPT")


def test_opt_owner_must_be_root():
    formerr(header(ar=1) + QUESTION + opt(owner=b"\x01a\x00"), "root")
    formerr(header(ar=1) + QUESTION + opt(owner=b"\xc0\x0c"), "root")


def test_label_longer_than_63_is_formerr():
    ok = parse_query(header() + b"\x3f" + b"a" * 63 + b"\x00\x00\x01\x00\x01")
    assert type(ok) is Query and ok.qname == b"a" * 63
    formerr(header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", "63")
    formerr(header() + b"\x80" + b"a" * 64 + b"\x00\x00\x01\x00\x01", "63")


def test_name_longer_than_255_is_formerr():
    labels = (b"\x3f" + b"a" * 63) * 3
    longest = labels + b"\x3d" + b"b" * 61 + b"\x00"           # exactly 255 bytes
    assert len(longest) == 255
    q = parse_query(header() + longest + b"\x00\x01\x00\x01")
    assert type(q) is Query and len(q.qname) == 253
    formerr(header() + labels + b"\x3e" + b"b" * 62 + b"\x00\x00\x01\x00\x01", "255")
    # the same limit on names in the additional section, pointers included
    rr = b"\x01c" + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 0)
    formerr(header(ar=1) + longest + b"\x00\x01\x00\x01" + rr, "255")


def test_compression_pointers_in_the_question_are_formerr():
    formerr(header() + b"\xc0\x0c\x00\x01\x00\x01", "pointer")        # points at itself
    formerr(header() + b"\x01a\xc0\x0c\x00\x01\x00\x01", "pointer")   # loops through a label
    formerr(header() + b"\xc0\x02\x00\x01\x00\x01", "pointer")        # into the header


def test_pointers_in_additional_records():
    rr = struct.pack("!HHIH", 250, 255, 0, 0)   # TSIG-like: skipped after its name is checked
    q = parse_query(header(ar=1) + QUESTION + b"\x03key\xc0\x0c" + rr)
    assert type(q) is Query and not q.edns
    start = 12 + len(QUESTION)
    formerr(header(ar=1) + QUESTION + struct.pack("!H", 0xC000 | start) + rr, "pointer")
    formerr(header(ar=1) + QUESTION + b"\x01a" + struct.pack("!H", 0xC000 | start) + rr, "pointer")
    formerr(header(ar=1) + QUESTION + b"\xc0\x40" + rr, "pointer")            # forward
    # two records pointing at each other's names: every hop must go further back
    first = b"\x01a" + struct.pack("!H", 0xC000 | (start + 2 + 12)) + rr
    formerr(header(ar=2) + QUESTION + first + b"\x01b" + struct.pack("!H", 0xC000 | start) + rr,
            "pointer")


def test_trailing_bytes_are_formerr():
    formerr(header() + QUESTION + b"\x00", "trailing")


def test_truncated_records_are_formerr():
    formerr(header(ar=1) + QUESTION, "truncated")
    formerr(header(ar=1) + QUESTION + opt()[:-1], "truncated")
    formerr(header(ar=1) + QUESTION + opt(options=b"\x00\x08\x00\x08\x00\x01"), "truncated EDNS option")
    formerr(header(ar=1) + QUESTION + opt(options=b"\x00\x0a"), "truncated EDNS option")


@pytest.mark.parametrize("option, reason", [
    (ecs_option(3, 8, 0, b"\x01"), "family"),
    (ecs_option(1, 33, 0, b"\x01\x02\x03\x04\x05"), "prefix"),
    (ecs_option(2, 129, 0, b"\x00" * 17), "prefix"),
    (ecs_option(1, 24, 0, b"\x01\x02\x03\x04"), "length"),
    (ecs_option(1, 24, 0, b"\x01\x02"), "length"),
    (ecs_option(1, 23, 0, b"\x01\x02\x03"), "bits"),
    (struct.pack("!HHHB", 8, 3, 1, 0), "short"),
    (ecs_option(1, 8, 0, b"\x0a") * 2, "more than one ECS"),
])
def test_bad_client_subnet_options_are_formerr(option, reason):
    formerr(header(ar=1) + QUESTION + opt(options=option), reason)


def test_client_subnet_edge_cases():
    q = parse_query(header(ar=1) + QUESTION + opt(options=ecs_option(1, 0, 0, b"")))
    assert q.ecs == (1, 0, 0, b"\x00" * 4)
    q = parse_query(header(ar=1) + QUESTION + opt(options=ecs_option(2, 56, 0, b"\x20\x01\x0d\xb8\x00\x00\x01")))
    assert q.ecs == (2, 56, 0, b"\x20\x01\x0d\xb8\x00\x00\x01" + b"\x00" * 9)
    q = parse_query(header(ar=1) + QUESTION + opt(options=ecs_option(1, 24, 16, b"\x0a\x00\x00")))
    assert q.ecs == (1, 24, 16, b"\x0a\x00\x00\x00")        # non-zero scope in a query: tolerated


def test_unknown_edns_version_is_parsed_for_badvers():
    # options of EDNS version 1 are not interpreted (this ECS option would be invalid in v0)
    q = parse_query(header(ar=1) + QUESTION + opt(version=1, options=ecs_option(3, 8, 0, b"\x01")))
    assert type(q) is Query and q.edns_version == 1 and q.ecs is None
    reply = dns.message.from_wire(error_response(q, fd.BADVERS))
    assert reply.rcode() == dns.rcode.BADVERS and reply.edns == 0
    assert reply.question[0].name == dns.name.from_text("edge.farts.test")
    with pytest.raises(ValueError):
        error_response(parse_query(header() + QUESTION), fd.BADVERS)   # needs EDNS


def test_parse_query_rejects_non_bytes():
    with pytest.raises(TypeError):
        parse_query("text")
    with pytest.raises(TypeError):
        parse_query(12)


# ---------------------------------------------------------------------------------------
# Encoder: record values and what dnspython makes of them

SINGLETONS = {5, 6}   # dnspython keeps one rdata per CNAME/SOA rrset
# Short random strings, or long ones drawn in two choices (cheap to generate and to shrink).
CHARSTRING = st.one_of(
    st.binary(max_size=12),
    st.tuples(st.integers(0, 255), st.integers(0, 255)).map(lambda t: bytes([t[1]]) * t[0]),
)


@st.composite
def rdata_for(draw, rdtype, pool):
    """(value for fast.dns, the dnspython rdata)."""
    name = st.sampled_from(pool)
    if rdtype == 1:
        b = draw(st.binary(min_size=4, max_size=4))
        return b, RdA(IN, 1, socket.inet_ntoa(b))
    if rdtype == 28:
        b = draw(st.binary(min_size=16, max_size=16))
        return b, RdAAAA(IN, 28, socket.inet_ntop(socket.AF_INET6, b))
    if rdtype in (5, 2, 12):
        n = draw(name)
        cls = {5: RdCNAME, 2: RdNS, 12: RdPTR}[rdtype]
        return n.to_text().encode(), cls(IN, rdtype, n)
    if rdtype == 15:
        pref, n = draw(st.integers(0, 65535)), draw(name)
        return (pref, n.to_text(omit_final_dot=True).encode()), RdMX(IN, 15, pref, n)
    if rdtype == 6:
        m, r = draw(name), draw(name)
        nums = draw(st.lists(st.integers(0, 2**32 - 1), min_size=5, max_size=5))
        return (text_of(m), text_of(r), *nums), RdSOA(IN, 6, m, r, *nums)
    if rdtype == 16:
        strings = draw(st.lists(CHARSTRING, min_size=1, max_size=3))
        return strings, RdTXT(IN, 16, strings)
    if rdtype == 257:
        flags = draw(st.sampled_from([0, 128]))
        tag = draw(st.sampled_from([b"issue", b"issuewild", b"iodef", b"x1"]))
        value = draw(st.binary(max_size=40))
        return (flags, tag, value), RdCAA(IN, 257, flags, tag, value)
    if rdtype == 13:
        cpu, os_ = draw(st.binary(max_size=20)), draw(st.binary(max_size=20))
        return (cpu, os_), RdHINFO(IN, 13, cpu, os_)
    raw = draw(st.binary(max_size=30))
    return raw, dns.rdata.GenericRdata(IN, rdtype, raw)


@st.composite
def sections(draw, qname, data_budget=8):
    """Three sections of RRsets: list of (Name, rdtype, ttl, [(value, rdata)]) per section,
    (section, name, type) unique, records of an RRset consecutive."""
    pool = [qname, recase(qname, draw(st.data())), draw(NAME)]
    for extra in (b"www", b"mail", b"Ns1"):
        try:
            pool.append(dns.name.Name([extra, *qname.labels]))
        except dns.name.NameTooLong:
            pass
    if len(qname) > 2:
        pool.append(dns.name.Name(qname.labels[1:]))
    out = []
    for _ in range(3):
        section = []
        seen = set()
        for _ in range(draw(st.integers(0, data_budget // 2))):
            owner = draw(st.sampled_from(pool))
            rdtype = draw(st.sampled_from([1, 1, 28, 5, 2, 6, 15, 16, 257, 12, 13, 65280]))
            if (owner, rdtype) in seen:
                continue
            seen.add((owner, rdtype))
            ttl = draw(st.integers(0, 2**31 - 1))
            count = 1 if rdtype in SINGLETONS else draw(st.integers(1, 4))
            rdatas = []
            for _ in range(count):
                value, rd = draw(rdata_for(rdtype, pool))
                if all(rd != other for _, other in rdatas):
                    rdatas.append((value, rd))
            section.append((owner, rdtype, ttl, rdatas))
        out.append(section)
    return out


def our_records(section, as_records=False):
    out = []
    for owner, rdtype, ttl, rdatas in section:
        for value, _ in rdatas:
            item = (owner.to_text().encode(), rdtype, ttl, value)
            out.append(Record(*item) if as_records else item)
    return out


def reference_wire(qmsg, rcode, aa, tc, rrsets_by_section, payload, scope, edns):
    """The same response rendered by dnspython (no size limit)."""
    r = dns.message.Message(qmsg.id)
    r.flags = dns.flags.QR | (qmsg.flags & (dns.flags.RD | dns.flags.CD))
    r.flags |= (dns.flags.AA if aa else 0) | (dns.flags.TC if tc else 0)
    r.question = list(qmsg.question)
    for target, section in zip((r.answer, r.authority, r.additional), rrsets_by_section, strict=True):
        for owner, _rdtype, ttl, rdatas in section:
            target.append(dns.rrset.from_rdata_list(owner, ttl, [rd for _, rd in rdatas]))
    if edns:
        options = []
        ecs = [o for o in qmsg.options if isinstance(o, dns.edns.ECSOption)]
        if ecs and scope >= 0:
            options.append(dns.edns.ECSOption(ecs[0].address, ecs[0].srclen, scope))
        r.use_edns(0, qmsg.ednsflags & dns.flags.DO, payload, options=options)
    r.set_rcode(rcode)
    return r.to_wire(max_size=65535, want_shuffle=False)


def split_records(section):
    """RRsets -> one entry per record (for prefix truncation), regrouped by prefix()."""
    return [(owner, rdtype, ttl, [pair]) for owner, rdtype, ttl, rdatas in section for pair in rdatas]


def regroup(records):
    out = []
    for owner, rdtype, ttl, rdatas in records:
        if out and out[-1][0] == owner and out[-1][1] == rdtype:
            out[-1] = (owner, rdtype, ttl, out[-1][3] + rdatas)
        else:
            out.append((owner, rdtype, ttl, rdatas))
    return out


def expected_layout(qmsg, rcode, aa, secs, max_size, payload, scope, edns):
    """Which records fit under max_size by the documented rule, measured with dnspython:
    the longest prefix of answers + authority + additional that fits (sizes only grow
    along it); TC if it ends before the additional section."""
    flat = [(i, rec) for i, s in enumerate(secs) for rec in split_records(s)]

    def layout(k):
        kept = [[], [], []]
        for i, rec in flat[:k]:
            kept[i].append(rec)
        return [regroup(part) for part in kept]

    def size(k):
        return len(reference_wire(qmsg, rcode, aa, False, layout(k), payload, scope, edns))

    lo, hi = 0, len(flat)       # size(lo) always fits: header, question, OPT
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if size(mid) <= max_size:
            lo = mid
        else:
            hi = mid - 1
    needed = sum(1 for i, _ in flat if i < 2)
    return layout(lo), lo < needed


def compare_sections(reply, expected):
    for got, want in zip((reply.answer, reply.authority, reply.additional), expected, strict=True):
        assert len(got) == len(want)
        for rrset, (owner, rdtype, ttl, rdatas) in zip(got, want, strict=True):
            assert rrset.name == owner and rrset.rdtype == rdtype and rrset.rdclass == IN
            assert rrset.ttl == ttl
            assert sorted(rd.to_digestable() for rd in rrset) == sorted(
                rd.to_digestable() for _, rd in rdatas)


@HEAVY
@given(queries(), st.data())
def test_responses_match_dnspython(case, data):
    wire, qmsg, name = case
    q = parse_query(wire)
    secs = data.draw(sections(name))
    rcode = data.draw(st.sampled_from([0, 0, 3, 2, 5] + ([16, 23] if q.edns else [])))
    aa = data.draw(st.booleans())
    scope = data.draw(st.integers(-1, 32))
    payload = data.draw(st.sampled_from([512, 1232, 4096]))
    args = dict(rcode=rcode, aa=aa, answers=our_records(secs[0]), authority=our_records(secs[1]),
                additional=our_records(secs[2]), ecs_scope=scope, payload=payload)
    ours = encode_response(q, max_size=65535, **args)
    # compiled records and tuples give the same bytes
    assert encode_response(q, max_size=65535, **{
        **args, "answers": our_records(secs[0], True), "authority": our_records(secs[1], True),
        "additional": our_records(secs[2], True)}) == ours
    reply = dns.message.from_wire(ours)
    assert reply.id == qmsg.id and reply.rcode() == rcode and reply.opcode() == 0
    assert reply.question[0].name.labels == name.labels           # echoed with its case
    assert (reply.question[0].rdtype, reply.question[0].rdclass) == (q.qtype, q.qclass)
    want_flags = dns.flags.QR | (qmsg.flags & (dns.flags.RD | dns.flags.CD))
    want_flags |= dns.flags.AA if aa else 0
    assert reply.flags == want_flags | (rcode & 15)
    compare_sections(reply, secs)
    if q.edns:
        assert reply.edns == 0 and reply.payload == payload
        assert reply.ednsflags & 0xFFFF == (qmsg.ednsflags & dns.flags.DO)
        ecs = [o for o in reply.options if isinstance(o, dns.edns.ECSOption)]
        if q.ecs is not None and scope >= 0:
            assert len(ecs) == 1
            assert (ecs[0].family, ecs[0].srclen, ecs[0].scopelen) == (q.ecs[0], q.ecs[1], scope)
            af = socket.AF_INET if q.ecs[0] == 1 else socket.AF_INET6
            assert socket.inet_pton(af, ecs[0].address) == q.ecs[3]
        else:
            assert not ecs
    else:
        assert reply.edns == -1
    # byte for byte what dnspython writes, so compression finds the same pointers
    assert ours == reference_wire(qmsg, rcode, aa, False, secs, payload, scope, q.edns)


@HEAVY
@given(queries(), st.data())
def test_truncation_matches_the_rule(case, data):
    wire, qmsg, name = case
    q = parse_query(wire)
    secs = data.draw(sections(name, data_budget=16))
    payload = data.draw(st.sampled_from([512, 700, 1232]))
    max_size = data.draw(st.sampled_from([0, 0, 512, 600, 1000]))
    ours = encode_response(q, answers=our_records(secs[0]), authority=our_records(secs[1]),
                           additional=our_records(secs[2]), max_size=max_size, payload=payload)
    limit = max(512, max_size) if max_size else (min(q.udp_size, payload) if q.edns else 512)
    assert len(ours) <= limit
    kept, tc = expected_layout(qmsg, 0, True, secs, limit, payload, 0, q.edns)
    event(f"TC={int(tc)}")
    reply = dns.message.from_wire(ours)
    assert bool(reply.flags & dns.flags.TC) == tc
    compare_sections(reply, kept)
    assert reply.edns == (0 if q.edns else -1)        # the OPT record always stays
    assert ours == reference_wire(qmsg, 0, True, tc, kept, payload, 0, q.edns)


def a_records(count, owner=b"edge.farts.test"):
    return [(owner, 1, 60, bytes([10, 0, i // 256, i % 256])) for i in range(count)]


def test_tc_at_512_and_at_the_edns_size():
    plain = parse_query(dns.message.make_query("edge.farts.test", "A").to_wire())
    edns = parse_query(dns.message.make_query("edge.farts.test", "A", use_edns=0, payload=4096,
                                              options=[dns.edns.ECSOption("192.0.2.1", 24)]).to_wire())
    header_and_question = 12 + 21
    # 16 bytes per compressed A record: 29 fit in 512 without EDNS
    assert (512 - header_and_question) // 16 == 29
    reply = dns.message.from_wire(encode_response(plain, answers=a_records(29)))
    assert not reply.flags & dns.flags.TC and len(reply.answer[0]) == 29
    wire = encode_response(plain, answers=a_records(30))
    reply = dns.message.from_wire(wire)
    assert reply.flags & dns.flags.TC and len(reply.answer[0]) == 29 and len(wire) <= 512
    # with EDNS: min(client 4096, our 1232), less the OPT record (11 + 4 + 7 for ECS /24)
    fit = (1232 - header_and_question - 22) // 16
    reply = dns.message.from_wire(encode_response(edns, answers=a_records(fit)))
    assert not reply.flags & dns.flags.TC and len(reply.answer[0]) == fit
    wire = encode_response(edns, answers=a_records(fit + 1))
    reply = dns.message.from_wire(wire)
    assert reply.flags & dns.flags.TC and len(reply.answer[0]) == fit and len(wire) <= 1232
    assert reply.options[0].scopelen == 0
    # TCP: everything
    reply = dns.message.from_wire(encode_response(edns, answers=a_records(3000), max_size=65535))
    assert not reply.flags & dns.flags.TC and len(reply.answer[0]) == 3000


def test_authority_that_does_not_fit_sets_tc_additional_does_not():
    q = parse_query(dns.message.make_query("edge.farts.test", "A").to_wire())
    big = [(b"farts.test", 16, 60, [b"x" * 250]), (b"farts.test", 16, 60, [b"y" * 250])]
    reply = dns.message.from_wire(encode_response(q, answers=a_records(2), authority=big))
    assert reply.flags & dns.flags.TC and len(reply.authority[0]) == 1
    reply = dns.message.from_wire(encode_response(q, answers=a_records(2), additional=big))
    assert not reply.flags & dns.flags.TC and len(reply.additional[0]) == 1
    assert len(reply.answer[0]) == 2


def test_compression_inside_rdata_and_case_from_the_question():
    q = parse_query(dns.message.make_query("WWW.Farts.Test", "CNAME").to_wire())
    wire = encode_response(q, answers=[
        (b"www.farts.test", 5, 60, b"edge.farts.test"),
        (b"edge.farts.test", 15, 60, (10, b"mail.farts.test")),
    ], authority=[(b"farts.test", 6, 60, (b"ns1.farts.test", b"hostmaster.farts.test", 1, 2, 3, 4, 5))])
    # owner -> question; CNAME target "edge" + pointer to "Farts.Test"; MX owner -> CNAME target
    assert wire.count(b"Farts") == 1 and wire.count(b"farts") == 0
    assert wire.count(b"\x04edge") == 1
    reply = dns.message.from_wire(wire)
    assert reply.answer[0].name.to_text() == "WWW.Farts.Test."
    assert reply.answer[0][0].target == dns.name.from_text("edge.farts.test")
    assert reply.answer[1][0].exchange == dns.name.from_text("mail.farts.test")
    assert reply.authority[0][0].rname == dns.name.from_text("hostmaster.farts.test")


def test_compression_stops_at_16k_and_after_many_names():
    q = parse_query(dns.message.make_query("edge.farts.test", "TXT", use_edns=0).to_wire())
    # 100 names, the later ones first written beyond 0x3FFF (pointers have 14 bits), then
    # each name again: those can only point at names written before 0x4000
    answers = [(b"n%d.edge.farts.test" % i, 16, 60, [b"z" * 200]) for i in range(100)]
    answers += [(b"n%d.edge.farts.test" % i, 1, 60, b"\x01\x02\x03\x04") for i in range(100)]
    wire = encode_response(q, answers=answers, max_size=65535)
    assert len(wire) > 0x4000 + 100 * 16
    reply = dns.message.from_wire(wire)
    assert [rr.name for rr in reply.answer] == [dns.name.from_text(a[0].decode()) for a in answers]
    many = [(b"n%d.m%d.farts.test" % (i, i), 1, 60, b"\x01\x02\x03\x04") for i in range(700)]
    many += [(name, 28, 60, b"\x00" * 16) for name, _, _, _ in many[::-1]]
    reply = dns.message.from_wire(encode_response(q, answers=many, max_size=65535))
    assert [rr.name for rr in reply.answer] == [dns.name.from_text(a[0].decode()) for a in many]


def test_compression_checks_names_not_just_hashes():
    # these two names have the same suffix hash in the compression table (found by search)
    q = parse_query(dns.message.make_query("quiovfh.farts.test", "A").to_wire())
    reply = dns.message.from_wire(encode_response(q, answers=[(b"njqbaga.farts.test", 1, 5, b"\x00" * 4)]))
    assert reply.answer[0].name == dns.name.from_text("njqbaga.farts.test")


def test_ecs_echo():
    qmsg = dns.message.make_query("edge.farts.test", "A", use_edns=0,
                                  options=[dns.edns.ECSOption("2001:db8:abcd::1", 56)])
    q = parse_query(qmsg.to_wire())
    assert q.ecs == (2, 56, 0, socket.inet_pton(socket.AF_INET6, "2001:db8:abcd::"))
    reply = dns.message.from_wire(encode_response(q, answers=a_records(1), ecs_scope=48))
    (ecs,) = reply.options
    assert (ecs.address, ecs.srclen, ecs.scopelen) == ("2001:db8:abcd::", 56, 48)
    reply = dns.message.from_wire(encode_response(q, answers=a_records(1), ecs_scope=-1))
    assert reply.edns == 0 and not reply.options
    with pytest.raises(ValueError):
        encode_response(q, ecs_scope=129)


def test_error_responses_from_queries():
    qmsg = dns.message.make_query("Edge.Farts.test", "A", use_edns=0, want_dnssec=True)
    q = parse_query(qmsg.to_wire())
    for rcode in (fd.REFUSED, fd.SERVFAIL, fd.NOTIMP):
        reply = dns.message.from_wire(error_response(q, rcode))
        assert reply.rcode() == rcode and not reply.flags & dns.flags.AA
        assert reply.question[0].name.labels == qmsg.question[0].name.labels
        assert reply.edns == 0 and reply.ednsflags & dns.flags.DO
    soa = (b"farts.test", 6, 300, (b"ns1.farts.test", b"hostmaster.farts.test", 1, 2, 3, 4, 5))
    reply = dns.message.from_wire(encode_response(q, fd.NXDOMAIN, authority=[soa]))
    assert reply.rcode() == dns.rcode.NXDOMAIN and reply.flags & dns.flags.AA
    assert reply.authority[0].rdtype == 6 and reply.authority[0].ttl == 300
    with pytest.raises(TypeError):
        error_response(q)
    with pytest.raises(ValueError):
        encode_response(q, rcode=4096)


def test_minimal_any_hinfo():
    q = parse_query(dns.message.make_query("edge.farts.test", "ANY").to_wire())
    assert q.qtype == fd.ANY
    reply = dns.message.from_wire(encode_response(q, answers=[(b"edge.farts.test", fd.HINFO, 3600, (b"RFC8482", b""))]))
    assert reply.answer[0][0].cpu == b"RFC8482" and reply.answer[0][0].os == b""


@pytest.mark.parametrize("item, exc", [
    ((b"a.test", 1, 60, b"\x01\x02\x03"), ValueError),
    ((b"a.test", 28, 60, b"\x00" * 4), ValueError),
    ((b"a.test", 16, 60, [b"x" * 256]), ValueError),
    ((b"a.test", 16, 60, []), ValueError),
    ((b"a" * 64 + b".test", 1, 60, b"\x00" * 4), ValueError),
    ((b".".join([b"a" * 63] * 4), 1, 60, b"\x00" * 4), ValueError),
    ((b"a..test", 1, 60, b"\x00" * 4), ValueError),
    ((b"a.test", 1, -1, b"\x00" * 4), ValueError),
    ((b"a.test", 1, 2**31, b"\x00" * 4), ValueError),
    ((b"a.test", 41, 60, b""), ValueError),
    ((b"a.test", 257, 60, (0, b"is sue", b"x")), ValueError),
    ((b"a.test", 15, 60, (70000, b"mx.test")), ValueError),
    ((b"a.test", 5, 60, 12), TypeError),
    ((b"a\\", 1, 60, b"\x00" * 4), ValueError),
])
def test_invalid_records_raise(item, exc):
    with pytest.raises(exc):
        Record(*item)
    q = parse_query(dns.message.make_query("a.test", "A").to_wire())
    with pytest.raises(exc):
        encode_response(q, answers=[item])


def test_record_text_forms():
    q = parse_query(dns.message.make_query("a.test", "A").to_wire())
    same = [Record("a.test.", 1, 5, "192.0.2.1"), Record(b"a.test", 1, 5, b"\xc0\x00\x02\x01"),
            (rb"\097.test", 1, 5, socket.inet_aton("192.0.2.1"))]
    wires = {encode_response(q, answers=[r]) for r in same}
    assert len(wires) == 1
    r = Record("a.test", 28, 5, "2001:db8::1")
    assert (r.name, r.rtype, r.ttl, r.rclass) == ("a.test", 28, 5, 1)
    reply = dns.message.from_wire(encode_response(q, answers=[r, (b".", 2, 5, b"ns.test")]))
    assert reply.answer[0][0].address == "2001:db8::1"
    assert reply.answer[1].name == dns.name.root
    assert fd.record("a.test", 1, 5, "192.0.2.1").value == "192.0.2.1"

