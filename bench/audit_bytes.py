"""Audit store growth per target of a glob command over 10,000 VMs, against one single-VM command.

Three glob commands an operator can type over a generated test-driver fleet:
refused by the policy, refused for want of --yes, and confirmed (stored as one
approval request over every target). Each prints the bytes the store (db +
WAL, checkpointed) grew by per target, and the ratio to one `suspend` of one VM.

    .venv/bin/python bench/audit_bytes.py [--vms 10000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.config import Config
from bot.service import Bot
from bot.store.audit import Audit
from tests.conftest import Vm, write_fleet
from tests.policyrig import make_policy, who


def size(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


def grow(bot: Bot, db: Path, text: str, user: str) -> tuple[int, float, str]:
    bot.audit.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before, started = size(db), time.perf_counter()
    reply = bot.handle(text, who(user))
    took = time.perf_counter() - started
    bot.audit.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return size(db) - before, took, reply.headline[:60]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--vms", type=int, default=10_000)
    n = p.parse_args().vms
    with tempfile.TemporaryDirectory() as tmp:
        uri = write_fleet(Path(tmp) / "big.xml", [Vm(f"vm-{i:05d}") for i in range(n)] + [Vm("one")])
        db = Path(tmp) / "vmbot.db"
        bot = Bot(Config(hosts={"kvm01": uri}, source="bench"), make_policy(Path(tmp)), audit=Audit(str(db)))
        bot.audit.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = size(db)
        for i in range(500):  # one row is smaller than a page: measure many single-VM commands
            bot.handle("suspend one" if i % 2 == 0 else "resume one", who("UREQ"))
        bot.audit.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        base = (size(db) - before) / 500
        print(f"audit store growth per target, {n} VMs; baseline: a single-VM suspend/resume, {base:.0f} B each")
        for text, user in (
            ("destroy 'vm-*' --yes --reason 'x'", "UOPS"),  # an operator: refused by the policy
            ("suspend 'vm-*'", "UREQ"),  # no --yes
            ("destroy 'vm-*' --yes", "UREQ"),  # confirmed: one approval request over every target
        ):
            grown, took, head = grow(bot, db, text, user)
            print(f"  {text:<38} {grown / n:6.0f} B/target ({grown / n / base:4.2f}x baseline) {took:5.1f}s  {head}")
        bot.close()


if __name__ == "__main__":
    main()
