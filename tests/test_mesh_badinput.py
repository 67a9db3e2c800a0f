"""Bad input at a live node's mesh port: each connection is refused (or its link
closed), counted by reason, and the two-node mesh keeps working throughout."""
from __future__ import annotations

import socket
import ssl
import struct

import pytest
from mesh_helpers import make_ca, mesh_address, metric, start_mesh_node, states, wait_for

from farts import pki
from farts.mesh.frames import SWIM, FrameReader, Hello, encode


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("mesh-bad")
    ca = make_ca(root)
    n1 = start_mesh_node(root, ca, "node-1", [])
    n2 = start_mesh_node(root, ca, "node-2", [mesh_address(n1)])
    assert wait_for(lambda: states(n1).get("node-2", ("",))[0] == "alive", 15)
    yield root, ca, n1, n2
    n1.stop()
    n2.stop()


def connect(node, cert=None, key=None, ca=None) -> ssl.SSLSocket:
    host, port = mesh_address(node).rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we are the bad client here: we do not care who answers
    if cert:
        ctx.load_cert_chain(cert, key)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return ctx.wrap_socket(sock)


def closed_by_peer(sock: ssl.SSLSocket) -> bool:
    """Reads until the server closes; True if it did (EOF or a reset/alert), within the timeout."""
    try:
        while sock.recv(65536):
            pass
        return True
    except (ssl.SSLError, ConnectionError):
        return True
    except TimeoutError:
        return False
    finally:
        sock.close()


def issue(root, ca_dir, name, node_id=None):
    d = root / "clients" / name
    pki.issue(ca_dir, d / "c.crt", d / "c.key", ["127.0.0.1"], client=True, node_id=node_id)
    return str(d / "c.crt"), str(d / "c.key")


def still_working(n1, n2):
    return wait_for(lambda: states(n1).get("node-2", ("",))[0] == "alive"
                    and states(n2).get("node-1", ("",))[0] == "alive", 10)


def test_client_without_certificate_is_refused(cluster):
    _, _, n1, n2 = cluster
    before = metric(n1, "farts_mesh_links_refused_total", 'reason="tls"')
    assert closed_by_peer(connect(n1))
    assert wait_for(lambda: metric(n1, "farts_mesh_links_refused_total", 'reason="tls"') == before + 1, 5)
    assert still_working(n1, n2)


def test_certificate_from_another_ca_is_refused(cluster, tmp_path):
    _, _, n1, n2 = cluster
    other = tmp_path / "other-ca"
    pki.make_ca(other)
    cert, key = issue(tmp_path, other, "stranger", node_id="node-2")  # even with a member's id
    before = metric(n1, "farts_mesh_links_refused_total", 'reason="tls"')
    assert closed_by_peer(connect(n1, cert, key))
    assert wait_for(lambda: metric(n1, "farts_mesh_links_refused_total", 'reason="tls"') == before + 1, 5)
    assert still_working(n1, n2)


def hello(node_id: str) -> bytes:
    return Hello(node_id, "x", 0.0, 0.0, (), "127.0.0.1:1", (0, 0), 0).encode()


@pytest.mark.parametrize("case, cert_id, send, reason", [
    ("garbage", "intruder", b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1", "garbage"),
    ("oversized", "intruder", struct.pack(">I", 64 * 1024 * 1024) + b"x" * 100, "oversized"),
    ("unknown type first", "intruder", encode(42, [1, 2]), "unknown_type"),
    ("no hello first", "intruder", encode(SWIM, ["ping", 1, []]), "no_hello"),
    ("claims another id", "intruder", hello("node-2"), "id_mismatch"),
    ("no node id in cert", None, hello("node-3"), "no_node_id"),
])
def test_bad_frames_before_the_hello_are_refused(cluster, case, cert_id, send, reason):
    root, ca_dir, n1, n2 = cluster
    cert, key = issue(root, ca_dir, case.replace(" ", "-"), node_id=cert_id)
    before = metric(n1, "farts_mesh_links_refused_total", f'reason="{reason}"')
    sock = connect(n1, cert, key)
    if cert_id is None:  # refused on the certificate alone, before the node says anything
        assert closed_by_peer(sock)
    else:
        theirs = FrameReader(1 << 20).feed(sock.recv(65536))  # the node says HELLO first
        assert theirs[0][1].id == "node-1"
        sock.sendall(send)
        assert closed_by_peer(sock)
    assert wait_for(lambda: metric(n1, "farts_mesh_links_refused_total", f'reason="{reason}"') == before + 1, 5)
    assert "intruder" not in states(n1) and "node-3" not in states(n1)
    assert still_working(n1, n2)


@pytest.mark.parametrize("send, reason", [
    (b"\x00\x00\x00\x02\xc1\xc1", "garbage"),
    (struct.pack(">I", 2 * 1024 * 1024), "oversized"),
    (encode(7, None), "unknown_type"),
    (encode(SWIM, ["no-such-message"]), "bad_swim"),
])
def test_bad_frames_on_an_established_link_close_it(cluster, send, reason):
    """A member with a valid certificate that then misbehaves loses its link (and, as it
    never answers a probe again, its membership); the others are not disturbed."""
    root, ca_dir, n1, n2 = cluster
    cert, key = issue(root, ca_dir, "member-9", node_id="node-9")
    before = metric(n1, "farts_mesh_links_closed_total", f'reason="{reason}"')
    sock = connect(n1, cert, key)
    FrameReader(1 << 20).feed(sock.recv(65536))
    sock.sendall(hello("node-9"))
    assert wait_for(lambda: "node-9" in states(n1), 5)
    sock.sendall(send)
    assert closed_by_peer(sock)
    assert wait_for(lambda: metric(n1, "farts_mesh_links_closed_total", f'reason="{reason}"') == before + 1, 5)
    assert wait_for(lambda: states(n1)["node-9"][0] == "dead", 15)
    assert still_working(n1, n2)


def test_incoming_connections_over_the_per_ip_cap_are_refused(tmp_path):
    """The mesh listener's admission is the listener kit's: with a cap of one connection
    per address, a second connection from it is refused and counted (in-process)."""
    import asyncio

    from farts.clock import FakeClock
    from farts.mesh.link import LinkManager, LinkStats, tls_contexts
    from farts.metrics import Metrics

    ca_dir = tmp_path / "ca"
    pki.make_ca(ca_dir)
    crt, key = pki.issue_node(ca_dir, tmp_path / "me", "node-a", ["127.0.0.1"])
    peer_crt, peer_key = pki.issue_node(ca_dir, tmp_path / "peer", "node-b", ["127.0.0.1"])
    server_ctx, _ = tls_contexts(ca_dir / "ca.crt", crt, key)
    _, client_ctx = tls_contexts(ca_dir / "ca.crt", peer_crt, peer_key)

    async def main() -> None:
        stats = LinkStats(Metrics())
        hello = Hello("node-a", "r", 0.0, 0.0, (), "127.0.0.1:1", (0, 0), 1)
        mgr = LinkManager("node-a", server_ctx, client_ctx, lambda: hello, stats, max_frame_bytes=1 << 20,
                          queue_max_bytes=1 << 20, handshake_timeout=30, reconnect_min=1, reconnect_max=2,
                          on_up=print, on_down=print, on_frame=print, clock=FakeClock(),
                          max_incoming_per_ip=1)
        host, port = await mgr.listen("127.0.0.1", 0)
        try:
            # The first peer holds its place: TLS done, its HELLO not sent yet.
            first = await asyncio.open_connection(host, port, ssl=client_ctx, server_hostname=host)
            second = await asyncio.open_connection(host, port, ssl=client_ctx, server_hostname=host)
            with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(second[0].readexactly(1), 5)
            assert stats.refused.get(("max_connections_per_ip",)) == 1
            assert stats.connections.refused.get(("mesh", "max_connections_per_ip")) == 1
            assert mgr.kit.open == 1
            for _, w in (first, second):
                w.transport.abort()
        finally:
            await mgr.close()

    asyncio.run(main())


def test_a_closed_link_manager_dials_nobody(tmp_path):
    """Once a node's mesh is closing (it left), a message heard after that which would
    dial a member again does nothing: a link from the going process would take the
    member's place in its peer's link table (in a handover, the peers' events would go
    to the old process).  In process: node-b listens, node-a dials it, closes, dials again."""
    import asyncio

    from farts.mesh.link import LinkManager, LinkStats, tls_contexts
    from farts.metrics import Metrics

    ca_dir = tmp_path / "ca"
    pki.make_ca(ca_dir)
    ctx = {}
    for me in ("node-a", "node-b"):
        crt, key = pki.issue_node(ca_dir, tmp_path / me, me, ["127.0.0.1"])
        ctx[me] = tls_contexts(ca_dir / "ca.crt", crt, key)

    def manager(me: str, stats: LinkStats) -> LinkManager:
        hello = Hello(me, "r", 0.0, 0.0, (), "127.0.0.1:1", (0, 0), 1)
        return LinkManager(me, *ctx[me], lambda: hello, stats, max_frame_bytes=1 << 20,
                           queue_max_bytes=1 << 20, handshake_timeout=30, reconnect_min=0.01,
                           reconnect_max=0.02, on_up=lambda link: None, on_down=lambda link: None,
                           on_frame=lambda link, kind, payload: None)

    async def main() -> None:
        b_stats = LinkStats(Metrics())
        b, a = manager("node-b", b_stats), manager("node-a", LinkStats(Metrics()))
        host, port = await b.listen("127.0.0.1", 0)
        try:
            a.dial("node-b", f"{host}:{port}", "node-b")
            for _ in range(500):
                if "node-a" in b.links:
                    break
                await asyncio.sleep(0.01)
            assert "node-a" in b.links
            await a.close()
            for _ in range(500):
                if "node-a" not in b.links:
                    break
                await asyncio.sleep(0.01)
            assert "node-a" not in b.links
            a.dial("node-b", f"{host}:{port}", "node-b")   # (a message heard while it stopped)
            assert not a._dialers                          # nothing started...
            await asyncio.sleep(0.3)                       # ...and nothing came of it
            assert "node-a" not in b.links and not a.links and b.kit.open == 0
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())
