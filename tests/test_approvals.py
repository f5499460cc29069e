"""Approvals: request, approve once (also under 50 concurrent clicks), restart, expiry, every refusal."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.reply import Status
from bot.service import Bot
from bot.store.approvals import ApprovalRequest, ApprovalStatus
from bot.store.audit import Actor
from bot.store.owner import boot_id
from tests.conftest import vmbot_exe, write_fleet
from tests.policyrig import FLEET, POLICY, WEB01, fleet_bot, on_host, policy_file, rows, state, who


@pytest.fixture
def bot(make_bot: Callable[..., Bot], tmp_path: Path) -> Bot:
    return fleet_bot(make_bot, tmp_path)


def ask(bot: Bot, text: str = "destroy web-01 --reason 'hung kernel'", user: str = "UREQ") -> ApprovalRequest:
    reply = bot.handle(text, who(user))
    assert reply.status is Status.PENDING, reply.text()
    assert reply.status.exit_code == 3 and reply.request_id
    req = bot.request(reply.request_id)
    assert req is not None
    return req


def executions(bot: Bot, action: str = "destroy") -> list[dict]:
    return rows(bot, "action = ? and decision = 'allowed'", [action])


def test_destroy_waits_with_a_preview_and_nothing_runs(bot: Bot) -> None:
    seen: list[str] = []
    bot.on_request_change.append(lambda r: seen.append(r.status))
    reply = bot.handle("destroy web-01 --reason 'hung kernel'", who("UREQ"))
    assert reply.status is Status.PENDING and reply.request_id
    text = reply.text()
    assert "immediate power-off of web-01 on kvm01, running, 4 vCPU, 8 GiB: unsaved guest data is lost" in text
    assert "reason: hung kernel" in text and f"/vm approve {reply.request_id}" in text
    assert state(bot, "web-01") == "running" and seen == ["pending"]
    req = bot.request(reply.request_id)
    assert req and req.requester == "UREQ" and req.action == "destroy" and req.reason == "hung kernel"
    assert req.targets[0].host == "kvm01" and req.targets[0].uuid == WEB01 and req.targets[0].state == "running"
    assert [r.id for r in bot.pending_requests()] == [req.id]
    assert req.id in bot.handle("approvals", who("UOPS")).text()
    (audit,) = rows(bot, "action = 'destroy'")
    assert audit["decision"] == "needs approval" and audit["ended_at"] is None and "grant #1" in audit["reason"]


def test_approval_by_a_second_admin_runs_it_once_and_links_events(bot: Bot) -> None:
    req = ask(bot)
    seen: list[str] = []
    bot.on_request_change.append(lambda r: seen.append(r.status))
    reply = bot.approve(req.id, who("UADM2", "C0APPROVE"))
    assert reply.status is Status.OK and reply.changed, reply.text()
    assert "approved by UADM2" in reply.headline and "destroyed" in reply.headline
    assert state(bot, "web-01") == "shut off" and seen == ["done"]
    (run,) = executions(bot)
    assert run["slack_user"] == "UREQ" and run["result"] == "ok" and "approved by UADM2" in run["reason"]
    request_row = rows(bot, "action = 'destroy' and decision = 'needs approval'")[0]
    assert request_row["result"] == "approved" and request_row["ended_at"]
    events = bot.approvals.events(req.id)
    assert [e["kind"] for e in events] == ["request", "approve", "execute"]
    assert {e["audit_id"] for e in events} == {request_row["id"]}
    again = bot.approve(req.id, who("UADM03"))
    assert again.status is Status.REFUSED and "already approved by UADM2" in again.headline
    assert len(executions(bot)) == 1


def test_fifty_concurrent_clicks_execute_exactly_once(bot: Bot) -> None:
    req = ask(bot)
    clickers = [f"UADM{i:02d}" for i in range(50)]
    barrier = threading.Barrier(len(clickers))
    replies: dict[str, Status] = {}

    def click(user: str) -> None:
        barrier.wait()
        replies[user] = bot.approve(req.id, who(user)).status

    threads = [threading.Thread(target=click, args=(u,)) for u in clickers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(replies) == 50
    assert list(replies.values()).count(Status.OK) == 1
    assert set(replies.values()) <= {Status.OK, Status.REFUSED}
    assert len(executions(bot)) == 1 and state(bot, "web-01") == "shut off"
    kinds = [e["kind"] for e in bot.approvals.events(req.id)]
    assert kinds.count("execute") == 1 and bot.request(req.id).status == "done"  # type: ignore[union-attr]


def test_restart_between_request_and_approval(make_bot: Callable[..., Bot], tmp_path: Path) -> None:
    first = fleet_bot(make_bot, tmp_path)
    req = ask(first)
    first.close()
    second = fleet_bot(make_bot, tmp_path)  # same sqlite file, a new process's view of the fleet
    assert [r.id for r in second.pending_requests()] == [req.id]
    reply = second.approve(req.id, who("UADM2"))
    assert reply.status is Status.OK and state(second, "web-01") == "shut off"
    assert len(executions(second)) == 1


def test_rows_written_as_plain_text_and_dicts_still_load_and_run(make_bot: Callable[..., Bot], tmp_path: Path) -> None:
    """Statuses and targets are typed in the code, but the row stays readable text: old rows keep working."""
    first = fleet_bot(make_bot, tmp_path)
    req = ask(first)
    old = [{"host": "kvm01", "uuid": WEB01, "name": "web-01", "state": "running", "preview": "p", "later": 1}]
    first.store.run("UPDATE approval_requests SET targets = ? WHERE id = ?", [json.dumps(old), req.id])
    first.close()
    second = fleet_bot(make_bot, tmp_path)
    (target,) = second.request(req.id).targets  # type: ignore[union-attr]
    assert (target.host, target.uuid, target.audit_id) == ("kvm01", WEB01, None)
    reply = second.approve(req.id, who("UADM2"))
    assert reply.status is Status.OK and state(second, "web-01") == "shut off"
    stored = second.store.one("SELECT status, typeof(status) FROM approval_requests WHERE id = ?", [req.id])
    assert tuple(stored) == ("done", "text")  # type: ignore[arg-type]
    kinds = second.store.all("SELECT kind FROM approval_events WHERE request_id = ? ORDER BY id", [req.id])
    assert [k for (k,) in kinds] == ["request", "approve", "execute"]


def test_expired_request_never_runs(bot: Bot) -> None:
    req = ask(bot)
    other = ask(bot, "reset web-02")
    seen: list[tuple[str, str]] = []
    bot.on_request_change.append(lambda r: seen.append((r.id, r.status)))
    bot.store.run("UPDATE approval_requests SET expires_at = ?", [time.time() - 1])
    reply = bot.approve(req.id, who("UADM2"))
    assert reply.status is Status.REFUSED and "expired" in reply.headline and "nothing was run" in reply.headline
    assert bot.sweep_expired() == [other.id]
    assert seen == [(req.id, "expired"), (other.id, "expired")]
    assert bot.pending_requests() == [] and state(bot, "web-01") == "running" and not executions(bot)
    assert "expire" in [e["kind"] for e in bot.approvals.events(other.id)]


def test_requester_cannot_approve_their_own_request(bot: Bot) -> None:
    req = ask(bot)
    reply = bot.approve(req.id, who("UREQ"))
    assert reply.status is Status.REFUSED and "someone else must approve" in reply.headline
    assert bot.request(req.id).status == "pending" and state(bot, "web-01") == "running"  # type: ignore[union-attr]
    assert rows(bot, "action = 'approve'")[-1]["decision"] == "refused"


def test_approver_without_the_role_is_refused(bot: Bot) -> None:
    req = ask(bot)
    reply = bot.approve(req.id, who("UOPS"))
    assert reply.status is Status.REFUSED and "needs role admin" in reply.headline
    stranger = bot.approve(req.id, who("UNOBODY"))
    assert stranger.status is Status.REFUSED
    assert bot.request(req.id).approvals == [] and state(bot, "web-01") == "running"  # type: ignore[union-attr]


def test_an_admin_scoped_to_other_vms_cannot_approve(bot: Bot) -> None:
    req = ask(bot, "destroy app-01")
    reply = bot.approve(req.id, who("UWEB"))  # admin, but only for kvm01/web-*
    assert reply.status is Status.REFUSED and "kvm02/app-01" in reply.headline


def test_requesters_grant_removed_before_approval(bot: Bot, tmp_path: Path) -> None:
    req = ask(bot)
    policy_file(tmp_path, POLICY.replace("[UREQ, UADM2, S0ADMINS]", "[UADM2, S0ADMINS]"))
    reload = bot.handle("policy reload", who("UADM2"))
    assert reload.status is Status.OK and "reloaded" in reload.headline
    assert rows(bot, "action = 'policy'")[-1]["result"] == "ok"
    reply = bot.approve(req.id, who("UADM2"))
    assert reply.status is Status.REFUSED and "requester's grant no longer allows it" in reply.headline
    assert state(bot, "web-01") == "running" and not executions(bot)
    assert bot.request(req.id).status == "refused"  # type: ignore[union-attr]


def test_state_changed_between_request_and_approval(bot: Bot) -> None:
    req = ask(bot)
    on_host(bot, "kvm01", lambda c: c.lookupByName("web-01").destroy())
    reply = bot.approve(req.id, who("UADM2"))
    assert (
        reply.status is Status.REFUSED and "shut off" in reply.headline and "was running when asked" in reply.headline
    )
    assert not executions(bot)


def test_vm_undefined_and_redefined_under_the_same_name(bot: Bot) -> None:
    req = ask(bot)

    def swap(conn) -> str:
        dom = conn.lookupByName("web-01")
        root = ET.fromstring(dom.XMLDesc(0))
        dom.destroy()
        dom.undefine()
        root.remove(root.find("uuid"))  # type: ignore[arg-type]
        new = conn.defineXML(ET.tostring(root, encoding="unicode"))
        new.create()
        return new.UUIDString()

    new_uuid = on_host(bot, "kvm01", swap)
    reply = bot.approve(req.id, who("UADM2"))
    assert reply.status is Status.REFUSED and "not the VM that was asked about" in reply.headline
    assert str(new_uuid) in reply.headline and state(bot, "web-01") == "running" and not executions(bot)


def test_deny_and_withdraw(bot: Bot) -> None:
    req = ask(bot)
    refused = bot.deny(req.id, who("UOPS"))
    assert refused.status is Status.REFUSED
    denied = bot.deny(req.id, who("UADM2"), "not during business hours")
    assert denied.status is Status.OK and "denied by UADM2" in denied.headline
    late = bot.approve(req.id, who("UADM03"))
    assert late.status is Status.REFUSED and "denied by UADM2 (not during business hours)" in late.headline
    mine = ask(bot, "reset web-02")
    assert bot.handle(f"deny {mine.id}", who("UREQ")).status is Status.OK
    assert bot.request(mine.id).result == "withdrawn by the requester"  # type: ignore[union-attr]
    assert state(bot, "web-01") == "running" and not executions(bot) and not executions(bot, "reset")


def test_two_approvals_needed_from_distinct_people(make_bot: Callable[..., Bot], tmp_path: Path) -> None:
    bot = fleet_bot(make_bot, tmp_path, text=POLICY.replace("count: 1", "count: 2"))
    req = ask(bot)
    first = bot.approve(req.id, who("UADM2"))
    assert first.status is Status.PENDING and "1 more needed" in first.headline
    twice = bot.handle(f"approve {req.id}", who("UADM2"))
    assert twice.status is Status.PENDING and "already approved" in twice.headline
    assert state(bot, "web-01") == "running"
    done = bot.approve(req.id, who("UADM07"))
    assert done.status is Status.OK and state(bot, "web-01") == "shut off"
    assert bot.request(req.id).approvers == ["UADM2", "UADM07"]  # type: ignore[union-attr]


def test_a_glob_wider_than_the_limit_needs_approval(bot: Bot) -> None:
    reply = bot.handle("shutdown web-* app-01 --yes", who("UREQ"))
    assert reply.status is Status.PENDING and "3 targets is more than 2" in reply.text()
    assert state(bot, "web-02") == "running"
    assert bot.handle("shutdown web-*", who("UREQ")).status is Status.OK  # two: within the limit


def test_executing_request_of_a_dead_process_becomes_interrupted(make_bot: Callable[..., Bot], tmp_path: Path) -> None:
    first = fleet_bot(make_bot, tmp_path)
    req = ask(first)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    first.store.run(
        "UPDATE approval_requests SET status = 'executing', owner_pid = ?, owner_boot = ? WHERE id = ?",
        [int(gone.stdout), boot_id(), req.id],
    )
    alive = ask(first, "reset web-02")
    first.approvals.move(
        alive.id, ApprovalStatus.PENDING, ApprovalStatus.EXECUTING
    )  # owned by this (living) process: left alone
    first.close()
    second = fleet_bot(make_bot, tmp_path)
    assert second.request(req.id).status == "interrupted"  # type: ignore[union-attr]
    assert second.request(alive.id).status == "executing"  # type: ignore[union-attr]
    assert "interrupted" in [e["kind"] for e in second.approvals.events(req.id)]
    reply = second.approve(req.id, who("UADM2"))
    assert reply.status is Status.REFUSED and "never re-run" in reply.headline
    assert not executions(second) and state(second, "web-01") == "running"


def test_exec_exits_3_then_approve_from_another_terminal(tmp_path: Path) -> None:
    hosts = "\n".join(f'{h} = "{write_fleet(tmp_path / f"{h}.xml", vms)}"' for h, vms in FLEET.items())
    policy_file(tmp_path)
    config = tmp_path / "vmbot.toml"
    config.write_text(
        f'[hosts]\n{hosts}\n[policy]\nfile = "policy.yml"\n[store]\npath = "vmbot.db"\n[terminal]\nallow_as = true\n'
    )

    def run(user: str, text: str) -> subprocess.CompletedProcess:
        cmd = [vmbot_exe(), "exec", "--config", str(config), "--as", user, "--", text]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    asked = run("UREQ", "/vm destroy web-01")
    assert asked.returncode == 3, asked.stdout + asked.stderr
    request_id = asked.stdout.split("request ")[1].split()[0]
    assert run("UREQ", f"/vm approve {request_id}").returncode == 1
    approved = run("UADM2", f"/vm approve {request_id}")
    assert approved.returncode == 0 and "destroyed" in approved.stdout


def test_an_approved_run_that_finds_the_vm_busy_runs_nothing(bot: Bot) -> None:
    req = ask(bot)
    with bot.locks.hold("kvm01", WEB01, "web-01", "reboot", "UOTHER"):
        reply = bot.approve(req.id, who("UADM2"))
    assert reply.status is Status.REFUSED and "busy: UOTHER is running reboot" in reply.text()
    assert bot.request(req.id).status == "refused" and state(bot, "web-01") == "running"  # type: ignore[union-attr]


def test_a_failing_listener_does_not_stop_the_flow(bot: Bot) -> None:
    bot.on_request_change.append(lambda r: 1 / 0)
    req = ask(bot)
    assert bot.approve(req.id, who("UADM2")).status is Status.OK and state(bot, "web-01") == "shut off"


def test_sighup_reload_is_audited(bot: Bot, tmp_path: Path) -> None:
    policy_file(tmp_path, POLICY.replace("[UOPS]", "[UOTHER]"))
    reply = bot.reload_policy(Actor("SIGHUP", source="signal"))
    assert reply.status is Status.OK and "1 user group(s) with 50 member(s)" in reply.headline
    assert rows(bot, "action = 'policy'")[-1]["text"] == "SIGHUP"
    assert bot.handle("start db-01", who("UOPS")).status is Status.REFUSED
