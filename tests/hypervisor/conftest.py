"""The real-hypervisor tier: vmbot against libvirtd + QEMU tiny guests (scripts/hypervisor-setup.sh).

These tests never skip: without the daemon and the guest images they fail and
say how to get them, because CI always has them and a silently skipped tier
proves nothing. Guests are named ``vmbot-t-<random>``, live for the session (a
boot costs seconds under TCG) and are always destroyed, undefined and their
volumes deleted at the end, whatever happened in between.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from bot.config import Config
from bot.hypervisor.pool import start_event_loop
from bot.policy import AllowAll
from bot.reply import Reply
from bot.service import Bot
from bot.store.audit import Actor, Audit

ENV = (
    "VMBOT_LIBVIRT_URI",
    "VMBOT_GUEST_KERNEL",
    "VMBOT_GUEST_INITRD_ACPI",
    "VMBOT_GUEST_INITRD_NOACPI",
    "VMBOT_POOL",
    "VMBOT_NETWORK",
)
SETUP_HINT = 'run: eval "$(scripts/hypervisor-setup.sh)" && export ' + " ".join(ENV) + " (scripts/test does this)"
READY = "VMBOT-GUEST-READY"
SERIAL_LOG_DIR = Path("/var/log/libvirt/qemu")
LIBVIRTD_PID = Path("/var/run/libvirtd.pid")
QEMU_PID_DIR = Path("/var/run/libvirt/qemu")
HOST = "lab"

start_event_loop()  # before any connection opens, so the tests' connections get events too


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.hypervisor)


@dataclass(frozen=True)
class Env:
    uri: str
    kernel: str
    initrd: dict[str, str]  # variant -> path
    pool: str
    network: str


@pytest.fixture(scope="session")
def hv() -> Env:
    """The setup script's answers; a clear failure (never a skip) when they are missing."""
    missing = [k for k in ENV if not os.environ.get(k)]
    if missing:
        pytest.fail(f"the real-hypervisor tier needs {', '.join(missing)}; {SETUP_HINT}", pytrace=False)
    env = Env(
        os.environ["VMBOT_LIBVIRT_URI"],
        os.environ["VMBOT_GUEST_KERNEL"],
        {"acpi": os.environ["VMBOT_GUEST_INITRD_ACPI"], "noacpi": os.environ["VMBOT_GUEST_INITRD_NOACPI"]},
        os.environ["VMBOT_POOL"],
        os.environ["VMBOT_NETWORK"],
    )
    for path in (env.kernel, *env.initrd.values()):
        if not Path(path).is_file():
            pytest.fail(f"guest image {path} is missing; {SETUP_HINT}", pytrace=False)
    try:
        libvirt.open(env.uri).close()
    except libvirt.libvirtError as e:
        pytest.fail(f"libvirtd does not answer on {env.uri} ({e}); {SETUP_HINT}", pytrace=False)
    return env


class Libvirt:
    """The tests' own connection (not the bot's), reopened after a libvirtd restart."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: libvirt.virConnect | None = None

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None or not _alive(self._conn):
            self._conn = libvirt.open(self.uri)
        return self._conn


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


@pytest.fixture(scope="session")
def lv(hv: Env) -> Libvirt:
    return Libvirt(hv.uri)


def volume_xml(name: str) -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="MiB").text = "16"
    ET.SubElement(ET.SubElement(vol, "target"), "format", type="qcow2")
    return ET.tostring(vol, encoding="unicode")


def guest_xml(hv: Env, name: str, variant: str, volume: str, serial_log: Path, cmdline: str) -> str:
    """The tiny guest: direct kernel boot, qcow2 pool volume, virtio NIC, pty serial, VNC on loopback."""
    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = "192"
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "kernel").text = hv.kernel
    ET.SubElement(os_el, "initrd").text = hv.initrd[variant]
    ET.SubElement(os_el, "cmdline").text = cmdline
    ET.SubElement(ET.SubElement(dom, "features"), "acpi")
    dev = ET.SubElement(dom, "devices")
    disk = ET.SubElement(dev, "disk", type="volume", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2")
    ET.SubElement(disk, "source", pool=hv.pool, volume=volume)
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    nic = ET.SubElement(dev, "interface", type="network")
    ET.SubElement(nic, "source", network=hv.network)
    ET.SubElement(nic, "model", type="virtio")
    serial = ET.SubElement(dev, "serial", type="pty")
    ET.SubElement(serial, "log", file=str(serial_log), append="on")
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(ET.SubElement(dev, "console", type="pty"), "target", type="serial", port="0")
    ET.SubElement(dev, "graphics", type="vnc", autoport="yes", listen="127.0.0.1")
    ET.SubElement(ET.SubElement(dev, "video"), "model", type="cirrus")
    return ET.tostring(dom, encoding="unicode")


@dataclass
class Guest:
    """A defined test guest; helpers drive it directly through libvirt to set up each test."""

    lv: Libvirt
    name: str
    variant: str
    volume: str
    serial_log: Path

    @property
    def target(self) -> str:
        return f"{HOST}/{self.name}"

    def dom(self) -> libvirt.virDomain:
        return self.lv.conn.lookupByName(self.name)

    def state(self) -> int:
        return self.dom().state()[0]

    def said(self) -> str:
        """Everything the guest wrote to its serial port this session (the log is appended to)."""
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def ready_count(self) -> int:
        return self.said().count(READY)

    def is_up(self) -> bool:
        """The latest boot got to the ready line (a restored guest is up without a new boot)."""
        log = self.said()
        return READY in log[log.rfind("Linux version") :]

    def wait_ready(self, count: int = 1, timeout: float = 60) -> None:
        wait_for(lambda: self.ready_count() >= count, timeout, f"{self.name} to print {READY} x{count}")

    def ensure_running(self) -> None:
        """Running, unpaused, and up far enough that acpid listens (the ready line is after it)."""
        dom = self.dom()
        if dom.hasManagedSaveImage(0) and not dom.isActive():
            dom.managedSaveRemove(0)
        if not dom.isActive():
            boots = self.ready_count()  # the log is appended to: wait for a new ready line, not an old one
            dom.create()
            self.wait_ready(boots + 1)
        if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()
        wait_for(self.is_up, 60, f"{self.name} to print {READY}")

    def ensure_off(self) -> None:
        dom = self.dom()
        if dom.isActive():
            dom.destroy()
        if dom.hasManagedSaveImage(0):
            dom.managedSaveRemove(0)

    def qemu_pid(self) -> int:
        return int((QEMU_PID_DIR / f"{self.name}.pid").read_text().strip())


def wait_for(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def remove_guest(lv: Libvirt, name: str, volume: str, pool: str) -> None:
    """Destroy, undefine (with its managed-save image) and delete the volume; each step on its own."""
    conn = lv.conn
    try:
        dom = conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    except libvirt.libvirtError:
        pass
    try:
        conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).delete(0)
    except libvirt.libvirtError:
        pass


@pytest.fixture(scope="session")
def make_guest(hv: Env, lv: Libvirt) -> Iterator[Callable[..., Guest]]:
    """Define guests for the session; every one is removed at the end, pass or fail."""
    made: list[Guest] = []

    def make(variant: str, cmdline: str = "console=ttyS0") -> Guest:
        name = f"vmbot-t-{variant}-{secrets.token_hex(3)}"
        volume = f"{name}.qcow2"
        log = SERIAL_LOG_DIR / f"{name}-serial.log"
        guest = Guest(lv, name, variant, volume, log)
        made.append(guest)  # registered first: cleanup runs even if the define fails half-way
        pool = lv.conn.storagePoolLookupByName(hv.pool)
        pool.createXML(volume_xml(volume), 0)
        lv.conn.defineXML(guest_xml(hv, name, variant, volume, log, cmdline))
        return guest

    yield make
    for guest in made:
        remove_guest(lv, guest.name, guest.volume, hv.pool)
        guest.serial_log.unlink(missing_ok=True)
        (SERIAL_LOG_DIR / f"{guest.name}.log").unlink(missing_ok=True)  # libvirt's own log of the domain


@pytest.fixture(scope="session")
def acpi_guest(make_guest: Callable[..., Guest]) -> Guest:
    """Powers off on the ACPI button; takes its address by DHCP so `ip` has a lease to show."""
    return make_guest("acpi", "console=ttyS0 vmbot.ip=dhcp")


@pytest.fixture(scope="session")
def noacpi_guest(make_guest: Callable[..., Guest]) -> Guest:
    """Ignores the ACPI button: shutdown times out on it."""
    return make_guest("noacpi", "console=ttyS0 vmbot.ip=none")


@pytest.fixture(scope="session")
def hv_bot(hv: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bot]:
    """The command layer on qemu:///system, allow-all, its own sqlite store."""
    store = tmp_path_factory.mktemp("hv") / "vmbot.db"
    config = Config(hosts={HOST: hv.uri}, store_path=str(store), source="tests/hypervisor")
    bot = Bot(config, AllowAll(), audit=Audit(str(store)))
    yield bot
    bot.close()


@pytest.fixture(scope="session")
def ask(hv_bot: Bot) -> Callable[..., Reply]:
    """Send one command as the test user."""
    who = Actor(user="U0HV", channel="C0HV", unix_user="tester", source="terminal")
    return lambda text, progress=None: hv_bot.handle(text, who, progress)


def virsh(*args: str) -> str:
    """virsh as operators run it; only the tests call it, never the bot."""
    uri = os.environ.get("VMBOT_LIBVIRT_URI", "qemu:///system")
    done = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def restart_libvirtd(uri: str) -> None:
    """Kill libvirtd by its pidfile and start it again; the guests' QEMUs keep running."""
    old = int(LIBVIRTD_PID.read_text().strip())
    os.kill(old, 15)
    wait_for(lambda: not Path(f"/proc/{old}").exists(), 20, "the old libvirtd to exit")
    subprocess.run(["libvirtd", "-d"], check=True, timeout=30, stdin=subprocess.DEVNULL)
    wait_for(lambda: _answers(uri), 30, "libvirtd to answer again", every=0.2)


def _answers(uri: str) -> bool:
    try:
        conn = libvirt.open(uri)
        conn.getLibVersion()
        conn.close()
        return True
    except libvirt.libvirtError:
        return False
