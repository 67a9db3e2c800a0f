"""Type stub for fast.dns (DNS query decoder and response encoder; see fast/dns.pyx)."""

from collections.abc import Iterable
from typing import Final, final

QUERY: Final = 0
NOERROR: Final = 0
FORMERR: Final = 1
SERVFAIL: Final = 2
NXDOMAIN: Final = 3
NOTIMP: Final = 4
REFUSED: Final = 5
BADVERS: Final = 16

A: Final = 1
NS: Final = 2
CNAME: Final = 5
SOA: Final = 6
PTR: Final = 12
HINFO: Final = 13
MX: Final = 15
TXT: Final = 16
AAAA: Final = 28
OPT: Final = 41
ANY: Final = 255
CAA: Final = 257

IN: Final = 1
CH: Final = 3

DEFAULT_PAYLOAD: Final = 1232

Ecs = tuple[int, int, int, bytes]
"""(family 1|2, source prefix, scope prefix, address zero-padded to 4 or 16 bytes)."""

@final
class Query:
    """A decoded query (OPCODE QUERY, one question, no answer/authority records)."""

    @property
    def id(self) -> int: ...
    @property
    def flags(self) -> int:
        """The 16-bit flags word as sent."""
    @property
    def opcode(self) -> int:
        """Always 0: other opcodes are a ParseError with rcode NOTIMP."""
    @property
    def rd(self) -> bool: ...
    @property
    def qname(self) -> bytes:
        """Presentation form as sent (case kept), no final dot, b"" for the root; label bytes
        escaped as dnspython's Name.to_text does."""
    @property
    def qname_lower(self) -> bytes:
        """qname with ASCII A-Z folded (the same object when already lowercase)."""
    @property
    def qtype(self) -> int: ...
    @property
    def qclass(self) -> int: ...
    @property
    def edns(self) -> bool: ...
    @property
    def udp_size(self) -> int:
        """512 without EDNS, else max(512, the advertised size)."""
    @property
    def do(self) -> bool: ...
    @property
    def edns_version(self) -> int:
        """0 without EDNS; above 0 the server should answer BADVERS."""
    @property
    def ecs(self) -> Ecs | None:
        """Client Subnet option (EDNS version 0 only)."""
    @property
    def question_end(self) -> int:
        """Offset in ``wire`` where the question section ends (it starts at 12)."""
    @property
    def wire(self) -> bytes:
        """The whole message as received."""
    @property
    def question(self) -> bytes:
        """wire[12:question_end]."""

@final
class ParseError:
    """Not a query we answer.  ``drop``: send nothing (short message, or QR=1); otherwise
    answer with error_response(err): FORMERR, or NOTIMP for an unknown opcode."""

    def __init__(
        self, rcode: int, reason: str, id: int = 0, flags: int = 0, drop: bool = False
    ) -> None: ...
    @property
    def rcode(self) -> int: ...
    @property
    def drop(self) -> bool: ...
    @property
    def id(self) -> int:
        """0 when there was no header."""
    @property
    def flags(self) -> int: ...
    @property
    def reason(self) -> str: ...

def parse_query(data: bytes | bytearray | memoryview) -> Query | ParseError:
    """Never raises on bad input (TypeError only for a non-bytes argument)."""

@final
class Record:
    """A resource record compiled to wire pieces once; the fastest input to encode_response.

    value by type: A/AAAA packed bytes (or text); CNAME/NS/PTR a name; MX (pref, name);
    SOA (mname, rname, serial, refresh, retry, expire, minimum); TXT a list of bytes
    (<= 255 each); CAA (flags, tag, value); HINFO (cpu, os); other types raw RDATA bytes.
    Names are text like b"www.example.com" (final dot optional).  Raises ValueError or
    TypeError for values that cannot be encoded.
    """

    def __init__(
        self, name: bytes | str, rtype: int, ttl: int, value: object, rclass: int = 1
    ) -> None: ...
    @property
    def name(self) -> bytes | str: ...
    @property
    def rtype(self) -> int: ...
    @property
    def rclass(self) -> int: ...
    @property
    def ttl(self) -> int: ...
    @property
    def value(self) -> object: ...

def record(name: bytes | str, rtype: int, ttl: int, value: object, rclass: int = 1) -> Record: ...

RecordLike = Record | tuple[bytes | str, int, int, object]

def encode_response(
    query: Query,
    rcode: int = 0,
    aa: bool = True,
    answers: Iterable[RecordLike] | None = (),
    authority: Iterable[RecordLike] | None = (),
    additional: Iterable[RecordLike] | None = (),
    max_size: int = 0,
    ecs_scope: int = 0,
    payload: int = 1232,
) -> bytes:
    """Response with the question echoed, compressed names, and an OPT record when the
    query had EDNS (payload, extended rcode, DO copied, ECS echoed with ``ecs_scope``
    unless it is negative).  max_size 0: UDP (512, or min(client size, payload) with
    EDNS); 65535 for TCP.  An answer/authority record that does not fit sets TC and ends
    the message; additional records that do not fit are dropped without TC."""

def error_response(
    msg: Query | ParseError, rcode: int | None = None, aa: bool = False, payload: int = 1232
) -> bytes:
    """Header-only reply to a ParseError (its rcode by default; ValueError if drop), or a
    record-less reply to a Query (question echoed, OPT if EDNS, e.g. BADVERS)."""
