"""migrate-check against the real libvirtd: a host-passthrough guest is checked by comparing host CPUs.

libvirt's test driver cannot compare CPUs; QEMU's driver can (``compareCPU`` of the source host's
own CPU on the target). Two host names point at this one daemon, so the CPUs are the same.
"""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from pathlib import Path

from bot.config import Config
from bot.policy import AllowAll
from bot.service import Bot
from bot.store.audit import Actor, Audit
from tests.hypervisor.conftest import Env, Libvirt


def passthrough_xml(name: str) -> str:
    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = "64"
    ET.SubElement(ET.SubElement(dom, "os"), "type").text = "hvm"
    ET.SubElement(dom, "cpu", mode="host-passthrough")
    return ET.tostring(dom, encoding="unicode")


def test_a_host_passthrough_guest_passes_only_by_comparing_the_host_cpus(hv: Env, lv: Libvirt, tmp_path: Path) -> None:
    name = f"vmbot-t-pt-{secrets.token_hex(3)}"
    dom = lv.conn.defineXML(passthrough_xml(name))
    bot = Bot(
        Config(hosts={"lab": hv.uri, "lab2": hv.uri}, demo=True, source="tests"),
        AllowAll(),
        audit=Audit(str(tmp_path / "v.db")),
    )
    try:
        reply = bot.handle(f"migrate-check lab/{name} lab2", Actor("U0OPS", "C0OPS", source="slack"))
    finally:
        bot.close()
        dom.undefine()
    assert reply.report is not None, reply.text()
    (cpu,) = [i.text for i in reply.report.attention if i.text.split(": ")[1] == "CPU"]
    assert cpu == "pass: CPU: host-passthrough: the target's CPU is the same as lab's", reply.text()
