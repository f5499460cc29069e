"""A domain's disks as the clone, template and snapshot code needs them, read from its XML.

One reader, so "is this disk written to?" and "is it an overlay?" have one answer
everywhere (clone copies it or shares it, a snapshot needs qcow2, a template
marks it read-only, backups treat an overlay's base as shared).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass


@dataclass(frozen=True)
class Disk:
    target: str  # vda, sdb...
    device: str  # disk, cdrom, floppy, lun
    kind: str  # the <disk type=...>: file, block, volume, network...
    path: str  # file or dev path ("" for a pool volume or a network disk)
    pool: str  # pool and volume for <disk type='volume'>
    volume: str
    format: str  # the <driver type>, "" when not stated
    readonly: bool
    shareable: bool
    backing: str  # the path of the first <backingStore> source ("" when none is stated)

    @property
    def writable(self) -> bool:
        """A disk the guest writes: a clone needs its own copy, a snapshot must cover it."""
        return self.device in ("disk", "lun") and not self.readonly and not self.shareable

    @property
    def has_source(self) -> bool:
        return bool(self.path or self.volume)


def disks(domain_xml: str | ET.Element) -> list[Disk]:
    """Every <disk> of the domain, in order."""
    root = ET.fromstring(domain_xml) if isinstance(domain_xml, str) else domain_xml
    return [_disk(el) for el in root.iterfind("./devices/disk")]


def _disk(el: ET.Element) -> Disk:
    source = el.find("source")
    src = source.attrib if source is not None else {}
    driver = el.find("driver")
    target = el.find("target")
    backing = el.find("backingStore/source")
    return Disk(
        target=target.get("dev", "") if target is not None else "",
        device=el.get("device", "disk"),
        kind=el.get("type", "file"),
        path=src.get("file") or src.get("dev") or "",
        pool=src.get("pool", ""),
        volume=src.get("volume", ""),
        format=driver.get("type", "") if driver is not None else "",
        readonly=el.find("readonly") is not None,
        shareable=el.find("shareable") is not None,
        backing=(backing.get("file") or backing.get("dev") or "") if backing is not None else "",
    )


def uses_pflash(domain_xml: str | ET.Element) -> bool:
    """UEFI firmware in pflash: its NVRAM is not in a qcow2 image, so QEMU cannot snapshot it internally."""
    root = ET.fromstring(domain_xml) if isinstance(domain_xml, str) else domain_xml
    loader = root.find("./os/loader")
    return (loader is not None and loader.get("type") == "pflash") or root.find("./os[@firmware='efi']") is not None
