"""How a host is reached: the transport a libvirt URI names, the parameters it honours, its refusals.

libvirt passes URI parameters a transport does not read through without a
word (``known_hosts=`` on ``qemu+ssh://`` is silently ignored: the OpenSSH
client reads its own ``~/.ssh/known_hosts``), and some parameters switch the
host key check off. Both are refused at config time, because a pin that does
nothing is worse than no pin. When a connection is refused, the one line an
operator needs (changed or unknown host key, login refused) is made from
libvirt's message, which for the ssh transport is ssh's whole stderr banner.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import parse_qsl, urlsplit

from bot.hypervisor.errors import gist

# The query parameters each transport of libvirt 9's remote driver reads
# (https://libvirt.org/uri.html, "Transport configuration"); values that weaken a check are refused below.
_SSH_COMMON = frozenset({"name", "mode", "proxy", "socket", "netcat", "keyfile"})
PARAMS: dict[str, frozenset[str]] = {
    "ssh": _SSH_COMMON | {"command", "no_verify", "no_tty"},
    "libssh": _SSH_COMMON | {"known_hosts", "known_hosts_verify", "sshauth"},
    "libssh2": _SSH_COMMON | {"known_hosts", "known_hosts_verify", "sshauth"},
    "tls": frozenset({"name", "tls_priority", "no_verify", "pkipath"}),
    "unix": frozenset({"name", "mode", "socket"}),
    "ext": frozenset({"name", "command"}),
    "tcp": frozenset({"name"}),
}
PATHS = ("keyfile", "known_hosts", "pkipath", "socket", "netcat")
SSH_FAMILY = ("ssh", "libssh", "libssh2")
LABELS = {"unix": "local unix"}


def transport(uri: str) -> str:
    """The transport a URI uses, as ``hosts`` shows it: ssh, libssh, tls, tcp, local unix, test, ...

    libvirt's rule: an explicit ``+transport`` wins; a URI with a host name and
    none is TLS; a URI without a host is the local unix socket (or, for the test
    driver, libvirt itself in this process).
    """
    return LABELS.get(kind := _kind(uri), kind)


def _kind(uri: str) -> str:
    parts = urlsplit(uri)
    driver, _, named = parts.scheme.partition("+")
    if named:
        return named
    if parts.hostname:
        return "tls"
    return "test" if driver == "test" else "unix"


def problem(uri: str) -> str | None:
    """Why this URI must not be used as written, or None; one sentence, never the URI's secrets."""
    parts = urlsplit(uri)
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        return "has a port that is not a number"
    kind = _kind(uri)
    if ";" in parts.query:  # libvirt splits on it too (virURIParseParams); parse_qsl would read one value
        return "has a ';' in its query: libvirt reads it as '&', so it may hide a parameter; write %3B in a value"
    params = parse_qsl(parts.query, keep_blank_values=True)
    if kind in ("test", "unix") and parts.scheme.partition("+")[2] == "" and params:
        return f"a local URI takes no parameters ({', '.join(k for k, _ in params)})"
    if kind == "ext":
        return "qemu+ext:// runs a local program of the URI's choosing to reach libvirt; vmbot refuses it"
    allowed = PARAMS.get(kind, frozenset())
    for key, value in params:
        if key == "command" and kind in SSH_FAMILY:
            return (
                "command= replaces ssh with a local program (a relative one from the bot's working directory);"
                " vmbot refuses it: set ProxyCommand or the ssh binary in the bot user's ~/.ssh/config instead"
            )
        if key not in allowed:
            return _not_read(kind, key)
        if key in PATHS and not PurePosixPath(value).is_absolute():
            return f"{key}={value} must be an absolute path (the bot's working directory is not yours)"
        if refusal := _weakens(kind, key, value):
            return refusal
    if kind == "ssh" and any(k == "no_tty" and v != "1" for k, v in params):
        return "no_tty must be 1: otherwise ssh may ask on a terminal to trust a host key instead of refusing"
    return None


def opened(uri: str) -> str:
    """The URI the pool opens: an ssh URI always gets ``no_tty=1`` (``ssh -o BatchMode=yes``), so an
    unknown host key is a refusal, never a prompt on whatever terminal started the bot."""
    query = urlsplit(uri).query
    if _kind(uri) != "ssh" or any(k == "no_tty" for k, _ in parse_qsl(query, keep_blank_values=True)):
        return uri  # read from the parsed parameters: a key file path may hold the text "no_tty="
    return uri + ("&" if query else "?") + "no_tty=1"


def _not_read(kind: str, key: str) -> str:
    hint = ""
    if kind == "ssh" and key.startswith("known_hosts"):
        hint = (
            ": the ssh transport runs the OpenSSH client, which checks the bot user's ~/.ssh/known_hosts"
            " (or an ssh_config UserKnownHostsFile); use qemu+libssh:// for known_hosts="
        )
    honoured = ", ".join(sorted(PARAMS.get(kind, ()))) or "none"
    return f"{key}= is not read by the {LABELS.get(kind, kind)} transport{hint} (it reads: {honoured})"


def _weakens(kind: str, key: str, value: str) -> str | None:
    if key == "no_verify" and value != "0":
        what = "the host key check" if kind == "ssh" else "the server certificate check"
        return f"no_verify={value} turns off {what}; vmbot refuses it (pin the key instead)"
    if key == "known_hosts_verify" and value != "normal":
        return f"known_hosts_verify={value} accepts keys nobody checked; vmbot only takes known_hosts_verify=normal"
    return None


# ssh / libssh messages -> the line the operator acts on
_CHANGED = re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED|differs from stored identity|has changed and you")
_FINGERPRINT = re.compile(r"key sent by the remote host is\s+(\S+?)\.?\s|new host key '([^']+)'")
_OFFENDING = re.compile(r"Offending \S+ key in (\S+:\d+)")
_UNKNOWN = re.compile(r"Host key verification failed|was not accepted|No \S+ host key is known")
_LOGIN = re.compile(r"Permission denied \(([^)]*)\)|authentication failed: (?!.*HOST KEY)")


def refusal(uri: str, message: str) -> str:
    """One line saying why the host refused us, naming its address and the fix; else libvirt's gist."""
    text = " ".join(message.split())
    if _kind(uri) not in SSH_FAMILY:
        return gist(text)
    where = _address(uri)
    if _CHANGED.search(text):
        found = _FINGERPRINT.search(text)
        shows = f" it shows {found.group(1) or found.group(2)}," if found else ""
        pinned = _OFFENDING.search(text)
        pin = pinned.group(1) if pinned else "known_hosts"
        return (
            f"host key of {where} has CHANGED:{shows} {pin} pins another: refused. Check the fingerprint on "
            "the host (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) before replacing the pin"
        )
    if _UNKNOWN.search(text):
        return (
            f"host key of {where} is unknown (not in the bot user's known_hosts): refused. Check its "
            "fingerprint on the host, then pin it (README, Deploying, step 4)"
        )
    if found := _LOGIN.search(text):
        how = found.group(1) or "key"
        return f"ssh login to {where} refused ({how}): is the bot's public key in that user's authorized_keys?"
    return _ssh_said(message) or gist(text)


_SSH_LINE = re.compile(r"^(?:Cannot recv data: )?(Warning: Identity file .*|ssh: .*)$")


def _ssh_said(message: str) -> str:
    """ssh's own lines (its cause: connection refused, a key file missing, a name unknown), not libvirt's
    innermost "Connection reset by peer", which only says that ssh went away."""
    said = []
    for line in message.splitlines():
        if found := _SSH_LINE.match(line.strip()):
            said.append(found.group(1).removesuffix(": Connection reset by peer").rstrip("."))
    return "; ".join(said)[:300]


def _address(uri: str) -> str:
    parts = urlsplit(uri)
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port}" if parts.port else host
