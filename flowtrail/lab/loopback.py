"""TCP connections made inside the test's own process: a connected pair and an exchange.

For kernel tests that need real sockets but no namespace of their own (loopback, or any address
this process can reach). Each test closes what it gets; nothing here keeps state.
"""

from __future__ import annotations

import socket

from flowtrail.lab.peer import recv_exact


def tcp_pair(family: int, host: str) -> tuple[socket.socket, socket.socket, socket.socket]:
    """(listener, client, accepted) on `host`, connected, in this process."""
    listener = socket.socket(family)
    listener.bind((host, 0))
    listener.listen(8)
    client = socket.create_connection(listener.getsockname()[:2])
    accepted, _ = listener.accept()
    return listener, client, accepted


def exchange(client: socket.socket, server: socket.socket, up: int, down: int) -> None:
    """`up` bytes from client to server, then `down` bytes back, each read in full."""
    client.sendall(b"u" * up)
    recv_exact(server, up)
    server.sendall(b"d" * down)
    recv_exact(client, down)
