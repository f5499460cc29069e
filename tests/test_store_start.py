"""The store at start: a fresh store under concurrency (defect 7), file modes whatever the umask
(defect 8), and a damaged file refused before anything touches it (defect 9).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

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
