# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""DNS wire format for an authoritative server: query decoder and response encoder.

Sans-IO: ``parse_query(bytes)`` returns a ``Query`` or a ``ParseError``; ``encode_response``
and ``error_response`` return the bytes of one message (the TCP length prefix is the
transport's business).  Nothing here touches sockets or clocks.

RFC 1035 (format, compression §4.1.4), RFC 2181 §9 (TC), RFC 6891 (EDNS0), RFC 7871 (ECS),
RFC 3225 (DO), RFC 4035 §3.1.6 (CD) and RFC 8482 (minimal ANY: HINFO is encodable so the
server can answer ANY with the synthesized ``HINFO "RFC8482" ""``).

What the decoder accepts (everything else is a ``ParseError``; it never raises):

* Fewer than 12 bytes, or QR=1 (a response: answering it could start a loop): ``drop``.
* OPCODE other than QUERY: NOTIMP (rcode 4), nothing past the header is read.
* QDCOUNT must be 1 (0 is what cookie-only queries send; we do not do cookies), ANCOUNT
  and NSCOUNT 0: FORMERR otherwise.  A query never carries answers or authority records.
* The question name must not contain compression pointers: the only earlier bytes a
  question could point to are the header or the name itself (a loop).  Label types
  01/10 (lengths 64-191, i.e. labels > 63) and names over 255 wire bytes are FORMERR.
* Additional section: at most one OPT, owned by the root name (RFC 6891 §6.1.1); other
  records (TSIG, SIG(0), ...) are checked for structure and skipped.  Their owner names may
  use compression pointers, but every pointer must go strictly backwards to a previous
  target and not into the header, so no loop can be followed.
* OPT of EDNS version 0: options must tile the RDATA exactly; at most one ECS option, of
  family 1 (<= 32 bits) or 2 (<= 128 bits), with exactly ceil(source/8) address bytes and
  no bits set beyond the source prefix (RFC 7871 §6).  A non-zero scope in a query is
  tolerated and reported.  Other options are skipped.  For EDNS versions > 0 the options
  are not interpreted (their meaning is unknown): the server answers BADVERS.
* Bytes after the last record: FORMERR (as dnspython's TrailingJunk).

``qname`` is the presentation form of the question name, in the case it was sent, without
the final dot (b"" for the root); label bytes are escaped exactly as dnspython's
``Name.to_text`` does (``\\.``, ``\\\\``, ``\\DDD`` for bytes outside 0x21-0x7e, ...), so the
form is unambiguous.  ``qname_lower`` folds ASCII A-Z only (DNS case-insensitivity).

The encoder echoes the question byte for byte (case preserved for 0x20-checking resolvers)
and compresses owner names and the names inside CNAME/NS/SOA/MX/PTR RDATA against the
names already written, case-insensitively: an answer owned by the query name therefore
points at the question and carries its case.
"""

cimport cython
from libc.stdint cimport uint32_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy


cdef extern from "Python.h":
    bytes PyBytes_FromStringAndSize(const char *v, Py_ssize_t n)
    char *PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)


# ----------------------------------------------------------------------------------------
# Constants

QUERY = 0
NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5
BADVERS = 16

A = 1
NS = 2
CNAME = 5
SOA = 6
PTR = 12
HINFO = 13
MX = 15
TXT = 16
AAAA = 28
OPT = 41
ANY = 255
CAA = 257

IN = 1
CH = 3

DEFAULT_PAYLOAD = 1232      # the EDNS UDP size we advertise (DNS flag day 2020)

cdef enum:
    _T_A = 1
    _T_NS = 2
    _T_CNAME = 5
    _T_SOA = 6
    _T_PTR = 12
    _T_HINFO = 13
    _T_MX = 15
    _T_TXT = 16
    _T_AAAA = 28
    _T_OPT = 41
    _T_CAA = 257
    _ECS_CODE = 8
    _MAX_NAME = 255
    _TEXT_MAX = 1024        # presentation form of a 255-byte name: at most 253 * 4 + 1
    _MAX_LABELS = 128
    _COMP_MAX = 512         # name suffixes remembered for compression per message
    _STACK_OUT = 1536       # a UDP answer fits on the stack


cdef unsigned char _LOWER[256]
cdef unsigned char _ESC[256]     # 0 copy as is, 1 backslash + byte, 2 \DDD


cdef void _init_tables() noexcept:
    cdef int c
    cdef const char *special = b'"().;\\@$'
    for c in range(256):
        _LOWER[c] = c + 32 if 65 <= c <= 90 else c
        _ESC[c] = 0 if 0x20 < c < 0x7F else 2
    while special[0]:
        _ESC[<unsigned char>special[0]] = 1
        special += 1


_init_tables()


# ----------------------------------------------------------------------------------------
# Decoded objects

@cython.final
@cython.freelist(32)
cdef class Query:
    """A decoded query; see the module docstring for what is accepted."""

    cdef readonly int id
    cdef readonly int flags
    cdef readonly int opcode
    cdef readonly bint rd
    cdef readonly bytes qname
    cdef readonly bytes qname_lower
    cdef readonly int qtype
    cdef readonly int qclass
    cdef readonly bint edns
    cdef readonly int udp_size
    cdef bint _do
    cdef readonly int edns_version
    cdef readonly object ecs
    cdef readonly int question_end
    cdef readonly bytes wire

    @property
    def do(self):
        """The DO bit of the OPT record (RFC 3225); False without EDNS."""
        return self._do

    @property
    def question(self):
        """The question section as sent (name in its original case, type, class)."""
        return self.wire[12:self.question_end]

    def __repr__(self):
        return "<Query id=%d %r type=%d class=%d edns=%s ecs=%r>" % (
            self.id, self.qname, self.qtype, self.qclass, self.edns, self.ecs)


@cython.final
@cython.freelist(8)
cdef class ParseError:
    """A message that is not a query we answer.

    ``drop``: send nothing (fewer than 12 bytes, or QR=1).  Otherwise answer with
    ``error_response(err)``: ``rcode`` is FORMERR, or NOTIMP for an unknown opcode;
    ``id`` and ``flags`` are those of the header (0 when there was none).
    """

    cdef readonly int rcode
    cdef readonly bint drop
    cdef readonly int id
    cdef readonly int flags
    cdef readonly str reason

    def __init__(self, int rcode, str reason, int id=0, int flags=0, bint drop=False):
        self.rcode = rcode
        self.reason = reason
        self.id = id
        self.flags = flags
        self.drop = drop

    def __repr__(self):
        return "<ParseError rcode=%d drop=%s id=%d %r>" % (
            self.rcode, self.drop, self.id, self.reason)


cdef ParseError _error(int rcode, const char *reason, int id, int flags, bint drop):
    cdef ParseError e = ParseError.__new__(ParseError)
    e.rcode = rcode
    e.reason = reason.decode("ascii")
    e.id = id
    e.flags = flags
    e.drop = drop
    return e


# ----------------------------------------------------------------------------------------
# Decoder

cdef inline int _u16(const unsigned char *p) noexcept:
    return (p[0] << 8) | p[1]


cdef inline void _put16(unsigned char *d, unsigned int v) noexcept:
    d[0] = <unsigned char>(v >> 8)
    d[1] = <unsigned char>v


cdef Py_ssize_t _read_qname(const unsigned char *p, Py_ssize_t n, Py_ssize_t pos,
                            unsigned char *text, unsigned char *low, Py_ssize_t *textlen,
                            bint *upper, const char **err) noexcept:
    """Question name at ``pos`` (no pointers) into presentation form; returns the offset
    after it, or -1 with ``err`` set."""
    cdef Py_ssize_t t = 0, wire = 0, end
    cdef unsigned int b, c, k
    cdef unsigned char e
    upper[0] = False
    while True:
        if pos >= n:
            err[0] = b"truncated question name"
            return -1
        b = p[pos]
        if b == 0:
            textlen[0] = t
            return pos + 1
        if b >= 0xC0:
            err[0] = b"compression pointer in the question"
            return -1
        if b >= 0x40:
            err[0] = b"label longer than 63 bytes or unknown label type"
            return -1
        wire += b + 1
        if wire + 1 > _MAX_NAME:
            err[0] = b"name longer than 255 bytes"
            return -1
        end = pos + 1 + b
        if end > n:
            err[0] = b"truncated question name"
            return -1
        if t:
            text[t] = 46
            low[t] = 46
            t += 1
        pos += 1
        while pos < end:
            c = p[pos]
            e = _ESC[c]
            if e == 0:
                text[t] = <unsigned char>c
                low[t] = _LOWER[c]
                if low[t] != c:
                    upper[0] = True
                t += 1
            elif e == 1:
                text[t] = 92
                low[t] = 92
                text[t + 1] = <unsigned char>c
                low[t + 1] = <unsigned char>c
                t += 2
            else:
                text[t] = 92
                low[t] = 92
                for k in range(3):
                    text[t + 3 - k] = <unsigned char>(48 + c % 10)
                    low[t + 3 - k] = text[t + 3 - k]
                    c //= 10
                t += 4
            pos += 1


cdef Py_ssize_t _skip_name(const unsigned char *p, Py_ssize_t n, Py_ssize_t pos,
                           const char **err) noexcept:
    """A name anywhere else (pointers allowed, strictly backwards); offset after it or -1."""
    cdef Py_ssize_t end = -1, lowest = pos, target
    cdef int wire = 0
    cdef unsigned int b
    while True:
        if pos >= n:
            err[0] = b"truncated name"
            return -1
        b = p[pos]
        if b == 0:
            return pos + 1 if end < 0 else end
        if b >= 0xC0:
            if pos + 1 >= n:
                err[0] = b"truncated name"
                return -1
            target = ((b & 0x3F) << 8) | p[pos + 1]
            if end < 0:
                end = pos + 2
            if target >= lowest or target < 12:
                err[0] = b"compression pointer loop or forward pointer"
                return -1
            lowest = target
            pos = target
            continue
        if b >= 0x40:
            err[0] = b"label longer than 63 bytes or unknown label type"
            return -1
        wire += b + 1
        if wire + 1 > _MAX_NAME:
            err[0] = b"name longer than 255 bytes"
            return -1
        pos += b + 1


cdef object _parse(bytes data):
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef int id, flags, qd, an, ns, ar, i, rtype, rdlen, code, olen, family, src, scope
    cdef int nbytes, maxbytes, k
    cdef Py_ssize_t pos, qend, rdend, opos, name_start, textlen = 0
    cdef const char *err = NULL
    cdef unsigned char text[_TEXT_MAX]
    cdef unsigned char low[_TEXT_MAX]
    cdef unsigned char addr[16]
    cdef bint upper = False, have_opt = False, have_ecs = False
    cdef unsigned int ttl
    cdef Query q
    if n < 12:
        return _error(FORMERR, b"shorter than a header", 0, 0, True)
    id = _u16(p)
    flags = _u16(p + 2)
    if flags & 0x8000:
        return _error(FORMERR, b"QR=1: a response", id, flags, True)
    if flags & 0x7800:
        return _error(NOTIMP, b"opcode not implemented", id, flags, False)
    qd = _u16(p + 4)
    an = _u16(p + 6)
    ns = _u16(p + 8)
    ar = _u16(p + 10)
    if qd != 1:
        return _error(FORMERR, b"QDCOUNT is not 1", id, flags, False)
    if an or ns:
        return _error(FORMERR, b"answer or authority records in a query", id, flags, False)
    pos = _read_qname(p, n, 12, text, low, &textlen, &upper, &err)
    if pos < 0:
        return _error(FORMERR, err, id, flags, False)
    if pos + 4 > n:
        return _error(FORMERR, b"truncated question", id, flags, False)
    qend = pos + 4
    q = Query.__new__(Query)
    q.id = id
    q.flags = flags
    q.opcode = (flags >> 11) & 15
    q.rd = (flags & 0x0100) != 0
    q.qtype = _u16(p + pos)
    q.qclass = _u16(p + pos + 2)
    q.question_end = <int>qend
    q.udp_size = 512
    q.edns_version = 0
    q.ecs = None
    q.wire = data
    pos = qend
    for i in range(ar):
        name_start = pos
        pos = _skip_name(p, n, pos, &err)
        if pos < 0:
            return _error(FORMERR, err, id, flags, False)
        if pos + 10 > n:
            return _error(FORMERR, b"truncated additional record", id, flags, False)
        rtype = _u16(p + pos)
        rdlen = _u16(p + pos + 8)
        rdend = pos + 10 + rdlen
        if rdend > n:
            return _error(FORMERR, b"truncated additional record", id, flags, False)
        if rtype == _T_OPT:
            if have_opt:
                return _error(FORMERR, b"more than one OPT record", id, flags, False)
            have_opt = True
            if pos != name_start + 1:
                return _error(FORMERR, b"OPT owner is not the root", id, flags, False)
            q.edns = True
            q.udp_size = _u16(p + pos + 2)
            if q.udp_size < 512:
                q.udp_size = 512
            ttl = (<unsigned int>_u16(p + pos + 4) << 16) | <unsigned int>_u16(p + pos + 6)
            q.edns_version = (ttl >> 16) & 0xFF
            q._do = (ttl & 0x8000) != 0
            opos = pos + 10
            if q.edns_version == 0:
                while opos < rdend:
                    if opos + 4 > rdend:
                        return _error(FORMERR, b"truncated EDNS option", id, flags, False)
                    code = _u16(p + opos)
                    olen = _u16(p + opos + 2)
                    opos += 4
                    if opos + olen > rdend:
                        return _error(FORMERR, b"truncated EDNS option", id, flags, False)
                    if code == _ECS_CODE:
                        if have_ecs:
                            return _error(FORMERR, b"more than one ECS option", id, flags, False)
                        have_ecs = True
                        if olen < 4:
                            return _error(FORMERR, b"short ECS option", id, flags, False)
                        family = _u16(p + opos)
                        src = p[opos + 2]
                        scope = p[opos + 3]
                        if family == 1:
                            maxbytes = 4
                        elif family == 2:
                            maxbytes = 16
                        else:
                            return _error(FORMERR, b"unknown ECS family", id, flags, False)
                        if src > maxbytes * 8 or scope > maxbytes * 8:
                            return _error(FORMERR, b"ECS prefix longer than the address",
                                          id, flags, False)
                        nbytes = (src + 7) >> 3
                        if olen - 4 != nbytes:
                            return _error(FORMERR, b"ECS address length does not match its prefix",
                                          id, flags, False)
                        if src & 7 and p[opos + 4 + nbytes - 1] & (0xFF >> (src & 7)):
                            return _error(FORMERR, b"ECS address bits set beyond the prefix",
                                          id, flags, False)
                        for k in range(maxbytes):
                            addr[k] = p[opos + 4 + k] if k < nbytes else 0
                        q.ecs = (family, src, scope,
                                 PyBytes_FromStringAndSize(<char *>addr, maxbytes))
                    opos += olen
        pos = rdend
    if pos != n:
        return _error(FORMERR, b"trailing bytes after the last record", id, flags, False)
    q.qname = PyBytes_FromStringAndSize(<char *>text, textlen)
    q.qname_lower = PyBytes_FromStringAndSize(<char *>low, textlen) if upper else q.qname
    return q


def parse_query(data):
    """Query, or ParseError for anything that is not a query we answer.  Never raises
    on bad input (``data`` may be any bytes-like object)."""
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("parse_query takes bytes, not %s" % type(data).__name__)
        data = bytes(data)
    return _parse(<bytes>data)


# ----------------------------------------------------------------------------------------
# Names in text form -> uncompressed wire form

cdef bytes _ROOT = b"\x00"


cdef bytes _name_wire(object name):
    """b"www.Example.com" (trailing dot optional, dnspython escapes allowed) -> wire form."""
    cdef bytes b
    cdef const unsigned char *s
    cdef Py_ssize_t n, i = 0, lab = 0, o = 1, lablen
    cdef unsigned char out[_MAX_NAME + 2]
    cdef unsigned int c
    if type(name) is bytes:
        b = <bytes>name
    elif isinstance(name, str):
        b = (<str>name).encode("ascii")
    elif isinstance(name, (bytes, bytearray, memoryview)):
        b = bytes(name)
    else:
        raise TypeError("a name must be bytes or str, not %s" % type(name).__name__)
    s = <const unsigned char *>PyBytes_AS_STRING(b)
    n = PyBytes_GET_SIZE(b)
    if n == 0 or (n == 1 and s[0] == 46):
        return _ROOT
    while i < n:
        c = s[i]
        i += 1
        if c == 46:
            lablen = o - lab - 1
            if lablen == 0:
                raise ValueError("empty label in %r" % (b,))
            if lablen > 63:
                raise ValueError("label longer than 63 bytes in %r" % (b,))
            out[lab] = <unsigned char>lablen
            lab = o
            o += 1
            if o > _MAX_NAME:
                raise ValueError("name longer than 255 bytes: %r" % (b,))
            continue
        if c == 92:
            if i >= n:
                raise ValueError("dangling backslash in %r" % (b,))
            if i + 2 < n and 48 <= s[i] <= 57 and 48 <= s[i + 1] <= 57 and 48 <= s[i + 2] <= 57:
                c = (s[i] - 48) * 100 + (s[i + 1] - 48) * 10 + (s[i + 2] - 48)
                if c > 255:
                    raise ValueError("escape above \\255 in %r" % (b,))
                i += 3
            elif 48 <= s[i] <= 57:
                raise ValueError("\\DDD escape needs three digits in %r" % (b,))
            else:
                c = s[i]
                i += 1
        if o >= _MAX_NAME:
            raise ValueError("name longer than 255 bytes: %r" % (b,))
        out[o] = <unsigned char>c
        o += 1
    lablen = o - lab - 1
    if lablen > 63:
        raise ValueError("label longer than 63 bytes in %r" % (b,))
    if lablen == 0:             # the text ended with a dot: this placeholder is the root
        out[lab] = 0
    else:
        out[lab] = <unsigned char>lablen
        out[o] = 0
        o += 1
    if o > _MAX_NAME:
        raise ValueError("name longer than 255 bytes: %r" % (b,))
    return PyBytes_FromStringAndSize(<char *>out, o)


# ----------------------------------------------------------------------------------------
# Records

cdef bytes _raw(object v, str what):
    if type(v) is bytes:
        return <bytes>v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, str):
        return (<str>v).encode("utf-8")
    raise TypeError("%s must be bytes, not %s" % (what, type(v).__name__))


cdef bytes _charstrings(object strings):
    cdef list parts = []
    cdef bytes s
    if isinstance(strings, (bytes, str)):
        strings = (strings,)
    for v in strings:
        s = _raw(v, "a character-string")
        if PyBytes_GET_SIZE(s) > 255:
            raise ValueError("character-string longer than 255 bytes")
        parts.append(bytes((PyBytes_GET_SIZE(s),)))
        parts.append(s)
    if not parts:
        raise ValueError("TXT needs at least one string")
    return b"".join(parts)


cdef bytes _address(object v, int size):
    cdef bytes b
    if isinstance(v, str):
        import socket
        b = socket.inet_pton(socket.AF_INET if size == 4 else socket.AF_INET6, v)
    else:
        b = _raw(v, "an address")
    if PyBytes_GET_SIZE(b) != size:
        raise ValueError("address must be %d packed bytes, got %r" % (size, b))
    return b


cdef bytes _u16b(long v, str what):
    if not 0 <= v <= 0xFFFF:
        raise ValueError("%s out of range: %d" % (what, v))
    return bytes(((v >> 8) & 0xFF, v & 0xFF))


cdef bytes _u32b(long long v, str what):
    if not 0 <= v <= 0xFFFFFFFF:
        raise ValueError("%s out of range: %d" % (what, v))
    return bytes(((v >> 24) & 0xFF, (v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF))


@cython.final
@cython.freelist(64)
cdef class Record:
    """One resource record, compiled to wire pieces once (the fast way to answer).

    ``value`` by type: A/AAAA packed bytes (or text address), CNAME/NS/PTR a name,
    MX (preference, name), SOA (mname, rname, serial, refresh, retry, expire, minimum),
    TXT a list of byte strings (<= 255 each), CAA (flags, tag, value), HINFO (cpu, os);
    any other type its RDATA as bytes.  Names are text (b"www.example.com", trailing dot
    optional, dnspython escapes allowed).
    """

    cdef readonly object name
    cdef readonly int rtype
    cdef readonly int rclass
    cdef readonly long long ttl
    cdef readonly object value
    cdef bytes _owner       # uncompressed wire form
    cdef bytes _fixed       # type, class, ttl: 8 bytes
    cdef bytes _pre         # RDATA before the first name (or all of it)
    cdef bytes _n1          # compressible names in RDATA, wire form, or None
    cdef bytes _n2
    cdef bytes _post        # RDATA after the names

    def __init__(self, name, int rtype, long long ttl, value, int rclass=1):
        _compile(self, name, rtype, ttl, value, rclass)

    def __repr__(self):
        return "<Record %r %d %d %r>" % (self.name, self.rtype, self.ttl, self.value)


cdef bytes _EMPTY = b""


cdef int _compile(Record r, object name, int rtype, long long ttl, object value,
                  int rclass) except -1:
    if not 0 <= ttl <= 0x7FFFFFFF:
        raise ValueError("TTL out of range (RFC 2181 §8): %d" % ttl)
    cdef unsigned char fixed[8]
    if not 0 <= rtype <= 0xFFFF or rtype == _T_OPT:
        raise ValueError("invalid record type %d" % rtype)
    if not 0 <= rclass <= 0xFFFF:
        raise ValueError("invalid record class %d" % rclass)
    r.name = name
    r.rtype = rtype
    r.rclass = rclass
    r.ttl = ttl
    r.value = value
    r._owner = _name_wire(name)
    _put16(fixed, <unsigned int>rtype)
    _put16(fixed + 2, <unsigned int>rclass)
    _put16(fixed + 4, <unsigned int>(ttl >> 16))
    _put16(fixed + 6, <unsigned int>(ttl & 0xFFFF))
    r._fixed = PyBytes_FromStringAndSize(<char *>fixed, 8)
    r._pre = _EMPTY
    r._n1 = None
    r._n2 = None
    r._post = _EMPTY
    if rtype == _T_A:
        r._pre = _address(value, 4)
    elif rtype == _T_AAAA:
        r._pre = _address(value, 16)
    elif rtype == _T_CNAME or rtype == _T_NS or rtype == _T_PTR:
        r._n1 = _name_wire(value)
    elif rtype == _T_MX:
        pref, exchange = value
        r._pre = _u16b(pref, "MX preference")
        r._n1 = _name_wire(exchange)
    elif rtype == _T_SOA:
        mname, rname, serial, refresh, retry, expire, minimum = value
        r._n1 = _name_wire(mname)
        r._n2 = _name_wire(rname)
        r._post = (_u32b(serial, "serial") + _u32b(refresh, "refresh") + _u32b(retry, "retry")
                   + _u32b(expire, "expire") + _u32b(minimum, "minimum"))
    elif rtype == _T_TXT:
        r._pre = _charstrings(value)
    elif rtype == _T_HINFO:
        cpu, os = value
        r._pre = _charstrings((cpu,)) + _charstrings((os,))
    elif rtype == _T_CAA:
        caa_flags, tag, caa_value = value
        tag = _raw(tag, "a CAA tag")
        if not 1 <= len(tag) <= 255 or not tag.isalnum() or not tag.isascii():
            raise ValueError("CAA tag must be 1-255 ASCII letters and digits: %r" % (tag,))
        if not 0 <= caa_flags <= 255:
            raise ValueError("CAA flags out of range: %d" % caa_flags)
        r._pre = bytes((caa_flags, len(tag))) + tag + _raw(caa_value, "a CAA value")
    else:
        r._pre = _raw(value, "RDATA of type %d" % rtype)
    if (PyBytes_GET_SIZE(r._pre) + PyBytes_GET_SIZE(r._post)
            + (PyBytes_GET_SIZE(r._n1) if r._n1 is not None else 0)
            + (PyBytes_GET_SIZE(r._n2) if r._n2 is not None else 0)) > 0xFFFF:
        raise ValueError("RDATA longer than 65535 bytes")
    return 0


cdef inline Record _as_record(object item):
    cdef Record r
    if type(item) is Record:
        return <Record>item
    name, rtype, ttl, value = item
    r = Record.__new__(Record)
    _compile(r, name, rtype, ttl, value, 1)
    return r


def record(name, int rtype, long long ttl, value, int rclass=1):
    """Same as Record(...)."""
    return Record(name, rtype, ttl, value, rclass)


# ----------------------------------------------------------------------------------------
# Encoder

cdef struct _Msg:
    unsigned char *buf
    Py_ssize_t pos
    Py_ssize_t cap
    Py_ssize_t limit        # records must end at or before this offset
    bint heap
    int ncomp
    uint32_t comp_hash[_COMP_MAX]
    unsigned short comp_off[_COMP_MAX]


cdef int _room(_Msg *m, Py_ssize_t k) except -1:
    """1 if k more bytes fit under the limit (growing the buffer), else 0."""
    cdef Py_ssize_t cap
    cdef unsigned char *nb
    if m.pos + k > m.limit:
        return 0
    if m.pos + k > m.cap:
        cap = m.cap * 2
        if cap < m.pos + k:
            cap = m.pos + k
        if m.heap:
            nb = <unsigned char *>realloc(m.buf, cap)
        else:
            nb = <unsigned char *>malloc(cap)
            if nb != NULL:
                memcpy(nb, m.buf, m.pos)
        if nb == NULL:
            raise MemoryError()
        m.buf = nb
        m.cap = cap
        m.heap = True
    return 1


cdef int _labels(const unsigned char *w, Py_ssize_t *starts, uint32_t *hashes) noexcept:
    """Label offsets of an uncompressed wire name and the case-insensitive hash of each
    suffix (hashes[i] covers labels i..end).  Returns the number of labels."""
    cdef int nl = 0, i
    cdef Py_ssize_t o = 0
    cdef unsigned int k, ln
    cdef uint32_t h
    while w[o]:
        starts[nl] = o
        nl += 1
        o += w[o] + 1
    h = 2166136261u
    for i in range(nl - 1, -1, -1):
        o = starts[i]
        ln = w[o]
        h = (h ^ ln) * 16777619u
        for k in range(1, ln + 1):
            h = (h ^ _LOWER[w[o + k]]) * 16777619u
        hashes[i] = h
    return nl


cdef bint _same_suffix(const unsigned char *buf, Py_ssize_t off,
                       const unsigned char *w) noexcept:
    """Does the (possibly compressed) name written at buf[off] equal the wire name w?"""
    cdef unsigned int b, k
    while True:
        b = buf[off]
        if b >= 0xC0:
            off = ((b & 0x3F) << 8) | buf[off + 1]
            continue
        if b != w[0]:
            return False
        if b == 0:
            return True
        for k in range(1, b + 1):
            if _LOWER[buf[off + k]] != _LOWER[w[k]]:
                return False
        off += b + 1
        w += b + 1


cdef void _remember(_Msg *m, Py_ssize_t base, Py_ssize_t *starts, uint32_t *hashes,
                    int count) noexcept:
    cdef int i
    cdef Py_ssize_t off
    for i in range(count):
        off = base + starts[i]
        if off >= 0x4000 or m.ncomp >= _COMP_MAX:
            return
        m.comp_hash[m.ncomp] = hashes[i]
        m.comp_off[m.ncomp] = <unsigned short>off
        m.ncomp += 1


cdef int _put_name(_Msg *m, bytes wire) except -1:
    """Write a name, compressed against the names already written; 0 if it does not fit."""
    cdef const unsigned char *w = <const unsigned char *>PyBytes_AS_STRING(wire)
    cdef Py_ssize_t wlen = PyBytes_GET_SIZE(wire)
    cdef Py_ssize_t starts[_MAX_LABELS]
    cdef uint32_t hashes[_MAX_LABELS]
    cdef int nl, i, e, found = -1
    cdef Py_ssize_t base, k
    if wlen == 1:
        if not _room(m, 1):
            return 0
        m.buf[m.pos] = 0
        m.pos += 1
        return 1
    nl = _labels(w, starts, hashes)
    for i in range(nl):
        for e in range(m.ncomp):
            if m.comp_hash[e] == hashes[i] and _same_suffix(m.buf, m.comp_off[e], w + starts[i]):
                found = e
                break
        if found >= 0:
            break
    if found >= 0:
        k = starts[i]
        if not _room(m, k + 2):
            return 0
        base = m.pos
        memcpy(m.buf + m.pos, w, k)
        _put16(m.buf + m.pos + k, 0xC000 | m.comp_off[found])
        m.pos += k + 2
        _remember(m, base, starts, hashes, i)
    else:
        if not _room(m, wlen):
            return 0
        base = m.pos
        memcpy(m.buf + m.pos, w, wlen)
        m.pos += wlen
        _remember(m, base, starts, hashes, nl)
    return 1


cdef inline int _put_bytes(_Msg *m, bytes b) except -1:
    cdef Py_ssize_t k = PyBytes_GET_SIZE(b)
    if not _room(m, k):
        return 0
    memcpy(m.buf + m.pos, PyBytes_AS_STRING(b), k)
    m.pos += k
    return 1


cdef int _put_record(_Msg *m, Record r) except -1:
    """Write one record, or nothing (returning 0) if it does not fit."""
    cdef Py_ssize_t start = m.pos, rdstart
    cdef int ncomp = m.ncomp
    if not _put_name(m, r._owner) or not _room(m, 10):
        m.pos = start
        m.ncomp = ncomp
        return 0
    memcpy(m.buf + m.pos, PyBytes_AS_STRING(r._fixed), 8)
    m.pos += 10
    rdstart = m.pos
    if (not _put_bytes(m, r._pre)
            or (r._n1 is not None and not _put_name(m, r._n1))
            or (r._n2 is not None and not _put_name(m, r._n2))
            or not _put_bytes(m, r._post)):
        m.pos = start
        m.ncomp = ncomp
        return 0
    _put16(m.buf + rdstart - 2, <unsigned int>(m.pos - rdstart))
    return 1


cdef int _put_section(_Msg *m, object records, int *count) except -1:
    """Write records in order until one does not fit; 1 if all were written."""
    cdef object item
    if type(records) is list or type(records) is tuple:
        for item in records:
            if not _put_record(m, _as_record(item)):
                return 0
            count[0] += 1
    elif records is not None:
        for item in records:
            if not _put_record(m, _as_record(item)):
                return 0
            count[0] += 1
    return 1


cdef bytes _encode(object msg, int rcode, bint aa, object answers, object authority,
                   object additional, int max_size, int ecs_scope, int payload):
    cdef unsigned char stack[_STACK_OUT]
    cdef _Msg m
    cdef Query q = None
    cdef ParseError err
    cdef int id, qflags, flags, an = 0, ns = 0, ar = 0, qd = 0, opt_len = 0
    cdef int family = 0, src = 0, abytes = 0
    cdef bint edns = False, tc = False
    cdef Py_ssize_t qlen = 0, nlab
    cdef Py_ssize_t starts[_MAX_LABELS]
    cdef uint32_t hashes[_MAX_LABELS]
    cdef unsigned char *o
    cdef bytes addr = None
    if not 0 <= rcode <= 0xFFF:
        raise ValueError("rcode out of range: %d" % rcode)
    if type(msg) is Query:
        q = <Query>msg
        id = q.id
        qflags = q.flags
        edns = q.edns
        qd = 1
        qlen = q.question_end - 12
    elif type(msg) is ParseError:
        err = <ParseError>msg
        if err.drop:
            raise ValueError("a dropped message gets no reply")
        id = err.id
        qflags = err.flags
    else:
        raise TypeError("expected a Query or a ParseError, not %s" % type(msg).__name__)
    if rcode > 15 and not edns:
        raise ValueError("extended rcode %d needs a query with EDNS" % rcode)
    if edns:
        opt_len = 11
        if q.ecs is not None and ecs_scope >= 0:
            family, src = q.ecs[0], q.ecs[1]
            addr = q.ecs[3]
            if ecs_scope > (32 if family == 1 else 128):
                raise ValueError("ECS scope prefix longer than the address: %d" % ecs_scope)
            abytes = (src + 7) >> 3
            opt_len += 8 + abytes
        if payload < 512:
            payload = 512
        elif payload > 0xFFFF:
            payload = 0xFFFF
    if max_size <= 0:
        max_size = (q.udp_size if q.udp_size < payload else payload) if edns else 512
    elif max_size < 512:
        max_size = 512
    elif max_size > 0xFFFF:
        max_size = 0xFFFF
    m.buf = stack
    m.cap = _STACK_OUT
    m.heap = False
    m.pos = 0
    m.ncomp = 0
    m.limit = max_size - opt_len
    try:
        _room(&m, 12 + qlen)
        m.pos = 12 + qlen
        if qd:
            memcpy(m.buf + 12, PyBytes_AS_STRING(q.wire) + 12, qlen)
            nlab = _labels(m.buf + 12, starts, hashes)
            _remember(&m, 12, starts, hashes, <int>nlab)
        if not _put_section(&m, answers, &an):
            tc = True
        elif not _put_section(&m, authority, &ns):
            tc = True
        else:
            _put_section(&m, additional, &ar)     # extra data: no TC (RFC 2181 §9)
        if edns:
            m.limit = max_size
            _room(&m, opt_len)
            o = m.buf + m.pos
            o[0] = 0
            _put16(o + 1, _T_OPT)
            _put16(o + 3, payload)
            o[5] = <unsigned char>(rcode >> 4)
            o[6] = 0
            _put16(o + 7, 0x8000 if q._do else 0)
            _put16(o + 9, opt_len - 11)
            if opt_len > 11:
                _put16(o + 11, _ECS_CODE)
                _put16(o + 13, 4 + abytes)
                _put16(o + 15, family)
                o[17] = <unsigned char>src
                o[18] = <unsigned char>ecs_scope
                memcpy(o + 19, PyBytes_AS_STRING(addr), abytes)
            m.pos += opt_len
            ar += 1
        flags = (0x8000 | (qflags & 0x7800) | (0x0400 if aa else 0) | (0x0200 if tc else 0)
                 | (qflags & 0x0100) | (qflags & 0x0010) | (rcode & 15))
        o = m.buf
        _put16(o, id)
        _put16(o + 2, flags)
        _put16(o + 4, qd)
        _put16(o + 6, an)
        _put16(o + 8, ns)
        _put16(o + 10, ar)
        return PyBytes_FromStringAndSize(<char *>m.buf, m.pos)
    finally:
        if m.heap:
            free(m.buf)


def encode_response(Query query not None, int rcode=0, bint aa=True, answers=(),
                    authority=(), additional=(), int max_size=0, int ecs_scope=0,
                    int payload=DEFAULT_PAYLOAD):
    """The response to ``query``: header (id, opcode, RD and CD copied; QR, AA, TC, RCODE),
    the question echoed as sent, the three sections, then an OPT record if the query had
    EDNS (``payload`` as our UDP size, extended rcode bits, DO copied (RFC 3225), and the
    query's ECS option with SCOPE PREFIX-LENGTH ``ecs_scope``, or none if it is negative).

    Records are ``Record`` objects (fastest) or ``(name, rtype, ttl, value)`` tuples.

    ``max_size``: 0 means UDP (512 without EDNS, else the smaller of the client's size and
    ``payload``); pass 65535 for TCP; values below 512 count as 512.  Records that do not
    fit are dropped, the OPT record always stays: an answer or authority record that does
    not fit sets TC and ends the message there; additional records that do not fit are left
    out without TC (RFC 2181 §9).
    """
    return _encode(query, rcode, aa, answers, authority, additional, max_size, ecs_scope,
                   payload)


def error_response(msg not None, rcode=None, bint aa=False, int payload=DEFAULT_PAYLOAD):
    """A response without records: to a ParseError (header only, its rcode unless given;
    raises ValueError if ``msg.drop``), or to a Query (question echoed, OPT if EDNS; e.g.
    REFUSED, NOTIMP, SERVFAIL, BADVERS for ``edns_version > 0``)."""
    cdef int code
    if rcode is None:
        if type(msg) is not ParseError:
            raise TypeError("a Query needs an explicit rcode")
        code = (<ParseError>msg).rcode
    else:
        code = rcode
    return _encode(msg, code, aa, None, None, None, 0, -1, payload)
