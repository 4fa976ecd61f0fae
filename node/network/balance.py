"""Spreading new connections over the listener processes by how many each serves.

The listener processes share the DICOM port with SO_REUSEPORT, and the kernel hands
each new connection to one of them by a hash of its addresses, not by load: four
senders starting at once landed three on one process of two about as often as not,
and that process, bound to one core by Python's GIL, set the pace for all of them
(measured: 304 images/s where the balanced node reaches 480). Here the process that
accepted a connection counts the open connections of every listener process (shared
memory) and, when a sibling has fewer, passes the connection's file descriptor to it
(SCM_RIGHTS over a Unix datagram socket the supervisor made) before reading a byte
of it. A sibling that is not running, or whose queue is full, is passed over.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_PLAIN, _TLS = b"P", b"T"


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not a zombie waiting for the supervisor)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


class ListenerMesh:
    """What the supervisor makes once for ``n`` listener processes and gives each one:
    the shared counts and process ids, and one datagram socket pair per process (the
    supervisor keeps both ends, so a connection passed to a process that is being
    restarted waits for it instead of being lost)."""

    def __init__(self, ctx: Any, n: int) -> None:
        self.counts = ctx.Array("i", n)  # open connections per process, with a lock
        self.pids = ctx.Array("i", n, lock=False)
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(n)]
        self.outboxes = [outbox for outbox, _ in pairs]
        self.inboxes = [inbox for _, inbox in pairs]

    def balancer(self, index: int) -> ConnectionBalancer:
        return ConnectionBalancer(self.counts, self.pids, index, self.outboxes, self.inboxes[index])


class ConnectionBalancer:
    """One listener process's side of the mesh."""

    def __init__(self, counts: Any, pids: Any, index: int, outboxes: list[socket.socket],
                 inbox: socket.socket) -> None:
        self._counts = counts
        self._pids = pids
        self.index = index
        self._outboxes = outboxes
        self._inbox = inbox

    def join(self) -> None:
        """This process serves from now on (a restarted one holds no connections)."""
        with self._counts.get_lock():
            self._counts[self.index] = 0
        self._pids[self.index] = os.getpid()

    def leave(self) -> None:
        """This process stops: no connection is placed on it any more."""
        self._pids[self.index] = 0

    def place(self) -> int:
        """The process that should serve a new connection: this one unless a running
        sibling serves fewer; counted for it at once."""
        with self._counts.get_lock():
            counts = self._counts[:]
            best = self.index
            for i, count in enumerate(counts):
                if count < counts[best] and i != self.index and _running(self._pids[i]):
                    best = i
            self._counts[best] += 1
        return best

    def done(self) -> None:
        """A connection this process served has ended."""
        with self._counts.get_lock():
            self._counts[self.index] = max(0, self._counts[self.index] - 1)

    def hand_over(self, target: int, client: socket.socket, address: tuple[str, int], tls: bool) -> bool:
        """Pass ``client`` to process ``target``; False (and counted back here) when its
        queue is full. The caller closes its own copy once it was passed."""
        message = (_TLS if tls else _PLAIN) + f"{address[0]} {address[1]}".encode()
        try:
            socket.send_fds(self._outboxes[target], [message], [client.fileno()], socket.MSG_DONTWAIT)
        except OSError:
            with self._counts.get_lock():
                self._counts[target] -= 1
                self._counts[self.index] += 1
            return False
        return True

    def receive(self, serve: Callable[[socket.socket, tuple[str, int], bool], None],
                stopping: threading.Event) -> None:
        """Take connections passed to this process and ``serve(sock, address, tls)``
        them, until ``stopping`` is set (run in a thread of its own)."""
        self._inbox.settimeout(0.5)
        while not stopping.is_set():
            try:
                message, fds, _flags, _ = socket.recv_fds(self._inbox, 256, 4)
            except TimeoutError:
                continue
            except OSError as exc:
                log.error("connections from sibling listener processes: %s", exc)
                return
            connection = self._adopt(message, fds)
            if connection is None:
                continue
            sock, address, tls = connection
            if stopping.is_set():
                sock.close()
                self.done()
                continue
            serve(sock, address, tls)

    def _adopt(self, message: bytes, fds: list[int]) -> tuple[socket.socket, tuple[str, int], bool] | None:
        """A passed connection as a socket (the sender counted it for this process), or
        None when the message is not one (what it carried is closed, the count given back)."""
        sock = None
        if len(fds) == 1 and message[:1] in (_PLAIN, _TLS):
            try:
                sock = socket.socket(fileno=fds[0])
            except OSError:  # not a socket
                sock = None
        address = None
        if sock is not None:
            try:
                host, port = message[1:].decode().split(" ")
                address = (host, int(port))
            except ValueError:
                address = None
        if sock is None or address is None or sock.type != socket.SOCK_STREAM \
                or sock.family not in (socket.AF_INET, socket.AF_INET6):
            if sock is not None:
                sock.close()
            else:
                for fd in fds:
                    os.close(fd)
            if fds:
                self.done()
            return None
        return sock, address, message[:1] == _TLS
