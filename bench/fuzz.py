#!/usr/bin/env python3
"""Fuzz every listener of a running node with mutated, truncated and oversized inputs.

    python bench/fuzz.py [--seconds 30] [--seed 1] [--rss-mb 400] [--only http,ws,...] [--smoke]

Starts one `farts-edge serve` on loopback with every service on (HTTP and HTTPS with a
WebSocket pub/sub route, geo DNS over UDP and TCP, the MongoDB wire with auth, the mesh
with mutual TLS), then drives each listener in turn for --seconds:

  http, https  HTTP/1.1 requests (GET, pipelined, chunked and Content-Length bodies, Expect)
  ws           WebSocket frames after a valid handshake on /live
  dns-udp      queries made with dnspython (A, AAAA, TXT, ANY, EDNS, ECS)
  dns-tcp      the same, length-prefixed
  db-preauth   OP_MSG / OP_QUERY / OP_COMPRESSED messages before authentication
  db-auth      OP_MSG messages after a SCRAM-SHA-256 login
  mesh         frames after a valid HELLO, on a link with a valid client certificate

Each input is a valid one (the seeds above) put through a mutator chosen at random:
bit flips, byte replacement, insertion of interesting bytes or huge numbers, deletion,
truncation, duplication and splicing of two seeds, a field grown a hundred- to a
thousandfold; sent whole or in random pieces. The generator is random.Random(--seed):
a run is reproducible, and the input of any failure is saved under the results folder.

After every burst (one second of inputs) the node must still answer a normal request on
every listener, its log must hold no traceback, and its RSS must stay under --rss-mb.
The table at the end gives, per listener, inputs sent, bursts, and failures (0 is the
target). Exit status 0 when there were none. --smoke: 2 s per listener (CI runs it).
"""
from __future__ import annotations

import argparse
import base64
import os
import random
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/dns.py would shadow dnspython (a script's folder comes first on sys.path).
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import bson  # noqa: E402
import dns.edns  # noqa: E402
import dns.message  # noqa: E402

from bench.nodeconf import local_node, node_toml  # noqa: E402
from farts import pki  # noqa: E402
from farts.db import scram  # noqa: E402
from farts.mesh.frames import BUS, SWIM, Hello, encode  # noqa: E402
from fast.ws import encode_masked_frame  # noqa: E402

LISTENERS = ("http", "https", "ws", "dns-udp", "dns-tcp", "db-preauth", "db-auth", "mesh")
URL_LINE = re.compile(rb"^\s+(\w+)\s+(\S+://\S+)")



def node_config(data: Path) -> str:
    """The node under fuzzing: every listener on (https with the certificate in certs/),
    pub/sub, DNS, the database with auth, the mesh."""
    node = local_node(data, node_id="fuzz-node", hosts=())
    node["listeners"]["https"] = {"host": "127.0.0.1", "port": 0, "cert_dir": "certs"}
    return node_toml({
        **node,
        "limits": {"header_timeout": 2.0, "idle_timeout": 5.0},
        "tenants": [{"id": "demo", "hosts": ["localhost", "127.0.0.1"], "api_keys": ["fuzz-key"],
                     "secret": "fuzz-secret"}],
        "routes": [{"prefix": "/live", "kind": "pubsub"}, {"prefix": "/api/publish", "kind": "pubsub"},
                   {"prefix": "/healthz", "kind": "admin"}, {"prefix": "/", "kind": "static", "body": "fuzz target\n"}],
        "dns": {"enabled": True, "port": 0, "zone": "fuzz.test", "geo": [{"name": "edge"}],
                "records": [{"name": "txt", "type": "TXT", "value": "hello"}],
                "nodes": [{"id": "fuzz-node", "lat": 50.1, "lon": 8.7, "addresses": ["127.0.0.1", "::1"]}]},
        "db": {"enabled": True, "port": 0, "auth": True, "sync": False,
               "users": [{"name": "fuzz", "password": "fuzz-secret", "tenant": "demo"}]},
        "mesh": {"enabled": True, "port": 0, "ca": "mesh/ca.crt", "cert": "mesh/node.crt", "key": "mesh/node.key"},
    })


INTERESTING = [b"\x00", b"\xff", b"\r\n", b"\r\n\r\n", b"\n", b":", b"%", b"..", b"/", b"\x7f",
               b"\x80", b"-1", b"0", b"4294967296", b"18446744073709551616", b"ffffffffffffffff",
               b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\xc1", b"\xdc\xff\xff"]


# ---- seeds: valid inputs per listener ---------------------------------------------------

def http_seeds() -> list[bytes]:
    h = b"Host: localhost\r\n"
    return [
        b"GET / HTTP/1.1\r\n" + h + b"User-Agent: fuzz\r\nAccept: */*\r\n\r\n",
        b"GET /healthz?x=1&y=%20 HTTP/1.1\r\n" + h + b"Connection: keep-alive\r\n\r\nGET / HTTP/1.1\r\n" + h + b"\r\n",
        b"POST /api/publish HTTP/1.1\r\n" + h + b"Authorization: Bearer fuzz-key\r\nContent-Type: application/json\r\n"
        b"Content-Length: 33\r\n\r\n{\"channel\":\"c1\",\"data\":\"hello\"}\r\n",
        b"POST / HTTP/1.1\r\n" + h + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
        b"PUT / HTTP/1.1\r\n" + h + b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\nbody",
        b"GET http://localhost/ HTTP/1.1\r\n" + h + b"\r\n",
        b"HEAD / HTTP/1.0\r\n\r\n",
        b"GET /live/sse?channel=c1 HTTP/1.1\r\n" + h + b"Accept: text/event-stream\r\n\r\n",
    ]


WS_HANDSHAKE = (b"GET /live HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def ws_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return encode_masked_frame(opcode, payload, b"\x01\x02\x03\x04", fin)


def ws_seeds() -> list[bytes]:
    sub = b'{"op":"subscribe","channel":"c1"}'
    return [ws_frame(1, sub), ws_frame(9, b"ping"), ws_frame(2, b"\x00\x01binary"),
            ws_frame(1, b'{"op":"unsub', fin=False) + ws_frame(0, b'scribe","channel":"c1"}'),
            ws_frame(8, struct.pack(">H", 1000) + b"bye"), ws_frame(1, b'{"op":"history","channel":"c1"}')]


def dns_seeds() -> list[bytes]:
    out = []
    for name, rtype in (("edge.fuzz.test", "A"), ("edge.fuzz.test", "AAAA"), ("txt.fuzz.test", "TXT"),
                        ("fuzz.test", "SOA"), ("fuzz.test", "ANY"), ("nope.fuzz.test", "A")):
        out.append(dns.message.make_query(name, rtype).to_wire())
    q = dns.message.make_query("edge.fuzz.test", "A", use_edns=0, payload=1232)
    q.use_edns(0, options=[dns.edns.ECSOption("81.2.69.0", 24)])
    out.append(q.to_wire())
    return out


def op_msg(body: dict, request_id: int = 1) -> bytes:
    payload = b"\0\0\0\0\0" + bson.encode(body)
    return struct.pack("<iiii", 16 + len(payload), request_id, 0, 2013) + payload


def db_seeds(authenticated: bool) -> list[bytes]:
    seeds = [op_msg({"hello": 1, "$db": "admin", "client": {"driver": {"name": "fuzz", "version": "1"}}}),
             op_msg({"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": b"n,,n=fuzz,r=abc", "$db": "admin"}),
             struct.pack("<iiii", 16 + 4 + 12 + 5 + 4 + len(bson.encode({"isMaster": 1})), 7, 0, 2004)
             + b"\0\0\0\0admin.$cmd\0" + b"\0\0\0\0" + b"\xff\xff\xff\xff" + bson.encode({"isMaster": 1})]
    if authenticated:
        seeds += [op_msg({"insert": "c", "documents": [{"_id": 1, "a": [1, 2, {"b": "x"}]}], "$db": "f"}),
                  op_msg({"find": "c", "filter": {"a": {"$elemMatch": {"b": {"$regex": "^x"}}}}, "$db": "f"}),
                  op_msg({"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}, "upsert": True}],
                          "$db": "f"}),
                  op_msg({"aggregate": "c", "pipeline": [{"$group": {"_id": "$a", "n": {"$sum": 1}}}],
                          "cursor": {}, "$db": "f"})]
    return seeds


def mesh_seeds() -> list[bytes]:
    return [encode(SWIM, ["ping", 1, []]), encode(SWIM, ["sync", True, [["x", 1, "alive", {}]]]),
            encode(BUS, ["pubsub.publish", 1, 1, {"channel": "c1"}]), encode(SWIM, ["gossip", [["alive", "y", 3, {}, "z"]]])]


# ---- mutation -----------------------------------------------------------------------------

def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        kind = rng.randrange(8)
        pos = rng.randrange(len(data) + 1)
        if kind == 0 and data:                                   # bit flip
            i = min(pos, len(data) - 1)
            data[i] ^= 1 << rng.randrange(8)
        elif kind == 1 and data:                                 # byte replaced
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif kind == 2:                                          # interesting bytes in
            data[pos:pos] = rng.choice(INTERESTING)
        elif kind == 3 and data:                                 # a run deleted
            del data[pos:pos + rng.randrange(1, 16)]
        elif kind == 4:                                          # truncated
            del data[pos:]
        elif kind == 5:                                          # a run duplicated
            run = data[pos:pos + rng.randrange(1, 64)]
            data[pos:pos] = run * rng.randrange(1, 8)
        elif kind == 6:                                          # spliced with another seed
            other = rng.choice(seeds)
            data[pos:] = other[rng.randrange(len(other) + 1):]
        else:                                                    # a field grown 100-1000x
            run = data[pos:pos + rng.randrange(1, 8)] or b"A"
            data[pos:pos] = run * rng.randrange(100, 1000)
    return bytes(data)


def send_in_pieces(rng: random.Random, sock, data: bytes) -> None:
    if rng.random() < 0.7 or len(data) < 2:
        sock.sendall(data)
        return
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(1, 5))))
    last = 0
    for cut in [*cuts, len(data)]:
        sock.sendall(data[last:cut])
        last = cut


def drain(sock, seconds: float) -> bytes:
    sock.settimeout(seconds)
    out = b""
    try:
        while len(out) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    except (TimeoutError, OSError):
        pass
    return out


# ---- the node under test --------------------------------------------------------------------

class Node:
    def __init__(self, root: Path) -> None:
        data = root / "node"
        (data / "certs").mkdir(parents=True)
        ca = root / "ca"
        pki.make_ca(ca)
        pki.issue(ca, data / "certs" / "localhost.crt", data / "certs" / "localhost.key", ["localhost", "127.0.0.1"])
        (data / "mesh").mkdir()
        (data / "mesh" / "ca.crt").write_bytes((ca / "ca.crt").read_bytes())
        pki.issue(ca, data / "mesh" / "node.crt", data / "mesh" / "node.key", ["127.0.0.1"], node_id="fuzz-node")
        pki.issue(ca, root / "fuzzer.crt", root / "fuzzer.key", ["127.0.0.1"], node_id="fuzzer")
        self.ca, self.root = ca / "ca.crt", root
        config = data / "farts.toml"
        config.write_text(node_config(data))
        self.log_path = data / "node.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "farts.cli", "serve", "--config", str(config)],
                                     stdout=subprocess.PIPE, stderr=open(self.log_path, "wb"),  # noqa: SIM115
                                     cwd=ROOT)
        self.urls: dict[str, tuple[str, int]] = {}
        out, deadline = b"", time.monotonic() + 60
        while b"Ctrl-C stops the node." not in out and time.monotonic() < deadline and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 0.5)[0]:
                out += os.read(self.proc.stdout.fileno(), 65536)
        if b"Ctrl-C stops the node." not in out:
            self.stop()
            raise SystemExit(f"the node did not start:\n{out.decode(errors='replace')}\n{self.log_path.read_text()}")
        for line in out.splitlines():
            m = URL_LINE.match(line)
            if m:
                host, port = re.match(r"\w+://\[?([^\]/]+?)\]?:(\d+)", m.group(2).decode()).groups()
                self.urls[m.group(1).decode()] = (host, int(port))

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def tracebacks(self) -> int:
        return self.log_path.read_text(errors="replace").count("Traceback")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Clients:
    """Connections to each listener, for the fuzz inputs and the health checks."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.tls = ssl.create_default_context(cafile=str(node.ca))
        self.mesh_tls = ssl.create_default_context(cafile=str(node.ca))
        self.mesh_tls.load_cert_chain(node.root / "fuzzer.crt", node.root / "fuzzer.key")

    def tcp(self, name: str) -> socket.socket:
        s = socket.create_connection(self.node.urls[name], timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def https(self) -> socket.socket:
        return self.tls.wrap_socket(self.tcp("https"), server_hostname="localhost")

    def ws(self) -> socket.socket:
        s = self.tcp("http")
        s.sendall(WS_HANDSHAKE)
        head = drain_until(s, b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise OSError(f"no WebSocket handshake: {head[:80]!r}")
        return s

    def mesh(self) -> socket.socket:
        s = self.mesh_tls.wrap_socket(self.tcp("mesh"), server_hostname="127.0.0.1")
        host, port = self.node.urls["mesh"]
        s.sendall(Hello("fuzzer", "fuzz", 0.0, 0.0, (), f"{host}:1", (int(time.time() * 1000), 0), 0).encode())
        return s

    def db(self, authenticated: bool) -> socket.socket:
        s = self.tcp("db")
        if authenticated:
            scram_login(s, "fuzz", "fuzz-secret")
        return s

    def dns_query(self, wire: bytes, tcp: bool, wait: float = 1.0) -> bytes:
        if tcp:
            with self.tcp("dns") as s:
                s.sendall(struct.pack(">H", len(wire)) + wire)
                return drain(s, wait)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.settimeout(wait)
            s.sendto(wire, self.node.urls["dns"])
            return s.recv(65536)
        finally:
            s.close()

    def healthy(self) -> list[str]:
        """What does not answer a normal request, by listener (empty: all is well)."""
        bad = []
        checks = {
            "http": lambda: self._http_ok(self.tcp("http")),
            "https": lambda: self._http_ok(self.https()),
            "ws": lambda: self.ws().close() or True,
            "dns": lambda: len(self.dns_query(dns_seeds()[0], False)) > 12,
            "dns-tcp": lambda: len(self.dns_query(dns_seeds()[0], True)) > 12,
            "db": lambda: self._db_ok(),
            "mesh": lambda: self._admin_mesh_ok(),
        }
        for name, check in checks.items():
            try:
                if not check():
                    bad.append(name)
            except OSError as e:
                bad.append(f"{name} ({e})")
        return bad

    def _http_ok(self, s) -> bool:
        with s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            return drain(s, 3.0).startswith(b"HTTP/1.1 200")

    def _db_ok(self) -> bool:
        with self.db(True) as s:
            s.sendall(op_msg({"ping": 1, "$db": "admin"}, 99))
            return b"ok" in drain_until(s, b"ok")

    def _admin_mesh_ok(self) -> bool:
        with self.tcp("admin") as s:
            s.sendall(b"GET /api/mesh HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return drain(s, 3.0).startswith(b"HTTP/1.1 200")


def drain_until(s: socket.socket, marker: bytes, seconds: float = 5.0) -> bytes:
    s.settimeout(seconds)
    out = b""
    while marker not in out:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


def read_msg(s: socket.socket) -> dict:
    head = b""
    while len(head) < 16:
        chunk = s.recv(16 - len(head))
        if not chunk:
            raise OSError("closed")
        head += chunk
    length = struct.unpack_from("<i", head)[0]
    body = b""
    while len(body) < length - 16:
        chunk = s.recv(length - 16 - len(body))
        if not chunk:
            raise OSError("closed")
        body += chunk
    return bson.decode(body[5:])


def scram_login(s: socket.socket, user: str, password: str) -> None:
    """SCRAM-SHA-256 (RFC 5802/7677) on a raw socket, as a driver does it."""
    nonce = base64.b64encode(os.urandom(18)).decode()
    s.sendall(op_msg({"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": f"n,,n={user},r={nonce}".encode(),
                      "$db": "admin"}, 1))
    r = read_msg(s)
    final = scram.client_final(user, password, nonce, bytes(r["payload"]).decode())
    s.sendall(op_msg({"saslContinue": 1, "conversationId": r["conversationId"], "payload": final.encode(),
                      "$db": "admin"}, 2))
    r = read_msg(s)
    if not r.get("done"):
        s.sendall(op_msg({"saslContinue": 1, "conversationId": r["conversationId"], "payload": b"",
                          "$db": "admin"}, 3))
        r = read_msg(s)
    if not r.get("done") or r.get("ok") != 1.0:
        raise OSError(f"SCRAM login failed: {r}")


# ---- the run --------------------------------------------------------------------------------

def fuzz_one(rng: random.Random, clients: Clients, name: str) -> None:
    """One input on one fresh connection (UDP: one datagram)."""
    if name == "dns-udp":
        clients.dns_query(mutate(rng, dns_seeds()), tcp=False, wait=0.02)
        return
    if name == "dns-tcp":
        data = mutate(rng, dns_seeds())
        framed = struct.pack(">H", len(data) & 0xFFFF) + data if rng.random() < 0.8 else data
        s = clients.tcp("dns")
    elif name in ("http", "https"):
        framed = mutate(rng, http_seeds())
        s = clients.tcp("http") if name == "http" else clients.https()
    elif name == "ws":
        s = clients.ws()
        framed = mutate(rng, ws_seeds())
    elif name.startswith("db"):
        s = clients.db(name == "db-auth")
        framed = mutate(rng, db_seeds(name == "db-auth"))
    else:
        s = clients.mesh()
        framed = mutate(rng, mesh_seeds())
    with s:
        send_in_pieces(rng, s, framed)
        drain(s, 0.01)


def run(args) -> int:
    rng = random.Random(args.seed)
    results = Path(tempfile.mkdtemp(prefix="farts-fuzz-"))
    node = Node(results)
    clients = Clients(node)
    rows, failures = [], 0
    print(f"fuzz: node pid {node.proc.pid}, results {results}, seed {args.seed}, "
          f"{args.seconds:g} s per listener", flush=True)
    try:
        bad = clients.healthy()
        if bad:
            raise SystemExit(f"the node is not healthy before fuzzing: {bad}")
        tracebacks = node.tracebacks()
        for name in args.only:
            sent = bursts = failed = errors = 0
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                burst_end = min(end, time.monotonic() + 1.0)
                state = rng.getstate()
                while time.monotonic() < burst_end:
                    try:
                        fuzz_one(rng, clients, name)
                    except (OSError, ValueError):
                        errors += 1   # refused or reset: the node's right
                    sent += 1
                bursts += 1
                bad = clients.healthy()
                tb = node.tracebacks()
                rss = node.rss_mb()
                if bad or tb > tracebacks or rss > args.rss_mb or node.proc.poll() is not None:
                    failed += 1
                    why = f"unhealthy {bad}" if bad else f"{tb - tracebacks} new traceback(s)" if tb > tracebacks \
                        else f"RSS {rss:.0f} MB over {args.rss_mb}" if rss > args.rss_mb else "the node exited"
                    (results / f"failure-{name}-{bursts}.state").write_text(repr(state))
                    print(f"  {name}: burst {bursts}: {why} (generator state saved)", flush=True)
                    tracebacks = tb
                    if node.proc.poll() is not None:
                        break
            rows.append((name, sent, errors, bursts, failed, node.rss_mb()))
            failures += failed
            print(f"  {name:10} {sent:7} inputs ({errors} refused/reset), {bursts} bursts, {failed} failed, "
                  f"RSS {node.rss_mb():.0f} MB", flush=True)
            if node.proc.poll() is not None:
                break
    finally:
        node.stop()
    print("\n| listener | inputs | refused or reset | bursts | failed bursts | RSS after (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, sent, errors, bursts, failed, rss in rows:
        print(f"| {name} | {sent:,} | {errors:,} | {bursts} | {failed} | {rss:.0f} |")
    print(f"\nfailures: {failures} (log: {node.log_path})")
    return 1 if failures else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0, help="per listener")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rss-mb", type=float, default=400.0, help="the node's RSS bound")
    p.add_argument("--only", default=",".join(LISTENERS))
    p.add_argument("--smoke", action="store_true", help="2 s per listener")
    args = p.parse_args()
    args.only = [x for x in args.only.split(",") if x]
    for x in args.only:
        if x not in LISTENERS:
            p.error(f"--only: unknown listener {x!r} (known: {', '.join(LISTENERS)})")
    if args.smoke:
        args.seconds = 2.0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
