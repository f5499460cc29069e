"""The scheduler inside a real ``vmbot run``: a digest missed while the bot was down is posted once at
start, as vmbot:scheduler, and /metrics shows the job's last success and result; bad [schedule]
settings stop the start with one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.schedule.runs import RunTable
from bot.store.audit import Audit
from bot.store.db import Store
from tests.conftest import vmbot_exe
from tests.fakehosts import closed_port
from tests.slackfake import FakeSlack
from tests.slackrig import SECRET

ROOT = Path(__file__).resolve().parents[1]
POLICY = """\
roles:
  viewer: [list, report, schedule]
grants:
  - who: [vmbot:scheduler]
    role: viewer
"""


def config(tmp_path: Path, schedule: str) -> Path:
    fleet = ROOT / "bot" / "demo" / "kvm01.xml"
    (tmp_path / "policy.yml").write_text(POLICY)
    path = tmp_path / "vmbot.toml"
    path.write_text(
        f'[hosts]\nkvm01 = "test://{fleet}"\n[store]\npath = "vmbot.db"\n[policy]\nfile = "policy.yml"\n'
        f'[slack]\ndigest_channel = "C0DIGEST"\n[schedule]\n{schedule}\n'
    )
    return path


def test_a_missed_digest_is_posted_once_at_start_and_shows_in_metrics(tmp_path: Path) -> None:
    cfg = config(tmp_path, 'timezone = "Europe/Berlin"\ndigest = "0 * * * *"\ngrace_minutes = 120')
    audit = Audit(str(tmp_path / "vmbot.db"))
    store = Store(audit)
    RunTable(store).baseline("digest", datetime.now(UTC) - timedelta(minutes=90), "")  # it last ran 90 min ago
    store.close()
    audit.close()
    metrics = closed_port()
    with FakeSlack() as fake:
        env = {
            **os.environ,
            "SLACK_BOT_TOKEN": fake.token,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": fake.base_url,
        }
        env.pop("SLACK_APP_TOKEN", None)
        cmd = [vmbot_exe(), "run", "--config", str(cfg), "--http", str(closed_port()), "--metrics-port", str(metrics)]
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        try:
            post = fake.wait_for("chat.postMessage", timeout=20)
            assert post.args["channel"] == "C0DIGEST" and post.args["text"].startswith("Fleet status")
            deadline = time.monotonic() + 10
            while True:
                text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
                if 'vmbot_job_last_result{job="digest",result="ok"} 1.0' in text:
                    break
                assert time.monotonic() < deadline, text
                time.sleep(0.1)
            line = next(
                x for x in text.splitlines() if x.startswith('vmbot_job_last_success_timestamp_seconds{job="digest"}')
            )
            assert abs(float(line.split()[-1]) - time.time()) < 60
            time.sleep(1)
            assert len([c for c in fake.calls("chat.postMessage") if "thread_ts" not in c.args]) == 1  # once
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("schedule", "why"),
    [
        ('digest = "0 8 * * 8"', "[schedule] digest: day of week '8' is not 0-7 or sun..sat"),
        ('timezone = "Europe/Nowhere"', "[schedule] timezone 'Europe/Nowhere' is not a known time zone"),
        ('digest = "0 8 * *"', "[schedule] digest: '0 8 * *' has 4 field(s)"),
        ('diggest = "0 8 * * *"', "unknown key diggest in [schedule]; did you mean digest?"),
    ],
)
def test_bad_schedule_settings_stop_the_start_with_one_line(tmp_path: Path, schedule: str, why: str) -> None:
    cfg = config(tmp_path, schedule)
    done = subprocess.run(
        [vmbot_exe(), "exec", "--config", str(cfg), "--", "/vm schedule"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and why in done.stderr, done.stderr


def test_hostile_metrics_show_only_the_configured_jobs(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from handlers.slack.metrics import Metrics
    from tests.reportrig import bot_on

    bot = bot_on({"kvm01": "test:///default"}, str(tmp_path / "vmbot.db"))  # [schedule] has no jobs now
    try:
        now = datetime.now(UTC)
        bot.desk.runs.baseline("backup_report", now, "")  # a job an earlier config ran, and it failed
        assert bot.desk.runs.claim("backup_report", "t")
        bot.desk.runs.finish("backup_report", "t", now, "", now, now, "failed", "not posted")
        text = generate_latest(Metrics(bot.pool, bot.desk.runs).registry).decode()
    finally:
        bot.close()
    assert 'job="backup_report"' not in text  # an alert on vmbot_job_last_result{result="failed"} would never clear
