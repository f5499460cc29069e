"""Shared fixtures: bots on libvirt's test driver, custom fleets built with xml.etree, audit helpers.

Everything here is real libvirt (the in-process test driver) and a real sqlite
audit file under tmp_path; nothing in bot/ is mocked.
"""

from __future__ import annotations

import sys
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.config import Config, demo
from bot.policy import AllowAll, Policy
from bot.service import Bot
from bot.store.audit import Actor, Audit

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
ET.register_namespace("test", TEST_NS)
RUNSTATE = {"running": 1, "paused": 3, "shut off": 5}
VENV_BIN = Path(sys.executable).parent


@dataclass
class Vm:
    """One domain of a custom test-driver fleet."""

    name: str
    state: str = "running"
    uuid: str | None = None
    disks: list[str] = field(default_factory=list)
    memory_mib: int = 512
    vcpus: int = 1
    disk_format: str = ""  # the disks' <driver type> (qcow2, raw); none stated when empty
    pflash: bool = False  # UEFI firmware in pflash (<loader type='pflash'>)
    macs: list[str] = field(default_factory=list)  # one network interface per MAC


@dataclass
class Volume:
    """A volume in the fleet's dir pool; its path is ``<pool path>/<name>``."""

    name: str
    capacity: int = 1 << 30
    format: str = ""  # the volume's <target><format type>; the test driver says raw when empty


def domain_element(vm: Vm) -> ET.Element:
    """A test-driver <domain> whose run state is set with the test namespace, as in bot/demo."""
    dom = ET.Element("domain", type="test")
    ET.SubElement(dom, "name").text = vm.name
    ET.SubElement(dom, "uuid").text = vm.uuid or str(uuidlib.uuid4())
    ET.SubElement(dom, "memory", unit="MiB").text = str(vm.memory_mib)
    ET.SubElement(dom, "currentMemory", unit="MiB").text = str(vm.memory_mib)
    ET.SubElement(dom, "vcpu").text = str(vm.vcpus)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64").text = "hvm"
    if vm.pflash:
        ET.SubElement(os_el, "loader", readonly="yes", type="pflash").text = "/usr/share/OVMF/OVMF_CODE.fd"
    devices = ET.SubElement(dom, "devices")
    for i, path in enumerate(vm.disks):
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        if vm.disk_format:
            ET.SubElement(disk, "driver", name="qemu", type=vm.disk_format)
        ET.SubElement(disk, "source", file=path)
        ET.SubElement(disk, "target", dev=f"vd{chr(ord('a') + i)}", bus="virtio")
    for mac in vm.macs:
        nic = ET.SubElement(devices, "interface", type="network")
        ET.SubElement(nic, "mac", address=mac)
        ET.SubElement(nic, "source", network="default")
    ET.SubElement(dom, f"{{{TEST_NS}}}runstate").text = str(RUNSTATE[vm.state])
    return dom


def fleet_xml(vms: list[Vm], pool_path: str = "/fleet-pool", volumes: list[Volume] | None = None) -> ET.Element:
    """A whole test-driver node: the domains, plus one active dir pool holding ``volumes``."""
    node = ET.Element("node")
    cpu = ET.SubElement(node, "cpu")
    for tag, text in (("mhz", "2400"), ("model", "x86_64"), ("active", "4"), ("nodes", "1"), ("sockets", "1")):
        ET.SubElement(cpu, tag).text = text
    for tag in ("cores", "threads"):
        ET.SubElement(cpu, tag).text = "2"
    ET.SubElement(node, "memory").text = str(8 << 20)
    node.extend(domain_element(vm) for vm in vms)
    pool = ET.SubElement(node, "pool", type="dir")
    ET.SubElement(pool, "name").text = "default"
    ET.SubElement(ET.SubElement(pool, "target"), "path").text = pool_path
    for vol in volumes or []:
        v = ET.SubElement(pool, "volume")
        ET.SubElement(v, "name").text = vol.name
        ET.SubElement(v, "capacity").text = str(vol.capacity)
        target = ET.SubElement(v, "target")
        ET.SubElement(target, "path").text = f"{pool_path}/{vol.name}"
        if vol.format:
            ET.SubElement(target, "format", type=vol.format)
    return node


def write_fleet(path: Path, vms: list[Vm], **kw: object) -> str:
    """Write the fleet file and return its test-driver URI (each open gets private state)."""
    ET.ElementTree(fleet_xml(vms, **kw)).write(path, encoding="unicode", xml_declaration=True)  # type: ignore[arg-type]
    return f"test://{path.resolve()}"


def audit_rows(bot: Bot) -> list[dict]:
    """Every audit row, oldest first."""
    return list(bot.audit.db["operations"].rows_where(order_by="id"))  # type: ignore[union-attr]


@pytest.fixture
def actor() -> Actor:
    return Actor(user="U0TEST", channel="C0TEST", unix_user="tester", source="terminal")


@pytest.fixture
def make_bot(tmp_path: Path) -> Iterator[Callable[..., Bot]]:
    """Build bots on a Config or on a custom fleet; every bot is closed after the test."""
    bots: list[Bot] = []

    def build(
        config: Config | None = None,
        policy: Policy | None = None,
        fleet: dict[str, list[Vm]] | None = None,
        store: str | None = None,
        volumes: dict[str, list[Volume]] | None = None,
        **limits: object,
    ) -> Bot:
        if config is None:
            hosts = {}
            for host, vms in (fleet or {}).items():
                hosts[host] = write_fleet(tmp_path / f"{host}.xml", vms, volumes=(volumes or {}).get(host))
            config = Config(hosts=hosts, demo=True, source="tests")
        for key, value in limits.items():
            setattr(config, key, value)
        path = store or str(tmp_path / f"audit{len(bots)}.db")
        bot = Bot(config, policy or AllowAll(), audit=Audit(path))
        bots.append(bot)
        return bot

    yield build
    for bot in bots:
        bot.close()


@pytest.fixture
def demo_bot(make_bot: Callable[..., Bot]) -> Bot:
    """The embedded demo fleet (kvm01, kvm02) with allow-all and a tmp sqlite audit file."""
    return make_bot(demo())


@pytest.fixture
def memory_bot(make_bot: Callable[..., Bot]) -> Bot:
    """The demo fleet with the in-memory audit store the demo uses by default."""
    return make_bot(demo(), store=":memory:")


@pytest.fixture
def odd_bot(make_bot: Callable[..., Bot]) -> Bot:
    """Two hosts with names chat makes hard: spaces, mrkdwn, shell and glob characters, a shared name."""
    one = [Vm("web-01"), Vm("web-02"), Vm("web-03", "shut off"), Vm("a b", "paused"), Vm("shared")]
    two = [Vm("<!channel>"), Vm("web;rm", "shut off"), Vm("*"), Vm(".."), Vm("shared", "shut off"), Vm("db-01")]
    return make_bot(fleet={"h1": one, "h2": two})


def vmbot_exe() -> str:
    return str(VENV_BIN / "vmbot")
