"""Defect 10: control characters, bidi overrides and zero-width characters in VM names are shown
escaped (``\\x0a`` like virsh), in the terminal and in Slack, so a name cannot fake lines or reorder text.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bot.reply import shown, visible
from bot.service import Bot
from bot.store.audit import Actor
from handlers.slack.summary import as_file
from tests.conftest import Vm
from tests.slackrig import sent_texts, start_rig

EVIL = [
    "fake\nkvm01:\n  🟢 root-vm running",
    "tab\there",
    "\u202egnp.exe",
    "zero\u200bwidth",
    "line\u2028sep",
    "bom\ufeff",
]
RAW = ["\n", "\t", "\u202e", "\u200b", "\u2028", "\ufeff"]


@pytest.fixture
def evil_bot(make_bot: Callable[..., Bot]) -> Bot:
    return make_bot(fleet={"kvm01": [Vm(n) for n in EVIL] + [Vm("plain")]})


def test_shown_escapes_like_virsh() -> None:
    assert shown("a\nb") == "a\\x0ab"
    assert shown("\u202eabc") == "\\u202eabc"
    assert shown("zero\u200bwidth") == "zero\\u200bwidth"
    assert shown("ok-name_1.2 ü 🟢") == "ok-name_1.2 ü 🟢"


@pytest.mark.parametrize("text", ["list --all", "audit", "state 'tab\there'", "info 'zero\u200bwidth'"])
def test_the_terminal_shows_names_escaped(evil_bot: Bot, actor: Actor, text: str) -> None:
    evil_bot.handle("suspend 'fake\nkvm01:\n  🟢 root-vm running'", actor)
    out = evil_bot.handle(text, actor).text()
    for ch in RAW[1:]:
        assert ch not in out, (ch, out)
    assert "fake\nkvm01" not in out
    if text == "list --all":
        assert "fake\\x0akvm01:\\x0a" in out
        assert len(out.splitlines()) == 3 + len(EVIL)  # the headline, the host, one line per VM


def test_slack_shows_names_escaped(evil_bot: Bot) -> None:
    for rig in start_rig(evil_bot):
        for text in ["list --all", "audit", "state 'tab\there'", "info '\u202egnp.exe'"]:
            rig.answer(text)
        rig.answer("suspend 'zero\u200bwidth'")
        sent = sent_texts(rig.fake)
        assert any("zero\\\\u200bwidth" in s for s in sent)
        assert any("fake\\\\x0akvm01" in s for s in sent)  # JSON of the text fake\x0akvm01
        for s in sent:  # JSON: a raw newline or tab would show as \n or \t right after the name's first part
            for ch in RAW[2:]:
                assert ch not in s, (ch, s)
            assert "fake\\nkvm01" not in s and "tab\\there" not in s


@pytest.mark.parametrize("text", ["list --all", "dumpxml 'tab\there'", "info 'bom\ufeff'"])
def test_the_answer_file_is_the_shown_text_written_line_by_line(evil_bot: Bot, actor: Actor, text: str) -> None:
    """The file (a 100,000-VM list) is streamed line by line; it says exactly what the terminal says."""
    reply = evil_bot.handle(text, actor)
    data = as_file(reply, "vmbot-list.txt").content.decode()
    assert data == visible(reply.text()) and data.count("\n") == len(list(reply.text_lines())) - 1
    for ch in RAW[2:]:
        assert ch not in data, ch
    assert "fake\nkvm01" not in data and ("\t" in data) is text.startswith("dumpxml")  # XML keeps its tabs
