"""The config file: every key, its defaults, and errors that name the key and the file."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from imaguard.errors import UsageError
from imaguard.service import (
    EMBEDDED_DEFAULT,
    ConfigError,
    build_guard,
    build_policy_set,
    load_config,
    parse_config,
)
from imaguard.service import _config as config_module

from .conftest import MINIMAL

WriteConfig = Callable[[str], Path]


def test_every_key(tmp_path: Path, write_config: WriteConfig, keys_dir: dict[str, Path]) -> None:
    for d in ("keys", "pkeys"):
        (tmp_path / d).mkdir()
        shutil.copy(keys_dir["ecdsa-p256"] / "cert.der", tmp_path / d / "cert.der")
    (tmp_path / "exec.policy").write_text("appraise func=BPRM_CHECK appraise_type=imasig\n")
    path = write_config(
        """
mode = "permissive"
watch = ["{tmp}", "."]
state = "state"
socket = "/run/x/control.sock"
keyrings = ["keys"]
policy_keyrings = ["pkeys"]
interpreters = ["/usr/bin/python3*", "/usr/bin/dash"]
tpm = "swtpm:host=127.0.0.1,port=2321"
workers = 2
queue_limit = 100
open_events = false
cache_opens = true
audit_syslog = true
restart_delay_max = 1.5

[[policy]]
name = "exec-guard"
owner = "admin"
file = "exec.policy"
lock = "append-only"

[[policy]]
name = "tcb"
owner = "attestation"
builtin = "tcb"
lock = "sealed"

[[policy]]
name = "inline"
rules = "measure func=BPRM_CHECK"
"""
    )
    cfg = load_config(path)
    assert cfg.source == str(path)
    assert cfg.mode == "permissive"
    assert cfg.permissive
    assert cfg.guard_mode == "enforce"
    assert cfg.watch == (str(tmp_path), str(tmp_path))
    assert cfg.state == str(tmp_path / "state")
    assert cfg.socket == "/run/x/control.sock"
    assert cfg.keyrings == (str(tmp_path / "keys"),)
    assert cfg.policy_keyrings == (str(tmp_path / "pkeys"),)
    assert cfg.interpreters == ("/usr/bin/python3*", "/usr/bin/dash")
    assert cfg.tpm == "swtpm:host=127.0.0.1,port=2321"
    assert (cfg.workers, cfg.queue_limit) == (2, 100)
    assert cfg.open_events is False
    assert cfg.cache_opens is True
    assert cfg.audit_syslog is True
    assert cfg.restart_delay_max == 1.5
    p0, p1, p2 = cfg.policies
    assert (p0.name, p0.owner, p0.lock, p0.file) == (
        "exec-guard",
        "admin",
        "append-only",
        str(tmp_path / "exec.policy"),
    )
    assert (p1.name, p1.owner, p1.lock, p1.builtin, p1.file) == (
        "tcb",
        "attestation",
        "sealed",
        "tcb",
        None,
    )
    assert (p2.owner, p2.lock, p2.rules) == ("admin", "open", "measure func=BPRM_CHECK")
    pset, _ring = build_policy_set(cfg)
    assert pset.names() == ["exec-guard", "tcb", "inline"]
    assert [str(pset.lock(n)) for n in pset.names()] == ["append-only", "sealed", "open"]


def test_defaults(write_config: WriteConfig) -> None:
    cfg = load_config(write_config(MINIMAL))
    assert cfg.mode == "enforce"
    assert cfg.state == "/var/lib/imaguard"
    assert cfg.socket == "/run/imaguard/control.sock"
    assert cfg.keyrings == ()
    assert cfg.interpreters is None
    assert cfg.tpm is None
    assert cfg.policy_keyrings is None
    assert (
        cfg.cache_opens == "root-owned"
    )  # opens cached in the kernel only for root-only-writable files
    assert (cfg.workers, cfg.queue_limit, cfg.open_events, cfg.audit_syslog) == (
        4,
        4096,
        True,
        False,
    )
    assert cfg.policies[0].owner == "admin"
    assert cfg.policies[0].lock == "open"


def test_embedded_default_measures_exec_and_appraises_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    cfg = load_config(None)
    assert cfg == parse_config(EMBEDDED_DEFAULT, source=cfg.source)
    assert cfg.source == "<embedded default>"
    assert cfg.mode == "enforce"
    assert cfg.watch == ("/",)
    pset, ring = build_policy_set(cfg)
    assert len(ring) == 0
    [name] = pset.names()
    rules = pset.policy(name).rules
    assert [(r.action.value, r.func) for r in rules] == [("measure", "BPRM_CHECK")]


def test_default_path_is_read_when_present(
    monkeypatch: pytest.MonkeyPatch, write_config: WriteConfig
) -> None:
    path = write_config(MINIMAL.replace('name = "exec-guard"', 'name = "from-file"'))
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", str(path))
    assert load_config(None).policies[0].name == "from-file"


POLICY = '\n[[policy]]\nname = "p"\nrules = "measure func=BPRM_CHECK"\n'
WATCH = 'watch = ["{tmp}"]\n'

BAD = [
    ("mode", 'mode = "strict"\n' + WATCH + POLICY),
    ("mode", "mode = 1\n" + WATCH + POLICY),
    ("watch", POLICY),
    ("watch", 'watch = "/"\n' + POLICY),
    ("watch", "watch = []\n" + POLICY),
    ("watch[1]", 'watch = ["{tmp}", "{tmp}/absent"]\n' + POLICY),
    ("watch[0]", "watch = [3]\n" + POLICY),
    ("watch[0]", 'watch = [""]\n' + POLICY),
    ("state", "state = 3\n" + WATCH + POLICY),
    ("state", 'state = ""\n' + WATCH + POLICY),
    ("socket", f'socket = "/{"x" * 120}"\n' + WATCH + POLICY),
    ("keyrings", 'keyrings = "/etc"\n' + WATCH + POLICY),
    ("keyrings[0]", "keyrings = [1]\n" + WATCH + POLICY),
    ("interpreters[0]", 'interpreters = ["python3"]\n' + WATCH + POLICY),
    ("interpreters", 'interpreters = "/usr/bin/sh"\n' + WATCH + POLICY),
    ("tpm", 'tpm = ""\n' + WATCH + POLICY),
    ("tpm", "tpm = 1\n" + WATCH + POLICY),
    ("policy_keyrings", 'policy_keyrings = "x"\n' + WATCH + POLICY),
    ("workers", "workers = 0\n" + WATCH + POLICY),
    ("workers", "workers = true\n" + WATCH + POLICY),
    ("queue_limit", 'queue_limit = "8"\n' + WATCH + POLICY),
    ("open_events", 'open_events = "yes"\n' + WATCH + POLICY),
    ("cache_opens", "cache_opens = 1\n" + WATCH + POLICY),
    ("audit_syslog", "audit_syslog = 1\n" + WATCH + POLICY),
    ("restart_delay_max", "restart_delay_max = -1\n" + WATCH + POLICY),
    ("policy", WATCH),
    ("policy", WATCH + "policy = 1\n"),
    ("policy[0].name", WATCH + '[[policy]]\nrules = "measure func=BPRM_CHECK"\n'),
    ("policy[0].name", WATCH + '[[policy]]\nname = "a b"\nrules = "measure func=BPRM_CHECK"\n'),
    ("policy[1].name", WATCH + POLICY + POLICY),
    ("policy[0].owner", WATCH + POLICY + "owner = 7\n"),
    ("policy[0].lock", WATCH + POLICY + 'lock = "locked"\n'),
    ("policy[0].lock", WATCH + '[[policy]]\nname = "p"\nbuiltin = "tcb"\nlock = "signed-only"\n'),
    ("policy[0]", WATCH + '[[policy]]\nname = "p"\n'),
    ("policy[0]", WATCH + POLICY + 'builtin = "tcb"\n'),
    ("policy[0].rules", WATCH + '[[policy]]\nname = "p"\nrules = " "\n'),
    ("policy[0].colour", WATCH + POLICY + 'colour = "red"\n'),
    ("colour", 'colour = "red"\n' + WATCH + POLICY),
    ("(syntax)", WATCH + "mode = \n" + POLICY),
]


@pytest.mark.parametrize(("key", "text"), BAD, ids=[f"{k}-{i}" for i, (k, _) in enumerate(BAD)])
def test_bad_value_names_the_key_and_file(key: str, text: str, write_config: WriteConfig) -> None:
    path = write_config(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.key == key
    assert exc.value.path == str(path)
    assert str(exc.value).startswith(f"{path}: {key}: ")
    assert isinstance(exc.value, UsageError)


BUILD_BAD = [
    ("policy[0].file", '[[policy]]\nname = "p"\nfile = "absent.policy"\n', None),
    (
        "policy[0].file",
        '[[policy]]\nname = "p"\nfile = "bad.policy"\n',
        "frobnicate func=BPRM_CHECK\n",
    ),
    ("policy[0].builtin", '[[policy]]\nname = "p"\nbuiltin = "nope"\n', None),
    ("policy[0].rules", '[[policy]]\nname = "p"\nrules = "measure fowner=abc"\n', None),
    (
        "policy[0].file",
        '[[policy]]\nname = "p"\nfile = "bad.policy"\nlock = "signed-only"\n',
        "measure func=BPRM_CHECK\n",
    ),
    ("keyrings[0]", 'keyrings = ["absent"]\n' + POLICY, None),
    ("keyrings", 'keyrings = ["junk"]\n' + POLICY, None),
]


@pytest.mark.parametrize(("key", "text", "policy"), BUILD_BAD)
def test_unusable_value_names_the_key(
    key: str, text: str, policy: str | None, tmp_path: Path, write_config: WriteConfig
) -> None:
    if policy is not None:
        (tmp_path / "bad.policy").write_text(policy)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "cert.der").write_bytes(b"not a certificate")
    cfg = load_config(write_config(WATCH + text))
    with pytest.raises(ConfigError) as exc:
        build_policy_set(cfg)
    assert exc.value.key == key
    assert str(exc.value).startswith(f"{cfg.source}: {key}: ")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "absent.toml")
    assert exc.value.key == "(file)"
    assert "absent.toml" in str(exc.value)


def test_not_utf8(write_config: WriteConfig) -> None:
    path = write_config("")
    path.write_bytes(b"mode = '\xff'\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.key == "(file)"


@pytest.mark.parametrize(
    ("mode", "guard_mode"), [("enforce", "enforce"), ("permissive", "enforce"), ("log", "log")]
)
def test_guard_from_config(
    mode: str, guard_mode: str, tmp_path: Path, write_config: WriteConfig
) -> None:
    cfg = load_config(
        write_config(
            f'mode = "{mode}"\nstate = "state"\n'
            + WATCH
            + POLICY
            + 'owner = "ops"\nlock = "append-only"\n'
        )
    )
    guard = build_guard(cfg)
    try:
        assert guard.mode == guard_mode
        assert guard.policies.names() == ["p"]
        assert str(guard.policies.lock("p")) == "append-only"
        assert os.path.isfile(tmp_path / "state" / "audit.jsonl")
        assert guard._log is not None  # opened now: a bad state fails at build time
    finally:
        guard.close()


def test_with_mode_refuses_unknown(write_config: WriteConfig) -> None:
    cfg = load_config(write_config(MINIMAL))
    assert cfg.with_mode("log").mode == "log"
    with pytest.raises(ConfigError) as exc:
        cfg.with_mode("strict")
    assert exc.value.key == "mode"


def test_shipped_example_parses(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[3] / "packaging" / "imaguard.toml"
    cfg = parse_config(example.read_text().replace("/srv/apps", str(tmp_path)), source="example")
    assert cfg.mode == "permissive"
    assert [p.name for p in cfg.policies] == ["exec-guard", "attestation"]
    assert cfg.policies[1].lock == "sealed"
    assert cfg.owners == "/etc/imaguard/owners.d"
    assert (cfg.socket_mode, cfg.read_access, cfg.max_clients) == (0o666, "everyone", 64)


def test_shipped_owner_example_parses(tmp_path: Path) -> None:
    from imaguard.service import parse_owner

    example = Path(__file__).resolve().parents[3] / "packaging" / "owners.d" / "plugins.toml"
    text = example.read_text().replace("/etc/imaguard/owners/plugins/keys", str(tmp_path))
    owner = parse_owner(text, source="example")
    assert owner.name == "plugins"
    assert owner.uids == frozenset({1001})
    assert owner.units == frozenset({"plugin-host.service"})
    assert owner.exes == frozenset({"/usr/bin/plugin-host"})
    assert owner.keyring == str(tmp_path)


@pytest.mark.parametrize(
    ("line", "key", "problem"),
    [
        ('socket_mode = "0400"', "socket_mode", "0600 at least"),
        ('socket_mode = "0777"', "socket_mode", "octal mode"),
        ('socket_mode = "rw"', "socket_mode", "octal mode"),
        ('read_access = "root"', "read_access", "everyone, owners"),
        ("max_clients = 0", "max_clients", "between 1 and 4096"),
    ],
)
def test_service_keys_refused(write_config: WriteConfig, line: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write_config(line + "\n" + MINIMAL))
    assert exc.value.key == key
    assert problem in exc.value.problem


def test_service_keys_accepted(write_config: WriteConfig) -> None:
    cfg = load_config(
        write_config(
            'socket_mode = 0o600\nread_access = "owners"\nmax_clients = 3\nowners = "o.d"\n'
            + MINIMAL
        )
    )
    assert (cfg.socket_mode, cfg.read_access, cfg.max_clients) == (0o600, "owners", 3)
    assert os.path.isabs(cfg.owners)
    assert cfg.owners.endswith("/o.d")
