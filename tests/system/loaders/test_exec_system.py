"""``imaguard exec`` / ``prepare_exec`` end to end with real programs.

#! interpreters (verified, the script handed over as a verified memfd), the ELF loader
(PT_INTERP) verified or trusted, setuid refused, a 200 MiB program, argv/env/exit codes
passed through, and log mode.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import imaguard
from imaguard.appraise import Verdict
from imaguard.loaders import ExecRefused, prepare_exec

from .conftest import (
    IMAGUARD,
    MARKER,
    SYSTEM_LDSO,
    TIMEOUT,
    Programs,
    imaguard_exec,
    install,
    parse_probe,
    spawn_capture,
    spawn_verified_capture,
    write_signed,
)

# --- #! interpreters ------------------------------------------------------------------


@pytest.fixture
def interp(tmp_path: Path, programs: Programs, ec_key: imaguard.PrivateKey) -> Path:
    """A signed static "interpreter" (the probe)."""
    return install(programs.probe, tmp_path / "interp", ec_key)


def script_text(interp: Path, arg: str | None = None, exit_code: int = 7) -> bytes:
    line = f"#!{interp}" + (f" {arg}" if arg is not None else "")
    return f"{line}\nEXIT {exit_code}\nthe script's own text\n".encode()


@pytest.mark.parametrize("optarg", [None, "-x", "-o opt  with spaces"])
def test_script_runs_under_its_verified_interpreter(
    tmp_path: Path,
    interp: Path,
    ec_key: imaguard.PrivateKey,
    ec_ring: imaguard.Keyring,
    optarg: str | None,
) -> None:
    text = script_text(interp, optarg)
    script = write_signed(tmp_path / "script", text, ec_key)
    with prepare_exec([str(script), "a b", "", "ünï"], ec_ring) as prepared:
        assert [v.target for v in prepared.checked] == [str(script), str(interp)]
        assert all(v.passed for v in prepared.checked)
        assert len(prepared.pass_fds) == 1
        fd = prepared.pass_fds[0]
        expected = [
            str(interp),
            *([optarg] if optarg else []),
            f"/proc/self/fd/{fd}",
            "a b",
            "",
            "ünï",
        ]
        assert prepared.argv == expected
        code, out = spawn_capture(prepared)
    probe = parse_probe(out)
    assert code == 7  # the interpreter read "EXIT 7" from the handed-over script
    assert probe.banner == "PROBE"
    assert probe.argv == expected
    assert probe.script == text.decode()  # the verified bytes of the script

    # The kernel, running the script directly, gives the same argv but the script's path.
    r = subprocess.run(
        [str(script), "a b", "", "ünï"],
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
        env={**os.environ, "PROBE_SCRIPT": str(script)},
    )
    direct = parse_probe(r.stdout)
    assert r.returncode == 7
    assert direct.script == text.decode()
    assert direct.argv == [*expected[:-4], str(script), "a b", "", "ünï"]


def test_interpreter_swapped_for_an_unsigned_one_is_refused(
    tmp_path: Path,
    programs: Programs,
    interp: Path,
    ec_key: imaguard.PrivateKey,
    ec_ring: imaguard.Keyring,
) -> None:
    script = write_signed(tmp_path / "script", script_text(interp), ec_key)
    assert spawn_verified_capture([str(script)], ec_ring)[0] == 7

    # Prepared first, swapped afterwards: the verified interpreter still runs.
    with prepare_exec([str(script)], ec_ring) as prepared:
        install(programs.evil_probe, tmp_path / "evil")
        os.rename(tmp_path / "evil", interp)
        code, out = spawn_capture(prepared)
    assert (code, parse_probe(out).banner) == (7, "PROBE")

    # The next run sees the unsigned interpreter (a new inode, no value): refused.
    with pytest.raises(ExecRefused) as e:
        prepare_exec([str(script)], ec_ring)
    assert str(e.value) == (
        f"{interp}: no-xattr (IMA-signature-required) - no value stored for this file"
    )

    # The interpreter's inode rewritten in place (it keeps the old signature): refused too.
    install(programs.probe, interp, ec_key)
    assert spawn_verified_capture([str(script)], ec_ring)[0] == 7
    with open(interp, "r+b") as f:
        f.write(programs.evil_probe.read_bytes())
    with pytest.raises(
        ExecRefused, match=rf"^{re.escape(str(interp))}: fail \(invalid-signature\)"
    ):
        prepare_exec([str(script)], ec_ring)
    r = subprocess.run([str(script)], capture_output=True, timeout=TIMEOUT, check=False)
    assert r.stdout.startswith(MARKER.encode())  # what the kernel alone would have run


def test_shebang_naming_an_unsigned_interpreter_is_refused_by_the_cli(
    tmp_path: Path,
    programs: Programs,
    ec_key: imaguard.PrivateKey,
    ring_dir: Path,
) -> None:
    unsigned = install(programs.evil_probe, tmp_path / "unsigned-interp")
    script = write_signed(tmp_path / "script", script_text(unsigned), ec_key)
    r = imaguard_exec(ring_dir, script)
    assert r.returncode == 126
    assert r.stdout == b""
    assert r.stderr.decode() == (
        f"imaguard: exec refused: {unsigned}: no-xattr (IMA-signature-required) - "
        "no value stored for this file\n"
    )


def test_tampered_script_is_refused(
    tmp_path: Path,
    interp: Path,
    ec_key: imaguard.PrivateKey,
    ec_ring: imaguard.Keyring,
    ring_dir: Path,
) -> None:
    text = script_text(interp, exit_code=7)
    script = write_signed(tmp_path / "script", text, ec_key)
    # Verified, then the script is rewritten: the interpreter reads the verified copy.
    with prepare_exec([str(script)], ec_ring) as prepared:
        script.write_bytes(script_text(interp, exit_code=9))  # same inode, same value
        code, out = spawn_capture(prepared)
    assert code == 7
    assert parse_probe(out).script == text.decode()
    # The next run is refused, naming the script.
    with pytest.raises(ExecRefused) as e:
        prepare_exec([str(script)], ec_ring)
    verdict = e.value.verdict
    assert isinstance(verdict, Verdict)
    assert (verdict.target, verdict.cause) == (str(script), "invalid-signature")
    r = imaguard_exec(ring_dir, script)
    assert r.returncode == 126
    assert r.stdout == b""
    assert f"exec refused: {script}: fail (invalid-signature)" in r.stderr.decode()


def test_nested_scripts_each_handed_over_verified(
    tmp_path: Path, interp: Path, ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    inner = write_signed(tmp_path / "inner", script_text(interp, exit_code=5), ec_key)
    outer = write_signed(tmp_path / "outer", f"#!{inner}\nEXIT 6\n".encode(), ec_key)
    with prepare_exec([str(outer), "arg"], ec_ring) as prepared:
        assert [v.target for v in prepared.checked] == [str(outer), str(inner), str(interp)]
        outer_fd, inner_fd = prepared.pass_fds
        assert prepared.argv == [
            str(interp),
            f"/proc/self/fd/{inner_fd}",
            f"/proc/self/fd/{outer_fd}",
            "arg",
        ]
        code, out = spawn_capture(prepared)
    assert code == 5  # the probe reads the first handed-over script: the inner one
    assert parse_probe(out).argv == prepared.argv


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"", id="no-arg"),
        pytest.param(b"  -a  b  c  ", id="spaces"),
        pytest.param(b"\t-a b\t", id="tabs-around"),
        pytest.param(b" -a\tb", id="tab-inside"),
        pytest.param(b" -a\0b", id="nul-inside"),
    ],
)
def test_shebang_argv_matches_the_kernel(
    tmp_path: Path,
    interp: Path,
    ec_key: imaguard.PrivateKey,
    ec_ring: imaguard.Keyring,
    tail: bytes,
) -> None:
    """prepare_exec's argv is the kernel's, but for the script's path (the memfd's)."""
    script = write_signed(tmp_path / "script", b"#!" + bytes(interp) + tail + b"\nEXIT 0\n", ec_key)
    r = subprocess.run([str(script), "x"], capture_output=True, timeout=TIMEOUT, check=False)
    assert r.returncode == 0, r.stderr
    kernel = parse_probe(r.stdout).argv
    assert kernel[-2:] == [str(script), "x"]
    with prepare_exec([str(script), "x"], ec_ring) as prepared:  # not spawned: see below
        assert prepared.argv[:-2] == kernel[:-2]
        assert prepared.argv[-2:] == [f"/proc/self/fd/{prepared.pass_fds[0]}", "x"]


SPAWN_CHILD = r"""
import os, sys
from imaguard.loaders import spawn_verified
parent = os.getpid()
who = lambda: "parent" if os.getpid() == parent else "CHILD"
try:
    code = spawn_verified([sys.argv[1], "a\0b"], sys.argv[2])
    print("returned", code, who(), flush=True)
except ValueError as e:
    print("raised", who(), flush=True)
"""


def test_the_spawned_child_never_returns_into_the_caller(
    tmp_path: Path, programs: Programs, ec_key: imaguard.PrivateKey, ring_dir: Path
) -> None:
    """Run in a child python: a child that returned would otherwise go on running pytest."""
    prog = install(programs.probe, tmp_path / "probe", ec_key)
    r = subprocess.run(
        [sys.executable, "-c", SPAWN_CHILD, str(prog), str(ring_dir)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    lines = r.stdout.splitlines()
    assert not [line for line in lines if "CHILD" in line], lines
    assert lines in (["raised parent"], ["returned 126 parent"]), lines


# --- setuid -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o4755, 0o2755])
def test_setuid_or_setgid_program_is_refused(
    tmp_path: Path,
    programs: Programs,
    ec_key: imaguard.PrivateKey,
    ec_ring: imaguard.Keyring,
    ring_dir: Path,
    mode: int,
) -> None:
    prog = install(programs.signed_hello, tmp_path / "suid", ec_key)
    prog.chmod(mode)
    assert prog.stat().st_mode & 0o7777 == mode
    assert imaguard.appraise(prog, ec_ring).passed  # the signature itself is fine
    with pytest.raises(ExecRefused) as e:
        prepare_exec([str(prog)], ec_ring)
    assert str(e.value) == (
        f"{prog}: a setuid/setgid program cannot be run from a verified copy "
        "(executing a memfd drops the setuid bit); run it directly"
    )
    # Refused in log mode too: log mode is about signatures, not about setuid.
    with pytest.raises(ExecRefused, match="setuid/setgid"):
        prepare_exec([str(prog)], ec_ring, mode="log")
    r = imaguard_exec(ring_dir, prog)
    assert r.returncode == 126
    assert r.stdout == b""
    assert "a setuid/setgid program cannot be run from a verified copy" in r.stderr.decode()


def test_setuid_interpreter_is_refused(
    tmp_path: Path, interp: Path, ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    script = write_signed(tmp_path / "script", script_text(interp), ec_key)
    interp.chmod(0o4755)
    with pytest.raises(ExecRefused, match=rf"^{re.escape(str(interp))}: a setuid/setgid"):
        prepare_exec([str(script)], ec_ring)


# --- the ELF loader (PT_INTERP) ---------------------------------------------------------


def test_dynamic_program_with_a_signed_loader_copy_runs(
    tmp_path: Path,
    programs: Programs,
    signed_ldso: Path,
    ec_key: imaguard.PrivateKey,
    ec_ring: imaguard.Keyring,
    ring_dir: Path,
) -> None:
    prog = install(programs.dyn_hello, tmp_path / "dyn", ec_key)
    with prepare_exec([str(prog)], ec_ring) as prepared:
        assert [(v.target, v.passed) for v in prepared.checked] == [
            (str(prog), True),
            (str(signed_ldso), True),
        ]
        assert spawn_capture(prepared) == (0, b"SIGNED\n")
    r = imaguard_exec(ring_dir, prog)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"SIGNED\n", b"")


def test_dynamic_program_with_an_unsigned_loader(
    tmp_path: Path,
    programs: Programs,
    signed_ldso: Path,
    ec_key: imaguard.PrivateKey,
    ec_ring: imaguard.Keyring,
    ring_dir: Path,
) -> None:
    prog = install(programs.dyn_hello_unsigned_loader, tmp_path / "dyn", ec_key)
    loader = programs.ldso_dir / "ld-unsigned.so"
    with pytest.raises(ExecRefused) as e:
        prepare_exec([str(prog)], ec_ring)
    assert str(e.value).startswith(f"{loader}: no-xattr (IMA-signature-required)")
    r = imaguard_exec(ring_dir, prog)
    assert r.returncode == 126
    assert f"exec refused: {loader}: no-xattr" in r.stderr.decode()
    # Trusted: the program itself is still verified, the loader is not looked at.
    with prepare_exec([str(prog)], ec_ring, verify_loader=False) as prepared:
        assert [v.target for v in prepared.checked] == [str(prog)]
        assert spawn_capture(prepared) == (0, b"SIGNED\n")
    r = imaguard_exec(ring_dir, prog, options=["--trust-loader"])
    assert (r.returncode, r.stdout) == (0, b"SIGNED\n")


def test_system_program_needs_trust_loader(
    tmp_path: Path, ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring, ring_dir: Path
) -> None:
    """A signed copy of /bin/echo: the system's loader is not signed (and is not touched)."""
    echo = shutil.which("echo")
    assert echo is not None
    prog = install(Path(echo), tmp_path / "echo", ec_key)
    with pytest.raises(ExecRefused, match=rf"^{re.escape(SYSTEM_LDSO)}: no-xattr"):
        prepare_exec([str(prog), "hi"], ec_ring)
    r = imaguard_exec(ring_dir, prog, "hi")
    assert r.returncode == 126
    assert f"exec refused: {SYSTEM_LDSO}: no-xattr (IMA-signature-required)" in r.stderr.decode()
    r = imaguard_exec(ring_dir, prog, "hello", "world", options=["--trust-loader"])
    assert (r.returncode, r.stdout) == (0, b"hello world\n")


# --- a 200 MiB program --------------------------------------------------------------------

MEASURE = r"""
import json, os, resource, sys, time
from imaguard.loaders import prepare_exec

def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")

prog, ring = sys.argv[1:3]
before = hwm_kb()
t = time.monotonic()
prepared = prepare_exec([prog], ring)
took = time.monotonic() - t
after = hwm_kb()
memfd_kb = os.fstat(prepared.exec_fd).st_blocks // 2
sys.stdout.flush()
pid = prepared.spawn()
_, status = os.waitpid(pid, 0)
print(json.dumps({
    "hwm_before_kb": before,
    "hwm_after_prepare_kb": after,
    "prepare_s": took,
    "memfd_kb": memfd_kb,
    "exit": os.waitstatus_to_exitcode(status),
    "child_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
}))
"""

RUSAGE = r"""
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True)
maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stdout.write(f"{r.returncode} {maxrss} {r.stdout!r} {r.stderr!r}\n")
"""


def test_a_200_mib_program_runs(
    tmp_path: Path,
    programs: Programs,
    ec_key: imaguard.PrivateKey,
    ring_dir: Path,
) -> None:
    size = 200 << 20
    prog = install(programs.signed_hello, tmp_path / "big")
    with open(prog, "r+b") as f:  # zeros after the ELF image (real blocks, not a hole)
        f.seek(0, os.SEEK_END)
        zeros = bytes(1 << 20)
        while f.tell() < size:
            f.write(zeros[: size - f.tell()])
    assert prog.stat().st_size == size
    try:
        imaguard.sign_file(prog, ec_key, "sha256")
        r = subprocess.run(
            [sys.executable, "-c", MEASURE, str(prog), str(ring_dir)],
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        lines = r.stdout.decode().splitlines()
        assert lines[0] == "SIGNED"
        doc = json.loads(lines[-1])
        assert doc["exit"] == 0
        assert doc["hwm_after_prepare_kb"] > 0
        assert doc["memfd_kb"] >= size // 1024  # the sealed copy is all in memory (shmem)

        t = time.monotonic()
        cli = subprocess.run(
            [
                sys.executable,
                "-c",
                RUSAGE,
                str(IMAGUARD),
                "exec",
                "--keyring",
                str(ring_dir),
                "--",
                str(prog),
            ],
            capture_output=True,
            timeout=TIMEOUT,
            check=True,
            text=True,
        )
        cli_s = time.monotonic() - t
        code, maxrss, out, _ = cli.stdout.split(" ", 3)
        assert (code, out) == ("0", repr(b"SIGNED\n"))
        print(
            f"\n200 MiB program: prepare_exec {doc['prepare_s']:.2f} s; python VmHWM "
            f"{doc['hwm_before_kb'] / 1024:.1f} MiB before, "
            f"{doc['hwm_after_prepare_kb'] / 1024:.1f} MiB after prepare_exec, plus the sealed "
            f"memfd {doc['memfd_kb'] / 1024:.1f} MiB (shmem, not in RSS); the spawned child "
            f"(forked python, then the program) maxrss {doc['child_maxrss_kb'] / 1024:.1f} MiB; "
            f"`imaguard exec` (one process, "
            f"python then the program) maxrss {int(maxrss) / 1024:.1f} MiB in {cli_s:.2f} s"
        )
    finally:
        prog.unlink()


# --- argv, environment and exit codes ---------------------------------------------------

ARGS = ["with space", "", "ünïcödé ✓", "--keyring", "-", "tab\there", "a" * 1000]


def test_argv_and_environment_are_preserved(
    tmp_path: Path,
    programs: Programs,
    ec_key: imaguard.PrivateKey,
    ec_ring: imaguard.Keyring,
    ring_dir: Path,
) -> None:
    prog = install(programs.probe, tmp_path / "probe", ec_key)
    env = {"PROBE_VAR": "välue with spaces"}
    code, out = spawn_verified_capture([str(prog), *ARGS], ec_ring, env=env)
    probe = parse_probe(out)
    assert code == 0
    assert probe.argv == [str(prog), *ARGS]
    assert probe.env == "välue with spaces"

    # argv[0] is kept as given (a bare name found in $PATH stays a bare name).
    path_env = {**os.environ, "PATH": f"{tmp_path}:{os.environ.get('PATH', '')}"}
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = path_env["PATH"]
    try:
        code, out = spawn_verified_capture(["probe", "x"], ec_ring, env={})
    finally:
        os.environ["PATH"] = old_path
    assert code == 0
    assert parse_probe(out).argv == ["probe", "x"]
    assert parse_probe(out).env == "(unset)"  # env={} is the whole environment

    r = imaguard_exec(ring_dir, prog, *ARGS, env={**os.environ, "PROBE_VAR": "from the CLI"})
    assert r.returncode == 0, r.stderr
    assert parse_probe(r.stdout).argv == [str(prog), *ARGS]
    assert parse_probe(r.stdout).env == "from the CLI"


@pytest.mark.parametrize("exit_code", [0, 3, 255])
def test_exit_codes_pass_through(
    tmp_path: Path,
    programs: Programs,
    ec_key: imaguard.PrivateKey,
    ec_ring: imaguard.Keyring,
    ring_dir: Path,
    exit_code: int,
) -> None:
    prog = install(programs.probe, tmp_path / "probe", ec_key)
    env = {"PROBE_EXIT": str(exit_code)}
    assert spawn_verified_capture([str(prog)], ec_ring, env=env)[0] == exit_code
    r = imaguard_exec(ring_dir, prog, env={**os.environ, **env})
    assert r.returncode == exit_code


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGSEGV])
def test_a_signal_passes_through(
    tmp_path: Path,
    programs: Programs,
    ec_key: imaguard.PrivateKey,
    ec_ring: imaguard.Keyring,
    ring_dir: Path,
    sig: signal.Signals,
) -> None:
    prog = install(programs.probe, tmp_path / "probe", ec_key)
    env = {"PROBE_SIGNAL": str(int(sig))}
    assert spawn_verified_capture([str(prog)], ec_ring, env=env)[0] == -sig
    # The CLI execs the program in its own process: its parent sees the signal itself ...
    r = imaguard_exec(ring_dir, prog, env={**os.environ, **env})
    assert r.returncode == -sig
    # ... and a shell reports it as 128 + the signal number.
    sh = subprocess.run(
        [
            "sh",
            "-c",
            '"$@" >/dev/null 2>&1; echo "status=$?"',
            "sh",
            str(IMAGUARD),
            "exec",
            "--keyring",
            str(ring_dir),
            "--",
            str(prog),
        ],
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
        env={**os.environ, **env},
    )
    assert sh.stdout.splitlines()[-1] == f"status={128 + sig}".encode()


# --- log mode ---------------------------------------------------------------------------------


def test_log_mode_runs_an_unsigned_program_and_says_so(
    tmp_path: Path, programs: Programs, ec_ring: imaguard.Keyring, ring_dir: Path
) -> None:
    prog = install(programs.unsigned_hello, tmp_path / "unsigned")
    with pytest.raises(ExecRefused):
        prepare_exec([str(prog)], ec_ring)
    failure = f"{prog}: no-xattr (IMA-signature-required) - no value stored for this file"
    with prepare_exec([str(prog)], ec_ring, mode="log") as prepared:
        assert prepared.failures == [failure]
        assert [v.passed for v in prepared.checked] == [False]
        assert spawn_capture(prepared) == (0, MARKER.encode() + b"\n")
    assert spawn_verified_capture([str(prog)], ec_ring, mode="log") == (0, MARKER.encode() + b"\n")

    r = imaguard_exec(ring_dir, prog, options=["--mode", "log"])
    assert r.returncode == 0
    assert r.stdout == MARKER.encode() + b"\n"
    assert f"imaguard: log mode: running anyway: {failure}" in r.stderr.decode().splitlines()
    r = imaguard_exec(ring_dir, prog)
    assert r.returncode == 126
    assert r.stdout == b""
