"""`verify --boot`: proof that a disk backup boots, not only that its bytes are intact.

The backup is restored as a scratch copy (``restore --as`` semantics: new
UUID, new MACs, new volumes named by that UUID; the same allowlist), with
every network interface removed so the copy cannot clash with the original
on the wire, and autostart off. It is started, must stay running for a few
seconds (and answer ``guest-ping`` if it has a QEMU agent channel), and is
then destroyed, undefined and its volumes deleted, whatever happened.
"""

from __future__ import annotations

import time

import libvirt
import libvirt_qemu

from bot.backup import restore
from bot.backup.catalog import Entry
from bot.backup.files import Store
from bot.hypervisor import xmlcheck

AGENT = "org.qemu.guest_agent.0"
STEADY_S = 3.0  # a guest that crashes while it boots does so within a few seconds of start


class BootFailed(Exception):
    """The scratch copy did not boot; the message says what was seen."""


def scratch_name(entry: Entry) -> str:
    """Named by the backup's id: never by the VM's name."""
    return f"vmbot-verify-{entry.id}"


def boot(
    conn: libvirt.virConnect,
    store: Store,
    entry: Entry,
    rules: xmlcheck.Rules,
    data: restore.DiskData | None = None,
    timeout: float = 60.0,
) -> str:
    if not any(f.get("role") == "disk" for f in entry.files):
        raise restore.RestoreRefused(f"backup {entry.id} holds no disks; --boot needs a disk backup")
    plan = restore.plan(conn, store, entry, scratch_name(entry), data)
    devices = plan.xml.find("devices")
    for iface in list(devices) if devices is not None else []:
        if iface.tag == "interface":
            devices.remove(iface)  # type: ignore[union-attr]
    has_agent = any(t.get("name") == AGENT for t in plan.xml.iterfind("devices/channel/target"))
    try:
        restore.execute(conn, plan, rules, autostart=False)
        dom = conn.lookupByUUIDString(plan.uuid)
        started = time.monotonic()
        dom.create()
        return _watch(dom, has_agent, started, timeout)
    finally:
        _remove(conn, plan)


def _watch(dom: libvirt.virDomain, has_agent: bool, started: float, timeout: float) -> str:
    """Running for STEADY_S in a row (and the agent answering, if there is one) within the timeout."""
    steady_since = time.monotonic()
    while time.monotonic() - started < timeout:
        state = dom.state()[0]
        if state != libvirt.VIR_DOMAIN_RUNNING:
            raise BootFailed(f"the scratch copy stopped while booting (state {state})")
        if time.monotonic() - steady_since >= STEADY_S and (not has_agent or _pings(dom)):
            took = time.monotonic() - started
            return f"booted a scratch copy (no network) and it ran for {took:.0f}s" + (
                "; its guest agent answered" if has_agent else ""
            )
        time.sleep(0.5)
    raise BootFailed(f"no steady run{' and no guest agent answer' if has_agent else ''} within {timeout:.0f}s")


def _pings(dom: libvirt.virDomain) -> bool:
    try:
        libvirt_qemu.qemuAgentCommand(dom, '{"execute": "guest-ping"}', 2, 0)
        return True
    except libvirt.libvirtError:
        return False


def _remove(conn: libvirt.virConnect, plan: restore.Plan) -> None:
    """Destroy, undefine, delete the scratch volumes: each step on its own, so one failure leaves no others."""
    try:
        dom = conn.lookupByUUIDString(plan.uuid)
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
    except libvirt.libvirtError:
        pass
    for v in plan.volumes:
        try:
            conn.storagePoolLookupByName(v.pool).storageVolLookupByName(v.name).delete(0)
        except libvirt.libvirtError:
            pass
