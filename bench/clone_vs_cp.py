"""Full clone of a guest disk through the bot vs ``cp --sparse=always`` of the same image, same run.

    .venv/bin/python bench/clone_vs_cp.py [--rounds 5] [--size-mib 1024] [--data-mib 256]

Runs scripts/hypervisor-setup.sh for its paths, makes a qcow2 volume of
--size-mib in vmbot-pool with --data-mib of written (non-zero) data spread over
it, defines a tiny guest on it (``vmbot-b-...``), then alternates: ``clone``
through the command layer (policy, lock, audit, plan, allowlist check,
createXMLFrom, define), and ``cp --sparse=always`` of the same file (the
baseline: what an admin would type). Each copy is removed after it is timed;
the guest and the volume are removed at the end whatever happens. Medians, with
min-max, and the ratio clone / cp.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.hypervisor_vs_virsh import WHO, fmt, lab_guest, setup_env  # noqa: E402
from bot.service import Bot  # noqa: E402


def volume_xml(name: str, size_mib: int) -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="MiB").text = str(size_mib)
    ET.SubElement(ET.SubElement(vol, "target"), "format", type="qcow2")
    return ET.tostring(vol, encoding="unicode")


def fill(path: str, size_mib: int, data_mib: int) -> None:
    """Write data_mib of patterned data in 4 MiB chunks spread evenly over the image (qemu-io, bench only)."""
    chunks = max(1, data_mib // 4)
    step = max(4, size_mib // chunks)
    cmds = []
    for i in range(chunks):
        cmds += ["-c", f"write -P {(i % 250) + 1} {i * step}M 4M"]
    subprocess.run(["qemu-io", "-f", "qcow2", *cmds, path], check=True, capture_output=True)


def remove_clone(bot: Bot, name: str) -> None:
    reply = bot.handle(f"undefine lab/{name} --remove-storage", WHO)
    if "removed 1 volume" not in reply.text():
        raise SystemExit(f"could not remove the clone: {reply.text()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--data-mib", type=int, default=256)
    args = ap.parse_args()
    with lab_guest(
        setup_env(),
        lambda volume: volume_xml(volume, args.size_mib),
        lambda path: fill(path, args.size_mib, args.data_mib),
    ) as (bot, name, path):
        clones, cps = run(bot, name, path, args.rounds)
    print(f"image: {args.size_mib} MiB qcow2 with {args.data_mib} MiB written; {args.rounds} rounds")
    print(f"clone (bot, createXMLFrom):   {fmt(clones)}")
    print(f"cp --sparse=always:           {fmt(cps)}")
    print(f"ratio clone / cp (medians):   {statistics.median(clones) / statistics.median(cps):.2f}")
    return 0


def run(bot: Bot, name: str, path: str, rounds: int) -> tuple[list[float], list[float]]:
    clones, cps = [], []
    for i in range(rounds):
        new = f"{name}-c{i}"
        t = time.perf_counter()
        reply = bot.handle(f"clone lab/{name} {new}", WHO)
        clones.append(time.perf_counter() - t)
        if "cloned from" not in reply.text():
            raise SystemExit(f"clone failed: {reply.text()}")
        remove_clone(bot, new)
        target = f"{path}.cp-{secrets.token_hex(3)}"
        t = time.perf_counter()
        subprocess.run(["cp", "--sparse=always", path, target], check=True)
        cps.append(time.perf_counter() - t)
        os.unlink(target)
    return clones, cps


if __name__ == "__main__":
    raise SystemExit(main())
