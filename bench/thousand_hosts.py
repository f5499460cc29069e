"""Benchmark: a thousand hosts (issue 15), through `vmbot run` and `vmbot exec`, against a virsh loop.

1,000 test-driver hosts x 100 VMs (100,000 VMs) plus one silent host (a TCP
listener that accepts and never answers), as the real processes:

- `vmbot run --http` (Bolt over HTTP with signed requests, the fake Slack Web API
  from tests/slackfake.py): the first fleet-wide `/vm list --all` (sent as soon as
  the bot listens, so it includes opening every host), a later one, posts per
  response_url, hosts reported down, peak resident memory (VmHWM);
- `vmbot exec` next to the running bot: `host/name` and a bare name;
- baselines measured in the same run: `virsh -c test:///... list --all` for each
  host (xargs -P 2), and the test driver's own cost: one bare Python process
  that only opens the 1,000 fleet files with libvirt-python (its time and VmHWM,
  and so what one open connection costs), and one that only imports vmbot's code.

The bot keeps at most ``[limits] open_hosts`` connections open (default 256), so
its own share of memory is its peak minus its code and that many connections.

The fleet files are cached under /tmp/vmbot-bench-fleet-<hosts>x<vms>.
Run: .venv/bin/python bench/thousand_hosts.py [HOSTS [VMS_PER_HOST]]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.config import Config
from tests.fleetsim import running_bot, silent_host, vm_name, vmbot_exec, wait_kept, write_config, write_hosts

BARE_OPEN = """
import sys, time, libvirt
libvirt.registerErrorHandler(lambda *a: None, None)
uris = sys.argv[1:]
hwm = lambda: int([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0]) / 1024
before = hwm()
t = time.monotonic()
conns = [libvirt.open(u) for u in uris]
for c in conns:
    c.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
took = time.monotonic() - t
print(took, hwm(), before)
"""
CODE_ONLY = """
import handlers.cli, handlers.slack.run, bot.service
print(int([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0]) / 1024)
"""


def virsh_loop(uris: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(
        ["xargs", "-P", "2", "-I", "{}", "virsh", "-q", "-c", "{}", "list", "--all"],
        input="\n".join(uris),
        text=True,
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return time.monotonic() - started


def bare_open(uris: list[str]) -> tuple[float, float, float]:
    """Seconds to open every file, peak MiB, and MiB one open connection costs."""
    out = subprocess.run([sys.executable, "-c", BARE_OPEN, *uris], capture_output=True, text=True, check=True)
    took, hwm, before = (float(x) for x in out.stdout.split())
    return took, hwm, (hwm - before) / len(uris)


def code_only() -> float:
    """Peak MiB of a process that only imports vmbot (the bot's code and its libraries, no hosts)."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", CODE_ONLY], capture_output=True, text=True, check=True, cwd=root)
    return float(out.stdout)


def main() -> None:
    hosts_n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    per = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    fleet = write_hosts(Path(tempfile.gettempdir()) / f"vmbot-bench-fleet-{hosts_n}x{per}", hosts_n, per)
    uris = list(fleet.values())
    print(f"fleet: {hosts_n} test-driver hosts x {per} VMs = {hosts_n * per} VMs, plus 1 silent host")
    with tempfile.TemporaryDirectory() as tmp, silent_host() as silent:
        config = write_config(Path(tmp), {**fleet, "silent": silent})
        with running_bot(config) as bot:
            first, first_s = bot.answer("list --all", "first", timeout=600)
            bot.fake.wait_for("files.completeUploadExternal", timeout=120)
            kept_s = wait_kept(config)
            later, later_s = bot.answer("list --all", "later")
            host = f"h{hosts_n // 2:04d}"
            scoped, scoped_s = vmbot_exec(config, f"state {host}/{vm_name(hosts_n // 2, 1)}")
            bare, bare_s = vmbot_exec(config, f"state {vm_name(hosts_n // 3, 2)}")
            hwm = bot.hwm_mib()
            posts = bot.fake.posts_per_response_url()
            refused = bot.fake.refused_posts()
            blocks = str(first.args["blocks"])
            file = next(iter(bot.fake.files.values()))  # the first list's; the later one uploads its own
            listed = sum(1 for line in (file.data or b"").decode().splitlines() if " vm-" in line)
    virsh_s = virsh_loop(uris)
    bare_open_s, bare_hwm, per_conn = bare_open(uris)
    code_mib = code_only()
    cap = min(Config(hosts={}).open_hosts, hosts_n)
    own = hwm - code_mib - cap * per_conn
    later_note = "from the kept inventory" if "from the inventory kept" in str(later.args["blocks"]) else "asked hosts"
    down_ok = "*Hosts down* (1)" in blocks and "silent: unreachable" in blocks
    rows = [
        ("first fleet-wide /vm list --all (opens every host)", f"{first_s:.1f} s", "target < 30 s"),
        ("  its answer", first.args["text"], ""),
        ("  hosts reported down", "only the silent host" if down_ok else "WRONG: " + blocks[:200], ""),
        ("  VMs in the uploaded file", str(listed), ""),
        ("inventory in the store, seconds after the first answer", f"{kept_s:.1f} s", ""),
        ("later /vm list --all", f"{later_s:.2f} s", "target < 2 s; " + later_note),
        ("posts per response_url", str(posts), f"refused: {refused or 'none'}; Slack keeps 5"),
        ("vmbot exec state host/name (next to the bot)", f"{scoped_s:.2f} s", scoped.stdout.splitlines()[0]),
        ("vmbot exec state bare-name (next to the bot)", f"{bare_s:.2f} s", bare.stdout.splitlines()[0]),
        ("bot peak resident memory (VmHWM)", f"{hwm:.0f} MiB", "target < 500 MiB"),
        (
            "baseline: virsh list --all per host, xargs -P 2",
            f"{virsh_s:.1f} s",
            f"first list / virsh = {first_s / virsh_s:.2f}",
        ),
        (
            "baseline: bare libvirt-python opening every file",
            f"{bare_open_s:.1f} s, {bare_hwm:.0f} MiB",
            "the test driver's own cost",
        ),
        ("baseline: a process that only imports vmbot", f"{code_mib:.0f} MiB", ""),
        (
            f"bot peak above its code and {cap} open connections",
            f"{own:.0f} MiB",
            f"{own * 1024 * 1024 / (hosts_n * per):.0f} bytes per VM ({per_conn * 1024:.0f} KiB per connection)",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:<24} {note}")


if __name__ == "__main__":
    main()
