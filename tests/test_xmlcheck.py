"""The one allowlist every XML vmbot defines passes (restore, clone, template): hostile definitions are refused,
and the refusal names the element; exact files a caller vouches for pass, and nothing beside them."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt
import pytest

from bot.hypervisor.xmlcheck import Rules, UnsafeXML, check, emulators_of, host_rules, problems

POOL_DIR = "/var/lib/vmbot/pool"
RULES = Rules(pools={"vmbot-pool": POOL_DIR}, emulators=frozenset({"/usr/bin/qemu-system-x86_64"}))

GOOD = f"""<domain type='qemu'>
  <name>web-01</name><uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
  <metadata><vmbot:meta xmlns:vmbot="https://vmbot.example/1"><anything at="all"/></vmbot:meta></metadata>
  <memory unit='KiB'>131072</memory><currentMemory unit='KiB'>131072</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{POOL_DIR}/vmlinuz</kernel>
      <initrd>{POOL_DIR}/initrd.img</initrd><cmdline>console=ttyS0</cmdline><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model></cpu>
  <clock offset='utc'><timer name='rtc' tickpolicy='catchup'/></clock>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{POOL_DIR}/web-01.qcow2'/><target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/></disk>
    <disk type='volume' device='disk'><source pool='vmbot-pool' volume='data.raw'/><target dev='vdb'/></disk>
    <controller type='usb' index='0' model='piix3-uhci'/>
    <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='vmbot-isolated'/>
      <model type='virtio'/></interface>
    <serial type='pty'><target type='isa-serial' port='0'><model name='isa-serial'/></target></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <graphics type='vnc' port='-1' autoport='yes'><listen type='address'/></graphics>
    <video><model type='cirrus' vram='16384' heads='1' primary='yes'/></video>
    <memballoon model='virtio'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>
  </devices>
</domain>"""


def hostile(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


def test_a_plain_definition_passes() -> None:
    assert problems(GOOD, RULES) == []
    assert check(GOOD, RULES).findtext("name") == "web-01"


def test_the_test_drivers_own_domain_passes_only_with_its_disk_directory_allowed() -> None:
    conn = libvirt.open("test:///default")
    try:
        text = conn.lookupByName("test").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        conn.close()
    assert problems(text, Rules(pools={"guest": "/guest"})) == []
    assert problems(text, Rules()) == ["<devices/disk/source> '/guest/diskimage1' is outside the allowed storage pools"]


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        (
            "<devices>",
            "<devices><hostdev mode='subsystem' type='pci'><source><address bus='0x01'/></source></hostdev>",
            "<domain/devices/hostdev> is not allowed",
        ),
        (
            "<devices>",
            "<devices><filesystem type='mount'><source dir='/'/><target dir='root'/></filesystem>",
            "<domain/devices/filesystem> is not allowed",
        ),
        (
            "</devices>",
            "</devices><qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
            "<qemu:arg value='-fw_cfg'/></qemu:commandline>",
            "<domain/commandline (namespace http://libvirt.org/schemas/domain/qemu/1.0)> is not allowed",
        ),
        ("/usr/bin/qemu-system-x86_64</emulator>", "/tmp/evil</emulator>", "<devices/emulator> '/tmp/evil'"),
        ("<interface type='network'>", "<interface type='ethernet'>", "<devices/interface type='ethernet'>"),
        (
            "<serial type='pty'>",
            "<serial type='file'><source path='/etc/shadow'/>",
            "<devices/serial type='file'> is not allowed",
        ),
        (
            "<channel type='unix'><source mode='bind'/>",
            "<channel type='unix'><source mode='bind' path='/etc/cron.d/x'/>",
            "attribute path is not allowed",
        ),
        (
            "<disk type='volume' device='disk'><source pool='vmbot-pool' volume='data.raw'/>",
            "<disk type='network' device='disk'><source protocol='nbd' name='x'><host name='evil'/></source>",
            "<devices/disk type='network'> is not allowed",
        ),
        (f"{POOL_DIR}/web-01.qcow2", "/etc/shadow", "<devices/disk/source> '/etc/shadow' is outside"),
        (f"{POOL_DIR}/web-01.qcow2", f"{POOL_DIR}/../../../../etc/shadow", "is outside the allowed storage pools"),
        ("pool='vmbot-pool'", "pool='default'", "<devices/disk/source pool='default'> is not an allowed"),
        (f"<kernel>{POOL_DIR}/vmlinuz", "<kernel>/boot/vmlinuz", "<os/kernel> '/boot/vmlinuz' is outside"),
        (
            "<boot dev='hd'/></os>",
            "<boot dev='hd'/><loader>/tmp/x.fd</loader><nvram>/root/x.fd</nvram></os>",
            "<os/loader> '/tmp/x.fd' is outside",
        ),
        ("<tpm model='tpm-crb'><backend type='emulator'", "<tpm model='tpm-crb'><backend type='passthrough'", "tpm"),
        ("/dev/urandom</backend>", "/dev/sda</backend>", "<devices/rng/backend>"),
        ("<memballoon model='virtio'/>", "<memballoon model='virtio' evil='1'/>", "attribute evil is not allowed"),
        ("<domain type='qemu'>", "<domain type='lxc'>", "<domain type='lxc'> is not allowed"),
        ("<features><acpi/>", "<features><acpi/><hostdev/>", "<domain/features/hostdev> is not allowed"),
        ("<devices>", "<devices><redirdev bus='usb' type='spicevmc'/>", "<domain/devices/redirdev> is not allowed"),
        ("<devices>", "<devices><smartcard mode='host'/>", "<domain/devices/smartcard> is not allowed"),
        (
            "<interface type='network'>",
            "<interface type='network'><script path='/tmp/x'/>",
            "<domain/devices/interface/script> is not allowed",
        ),
        ("<disk type='volume' device='disk'>", "<disk type='vhostuser' device='disk'>", "type='vhostuser'> is not"),
        (
            f"<source file='{POOL_DIR}/web-01.qcow2'/>",
            f"<source file='{POOL_DIR}/o.qcow2'/><backingStore type='file'><format type='qcow2'/>"
            "<source file='/root/secret.qcow2'/></backingStore>",
            "<devices/disk/source> '/root/secret.qcow2' is outside",
        ),
        (
            f"<source file='{POOL_DIR}/web-01.qcow2'/>",
            f"<source file='{POOL_DIR}/o.qcow2'/><backingStore type='file'><format type='vmdk'/>"
            f"<source file='{POOL_DIR}/b.vmdk'/></backingStore>",
            "<devices/disk/backingStore/format type='vmdk'> is not allowed",
        ),
        ("<serial type='pty'>", "<serial type='pty'><log file='/etc/motd'/>", "<devices/serial/log> '/etc/motd'"),
        (
            "<serial type='pty'>",
            f"<serial type='pty'><log file='{POOL_DIR}/web-01.qcow2' append='on'/>",
            "<devices/serial/log>",  # a pool is no place for a log: the file could be a disk
        ),
        ("<cmdline>", "<cmdline/><dtb>/boot/evil.dtb</dtb><cmdline>", "<os/dtb> '/boot/evil.dtb' is outside"),
        (
            "<boot dev='hd'/></os>",
            "<boot dev='hd'/><nvram template='/root/vars.fd'/></os>",
            "<os/nvram> template '/root/vars.fd' is outside",
        ),
        (
            "<tpm model='tpm-crb'><backend type='emulator'",
            "<tpm model='tpm-crb'><backend type='passthrough'",
            "<devices/tpm/backend type='passthrough'>",
        ),
    ],
)
def test_hostile_definitions_are_refused_naming_the_element(old: str, new: str, named: str) -> None:
    text = hostile(old, new)
    found = problems(text, RULES)
    assert found, text
    assert any(named in p for p in found), found
    with pytest.raises(UnsafeXML):
        check(text, RULES)


def test_entities_and_garbage_are_refused() -> None:
    bomb = '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa">]><domain><name>&a;</name></domain>'
    assert "DOCTYPE" in problems(bomb, RULES)[0]
    assert problems("<domain><name>x</name", RULES)[0].startswith("not well-formed XML")
    assert problems("<network><name>x</name></network>", RULES) == ["the root element must be <domain>"]


def test_no_pools_configured_means_no_file_is_allowed() -> None:
    found = problems(GOOD, Rules(emulators=RULES.emulators))
    assert any("web-01.qcow2" in p for p in found) and any("os/kernel" in p for p in found)


def test_every_refusal_is_listed_and_check_reports_how_many_more() -> None:
    text = hostile("<devices>", "<devices><hostdev/><filesystem/>")
    with pytest.raises(UnsafeXML, match=r"and 1 more"):
        check(text, RULES)


def test_emulators_come_from_the_hosts_capabilities() -> None:
    conn = libvirt.open("test:///default")
    try:
        found = emulators_of(conn.getCapabilities())
    finally:
        conn.close()
    caps = ET.fromstring(libvirt.open("test:///default").getCapabilities())
    assert found == {e.text for e in caps.iterfind("guest/arch/emulator")}


def test_exact_files_a_caller_vouches_for_are_allowed_and_nothing_beside_them() -> None:
    text = hostile(f"<kernel>{POOL_DIR}/vmlinuz", "<kernel>/boot/vmlinuz-6.1")
    vouched = Rules(RULES.pools, RULES.emulators, frozenset({"/boot/vmlinuz-6.1"}))
    assert problems(text, vouched) == []
    sibling = hostile(f"<kernel>{POOL_DIR}/vmlinuz", "<kernel>/boot/../boot/vmlinuz-6.2")
    assert any("<os/kernel>" in p for p in problems(sibling, vouched))


def test_a_linked_clones_backing_chain_inside_the_pool_passes() -> None:
    text = hostile(
        f"<source file='{POOL_DIR}/web-01.qcow2'/>",
        f"<source file='{POOL_DIR}/clone.qcow2'/><backingStore type='file'><format type='qcow2'/>"
        f"<source file='{POOL_DIR}/base.qcow2'/><backingStore/></backingStore>",
    )
    assert problems(text, RULES) == []


def test_a_clone_vouches_for_its_sources_emulator_kernel_and_log_and_only_those() -> None:
    """What clone and template mark pass: the files the source already uses, outside any pool."""
    text = hostile("/usr/bin/qemu-system-x86_64</emulator>", "/usr/libexec/qemu-kvm</emulator>")
    text = text.replace(f"<kernel>{POOL_DIR}/vmlinuz", "<kernel>/boot/vmlinuz")
    text = text.replace("<serial type='pty'>", "<serial type='pty'><log file='/var/log/libvirt/qemu/web-01.log'/>")
    files = frozenset({"/usr/libexec/qemu-kvm", "/boot/vmlinuz", "/var/log/libvirt/qemu/web-01.log"})
    assert problems(text, Rules(RULES.pools, RULES.emulators, files)) == []
    refused = problems(text, RULES)
    assert len(refused) == 3, refused
    assert any("<devices/emulator> '/usr/libexec/qemu-kvm'" in p for p in refused)
    assert any("<os/kernel> '/boot/vmlinuz'" in p for p in refused)
    assert any("<devices/serial/log> '/var/log/libvirt/qemu/web-01.log'" in p for p in refused)


def test_broken_xml_is_one_line_not_an_exception() -> None:
    (problem,) = problems("<domain>", RULES)
    assert problem.startswith("not well-formed XML")


def test_host_rules_name_the_hosts_pools_and_emulators() -> None:
    conn = libvirt.open("test:///default")
    try:
        every = host_rules(conn, files=["/boot/k", ""])
        one = host_rules(conn, ("default-pool", "no-such-pool"))
    finally:
        conn.close()
    assert every.pools == {"default-pool": "/default-pool"} == one.pools
    assert every.files == {"/boot/k"} and every.emulators


# --- hostile reviewer 2: definitions the allowlist lets through (libvirt defines each as written) ---


def _defined_by_libvirt(xml: str) -> str:
    """libvirt's test driver keeps what the definition names (so the danger is real, not a parser artefact)."""
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXML(
            xml.replace("<name>web-01</name>", "<name>vmbot-t-h2-xml</name>").replace("6695eb01", "6695eb99")
        )
        try:
            return dom.XMLDesc(0)
        finally:
            dom.undefine()
    finally:
        conn.close()


def test_h2_a_fwcfg_sysinfo_entry_naming_a_host_file_is_refused() -> None:
    xml = hostile("<features>", "<sysinfo type='fwcfg'><entry name='opt/x/y' file='/etc/shadow'/></sysinfo><features>")
    assert "file='/etc/shadow'" in _defined_by_libvirt(xml)
    assert any("sysinfo" in p for p in problems(xml, RULES))


def test_h2_a_file_disk_with_a_decoy_pool_attribute_is_checked_by_its_file() -> None:
    xml = hostile(f"<source file='{POOL_DIR}/web-01.qcow2'/>", "<source file='/etc/shadow' pool='vmbot-pool'/>")
    assert "<source file='/etc/shadow'/>" in _defined_by_libvirt(xml)
    assert any("/etc/shadow" in p for p in problems(xml, RULES))


def test_h2_a_dac_seclabel_that_runs_qemu_as_root_is_refused() -> None:
    xml = hostile(
        "<features>", "<seclabel type='static' model='dac' relabel='yes'><label>+0:+0</label></seclabel><features>"
    )
    assert "+0:+0" in _defined_by_libvirt(xml)
    assert any("seclabel" in p for p in problems(xml, RULES))


def test_h2_a_disk_driver_format_other_than_raw_or_qcow2_is_refused() -> None:
    xml = hostile("<driver name='qemu' type='qcow2'/>", "<driver name='qemu' type='vmdk'/>")
    assert "type='vmdk'" in _defined_by_libvirt(xml)
    assert any("vmdk" in p for p in problems(xml, RULES))
