"""Synthetic fleets for the report tests and the digest bench: many test-driver hosts, anomalies planted.

Real libvirt (a fleet file per host, opened by the pool); nothing is mocked.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

from bot.config import Config
from bot.policy import AllowAll, Policy
from bot.service import Bot
from bot.store.audit import Audit
from tests.conftest import TEST_NS, Vm, fleet_xml

CRASHED_RUNSTATE = "6"  # VIR_DOMAIN_CRASHED


def write_host(path: Path, vms: list[Vm], crashed: set[str] = frozenset(), **kw: object) -> str:  # type: ignore[assignment]
    """A fleet file whose VMs named in ``crashed`` are in libvirt's crashed state."""
    root = fleet_xml(vms, **kw)  # type: ignore[arg-type]
    for dom in root.findall("domain"):
        if dom.findtext("name") in crashed:
            dom.find(f"{{{TEST_NS}}}runstate").text = CRASHED_RUNSTATE  # type: ignore[union-attr]
    ET.ElementTree(root).write(path, encoding="unicode", xml_declaration=True)
    return f"test://{path.resolve()}"


def big_fleet(tmp_path: Path, hosts: int = 100, per_host: int = 100) -> dict[str, str]:
    """``hosts`` x ``per_host`` VMs, ~1% crashed and ~2% paused, some with hostile names."""
    uris = {}
    for h in range(hosts):
        vms, crashed = [], set()
        for i in range(per_host):
            name = f"vm-{h:03d}-{i:03d}" if i % 50 != 7 else f"<!channel> {h}-{i}"  # the paused ones
            state = "paused" if i % 50 == 7 else ("shut off" if i % 10 == 3 else "running")
            vms.append(Vm(name, state))
            if i % 100 == 42:
                crashed.add(name)
        uris[f"kvm{h:03d}"] = write_host(tmp_path / f"kvm{h:03d}.xml", vms, crashed, pool_path=f"/pool-{h}")
    return uris


def bot_on(hosts: dict[str, str], store: str, policy: Policy | None = None, **config: object) -> Bot:
    cfg = Config(hosts=hosts, demo=True, source="tests", **config)  # type: ignore[arg-type]
    return Bot(cfg, policy or AllowAll(), audit=Audit(store))


def plant_event(bot: Bot, host: str, uuid: str, state: str, at: datetime) -> None:
    """A state change the bot saw at ``at`` (the history `state` and the digest read)."""
    bot.events.store.db["vm_events"].insert(  # type: ignore[union-attr]
        {"at": at.isoformat(timespec="milliseconds"), "host": host, "vm_uuid": uuid, "event": "suspended",
         "detail": 0, "state": state, "reason": "user", "source": "event", "after": ""}
    )  # fmt: skip


def add_pool(path: Path, name: str, target: str, volumes: list[tuple[str, int]], source: dict | None = None) -> None:
    """Add a pool to a written fleet file; ``source`` {"host": ..., "dir": ...} makes it network storage."""
    tree = ET.parse(path)
    node = tree.getroot()
    pool = ET.SubElement(node, "pool", type="netfs" if source else "dir")
    ET.SubElement(pool, "name").text = name
    if source:
        src = ET.SubElement(pool, "source")
        ET.SubElement(src, "host", name=source["host"])
        ET.SubElement(src, "dir", path=source["dir"])
        ET.SubElement(src, "format", type="nfs")
    ET.SubElement(ET.SubElement(pool, "target"), "path").text = target
    for vol_name, capacity in volumes:
        v = ET.SubElement(pool, "volume")
        ET.SubElement(v, "name").text = vol_name
        ET.SubElement(v, "capacity").text = str(capacity)
        ET.SubElement(ET.SubElement(v, "target"), "path").text = f"{target}/{vol_name}"
    tree.write(path, encoding="unicode", xml_declaration=True)


def set_node_memory(path: Path, gib: int) -> None:
    tree = ET.parse(path)
    tree.getroot().find("memory").text = str(gib << 20)  # type: ignore[union-attr]
    tree.write(path, encoding="unicode", xml_declaration=True)


def add_cpu(path: Path, vm: str, model: str) -> None:
    tree = ET.parse(path)
    for dom in tree.getroot().findall("domain"):
        if dom.findtext("name") == vm:
            cpu = ET.SubElement(dom, "cpu", mode="custom", match="exact")
            ET.SubElement(cpu, "model", fallback="forbid").text = model
    tree.write(path, encoding="unicode", xml_declaration=True)
