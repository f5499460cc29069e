"""Which VMs are linked clones of a given VM: their disks are qcow2 overlays on its disks.

Asked before anything would pull a base from under its overlays (template
unmark, undefine --remove-storage). Both signs count: a disk whose stated
backing file is one of the base's disks, and vmbot's own clone mark.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt

from bot.clone import metadata
from bot.clone.disks import disks


def disk_paths(conn: libvirt.virConnect, root: ET.Element) -> set[str]:
    """The files behind the domain's disks, pool volumes resolved to their paths."""
    out = set()
    for d in disks(root):
        if d.path:
            out.add(d.path)
        elif d.volume:
            try:
                out.add(conn.storagePoolLookupByName(d.pool).storageVolLookupByName(d.volume).path())
            except libvirt.libvirtError:
                pass
    return out


def linked_clones(conn: libvirt.virConnect, uuid: str) -> list[str]:
    """Names of the VMs on this host whose disks are overlays on the disks of VM ``uuid``."""
    base = ET.fromstring(conn.lookupByUUIDString(uuid).XMLDesc(0))
    paths = disk_paths(conn, base)
    found = []
    for dom in conn.listAllDomains(0):
        if dom.UUIDString() == uuid:
            continue
        root = ET.fromstring(dom.XMLDesc(0))
        mark = metadata.clone(root)
        backed = {d.backing for d in disks(root)} & paths
        if backed or (mark and mark.linked and mark.source_uuid == uuid):
            found.append(dom.name())
    return sorted(found)


def overlay_disks(domain_xml: str) -> list[str]:
    """Targets of the disks that are overlays (a backup must keep their base, or copy them flattened)."""
    return [d.target for d in disks(domain_xml) if d.backing]
