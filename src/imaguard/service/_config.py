"""The daemon's configuration: ``/etc/imaguard/imaguard.toml`` parsed into a frozen Config.

Every problem is one :class:`ConfigError` that names the file and the key at fault
(``policy[1].lock``); unknown keys are errors, so a typo never silently turns a setting off.
Relative paths are taken relative to the config file's directory.

Without a config file the daemon runs :data:`EMBEDDED_DEFAULT`: it measures every exec on
the root filesystem into the log, appraises nothing and denies nothing.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from imaguard.errors import UsageError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_OWNERS",
    "EMBEDDED_DEFAULT",
    "LOCKS",
    "MODES",
    "READ_ACCESS",
    "Config",
    "ConfigError",
    "PolicySpec",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH = "/etc/imaguard/imaguard.toml"
DEFAULT_OWNERS = "/etc/imaguard/owners.d"
READ_ACCESS = ("everyone", "owners")
MODES = ("enforce", "permissive", "log")
LOCKS = ("open", "append-only", "signed-only", "sealed")
EMBEDDED_SOURCE = "<embedded default>"

EMBEDDED_DEFAULT = """\
# imaguard's built-in configuration: measure every exec, appraise nothing, deny nothing.
mode = "enforce"
watch = ["/"]
state = "/var/lib/imaguard"
socket = "/run/imaguard/control.sock"
keyrings = []

[[policy]]
name = "measure-exec"
owner = "imaguard"
rules = "measure func=BPRM_CHECK"
lock = "open"
"""


class ConfigError(UsageError):
    """A configuration file is malformed: ``key`` names the setting at fault, ``path`` the file."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path = path
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class PolicySpec:
    """One ``[[policy]]`` table: exactly one of ``file``, ``builtin`` or ``rules`` is set."""

    name: str
    owner: str
    lock: str = "open"
    file: str | None = None
    builtin: str | None = None
    rules: str | None = None


@dataclass(frozen=True)
class Config:
    """The daemon's settings (see the README's "Running the daemon" for each key)."""

    source: str
    mode: str
    watch: tuple[str, ...]
    state: str
    socket: str
    keyrings: tuple[str, ...]
    policies: tuple[PolicySpec, ...]
    interpreters: tuple[str, ...] | None = None
    tpm: str | None = None
    policy_keyrings: tuple[str, ...] | None = None
    workers: int = 4
    queue_limit: int = 4096
    open_events: bool = True
    cache_opens: bool | str = "root-owned"
    audit_syslog: bool = False
    restart_delay_max: float = 5.0
    owners: str = DEFAULT_OWNERS
    socket_mode: int = 0o666
    read_access: str = "everyone"
    max_clients: int = 64
    max_clients_per_uid: int | None = None
    digestlist_keyrings: tuple[str, ...] = ()
    trust: str | None = None
    measure_listed: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def permissive(self) -> bool:
        return self.mode == "permissive"

    @property
    def trust_dir(self) -> str:
        """The trust database's directory: ``trust``, else ``STATE/trust``."""
        return self.trust if self.trust is not None else os.path.join(self.state, "trust")

    @property
    def guard_mode(self) -> str:
        """The Guard's appraisal mode: ``log`` for log, ``enforce`` otherwise."""
        return "log" if self.mode == "log" else "enforce"

    def with_mode(self, mode: str) -> Config:
        if mode not in MODES:
            raise ConfigError(self.source, "mode", f"must be one of {', '.join(MODES)}")
        return dataclasses.replace(self, mode=mode)


_TOP_KEYS = {
    "mode",
    "watch",
    "state",
    "socket",
    "keyrings",
    "interpreters",
    "tpm",
    "policy",
    "policy_keyrings",
    "workers",
    "queue_limit",
    "open_events",
    "cache_opens",
    "audit_syslog",
    "restart_delay_max",
    "owners",
    "socket_mode",
    "read_access",
    "max_clients",
    "max_clients_per_uid",
    "digestlist_keyrings",
    "trust",
    "measure_listed",
}
_POLICY_KEYS = {"name", "owner", "file", "builtin", "rules", "lock"}
_DEFAULTS: dict[str, Any] = {
    "state": "/var/lib/imaguard",
    "socket": "/run/imaguard/control.sock",
}


class _Reader:
    def __init__(self, source: str, base: str | None) -> None:
        self.source = source
        self.base = base

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.source, key, problem)

    def path(self, key: str, value: str) -> str:
        if not value:
            raise self.fail(key, "must not be empty")
        if "\0" in value:
            raise self.fail(key, "must not contain a NUL character")
        if self.base is not None and not os.path.isabs(value):
            value = os.path.join(self.base, value)
        return os.path.normpath(value)

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, not {_kind(value)}")
        return value

    def strings(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of strings, not {_kind(value)}")
        return tuple(self.string(f"{key}[{i}]", v) for i, v in enumerate(value))

    def integer(self, key: str, value: Any, low: int, high: int) -> int:
        if type(value) is not int:
            raise self.fail(key, f"must be an integer, not {_kind(value)}")
        if not low <= value <= high:
            raise self.fail(key, f"must be between {low} and {high}, not {value}")
        return value

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {_kind(value)}")
        return value


def _kind(value: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def parse_config(text: str | bytes, *, source: str = "<config>", base: str | None = None) -> Config:
    """Parse config text; ``base`` is the directory relative paths are resolved against."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(source, "(file)", f"not UTF-8 text (byte {e.start})") from e
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, "(syntax)", f"not valid TOML: {e}") from e
    except RecursionError:
        raise ConfigError(source, "(syntax)", "not valid TOML: nested too deeply") from None
    return _from_document(doc, _Reader(source, base))


def _from_document(doc: dict[str, Any], r: _Reader) -> Config:
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise r.fail(unknown[0], f"unknown key (known keys: {', '.join(sorted(_TOP_KEYS))})")
    mode = r.string("mode", doc.get("mode", "enforce"))
    if mode not in MODES:
        raise r.fail("mode", f"must be one of {', '.join(MODES)}, not {mode!r}")
    if "watch" not in doc:
        raise r.fail("watch", "missing: list the paths whose filesystems are enforced")
    watch = tuple(r.path(f"watch[{i}]", p) for i, p in enumerate(r.strings("watch", doc["watch"])))
    if not watch:
        raise r.fail("watch", "must name at least one path")
    for i, p in enumerate(watch):
        if not os.path.exists(p):
            raise r.fail(f"watch[{i}]", f"{p} does not exist")
    state = r.path("state", r.string("state", doc.get("state", _DEFAULTS["state"])))
    socket = r.path("socket", r.string("socket", doc.get("socket", _DEFAULTS["socket"])))
    if len(socket.encode()) > 107:
        raise r.fail("socket", "a Unix socket path must be at most 107 bytes")
    keyrings = tuple(
        r.path(f"keyrings[{i}]", p)
        for i, p in enumerate(r.strings("keyrings", doc.get("keyrings", [])))
    )
    interpreters = r.strings("interpreters", doc["interpreters"]) if "interpreters" in doc else None
    if interpreters is not None:
        for i, glob in enumerate(interpreters):
            if not glob.startswith("/"):
                raise r.fail(f"interpreters[{i}]", f"must be an absolute path glob, not {glob!r}")
    tpm = r.string("tpm", doc["tpm"]) if "tpm" in doc else None
    if tpm == "":
        raise r.fail("tpm", "must not be empty (leave the key out for software PCR banks)")
    policy_keyrings = (
        tuple(
            r.path(f"policy_keyrings[{i}]", p)
            for i, p in enumerate(r.strings("policy_keyrings", doc["policy_keyrings"]))
        )
        if "policy_keyrings" in doc
        else None
    )
    workers = r.integer("workers", doc.get("workers", 4), 1, 64)
    queue_limit = r.integer("queue_limit", doc.get("queue_limit", 4096), 1, 1 << 20)
    open_events = r.boolean("open_events", doc.get("open_events", True))
    cache_opens = doc.get("cache_opens", "root-owned")
    if not (isinstance(cache_opens, bool) or cache_opens == "root-owned"):
        raise r.fail("cache_opens", f'must be true, false or "root-owned", not {cache_opens!r}')
    audit_syslog = r.boolean("audit_syslog", doc.get("audit_syslog", False))
    delay = doc.get("restart_delay_max", 5.0)
    if type(delay) not in (int, float) or not 0 <= delay <= 300:
        raise r.fail("restart_delay_max", f"must be a number of seconds in 0..300, not {delay!r}")
    policies = _policies(doc.get("policy"), r)
    owners = r.path("owners", r.string("owners", doc.get("owners", DEFAULT_OWNERS)))
    socket_mode = _socket_mode(r, doc.get("socket_mode", "0666"))
    read_access = r.string("read_access", doc.get("read_access", "everyone"))
    if read_access not in READ_ACCESS:
        raise r.fail("read_access", f"must be one of {', '.join(READ_ACCESS)}, not {read_access!r}")
    max_clients = r.integer("max_clients", doc.get("max_clients", 64), 1, 4096)
    per_uid = (
        r.integer("max_clients_per_uid", doc["max_clients_per_uid"], 1, max_clients)
        if "max_clients_per_uid" in doc
        else None
    )
    digestlist_keyrings = tuple(
        r.path(f"digestlist_keyrings[{i}]", p)
        for i, p in enumerate(r.strings("digestlist_keyrings", doc.get("digestlist_keyrings", [])))
    )
    trust = r.path("trust", r.string("trust", doc["trust"])) if "trust" in doc else None
    measure_listed = r.boolean("measure_listed", doc.get("measure_listed", True))
    return Config(
        source=r.source,
        mode=mode,
        watch=watch,
        state=state,
        socket=socket,
        keyrings=keyrings,
        policies=policies,
        interpreters=interpreters,
        tpm=tpm,
        policy_keyrings=policy_keyrings,
        workers=workers,
        queue_limit=queue_limit,
        open_events=open_events,
        cache_opens=cache_opens,
        audit_syslog=audit_syslog,
        restart_delay_max=float(delay),
        owners=owners,
        socket_mode=socket_mode,
        read_access=read_access,
        max_clients=max_clients,
        max_clients_per_uid=per_uid,
        digestlist_keyrings=digestlist_keyrings,
        trust=trust,
        measure_listed=measure_listed,
    )


def _socket_mode(r: _Reader, value: Any) -> int:
    if type(value) is int:  # socket_mode = 0o666
        text, mode = oct(value), value
    else:
        text = r.string("socket_mode", value)
        try:
            mode = int(text, 8)
        except ValueError:
            mode = -1
    if not 0 <= mode <= 0o777 or mode & 0o111:
        raise r.fail("socket_mode", f'must be an octal mode such as "0666" or "0600", not {text!r}')
    if not mode & 0o600 == 0o600:
        raise r.fail("socket_mode", f"must let root read and write (0600 at least), not {text!r}")
    return mode


def _policies(value: Any, r: _Reader) -> tuple[PolicySpec, ...]:
    if value is None:
        raise r.fail("policy", "missing: add at least one [[policy]] table")
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise r.fail("policy", "must be an array of tables ([[policy]])")
    if not value:
        raise r.fail("policy", "add at least one [[policy]] table")
    out: list[PolicySpec] = []
    seen: set[str] = set()
    for i, table in enumerate(value):
        at = f"policy[{i}]"
        unknown = sorted(set(table) - _POLICY_KEYS)
        if unknown:
            raise r.fail(
                f"{at}.{unknown[0]}", f"unknown key (known keys: {', '.join(sorted(_POLICY_KEYS))})"
            )
        if "name" not in table:
            raise r.fail(f"{at}.name", "missing")
        name = r.string(f"{at}.name", table["name"])
        if not name or any(c.isspace() for c in name) or "=" in name:
            raise r.fail(f"{at}.name", f"bad policy name {name!r} (no spaces or '=')")
        if name in seen:
            raise r.fail(f"{at}.name", f"a policy named {name!r} is already configured")
        seen.add(name)
        owner = r.string(f"{at}.owner", table.get("owner", "admin"))
        if not owner:
            raise r.fail(f"{at}.owner", "must not be empty")
        lock = r.string(f"{at}.lock", table.get("lock", "open"))
        if lock not in LOCKS:
            raise r.fail(f"{at}.lock", f"must be one of {', '.join(LOCKS)}, not {lock!r}")
        sources = [k for k in ("file", "builtin", "rules") if k in table]
        if len(sources) != 1:
            raise r.fail(
                at,
                "give exactly one of file, builtin or rules"
                + (f" (found {', '.join(sources)})" if sources else ""),
            )
        kind = sources[0]
        text = r.string(f"{at}.{kind}", table[kind])
        if kind == "file":
            text = r.path(f"{at}.file", text)
        elif not text.strip():
            raise r.fail(f"{at}.{kind}", "must not be empty")
        if lock == "signed-only" and kind != "file":
            raise r.fail(f"{at}.lock", "a signed-only policy must come from a signed file")
        out.append(PolicySpec(name, owner, lock, **{kind: text}))
    return tuple(out)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the config at ``path``; without one, the default path, else the embedded default."""
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG_PATH):
            return parse_config(EMBEDDED_DEFAULT, source=EMBEDDED_SOURCE)
        path = DEFAULT_CONFIG_PATH
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = f.read((1 << 20) + 1)
    except OSError as e:
        raise ConfigError(source, "(file)", f"cannot read: {e.strerror or e}") from e
    if len(data) > 1 << 20:
        raise ConfigError(source, "(file)", "larger than 1 MiB")
    return parse_config(data, source=source, base=os.path.dirname(os.path.abspath(source)))
