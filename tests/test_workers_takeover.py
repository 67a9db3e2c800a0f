"""The listening sockets a restarted node with workers takes over (farts/workers/sockets.py
handed_over), fitted to its number of workers: real sockets on loopback, no process.
The restart itself, under load: tests/test_release_restart.py (with 1 and 2 workers)."""
from __future__ import annotations

import os
import socket

import pytest

from farts.transport import kit
from farts.workers.sockets import handed_over, reuseport_group


@pytest.fixture
def inherited():
    yield kit.inherited_sockets
    for sock in kit.inherited_sockets.values():
        sock.close()
    kit.inherited_sockets.clear()


def connect_all(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]


def accepted(group: list[socket.socket]) -> int:
    """Connections waiting in the group's queues (each socket's, once)."""
    total = 0
    for sock in {id(s): s for s in group}.values():
        sock.setblocking(False)
        while True:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                break
            conn.close()
            total += 1
    return total


@pytest.mark.parametrize("old, new", [(2, 2), (2, 3), (3, 1)])
def test_a_group_is_taken_over_and_fitted(inherited, old, new):
    group = reuseport_group("http", "127.0.0.1", 0, old)
    port = group[0].getsockname()[1]
    for i, sock in enumerate(group):
        inherited[f"workers.http.{i}"] = sock
    got = handed_over("http", new)
    assert len(got) == new and {s.getsockname()[1] for s in got} == {port}
    assert got[:min(old, new)] == group[:min(old, new)]
    assert all(s.fileno() == -1 for s in group[new:])   # the extra ones closed
    assert inherited == {}
    clients = connect_all(port, 20)   # the kernel spreads them over the group: all taken
    assert accepted(got) == 20
    for c in clients + got:
        c.close()


def test_one_socket_of_a_node_without_workers_is_shared_by_every_worker(inherited):
    sock = socket.create_server(("127.0.0.1", 0))
    inherited["https"] = sock
    got = handed_over("https", 3)
    assert got == [sock] * 3 and inherited == {}
    clients = connect_all(sock.getsockname()[1], 5)
    assert accepted(got) == 5
    for c in clients:
        c.close()
    sock.close()


def test_nothing_taken_over(inherited):
    inherited["admin"] = socket.create_server(("127.0.0.1", 0))
    assert handed_over("http", 2) is None and handed_over("db", 2) is None
    assert list(inherited) == ["admin"]


def test_hundreds_of_sockets_go_over_in_several_messages(tmp_path):
    """A node of many workers hands over more descriptors than one SCM_RIGHTS message
    carries (farts/release/handover.py send_sockets, _receive)."""
    import json
    import threading

    from farts.release.handover import MAX_FDS, _receive, send_sockets

    path = tmp_path / "handover.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    sent = [socket.socket() for _ in range(MAX_FDS + 47)]
    names = [f"workers.http.{i}" for i in range(len(sent))]

    def old_process():
        conn, _ = server.accept()
        assert json.loads(conn.makefile("rb").readline())["op"] == "takeover"
        send_sockets(conn, names, [s.fileno() for s in sent])
        conn.sendall(b'{"op": "released", "pubsub": null}\n')
        conn.close()

    t = threading.Thread(target=old_process)
    t.start()
    sock, got, fds, _ = _receive(path)
    t.join(10)
    assert got["names"] == names and len(fds) == len(sent)
    assert [os.fstat(fd).st_ino for fd in fds] == [os.fstat(s.fileno()).st_ino for s in sent]
    for fd in fds:
        os.close(fd)
    for s in [sock, server, *sent]:
        s.close()
