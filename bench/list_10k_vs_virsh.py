"""`list --all` over one host with 10,000 VMs: `vmbot exec` vs `virsh list --all`, both a process.

The fleet is libvirt's test driver, generated into a temporary file; each
process opens it (private state per open), lists every VM and exits. Also
prints the peak memory of each process and the in-process time of the command.

    .venv/bin/python bench/list_10k_vs_virsh.py [--vms 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.config import Config
from bot.policy import AllowAll
from bot.service import Bot
from bot.store.audit import Actor, Audit
from tests.conftest import Vm, write_fleet

VENV = Path(sys.executable).parent


def timed(cmd: list[str]) -> tuple[float, int]:
    """Seconds and peak RSS (MiB) of one process (its own rusage, from wait4)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} exited {proc.returncode}")
    return took, usage.ru_maxrss // 1024


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--vms", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        states = ["running", "shut off", "paused"]
        uri = write_fleet(Path(tmp) / "big.xml", [Vm(f"vm-{i:05d}", states[i % 3]) for i in range(args.vms)])
        cfg = Path(tmp) / "vmbot.toml"
        cfg.write_text(
            f'[hosts]\nbig = "{uri}"\n[store]\npath = "vmbot.db"\n[terminal]\n'
            f'users = {{ {os.environ.get("USER", "root")} = "U0BENCH" }}\n[policy]\nfile = "policy.yml"\n'
        )
        (Path(tmp) / "policy.yml").write_text("roles:\n  v: [list]\ngrants:\n  - who: [U0BENCH]\n    role: v\n")
        bot_runs = [
            timed([str(VENV / "vmbot"), "exec", "--config", str(cfg), "--", "/vm list --all"]) for _ in range(args.runs)
        ]
        virsh_runs = [timed(["virsh", "-c", uri, "list", "--all"]) for _ in range(args.runs)]
        bot = Bot(Config(hosts={"big": uri}, demo=True, source="bench"), AllowAll(), audit=Audit(":memory:"))
        started = time.perf_counter()
        reply = bot.handle("list --all", Actor("U0BENCH"))
        in_process = time.perf_counter() - started
        bot.close()
    b, v = statistics.median(t for t, _ in bot_runs), statistics.median(t for t, _ in virsh_runs)
    print(f"list --all over {args.vms} VMs on one test-driver host, median of {args.runs} processes")
    print(f"  vmbot exec:        {b:6.2f} s   peak RSS {max(m for _, m in bot_runs)} MiB")
    print(f"  virsh list --all:  {v:6.2f} s   peak RSS {max(m for _, m in virsh_runs)} MiB")
    print(f"  in process (Bot.handle): {in_process:6.2f} s  ({reply.headline})")
    print(f"  ratio virsh / vmbot = {v / b:.2f}x")


if __name__ == "__main__":
    main()
