"""``imaguard exec``: refusals in-process (nothing is executed), runs as a child process.

A successful ``imaguard exec`` replaces its process with PROGRAM, so it only ever runs as a
child here; refusals (126), "not found" (127) and usage errors (2) run in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import imaguard
from helpers.clirun import run_in_process as run
from imaguard.loaders._exec import _interp_of_elf

IMAGUARD = Path(sys.executable).with_name("imaguard")
TIMEOUT = 60

PROBE_C = r"""
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) printf("[%s]", argv[i]);
    printf("\n");
    return getenv("PROBE_EXIT") ? atoi(getenv("PROBE_EXIT")) : 0;
}
"""


@pytest.fixture(scope="module")
def probe_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static program printing its arguments as [a][b]; exits with $PROBE_EXIT."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the exec tests compile a small C program")
    d = tmp_path_factory.mktemp("exec-cli")
    src = d / "probe.c"
    src.write_text(PROBE_C)
    out = d / "probe"
    subprocess.run(
        ["gcc", "-O2", "-static", "-o", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    return out


@pytest.fixture
def ring(keys_dir: dict[str, Path]) -> Path:
    return keys_dir["ecdsa-p256"]


@pytest.fixture
def prog(tmp_path: Path, probe_bin: Path, ec_key: imaguard.PrivateKey) -> Path:
    p = tmp_path / "prog"
    shutil.copyfile(probe_bin, p)
    p.chmod(0o755)
    imaguard.sign_file(p, ec_key, "sha256")
    return p


@pytest.fixture
def unsigned(tmp_path: Path, probe_bin: Path) -> Path:
    p = tmp_path / "unsigned"
    shutil.copyfile(probe_bin, p)
    p.chmod(0o755)
    return p


def exec_sub(
    *args: str | os.PathLike[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [str(IMAGUARD), "exec", *(os.fspath(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=env,
    )
    assert "Traceback" not in r.stderr, r.stderr
    return r


# --- refused, in-process ---------------------------------------------------------------------


def test_unsigned_program_is_refused_126(
    capsys: pytest.CaptureFixture[str], ring: Path, unsigned: Path
) -> None:
    code, out, err = run(capsys, "exec", "--keyring", ring, "--", unsigned)
    assert code == 126
    assert out == ""
    assert err == (
        f"imaguard: exec refused: {unsigned}: no-xattr (IMA-signature-required) - "
        "no value stored for this file\n"
    )


def test_tampered_program_is_refused_126(
    capsys: pytest.CaptureFixture[str], ring: Path, prog: Path
) -> None:
    with open(prog, "ab") as f:
        f.write(b"\0")
    code, _, err = run(capsys, "exec", "--keyring", ring, "--", prog)
    assert code == 126
    assert err.startswith(f"imaguard: exec refused: {prog}: fail (invalid-signature)")


def test_key_not_in_the_keyring_is_refused_126(
    capsys: pytest.CaptureFixture[str], keys_dir: dict[str, Path], prog: Path
) -> None:
    code, _, err = run(capsys, "exec", "--keyring", keys_dir["rsa2048"], "--", prog)
    assert code == 126
    assert err.startswith(f"imaguard: exec refused: {prog}: unknown-key")


def test_not_found_127(
    capsys: pytest.CaptureFixture[str],
    ring: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "exec", "--keyring", ring, "--", "imaguard-no-such-program")
    assert (code, out) == (127, "")
    assert err == "imaguard: imaguard-no-such-program: not found in $PATH\n"
    missing = tmp_path / "missing"
    code, _, err = run(capsys, "exec", "--keyring", ring, "--", missing)
    assert code == 127
    assert str(missing) in err


def test_not_a_program_126(
    capsys: pytest.CaptureFixture[str],
    ring: Path,
    tmp_path: Path,
    ec_key: imaguard.PrivateKey,
) -> None:
    code, _, err = run(capsys, "exec", "--keyring", ring, "--", tmp_path)
    assert code == 126  # it exists: not "not found"
    assert str(tmp_path) in err
    data = tmp_path / "data"
    data.write_bytes(b"signed, but not a program\n")
    imaguard.sign_file(data, ec_key, "sha256")
    code, _, err = run(capsys, "exec", "--keyring", ring, "--", data)
    assert code == 126
    assert err == f"imaguard: exec refused: {data}: neither an ELF program nor a #! script\n"


def test_setuid_program_is_refused_126(
    capsys: pytest.CaptureFixture[str], ring: Path, prog: Path
) -> None:
    prog.chmod(0o4755)
    code, _, err = run(capsys, "exec", "--keyring", ring, "--", prog)
    assert code == 126
    assert err.startswith(
        f"imaguard: exec refused: {prog}: a setuid/setgid program cannot be run from a "
        "verified copy"
    )


def test_policy_refusal_126(
    capsys: pytest.CaptureFixture[str], ring: Path, prog: Path, tmp_path: Path
) -> None:
    """The signature verifies, but the policy only accepts sha512 signatures."""
    pol = tmp_path / "strict.policy"
    pol.write_text("appraise func=BPRM_CHECK appraise_type=imasig appraise_algos=sha512\n")
    code, _, err = run(capsys, "exec", "--keyring", ring, "--policy", pol, "--", prog)
    assert code == 126
    assert err == f"imaguard: exec refused: {prog}: BPRM_CHECK: refused by the policy\n"


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("--", "/bin/true"), id="no-keyring"),
        pytest.param(("--keyring", "RING"), id="no-program"),
        pytest.param(("--keyring", "RING", "--mode", "fix", "--", "/bin/true"), id="bad-mode"),
        pytest.param(
            ("--keyring", "RING", "--store", "nowhere", "--", "/bin/true"), id="bad-store"
        ),
    ],
)
def test_usage_errors_2(
    capsys: pytest.CaptureFixture[str], ring: Path, args: tuple[str, ...]
) -> None:
    code, out, _ = run(capsys, "exec", *(str(ring) if a == "RING" else a for a in args))
    assert code == 2
    assert out == ""


def test_unreadable_policy_or_keyring_2(
    capsys: pytest.CaptureFixture[str], ring: Path, prog: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.policy"
    code, _, err = run(capsys, "exec", "--keyring", ring, "--policy", missing, "--", prog)
    assert code == 2
    assert f"{missing}: cannot read policy" in err
    code, _, err = run(capsys, "exec", "--keyring", tmp_path / "no-ring", "--", prog)
    assert code == 2
    assert "no-ring" in err


# --- runs (child processes) ------------------------------------------------------------------


def test_signed_program_runs_with_its_arguments_and_exit_code(ring: Path, prog: Path) -> None:
    r = exec_sub("--keyring", ring, "--", prog, "a b", "", "--keyring", "-x")
    assert (r.returncode, r.stdout, r.stderr) == (0, "[a b][][--keyring][-x]\n", "")
    r = exec_sub("--keyring", ring, "--", prog, env={**os.environ, "PROBE_EXIT": "3"})
    assert r.returncode == 3


def test_options_after_the_program_belong_to_the_program(ring: Path, prog: Path) -> None:
    r = exec_sub("--keyring", ring, prog, "--mode", "log", "--keyring")
    assert (r.returncode, r.stdout) == (0, "[--mode][log][--keyring]\n")


def test_program_found_in_path(ring: Path, prog: Path) -> None:
    env = {**os.environ, "PATH": f"{prog.parent}:{os.environ.get('PATH', '')}"}
    r = exec_sub("--keyring", ring, "--", "prog", "x", env=env)
    assert (r.returncode, r.stdout) == (0, "[x]\n")


def test_log_mode_runs_unsigned(ring: Path, unsigned: Path) -> None:
    r = exec_sub("--keyring", ring, "--mode", "log", "--", unsigned, "y")
    assert r.returncode == 0
    assert r.stdout == "[y]\n"
    assert (
        f"imaguard: log mode: running anyway: {unsigned}: no-xattr (IMA-signature-required)"
        in r.stderr
    )


def test_trust_loader_for_a_system_program(
    ring: Path, tmp_path: Path, ec_key: imaguard.PrivateKey
) -> None:
    echo = shutil.which("echo")
    assert echo is not None
    p = tmp_path / "echo"
    shutil.copyfile(echo, p)
    p.chmod(0o755)
    imaguard.sign_file(p, ec_key, "sha256")
    fd = os.open(p, os.O_RDONLY)
    try:
        loader = _interp_of_elf(fd)  # the system's loader: unsigned, and left alone
    finally:
        os.close(fd)
    r = exec_sub("--keyring", ring, "--", p, "hi")
    assert r.returncode == 126
    assert f"exec refused: {loader}: no-xattr (IMA-signature-required)" in r.stderr
    r = exec_sub("--keyring", ring, "--trust-loader", "--", p, "hi")
    assert (r.returncode, r.stdout) == (0, "hi\n")


def test_sigfile_store(
    ring: Path, tmp_path: Path, probe_bin: Path, ec_key: imaguard.PrivateKey
) -> None:
    p = tmp_path / "sidecar-signed"
    shutil.copyfile(probe_bin, p)
    p.chmod(0o755)
    imaguard.sign_file(p, ec_key, "sha256", store="sigfile")
    assert Path(f"{p}.sig").is_file()
    r = exec_sub("--keyring", ring, "--store", "sigfile", "--", p, "z")
    assert (r.returncode, r.stdout) == (0, "[z]\n")
    r = exec_sub("--keyring", ring, "--", p)  # the default store holds nothing for it
    assert r.returncode == 126
    assert "IMA-signature-required" in r.stderr


def test_policy_measures_and_audits_the_verified_copy(
    ring: Path, prog: Path, tmp_path: Path
) -> None:
    pol = tmp_path / "m.policy"
    pol.write_text("measure func=BPRM_CHECK\naudit func=BPRM_CHECK\n")
    state = tmp_path / "state"
    r = exec_sub("--keyring", ring, "--policy", f"watch={pol}", "--state", state, "--", prog)
    assert (r.returncode, r.stdout) == (0, "\n")
    digest = hashlib.sha256(prog.read_bytes()).hexdigest()
    records = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    audits = [rec for rec in records if rec["action"] == "audit"]
    assert len(audits) == 1
    assert audits[0]["file"] == str(prog)
    assert audits[0]["hash"] == f"sha256:{digest}"
    assert audits[0]["policy"] == "watch"
    assert audits[0]["hook"] == "BPRM_CHECK"
    log = subprocess.run(
        [str(IMAGUARD), "log", "show", "--state", str(state / "log")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    assert f"sha256:{digest} {prog}" in log.stdout


def test_hook_option_selects_the_rules(ring: Path, prog: Path, tmp_path: Path) -> None:
    pol = tmp_path / "fc.policy"
    pol.write_text("measure func=FILE_CHECK\n")
    digest = hashlib.sha256(prog.read_bytes()).hexdigest()
    for hook, measured in (("BPRM_CHECK", False), ("FILE_CHECK", True)):
        state = tmp_path / f"state-{hook}"
        r = exec_sub(
            "--keyring", ring, "--policy", pol, "--hook", hook, "--state", state, "--", prog
        )
        assert r.returncode == 0, r.stderr
        log = subprocess.run(
            [str(IMAGUARD), "log", "show", "--state", str(state / "log")],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert (f"sha256:{digest} {prog}" in log.stdout) is measured, log.stdout
