"""The policy service of the real daemon (docs/protocol.md): owners, locks, versions,
signed-only updates, measurement and audit of changes, fd-passing appraisal, hostile
clients and decisions by owner.

The daemon watches only the tmpfs of ``daemon_env``; its config policy only *measures*
there, so every exec denial seen here comes from a policy loaded over the socket.

Non-root clients: the venv's interpreter may live under a directory other uids cannot
search (here pyenv's, under ``/root``, mode 0700): ``setpriv --reuid 1001 ... python``
then runs another Python (the exec passes on the capabilities setpriv keeps until then,
but the loader falls back to the system's libpython and standard library), and ``env``
or ``sudo -u`` fail with EACCES. A client of another uid is therefore a *fork* of this
process that drops to that uid (``setgroups([])``, ``setgid``, ``setuid``) and runs
``imaguard ctl`` in-process (``imaguard.cli.main``) or ``imaguard.Client``: the daemon
sees that process's kernel credentials, as it would of any other program.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import imaguard
from imaguard.crypto import PrivateKey

from .conftest import TMPFS_MAGIC, Daemon, cli, run

pytestmark = pytest.mark.root

UID_A = 1001
UID_B = 1002
OWNER_A = "alpha"
OWNER_B = "beta"

MEASURE_ONLY = f"measure func=BPRM_CHECK fsmagic={TMPFS_MAGIC}\n"
A_RULES = f"appraise func=BPRM_CHECK fsmagic={TMPFS_MAGIC} appraise_type=imasig\n"
B_RULES = f"dont_appraise fsmagic={TMPFS_MAGIC}\n"

CONFIG = """\
mode = "enforce"
watch = ["{mnt}"]
state = "{state}"
socket = "{sock}"
keyrings = ["{ring}"]
owners = "{owners}"

[[policy]]
name = "exec-measure"
owner = "admin"
file = "{policy}"
lock = "open"
"""


# -- clients of other uids --------------------------------------------------------------------
PRELOAD = ("tomllib", "imaguard.cli", "imaguard.cli._ctl", "imaguard.service._client")
"""Imported before a fork: a child that has dropped to another uid may not be able to
read the interpreter's own library (see above) when it imports a module lazily."""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def as_uid(uid: int, fn: Callable[[], int]) -> Result:
    """Run ``fn`` in a forked child that has dropped to ``uid``/``uid``, no groups.

    The child's stdout and stderr go to files this process reads; it exits with ``fn``'s
    return value (a SystemExit's code; 99 and a traceback for any other exception) and is
    killed by SIGALRM after 60 s whatever it does.
    """
    for module in PRELOAD:
        importlib.import_module(module)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; it always leaves through os._exit
            code = 98
            try:
                signal.alarm(60)
                sys.stdout = open(os.dup(out.fileno()), "w")  # noqa: SIM115
                sys.stderr = open(os.dup(err.fileno()), "w")  # noqa: SIM115
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                try:
                    code = fn()
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
                except BaseException:
                    traceback.print_exc()
                    code = 99
            finally:
                with contextlib.suppress(BaseException):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return Result(
            os.waitstatus_to_exitcode(status),
            out.read().decode(),
            err.read().decode(),
        )


def ctl_as(uid: int, sock: Path, *args: str) -> Result:
    """``imaguard ctl --socket SOCK ARGS...`` run as ``uid`` (in a forked child)."""

    def main() -> int:
        from imaguard.cli import main as imaguard_main

        imaguard_main(["ctl", "--socket", str(sock), *args])  # exits (SystemExit)

    return as_uid(uid, main)


def refused(r: Result | subprocess.CompletedProcess[str], code: str) -> bool:
    """``imaguard ctl`` refused the request with ``code`` (exit 2, the code on stderr)."""
    return r.returncode == 2 and r.stdout == "" and r.stderr.rstrip().endswith(f"[{code}]")


# -- the service under test -------------------------------------------------------------------
@dataclass
class Service:
    d: Daemon
    shared: Path
    """Root-owned, 0755, outside the 0700 tmp_path: the socket and the clients' files."""
    owners: Path
    a_ring: Path
    policy_key: PrivateKey
    """Its certificate is in owner alpha's keyring."""
    other_key: PrivateKey
    """In no keyring at all."""

    @property
    def sock(self) -> Path:
        return self.d.sock

    def file(self, name: str, text: str) -> Path:
        """A policy file every uid can read."""
        path = self.shared / name
        path.write_text(text)
        path.chmod(0o644)
        return path

    def signed(self, name: str, text: str, key: PrivateKey) -> tuple[Path, Path]:
        """A policy file signed by ``key`` (security.ima), and a copy of that value beside it."""
        path = self.file(name, text)
        imaguard.sign_file(path, key, "sha256")
        sig = path.with_suffix(".ima")
        sig.write_bytes(os.getxattr(path, "security.ima"))
        sig.chmod(0o644)
        return path, sig

    def ctl(self, uid: int, *args: str) -> Result:
        return ctl_as(uid, self.sock, *args)

    def ctl_json(self, uid: int, *args: str) -> dict[str, Any]:
        r = self.ctl(uid, "--json", *args)
        assert r.returncode == 0, r
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc

    def start(self) -> None:
        self.d.start()

    def restart(self) -> None:
        """Stop the daemon by its PID, then start it again on the same config and state.

        One SIGTERM, to the supervisor, which stops its worker and exits 0 (an orderly
        stop removes the socket). Not ``Daemon.stop``: it also signals the worker, and two
        SIGTERMs close together can deadlock the worker (its handler, on_term in
        src/imaguard/service/_worker.py, takes an Event's lock; a second signal re-enters it).
        """
        doc = self.d.status()
        assert self.d.proc is not None
        os.kill(doc["pid"], signal.SIGTERM)
        assert self.d.proc.wait(timeout=30) == 0
        self.d.pids.clear()  # both are gone (the supervisor reaped its worker)
        assert not self.sock.exists()
        self.d.start()
        assert self.d.status()["worker_pid"] != doc["worker_pid"]

    def policy_changes(self) -> list[dict[str, Any]]:
        return [r for r in self.d.audit() if r.get("type") == "POLICY_CHANGE"]


@pytest.fixture
def service(daemon_env: Daemon) -> Iterator[Service]:
    d = daemon_env
    base = d.base
    shared = Path(f"/run/imaguard-test-{secrets.token_hex(6)}")
    shared.mkdir(mode=0o755)
    try:
        shared.chmod(0o755)
        d.sock = shared / "c.sock"
        owners = base / "owners.d"
        owners.mkdir()
        a_ring = base / "alpha-keys"
        a_ring.mkdir()
        imaguard.generate_key("ecdsa-p256").write(base / "policy-key")
        shutil.copy(base / "policy-key" / "cert.der", a_ring / "cert.der")
        imaguard.generate_key("ecdsa-p256").write(base / "other-key")
        (owners / "alpha.toml").write_text(
            f'name = "{OWNER_A}"\nuids = [{UID_A}]\nkeyring = "{a_ring}"\n'
        )
        (owners / "beta.toml").write_text(f'name = "{OWNER_B}"\nuids = [{UID_B}]\n')
        (base / "exec-measure.policy").write_text(MEASURE_ONLY)
        d.config.write_text(
            CONFIG.format(
                mnt=d.mnt,
                state=d.state,
                sock=d.sock,
                ring=base / "ring",
                owners=owners,
                policy=base / "exec-measure.policy",
            )
        )
        yield Service(
            d,
            shared,
            owners,
            a_ring,
            imaguard.load_private_key(base / "policy-key" / "private.pem"),
            imaguard.load_private_key(base / "other-key" / "private.pem"),
        )
    finally:
        _stop(d)
        shutil.rmtree(shared, ignore_errors=True)


def _stop(d: Daemon) -> None:
    """One SIGTERM to the supervisor (see Service.restart); then Daemon.stop for what is left."""
    if d.proc is not None and d.proc.poll() is None:
        with contextlib.suppress(AssertionError, OSError, subprocess.TimeoutExpired):
            os.kill(d.status()["pid"], signal.SIGTERM)
            if d.proc.wait(timeout=20) == 0:
                d.pids.clear()  # an orderly stop: the supervisor reaped its worker
    d.stop()


# -- 1. two owners ----------------------------------------------------------------------------
def test_two_owners_neither_can_touch_the_others_policy(service: Service) -> None:
    s = service
    s.start()
    assert s.ctl_json(UID_A, "whoami")["owners"] == [OWNER_A]
    assert s.ctl_json(UID_B, "whoami")["owners"] == [OWNER_B]
    # the config policy only measures: nothing is denied yet
    assert run(s.d.mnt / "evil") == 0
    assert run(s.d.mnt / "good") == 0

    a_file = s.file("a.policy", A_RULES)
    loaded = s.ctl_json(UID_A, "load", "alpha-exec", str(a_file))
    assert (loaded["name"], loaded["owner"], loaded["lock"], loaded["version"]) == (
        "alpha-exec",
        OWNER_A,
        "open",
        1,
    )
    assert loaded["origin"] == "socket"
    assert run(s.d.mnt / "evil") == 126  # A's policy denies it now
    assert run(s.d.mnt / "good") == 0

    b_file = s.file("b.policy", B_RULES)
    b_versioned = s.file("b2.policy", B_RULES)
    for args in (
        ("replace", "alpha-exec", str(b_file)),
        ("replace", "alpha-exec", str(b_versioned), "--version", "9"),
        ("append", "alpha-exec", str(b_file)),
        ("remove", "alpha-exec"),
        ("seal", "alpha-exec"),
    ):
        r = s.ctl(UID_B, *args)
        assert refused(r, "permission-denied"), (args, r)
        assert f"uid {UID_B} " in r.stderr
        assert f"may not act for owner '{OWNER_A}'" in r.stderr
    # A's policy is as A left it
    shown = s.ctl_json(UID_A, "show", "alpha-exec")
    assert (shown["owner"], shown["lock"], shown["version"], shown["rules"]) == (
        OWNER_A,
        "open",
        1,
        1,
    )
    assert shown["digest"] == loaded["digest"]
    assert shown["text"].startswith("appraise func=BPRM_CHECK ")

    # B's own policy says dont_appraise on the tmpfs: that does not cancel A's appraise
    b_loaded = s.ctl_json(UID_B, "load", "beta-skip", str(b_file))
    assert (b_loaded["owner"], b_loaded["lock"], b_loaded["version"]) == (OWNER_B, "open", 1)
    assert [p["name"] for p in s.ctl_json(UID_B, "policies")["policies"]] == [
        "exec-measure",
        "alpha-exec",
        "beta-skip",
    ]
    assert run(s.d.mnt / "evil") == 126
    assert run(s.d.mnt / "good") == 0

    refusals = [r for r in s.policy_changes() if r["result"] == "refused"]
    assert [(r["op"], r["error"], r["peer"]["uid"], r["owner"]) for r in refusals] == [
        # the owner of the policy the refused request touched
        ("replace", "permission-denied", UID_B, OWNER_A),
        ("replace", "permission-denied", UID_B, OWNER_A),
        ("append", "permission-denied", UID_B, OWNER_A),
        ("remove", "permission-denied", UID_B, OWNER_A),
        ("seal", "permission-denied", UID_B, OWNER_A),
    ]


# -- 2. root is nobody's owner ----------------------------------------------------------------
def test_root_without_an_owner_entry_is_refused(service: Service) -> None:
    s = service
    s.start()
    a_file = s.file("a.policy", A_RULES)
    assert s.ctl(UID_A, "load", "alpha-exec", str(a_file)).returncode == 0
    sock = str(s.sock)
    whoami = json.loads(cli("ctl", "--socket", sock, "--json", "whoami", check=True).stdout)
    assert (whoami["uid"], whoami["owners"]) == (0, [])
    for args in (
        ("replace", "alpha-exec", str(a_file), "--version", "5"),
        ("append", "alpha-exec", str(a_file)),
        ("remove", "alpha-exec"),
        ("seal", "alpha-exec"),
        ("load", "root-policy", str(a_file)),
    ):
        r = cli("ctl", "--socket", sock, *args)
        assert refused(r, "permission-denied"), (args, r)
        assert "uid 0 " in r.stderr
    assert s.ctl_json(UID_A, "show", "alpha-exec")["version"] == 1
    names = [p["name"] for p in s.ctl_json(0, "policies")["policies"]]
    assert names == ["exec-measure", "alpha-exec"]


# -- 3. a seal survives a restart -------------------------------------------------------------
def test_sealed_policy_survives_restart_and_refuses_replacement(service: Service) -> None:
    s = service
    s.start()
    a_file = s.file("a.policy", A_RULES)
    assert s.ctl(UID_A, "load", "alpha-exec", str(a_file)).returncode == 0
    sealed = s.ctl_json(UID_A, "seal", "alpha-exec")
    assert (sealed["lock"], sealed["version"]) == ("sealed", 1)
    assert refused(s.ctl(UID_A, "replace", "alpha-exec", str(a_file), "--version", "2"), "locked")

    s.restart()
    listed = {p["name"]: p for p in s.ctl_json(UID_B, "policies")["policies"]}
    entry = listed["alpha-exec"]
    assert (entry["owner"], entry["lock"], entry["version"], entry["origin"]) == (
        OWNER_A,
        "sealed",
        1,
        "socket",
    )
    text = s.ctl(0, "policies")
    assert text.returncode == 0
    line = next(x for x in text.stdout.splitlines() if x.startswith("alpha-exec "))
    assert "lock=sealed" in line.split()
    r = s.ctl(UID_A, "replace", "alpha-exec", str(s.file("b.policy", B_RULES)), "--version", "2")
    assert refused(r, "locked"), r
    assert refused(s.ctl(UID_A, "remove", "alpha-exec"), "locked")
    assert refused(s.ctl(UID_A, "seal", "alpha-exec"), "locked")
    assert run(s.d.mnt / "evil") == 126  # the sealed policy is back in force
    assert run(s.d.mnt / "good") == 0


# -- 4. versions never go back ----------------------------------------------------------------
def test_rollback_refused_after_restart_and_after_remove(service: Service) -> None:
    s = service
    s.start()
    a_file = s.file("a.policy", A_RULES)
    assert s.ctl_json(UID_A, "load", "alpha-exec", str(a_file), "--version", "3")["version"] == 3
    s.restart()
    assert s.ctl_json(UID_A, "show", "alpha-exec")["version"] == 3
    assert refused(s.ctl(UID_A, "replace", "alpha-exec", str(a_file), "--version", "2"), "rollback")
    assert refused(s.ctl(UID_A, "replace", "alpha-exec", str(a_file), "--version", "3"), "rollback")
    assert s.ctl_json(UID_A, "remove", "alpha-exec") == {"name": "alpha-exec", "removed": True}
    assert run(s.d.mnt / "evil") == 0  # removed: nothing denies it any more
    assert refused(s.ctl(UID_A, "load", "alpha-exec", str(a_file), "--version", "3"), "rollback")
    s.restart()  # the name's last version is persisted with it gone
    assert refused(s.ctl(UID_A, "load", "alpha-exec", str(a_file), "--version", "3"), "rollback")
    assert refused(s.ctl(UID_A, "load", "alpha-exec", str(a_file)), "rollback")  # default 1
    assert s.ctl_json(UID_A, "load", "alpha-exec", str(a_file), "--version", "4")["version"] == 4
    assert run(s.d.mnt / "evil") == 126
    rollbacks = [r for r in s.policy_changes() if r.get("error") == "rollback"]
    assert [(r["op"], r["owner"], r["peer"]["uid"]) for r in rollbacks] == [
        ("replace", OWNER_A, UID_A),
        ("replace", OWNER_A, UID_A),
        ("load", OWNER_A, UID_A),
        ("load", OWNER_A, UID_A),
        ("load", OWNER_A, UID_A),
    ]


# -- 5. signed-only ---------------------------------------------------------------------------
NOT_VERIFIED = "the signature does not verify against the keyring of owner 'alpha'"


def test_signed_only_bad_signature_refused_and_audited(service: Service) -> None:
    s = service
    s.start()
    v1, v1_sig = s.signed("signed-v1.policy", "#@ version 1\n" + A_RULES, s.policy_key)
    loaded = s.ctl_json(
        UID_A, "load", "alpha-signed", str(v1), "--lock", "signed-only", "--signature", str(v1_sig)
    )
    assert (loaded["owner"], loaded["lock"], loaded["version"]) == (OWNER_A, "signed-only", 1)
    assert run(s.d.mnt / "evil") == 126

    # v2 signed by a key that is in no keyring of alpha's
    foreign, foreign_sig = s.signed("foreign-v2.policy", "#@ version 2\n" + B_RULES, s.other_key)
    r = s.ctl(UID_A, "replace", "alpha-signed", str(foreign), "--signature", str(foreign_sig))
    assert refused(r, "bad-signature"), r
    assert NOT_VERIFIED in r.stderr
    # v2 signed by alpha's key, then changed after signing (the xattr stays on the inode)
    tampered, _ = s.signed("tampered-v2.policy", "#@ version 2\n" + A_RULES, s.policy_key)
    tampered.write_text("#@ version 2\n" + B_RULES)
    tampered_sig = s.shared / "tampered-v2.ima"
    tampered_sig.write_bytes(os.getxattr(tampered, "security.ima"))
    tampered_sig.chmod(0o644)
    r = s.ctl(UID_A, "replace", "alpha-signed", str(tampered), "--signature", str(tampered_sig))
    assert refused(r, "bad-signature"), r
    assert NOT_VERIFIED in r.stderr
    # v1's good signature sent with other bytes
    plain = s.file("plain-v2.policy", "#@ version 2\n" + B_RULES)
    r = s.ctl(UID_A, "replace", "alpha-signed", str(plain), "--signature", str(v1_sig))
    assert refused(r, "bad-signature"), r
    assert NOT_VERIFIED in r.stderr
    # no signature at all
    r = s.ctl(UID_A, "replace", "alpha-signed", str(plain))
    assert refused(r, "bad-signature"), r
    assert "the policy is signed-only" in r.stderr

    shown = s.ctl_json(UID_A, "show", "alpha-signed")
    assert (shown["lock"], shown["version"], shown["digest"]) == (
        "signed-only",
        1,
        loaded["digest"],
    )
    assert run(s.d.mnt / "evil") == 126

    refusals = [r for r in s.policy_changes() if r["result"] == "refused"]
    assert [
        (r["op"], r["policy"], r["error"], r["owner"], r["peer"]["uid"], r["peer"]["gid"])
        for r in refusals
    ] == [("replace", "alpha-signed", "bad-signature", OWNER_A, UID_A, UID_A)] * 4
    assert [r["source"] for r in refusals] == [str(foreign), str(tampered), str(plain), str(plain)]
    assert all(NOT_VERIFIED in r["message"] for r in refusals[:3])

    # a v2 signed by alpha's key is accepted, and holds across a restart
    v2_text = "#@ version 2\n" + A_RULES + MEASURE_ONLY
    v2, v2_sig = s.signed("signed-v2.policy", v2_text, s.policy_key)
    replaced = s.ctl_json(UID_A, "replace", "alpha-signed", str(v2), "--signature", str(v2_sig))
    assert (replaced["lock"], replaced["version"], replaced["rules"]) == ("signed-only", 2, 2)
    accepted = [r for r in s.policy_changes() if r["result"] == "accepted"]
    assert [(r["op"], r["version"], r["lock"], r["digest"]) for r in accepted] == [
        ("load", 1, "signed-only", "sha256:" + _sha256(v1.read_bytes())),
        ("replace", 2, "signed-only", "sha256:" + _sha256(v2_text.encode())),
    ]
    s.restart()
    entry = s.ctl_json(UID_A, "show", "alpha-signed")
    assert (entry["lock"], entry["version"], entry["rules"]) == ("signed-only", 2, 2)
    assert run(s.d.mnt / "evil") == 126

    # a signed-only load signed by a foreign key is refused as well
    other, other_sig = s.signed("other-v1.policy", "#@ version 1\n" + A_RULES, s.other_key)
    r = s.ctl(
        UID_A,
        "load",
        "alpha-other",
        str(other),
        "--lock",
        "signed-only",
        "--signature",
        str(other_sig),
    )
    assert refused(r, "bad-signature"), r
    assert NOT_VERIFIED in r.stderr
    # alpha's key does not make beta's load good: beta has no policy keyring at all
    b_signed, b_sig = s.signed("beta-v1.policy", "#@ version 1\n" + A_RULES, s.policy_key)
    r = s.ctl(
        UID_B,
        "load",
        "beta-signed",
        str(b_signed),
        "--lock",
        "signed-only",
        "--signature",
        str(b_sig),
    )
    assert refused(r, "bad-signature"), r
    assert f"owner '{OWNER_B}' has no policy keyring" in r.stderr
    last = s.policy_changes()[-2:]
    assert [(r["policy"], r["error"], r["owner"], r["peer"]["uid"]) for r in last] == [
        ("alpha-other", "bad-signature", OWNER_A, UID_A),
        ("beta-signed", "bad-signature", OWNER_B, UID_B),
    ]
    names = [p["name"] for p in s.ctl_json(UID_A, "policies")["policies"]]
    assert names == ["exec-measure", "alpha-signed"]


def test_signed_only_load_sends_the_files_security_ima_by_itself(service: Service) -> None:
    s = service
    s.start()
    v1, _ = s.signed("signed-v1.policy", "#@ version 1\n" + A_RULES, s.policy_key)
    r = s.ctl(UID_A, "load", "alpha-signed", str(v1), "--lock", "signed-only")
    assert r.returncode == 0, r


# -- 6. measured ------------------------------------------------------------------------------
def test_policy_change_is_measured_and_the_log_verifies(service: Service) -> None:
    s = service
    s.start()
    raw = f"# alpha's exec policy\n{A_RULES}  \n"  # comments and spaces: the bytes count
    a_file = s.file("a.policy", raw)
    assert s.ctl(UID_A, "load", "alpha-exec", str(a_file)).returncode == 0
    b_raw = "#@ version 7\n" + A_RULES + MEASURE_ONLY
    b_file = s.file("a2.policy", b_raw)
    assert s.ctl(UID_A, "replace", "alpha-exec", str(b_file)).returncode == 0
    assert run(s.d.mnt / "good") == 0  # the config policy measures it: an entry between
    seal = s.ctl_json(UID_A, "seal", "alpha-exec")
    log_dir = str(s.d.state / "log")
    shown = cli("log", "show", "--state", log_dir, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    entries = json.loads(shown.stdout)
    assert [e["fields"]["n-ng"] for e in entries] == [
        "boot_aggregate",
        "imaguard:policy:alpha-exec:load",
        "imaguard:policy:alpha-exec:replace",
        str(s.d.mnt / "good"),
        "imaguard:policy:alpha-exec:seal",
    ]
    policy_entries = [e for e in entries if e["fields"]["n-ng"].startswith("imaguard:policy:")]
    assert [(e["pcr"], e["template"], e["fields"]["d-ng"]) for e in policy_entries] == [
        (10, "ima-ng", "sha256:" + _sha256(raw.encode())),
        (10, "ima-ng", "sha256:" + _sha256(b_raw.encode())),
        (10, "ima-ng", seal["digest"]),  # the sealed rules, as `show` has them
    ]
    for e in policy_entries:  # each template digest recomputed here from its fields
        assert e["digest"] == _ima_ng_sha1(e["fields"]["d-ng"], e["fields"]["n-ng"])
    ascii_log = cli("log", "show", "--state", log_dir)
    assert ascii_log.returncode == 0, ascii_log.stderr
    load_line = next(
        x.split() for x in ascii_log.stdout.splitlines() if x.endswith(":alpha-exec:load")
    )
    assert load_line == [
        "10",
        policy_entries[0]["digest"],
        "ima-ng",
        "sha256:" + _sha256(raw.encode()),
        "imaguard:policy:alpha-exec:load",
    ]
    # the accepted changes' audit records carry the same digests
    accepted = [r for r in s.policy_changes() if r["result"] == "accepted"]
    assert [(r["op"], r["digest"], r["peer"]["uid"]) for r in accepted] == [
        ("load", policy_entries[0]["fields"]["d-ng"], UID_A),
        ("replace", policy_entries[1]["fields"]["d-ng"], UID_A),
        ("seal", policy_entries[2]["fields"]["d-ng"], UID_A),
    ]
    verified = cli("log", "verify", "--state", log_dir)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "5 entries: valid" in verified.stderr
    as_json = cli("log", "verify", "--state", log_dir, "--json")
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert (doc["valid"], doc["entries"], doc["findings"]) == (True, 5, [])


def _ima_ng_sha1(d_ng: str, n_ng: str) -> str:
    """The ima-ng template digest (sha1 bank): each field as a 4-byte LE length + data."""
    algo, hexdigest = d_ng.split(":")
    fields = [algo.encode() + b":\0" + bytes.fromhex(hexdigest), n_ng.encode() + b"\0"]
    data = b"".join(struct.pack("<I", len(f)) + f for f in fields)
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- 7. appraise through a passed descriptor --------------------------------------------------
def test_fd_passing_appraise_equals_the_library(service: Service) -> None:
    s = service
    mnt = s.d.mnt
    shutil.copy("/bin/true", mnt / "tampered")
    imaguard.sign_file(
        mnt / "tampered", imaguard.load_private_key(s.d.base / "keys" / "private.pem"), "sha256"
    )
    with open(mnt / "tampered", "ab") as f:
        f.write(b"\0changed after signing")
    shutil.copy("/bin/true", mnt / "stranger")
    imaguard.sign_file(mnt / "stranger", s.other_key, "sha256")
    s.start()
    ring = imaguard.Keyring.load(s.d.base / "ring")
    want = {
        "good": "pass",
        "tampered": "fail",
        "stranger": "unknown-key",
        "evil": "no-xattr",
    }
    digests: dict[str, str | None] = {}
    with imaguard.Client(s.sock) as client:
        for name, status in want.items():
            fd = os.open(mnt / name, os.O_RDONLY)
            try:
                daemon = client.appraise(fd).to_dict()
                library = imaguard.appraise(fd, ring).to_dict()
            finally:
                os.close(fd)
            assert daemon["path"] == str(mnt / name)
            del daemon["path"], library["path"]
            assert daemon == library, name
            assert daemon["status"] == status, (name, daemon)
            digests[name] = daemon["digest"]
    # what was hashed is the file as it is now (for the tampered one: not what was signed)
    assert digests["good"] == _sha256((mnt / "good").read_bytes())
    assert digests["tampered"] == _sha256((mnt / "tampered").read_bytes())
    # (b) from uid 1001, holding a descriptor of a file that uid can read
    shared_good = s.shared / "good-copy"
    shutil.copy("/bin/true", shared_good)
    shared_good.chmod(0o644)
    imaguard.sign_file(
        shared_good, imaguard.load_private_key(s.d.base / "keys" / "private.pem"), "sha256"
    )
    library = imaguard.appraise(shared_good, ring).to_dict()

    def appraise_as_a() -> int:
        fd = os.open(shared_good, os.O_RDONLY)
        with imaguard.Client(s.sock) as c:
            # the path given names the unsigned file: the descriptor is what is judged
            d = c.request("appraise", fd, path=str(mnt / "evil"), require="signature")
        print(json.dumps(d))
        return 0

    r = as_uid(UID_A, appraise_as_a)
    assert r.returncode == 0, r
    daemon = json.loads(r.stdout)
    assert daemon["path"] == str(mnt / "evil")
    del daemon["path"], library["path"]
    assert daemon == library
    assert daemon["status"] == "pass"


# -- 8. hostile clients -----------------------------------------------------------------------
def _frame(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def _read_frame(conn: socket.socket) -> dict[str, Any]:
    header = _recv_exact(conn, 4)
    (n,) = struct.unpack(">I", header)
    doc: dict[str, Any] = json.loads(_recv_exact(conn, n))
    return doc


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = conn.recv(n - len(data))
        if not more:
            raise AssertionError(f"closed after {len(data)} of {n} bytes")
        data += more
    return data


def _connect(path: Path, timeout: float = 10.0) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    conn.connect(str(path))
    return conn


def _closed(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


def test_hostile_clients_are_cut_off_and_others_still_served(service: Service) -> None:
    s = service
    s.start()
    # a 1 GiB length: bad-frame at once, the body never read, the connection closed
    with _connect(s.sock) as huge:
        t0 = time.monotonic()
        huge.sendall(struct.pack(">I", 1 << 30))
        answer = _read_frame(huge)
        assert time.monotonic() - t0 < 1.0
        assert answer["ok"] is False
        assert answer["error"]["code"] == "bad-frame"
        assert "1073741824" in answer["error"]["message"]
        assert _closed(huge)
    # a valid length, a body that is not JSON (ASCII, then not even UTF-8)
    for body in (b"garbage, not json", b"\xff\xfe\x00garbage"):
        with _connect(s.sock) as garbage:
            garbage.sendall(struct.pack(">I", len(body)) + body)
            answer = _read_frame(garbage)
            assert (answer["ok"], answer["error"]["code"]) == (False, "bad-frame")
            assert "not UTF-8 JSON" in answer["error"]["message"]
            assert _closed(garbage)
    # JSON, but not an object
    with _connect(s.sock) as array:
        array.sendall(struct.pack(">I", 2) + b"[]")
        assert _read_frame(array)["error"]["code"] == "bad-frame"
        assert _closed(array)
    # the same connection after a good request: still served (a good one is not cut)
    with _connect(s.sock) as good:
        good.sendall(_frame({"v": 1, "op": "status", "id": 1}))
        first = _read_frame(good)
        assert (first["ok"], first["id"]) == (True, 1)
        good.sendall(_frame({"v": 2, "op": "status", "id": 2}))
        second = _read_frame(good)
        assert (second["error"]["code"], second["versions"]) == ("bad-version", [1])

    # half a frame, then nothing: cut off with `timeout` about 5 s after its first byte
    stalled = [_connect(s.sock, timeout=15.0) for _ in range(3)]
    try:
        whole = _frame({"v": 1, "op": "status"})
        started = time.monotonic()
        for conn in stalled:
            conn.sendall(whole[: len(whole) // 2])
        # meanwhile a normal client is served promptly, more than once
        for _ in range(3):
            t0 = time.monotonic()
            with imaguard.Client(s.sock, timeout=5.0) as client:
                assert client.status()["ready"] is True
            assert time.monotonic() - t0 < 1.0
            time.sleep(0.5)
        for conn in stalled:
            answer = _read_frame(conn)
            assert (answer["ok"], answer["error"]["code"]) == (False, "timeout")
            assert _closed(conn)
        waited = time.monotonic() - started
        assert 4.5 <= waited < 8.0, waited
    finally:
        for conn in stalled:
            conn.close()
    with imaguard.Client(s.sock, timeout=5.0) as client:
        assert client.status()["ready"] is True


# -- 9. decisions by owner --------------------------------------------------------------------
def test_decisions_by_owner(service: Service) -> None:
    s = service
    s.start()
    a_file = s.file("a.policy", A_RULES)
    assert s.ctl(UID_A, "load", "alpha-exec", str(a_file)).returncode == 0
    assert run(s.d.mnt / "evil") == 126
    assert run(s.d.mnt / "good") == 0
    evil = str(s.d.mnt / "evil")
    good = str(s.d.mnt / "good")
    decisions: list[dict[str, Any]] = []
    for _ in range(50):  # recorded after the kernel has its answer
        r = s.ctl(UID_A, "--json", "decisions", "--owner", OWNER_A)
        assert r.returncode == 0, r
        decisions = [json.loads(line) for line in r.stdout.splitlines()]
        paths = {d["path"] for d in decisions}
        if evil in paths and good in paths:
            break
        time.sleep(0.1)
    denied = [d for d in decisions if d["path"] == evil]
    assert denied, decisions
    assert denied[0]["allowed"] is False
    assert OWNER_A in denied[0]["owners"]
    assert denied[0]["hook"] == "BPRM_CHECK"
    assert denied[0]["cause"] == "IMA-signature-required"
    assert any(
        p["policy"] == "alpha-exec" and p["owner"] == OWNER_A for p in denied[0]["provenance"]
    )
    allowed = [d for d in decisions if d["path"] == good]
    assert allowed
    assert allowed[0]["allowed"] is True
    assert all(OWNER_A in d["owners"] for d in decisions)

    r = s.ctl(UID_B, "decisions", "--owner", OWNER_A)
    assert refused(r, "permission-denied"), r
    r = s.ctl(UID_B, "--json", "decisions")
    assert r.returncode == 0, r
    assert r.stdout == ""  # beta's rules took part in nothing
    root = cli("ctl", "--socket", str(s.sock), "decisions", "--owner", OWNER_A)
    assert refused(root, "permission-denied"), root
