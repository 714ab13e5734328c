"""``imaguard ctl`` against an in-process daemon (a real Service and ControlServer on a
socket under tmp_path, a fake enforcer, no fanotify, no root): exit codes 0, 2 with the
protocol's code on a refusal, 1 for a failing appraise; ``--json`` parses."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import imaguard
from helpers.clirun import run_in_process
from imaguard.errors import StoreError
from imaguard.policy import Provenance
from imaguard.service import ControlServer, Service, build_guard, load_config

CONFIG = """
watch = ["{tmp}"]
state = "{tmp}/state"
socket = "{tmp}/run/control.sock"
owners = "{tmp}/owners.d"
keyrings = ["{cert}"]
[[policy]]
name = "base"
owner = "me"
rules = "appraise func=BPRM_CHECK appraise_type=imasig\\n"
"""

FILE_RULE = "measure func=FILE_CHECK\n"
MMAP_RULE = "measure func=MMAP_CHECK\n"


@dataclass(frozen=True)
class FakeStats:
    allowed: int = 3
    denied: int = 1
    queue: int = 0


class FakeEnforcer:
    def swap_guard(self, guard: Any, retired: Any = None) -> None:
        pass

    def stats(self) -> FakeStats:
        return FakeStats()


@dataclass(frozen=True)
class FakeDecision:
    provenance: tuple[Provenance, ...]
    actions: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FakeEvent:
    path: str
    decision: FakeDecision
    pid: int = 777
    hook: str = "BPRM_CHECK"
    mask: int = 1
    allowed: bool = False
    permissive_override: bool = False
    reason: str = "appraisal failed"
    exe: str | None = "/usr/bin/bash"


@dataclass
class Daemon:
    socket: str
    service: Service
    tmp: Path

    def ctl(self, capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
        return run_in_process(capsys, "ctl", "--socket", self.socket, *args)

    def policy_file(self, name: str, text: str) -> Path:
        p = self.tmp / name
        p.write_text(text)
        return p


@pytest.fixture
def daemon(tmp_path: Path, ec_dir: Path) -> Iterator[Daemon]:
    owners = tmp_path / "owners.d"
    owners.mkdir()
    (owners / "me.toml").write_text(
        f'name = "me"\nuids = [{os.getuid()}]\nkeyring = "{ec_dir / "cert.der"}"\n'
    )
    (owners / "other.toml").write_text(f'name = "other"\nuids = [{os.getuid() + 4242}]\n')
    path = tmp_path / "imaguard.toml"
    path.write_text(
        CONFIG.replace("{tmp}", str(tmp_path)).replace("{cert}", str(ec_dir / "cert.der"))
    )
    cfg = load_config(path)
    service = Service(cfg, str(path), build_guard(cfg), FakeEnforcer(), supervisor_pid=1)
    service.ready = True
    srv = ControlServer(
        cfg.socket, service.handle, mode=cfg.socket_mode, max_clients=cfg.max_clients
    )
    srv.start()
    try:
        yield Daemon(cfg.socket, service, tmp_path)
    finally:
        srv._stop.set()
        with contextlib.suppress(OSError):
            srv._sock.shutdown(socket.SHUT_RDWR)  # close() alone waits out accept's 0.5 s
        srv.close()
        service.guard.close()


def test_policies_and_show(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = daemon.ctl(capsys, "policies")
    assert (code, err) == (0, "")
    assert out.startswith("base  owner=me  lock=open  version=1  rules=1  loaded=")
    assert out.rstrip().endswith("origin=config")

    code, out, _ = daemon.ctl(capsys, "--json", "policies")
    assert code == 0
    [entry] = json.loads(out)["policies"]
    assert {k: entry[k] for k in ("name", "owner", "lock", "version", "rules", "origin")} == {
        "name": "base",
        "owner": "me",
        "lock": "open",
        "version": 1,
        "rules": 1,
        "origin": "config",
    }
    assert entry["digest"].startswith("sha256:")

    code, out, _ = daemon.ctl(capsys, "show", "base")
    assert code == 0
    assert "appraise func=BPRM_CHECK appraise_type=imasig" in out
    assert f"digest={entry['digest']}" in out
    code, out, _ = daemon.ctl(capsys, "--json", "show", "base")
    assert code == 0
    assert json.loads(out)["text"].strip() == "appraise func=BPRM_CHECK appraise_type=imasig"

    code, out, err = daemon.ctl(capsys, "show", "ghost")
    assert (code, out) == (2, "")
    assert "[no-such-policy]" in err


def test_load_replace_append_seal(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    first = daemon.policy_file("mine.policy", FILE_RULE)
    second = daemon.policy_file("mine2.policy", FILE_RULE + MMAP_RULE)
    extra = daemon.policy_file("extra.policy", "audit func=BPRM_CHECK\n")

    code, out, err = daemon.ctl(capsys, "load", "mine", first, "--lock", "append-only")
    assert code == 0, err
    assert out.startswith("loaded: mine  owner=me  lock=append-only  version=1  rules=1")

    code, out, err = daemon.ctl(capsys, "--json", "replace", "mine", second, "--version", "5")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["name"], doc["version"], doc["rules"], doc["lock"]) == ("mine", 5, 2, "append-only")

    code, out, err = daemon.ctl(capsys, "append", "mine", extra)
    assert code == 0, err
    assert out.startswith("appended: mine  owner=me  lock=append-only  version=6  rules=3")

    code, out, err = daemon.ctl(capsys, "replace", "mine", first)  # drops rules
    assert (code, out) == (2, "")
    assert "[locked]" in err
    assert "append-only" in err

    code, out, err = daemon.ctl(capsys, "seal", "mine")
    assert code == 0, err
    assert out.startswith("sealed: mine  owner=me  lock=sealed  version=6")

    for args in (("replace", "mine", second, "--version", "9"), ("remove", "mine")):
        code, out, err = daemon.ctl(capsys, *args)
        assert (code, out) == (2, "")
        assert "[locked]" in err

    pset = daemon.service.guard.policies
    assert (pset.version("mine"), str(pset.lock("mine")), len(pset.policy("mine"))) == (
        6,
        "sealed",
        3,
    )


def test_refusals_exit_2_with_their_code(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    p = daemon.policy_file("p.policy", FILE_RULE)
    assert daemon.ctl(capsys, "load", "p", p, "--version", "3")[0] == 0
    cases: list[tuple[tuple[str | Path, ...], str]] = [
        (("load", "p", p, "--version", "4"), "[exists]"),
        (("replace", "p", p, "--version", "3"), "[rollback]"),
        (("replace", "base", p, "--version", "3"), "[config-policy]"),
        (("load", "q", p, "--owner", "other"), "[permission-denied]"),
        (("load", "q", daemon.policy_file("bad.policy", "frobnicate\n")), "[bad-policy]"),
        (("load", "q", p, "--lock", "signed-only"), "[bad-signature]"),
        (("remove", "ghost"), "[no-such-policy]"),
    ]
    for args, words in cases:
        code, out, err = daemon.ctl(capsys, *args)
        assert (code, out) == (2, ""), args
        assert words in err, (args, err)
    code, out, err = daemon.ctl(capsys, "remove", "p")
    assert (code, out.strip()) == (0, "removed: p")


def test_a_signed_only_policy_with_a_signature_file(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], ec_key: imaguard.PrivateKey
) -> None:
    text = "#@ version 2\n" + FILE_RULE
    p = daemon.policy_file("so.policy", text)
    sig = daemon.tmp / "so.sig-value"
    sig.write_bytes(imaguard.sign_bytes(text.encode(), ec_key).serialize())
    code, out, err = daemon.ctl(
        capsys, "--json", "load", "so", p, "--lock", "signed-only", "--signature", sig
    )
    assert code == 0, err
    assert (json.loads(out)["lock"], json.loads(out)["version"]) == ("signed-only", 2)
    other = daemon.policy_file("so3.policy", "#@ version 3\n" + MMAP_RULE)
    code, _, err = daemon.ctl(capsys, "replace", "so", other, "--signature", sig)
    assert code == 2
    assert "[bad-signature]" in err


def test_load_refuses_a_policy_that_is_not_utf8(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    p = daemon.tmp / "latin1.policy"
    p.write_bytes(b"# caf\xe9\n" + FILE_RULE.encode())
    code, out, err = daemon.ctl(capsys, "load", "x", p)
    assert (code, out) == (2, "")
    assert "not UTF-8" in err
    assert "x" not in daemon.service.guard.policies.names()


def test_whoami_and_status(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = daemon.ctl(capsys, "--json", "whoami")
    assert code == 0
    doc = json.loads(out)
    assert (doc["pid"], doc["uid"], doc["owners"]) == (os.getpid(), os.getuid(), ["me"])
    code, out, _ = daemon.ctl(capsys, "whoami")
    assert code == 0
    assert "owners: me" in out
    code, out, _ = daemon.ctl(capsys, "--json", "status")
    assert code == 0
    status = json.loads(out)
    assert (status["ready"], status["decisions"]) == (True, {"allowed": 3, "denied": 1})
    assert [p["name"] for p in status["policies"]] == ["base"]


def test_explain(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    prog = daemon.tmp / "prog"
    prog.write_bytes(b"#!/bin/sh\n")
    code, out, err = daemon.ctl(capsys, "explain", prog)
    assert code == 0, err
    assert out.splitlines()[0] == f"{prog} at BPRM_CHECK:"
    assert "  appraise: required by base:1 (owner me)" in out.splitlines()
    assert "  measure: not required" in out.splitlines()

    code, out, _ = daemon.ctl(capsys, "--json", "explain", prog)
    assert code == 0
    doc = json.loads(out)
    assert doc["actions"]["appraise"] == {
        "required": True,
        "policy": "base",
        "line": 1,
        "owner": "me",
    }
    assert (doc["appraise_type"], doc["owners"], doc["conflict"]) == ("imasig", ["me"], None)

    code, out, _ = daemon.ctl(capsys, "--json", "explain", prog, "--hook", "FILE_CHECK")
    assert code == 0
    assert json.loads(out)["actions"]["appraise"]["required"] is False
    code, _, err = daemon.ctl(capsys, "explain", prog, "--mask", "MAY_NOPE")
    assert code == 2
    assert "[bad-request]" in err


def test_appraise(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], ec_key: imaguard.PrivateKey
) -> None:
    unsigned = daemon.tmp / "unsigned"
    unsigned.write_bytes(b"#!/bin/sh\necho unsigned\n")
    code, out, err = daemon.ctl(capsys, "appraise", unsigned)
    assert code == 1, err
    assert out.startswith(f"{unsigned}: no-xattr")
    code, out, _ = daemon.ctl(capsys, "--json", "appraise", unsigned)
    assert code == 1
    assert json.loads(out)["status"] == "no-xattr"

    signed = daemon.tmp / "signed"
    signed.write_bytes(b"#!/bin/sh\necho signed\n")
    try:
        imaguard.sign_file(signed, ec_key)
    except StoreError as e:
        pytest.skip(f"this filesystem keeps no signatures here: {e}")
    code, out, err = daemon.ctl(capsys, "appraise", signed, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["status"], doc["path"]) == ("pass", str(signed))
    signed.write_bytes(b"#!/bin/sh\necho tampered\n")
    code, out, _ = daemon.ctl(capsys, "appraise", signed)
    assert code == 1
    assert out.startswith(f"{signed}: fail")


def test_decisions(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = daemon.ctl(capsys, "--json", "decisions")
    assert (code, out, err) == (0, "", "")
    prov = Provenance("appraise", "base", 1, "appraise func=BPRM_CHECK appraise_type=imasig", "me")
    daemon.service.on_decision(FakeEvent("/srv/x", FakeDecision((prov,))))
    daemon.service.on_decision(FakeEvent("/srv/y", FakeDecision(()), allowed=True))  # no owner
    code, out, _ = daemon.ctl(capsys, "--json", "decisions")
    assert code == 0
    [d] = [json.loads(line) for line in out.splitlines()]
    assert (d["path"], d["allowed"], d["owners"], d["pid"]) == ("/srv/x", False, ["me"], 777)
    assert d["provenance"][0]["policy"] == "base"
    code, out, _ = daemon.ctl(capsys, "decisions", "--owner", "me")
    assert code == 0
    assert "DENIED BPRM_CHECK /srv/x pid 777 (/usr/bin/bash) owners me rules base:1" in out
    code, out, err = daemon.ctl(capsys, "decisions", "--owner", "other")
    assert (code, out) == (2, "")
    assert "[permission-denied]" in err


def test_no_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = tmp_path / "absent.sock"
    code, out, err = run_in_process(capsys, "ctl", "--socket", sock, "policies")
    assert (code, out) == (2, "")
    assert f"no imaguard daemon answers on {sock}" in err


def test_the_socket_from_the_environment(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGUARD_SOCKET", daemon.socket)
    code, out, _ = run_in_process(capsys, "ctl", "--json", "policies")
    assert code == 0
    assert [p["name"] for p in json.loads(out)["policies"]] == ["base"]
