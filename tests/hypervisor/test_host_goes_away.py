"""A host that goes away in the middle of a command (issue 9, fault tests).

The host is libvirtd's own test driver (``test:///default``, shared by every
connection the daemon has open) reached as ``test+unix:///default?socket=PATH``
through a unix-socket proxy this test owns: cutting the proxy closes the bot's
connection and refuses new ones, as a host whose daemon or network went away
does, while the test keeps a direct connection to see what really happened.
A glob suspend over eight VMs loses its host after the first VM is done.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from bot.config import Config
from bot.policy import AllowAll
from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor
from tests.conftest import audit_rows
from tests.hypervisor.conftest import Env, wait_for

LIBVIRT_SOCK = "/run/libvirt/libvirt-sock"
HOST = "far"
VMS = 8


class CuttableProxy:
    """A unix socket forwarding to libvirtd's; ``cut`` drops every connection and stops listening."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def restore(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """The host goes away: no one answers on the socket any more, and open connections end."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        os.unlink(self.path)
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                _close(s)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            daemon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            daemon.connect(LIBVIRT_SOCK)
            with self._lock:
                self._pairs.append((client, daemon))
            for src, dst in ((client, daemon), (daemon, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    _close(src)
    _close(dst)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def domain_xml(name: str) -> str:
    dom = ET.Element("domain", type="test")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory").text = "8192"
    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type").text = "hvm"
    return ET.tostring(dom, encoding="unicode")


def paused_vms(conn: libvirt.virConnect, prefix: str) -> set[str]:
    """What libvirt says, over a connection of the test's own: the truth the audit is held to."""
    doms = conn.listAllDomains()
    return {d.name() for d in doms if d.name().startswith(prefix) and d.state()[0] == libvirt.VIR_DOMAIN_PAUSED}


@pytest.fixture
def far_host(hv: Env) -> Iterator[tuple[CuttableProxy, libvirt.virConnect, str, str]]:
    """Eight running VMs in libvirtd's test driver, the proxy to it, and a direct connection that stays.

    ``hv``: without the tier's daemon this fails saying how to set it up, never skips.
    """
    direct = libvirt.open("test+unix:///default")  # holds the shared test driver (and its VMs) for the test
    prefix = f"vmbot-t-away-{secrets.token_hex(3)}"
    doms = []
    with tempfile.TemporaryDirectory(prefix="vmbot-t-away-") as tmp:
        proxy = CuttableProxy(str(Path(tmp) / "libvirt.sock"))
        try:
            for i in range(VMS):
                dom = direct.defineXML(domain_xml(f"{prefix}-{i}"))
                doms.append(dom)
                dom.create()
            yield proxy, direct, prefix, tmp
        finally:
            if proxy.listening:
                proxy.cut()
            for dom in doms:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            direct.close()


def test_a_host_that_goes_away_mid_command(far_host, tmp_path: Path) -> None:
    proxy, direct, prefix, _ = far_host
    uri = f"test+unix:///default?socket={proxy.path}"
    config = Config(
        hosts={HOST: uri},
        store_path=str(tmp_path / "vmbot.db"),
        host_timeout=3.0,
        probe_interval=0.3,
        changes_per_host=1,  # one VM after another: the cut lands between two of them
    )
    bot = Bot(config, AllowAll())
    actor = Actor(user="U0ALICE", source="terminal")
    try:
        assert bot.handle(f"state {HOST}/{prefix}-0", actor).status is Status.OK  # the bot's connection is open
        finish = bot.audit.finish
        cut_once = threading.Event()

        def finish_then_cut(row_id: int, result: str, *args, **kwargs) -> None:
            finish(row_id, result, *args, **kwargs)
            if result == "ok" and not cut_once.is_set():
                cut_once.set()
                proxy.cut()  # the first VM is done and recorded; the host goes away now

        bot.audit.finish = finish_then_cut  # type: ignore[method-assign]
        reply = bot.handle(f"suspend '{HOST}/{prefix}-*' --yes", actor)
        bot.audit.finish = finish  # type: ignore[method-assign]

        text = reply.text()
        assert reply.status is Status.FAILED, text
        assert reply.headline.endswith(f"; {HOST} stopped answering (unreachable)"), text
        failed = [line for line in reply.lines if ": failed: " in line]
        assert failed and "Traceback" not in text, text
        for line in failed:  # each says the host went away; a call cut short says its outcome is unknown
            assert f": failed: {HOST}: unreachable since " in line or (
                f": failed: {HOST}: the connection was lost during the call" in line and "may or may not" in line
            ), line

        rows = [r for r in audit_rows(bot) if r["action"] == "suspend"]
        assert len(rows) == VMS
        assert not [r for r in rows if r["result"] in (None, "", "running")], rows
        done = {r["vm_name"] for r in rows if r["result"] == "ok"}
        paused = paused_vms(direct, prefix)
        assert done and done <= paused  # nothing recorded done that did not happen
        assert len(done) < VMS and {r["result"] for r in rows} == {"ok", "failed"}

        proxy.restore()  # the host comes back
        wait_for(lambda: bot.pool.status(HOST) is None, 15, "the prober to find the host back")
        for name in sorted(paused):  # the next commands on that host work: what the cut left paused is resumed
            again = bot.handle(f"resume {HOST}/{name}", actor)
            assert again.status is Status.OK, again.text()
        assert not paused_vms(direct, prefix)
        assert bot.handle(f"suspend '{HOST}/{prefix}-*' --yes", actor).status is Status.OK  # and a glob again
    finally:
        bot.close()
