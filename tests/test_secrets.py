"""Secrets never leave: the bot token, the app token and the signing secret are grepped for in
everything a Slack-tier run produced: every log record (DEBUG included, through caplog), every row
of every table in the store, every call the bot made to the Web API, and /metrics and /healthz.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import pytest

from bot.service import Bot
from handlers.slack.server import health_wsgi
from tests import slacksign
from tests.conftest import Vm
from tests.slackrig import SECRET, TRANSPORTS, start_rig


def wsgi_get(app: Callable, path: str) -> str:
    environ: dict = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO()
    out = b"".join(app(environ, lambda *_a: None))
    return out.decode()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_no_secret_in_logs_store_messages_or_metrics(
    make_bot: Callable[..., Bot], tmp_path: Path, caplog: pytest.LogCaptureFixture, transport: str
) -> None:
    db = tmp_path / "secrets.db"
    bot = make_bot(fleet={"h1": [Vm("web-01"), Vm("web-02", "shut off"), Vm("<!channel>")]}, store=str(db))
    caplog.set_level(logging.DEBUG)
    for rig in start_rig(bot, transport):
        secrets = [rig.fake.token, rig.fake.app_token, SECRET]
        for text in ["list --all", "start web-02", "state nosuch", "destroy web-01 --dry-run", "strt x", "audit"]:
            rig.answer(text)
        rig.click("vm:suspend", json.dumps({"a": "suspend", "h": "h1", "u": "not-a-uuid"}))
        if transport == "http":  # forged requests: signed with the wrong secret, and not signed at all
            body = slacksign.slash_body("destroy web-01")
            assert rig.post(body, slacksign.signed_headers("wrong", body))[0] == 401
            assert rig.post(b"garbage", {"X-Slack-Signature": "v0=deadbeef"})[0] in (400, 401)
        produced = {
            "logs": caplog.text,
            "messages": json.dumps([c.args for c in rig.fake.calls()]),
            "metrics": wsgi_get(health_wsgi(bot.pool, rig.adapter.metrics), "/metrics"),
            "health": wsgi_get(health_wsgi(bot.pool, rig.adapter.metrics), "/healthz"),
        }
    with sqlite3.connect(db) as conn:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        produced["store"] = json.dumps([conn.execute(f"SELECT * FROM {t}").fetchall() for t in tables])
    assert "vmbot_commands_total" in produced["metrics"] and "web-02" in produced["messages"]
    assert len(produced["store"]) > 100 and produced["logs"]
    for where, text in produced.items():
        for secret in secrets:
            assert secret not in text, f"a secret reached the {where}"
