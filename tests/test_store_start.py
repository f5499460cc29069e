"""The store at start: a fresh store under concurrency (defect 7), file modes whatever the umask
(defect 8), and a damaged file refused before anything touches it (defect 9).
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from bot.store.audit import Actor, Audit, AuditError
from tests.conftest import vmbot_exe


def config(tmp_path: Path, store: str = "s/vmbot.db") -> Path:
    path = tmp_path / "vmbot.toml"
    path.write_text(
        f'[hosts]\nlab = "test:///default"\n[store]\npath = "{store}"\n[terminal]\nusers = {{ root = "U0ROOT" }}\n'
        '[policy]\nfile = "policy.yml"\n'
    )
    (tmp_path / "policy.yml").write_text("roles:\n  viewer: [list]\ngrants:\n  - who: [U0ROOT]\n    role: viewer\n")
    return path


@pytest.mark.parametrize("round_", range(2))
def test_twenty_processes_start_together_on_a_fresh_store(tmp_path: Path, round_: int) -> None:
    cfg = config(tmp_path)
    procs = [
        subprocess.Popen(
            [vmbot_exe(), "exec", "--config", str(cfg), "--", "/vm list"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(20)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    for p in procs:
        p.stdout.close()  # type: ignore[union-attr]
        p.stderr.close()  # type: ignore[union-attr]
    assert [code for code, _ in results] == [0] * 20, [err for _, err in results if err][:2]


@pytest.mark.parametrize("umask", [0o022, 0o000])
@pytest.mark.parametrize("existing", [True, False])
def test_store_files_are_private_whatever_the_umask(tmp_path: Path, umask: int, existing: bool) -> None:
    where = tmp_path / "var" / "lib"
    if existing:
        where.mkdir(parents=True, mode=0o755)
    old = os.umask(umask)
    try:
        audit = Audit(str(where / "vmbot.db"))
        audit.begin(Actor("U1"), "c1", "start a", "start", "allowed")  # the WAL and its index now exist
        files = sorted(where.glob("vmbot.db*"))
        assert {f.name for f in files} == {"vmbot.db", "vmbot.db-wal", "vmbot.db-shm"}
        modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}
        audit.close()
    finally:
        os.umask(old)
    assert set(modes.values()) == {0o600}, {k: oct(v) for k, v in modes.items()}
    if not existing:
        assert stat.S_IMODE(where.stat().st_mode) == 0o700


def test_an_existing_store_file_that_others_can_read_is_made_private(tmp_path: Path) -> None:
    db = tmp_path / "vmbot.db"
    Audit(str(db)).close()
    db.chmod(0o644)
    Audit(str(db)).close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_the_systemd_unit_sets_a_private_umask() -> None:
    unit = (Path(__file__).parent.parent / "deploy" / "vmbot.service").read_text()
    assert "UMask=0077" in unit.splitlines()


def damaged_store(tmp_path: Path) -> Path:
    """A real store with a few hundred rows, then garbage over a page in the middle of the file."""
    cfg = config(tmp_path, "vmbot.db")
    db = tmp_path / "vmbot.db"
    audit = Audit(str(db))
    for i in range(400):
        audit.record(Actor("U1"), f"c{i}", f"list {'x' * 200}", "list", "allowed", "ok", "y" * 200)
    audit.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    audit.close()
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.seek((size // 4096 // 2) * 4096)
        f.write(b"\xde\xad\xbe\xef" * 1024)
    return cfg


def test_a_damaged_store_is_refused_at_start_and_left_untouched(tmp_path: Path) -> None:
    cfg = damaged_store(tmp_path)
    db = tmp_path / "vmbot.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest(), db.stat().st_mtime_ns
    done = subprocess.run(
        [vmbot_exe(), "exec", "--config", str(cfg), "--", "/vm list"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "damaged" in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert (hashlib.sha256(db.read_bytes()).hexdigest(), db.stat().st_mtime_ns) == before


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "vmbot.db").write_bytes(b"not a database at all\n" * 300)
    with pytest.raises(AuditError, match="damaged"):
        Audit(str(tmp_path / "vmbot.db"))
