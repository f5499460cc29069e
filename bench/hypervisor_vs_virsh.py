"""Real-hypervisor figures for the issue note: guest boot, graceful shutdown, pooled actions vs virsh.

    .venv/bin/python bench/hypervisor_vs_virsh.py [--rounds 20] [--boots 3]

Runs scripts/hypervisor-setup.sh for its paths, defines one tiny acpi guest
(``vmbot-b-...``), measures through the command layer (bot.service.Bot on
qemu:///system, one pooled connection) and through ``virsh`` started as a
process per command (what a shell script or a naive bot does), then removes
the guest whatever happens. Medians, with min-max.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.config import Config  # noqa: E402
from bot.policy import AllowAll  # noqa: E402
from bot.service import Bot  # noqa: E402
from bot.store.audit import Actor  # noqa: E402
from tests.hypervisor import conftest as hvc  # noqa: E402  (the tests' guest builder: one XML for both)

WHO = Actor(user="U0BENCH", channel="C0BENCH", unix_user="bench", source="terminal")


def setup_env() -> hvc.Env:
    out = subprocess.run([ROOT / "scripts" / "hypervisor-setup.sh"], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        key, _, value = line.partition("=")
        os.environ[key] = value
    return hvc.Env(
        os.environ["VMBOT_LIBVIRT_URI"],
        os.environ["VMBOT_GUEST_KERNEL"],
        {"acpi": os.environ["VMBOT_GUEST_INITRD_ACPI"], "noacpi": os.environ["VMBOT_GUEST_INITRD_NOACPI"]},
        os.environ["VMBOT_POOL"],
        os.environ["VMBOT_NETWORK"],
    )


def timed(fn: Callable[[], object], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def fmt(samples: list[float]) -> str:
    med = statistics.median(samples)
    unit, k = ("ms", 1000) if med < 1 else ("s", 1)
    return f"{med * k:8.2f} {unit:2} (min {min(samples) * k:.2f}, max {max(samples) * k:.2f}, n={len(samples)})"


def expect(reply, pattern: str) -> str:
    text = reply.text()
    if not re.search(pattern, text):
        raise SystemExit(f"unexpected reply: {text!r} (wanted /{pattern}/)")
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--boots", type=int, default=3)
    args = ap.parse_args()
    with lab_guest(setup_env()) as (bot, name, _path):
        run(bot, name, args)
    return 0


@contextmanager
def lab_guest(
    env: hvc.Env, volume_xml: Callable[[str], str] = hvc.volume_xml, fill: Callable[[str], object] | None = None
) -> Iterator[tuple[Bot, str, str]]:
    """A bot on host "lab" and a defined, shut-off tiny guest on a new volume (filled if asked): (bot, the
    guest's name, its volume's path). The guest, its volume and serial log and the bot's store go after."""
    lv = hvc.Libvirt(env.uri)
    name = f"vmbot-b-{secrets.token_hex(3)}"
    volume, log = f"{name}.qcow2", hvc.SERIAL_LOG_DIR / f"{name}-serial.log"
    tmp = tempfile.TemporaryDirectory()
    bot = Bot(Config(hosts={"lab": env.uri}, store_path=f"{tmp.name}/bench.db", source="bench"), AllowAll())
    try:
        path = lv.conn.storagePoolLookupByName(env.pool).createXML(volume_xml(volume), 0).path()
        if fill is not None:
            fill(path)
        lv.conn.defineXML(hvc.guest_xml(env, name, "acpi", volume, log, "console=ttyS0 vmbot.ip=none"))
        yield bot, name, path
    finally:
        bot.close()
        hvc.remove_guest(lv, name, volume, env.pool)
        log.unlink(missing_ok=True)
        tmp.cleanup()


def run(bot: Bot, name: str, args: argparse.Namespace) -> None:
    target = f"lab/{name}"
    ask = lambda text: bot.handle(text, WHO)  # noqa: E731
    virsh = lambda *a: subprocess.run(["virsh", "-c", "qemu:///system", "-q", *a], capture_output=True, check=True)  # noqa: E731
    boots, ready_in, shutdowns, said_off = [], [], [], []
    for _ in range(args.boots):
        t = time.perf_counter()
        text = expect(ask(f"start {target} --console"), r"ready after")
        boots.append(time.perf_counter() - t)
        ready_in.append(float(re.search(r"ready after (\d+\.\d+)s", text).group(1)))  # type: ignore[union-attr]
        t = time.perf_counter()
        text = expect(ask(f"shutdown {target} --timeout 30"), r"shut off after")
        shutdowns.append(time.perf_counter() - t)
        said_off.append(float(re.search(r"shut off after (\d+\.\d+)s", text).group(1)))  # type: ignore[union-attr]
    expect(ask(f"start {target} --console"), r"ready after")

    ref = bot.fleet.resolve([target]).refs[0]
    ask(f"state {target}")  # warm: the pool's connection is open, as in a running bot
    bot_state = timed(lambda: expect(ask(f"state {target}"), "running"), args.rounds)
    pool_state = timed(lambda: bot.pool.call("lab", lambda c: c.lookupByUUIDString(ref.uuid).state()), args.rounds)
    virsh_state = timed(lambda: virsh("domstate", name), args.rounds)

    def bot_cycle() -> None:
        expect(ask(f"suspend {target}"), "paused")
        expect(ask(f"resume {target}"), "resumed")

    def pool_cycle() -> None:
        bot.pool.call("lab", lambda c: c.lookupByUUIDString(ref.uuid).suspend())
        bot.pool.call("lab", lambda c: c.lookupByUUIDString(ref.uuid).resume())

    def virsh_cycle() -> None:
        virsh("suspend", name)
        virsh("resume", name)

    bot_sr, pool_sr, virsh_sr = (timed(f, args.rounds) for f in (bot_cycle, pool_cycle, virsh_cycle))
    ask(f"destroy {target}")

    med = statistics.median
    print(f"guest boot, start --console to ready line : {fmt(boots)}  (guest part: {fmt(ready_in)})")
    print(f"graceful shutdown --timeout 30            : {fmt(shutdowns)}  (reported: {fmt(said_off)})")
    print(f"state: bot command (parse+resolve+audit)  : {fmt(bot_state)}")
    print(f"state: pooled libvirt call                : {fmt(pool_state)}")
    print(f"state: virsh domstate (a process)         : {fmt(virsh_state)}")
    print(f"suspend+resume: bot commands              : {fmt(bot_sr)}")
    print(f"suspend+resume: pooled libvirt calls      : {fmt(pool_sr)}")
    print(f"suspend+resume: virsh suspend; virsh resume: {fmt(virsh_sr)}")
    print(f"ratio virsh/bot,  state          : {med(virsh_state) / med(bot_state):6.1f}x")
    print(f"ratio virsh/pool, state          : {med(virsh_state) / med(pool_state):6.1f}x")
    print(f"ratio virsh/bot,  suspend+resume : {med(virsh_sr) / med(bot_sr):6.1f}x")
    print(f"ratio virsh/pool, suspend+resume : {med(virsh_sr) / med(pool_sr):6.1f}x")


if __name__ == "__main__":
    sys.exit(main())
