"""Hostile config URIs: libvirt splits a URI's query on ';' as well as '&' (src/util/viruri.c,
virURIParseParams), Python's parse_qsl on '&' only. A ';' therefore hid a parameter vmbot refuses
(no_verify=1, command=, a relative socket=) inside another one's value, and libvirt used it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError, load

SMUGGLED = [
    "qemu+ssh://vmbot@kvm01/system?no_tty=1&keyfile=/k;no_verify=1",
    "qemu+ssh://vmbot@kvm01/system?no_tty=1&keyfile=/k;command=./evil",
    "qemu+unix:///system?socket=/run/libvirt/libvirt-sock;socket=relative-sock",
    "qemu+tls://kvm01/system?pkipath=/etc/pki;no_verify=1",
]


@pytest.mark.parametrize("uri", SMUGGLED)
def test_a_parameter_hidden_behind_a_semicolon_is_refused(tmp_path: Path, uri: str) -> None:
    path = tmp_path / "vmbot.toml"
    path.write_text(f'[hosts]\nkvm01 = "{uri}"\n')
    with pytest.raises(ConfigError) as e:
        load(path)
    assert "';'" in str(e.value) and "\n" not in str(e.value)


def test_a_semicolon_escaped_in_a_value_still_loads(tmp_path: Path) -> None:
    uri = "qemu+unix:///system?socket=/run/a%3Bb-sock"
    path = tmp_path / "vmbot.toml"
    path.write_text(f'[hosts]\nkvm01 = "{uri}"\n')
    assert load(path).hosts["kvm01"] == uri
