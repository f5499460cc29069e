"""Alerts on the real hypervisor: kill the tiny guest's QEMU, and a crash alert reaches the alerts
channel (the real Bolt adapter, the fake Web API) within seconds, once; starting it again posts
the recovery line."""

from __future__ import annotations

import os
import time

from bot.service import Bot
from tests.hypervisor.conftest import Guest, wait_for
from tests.slackrig import start_rig


def test_a_killed_qemu_posts_one_crash_alert_and_a_recovery_line(hv_bot: Bot, acpi_guest: Guest) -> None:
    acpi_guest.ensure_running()
    rig_iter = start_rig(hv_bot)
    rig = next(rig_iter)
    alerts = hv_bot.desk.alerts(lambda alert: rig.adapter.post_alert("C0ALERTS", alert))

    mine = (f"lab/{acpi_guest.name} ", f"lab/{acpi_guest.dom().UUIDString()} ")

    def posted() -> list:
        """Alerts about this guest: other tests share the daemon, and their guests stop too."""
        calls = rig.fake.calls("chat.postMessage")
        return [c for c in calls if c.args["channel"] == "C0ALERTS" and any(m in c.args["text"] for m in mine)]

    try:
        hv_bot.pool.call("lab", lambda c: c.getLibVersion())  # connected, as a running bot is (events flow)
        os.kill(acpi_guest.qemu_pid(), 9)
        killed = time.monotonic()
        wait_for(lambda: posted(), 15, "the crash alert")
        took = time.monotonic() - killed
        print(f"crash alert posted {took:.2f}s after the kill")
        assert took < 10, f"the crash alert took {took:.1f}s"
        (alert,) = posted()
        assert alert.args["text"] == f"lab/{acpi_guest.name} crashed"
        assert alert.args["blocks"][0]["text"]["text"].startswith(":red_circle:")
        time.sleep(2)  # any second alert for the same crash would have arrived by now
        assert len(posted()) == 1
        boots = acpi_guest.ready_count()
        acpi_guest.dom().create()
        wait_for(lambda: len(posted()) >= 2, 30, "the recovery line")
        assert posted()[1].args["text"] == f"recovered: lab/{acpi_guest.name} is running again"
        acpi_guest.wait_ready(boots + 1)  # leave it booted: a later test's ACPI press is lost while it boots
    finally:
        alerts.close()
        for _ in rig_iter:
            pass
