"""Console, screenshot and state-since on libvirt's test driver (the real guest is tests/hypervisor/)."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable

import libvirt

from bot.config import Config, demo
from bot.hypervisor.console import BootLog, merge_logs
from bot.hypervisor.screenshot import PNG_SIGNATURE, ppm_to_png
from bot.reply import Status
from bot.service import Bot
from bot.store.audit import Actor


def png_pixels(png: bytes) -> tuple[int, int, bytes]:
    """Decode our own PNGs (one IDAT, filter 0) to check the conversion, not just the signature."""
    assert png.startswith(PNG_SIGNATURE)
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(png):
        (n,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + n]
        assert struct.unpack(">I", png[pos + 8 + n : pos + 12 + n])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, (w, h) = zlib.decompress(idat), size
    rows = [raw[y * (w * 3 + 1) : (y + 1) * (w * 3 + 1)] for y in range(h)]
    assert all(r[0] == 0 for r in rows)
    return w, h, b"".join(r[1:] for r in rows)


def test_ppm_becomes_a_png_with_the_same_pixels() -> None:
    pixels = bytes(range(2 * 3 * 3))  # 2 wide, 3 high
    png = ppm_to_png(b"P6\n# a comment\n2 3\n255\n" + pixels)
    assert png_pixels(png) == (2, 3, pixels)


def test_boot_log_ready_line_counts_only_when_complete_and_is_the_last_shown() -> None:
    log = BootLog(re.compile("READY"))
    log.feed(b"\x1b[0mLinux version 6.1\r\nbooting\r\nVMBOT-GUEST-RE")
    assert not log.done.is_set()
    log.feed(b"ADY ip=none\r\nafter the ready line\r\n")
    assert log.found and log.done.is_set()
    assert log.tail() == ["Linux version 6.1", "booting", "VMBOT-GUEST-READY ip=none"]


def test_boot_log_stops_a_console_that_never_ends() -> None:
    log = BootLog(re.compile("READY"))
    for _ in range(300):
        log.feed(b"x" * 4095 + b"\n")
    assert log.done.is_set() and not log.found
    assert "more than 1024 KiB" in log.problem
    assert len(log.data) == 1 << 20


def test_boot_logs_of_one_command_are_merged_by_vm() -> None:
    one = ("h/a", ["boot", "READY"])
    assert merge_logs([one]) == ["boot", "READY"]
    two = ("h/b", ["x"])
    assert merge_logs([one, two]) == ["h/a | boot", "h/a | READY", "h/b | x"]
    assert merge_logs([]) is None


def test_start_console_on_a_driver_without_consoles_starts_and_says_so(demo_bot: Bot, actor: Actor) -> None:
    reply = demo_bot.handle("start centos7 --console", actor)
    assert reply.status is Status.OK
    assert reply.headline.startswith("kvm01/centos7: started; console not available here (")
    assert demo_bot.handle("state centos7", actor).headline.startswith("centos7 on kvm01: running (booted)")


def test_screenshot_on_the_test_driver_is_a_png_for_the_requester(demo_bot: Bot, actor: Actor) -> None:
    reply = demo_bot.handle("screenshot ubuntu20", actor)
    assert reply.status is Status.OK and reply.attachment is not None
    assert reply.attachment.content.startswith(PNG_SIGNATURE)
    assert reply.attachment.mimetype == "image/png"
    assert demo_bot.handle("screenshot ubuntu20 --public", actor).status is Status.USAGE  # a screen can show secrets
    refused = demo_bot.handle("screenshot centos7", actor)
    assert refused.headline == "centos7 is shut off; screenshot applies to a running VM"


def test_state_says_since_when_and_survives_a_restart(make_bot: Callable[..., Bot], actor: Actor, tmp_path) -> None:
    store = str(tmp_path / "since.db")
    bot = make_bot(demo(), store=store)
    assert bot.handle("state ubuntu20", actor).headline == "ubuntu20 on kvm01: running (unknown)"  # nothing seen yet
    bot.handle("suspend ubuntu20", actor)
    ref = bot.fleet.resolve(["ubuntu20"]).refs[0]
    with bot.events.changed:  # the event arrives on libvirt's event loop, maybe after the reply
        assert bot.events.changed.wait_for(lambda: bot.events.last(ref) is not None, timeout=10)
    first = bot.handle("state ubuntu20", actor).headline
    assert re.fullmatch(r"ubuntu20 on kvm01: paused \(user\) since \d\d:\d\d:\d\d UTC", first), first
    rows = bot.events.history(ref)
    assert [(r["event"], r["state"], r["reason"]) for r in rows] == [("suspended", "paused", "user")]

    again = make_bot(demo(), store=store)  # a restarted bot: nothing in memory, the same database
    ref = again.fleet.resolve(["ubuntu20"]).refs[0]
    change = again.events.last(ref)
    assert change is not None and change.state is not None and change.state.name == "paused"
    assert first.endswith(change.text())


def test_a_change_outside_the_bot_is_heard(make_bot: Callable[..., Bot], actor: Actor) -> None:
    bot = make_bot(Config(hosts={"t": "test:///default"}, demo=True, source="tests"))
    bot.handle("state test", actor)  # connected: events flow
    outside = libvirt.open("test:///default")  # connections to test:///default share state in a process
    dom = outside.lookupByName("test")
    dom.suspend()
    try:
        ref = bot.fleet.resolve(["test"]).refs[0]
        heard = lambda: (c := bot.events.last(ref)) is not None and c.state is not None and c.state.name == "paused"  # noqa: E731
        with bot.events.changed:  # notified on every recorded event
            assert bot.events.changed.wait_for(heard, timeout=5), "the outside suspend was never heard"
        assert re.search(r"paused \(user\) since \d\d:\d\d:\d\d UTC$", bot.handle("state test", actor).headline)
    finally:
        dom.resume()
        outside.close()


def test_a_change_the_bot_missed_is_said_honestly(make_bot: Callable[..., Bot], actor: Actor) -> None:
    bot = make_bot(demo())
    bot.handle("suspend ubuntu20", actor)
    ref = bot.fleet.resolve(["ubuntu20"]).refs[0]
    bot.events.close()  # deaf from here on, as if the connection had dropped
    bot.pool.call("kvm01", lambda c: c.lookupByUUIDString(ref.uuid).resume())
    headline = bot.handle("state ubuntu20", actor).headline
    assert re.fullmatch(
        r"ubuntu20 on kvm01: running \(unpaused\); changed between \d\d:\d\d:\d\d UTC and \d\d:\d\d:\d\d UTC, "
        r"while the bot was not listening",
        headline,
    ), headline
    assert bot.events.history(ref)[0]["source"] == "noticed"
