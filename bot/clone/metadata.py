"""vmbot's own marks in a domain's ``<metadata>``: a template (name, version, where it came from,
which disks vmbot made read-only) and a clone (its source, and whether it is a linked overlay).

They live in the domain XML under the project's namespace, so they travel with
the VM (dumpxml, backups) and need no table of their own that could drift.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

NS = "https://vmbot.invalid/xmlns/vmbot/1"  # the project's namespace (.invalid: a name, never fetched)
PREFIX = "vmbot"
ET.register_namespace(PREFIX, NS)


@dataclass(frozen=True)
class TemplateMark:
    name: str
    version: int
    source: str  # host/name (uuid) of the VM it was made from
    created: str  # ISO time, UTC
    marked: tuple[str, ...]  # disk targets vmbot made read-only (their copies are writable again)

    def element(self) -> ET.Element:
        el = ET.Element(f"{{{NS}}}template")
        el.set("name", self.name)
        el.set("version", str(self.version))
        el.set("source", self.source)
        el.set("created", self.created)
        el.set("marked", " ".join(self.marked))
        return el


@dataclass(frozen=True)
class CloneMark:
    source: str  # host/name of the source
    source_uuid: str
    template: str  # "" unless cloned from a template
    version: int
    linked: bool

    def element(self) -> ET.Element:
        el = ET.Element(f"{{{NS}}}clone")
        for key, value in (("source", self.source), ("source-uuid", self.source_uuid), ("template", self.template)):
            el.set(key, value)
        el.set("version", str(self.version))
        el.set("linked", "yes" if self.linked else "no")
        return el


def _root(domain_xml: str | ET.Element) -> ET.Element:
    return ET.fromstring(domain_xml) if isinstance(domain_xml, str) else domain_xml


def template(domain_xml: str | ET.Element) -> TemplateMark | None:
    """The template mark of a domain, or None (a malformed mark counts as none: fail closed elsewhere)."""
    el = _root(domain_xml).find(f"metadata/{{{NS}}}template")
    if el is None:
        return None
    try:
        version = int(el.get("version", ""))
    except ValueError:
        return None
    marked = tuple(el.get("marked", "").split())
    return TemplateMark(el.get("name", ""), version, el.get("source", ""), el.get("created", ""), marked)


def clone(domain_xml: str | ET.Element) -> CloneMark | None:
    el = _root(domain_xml).find(f"metadata/{{{NS}}}clone")
    if el is None:
        return None
    version = int(v) if (v := el.get("version", "0")).isdigit() else 0
    return CloneMark(
        el.get("source", ""), el.get("source-uuid", ""), el.get("template", ""), version, el.get("linked") == "yes"
    )


def strip(root: ET.Element) -> None:
    """Drop vmbot's marks (a copy of a template is not a template; a copy of a clone is a new clone)."""
    meta = root.find("metadata")
    if meta is None:
        return
    for el in [e for e in meta if e.tag.startswith(f"{{{NS}}}")]:
        meta.remove(el)
    if not len(meta):
        root.remove(meta)


def put(root: ET.Element, mark: TemplateMark | CloneMark) -> None:
    """Set one mark in the domain element (replacing a mark of the same kind)."""
    meta = root.find("metadata")
    if meta is None:
        meta = ET.Element("metadata")
        root.insert(3, meta)
    new = mark.element()
    for el in [e for e in meta if e.tag == new.tag]:
        meta.remove(el)
    meta.append(new)


def start_refusal(vm: str, mark: TemplateMark) -> str:
    return (
        f"{vm} is version {mark.version} of template {mark.name}: a template never starts, because its disks are "
        f"the base of its clones and writing them would corrupt linked clones. Clone it "
        f"(clone {mark.name} NEW) or unmark it first (template unmark {vm})"
    )
