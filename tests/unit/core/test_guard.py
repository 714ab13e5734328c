"""The Guard: construction, process(), appraise_type/algos, keyrings, modes, actions, odd
targets, EVM."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import imaguard
from helpers import needs_root_because
from helpers.core import (
    CONTENT,
    EVIL,
    EVM,
    IMA,
    TIMEOUT,
    edit_in_place_keep_mtime,
    run_sub,
    write_policy,
    xattr,
)
from imaguard.appraise._evm import sign_file_evm
from imaguard.core import Decision, Guard, MemoryAudit
from imaguard.core._guard import EvmConfig
from imaguard.policy import PolicySet, parse_policy

ACTIONS = ("measure", "appraise", "audit", "hash")
EXEC_SIG = "appraise func=BPRM_CHECK appraise_type=imasig\n"
EXEC_ANY = "appraise func=BPRM_CHECK\n"


def sha256_value(content: bytes) -> bytes:
    """The 0x04 (digest-ng) security.ima value for sha256, built independently."""
    return b"\x04\x04" + hashlib.sha256(content).digest()


def pset(*policies: tuple[str, str], mode: str = "kernel", enabled: bool = True) -> PolicySet:
    s = PolicySet(appraise_enabled=enabled)
    for name, text in policies:
        s.add(name, parse_policy(text, mode=mode, source=name))  # type: ignore[arg-type]
    return s


def guard_for(
    tmp_path: Path, text: str, rsa_dir: Path, *, name: str = "p", **kwargs: object
) -> Guard:
    pol = write_policy(tmp_path, name, text)
    return Guard.from_files({name: pol}, [rsa_dir / "cert.der"], **kwargs)  # type: ignore[arg-type]


# -- Guard.from_files -----------------------------------------------------------------------


def test_from_files_contract_names_paths_keyring_files_and_dirs_state_and_modes(
    tmp_path: Path,
    make_file: Callable[..., Path],
    rsa_key: imaguard.PrivateKey,
    ec_key: imaguard.PrivateKey,
    rsa_dir: Path,
    ec_dir: Path,
) -> None:
    exec_pol = write_policy(tmp_path, "exec", EXEC_SIG)
    meas_pol = write_policy(tmp_path, "attest", "measure func=BPRM_CHECK\n")
    state = tmp_path / "state"
    rsa_prog, ec_prog = make_file("a"), make_file("b")
    imaguard.sign_file(rsa_prog, rsa_key)
    imaguard.sign_file(ec_prog, ec_key)
    guard = Guard.from_files(
        policies={"exec-guard": str(exec_pol), "attestation": meas_pol},
        keyrings=[rsa_dir / "cert.der", str(ec_dir)],  # a cert file and a directory
        state=state,
        mode="enforce",
        policy_mode="kernel",
    )
    with guard:
        assert sorted(guard.policies.names()) == ["attestation", "exec-guard"]
        for prog in (rsa_prog, ec_prog):
            d = guard.process(prog, hook="BPRM_CHECK", mask="MAY_EXEC")
            assert d.allowed is True
            assert d.actions["appraise"].policy == "exec-guard"
            assert d.actions["measure"].policy == "attestation"
            assert d.actions["measure"].outcome == "passed"
        assert guard.mode == "enforce"
    assert (state / "cache.json").is_file()
    assert (state / "log").is_dir()


def test_from_files_without_state_leaves_no_files_behind(
    tmp_path: Path, signed: Path, rsa_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    pol = write_policy(tmp_path, "m", "measure func=BPRM_CHECK\n" + EXEC_SIG)
    with Guard.from_files({"m": pol}, [rsa_dir / "cert.der"], state=None) as guard:
        d = guard.process(signed, hook="BPRM_CHECK")
        assert d.actions["measure"].outcome == "passed"
        assert d.allowed is True
    assert list(work.iterdir()) == []


def test_from_files_policy_mode_imaguard_is_needed_for_application_hooks(
    tmp_path: Path, rsa_dir: Path
) -> None:
    pol = write_policy(tmp_path, "plugins", "appraise func=PLUGIN_CHECK appraise_type=imasig\n")
    with pytest.raises(imaguard.PolicyError):
        Guard.from_files({"plugins": pol}, [rsa_dir / "cert.der"], policy_mode="kernel")
    Guard.from_files({"plugins": pol}, [rsa_dir / "cert.der"], policy_mode="imaguard").close()


def test_from_files_errors_are_imaguard_errors(tmp_path: Path, rsa_dir: Path) -> None:
    good = write_policy(tmp_path, "ok", EXEC_SIG)
    with pytest.raises(imaguard.UsageError):
        Guard.from_files({"x": tmp_path / "missing.policy"}, [rsa_dir / "cert.der"])
    with pytest.raises(imaguard.PolicyError):
        Guard.from_files({"x": write_policy(tmp_path, "bad", "appraise bogus=1\n")}, [])
    empty = tmp_path / "no-certs"
    empty.mkdir()
    with pytest.raises(imaguard.KeyLoadError):
        Guard.from_files({"ok": good}, [empty])
    with pytest.raises(imaguard.UsageError):
        Guard.from_files({"ok": good}, [rsa_dir / "cert.der"], mode="paranoid")  # type: ignore[arg-type]


# -- process(): targets, masks, subjects ------------------------------------------------------


def test_process_accepts_str_path_pathlike_and_fd(
    tmp_path: Path, signed: Path, rsa_dir: Path
) -> None:
    with guard_for(tmp_path, EXEC_SIG, rsa_dir, use_cache=False) as guard:
        by_str = guard.process(str(signed), hook="BPRM_CHECK", mask="MAY_EXEC")
        by_path = guard.process(signed, hook="BPRM_CHECK", mask="MAY_EXEC")
        fd = os.open(signed, os.O_RDONLY)
        try:
            by_fd = guard.process(fd, hook="BPRM_CHECK", mask="MAY_EXEC")
            os.fstat(fd)  # the Guard does not close a descriptor it was given
        finally:
            os.close(fd)
    for d in (by_str, by_path, by_fd):
        assert isinstance(d, Decision)
        assert d.allowed is True
        assert d.actions["appraise"].outcome == "passed"
    assert by_str.path == str(signed)
    assert by_fd.hook == "BPRM_CHECK"


def test_decision_has_no_truth_value(tmp_path: Path, signed: Path, rsa_dir: Path) -> None:
    with guard_for(tmp_path, EXEC_SIG, rsa_dir) as guard:
        d = guard.process(signed, hook="BPRM_CHECK")
    with pytest.raises(TypeError):
        bool(d)


@pytest.mark.parametrize(
    ("rule", "mask", "required"),
    [
        ("appraise func=FILE_CHECK mask=MAY_READ", "MAY_READ", True),
        ("appraise func=FILE_CHECK mask=MAY_READ", "MAY_READ|MAY_WRITE", False),
        ("appraise func=FILE_CHECK mask=^MAY_READ", "MAY_READ|MAY_WRITE", True),
        ("appraise func=FILE_CHECK mask=MAY_EXEC", "MAY_READ", False),
        ("appraise func=BPRM_CHECK mask=MAY_EXEC", "MAY_EXEC", True),
    ],
)
def test_process_mask_strings_match_as_the_kernel(
    tmp_path: Path,
    make_file: Callable[..., Path],
    rsa_dir: Path,
    rule: str,
    mask: str,
    required: bool,
) -> None:
    hook = "BPRM_CHECK" if "BPRM" in rule else "FILE_CHECK"
    with guard_for(tmp_path, rule + "\n", rsa_dir) as guard:
        d = guard.process(make_file(), hook=hook, mask=mask)
    assert d.actions["appraise"].required is required
    assert d.allowed is (not required)  # the file is unsigned


def test_process_subject_uid_decides_a_uid_rule(
    tmp_path: Path, make_file: Callable[..., Path], rsa_dir: Path
) -> None:
    with guard_for(tmp_path, "appraise func=BPRM_CHECK uid=1234\n", rsa_dir) as guard:
        prog = make_file()
        as_1234 = guard.process(prog, hook="BPRM_CHECK", subject=imaguard.Subject(uid=1234))
        as_99 = guard.process(prog, hook="BPRM_CHECK", subject=imaguard.Subject(uid=99))
        as_me = guard.process(prog, hook="BPRM_CHECK")  # root: uid 0
    assert as_1234.actions["appraise"].required is True
    assert as_1234.allowed is False
    assert as_99.actions["appraise"].required is False
    assert as_me.actions["appraise"].required is False


# -- appraise_type, appraise_algos, keyrings -----------------------------------------------


def test_digest_passes_without_imasig_and_fails_with_imasig(
    tmp_path: Path, make_file: Callable[..., Path], rsa_dir: Path
) -> None:
    prog = make_file()
    imaguard.store_digest(prog, "sha256")
    assert xattr(prog) == sha256_value(CONTENT)
    with guard_for(tmp_path, EXEC_ANY, rsa_dir, name="any") as guard:
        d = guard.process(prog, hook="BPRM_CHECK")
    assert d.actions["appraise"].outcome == "passed"
    assert d.allowed is True
    with guard_for(tmp_path, EXEC_SIG, rsa_dir, name="sig") as guard:
        d = guard.process(prog, hook="BPRM_CHECK")
    assert d.actions["appraise"].outcome == "failed"
    assert d.actions["appraise"].cause == "IMA-signature-required"
    assert d.allowed is False


def test_digest_that_does_not_match_is_invalid_hash(
    tmp_path: Path, make_file: Callable[..., Path], rsa_dir: Path
) -> None:
    prog = make_file()
    os.setxattr(prog, IMA, sha256_value(b"something else"))
    with guard_for(tmp_path, EXEC_ANY, rsa_dir) as guard:
        d = guard.process(prog, hook="BPRM_CHECK")
    assert (d.allowed, d.actions["appraise"].cause) == (False, "invalid-hash")


def test_appraise_algos_refuses_a_signature_made_with_another_algorithm(
    tmp_path: Path,
    make_file: Callable[..., Path],
    rsa_key: imaguard.PrivateKey,
    rsa_dir: Path,
) -> None:
    sha256_prog, sha512_prog = make_file("a"), make_file("b")
    imaguard.sign_file(sha256_prog, rsa_key, "sha256")
    imaguard.sign_file(sha512_prog, rsa_key, "sha512")
    text = "appraise func=BPRM_CHECK appraise_type=imasig appraise_algos=sha512\n"
    with guard_for(tmp_path, text, rsa_dir) as guard:
        denied = guard.process(sha256_prog, hook="BPRM_CHECK")
        allowed = guard.process(sha512_prog, hook="BPRM_CHECK")
    assert denied.allowed is False
    assert denied.actions["appraise"].cause == "denied-hash-algorithm"
    assert allowed.allowed is True
    assert allowed.verdict is not None
    assert allowed.verdict.algorithm == "sha512"


def test_revoked_key_and_blacklisted_digest_are_refused(
    signed: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    policies = pset(("exec", EXEC_SIG))
    with Guard(policies, rsa_ring) as guard:
        assert guard.process(signed, hook="BPRM_CHECK").allowed is True
    with Guard(pset(("exec", EXEC_SIG)), rsa_ring.revoke(rsa_key.key_id)) as guard:
        revoked = guard.process(signed, hook="BPRM_CHECK")
    assert revoked.allowed is False
    assert revoked.actions["appraise"].cause == "invalid-signature"
    digest = hashlib.sha256(CONTENT).digest()
    with Guard(pset(("exec", EXEC_SIG)), rsa_ring.blacklist(digest)) as guard:
        black = guard.process(signed, hook="BPRM_CHECK")
    assert black.allowed is False
    assert black.actions["appraise"].cause == "blacklisted-hash"


def test_signature_by_a_key_not_in_the_keyring_is_refused(
    tmp_path: Path, make_file: Callable[..., Path], ec_key: imaguard.PrivateKey, rsa_dir: Path
) -> None:
    prog = make_file()
    imaguard.sign_file(prog, ec_key)
    with guard_for(tmp_path, EXEC_SIG, rsa_dir) as guard:
        d = guard.process(prog, hook="BPRM_CHECK")
    assert d.allowed is False
    assert d.actions["appraise"].cause == "invalid-signature"
    assert d.verdict is not None
    assert d.verdict.key_id == ec_key.key_id


@pytest.mark.parametrize("mode", ["enforce", "log"])
def test_two_policies_with_disjoint_appraise_algos_conflict_and_fail_closed(
    signed: Path, rsa_ring: imaguard.Keyring, mode: str
) -> None:
    policies = pset(
        ("A", "appraise func=BPRM_CHECK appraise_type=imasig appraise_algos=sha256\n"),
        ("B", "appraise func=BPRM_CHECK appraise_algos=sha512\n"),
    )
    with Guard(policies, rsa_ring, mode=mode) as guard:  # type: ignore[arg-type]
        d = guard.process(signed, hook="BPRM_CHECK")
    assert d.conflict is not None
    assert d.actions["appraise"].required is True
    assert d.actions["appraise"].outcome == "failed"
    assert d.actions["appraise"].cause == "policy-conflict"
    assert d.allowed is (mode != "enforce")
    named = {(p.policy, p.action) for p in d.provenance}
    assert {("A", "appraise"), ("B", "appraise")} <= named


# -- modes -----------------------------------------------------------------------------------


def test_mode_enforce_denies_and_log_allows_but_reports_failed(
    tmp_path: Path, make_file: Callable[..., Path], rsa_dir: Path
) -> None:
    prog = make_file()
    with guard_for(tmp_path, EXEC_SIG, rsa_dir, mode="enforce") as guard:
        enforce = guard.process(prog, hook="BPRM_CHECK")
    with guard_for(tmp_path, EXEC_SIG, rsa_dir, mode="log") as guard:
        log = guard.process(prog, hook="BPRM_CHECK")
    assert enforce.allowed is False
    assert log.allowed is True
    for d in (enforce, log):
        assert d.actions["appraise"].outcome == "failed"
        assert d.actions["appraise"].cause == "IMA-signature-required"
        assert d.verified is False
    assert xattr(prog) is None  # log mode fixes nothing


def test_mode_fix_writes_a_missing_hash_and_passes(
    tmp_path: Path, make_file: Callable[..., Path], rsa_dir: Path
) -> None:
    prog = make_file()
    with guard_for(tmp_path, EXEC_ANY, rsa_dir, mode="fix") as guard:
        d = guard.process(prog, hook="BPRM_CHECK")
    assert d.allowed is True
    assert d.actions["appraise"].outcome == "passed"
    assert xattr(prog) == sha256_value(CONTENT)
    with guard_for(tmp_path, EXEC_ANY, rsa_dir, mode="enforce") as guard:
        assert guard.process(prog, hook="BPRM_CHECK").allowed is True


def test_mode_fix_rewrites_a_wrong_hash(
    tmp_path: Path, make_file: Callable[..., Path], rsa_dir: Path
) -> None:
    prog = make_file()
    os.setxattr(prog, IMA, sha256_value(b"stale"))
    with guard_for(tmp_path, EXEC_ANY, rsa_dir, mode="fix") as guard:
        d = guard.process(prog, hook="BPRM_CHECK")
    assert d.actions["appraise"].outcome == "passed"
    assert xattr(prog) == sha256_value(CONTENT)


def test_mode_fix_never_writes_or_replaces_a_signature(
    tmp_path: Path, signed: Path, make_file: Callable[..., Path], rsa_dir: Path
) -> None:
    bad_sig = xattr(signed)
    assert bad_sig is not None
    assert bad_sig[0] == 0x03
    edit_in_place_keep_mtime(signed, EVIL)  # the signature no longer matches
    with guard_for(tmp_path, EXEC_ANY, rsa_dir, mode="fix") as guard:
        d = guard.process(signed, hook="BPRM_CHECK")
    assert d.actions["appraise"].outcome == "failed"
    assert d.actions["appraise"].cause == "invalid-signature"
    assert d.verified is False
    assert xattr(signed) == bad_sig  # kept byte for byte
    with guard_for(tmp_path, EXEC_ANY, rsa_dir, mode="enforce") as guard:
        again = guard.process(signed, hook="BPRM_CHECK")
    assert again.allowed is False  # fix mode did not launder it

    # A signature is required and none is there: fix mode cannot make one.
    unsigned = make_file("unsigned")
    with guard_for(tmp_path, EXEC_SIG, rsa_dir, mode="fix", name="sig") as guard:
        guard.process(unsigned, hook="BPRM_CHECK")
    value = xattr(unsigned)
    assert value is None or value[0] != 0x03


def test_mode_off_makes_appraise_rules_inert_but_measures(
    tmp_path: Path, make_file: Callable[..., Path], rsa_dir: Path
) -> None:
    prog = make_file()
    text = EXEC_SIG + "measure func=BPRM_CHECK\n"
    with guard_for(tmp_path, text, rsa_dir, mode="off", state=tmp_path / "st") as guard:
        d = guard.process(prog, hook="BPRM_CHECK")
    assert d.actions["appraise"].required is False
    assert d.actions["appraise"].outcome == "not-required"
    assert d.actions["measure"].outcome == "passed"
    assert d.allowed is True
    assert d.verified is False


# -- measure, hash, audit actions ------------------------------------------------------------


def test_measure_appends_once_and_log_show_lists_it(
    tmp_path: Path, make_file: Callable[..., Path], rsa_dir: Path
) -> None:
    prog = make_file()
    state = tmp_path / "state"
    with guard_for(tmp_path, "measure func=FILE_CHECK mask=MAY_READ\n", rsa_dir, state=state) as g:
        first = g.process(prog, hook="FILE_CHECK", mask="MAY_READ")
        entries = len(g.log)  # boot_aggregate, then the file
        second = g.process(prog, hook="FILE_CHECK", mask="MAY_READ")
        assert first.actions["measure"].outcome == "passed"
        assert second.actions["measure"].outcome == "passed"
        assert len(g.log) == entries
    r = run_sub("log", "show", "--state", state / "log")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if str(prog) in ln]
    assert len(lines) == 1, r.stdout
    assert f"sha256:{hashlib.sha256(CONTENT).hexdigest()}" in lines[0]
    assert lines[0].split()[0] == "10"

    # A new Guard on the same state (cache and log persisted): still one entry.
    with guard_for(tmp_path, "measure func=FILE_CHECK mask=MAY_READ\n", rsa_dir, state=state) as g:
        g.process(prog, hook="FILE_CHECK", mask="MAY_READ")
        assert len(g.log) == entries
        # Changed content is a new measurement.
        edit_in_place_keep_mtime(prog, EVIL)
        g.process(prog, hook="FILE_CHECK", mask="MAY_READ")
        assert len(g.log) == entries + 1
    r = run_sub("log", "show", "--state", state / "log")
    assert f"sha256:{hashlib.sha256(EVIL).hexdigest()}" in r.stdout


def test_hash_action_writes_the_hash_and_keeps_a_signature(
    tmp_path: Path, make_file: Callable[..., Path], signed: Path, rsa_dir: Path
) -> None:
    plain = make_file("plain")
    sig = xattr(signed)
    with guard_for(tmp_path, "hash func=FILE_CHECK\n", rsa_dir) as guard:
        d = guard.process(plain, hook="FILE_CHECK", mask="MAY_READ")
        assert d.actions["hash"].required is True
        assert d.actions["hash"].outcome == "passed"
        assert d.actions["appraise"].required is False
        assert xattr(plain) == sha256_value(CONTENT)

        d = guard.process(signed, hook="FILE_CHECK", mask="MAY_READ")
        assert d.actions["hash"].outcome == "passed"
        assert xattr(signed) == sig

        edit_in_place_keep_mtime(plain, EVIL)
        guard.process(plain, hook="FILE_CHECK", mask="MAY_READ")
        assert xattr(plain) == sha256_value(EVIL)


def test_audit_action_emits_one_record_per_file_until_it_changes(
    tmp_path: Path, make_file: Callable[..., Path], rsa_dir: Path
) -> None:
    prog, other = make_file("a"), make_file("b", EVIL)
    sink = MemoryAudit()
    with guard_for(tmp_path, "audit func=BPRM_CHECK\n", rsa_dir, audit=sink) as guard:
        for _ in range(3):
            d = guard.process(prog, hook="BPRM_CHECK")
            assert d.actions["audit"].outcome == "passed"
            assert d.allowed is True
        guard.process(other, hook="BPRM_CHECK")

        def hashes(path: Path) -> list[str]:
            return [r["hash"] for r in sink.records if r.get("file") == str(path)]

        assert hashes(prog) == [f"sha256:{hashlib.sha256(CONTENT).hexdigest()}"]
        assert hashes(other) == [f"sha256:{hashlib.sha256(EVIL).hexdigest()}"]

        edit_in_place_keep_mtime(prog, EVIL)
        guard.process(prog, hook="BPRM_CHECK")
        guard.process(prog, hook="BPRM_CHECK")
        assert hashes(prog) == [
            f"sha256:{hashlib.sha256(CONTENT).hexdigest()}",
            f"sha256:{hashlib.sha256(EVIL).hexdigest()}",
        ]


# -- application hooks -----------------------------------------------------------------------


def test_application_hook_plugin_check(
    tmp_path: Path, make_file: Callable[..., Path], signed: Path, rsa_dir: Path
) -> None:
    text = "appraise func=PLUGIN_CHECK appraise_type=imasig\nmeasure func=PLUGIN_CHECK\n"
    with guard_for(tmp_path, text, rsa_dir, policy_mode="imaguard", state=tmp_path / "st") as guard:
        ok = guard.process(signed, hook="PLUGIN_CHECK")
        bad = guard.process(make_file("unsigned"), hook="PLUGIN_CHECK")
        other = guard.process(make_file("unsigned"), hook="BPRM_CHECK")
    assert ok.hook == "PLUGIN_CHECK"
    assert (ok.allowed, ok.verified) == (True, True)
    assert ok.actions["measure"].outcome == "passed"
    assert bad.allowed is False
    assert bad.actions["appraise"].cause == "IMA-signature-required"
    assert other.actions["appraise"].required is False
    assert other.allowed is True


# -- targets that cannot be examined ---------------------------------------------------------

APPRAISE_ALL = "appraise func=FILE_CHECK\n"
MEASURE_ALL = "measure func=FILE_CHECK\n"


def _process_with_timeout(guard: Guard, target: str, hook: str = "FILE_CHECK") -> Decision:
    """process() in a thread: a hang (a FIFO opened for reading) fails the test, not the run."""
    box: list[Decision | BaseException] = []

    def run() -> None:
        try:
            box.append(guard.process(target, hook=hook, mask="MAY_READ"))
        except BaseException as e:  # reported below
            box.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=10)
    assert not t.is_alive(), f"process({target!r}) hung"
    [result] = box
    assert isinstance(result, Decision), f"process({target!r}) raised {result!r}"
    return result


@pytest.fixture
def odd_targets(tmp_path: Path) -> dict[str, str]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    d = tmp_path / "a-directory"
    d.mkdir()
    return {
        "vanished": str(tmp_path / "does-not-exist"),
        "fifo": str(fifo),
        "directory": str(d),
        "device": "/dev/null",
        "write-only procfs file": "/proc/sys/vm/drop_caches",  # EACCES even for root
    }


@pytest.mark.parametrize(
    "kind", ["vanished", "fifo", "directory", "device", "write-only procfs file"]
)
@pytest.mark.parametrize(
    ("text", "mode", "allowed"),
    [
        (APPRAISE_ALL, "enforce", False),
        (APPRAISE_ALL, "log", True),
        (MEASURE_ALL, "enforce", True),
    ],
    ids=["appraise-enforce", "appraise-log", "measure-only"],
)
def test_unexaminable_targets_give_a_decision_with_cause_unknown(
    tmp_path: Path,
    rsa_dir: Path,
    odd_targets: dict[str, str],
    kind: str,
    text: str,
    mode: str,
    allowed: bool,
) -> None:
    with guard_for(tmp_path, text, rsa_dir, mode=mode, state=tmp_path / "st") as guard:
        d = _process_with_timeout(guard, odd_targets[kind])
    required = [k for k in ACTIONS if d.actions[k].required]
    assert required == (["appraise"] if text == APPRAISE_ALL else ["measure"])
    for k in required:
        assert d.actions[k].outcome == "failed"
        assert d.actions[k].cause == "unknown"
        assert d.actions[k].policy == "p"
        assert d.actions[k].line == 1
    assert d.allowed is allowed
    assert d.verified is False


def test_unexaminable_target_with_no_rule_is_simply_not_required(
    tmp_path: Path, rsa_dir: Path, odd_targets: dict[str, str]
) -> None:
    with guard_for(tmp_path, EXEC_SIG, rsa_dir) as guard:
        d = _process_with_timeout(guard, odd_targets["fifo"], hook="FILE_CHECK")
    assert all(d.actions[k].outcome == "not-required" for k in ACTIONS)
    assert d.allowed is True


UNREADABLE_SCRIPT = r"""
import json, sys
from imaguard.core import Guard
guard = Guard.from_files({"p": sys.argv[1]}, [sys.argv[2]], mode=sys.argv[3])
d = guard.process(sys.argv[4], hook="FILE_CHECK", mask="MAY_READ")
guard.close()
print(json.dumps(d.to_dict()))
"""


@pytest.mark.parametrize(("mode", "allowed"), [("enforce", False), ("log", True)])
def test_unreadable_regular_file_gives_cause_unknown(
    tmp_path: Path, make_file: Callable[..., Path], rsa_dir: Path, mode: str, allowed: bool
) -> None:
    # Root reads everything; a child without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH does not.
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop CAP_DAC_OVERRIDE in a child")
    prog = make_file()
    os.chmod(prog, 0)
    pol = write_policy(tmp_path, "p", APPRAISE_ALL)
    r = subprocess.run(
        [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--",
         sys.executable, "-c", UNREADABLE_SCRIPT, str(pol), str(rsa_dir / "cert.der"), mode,
         str(prog)],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["actions"]["appraise"]["outcome"] == "failed"
    assert d["actions"]["appraise"]["cause"] == "unknown"
    assert d["allowed"] is allowed
    assert stat.S_IMODE(os.stat(prog).st_mode) == 0


# -- the kernel's final-decision rules (ima_main.c process_measurement) ----------------------


def test_signed_file_opened_for_write_is_denied_in_enforce(
    tmp_path: Path, signed: Path, rsa_dir: Path
) -> None:
    # process_measurement: a file that has a signature (DIGSIG) and is not new, opened
    # with MAY_WRITE: EACCES - signed files are immutable under appraisal.
    text = "appraise func=FILE_CHECK mask=^MAY_READ appraise_type=imasig\n"
    with guard_for(tmp_path, text, rsa_dir) as guard:
        read_only = guard.process(signed, hook="FILE_CHECK", mask="MAY_READ")
        read_write = guard.process(signed, hook="FILE_CHECK", mask="MAY_READ|MAY_WRITE")
    assert read_only.allowed is True
    assert read_write.actions["appraise"].required is True
    assert read_write.allowed is False


# -- EVM required ----------------------------------------------------------------------------


def test_evm_required_missing_security_evm_is_missing_hmac(
    signed: Path, rsa_ring: imaguard.Keyring
) -> None:
    with Guard(pset(("exec", EXEC_SIG)), rsa_ring, evm=EvmConfig(keyring=rsa_ring)) as guard:
        d = guard.process(signed, hook="BPRM_CHECK")
    assert xattr(signed, EVM) is None
    assert d.allowed is False
    assert d.actions["appraise"].cause == "missing-HMAC"
    # Without the EVM requirement the same file passes.
    with Guard(pset(("exec", EXEC_SIG)), rsa_ring) as guard:
        assert guard.process(signed, hook="BPRM_CHECK").allowed is True


@needs_root_because("security.evm (EVM) needs root")
def test_evm_required_portable_signature_passes_until_chmod(
    signed: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    sign_file_evm(signed, key=rsa_key, portable=True)
    with Guard(
        pset(("exec", EXEC_SIG)), rsa_ring, evm=EvmConfig(keyring=rsa_ring), use_cache=False
    ) as guard:
        ok = guard.process(signed, hook="BPRM_CHECK")
        assert ok.allowed is True
        assert ok.actions["appraise"].outcome == "passed"
        os.chmod(signed, 0o700)
        d = guard.process(signed, hook="BPRM_CHECK")
    assert d.allowed is False
    assert d.actions["appraise"].cause == "invalid-fail-immutable"


@needs_root_because("security.evm (EVM) needs root")
def test_evm_required_hmac_passes_until_metadata_changes(
    signed: Path, rsa_ring: imaguard.Keyring
) -> None:
    key = b"an evm key of 32 bytes, no more!"
    uuid = bytes(range(16))
    sign_file_evm(signed, hmac_key=key, fs_uuid=uuid)
    evm = EvmConfig(hmac_key=key, fs_uuid=uuid)
    with Guard(pset(("exec", EXEC_SIG)), rsa_ring, evm=evm) as guard:
        assert guard.process(signed, hook="BPRM_CHECK").allowed is True
        os.chown(signed, 4321, -1)
        d = guard.process(signed, hook="BPRM_CHECK")
    assert d.allowed is False
    assert d.actions["appraise"].cause == "invalid-HMAC"


@needs_root_because("security.evm (EVM) needs root")
def test_portable_evm_signature_over_a_plain_hash_satisfies_imasig(
    make_file: Callable[..., Path], rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    # xattr_verify: unless EVM said PASS_IMMUTABLE, a hash under DIGSIG_REQUIRED fails.
    prog = make_file()
    imaguard.store_digest(prog, "sha256")
    with Guard(pset(("exec", EXEC_SIG)), rsa_ring, evm=EvmConfig(keyring=rsa_ring)) as guard:
        before = guard.process(prog, hook="BPRM_CHECK")
    assert before.allowed is False
    assert before.actions["appraise"].cause == "missing-HMAC"

    sign_file_evm(prog, key=rsa_key, portable=True)
    with Guard(pset(("exec", EXEC_SIG)), rsa_ring, evm=EvmConfig(keyring=rsa_ring)) as guard:
        d = guard.process(prog, hook="BPRM_CHECK")
    assert d.allowed is True
    assert d.actions["appraise"].outcome == "passed"
    # The hash must still match the content.
    edit_in_place_keep_mtime(prog, EVIL)
    with Guard(pset(("exec", EXEC_SIG)), rsa_ring, evm=EvmConfig(keyring=rsa_ring)) as guard:
        tampered = guard.process(prog, hook="BPRM_CHECK")
    assert tampered.allowed is False
    assert tampered.actions["appraise"].cause == "invalid-hash"
    # And without EVM, the same plain hash does not satisfy imasig.
    with Guard(pset(("exec", EXEC_SIG)), rsa_ring) as guard:
        plain = guard.process(prog, hook="BPRM_CHECK")
    assert plain.actions["appraise"].cause == "IMA-signature-required"


# -- odd inputs that must still give a Decision -----------------------------------------------


def test_hook_alias_path_check_is_file_check(
    tmp_path: Path, make_file: Callable[..., Path], rsa_dir: Path
) -> None:
    with guard_for(tmp_path, "appraise func=FILE_CHECK\n", rsa_dir) as guard:
        d = guard.process(make_file(), hook="PATH_CHECK", mask="MAY_READ")
    assert d.hook == "FILE_CHECK"
    assert d.actions["appraise"].required is True


def test_a_closed_descriptor_gives_cause_unknown(tmp_path: Path, rsa_dir: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    os.close(fd)
    with guard_for(tmp_path, "appraise func=FILE_CHECK\n", rsa_dir) as guard:
        d = guard.process(fd, hook="FILE_CHECK", mask="MAY_READ")
    assert d.allowed is False
    assert d.actions["appraise"].cause == "unknown"


@pytest.mark.parametrize(
    ("value", "cause"),
    [
        (b"\x07abc", "unknown-ima-data"),
        (b"\x02" + bytes(20), "unknown-ima-data"),  # an EVM HMAC is not an IMA value
        (b"\x03", "invalid-signature"),
        (b"\x03\x02\x04" + b"\x01" * 3000, "invalid-signature"),  # large and malformed
        (b"\x03\x03\x04" + bytes(30), "invalid-signature-version"),
        (b"\x04\x04\x01\x02\x03", "invalid-hash"),  # truncated digest
        (b"\x04\x63" + bytes(32), "invalid-hash"),  # unknown algorithm id
    ],
)
def test_malformed_values_fail_with_the_kernel_cause(
    tmp_path: Path, make_file: Callable[..., Path], rsa_dir: Path, value: bytes, cause: str
) -> None:
    prog = make_file()
    os.setxattr(prog, IMA, value)
    with guard_for(tmp_path, "appraise func=FILE_CHECK\n", rsa_dir) as guard:
        d = guard.process(prog, hook="FILE_CHECK", mask="MAY_READ")
    assert d.allowed is False
    assert d.actions["appraise"].outcome == "failed"
    assert d.actions["appraise"].cause == cause


def test_measurement_goes_to_each_pcr_once(
    tmp_path: Path, make_file: Callable[..., Path], rsa_ring: imaguard.Keyring
) -> None:
    policies = pset(
        ("a", "measure func=BPRM_CHECK\n"),
        ("b", "measure func=BPRM_CHECK\n"),
        ("c", "measure func=BPRM_CHECK pcr=11\n"),
    )
    prog = make_file()
    with Guard(policies, rsa_ring, state=tmp_path / "st") as guard:
        before = len(guard.log)
        d = guard.process(prog, hook="BPRM_CHECK")
        guard.process(prog, hook="BPRM_CHECK")
        added = [e.pcr for e in list(guard.log)[before:]]
    assert d.actions["measure"].outcome == "passed"
    assert sorted(added) == [10, 11]


def test_filesystem_without_xattr_support_is_status_unknown(
    tmp_path: Path, ramfs: Path, rsa_dir: Path, rsa_ring: imaguard.Keyring
) -> None:
    # ima_appraise_measurement: no xattr support (and no modsig) -> INTEGRITY_UNKNOWN, before any
    # look for a value. The direct call says so; the Guard - the same engine - must agree
    # rather than report a missing label (missing-hash / IMA-signature-required).
    prog = ramfs / "prog"
    prog.write_bytes(CONTENT)
    direct = imaguard.appraise(prog, rsa_ring)
    assert (direct.status, direct.cause) == (imaguard.Status.UNKNOWN, "unknown")
    with guard_for(tmp_path, EXEC_SIG, rsa_dir) as guard:
        d = guard.process(prog, hook="BPRM_CHECK")
    assert d.allowed is False
    assert d.verdict is not None
    assert d.verdict.status == imaguard.Status.UNKNOWN
    assert d.actions["appraise"].cause == "unknown"


def test_fix_mode_on_a_filesystem_without_xattrs_returns_a_decision(
    tmp_path: Path, ramfs: Path, rsa_dir: Path
) -> None:
    prog = ramfs / "prog"
    prog.write_bytes(CONTENT)
    with guard_for(tmp_path, EXEC_ANY, rsa_dir, mode="fix") as guard:
        d = guard.process(prog, hook="BPRM_CHECK")
    assert d.actions["appraise"].outcome == "failed"
    assert d.allowed is True  # fix mode allows, as the kernel
