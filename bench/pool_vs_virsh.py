"""Benchmark: the bot's pooled connections vs a virsh process per action (issue 2).

(a) ``state`` and a ``suspend`` + ``resume`` pair on ``test:///default``: through
    ``Bot.handle`` (parse, resolve, policy, audit row in a WAL sqlite file, act)
    and through the bare Pool + Lifecycle, vs ``virsh -c test:///default ...`` as
    one process per action. Each virsh process gets fresh test:///default state,
    so its ``resume`` finds the VM running and fails; it still pays the full
    process + connection cost, which is what is measured.
(b) ``list --all`` over 20 test-driver hosts plus one refusing and one silent
    host (a listener that accepts and never answers), via ``Bot.handle``, vs a
    sequential ``timeout 5 virsh -c URI list --all`` loop over the same 22 URIs.
    host_timeout is 2 s here (5 s by default) to keep the run short.

Run: .venv/bin/python bench/pool_vs_virsh.py
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.commands import parse
from bot.config import DEMO_DIR, Config
from bot.hypervisor.fleet import Fleet
from bot.hypervisor.lifecycle import Lifecycle
from bot.hypervisor.pool import Pool
from bot.policy import AllowAll
from bot.service import Bot
from bot.store.audit import Actor, Audit
from tests.fakehosts import closed_port, silent_listener

VIRSH = shutil.which("virsh") or "/usr/bin/virsh"
HOST_TIMEOUT = 2.0
ACTOR = Actor(user="U0BENCH", channel="", unix_user="bench", source="terminal")


def per_op(fn: Callable[[], object], runs: int) -> float:
    """Median seconds of one call."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def virsh(uri: str, *args: str, limit: float | None = None) -> int:
    cmd = ["timeout", f"{limit:g}"] if limit else []
    return subprocess.run([*cmd, VIRSH, "-c", uri, *args], capture_output=True, check=False).returncode


def handle_times(store: str) -> tuple[float, float]:
    """``state`` and a ``suspend`` + ``resume`` pair through Bot.handle, the one command path."""
    bot = Bot(Config(hosts={"default": "test:///default"}), AllowAll(), audit=Audit(store))
    try:
        assert bot.handle("state test", ACTOR).status.value == "ok"

        def pair() -> None:
            for text in ("suspend test", "resume test"):
                reply = bot.handle(text, ACTOR)
                assert reply.status.value == "ok", reply.text()

        return per_op(lambda: bot.handle("state test", ACTOR), 200), per_op(pair, 100)
    finally:
        bot.close()


def pool_times() -> tuple[float, float]:
    """The same through the bare Pool + Lifecycle: the connection cost without parsing or audit."""
    pool = Pool({"default": "test:///default"})
    life = Lifecycle(pool, Fleet(pool))
    try:
        (ref,) = life.fleet.resolve(["test"]).refs
        suspend, resume = parse("suspend test"), parse("resume test")

        def pair() -> None:
            life.run(ref, suspend)
            life.run(ref, resume)

        return per_op(lambda: life.state(ref), 500), per_op(pair, 200)
    finally:
        pool.close()


def bench_a(store: str) -> None:
    print("(a) test:///default, VM 'test' — per operation, median")
    columns = {
        "Bot.handle, WAL file audit": handle_times(store),
        "Bot.handle, :memory: audit": handle_times(":memory:"),
        "Pool+Lifecycle": pool_times(),
    }
    uri = "test:///default"
    virsh_state = per_op(lambda: virsh(uri, "domstate", "test"), 20)
    virsh_pair = per_op(lambda: (virsh(uri, "suspend", "test"), virsh(uri, "resume", "test")), 20)
    print(f"  virsh, a process per action:  state {virsh_state * 1e3:.1f}ms   suspend+resume {virsh_pair * 1e3:.1f}ms")
    for name, (state, pair) in columns.items():
        print(
            f"  {name + ':':<30} state {state * 1e3:.3f}ms ({virsh_state / state:.0f}x)"
            f"   suspend+resume {pair * 1e3:.3f}ms ({virsh_pair / pair:.0f}x)"
        )
    print("  target: >= 20x. Bot.handle adds parsing, name resolution, policy, locks and the audit rows")
    print("  (a WAL file audit commits with synchronous=FULL: one fsync per row write).")


def bench_b(tmp: Path, store: str) -> None:
    print(f"(b) list --all over 20 test-driver hosts + 1 refusing + 1 silent (host_timeout = {HOST_TIMEOUT:g}s)")
    hosts = {}
    for i in range(20):
        path = tmp / f"host{i:02d}.xml"
        shutil.copy(DEMO_DIR / ("kvm01.xml" if i % 2 == 0 else "kvm02.xml"), path)
        hosts[f"host{i:02d}"] = f"test://{path}"
    listener, held = silent_listener()
    hosts["refusing"] = f"qemu+tcp://127.0.0.1:{closed_port()}/system"
    hosts["silent"] = f"qemu+tcp://127.0.0.1:{listener.getsockname()[1]}/system"
    config = Config(hosts=hosts, host_timeout=HOST_TIMEOUT, probe_interval=60.0)
    bot = Bot(config, AllowAll(), audit=Audit(store))
    try:
        started = time.perf_counter()
        first = bot.handle("list --all", ACTOR)
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        second = bot.handle("list --all", ACTOR)
        second_s = time.perf_counter() - started
    finally:
        bot.close()
    print(f"  bot, first answer:           {first_s:6.3f}s  (target <= {HOST_TIMEOUT + 0.5:g}s)  {first.headline}")
    print(f"  bot, silent host marked down: {second_s:6.3f}s  (target <= 0.5s)  {second.headline}")
    started = time.perf_counter()
    codes = [virsh(uri, "list", "--all", limit=5) for uri in hosts.values()]
    loop_s = time.perf_counter() - started
    ok = codes.count(0)
    print(f"  virsh loop (timeout 5 each):  {loop_s:6.3f}s  exit codes: {ok} ok, {len(codes) - ok} not")
    listener.close()
    for conn in held:
        conn.close()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="vmbot-bench-") as tmp:
        store = str(Path(tmp) / "audit.db")
        bench_a(store)
        print()
        bench_b(Path(tmp), store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
