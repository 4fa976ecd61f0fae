"""Connections spread over listener processes by load: placement, the hand-over of a
real TCP connection over SCM_RIGHTS, and siblings that are not running."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import threading

from node.network.balance import ListenerMesh


def _mesh(n: int = 2) -> ListenerMesh:
    mesh = ListenerMesh(multiprocessing.get_context("spawn"), n)
    for i in range(n):
        mesh.balancer(i).join()
    return mesh


def test_a_new_connection_goes_to_the_process_serving_fewest() -> None:
    mesh = _mesh(3)
    first, second = mesh.balancer(0), mesh.balancer(1)
    assert first.place() == 0  # a tie stays where it was accepted
    assert first.place() in (1, 2)
    assert first.place() in (1, 2)
    assert list(mesh.counts[:]) == [1, 1, 1]
    assert second.place() == 1
    assert list(mesh.counts[:]) == [1, 2, 1]
    second.done()
    second.done()
    second.done()  # never below zero
    assert list(mesh.counts[:]) == [1, 0, 1]


def test_a_sibling_that_is_not_running_gets_nothing() -> None:
    mesh = _mesh(2)
    gone = subprocess.Popen(["true"])
    gone.wait()
    mesh.pids[1] = gone.pid
    accepting = mesh.balancer(0)
    assert [accepting.place() for _ in range(3)] == [0, 0, 0]
    mesh.balancer(1).leave()
    assert accepting.place() == 0


def test_a_connection_handed_over_is_served_by_the_sibling() -> None:
    mesh = _mesh(2)
    accepting, sibling = mesh.balancer(0), mesh.balancer(1)
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=5)
        conn, address = server.accept()
        accepting.place()  # the first stays here
        target = accepting.place()
        assert target == 1
        assert accepting.hand_over(target, conn, address, tls=False)
        conn.close()  # the accepting process's copy
        served: list[tuple[socket.socket, tuple[str, int], bool]] = []
        stopping = threading.Event()

        def serve(sock: socket.socket, addr: tuple[str, int], tls: bool) -> None:
            served.append((sock, addr, tls))
            stopping.set()

        receiver = threading.Thread(target=sibling.receive, args=(serve, stopping))
        receiver.start()
        receiver.join(5)
        assert served, "the sibling did not take the connection"
        sock, addr, tls = served[0]
        assert addr == address and tls is False
        sock.sendall(b"hello from the sibling")
        assert client.recv(64) == b"hello from the sibling"
        sock.close()
        client.close()
    assert list(mesh.counts[:]) == [1, 1]


def test_a_message_without_a_connection_is_dropped_and_counted_back() -> None:
    mesh = _mesh(2)
    sibling = mesh.balancer(1)
    mesh.counts[1] = 1  # as a sender would have counted it
    read_end, write_end = os.pipe()
    socket.send_fds(mesh.outboxes[1], [b"P127.0.0.1 1"], [read_end])  # not a socket
    os.close(read_end)
    stopping = threading.Event()
    served: list[object] = []
    timer = threading.Timer(1.0, stopping.set)
    timer.start()
    sibling.receive(lambda *a: served.append(a), stopping)
    os.close(write_end)
    assert not served
    assert mesh.counts[1] == 0
