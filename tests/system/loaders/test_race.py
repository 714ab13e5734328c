"""Check-then-use races: a writer changes PROGRAM while it is run.

The writer (a child process, so no GIL is shared with the test) loops as fast as it can:

* **rename swap**: ``prog`` is pointed in turn at three inodes with ``link`` + ``rename``:
  ``S`` (signed, prints SIGNED), ``U`` (unsigned, prints UNSIGNED-MARKER) and ``victim``;
* **in-place writes**: ``victim`` (which carries S's signature) is rewritten in place,
  alternately with U's bytes and S's bytes (same size: the two programs differ only in
  their message).

The verified loader must never run the marker: each run prints SIGNED or is refused. A
naive check-then-exec loop (``imaguard.appraise(path)``, then ``subprocess.run([path])``)
under the same writer must be caught running it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import imaguard
from imaguard.appraise import Verdict
from imaguard.loaders import ExecRefused, prepare_exec

from .conftest import MARKER, TIMEOUT, Programs, imaguard_exec, install, spawn_capture

RUNS = 2000
CLI_RUNS = 20
NAIVE_SECONDS = 10.0
NAIVE_ENOUGH = 10
DWELL = 0.0005
"""Seconds the writer leaves ``prog`` on each inode (a swap every half millisecond)."""
SIGNED_OUT = b"SIGNED\n"
MARKER_OUT = MARKER.encode() + b"\n"

WRITER = r"""
import errno, os, sys, time
d = sys.argv[1]
dwell = float(sys.argv[2])
S, U, V, prog, tmp = (os.path.join(d, n) for n in ("S", "U", "victim", "prog", ".swap"))
good = open(S, "rb").read()
bad = open(U, "rb").read()
assert len(good) == len(bad)
sys.stdout.write("ready\n")
sys.stdout.flush()
i = 0
while True:
    # rename swap: prog -> S, U, victim, S, U, victim, ... (left there for `dwell` s)
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.link((S, U, V)[i % 3], tmp)
    os.rename(tmp, prog)
    if dwell:
        time.sleep(dwell)
    # in-place write of victim: U's bytes, then S's bytes, ...
    try:
        fd = os.open(V, os.O_WRONLY)
    except OSError as e:
        if e.errno != errno.ETXTBSY:  # victim is being executed (the naive loop)
            raise
    else:
        os.pwrite(fd, bad if i % 2 == 0 else good, 0)
        os.close(fd)
    i += 1
"""


@pytest.fixture
def arena(tmp_path: Path, programs: Programs, ec_key: imaguard.PrivateKey) -> Path:
    """tmp_path/arena with S (signed), U (unsigned), victim (signed) and prog -> S."""
    d = tmp_path / "arena"
    d.mkdir()
    install(programs.signed_hello, d / "S", ec_key)
    install(programs.unsigned_hello, d / "U")
    install(programs.signed_hello, d / "victim", ec_key)
    os.link(d / "S", d / "prog")
    return d


@contextlib.contextmanager
def writer(arena: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The racing writer, running until the block ends (then killed by its PID)."""
    p = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(arena), str(DWELL)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert p.stdout is not None
        assert p.stdout.readline() == b"ready\n"
        time.sleep(0.05)
        assert p.poll() is None, "the writer died"
        yield p
        assert p.poll() is None, "the writer died"  # still racing at the end
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=TIMEOUT)
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()


def test_verified_loader_never_runs_the_swapped_bytes(
    arena: Path, ec_ring: imaguard.Keyring
) -> None:
    prog = str(arena / "prog")
    outcomes: collections.Counter[tuple[int, bytes]] = collections.Counter()
    refusals: list[ExecRefused] = []
    with writer(arena):
        for _ in range(RUNS):
            try:
                prepared = prepare_exec([prog], ec_ring)
            except ExecRefused as e:
                refusals.append(e)
                continue
            with prepared:
                assert prepared.checked[0].passed
                assert prepared.failures == []
                outcomes[spawn_capture(prepared)] += 1
    verdicts = [e.verdict for e in refusals]
    assert all(isinstance(v, Verdict) and v.target == prog for v in verdicts)
    causes = collections.Counter(v.cause for v in verdicts if isinstance(v, Verdict))
    print(f"\nverified loader, {RUNS} runs under the writer: ran {dict(outcomes)}, ", end="")
    print(f"refused {dict(causes)}")
    assert set(outcomes) == {(0, SIGNED_OUT)}, outcomes  # never the marker, never anything else
    assert outcomes[(0, SIGNED_OUT)] + sum(causes.values()) == RUNS
    # The race was live: the unsigned inode (no value) and the rewritten victim (bytes that
    # no longer match its signature) were both met, and signed runs still went through.
    assert causes["IMA-signature-required"] > 0
    assert causes["invalid-signature"] > 0
    assert outcomes[(0, SIGNED_OUT)] > 0


def test_imaguard_exec_cli_never_runs_the_swapped_bytes(arena: Path, ring_dir: Path) -> None:
    results: collections.Counter[tuple[int, bytes]] = collections.Counter()
    with writer(arena):
        for _ in range(CLI_RUNS):
            r = imaguard_exec(ring_dir, arena / "prog")
            if r.returncode == 126:
                assert r.stdout == b""
                assert r.stderr.startswith(
                    b"imaguard: exec refused: " + bytes(arena / "prog") + b": "
                )
                results[(126, b"refused")] += 1
            else:
                assert MARKER.encode() not in r.stdout
                results[(r.returncode, r.stdout)] += 1
    print(f"\nimaguard exec, {CLI_RUNS} runs under the writer: {dict(results)}")
    assert set(results) <= {(0, SIGNED_OUT), (126, b"refused")}, results
    assert sum(results.values()) == CLI_RUNS


def test_naive_check_then_exec_runs_the_unsigned_bytes(
    arena: Path, ec_ring: imaguard.Keyring
) -> None:
    """The control: verify the path, then exec the path. The writer gets in between."""
    prog = str(arena / "prog")
    outcomes: collections.Counter[str] = collections.Counter()
    tries = 0
    with writer(arena):
        deadline = time.monotonic() + NAIVE_SECONDS
        while time.monotonic() < deadline and outcomes["MARKER"] < NAIVE_ENOUGH:
            tries += 1
            if not imaguard.appraise(prog, ec_ring).passed:
                outcomes["refused"] += 1
                continue
            try:
                r = subprocess.run([prog], capture_output=True, timeout=TIMEOUT, check=False)
            except OSError as e:  # ETXTBSY: the writer had the victim open
                outcomes[f"exec failed: {e.strerror}"] += 1
                continue
            if r.stdout == MARKER_OUT:
                outcomes["MARKER"] += 1
            elif r.stdout == SIGNED_OUT:
                outcomes["signed"] += 1
            else:
                outcomes[f"other (status {r.returncode})"] += 1
    print(f"\nnaive check-then-exec under the writer, {tries} checks: {dict(outcomes)}")
    assert outcomes["MARKER"] > 0, f"the naive loop never ran the unsigned bytes: {outcomes}"


def test_swap_between_check_and_exec_deterministic(arena: Path, ec_ring: imaguard.Keyring) -> None:
    """The same race with the swap done exactly between the check and the exec."""
    prog = arena / "prog"

    def swap_to_unsigned() -> None:
        os.link(arena / "U", arena / ".swap")
        os.rename(arena / ".swap", prog)

    # Naive: the check passes on S, the exec runs U.
    assert imaguard.appraise(prog, ec_ring).passed
    swap_to_unsigned()
    r = subprocess.run([str(prog)], capture_output=True, timeout=TIMEOUT, check=True)
    assert r.stdout == MARKER_OUT

    # In-place: the check passes on the signed victim, then its bytes are rewritten.
    os.link(arena / "victim", arena / ".swap")
    os.rename(arena / ".swap", prog)
    assert imaguard.appraise(prog, ec_ring).passed
    with open(prog, "r+b") as f:
        f.write((arena / "U").read_bytes())
    r = subprocess.run([str(prog)], capture_output=True, timeout=TIMEOUT, check=True)
    assert r.stdout == MARKER_OUT
    shutil.copyfile(arena / "S", arena / "victim")  # back to the signed bytes (same inode)

    # The verified loader: prepared (verified) on S; swapped and rewritten; runs S's bytes.
    os.link(arena / "S", arena / ".swap")
    os.rename(arena / ".swap", prog)
    with prepare_exec([str(prog)], ec_ring) as prepared:
        swap_to_unsigned()
        assert spawn_capture(prepared) == (0, SIGNED_OUT)
    os.link(arena / "victim", arena / ".swap")
    os.rename(arena / ".swap", prog)
    with prepare_exec([str(prog)], ec_ring) as prepared:
        with open(prog, "r+b") as f:
            f.write((arena / "U").read_bytes())
        assert spawn_capture(prepared) == (0, SIGNED_OUT)
    # ... and the next run is refused, naming the file and the cause.
    with pytest.raises(ExecRefused, match=r"prog: fail \(invalid-signature\)"):
        prepare_exec([str(prog)], ec_ring)
