"""The TOML config, read once and checked strictly.

Every mistake becomes one ConfigError line naming the file, the key and the
fix, because an operator starting a bot with root on the fleet must not have to
read a traceback to find a typo.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bot.commands import suggest
from bot.hypervisor.transport import problem
from bot.schedule import settings as schedule_settings
from bot.schedule.settings import Schedule

DEMO_DIR = Path(__file__).parent / "demo"
CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,30}\Z")
HOST_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")  # \Z: "$" also matches before a final newline
DRIVERS = {"qemu", "test", "lxc", "xen", "libxl", "ch", "bhyve", "vz", "esx", "vbox"}
TRANSPORTS = {"", "tcp", "tls", "ssh", "libssh", "libssh2", "unix", "ext"}

KEEP_DEFAULTS = {"keep_last": 1, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6}
DISK_COPIES = ("download", "pool")  # a host's disk backups: downloaded into [backups] dir, or kept in its pool
POOL_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
SCHEMA: dict[str, set[str] | None] = {
    "hosts": None,  # free-form: name = URI
    "store": {"path"},
    "backups": {
        "dir",
        "keep_last",
        "keep_daily",
        "keep_weekly",
        "keep_monthly",
        "pools",
        "staging_pool",
        "disk_copies",
    },
    "policy": {"file"},
    "slack": {"digest_channel", "approvals_channel", "alerts_channel"},
    "schedule": schedule_settings.KEYS,
    "terminal": {"users", "allow_as"},
    "autostart": {"expect"},
    "limits": {"host_timeout", "probe_interval", "changes_per_host", "confirm_above", "open_hosts"},
}


class ConfigError(Exception):
    """One line that says what is wrong with the config and where."""


@dataclass
class Config:
    hosts: dict[str, str]
    store_path: str = ":memory:"
    policy_file: Path | None = None
    backups_dir: Path | None = None
    backup_keep: dict[str, int] = field(default_factory=lambda: dict(KEEP_DEFAULTS))
    backup_pools: tuple[str, ...] = ()  # storage pools a restored definition's files may live in
    backup_staging_pool: str = "default"  # the pool on each host where a live (push) backup is written first
    backup_disk_copies: dict[str, str] = field(default_factory=dict)  # host -> "pool" keeps its disk copies there
    slack: dict[str, str] = field(default_factory=dict)
    schedule: Schedule = field(default_factory=Schedule)
    terminal_users: dict[str, str] = field(default_factory=dict)
    autostart_expect: tuple[str, ...] = ()  # VM globs that should start with their host (autostart report)
    allow_as: bool = False
    host_timeout: float = 5.0
    probe_interval: float = 10.0
    changes_per_host: int = 4
    confirm_above: int = 5
    open_hosts: int = 256  # connections kept open; beyond it the least recently used idle ones are closed
    demo: bool = False
    source: str = "demo"


def demo() -> Config:
    """The embedded fleet: libvirt's test driver, state kept in this process only."""
    hosts = {p.stem: f"test://{p.resolve()}" for p in sorted(DEMO_DIR.glob("*.xml"))}
    return Config(hosts=hosts, demo=True)


def load(path: str | os.PathLike | None) -> Config:
    """Read the config named by ``--config``, else ``VMBOT_CONFIG``, else the demo."""
    path = path or os.environ.get("VMBOT_CONFIG")
    if not path:
        return demo()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read it: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    return _build(p, data)


def _build(p: Path, data: dict) -> Config:
    _check_keys(p, data)
    hosts = data.get("hosts") or {}
    if not hosts:
        raise ConfigError(f'{p}: [hosts] is empty; add name = "qemu+ssh://user@host/system"')
    for name, uri in hosts.items():
        check_host(p, name, uri)
    base = p.parent
    get = lambda section, key, default=None: data.get(section, {}).get(key, default)  # noqa: E731
    keys = _Keys(p, data)
    policy, backups = keys.text("policy", "file"), keys.text("backups", "dir")
    store = keys.text("store", "path") or "vmbot.db"
    return Config(
        hosts=dict(hosts),
        store_path=store if store == ":memory:" else str(base / store),
        policy_file=base / policy if policy else None,
        backups_dir=base / _typed(p, "backups.dir", backups, str) if backups is not None else None,
        backup_keep={k: _count(p, f"backups.{k}", get("backups", k, v)) for k, v in KEEP_DEFAULTS.items()},
        backup_pools=_pools(p, get("backups", "pools", [])),
        backup_staging_pool=_pools(p, [get("backups", "staging_pool", "default")])[0],
        backup_disk_copies=_disk_copies(p, get("backups", "disk_copies", {}), hosts),
        slack={key: keys.channel("slack", key) for key in data.get("slack", {})},
        schedule=_schedule(p, data),
        terminal_users=_str_map(p, get("terminal", "users", {})),
        autostart_expect=_globs(p, "autostart.expect", get("autostart", "expect", [])),
        allow_as=keys.boolean("terminal", "allow_as"),
        host_timeout=keys.seconds("limits", "host_timeout", 5.0),
        probe_interval=keys.seconds("limits", "probe_interval", 10.0),
        changes_per_host=keys.integer("limits", "changes_per_host", 4, 1, 1000),
        confirm_above=keys.integer("limits", "confirm_above", 5, 0, 1_000_000),
        open_hosts=keys.integer("limits", "open_hosts", 256, 1, 100_000),
        source=str(p),
    )


def _schedule(p: Path, data: dict) -> Schedule:
    """``[schedule]`` checked now: a bad cron expression stops the start, not the 08:00 digest."""
    try:
        found = schedule_settings.read(data.get("schedule", {}))
    except ValueError as e:
        raise ConfigError(f"{p}: [schedule] {e}") from None
    slack = data.get("slack", {})
    posting = [j for j in ("digest", "autostart_report", "backup_report") if j in found.jobs]
    if posting and not slack.get("digest_channel"):
        raise ConfigError(f"{p}: [schedule] {posting[0]} posts to [slack] digest_channel, which is not set")
    return found


class _Keys:
    """Typed, range-checked reads of the config: each mistake is one line naming section.key."""

    def __init__(self, p: Path, data: dict) -> None:
        self.p, self.data = p, data

    def _get(self, section: str, key: str) -> object:
        return self.data.get(section, {}).get(key)

    def _bad(self, section: str, key: str, value: object, want: str) -> ConfigError:
        return ConfigError(f"{self.p}: {section}.{key} must be {want} (got {value!r:.60})")

    def text(self, section: str, key: str) -> str | None:
        value = self._get(section, key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise self._bad(section, key, value, "a non-empty string")
        return value

    def channel(self, section: str, key: str) -> str:
        value = self.text(section, key) or ""
        if not CHANNEL_ID.match(value):
            raise self._bad(section, key, value, 'a Slack channel ID like "C0123OPS"')
        return value

    def boolean(self, section: str, key: str) -> bool:
        value = self._get(section, key)
        if value is not None and not isinstance(value, bool):
            raise self._bad(section, key, value, "true or false")
        return bool(value)

    def integer(self, section: str, key: str, default: int, low: int, high: int) -> int:
        value = self._get(section, key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._bad(section, key, value, f"a whole number from {low} to {high}")
        return value

    def seconds(self, section: str, key: str, default: float) -> float:
        """Seconds, more than 0 and at most an hour: 0, nan or inf would mark every host down or overflow."""
        value = self._get(section, key)
        if value is None:
            return default
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not 0 < value <= 3600:  # type: ignore[operator]
            raise self._bad(section, key, value, "seconds, more than 0 and at most 3600")
        return float(value)  # type: ignore[arg-type]


def _check_keys(p: Path, data: dict) -> None:
    for section, value in data.items():
        if section not in SCHEMA:
            raise ConfigError(f"{p}: unknown section [{section}]{suggest(section, SCHEMA)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{p}: {section} must be a table: [{section}]")
        allowed = SCHEMA[section]
        for key in value if allowed is not None else ():
            if key not in allowed:
                raise ConfigError(f"{p}: unknown key {key} in [{section}]{suggest(key, allowed)}")


def test_file(uri: str) -> str | None:
    """The fleet file of a ``test:///abs/path.xml`` URI (None for test:///default and other drivers)."""
    if not uri.startswith("test:///"):
        return None
    path = uri[len("test://") :].split("?", 1)[0]
    return None if path == "/default" else path


def check_host(p: Path | str, name: str, uri: object) -> None:
    """Refuse host names chat could not type and URIs libvirt could not open."""
    if not HOST_NAME.match(name):
        raise ConfigError(f"{p}: host name {name!r} must be letters, digits, '.', '_' or '-'")
    if not isinstance(uri, str):
        raise ConfigError(f"{p}: [hosts] {name} must be a libvirt URI string")
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise ConfigError(
            f"{p}: [hosts] {name} = {uri!r} is not a libvirt URI (like qemu+ssh://user@host/system)"
        ) from None
    if parts.password is not None:  # before any message quotes the URI
        raise ConfigError(f"{p}: [hosts] {name} has a password in its URI: use an ssh key (keyfile=)")
    driver, _, transport = parts.scheme.partition("+")
    if driver not in DRIVERS or transport not in TRANSPORTS or not uri.startswith(f"{parts.scheme}://"):
        raise ConfigError(f"{p}: [hosts] {name} = {uri!r} is not a libvirt URI (like qemu+ssh://user@host/system)")
    if (missing := test_file(uri)) and not Path(missing).is_file():
        raise ConfigError(f"{p}: [hosts] {name} = {uri!r}: no such test-driver file {missing}")
    if driver != "test" and parts.path not in ("/system", "/session"):
        raise ConfigError(f"{p}: [hosts] {name} = {uri!r} should end in /system or /session")
    if why := problem(uri):
        raise ConfigError(f"{p}: [hosts] {name}: {why}")  # no URI: it may hold what it must not


def _typed(p: Path, key: str, value: object, kind: type | tuple) -> object:
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ConfigError(f"{p}: {key} has the wrong type ({value!r})")
    return value


def _globs(p: Path, key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f'{p}: {key} must be a list of VM globs like ["db-*", "kvm01/web-*"]')
    return tuple(value)


def _str_map(p: Path, value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f'{p}: [terminal] users must map Unix names to Slack IDs: {{ alice = "U0123" }}')
    return dict(value)


def _count(p: Path, key: str, value: object) -> int:
    """A keep_* setting: a whole number from 0 (the rule keeps nothing) to 10000."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10000:
        raise ConfigError(f"{p}: {key} must be a whole number from 0 to 10000 (got {value!r})")
    return value


def _pools(p: Path, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and POOL_NAME.match(v) for v in value):
        raise ConfigError(f'{p}: backups.pools must be a list of storage pool names: pools = ["default"]')
    return tuple(value)


def _disk_copies(p: Path, value: object, hosts: dict) -> dict[str, str]:
    """``[backups] disk_copies``: per host, "download" (the default) or "pool" (kept in its staging pool)."""
    if not isinstance(value, dict) or not all(v in DISK_COPIES for v in value.values()):
        raise ConfigError(
            f'{p}: backups.disk_copies must map host names to "download" or "pool": '
            f'disk_copies = {{ kvm01 = "pool" }} (got {value!r:.60})'
        )
    for host in value:
        if host not in hosts:
            raise ConfigError(f"{p}: backups.disk_copies names host {host!r:.60}, which is not in [hosts]")
    return dict(value)
