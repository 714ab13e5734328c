"""The CLI contract of the integrity core: ``imaguard check``, ``show``/``info``, ``evm``."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import imaguard
from helpers import needs_root_because
from helpers.clirun import run_in_process as run_main
from helpers.core import (
    CONTENT,
    EVIL,
    EVM,
    IMA,
    decisions,
    edit_in_place_keep_mtime,
    run_sub,
    write_policy,
    xattr,
)

Capsys = pytest.CaptureFixture[str]
ACTIONS = ("measure", "appraise", "audit", "hash")
ACTION_KEYS = {"required", "outcome", "cause", "policy", "line"}
OUTCOMES = {"not-required", "passed", "failed"}
EXEC_SIG = "appraise func=BPRM_CHECK appraise_type=imasig\n"


def check(capsys: Capsys, *args: str | os.PathLike[str]) -> tuple[int, list[dict[str, Any]], str]:
    code, out, err = run_main(capsys, "check", "--json", *args)
    return code, (decisions(out) if code in (0, 1) else []), err


def assert_contract(d: dict[str, Any]) -> None:
    assert {"path", "hook", "allowed", "actions"} <= set(d)
    assert isinstance(d["allowed"], bool)
    assert set(d["actions"]) == set(ACTIONS)
    for kind in ACTIONS:
        a = d["actions"][kind]
        assert set(a) == ACTION_KEYS, a
        assert a["outcome"] in OUTCOMES
        if a["required"]:
            assert a["outcome"] != "not-required"
            assert isinstance(a["policy"], str)
            assert isinstance(a["line"], int)
            assert a["line"] >= 1
        else:
            assert a["outcome"] == "not-required"
            assert (a["cause"], a["policy"], a["line"]) == (None, None, None)
        if a["outcome"] == "failed":
            assert isinstance(a["cause"], str)
            assert a["cause"]


# -- imaguard check -----------------------------------------------------------------------------


def test_check_prints_one_decision_per_path_and_exit_1_when_any_is_denied(
    capsys: Capsys,
    tmp_path: Path,
    signed: Path,
    make_file: Callable[..., Path],
    rsa_dir: Path,
) -> None:
    pol = write_policy(tmp_path, "exec", "# exec guard\n" + EXEC_SIG)
    unsigned = make_file("unsigned")
    code, ds, _ = check(
        capsys, "--policy", f"exec-guard={pol}", "--keyring", rsa_dir, "--hook", "BPRM_CHECK",
        "--mask", "MAY_EXEC", signed, unsigned,
    )  # fmt: skip
    assert code == 1
    assert [d["path"] for d in ds] == [str(signed), str(unsigned)]
    for d in ds:
        assert_contract(d)
        assert d["hook"] == "BPRM_CHECK"
    ok, bad = ds
    assert ok["allowed"] is True
    assert ok["actions"]["appraise"] == {
        "required": True, "outcome": "passed", "cause": None, "policy": "exec-guard", "line": 2,
    }  # fmt: skip
    assert bad["allowed"] is False
    assert bad["actions"]["appraise"]["cause"] == "IMA-signature-required"


def test_check_exit_0_when_all_are_allowed(
    capsys: Capsys, tmp_path: Path, signed: Path, rsa_dir: Path
) -> None:
    pol = write_policy(tmp_path, "exec", EXEC_SIG)
    code, ds, _ = check(
        capsys, "--policy", pol, "--keyring", rsa_dir, "--hook", "BPRM_CHECK", signed, signed
    )
    assert code == 0
    assert len(ds) == 2
    assert all(d["allowed"] for d in ds)
    # --policy FILE without NAME= names the policy after the file.
    assert ds[0]["actions"]["appraise"]["policy"] == "exec"


def test_check_text_output(
    capsys: Capsys, tmp_path: Path, signed: Path, make_file: Callable[..., Path], rsa_dir: Path
) -> None:
    pol = write_policy(tmp_path, "exec", EXEC_SIG)
    unsigned = make_file("unsigned")
    code, out, _ = run_main(
        capsys, "check", "--policy", pol, "--keyring", rsa_dir, "--hook", "BPRM_CHECK",
        signed, unsigned,
    )  # fmt: skip
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"{signed}: allowed")
    assert "appraise=passed" in lines[0]
    assert lines[1].startswith(f"{unsigned}: DENIED")
    assert "IMA-signature-required" in lines[1]


def test_check_with_several_policies_and_keyrings(
    capsys: Capsys,
    tmp_path: Path,
    make_file: Callable[..., Path],
    rsa_key: imaguard.PrivateKey,
    ec_key: imaguard.PrivateKey,
    rsa_dir: Path,
    ec_dir: Path,
) -> None:
    a = write_policy(tmp_path, "a", EXEC_SIG)
    b = write_policy(tmp_path, "b", "dont_appraise func=BPRM_CHECK\nmeasure func=BPRM_CHECK\n")
    one, two = make_file("one"), make_file("two")
    imaguard.sign_file(one, rsa_key)
    imaguard.sign_file(two, ec_key)
    code, ds, _ = check(
        capsys, "--policy", f"A={a}", "--policy", f"B={b}", "--keyring", rsa_dir,
        "--keyring", ec_dir, "--state", tmp_path / "st", "--hook", "BPRM_CHECK", one, two,
    )  # fmt: skip
    assert code == 0
    for d in ds:
        assert_contract(d)
        assert d["actions"]["appraise"]["policy"] == "A"
        assert d["actions"]["measure"]["policy"] == "B"
        assert d["actions"]["measure"]["outcome"] == "passed"


@needs_root_because("appraise_tcb appraises files owned by root (fowner=0)")
def test_check_builtin(
    capsys: Capsys, tmp_path: Path, make_file: Callable[..., Path], rsa_dir: Path
) -> None:
    prog = make_file()  # owned by root: appraise_tcb's "appraise fowner=0" applies
    code, ds, _ = check(
        capsys, "--builtin", "appraise_tcb", "--keyring", rsa_dir, "--hook", "FILE_CHECK",
        "--mask", "MAY_READ", prog,
    )  # fmt: skip
    assert code == 1
    [d] = ds
    assert_contract(d)
    assert d["actions"]["appraise"]["policy"] == "builtin"
    assert d["actions"]["appraise"]["cause"] == "missing-hash"
    code, ds, _ = check(
        capsys, "--builtin", "tcb", "--state", tmp_path / "st", "--hook", "BPRM_CHECK",
        "--mask", "MAY_EXEC", prog,
    )  # fmt: skip
    assert code == 0
    assert ds[0]["actions"]["measure"]["outcome"] == "passed"
    assert ds[0]["actions"]["appraise"]["required"] is False


def test_check_policy_mode_imaguard_application_hook(
    capsys: Capsys, tmp_path: Path, signed: Path, make_file: Callable[..., Path], rsa_dir: Path
) -> None:
    pol = write_policy(tmp_path, "plugins", "appraise func=PLUGIN_CHECK appraise_type=imasig\n")
    code, ds, _ = check(
        capsys, "--policy", pol, "--policy-mode", "imaguard", "--keyring", rsa_dir,
        "--hook", "PLUGIN_CHECK", signed, make_file("unsigned"),
    )  # fmt: skip
    assert code == 1
    assert [d["allowed"] for d in ds] == [True, False]
    assert ds[0]["hook"] == "PLUGIN_CHECK"
    # imaguard mode is the default (the kernel grammar is a subset of it)
    code, ds, _ = check(
        capsys, "--policy", pol, "--keyring", rsa_dir, "--hook", "PLUGIN_CHECK", signed
    )
    assert code == 0
    assert [d["allowed"] for d in ds] == [True]
    code, _, err = check(
        capsys, "--policy", pol, "--policy-mode", "kernel", "--keyring", rsa_dir,
        "--hook", "PLUGIN_CHECK", signed,
    )  # fmt: skip  # kernel mode refuses an application hook
    assert code == 2
    assert "PLUGIN_CHECK" in err


def test_guard_from_files_reads_imaguard_mode_by_default(tmp_path: Path, rsa_dir: Path) -> None:
    pol = write_policy(tmp_path, "plugins", "appraise func=PLUGIN_CHECK appraise_type=imasig\n")
    with imaguard.Guard.from_files({"plugins": pol}, [rsa_dir]) as guard:
        assert guard.policies.names() == ["plugins"]
    with pytest.raises(imaguard.PolicyError):
        imaguard.Guard.from_files({"plugins": pol}, [rsa_dir], policy_mode="kernel")


def test_check_hook_is_validated(capsys: Capsys, tmp_path: Path, signed: Path) -> None:
    pol = write_policy(tmp_path, "exec", EXEC_SIG)
    code, _, err = check(capsys, "--policy", pol, "--hook", "bprm_check", signed)
    assert code == 2
    assert "bprm_check" in err
    code, _, err = check(capsys, "--policy", pol, signed)
    assert code == 2
    assert "--hook" in err


def test_check_state_keeps_log_and_cache(
    capsys: Capsys, tmp_path: Path, signed: Path, rsa_dir: Path
) -> None:
    pol = write_policy(tmp_path, "exec", EXEC_SIG + "measure func=BPRM_CHECK\n")
    state = tmp_path / "state"
    args = ("--policy", pol, "--keyring", rsa_dir, "--state", state, "--hook", "BPRM_CHECK")
    _, [first], _ = check(capsys, *args, signed)
    _, [second], _ = check(capsys, *args, signed)
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["actions"]["measure"]["outcome"] == "passed"
    assert second["actions"]["measure"]["outcome"] == "passed"
    r = run_sub("log", "show", "--state", state / "log")
    assert r.returncode == 0, r.stderr
    assert sum(str(signed) in ln for ln in r.stdout.splitlines()) == 1
    assert f"sha256:{hashlib.sha256(CONTENT).hexdigest()}" in r.stdout
    assert (state / "cache.json").is_file()

    edit_in_place_keep_mtime(signed, EVIL)
    code, [third], _ = check(capsys, *args, signed)
    assert code == 1
    assert third["cached"] is False
    assert third["actions"]["appraise"]["cause"] == "invalid-signature"


def test_check_without_state_says_the_log_is_thrown_away(
    capsys: Capsys, tmp_path: Path, signed: Path, rsa_dir: Path
) -> None:
    measuring = write_policy(tmp_path, "m", EXEC_SIG + "measure func=BPRM_CHECK\n")
    args = ("--policy", measuring, "--keyring", rsa_dir, "--hook", "BPRM_CHECK", signed)
    code, [d], err = check(capsys, *args)
    assert code == 0
    assert d["actions"]["measure"]["outcome"] == "passed"
    assert "throwaway log" in err
    code, _, err = check(capsys, *args, "--state", tmp_path / "st")
    assert code == 0
    assert "throwaway" not in err
    appraising = write_policy(tmp_path, "a", EXEC_SIG)
    code, _, err = check(capsys, "--policy", appraising, "--keyring", rsa_dir,
                         "--hook", "BPRM_CHECK", signed)  # fmt: skip
    assert code == 0
    assert "throwaway" not in err  # nothing was measured


def test_check_as_uid_changes_a_uid_rule_match(
    capsys: Capsys, tmp_path: Path, make_file: Callable[..., Path], rsa_dir: Path
) -> None:
    pol = write_policy(tmp_path, "users", "appraise func=BPRM_CHECK uid=1234\n")
    prog = make_file()
    base = ("--policy", pol, "--keyring", rsa_dir, "--hook", "BPRM_CHECK")
    code, [as_root], _ = check(capsys, *base, prog)
    assert code == 0
    assert as_root["actions"]["appraise"]["required"] is False
    code, [as_user], _ = check(capsys, *base, "--as-uid", "1234", prog)
    assert code == 1
    assert as_user["actions"]["appraise"]["required"] is True
    assert as_user["actions"]["appraise"]["cause"] == "missing-hash"


@pytest.mark.parametrize(
    ("mask", "required"), [("MAY_READ", True), ("MAY_WRITE", False), ("MAY_READ|MAY_WRITE", False)]
)
def test_check_mask(
    capsys: Capsys,
    tmp_path: Path,
    make_file: Callable[..., Path],
    rsa_dir: Path,
    mask: str,
    required: bool,
) -> None:
    pol = write_policy(tmp_path, "p", "appraise func=FILE_CHECK mask=MAY_READ\n")
    code, [d], _ = check(
        capsys, "--policy", pol, "--keyring", rsa_dir, "--hook", "FILE_CHECK", "--mask", mask,
        make_file(),
    )  # fmt: skip
    assert d["actions"]["appraise"]["required"] is required
    assert code == (1 if required else 0)


def test_check_modes(
    capsys: Capsys, tmp_path: Path, make_file: Callable[..., Path], rsa_dir: Path
) -> None:
    pol = write_policy(tmp_path, "p", "appraise func=BPRM_CHECK\n")
    prog = make_file()
    base = ("--policy", pol, "--keyring", rsa_dir, "--hook", "BPRM_CHECK")
    code, [d], _ = check(capsys, *base, "--mode", "enforce", prog)
    assert (code, d["allowed"], d["actions"]["appraise"]["cause"]) == (1, False, "missing-hash")
    code, [d], _ = check(capsys, *base, "--mode", "log", prog)
    assert (code, d["allowed"], d["actions"]["appraise"]["outcome"]) == (0, True, "failed")
    assert xattr(prog) is None
    code, [d], _ = check(capsys, *base, "--mode", "off", prog)
    assert (code, d["actions"]["appraise"]["outcome"]) == (0, "not-required")
    code, [d], _ = check(capsys, *base, "--mode", "fix", prog)
    assert (code, d["actions"]["appraise"]["outcome"]) == (0, "passed")
    assert xattr(prog) == b"\x04\x04" + hashlib.sha256(CONTENT).digest()
    code, [d], _ = check(capsys, *base, "--mode", "enforce", prog)
    assert (code, d["allowed"]) == (0, True)


def test_check_bad_target_is_a_decision_not_an_error(
    capsys: Capsys, tmp_path: Path, rsa_dir: Path
) -> None:
    pol = write_policy(tmp_path, "p", "appraise func=FILE_CHECK\n")
    code, [gone, directory], _ = check(
        capsys, "--policy", pol, "--keyring", rsa_dir, "--hook", "FILE_CHECK",
        tmp_path / "gone", tmp_path,
    )  # fmt: skip
    assert code == 1
    for d in (gone, directory):
        assert_contract(d)
        assert d["allowed"] is False
        assert d["actions"]["appraise"]["cause"] == "unknown"


@pytest.mark.parametrize(
    "problem",
    ["bad-policy", "missing-policy", "missing-keyring", "empty-keyring", "no-policy", "bad-mode"],
)
def test_check_errors_exit_2_without_traceback(
    capsys: Capsys, tmp_path: Path, signed: Path, rsa_dir: Path, problem: str
) -> None:
    good = write_policy(tmp_path, "good", EXEC_SIG)
    empty = tmp_path / "empty"
    empty.mkdir()
    args: tuple[str | os.PathLike[str], ...] = {
        "bad-policy": ("--policy", write_policy(tmp_path, "bad", "appraise bogus=1\n"),
                       "--keyring", rsa_dir),
        "missing-policy": ("--policy", tmp_path / "nope.policy", "--keyring", rsa_dir),
        "missing-keyring": ("--policy", good, "--keyring", tmp_path / "no-such-dir"),
        "empty-keyring": ("--policy", good, "--keyring", empty),
        "no-policy": ("--keyring", rsa_dir),
        "bad-mode": ("--policy", good, "--mode", "paranoid"),
    }[problem]  # fmt: skip
    code, out, err = run_main(capsys, "check", "--json", *args, "--hook", "BPRM_CHECK", signed)
    assert code == 2
    assert out == ""
    assert err.strip()


def test_check_errors_exit_2_as_a_subprocess(tmp_path: Path, signed: Path) -> None:
    bad = write_policy(tmp_path, "bad", "appraise func=BPRM_CHECK\nmeasure bogus=1\n")
    r = run_sub("check", "--policy", bad, "--hook", "BPRM_CHECK", "--json", signed)
    assert r.returncode == 2
    assert r.stdout == ""
    assert "bad.policy" in r.stderr
    assert ":2:" in r.stderr  # the offending line


# -- imaguard show (info is its old, hidden spelling) ----------------------------------------


@needs_root_because("the message names the default store as root (xattr)")
def test_info_signed_not_signed_malformed(
    capsys: Capsys,
    signed: Path,
    make_file: Callable[..., Path],
    rsa_key: imaguard.PrivateKey,
) -> None:
    code, out, _ = run_main(capsys, "info", signed)
    assert code == 0
    assert out.startswith(f"{signed}: signed, key id {rsa_key.key_id:08x}, sha256")

    bare = make_file("bare")
    code, out, _ = run_main(capsys, "info", bare)
    assert (code, out.strip()) == (0, f"{bare}: not signed (no value in xattr)")

    hashed = make_file("hashed")
    imaguard.store_digest(hashed)
    code, out, _ = run_main(capsys, "info", hashed)
    assert code == 0
    assert out.startswith(f"{hashed}: not signed: a sha256")

    broken = make_file("broken")
    os.setxattr(broken, IMA, b"\x03\x02\x04")
    code, out, _ = run_main(capsys, "info", broken)
    assert code == 0
    assert out.startswith(f"{broken}: malformed value")


def test_info_json(
    capsys: Capsys, signed: Path, make_file: Callable[..., Path], rsa_key: imaguard.PrivateKey
) -> None:
    code, out, _ = run_main(capsys, "info", "--json", signed)
    assert code == 0
    [doc] = json.loads(out)
    assert doc["signed"] is True
    assert doc["present"] is True
    assert doc["key_id"] == f"{rsa_key.key_id:08x}"
    assert doc["algorithm"] == "sha256"
    assert doc["type"] == "0x03"
    assert doc["error"] is None
    code, out, _ = run_main(capsys, "info", "--json", make_file("bare"))
    [doc] = json.loads(out)
    assert doc["present"] is False
    assert doc["signed"] is False


def test_info_errors_exit_2(capsys: Capsys, tmp_path: Path) -> None:
    code, out, err = run_main(capsys, "info", tmp_path / "missing")
    assert code == 2
    assert out == ""
    assert "missing" in err


def test_info_is_show_with_several_paths(
    capsys: Capsys, signed: Path, make_file: Callable[..., Path]
) -> None:
    bare = make_file("bare")
    for fmt in ((), ("--json",)):
        shown = run_main(capsys, "show", *fmt, signed, bare)
        assert run_main(capsys, "info", *fmt, signed, bare) == shown
        assert shown[0] == 0
    assert len(shown[1]) > 0
    assert [d["path"] for d in json.loads(shown[1])] == [str(signed), str(bare)]
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    assert " show " in out
    assert " info " not in out


# -- imaguard evm sign|verify -------------------------------------------------------------------


@needs_root_because("security.evm (EVM) needs root")
def test_evm_sign_and_verify_exit_codes(
    capsys: Capsys, signed: Path, make_file: Callable[..., Path], rsa_dir: Path, ec_dir: Path
) -> None:
    key, cert = rsa_dir / "private.pem", rsa_dir / "cert.der"
    code, out, _ = run_main(capsys, "evm", "sign", "--key", key, signed)
    assert code == 0
    value = xattr(signed, EVM)
    assert value is not None
    assert out.strip() == f"{signed}: {value.hex()}"

    code, out, _ = run_main(capsys, "evm", "verify", "--cert", cert, signed)
    assert (code, out.strip()) == (0, f"{signed}: pass_immutable")
    code, out, _ = run_main(capsys, "evm", "verify", "--keyring", ec_dir, signed)
    assert code == 1  # not our key

    os.chmod(signed, 0o711)  # noqa: S103 - a metadata change
    code, out, _ = run_main(capsys, "evm", "verify", "--cert", cert, signed)
    assert code == 1
    assert "invalid-fail-immutable" in out

    bare = make_file("bare")  # a portable signature needs security.ima first
    code, _, err = run_main(capsys, "evm", "sign", "--key", key, bare)
    assert code == 2
    assert err.strip()
    code, _, _ = run_main(capsys, "evm", "verify", "--cert", cert, bare)
    assert code == 1  # no security.evm: missing-HMAC
    code, _, _ = run_main(capsys, "evm", "verify", "--cert", cert, bare.with_name("gone"))
    assert code == 2
    code, _, _ = run_main(capsys, "evm", "sign", signed)  # neither --key nor --hmac-key
    assert code == 2


@needs_root_because("security.evm (EVM) needs root")
def test_evm_hmac_sign_and_verify_exit_codes(capsys: Capsys, tmp_path: Path, signed: Path) -> None:
    keyfile = tmp_path / "evm-key"
    keyfile.write_bytes(os.urandom(32))
    uuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    code, _, _ = run_main(capsys, "evm", "sign", "--hmac-key", keyfile, "--uuid", uuid, signed)
    assert code == 0
    assert (xattr(signed, EVM) or b"")[:1] == b"\x02"
    code, out, _ = run_main(
        capsys, "evm", "verify", "--hmac-key", keyfile, "--uuid", uuid, "--json", signed
    )
    assert code == 0
    assert '"status": "pass"' in out
    code, _, _ = run_main(
        capsys, "evm", "verify", "--hmac-key", keyfile, "--uuid", "00000000-0000-0000-0000-"
        "000000000000", signed,
    )  # fmt: skip
    assert code == 1
    code, _, _ = run_main(
        capsys, "evm", "sign", "--hmac-key", keyfile, "--uuid", "not-a-uuid", signed
    )
    assert code == 2
