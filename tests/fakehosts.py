"""Hosts that misbehave on purpose, on 127.0.0.1 only: one refuses, one accepts and never answers.

Shared by the pool tests and bench/pool_vs_virsh.py, so both measure the same thing.
"""

from __future__ import annotations

import socket
import threading


def closed_port() -> int:
    """A loopback port nothing listens on: bind, note the port, close."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def silent_listener() -> tuple[socket.socket, list[socket.socket]]:
    """Accepts TCP connections and never says a word, like a wedged libvirtd; close both to end it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return listener, held
