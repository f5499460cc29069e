"""One libvirt connection's life outside the pool's bookkeeping: the event loop it needs, alive or not, closing it.

Kept apart from the pool so each stays one job: these know libvirt's rules for a
single connection (events need the default loop registered before any open; a
connection with a lifecycle callback still registered is never freed by close).
"""

from __future__ import annotations

import os
import threading
from contextlib import suppress

import libvirt

from bot.config import test_file
from bot.hypervisor.transport import opened

_loop_lock = threading.Lock()
_loop_started = False


def start_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread, once.

    Keepalive, close callbacks, lifecycle events and console streams all need
    it, and it must be registered before the first connection opens.
    """
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no stderr noise
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_loop, name="libvirt-events", daemon=True).start()
        _loop_started = True


def _run_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def close_link(conn: libvirt.virConnect, event_id: int | None) -> None:
    """Deregister, then close: a connection with a lifecycle callback still registered is never freed."""
    steps = [conn.unregisterCloseCallback, conn.close]
    if event_id is not None:
        steps.insert(0, lambda: conn.domainEventDeregisterAny(event_id))
    for step in steps:
        with suppress(libvirt.libvirtError):
            step()


def own(uri: str) -> libvirt.virConnect:
    """A connection of its own (a long job must not hold the pool's worker), opened as the pool opens one.

    The config's URI as written lacks what the pool adds: ``no_tty=1`` for ssh (else an unknown host key
    is a prompt on the bot's terminal, not a refusal) and keepalive (else a host gone mid-stream hangs it).
    """
    start_event_loop()  # keepalive needs the event loop
    if (missing := test_file(uri)) and not os.path.exists(missing):  # libxml2 would print to stderr
        raise libvirt.libvirtError(f"no such file: {missing}")
    conn = libvirt.open(opened(uri))
    if is_remote(uri):
        conn.setKeepAlive(5, 3)
    return conn


def alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except Exception:
        return False


def is_remote(uri: str) -> bool:
    return "+" in uri.split(":", 1)[0] or uri.split("://", 1)[-1][:1] not in ("/", "")
