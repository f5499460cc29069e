"""What a state change will do to one VM, in words an approver can judge.

Used by approval requests and ``--dry-run`` alike, so the approver reads the
same sentence the requester saw when trying it out.
"""

from __future__ import annotations

import libvirt

from bot.commands import Command
from bot.hypervisor.fleet import Fleet, VmRow
from bot.hypervisor.pool import HostDown
from bot.hypervisor.states import refusal

EFFECTS = {
    "destroy": ("immediate power-off of {vm}", "unsaved guest data is lost"),
    "reset": ("hard reset of {vm}", "like pressing the reset button; unsaved guest data is lost"),
    "shutdown": ("ACPI power-off request to {vm}", "the guest decides when (and whether) to stop"),
    "reboot": ("ACPI reboot request to {vm}", "the guest restarts itself"),
    "start": ("boot {vm}", "it starts from its disk (or its managed-save image)"),
    "suspend": ("pause {vm}", "its vCPUs stop; memory stays allocated"),
    "resume": ("unpause {vm}", "its vCPUs run again"),
    "managedsave": ("save the memory of {vm} to disk and stop it", "start restores it"),
    "undefine": ("remove the definition of {vm}", "its disks are kept"),
    "autostart": ("make {vm} start with its host", "nothing changes until the host boots"),
    "snapshot": ("internal snapshot {snap} of {vm}", "a running VM pauses while its memory is saved"),
    "revert": (
        "revert {vm} to snapshot {snap}",
        "everything written to its disks since that snapshot is lost",
    ),
    "snapshot-delete": ("delete snapshot {snap} of {vm}", "that point can no longer be reverted to"),
    "backup": ("config backup of {vm}", "its XML, autostart flag and metadata are saved; the VM is not touched"),
}


def size(kib: int) -> str:
    if kib >= 1024 * 1024:
        gib = kib / (1024 * 1024)
        return f"{gib:.0f} GiB" if gib == int(gib) else f"{gib:.1f} GiB"
    return f"{kib // 1024} MiB"


def preview(command: Command, row: VmRow) -> str:
    """One line: the effect on this VM now, with its state and size, or why it would be refused."""
    action, ref = command.action.name, row.ref
    why = refusal(action, ref.name, row.state)
    if why:
        return f"{ref}: would be refused: {why}"
    what, effect = EFFECTS.get(action, (f"{action} {{vm}}", ""))
    if action == "undefine" and command.flag("remove-storage"):
        effect = "its disk volumes are deleted too"
    if action == "autostart" and command.flag("disable"):
        what, effect = "stop {vm} starting with its host", "nothing changes until the host boots"
    if action == "revert" and row.state.active:
        effect = f"its memory now ({row.state.name}) and everything written to its disks since that snapshot are lost"
    if action == "shutdown" and command.flag("timeout"):
        effect += f"; waits up to {command.flag('timeout')}s, never forces"
    facts = [row.state.name]
    if row.vcpus:
        facts.append(f"{row.vcpus} vCPU")
    if row.memory_kib:
        facts.append(size(row.memory_kib))
    if news := command.new_names():
        how = "linked clones (qcow2 overlays)" if command.flag("linked") else "full copies"
        if action == "template":
            what, effect = f"copy {{vm}} into a new version of template {news[0]}", "the VM stays as it was"
        else:
            what, effect = (
                f"clone {{vm}} into {', '.join(news)}",
                f"{how}, new UUIDs and MACs; the source is not changed",
            )
    if action == "template" and command.targets[0] == "mark":
        what, effect = (
            "mark {vm} as a template",
            "autostart off, its disks read-only; it never starts again until unmarked",
        )
    elif action == "template" and command.targets[0] == "unmark":
        what, effect = "unmark template {vm}", "its disks become writable; refused while linked clones use them"
    snap = command.targets[1] if len(command.targets) > 1 else "(named by the time)"
    line = what.format(vm=f"{ref.name} on {ref.host}", snap=snap) + ", " + ", ".join(facts)
    return f"{line}: {effect}" if effect else line


def sized(fleet: Fleet, rows: list[VmRow]) -> list[VmRow]:
    """Rows with vCPUs and memory filled in: the bulk stats of some drivers leave them out."""
    out = []
    for row in rows:
        if row.vcpus and row.memory_kib:
            out.append(row)
            continue
        try:
            out.append(fleet.row(row.ref))
        except (HostDown, libvirt.libvirtError):
            out.append(row)
    return out
