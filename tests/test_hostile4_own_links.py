"""Connections the backup code opens on its own (long jobs must not hold the pool's worker) are opened as the
pool opens them: an ssh URI gets no_tty=1 (ssh -o BatchMode=yes), so an unknown host key is a refusal, never
a prompt on whatever terminal started the bot. A fake ``ssh`` first on PATH records what libvirt ran."""

from __future__ import annotations

import os
from pathlib import Path

import libvirt
import pytest

from bot.backup import inpool, verify
from bot.backup.catalog import Entry
from bot.backup.files import Store

URI = "qemu+ssh://vmbot@kvm01.invalid/system"  # no no_tty: the config allows it, the pool adds it


@pytest.fixture
def ssh_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir, argv = tmp_path / "bin", tmp_path / "argv"
    bin_dir.mkdir()
    fake = bin_dir / "ssh"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {argv}\nexit 255\n')
    fake.chmod(0o700)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return argv


def entry() -> Entry:
    uuid = "6f8a1c2e-0000-4000-8000-000000000001"
    name = f"vmbot-backup-20261126T000000Z-abc-{uuid}-disk0.qcow2"
    files = [
        {"name": name, "role": "disk", "size": 1, "sha256": "0", "extra": {"pool": "p", "index": 0, "format": "qcow2"}}
    ]
    return Entry("20261126T000000Z-abc", "disk", "kvm01", uuid, "vm", "", 1, "good", "crash", False, files=files)


def test_verify_of_a_pool_copy_opens_ssh_in_batch_mode(ssh_argv: Path) -> None:
    failures, unknown = verify.in_pool(entry(), URI)
    assert not failures and unknown and "cannot reach kvm01" in unknown[0]
    assert "BatchMode=yes" in ssh_argv.read_text()


def test_restore_fetch_of_a_pool_copy_opens_ssh_in_batch_mode(ssh_argv: Path, tmp_path: Path) -> None:
    with pytest.raises(libvirt.libvirtError), inpool.fetched(Store(tmp_path / "store"), entry(), URI):
        pass
    assert "BatchMode=yes" in ssh_argv.read_text()
