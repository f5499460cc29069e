"""Config backups: a VM's inactive XML, its autostart flag and vmbot's facts about it, as one backup set.

Cheap (two libvirt calls and two small files), so the whole fleet can be
backed up daily. The inactive XML is what ``define`` takes back; the live XML
would carry runtime fields (ids, ports, aliases) a restore must not replay.
No ``VIR_DOMAIN_XML_SECURE``: passwords (VNC, for example) stay out of backup files.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import libvirt

from bot.backup.catalog import Catalog, Entry, manifest_fields
from bot.backup.files import SetWriter, Store

XML_FLAGS = libvirt.VIR_DOMAIN_XML_INACTIVE


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "")


def xml_name(set_id: str, uuid: str) -> str:
    return f"{set_id}-{uuid}.xml"


def meta_name(set_id: str, uuid: str) -> str:
    return f"{set_id}-{uuid}.meta.json"


def facts(dom: libvirt.virDomain, host: str) -> dict:
    """What vmbot knows about the VM besides its XML: restored with it, shown by `backups`."""
    state, reason = dom.state()
    return {
        "host": host,
        "name": dom.name(),
        "uuid": dom.UUIDString(),
        "autostart": bool(dom.autostart()),
        "persistent": bool(dom.isPersistent()),
        "state": state,
        "state_reason": reason,
    }


def write_config(writer: SetWriter, dom: libvirt.virDomain, host: str) -> dict:
    """Put the XML and the facts file into a set being written; returns the facts."""
    uuid = dom.UUIDString()
    info = facts(dom, host)
    writer.add(xml_name(writer.id, uuid), dom.XMLDesc(XML_FLAGS).encode(), "xml")
    writer.add(meta_name(writer.id, uuid), json.dumps(info, indent=1, sort_keys=True).encode(), "meta")
    return info


def finish(
    writer: SetWriter,
    catalog: Catalog,
    info: dict,
    kind: str,
    consistency: str = "n/a",
    parent: str = "",
    checkpoint: str = "",
) -> Entry:
    """Manifest, rename, then the catalog row: a set the catalog names is always complete on disk."""
    entry = Entry(
        id=writer.id,
        kind=kind,
        host=info["host"],
        vm_uuid=info["uuid"],
        vm_name=info["name"],
        created_at=iso_now(),
        size=sum(f.size for f in writer.files),
        status="good",
        consistency=consistency,
        autostart=info["autostart"],
        parent=parent,
        checkpoint=checkpoint,
        files=[f.as_dict() for f in writer.files],
    )
    writer.commit(manifest_fields(entry))
    catalog.add(entry)
    return entry


def take(conn: libvirt.virConnect, host: str, uuid: str, store: Store, catalog: Catalog) -> Entry:
    """A config backup of one VM; on any failure its temporary folder is removed and nothing is cataloged."""
    dom = conn.lookupByUUIDString(uuid)
    writer = store.writer()
    try:
        info = write_config(writer, dom, host)
        return finish(writer, catalog, info, "config")
    except BaseException:
        writer.abandon()
        raise
