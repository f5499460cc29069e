"""Rebuilding a disk from a chain of qcow2 backups, checked against qemu-img's own view of the same chain."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bot.backup.catalog import Entry
from bot.backup.qcow2 import Qcow2Error, rebuild
from bot.backup.retention import plan


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=60, check=False)


def qcow2(path: Path, *writes: str, size: str = "8M") -> str:
    assert qemu_img("create", "-q", "-f", "qcow2", str(path), size).returncode == 0
    cmds = [a for w in writes for a in ("-c", w)]
    if cmds:
        subprocess.run(["qemu-io", "-f", "qcow2", *cmds, str(path)], check=True, capture_output=True, timeout=60)
    return str(path)


def test_a_full_and_two_increments_rebuild_to_what_qemu_reads_through_the_chain(tmp_path: Path) -> None:
    full = qcow2(tmp_path / "full.qcow2", "write -P 0xab 0 3M", "write -P 0x11 6M 1M")
    inc1 = qcow2(tmp_path / "inc1.qcow2", "write -P 0x5a 1M 64k", "write -z 6M 512k")  # data and a zeroed range
    inc2 = qcow2(tmp_path / "inc2.qcow2", "write -P 0x77 1M 4k", "write -P 0x33 7M 64k")
    # qemu's own answer: the same files stacked as backing files (what the increments mean; QEMU's
    # incremental targets name a backing file too, which the rebuild ignores)
    for child, parent in ((inc1, full), (inc2, inc1)):
        assert qemu_img("rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", parent, child).returncode == 0
    out = tmp_path / "disk.img"
    rebuild([full, inc1, inc2], str(out))
    same = qemu_img("compare", "-f", "raw", "-F", "qcow2", str(out), inc2)
    assert same.returncode == 0, same.stdout + same.stderr
    assert out.stat().st_size == 8 << 20 and oct(out.stat().st_mode & 0o777) == "0o600"
    assert out.stat().st_blocks * 512 < 6 << 20  # untouched ranges stay holes


def test_what_it_cannot_read_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"not a qcow2 file at all" * 10)
    with pytest.raises(Qcow2Error, match="not a qcow2"):
        rebuild([str(tmp_path / "junk")], str(tmp_path / "a.img"))
    base = qcow2(tmp_path / "base.qcow2", "write -P 1 0 64k")
    packed = tmp_path / "packed.qcow2"
    assert qemu_img("convert", "-c", "-f", "qcow2", "-O", "qcow2", base, str(packed)).returncode == 0
    with pytest.raises(Qcow2Error, match="compressed"):
        rebuild([str(packed)], str(tmp_path / "b.img"))
    small = qcow2(tmp_path / "small.qcow2", size="4M")
    with pytest.raises(Qcow2Error, match="different sizes"):
        rebuild([base, small], str(tmp_path / "c.img"))


def test_prune_never_removes_a_backup_an_increment_still_needs() -> None:
    t0 = datetime(2026, 1, 1, 2, 0)

    def e(i: int, parent: str = "") -> Entry:
        when = (t0 + timedelta(days=i)).isoformat()
        return Entry(f"{i:04d}", "disk", "kvm01", "u1", "web", when, 1, "good", "crash", False, parent=parent)

    chain = [e(0), e(1, "0000"), e(2, "0001"), e(3, "0002")]
    kept, removed = plan(chain, {"keep_last": 1})
    assert [x.id for x in kept] == ["0000", "0001", "0002", "0003"] and removed == []
    kept, removed = plan([*chain, e(4)], {"keep_last": 1})  # a new full: the old chain may go
    assert [x.id for x in kept] == ["0004"] and len(removed) == 4
