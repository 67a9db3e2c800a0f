"""The GeoIP rebuild: the master's download (a real HTTP server on loopback serving a
tar.gz of a test database and its .sha256, through the node's Client), and the
database's way to every node over the mesh (GeoShare over an in-memory mesh whose
messages go through their wire form)."""
from __future__ import annotations

import asyncio
import hashlib
import http.server
import io
import tarfile
import tempfile
import threading
from pathlib import Path

import msgpack
import pytest
from mmdb_writer import MmdbF64, MMDBWriter
from netaddr import IPSet

from farts import transfer
from farts.clock import FakeClock, LoopClock
from farts.master import geoshare
from farts.master.config import GeoIPConfig
from farts.master.geoip import (
    DownloadError,
    GeoIPRebuild,
    companion_url,
    extract_mmdb,
    parse_sha256,
)
from farts.master.geoshare import GeoAsk, GeoChunk, GeoOffer, GeoShare, Published
from farts.members import ALIVE, Member, MemberMap
from farts.metrics import Metrics
from farts.peer import BadMessage, Envelope
from farts.transport.client import Client

EU, ASIA = (50.11, 8.68), (1.35, 103.82)


def mmdb(where: tuple[float, float], kind: str = "GeoLite2-City", padding: int = 0) -> bytes:
    """A database placing 10.0.0.0/8 at ``where`` (``padding`` more networks: a bigger file)."""
    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=kind)
    w.insert_network(IPSet(["10.0.0.0/8"]), {"location": {"latitude": MmdbF64(where[0]),
                                                          "longitude": MmdbF64(where[1])},
                                             "continent": {"code": "EU"}})
    for i in range(padding):
        w.insert_network(IPSet([f"{20 + i // 250}.{i % 250}.0.0/16"]),
                         {"location": {"latitude": MmdbF64(i % 80), "longitude": MmdbF64(i % 170)},
                          "city": {"names": {"en": f"city number {i} " + "x" * 40}}})
    with tempfile.TemporaryDirectory() as d:
        w.to_db_file(f"{d}/x.mmdb")
        return Path(f"{d}/x.mmdb").read_bytes()


def targz(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def sha_line(data: bytes, name: str = "GeoLite2-City_20261205.tar.gz") -> bytes:
    return f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode()


class Files:
    """A loopback HTTP server of path -> bytes (a str value: a redirect to that path);
    ``got`` records the paths asked for, query strings included."""

    def __init__(self, files: dict) -> None:
        self.files, self.got = files, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.got.append(self.path)
                value = outer.files.get(self.path.split("?")[0] + ("?sha" if "sha256" in self.path else ""))
                if isinstance(value, str):
                    self.send_response(302)
                    self.send_header("location", value)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.send_response(404 if value is None else 200)
                self.send_header("content-length", str(len(value or b"")))
                self.end_headers()
                self.wfile.write(value or b"")

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, archive: bytes, checksum: bytes | None = None) -> None:
        """The archive at /db (and its MaxMind-style checksum at /db?...suffix=tar.gz.sha256)."""
        self.files["/db"] = archive
        self.files["/db?sha"] = sha_line(archive) if checksum is None else checksum

    def close(self) -> None:
        self.server.shutdown()


# ---- the archive --------------------------------------------------------------------------


def test_companion_and_checksum_lines():
    assert companion_url("https://x/app/geoip_download?edition_id=GeoLite2-City&license_key=K&suffix=tar.gz") == \
        "https://x/app/geoip_download?edition_id=GeoLite2-City&license_key=K&suffix=tar.gz.sha256"
    assert companion_url("https://mirror.example/GeoLite2-City.tar.gz") == \
        "https://mirror.example/GeoLite2-City.tar.gz.sha256"
    assert parse_sha256(b"AB" * 32 + b"  GeoLite2-City_20261205.tar.gz\n") == "ab" * 32
    for bad in (b"", b"<html>not found</html>", b"abc  file"):
        with pytest.raises(DownloadError, match="SHA-256"):
            parse_sha256(bad)


def test_extract_checks_the_digest_the_members_and_the_type(tmp_path):
    db = mmdb(EU)
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(targz({"GeoLite2-City_20261205/COPYRIGHT.txt": b"c", "GeoLite2-City_20261205/GeoLite2-City.mmdb": db}))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    path, sha, kind = extract_mmdb(archive, digest, tmp_path, "GeoLite2-City", 1 << 20)
    assert path.read_bytes() == db and sha == hashlib.sha256(db).hexdigest() and kind == "GeoLite2-City"
    assert path == tmp_path / f"{sha}.mmdb"
    with pytest.raises(DownloadError, match="checksum file says"):
        extract_mmdb(archive, "0" * 64, tmp_path, "", 1 << 20)
    with pytest.raises(DownloadError, match="'GeoLite2-City', master.geoip.database_type says 'GeoIP2-Country'"):
        extract_mmdb(archive, digest, tmp_path, "GeoIP2-Country", 1 << 20)
    with pytest.raises(DownloadError, match="max_bytes"):
        extract_mmdb(archive, digest, tmp_path, "", 100)
    for name, data in (("none.tar.gz", targz({"README": b"x"})), ("junk.tar.gz", b"not gzip at all"),
                       ("bad.tar.gz", targz({"x/GeoLite2-City.mmdb": b"not a database"}))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DownloadError, match="0 .mmdb files|not a readable"):
            extract_mmdb(tmp_path / name, hashlib.sha256(data).hexdigest(), tmp_path, "", 1 << 20)
    assert sorted(p.name for p in tmp_path.glob("*.mmdb")) == [f"{sha}.mmdb"]   # nothing half-written left


# ---- the database between nodes --------------------------------------------------------------


class Mesh:
    """In-memory links between PeerBus objects: a message is packed (msgpack) and
    unpacked (from_wire) and delivered on the loop, as the mesh's Bus would."""

    def __init__(self) -> None:
        self.buses: dict[str, Bus] = {}
        self.tamper = None      # (to, msg) -> msg, applied to what is sent
        self.sent: list = []


class Bus:
    def __init__(self, mesh: Mesh, me: str) -> None:
        self.mesh, self.me = mesh, me
        self.map = MemberMap()
        self.subs: dict[type, list] = {}
        mesh.buses[me] = self

    def members(self):
        return self.map.members()

    def on_member_change(self, fn):
        return self.map.on_change(fn)

    def subscribe(self, cls, fn):
        self.subs.setdefault(cls, []).append(fn)
        return lambda: self.subs[cls].remove(fn)

    def send(self, to: str, msg) -> bool:
        peer = self.mesh.buses.get(to)
        if peer is None:
            return False
        if self.mesh.tamper is not None:
            msg = self.mesh.tamper(to, msg)
        self.mesh.sent.append((self.me, to, msg))
        wire = msgpack.packb(msg.to_wire())
        asyncio.get_running_loop().call_soon(peer.deliver, type(msg), wire, self.me)
        return True

    def broadcast(self, msg) -> int:
        return sum(self.send(n, msg) for n in list(self.mesh.buses) if n != self.me)

    def deliver(self, cls, wire: bytes, origin: str) -> None:
        msg = cls.from_wire(msgpack.unpackb(wire))
        for fn in list(self.subs.get(cls, ())):
            fn(msg, Envelope(origin))


class DNSStandIn:
    """What node.py hands GeoShare: swap(path) builds and swaps, or raises."""

    def __init__(self, refuse: bool = False) -> None:
        self.paths: list[str] = []
        self.refuse = refuse

    async def swap(self, path: str) -> None:
        if self.refuse:
            raise ValueError("not a database this node can index")
        self.paths.append(path)


def shares(tmp_path: Path, ids, clock=None, refuse=()) -> tuple[Mesh, dict[str, GeoShare], dict[str, DNSStandIn]]:
    mesh, out, dns = Mesh(), {}, {}
    for i in ids:
        dns[i] = DNSStandIn(i in refuse)
        out[i] = GeoShare(i, tmp_path / i / "geoip", clock or LoopClock(), Metrics(), dns[i].swap)
        out[i].attach(Bus(mesh, i))
    return mesh, out, dns


async def publish(share: GeoShare, data: bytes, published: float) -> Published:
    d = Published(hashlib.sha256(data).hexdigest(), len(data), published, "GeoLite2-City")
    share.directory.mkdir(parents=True, exist_ok=True)
    share.path(d).write_bytes(data)
    await share.install(d, offer=True)
    return d


async def until(check, seconds: float = 20) -> bool:
    for _ in range(int(seconds / 0.02)):
        if check():
            return True
        await asyncio.sleep(0.02)
    return check()


def test_a_published_database_reaches_every_node_in_chunks_and_a_newer_one_replaces_it(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "CHUNK", 4096)
    big = mmdb(EU, padding=500)
    assert len(big) > 2 * transfer.WINDOW * transfer.CHUNK      # chunks for more than two windows
    newer = mmdb(ASIA)

    async def main():
        mesh, s, dns = shares(tmp_path, ["a", "b", "c"])
        d = await publish(s["a"], big, 100.0)
        assert await until(lambda: all(x.current == d for x in s.values())), {i: x.current for i, x in s.items()}
        for i in "bc":
            assert Path(dns[i].paths[-1]).read_bytes() == big
            assert geoshare.published_database(tmp_path / i / "geoip") == dns[i].paths[-1]
        asks = [m for _, _, m in mesh.sent if isinstance(m, GeoAsk)]
        assert sorted(m.index for m in asks) == sorted(list(range(d.blob().chunks())) * 2)   # each chunk once per node
        assert s["b"].events.get(("installed",)) == 1
        # An older offer (or the same again) changes nothing; a newer one replaces it, the old file goes.
        s["c"].on_offer(GeoOffer(Published("f" * 64, 10, 50.0, "x")), Envelope("a"))
        assert s["c"].transfer is None
        d2 = await publish(s["b"], newer, 200.0)
        assert await until(lambda: all(x.current == d2 for x in s.values()))
        assert [p.name for p in (tmp_path / "a" / "geoip").glob("*.mmdb")] == [f"{d2.sha256}.mmdb"]

    asyncio.run(main())


def test_a_node_that_comes_alive_is_offered_the_database(tmp_path):
    async def main():
        mesh, s, dns = shares(tmp_path, ["a", "b"])
        data = mmdb(EU)   # (once: the writer stamps its build time, so two calls may differ)
        d = await publish(s["a"], data, 100.0)
        assert await until(lambda: s["b"].current == d)
        late = GeoShare("c", tmp_path / "c" / "geoip", LoopClock(), Metrics(), None)   # (no DNS on it)
        late.attach(Bus(mesh, "c"))
        mesh.buses["a"].map.update(Member("c", state=ALIVE))
        assert await until(lambda: late.current == d)
        assert late.path(d).read_bytes() == data

    asyncio.run(main())


def test_a_corrupted_transfer_and_a_database_the_node_refuses_leave_the_old_one(tmp_path):
    async def main():
        mesh, s, dns = shares(tmp_path, ["a", "b", "c"], refuse=("c",))
        old = mmdb(EU)
        d = Published(hashlib.sha256(old).hexdigest(), len(old), 50.0, "GeoLite2-City")
        for i in "bc":
            s[i].directory.mkdir(parents=True)
            s[i].path(d).write_bytes(old)
            s[i]._record(d)
            s[i].current = d
        mesh.tamper = lambda to, m: (GeoChunk(m.sha256, m.index, bytes([m.data[0] ^ 1]) + m.data[1:])
                                     if isinstance(m, GeoChunk) and to == "b" else m)
        await publish(s["a"], mmdb(ASIA), 100.0)
        assert await until(lambda: s["b"].events.get(("digest",)) == 1 and s["c"].events.get(("refused",)) == 1)
        for i in "bc":
            assert s[i].current == d and geoshare.published_database(s[i].directory) == str(s[i].path(d))
            assert [p.name for p in s[i].directory.glob("*.mmdb")] == [f"{d.sha256}.mmdb"]

    asyncio.run(main())


def test_a_stalled_transfer_is_asked_again_then_dropped():
    async def main():
        clock = FakeClock()
        mesh, s, _ = shares(Path("/nonexistent"), ["b"], clock)
        s["b"].on_offer(GeoOffer(Published("a" * 64, 3 * transfer.CHUNK, 100.0, "x")), Envelope("gone"))
        t = s["b"].transfer
        assert t is not None and t.asked == {0, 1, 2}
        for _ in range(transfer.STALL_TRIES):
            clock.advance(transfer.STALL)
            assert s["b"].transfer is t
        clock.advance(transfer.STALL)
        assert s["b"].transfer is None and s["b"].events.get(("stalled",)) == 1

    asyncio.run(main())


def test_bad_messages_are_refused():
    for cls, body in ((GeoOffer, {"sha256": "x", "size": 1, "published": 1.0, "database_type": "t"}),
                      (GeoOffer, {"sha256": "a" * 64, "size": -1, "published": 1.0, "database_type": "t"}),
                      (GeoAsk, {"sha256": "a" * 64, "index": -1}),
                      (GeoChunk, {"sha256": "a" * 64, "index": 0, "data": b"x" * (transfer.CHUNK + 1)}),
                      (GeoChunk, {"sha256": "a" * 64, "index": 0, "data": "text"}), (GeoAsk, [])):
        with pytest.raises(BadMessage):
            cls.from_wire(body)


# ---- the master's download -----------------------------------------------------------------


def rebuild(tmp_path: Path, url: str, share: GeoShare, **kw) -> GeoIPRebuild:
    cfg = GeoIPConfig(url=url, database_type="GeoLite2-City", **kw)
    return GeoIPRebuild(cfg, Client(LoopClock()), share, LoopClock())


def test_download_checked_installed_and_offered_and_a_bad_one_changes_nothing(tmp_path):
    files = Files({"/permalink": "/db", "/permalink?sha": "/db?suffix=tar.gz.sha256"})
    good = mmdb(EU)
    files.serve(targz({"GeoLite2-City_20261205/GeoLite2-City.mmdb": good}))

    async def main():
        mesh, s, dns = shares(tmp_path, ["master", "b"])
        url = files.url + "/permalink?edition_id=GeoLite2-City&license_key={license_key}&suffix=tar.gz"
        task = rebuild(tmp_path, url, s["master"], license_key="SECRET")
        await task.run()
        sha = hashlib.sha256(good).hexdigest()
        assert s["master"].current.sha256 == sha and s["master"].current.database_type == "GeoLite2-City"
        assert await until(lambda: s["b"].current == s["master"].current)
        assert "license_key=SECRET" in files.got[0] and files.got[0].endswith("suffix=tar.gz.sha256")
        offers = sum(isinstance(m, GeoOffer) for _, _, m in mesh.sent)
        await task.run()                      # the same database again: nothing published
        assert sum(isinstance(m, GeoOffer) for _, _, m in mesh.sent) == offers
        before = s["master"].current
        bad_cases = [
            (targz({"x/GeoLite2-City.mmdb": mmdb(ASIA)}), b"0" * 64 + b"  x\n", "checksum file says"),
            (targz({"x/GeoLite2-City.mmdb": mmdb(ASIA, "GeoIP2-Country")}), None, "database_type"),
            (b"<html>rate limited</html>", None, "not a readable"),
        ]
        for archive, checksum, why in bad_cases:
            files.serve(archive, checksum)
            with pytest.raises(DownloadError, match=why):
                await task.run()
        del files.files["/db"]
        with pytest.raises(DownloadError, match=r"HTTP 404"):
            await task.run()
        with pytest.raises(DownloadError, match="no licence key"):
            await rebuild(tmp_path, url, s["master"], license_key_env="FARTS_TEST_NO_SUCH_VARIABLE").run()
        assert s["master"].current == before and s["b"].current == before
        assert len(dns["master"].paths) == len(dns["b"].paths) == 1     # swapped once, at the good download
        assert {p.name for p in s["master"].directory.iterdir()} == {"current.json", f"{sha}.mmdb"}

    try:
        asyncio.run(main())
    finally:
        files.close()
