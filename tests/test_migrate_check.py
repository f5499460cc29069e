"""``migrate-check VM HOST`` on test-driver hosts: a target that passes, one short of memory, one
unreachable, one whose driver cannot compare CPUs, and one with the same disk path on unshared storage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor
from tests.conftest import Vm, Volume
from tests.fakehosts import closed_port
from tests.policyrig import make_policy
from tests.reportrig import add_cpu, add_pool, bot_on, set_node_memory, write_host

GIB = 1 << 30
NFS = {"host": "nfs1.example.net", "dir": "/export/vms"}
POLICY = """\
roles:
  viewer: [list, state, migrate-check]
  operator: [viewer, start]
grants:
  - who: [UOPS]
    role: operator
  - who: [UHALF]
    role: operator
    hosts: [kvm01]
"""
OPS = Actor("UOPS", "C0OPS", source="slack")


@pytest.fixture
def bot(tmp_path: Path) -> Iterator[Bot]:
    src = tmp_path / "kvm01.xml"
    vms = [
        Vm("web-01", memory_mib=2048, disks=["/p1/web-01.qcow2"]),
        Vm("cpu-vm", memory_mib=512),
        Vm("on-nfs", memory_mib=512, disks=["/mnt/vms/on-nfs.qcow2"]),
        Vm("dup", memory_mib=512, disks=["/p1/dup.qcow2"]),
        Vm("snappy", memory_mib=512),
    ]
    hosts = {
        "kvm01": write_host(
            src, vms, pool_path="/p1", volumes=[Volume("web-01.qcow2", 10 * GIB), Volume("dup.qcow2", GIB)]
        )
    }
    add_pool(src, "nfs", "/mnt/vms", [("on-nfs.qcow2", 20 * GIB)], NFS)
    add_cpu(src, "cpu-vm", "Skylake-Client")
    big = tmp_path / "kvm02.xml"  # plenty of memory, the same NFS export, a local pool at the same path as kvm01's
    hosts["kvm02"] = write_host(big, [Vm("other", memory_mib=1024)], pool_path="/p2")
    set_node_memory(big, 32)
    add_pool(big, "nfs", "/mnt/vms", [("on-nfs.qcow2", 20 * GIB)], NFS)
    add_pool(big, "local-p1", "/p1", [("dup.qcow2", GIB)])
    small = tmp_path / "kvm03.xml"  # 2 GiB, 1.5 of it in use
    hosts["kvm03"] = write_host(small, [Vm("hog", memory_mib=1536)], pool_path="/p3")
    set_node_memory(small, 2)
    hosts["kvm09"] = f"qemu+tcp://127.0.0.1:{closed_port()}/system"
    b = bot_on(hosts, str(tmp_path / "vmbot.db"), make_policy(tmp_path, POLICY), host_timeout=3.0)
    b.pool.call(
        "kvm01",
        lambda c: c.lookupByName("snappy").snapshotCreateXML("<domainsnapshot><name>s1</name></domainsnapshot>"),
    )
    yield b
    b.close()


def check(bot: Bot, text: str, actor: Actor = OPS) -> dict[str, tuple[str, str]]:
    reply = bot.handle(text, actor)
    assert reply.status is Status.OK and reply.report, reply.text()
    out = {}
    for item in reply.report.attention:
        word, what, why = item.text.split(": ", 2)
        out[what] = (word, why)
    return out


def test_a_target_that_passes(bot: Bot) -> None:
    found = check(bot, "migrate-check web-01 kvm02")
    assert found["target reachable"][0] == "pass"
    assert found["libvirt version"][0] == "pass" and found["hypervisor version"][0] == "pass"
    assert found["memory"][0] == "pass" and "needs 2.0 GiB" in found["memory"][1]
    assert found["storage"] == ("pass", found["storage"][1]) and "needs 10.0 GiB" in found["storage"][1]
    assert found["CPU"][0] == "pass" and found["snapshots"] == ("pass", "none")
    assert found["VM state"] == ("pass", "running") and found["lock"] == ("pass", "free")
    assert found["freeze on kvm01"][0] == found["freeze on kvm02"][0] == "pass"
    assert found["your grants on the target"][0] == "pass"
    assert bot.handle("migrate-check web-01 kvm02", OPS).headline.endswith("ready (0 fail, 0 warn, 12 pass)")


def test_a_target_short_of_memory(bot: Bot) -> None:
    found = check(bot, "migrate-check web-01 kvm03")
    assert (
        found["memory"][0] == "fail" and "needs 2.0 GiB" in found["memory"][1] and "0.5 GiB free" in found["memory"][1]
    )
    assert "not ready (1 fail" in bot.handle("migrate-check web-01 kvm03", OPS).headline


def test_an_unreachable_target(bot: Bot) -> None:
    found = check(bot, "migrate-check web-01 kvm09")
    assert list(found) == ["target reachable"] and found["target reachable"][0] == "fail"
    assert "kvm09" in found["target reachable"][1]


def test_a_driver_that_cannot_compare_cpus_is_said_plainly(bot: Bot) -> None:
    found = check(bot, "migrate-check cpu-vm kvm02")
    assert found["CPU"] == ("warn", "cannot tell: the target's libvirt driver does not compare CPUs")


def test_shared_storage_only_when_both_pools_name_the_same_source(bot: Bot) -> None:
    shared = check(bot, "migrate-check on-nfs kvm02")
    assert (
        shared["disk /mnt/vms/on-nfs.qcow2"][0] == "pass"
        and "shared storage" in shared["disk /mnt/vms/on-nfs.qcow2"][1]
    )
    same_path = check(bot, "migrate-check dup kvm02")
    assert same_path["disk /p1/dup.qcow2"][0] == "fail" and "stale disk" in same_path["disk /p1/dup.qcow2"][1]
    elsewhere = check(bot, "migrate-check on-nfs kvm03")  # kvm03 does not mount the export: a copy is needed
    assert elsewhere["storage"][0] in ("pass", "fail") and "needs 20.0 GiB" in elsewhere["storage"][1]


def test_snapshots_lock_freeze_and_grants(bot: Bot) -> None:
    assert check(bot, "migrate-check snappy kvm02")["snapshots"][0] == "fail"
    (ref,) = bot.fleet.resolve(["web-01"]).refs
    with bot.locks.hold(ref.host, ref.uuid, ref.name, "reboot", "UOTHER"):
        found = check(bot, "migrate-check web-01 kvm02")
    assert found["lock"][0] == "fail" and "UOTHER" in found["lock"][1]
    bot.freezes.freeze("kvm02", "UADMIN", "maintenance")
    assert check(bot, "migrate-check web-01 kvm02")["freeze on kvm02"][0] == "fail"
    half = check(bot, "migrate-check web-01 kvm02", Actor("UHALF", "C0OPS", source="slack"))
    assert half["your grants on the target"][0] == "fail"


@pytest.mark.parametrize(
    ("text", "status", "line"),
    [
        ("migrate-check web-01", Status.USAGE, "takes a VM and a host"),
        ("migrate-check web-01 ../etc", Status.USAGE, "no host named '../etc'"),
        ("migrate-check nope kvm02", Status.REFUSED, "no VM named 'nope'"),
        ("migrate-check web-01 kvm01", Status.USAGE, "already on kvm01"),
    ],
)
def test_bad_input_is_one_line(bot: Bot, text: str, status: Status, line: str) -> None:
    reply = bot.handle(text, OPS)
    assert reply.status is status and line in reply.headline and "\n" not in reply.headline


def test_refused_without_a_grant(bot: Bot) -> None:
    reply = bot.handle("migrate-check web-01 kvm02", Actor("UNOBODY", "C0OPS", source="slack"))
    assert reply.status is Status.REFUSED and reply.report is None


# -- hostile review ------------------------------------------------------------------------


def test_hostile_migrate_check_hides_facts_of_a_target_the_requester_may_not_see(bot: Bot) -> None:
    """Reports keep host facts to those granted the whole host; migrate-check hands them out."""
    half = Actor("UHALF", "C0OPS", source="slack")  # granted kvm01 only
    shown = bot.handle("migrate-check web-01 kvm02", half).text()
    assert "32.0 GiB" not in shown and "100.0 GiB free" not in shown, shown  # kvm02's memory and pool space


VOLUME_DISK = """<domain type='test'><name>vol-vm</name><memory unit='MiB'>512</memory><os><type>hvm</type></os>
<devices><disk type='volume' device='disk'><source pool='default' volume='big.qcow2'/>
<target dev='vda' bus='virtio'/></disk></devices></domain>"""


def test_hostile_a_pool_volume_disk_is_counted_by_migrate_check(bot: Bot) -> None:
    def define(conn: libvirt.virConnect) -> None:  # how terraform's libvirt provider and others attach disks
        vol = "<volume><name>big.qcow2</name><capacity unit='G'>40</capacity></volume>"
        conn.storagePoolLookupByName("default").createXML(vol, 0)
        conn.defineXML(VOLUME_DISK).create()

    bot.pool.call("kvm01", define)
    reply = bot.handle("migrate-check vol-vm kvm02", OPS)
    text = reply.text()
    assert "the VM has no disks to move" not in text, text
    assert "40.0 GiB" in text or "big.qcow2" in text, text  # the 40 GiB disk is weighed against kvm02's pools


PASSTHROUGH = """<domain type='test'><name>pt-vm</name><memory unit='MiB'>512</memory><os><type>hvm</type></os>
<cpu mode='host-passthrough'/></domain>"""


def test_hostile_a_host_passthrough_cpu_is_not_a_plain_pass(bot: Bot) -> None:
    bot.pool.call("kvm01", lambda c: c.defineXML(PASSTHROUGH).create())
    word, why = check(bot, "migrate-check pt-vm kvm02")["CPU"]
    assert "default model" not in why and word != "pass", why  # the guest sees kvm01's exact CPU


def test_hostile_a_user_with_no_grant_learns_no_host_names(bot: Bot) -> None:
    nobody = Actor("UNOBODY", "C0OPS", source="slack")
    assert bot.handle("hosts", nobody).status is Status.REFUSED  # `hosts` is closed to them ...
    reply = bot.handle("migrate-check web-01 nope", nobody)
    assert "kvm03" not in reply.text() and "kvm09" not in reply.text(), reply.text()  # ... and stays closed here
