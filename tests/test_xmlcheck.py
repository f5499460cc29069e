"""The allowlist every XML vmbot defines passes: each forbidden construct is named, a plain VM passes."""

from __future__ import annotations

import pytest

from bot.clone.xmlcheck import check_domain_xml

POOLS = {"default": "/var/lib/vmbot/pool"}
BASE = """<domain type='qemu'><name>x</name><os><type>hvm</type><kernel>/boot/vmlinuz</kernel></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/var/lib/vmbot/pool/a.qcow2'/>
<target dev='vda'/></disk>
<disk type='volume' device='disk'><source pool='default' volume='b.qcow2'/><target dev='vdb'/></disk>
<interface type='network'><source network='default'/></interface>
<serial type='pty'><target port='0'/></serial>
<channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
{extra}</devices>{tail}</domain>"""
FILES = ["/boot/vmlinuz", "/usr/bin/qemu-system-x86_64"]


def check(extra: str = "", tail: str = "", files: list[str] = FILES) -> list[str]:
    return check_domain_xml(BASE.format(extra=extra, tail=tail), POOLS, files)


def test_a_plain_vm_in_the_pools_passes() -> None:
    assert check() == []


@pytest.mark.parametrize(
    ("extra", "tail", "said"),
    [
        ("", "<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
             "<qemu:arg value='-x'/></qemu:commandline>", "QEMU pass-through"),
        ("<hostdev mode='subsystem' type='pci'/>", "", "host device pass-through"),
        ("<filesystem type='mount'><source dir='/'/><target dir='r'/></filesystem>", "", "host directory"),
        ("<serial type='file'><source path='/etc/cron.d/x'/></serial>", "", "host file or socket"),
        ("<channel type='unix'><source mode='bind' path='/run/x.sock'/></channel>", "", "host file or socket"),
        ("<interface type='ethernet'><script path='/tmp/x'/></interface>", "", "type='ethernet'"),
        ("<disk type='network' device='disk'><source protocol='nbd' name='x'/><target dev='vdc'/></disk>", "",
         "type 'network' is not allowed"),
        ("<disk type='file' device='disk'><source file='/etc/shadow'/><target dev='vdc'/></disk>", "",
         "/etc/shadow is outside the allowed pools"),
        ("<disk type='file' device='disk'><source file='/var/lib/vmbot/pool/../../../etc/shadow'/>"
         "<target dev='vdc'/></disk>", "", "outside the allowed pools"),
        ("<disk type='volume' device='disk'><source pool='other' volume='x'/><target dev='vdc'/></disk>", "",
         "pool 'other' is not an allowed pool"),
        ("<disk type='file' device='disk'><source file='/var/lib/vmbot/pool/o.qcow2'/><backingStore type='file'>"
         "<source file='/root/secret.qcow2'/></backingStore><target dev='vdc'/></disk>", "", "/root/secret.qcow2"),
        ("<serial type='pty'><log file='/etc/motd'/></serial>", "", "log /etc/motd"),
        ("<tpm model='tpm-tis'><backend type='passthrough'/></tpm>", "", "host's TPM"),
    ],
)  # fmt: skip
def test_each_forbidden_construct_is_named(extra: str, tail: str, said: str) -> None:
    problems = check(extra, tail)
    assert any(said in p for p in problems), problems


def test_boot_files_and_emulator_must_be_the_allowed_ones() -> None:
    problems = check(files=[])
    assert any("<kernel> /boot/vmlinuz" in p for p in problems)
    assert any("<emulator> /usr/bin/qemu-system-x86_64" in p for p in problems)


def test_broken_xml_is_refused_not_raised() -> None:
    (problem,) = check_domain_xml("<domain>", POOLS)  # one line, no exception
    assert problem.startswith("not valid XML")
