"""``screenshot VM``: a picture of the VM's display, as a PNG attachment for the requester only.

QEMU answers with PNG on libvirt 9 (seen here); older stacks answer with PPM,
which chat clients cannot show, so PPM is converted to PNG with the standard
library (no image dependency for one rarely used format).
"""

from __future__ import annotations

import re
import struct
import time
import zlib

import libvirt

from bot import times
from bot.hypervisor.fleet import Fleet, VmRow
from bot.hypervisor.streams import aborted_on_error
from bot.reply import Attachment, Reply, Status

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_BYTES = 32 << 20  # a display is a few MB at most; stop reading a runaway stream
PPM_HEADER = re.compile(rb"P6\s+(?:#[^\n]*\s+)*(\d+)\s+(?:#[^\n]*\s+)*(\d+)\s+(?:#[^\n]*\s+)*(\d+)\s")


def screenshot(fleet: Fleet, row: VmRow) -> Reply:
    ref = row.ref
    mimetype, data = fleet.pool.call(ref.host, lambda c: grab(c, ref.uuid))
    if mimetype in ("image/x-portable-pixmap", "image/x-ppm") or data.startswith(b"P6"):
        mimetype, data = "image/png", ppm_to_png(data)
    ext = {"image/png": "png", "image/jpeg": "jpg"}.get(mimetype, "bin")
    now = time.time()
    filename = f"screenshot-{_safe(ref.host)}-{_safe(ref.name)}-{times.compact(now)}.{ext}"  # a label, never a path
    attachment = Attachment(filename, data, mimetype, title=f"{ref.name} on {ref.host} at {times.clock(now)}")
    return Reply(Status.OK, f"{ref.name} on {ref.host}: screenshot", attachment=attachment)


def grab(conn: libvirt.virConnect, uuid: str) -> tuple[str, bytes]:
    """Read screen 0 through a blocking stream; runs on the host's pool worker."""
    dom = conn.lookupByUUIDString(uuid)
    with aborted_on_error(conn.newStream(0)) as stream:
        mimetype = dom.screenshot(stream, 0)
        data = bytearray()
        while chunk := stream.recv(256 * 1024):
            if not isinstance(chunk, bytes) or len(data) + len(chunk) > MAX_BYTES:
                raise libvirt.libvirtError("the screenshot stream was too large or broken")
            data.extend(chunk)
        stream.finish()
    return mimetype or "application/octet-stream", bytes(data)


def ppm_to_png(ppm: bytes) -> bytes:
    """Binary PPM (P6, 8-bit) to PNG: one IHDR, one zlib IDAT, filter 0 on each row."""
    m = PPM_HEADER.match(ppm)
    if not m or int(m.group(3)) != 255:
        raise ValueError("not an 8-bit binary PPM image")
    width, height = int(m.group(1)), int(m.group(2))
    pixels = ppm[m.end() : m.end() + width * height * 3]
    stride = width * 3
    raw = b"".join(b"\x00" + pixels[y * stride : (y + 1) * stride] for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:60] or "vm"
