"""The measurement log survives a writer killed with SIGKILL at random moments.

A writer process (forked from this already-imported test process, so a trial costs a
fork, not an interpreter start) opens the state directory's :class:`LogStore` and appends
entries; before each append it tells the parent ``B seq`` through a pipe and, once the
append has returned (the entry is durable: ``fdatasync``), ``A seq PCR``: the
acknowledgement, with the PCR 10 value (sha256 bank) the writer holds then. The parent
kills it with SIGKILL after a random delay, reopens the log and checks:

* every acknowledged entry is present, byte-exact and in order, and the log holds nothing
  but whole records the writer asked for (unacknowledged ones may be there: they were
  written when the kill landed);
* the log replays (an independent replay: hashlib and the kernel's rules, in
  helpers.measure) to the PCR value the writer acknowledged with, and to what the
  reopened store holds; with a TPM (swtpm), to the TPM's PCRs, after the store has
  extended the entries a kill left logged but not extended (``OpenReport.re_extended``);
* a record cut short by the kill (a torn tail) is truncated and reported
  (``OpenReport.torn_bytes`` and a warning from ``imaguard.measure._logstore``).

Every fourth append is a batch of eight 8 KiB entries written with one ``write`` of
~66 KB (17 pages), so that a kill can land inside the copy and leave a torn tail, as a
crash does. The figures are printed (``pytest -s``) and recorded in docs/reliability.md.

The kernel's IMA keeps its list in memory and never loses an entry it returned from;
here the log is a file, and "returned" means durable (docs/architecture.md).
"""

from __future__ import annotations

import logging
import os
import random
import select
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.measure import Swtpm, content_for, replay_binary
from imaguard.formats.measurelist import iter_binary, serialize_binary
from imaguard.formats.template import TemplateDescriptor, TemplateEntry
from imaguard.measure import LogStore, buffer_entry, violation_entry

LOG = "binary_runtime_measurements"
NG = TemplateDescriptor.lookup("ima-ng")
TRIALS = int(os.environ.get("IMAGUARD_CRASH_TRIALS", "1000"))
"""SIGKILL trials with software PCRs (IMAGUARD_CRASH_TRIALS sets another number)."""
TPM_TRIALS = int(os.environ.get("IMAGUARD_CRASH_TPM_TRIALS", "200"))
"""SIGKILL trials with a TPM (swtpm) holding the PCRs."""
PER_STATE = 5
"""Trials per state directory: a fresh log now and then keeps each reopen cheap."""
MAX_DELAY = 0.025
"""The kill lands 0..MAX_DELAY s after the writer opened the log (a few to ~20 appends)."""
TRIAL_TIMEOUT = 20.0
"""Seconds one trial may take before the test fails (a hung writer is killed anyway)."""
_STORE_LOG = "imaguard.measure._logstore"


def batch(trial: int, seq: int) -> list[TemplateEntry]:
    """What the writer appends as its ``seq``-th append in ``trial`` (deterministic)."""
    if seq % 4 == 3:
        return [
            buffer_entry(f"t{trial}/s{seq}/{i}", content_for(f"{trial}/{seq}/{i}", 8192))
            for i in range(8)
        ]
    if seq % 5 == 4:
        return [violation_entry(f"/crash/t{trial}/s{seq}", NG)]
    return [buffer_entry(f"t{trial}/s{seq}", f"trial {trial} append {seq}\n".encode())]


def _writer(state: Path, trial: int, out: int, tpm: str | None) -> None:
    """The child: append until killed, reporting each append before and after."""
    store = LogStore(state, tpm=tpm)
    os.write(out, b"R\n")
    seq = 0
    while True:
        os.write(out, f"B {seq}\n".encode())
        store.append_many(batch(trial, seq))
        pcr = store.soft.values["sha256"][10].hex()
        os.write(out, f"A {seq} {pcr}\n".encode())
        seq += 1


@dataclass
class Trial:
    began: int = 0
    acked: int = 0
    pcr: str | None = None
    ready: bool = False


def _read_lines(fd: int, buf: bytearray, trial: Trial) -> bool:
    """Read what is there; False at end of file."""
    chunk = os.read(fd, 65536)
    if not chunk:
        return False
    buf += chunk
    *lines, rest = bytes(buf).split(b"\n")
    buf[:] = rest
    for line in lines:
        word, *args = line.decode().split()
        if word == "R":
            trial.ready = True
        elif word == "B":
            trial.began = int(args[0]) + 1
        elif word == "A":
            assert int(args[0]) == trial.acked, line
            trial.acked = int(args[0]) + 1
            trial.pcr = args[1]
    return True


def run_trial(state: Path, n: int, rng: random.Random, tpm: str | None) -> Trial:
    """Fork a writer, kill it with SIGKILL ``rng`` seconds after it is ready; what it said."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns; coverage is not saved
        code = 0
        try:
            os.close(r)
            _writer(state, n, w, tpm)
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    trial = Trial()
    buf = bytearray()
    deadline = time.monotonic() + TRIAL_TIMEOUT
    kill_at: float | None = None
    open_ = True
    status: int | None = None
    try:
        while open_:
            now = time.monotonic()
            if trial.ready and kill_at is None:
                kill_at = now + rng.uniform(0, MAX_DELAY)
            until = kill_at if kill_at is not None else deadline
            if now >= until:
                break
            ready, _, _ = select.select([r], [], [], until - now)
            if ready:
                open_ = _read_lines(r, buf, trial)
        assert time.monotonic() < deadline, f"trial {n}: the writer never got going"
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        while open_:
            open_ = _read_lines(r, buf, trial)
    finally:
        os.close(r)
        if status is None:  # pragma: no cover - only when the test failed meanwhile
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    ended = f"trial {n}: the writer ended by itself (status {status:#x}), {trial.acked} appends"
    assert os.WIFSIGNALED(status), ended
    assert os.WTERMSIG(status) == signal.SIGKILL, ended
    return trial


@dataclass
class Figures:
    trials: int = 0
    mid_append: int = 0
    unacked_present: int = 0
    """Entries found whole in the log though the kill came before their acknowledgement."""
    torn_tails: int = 0
    torn_bytes: int = 0
    re_extended: int = 0
    acked: int = 0
    lost: int = 0
    seconds: float = 0.0

    def line(self, what: str) -> str:
        return (
            f"{what}: {self.trials} trials in {self.seconds:.1f} s; "
            f"kills mid-append {self.mid_append}; unacknowledged entries found written "
            f"{self.unacked_present}; torn tails truncated {self.torn_tails} "
            f"({self.torn_bytes} bytes); TPM re-extended {self.re_extended}; "
            f"acknowledged appends {self.acked}; entries lost {self.lost}"
        )


def check_after_kill(
    state: Path,
    n: int,
    trial: Trial,
    before: bytes,
    figures: Figures,
    caplog: pytest.LogCaptureFixture,
) -> bytes:
    """Reopen the log after trial ``n`` and check it; returns the log's bytes."""
    expected = b"".join(serialize_binary(batch(n, s)) for s in range(trial.began))
    acked_end = len(b"".join(serialize_binary(batch(n, s)) for s in range(trial.acked)))
    caplog.clear()
    with LogStore(state) as store:
        report = store.report
        data = store.raw()
        held = store.pcrs()
        tpm_pcrs = store.backend.read([10]) if store.backend is not None else None
        banks = store.banks
    assert data.startswith(before), f"trial {n}: the log before this trial changed"
    new = data[len(before) :]
    # Nothing but whole records the writer asked for, in order, byte for byte ...
    assert new == expected[: len(new)], f"trial {n}: the log holds bytes nobody appended"
    whole = len(list(iter_binary(new)))  # raises at a record cut short: none may stay
    # ... and every acknowledged one (counted, so that the figure says how many went).
    acked_entries = len(list(iter_binary(expected[:acked_end])))
    figures.lost += max(0, acked_entries - whole)
    replayed = replay_binary(data, banks)
    assert held == replayed, f"trial {n}: the store's PCRs differ from the log's replay"
    if trial.pcr is not None and whole >= acked_entries:
        at_ack = replay_binary(before + expected[:acked_end], banks)
        assert at_ack["sha256"][10].hex() == trial.pcr, (
            f"trial {n}: the log does not replay to the PCR the writer acknowledged with"
        )
    if tpm_pcrs is not None:
        in_tpm = {b: v[10] for b, v in tpm_pcrs.items()}
        assert in_tpm == {b: v[10] for b, v in replayed.items()}, (
            f"trial {n}: the TPM's PCR 10 is not the log's replay"
        )
    if report.torn_bytes:
        figures.torn_tails += 1
        figures.torn_bytes += report.torn_bytes
        assert any(
            rec.name == _STORE_LOG
            and rec.levelno == logging.WARNING
            and "torn tail" in rec.getMessage()
            for rec in caplog.records
        ), f"trial {n}: a torn tail was truncated without a warning"
        assert (state / LOG).stat().st_size == len(data)
    figures.re_extended += report.re_extended
    figures.trials += 1
    figures.acked += trial.acked
    if trial.began > trial.acked:
        figures.mid_append += 1
    figures.unacked_present += max(0, whole - acked_entries)
    return data


def _states(base: Path, tpm: Swtpm | None) -> Iterator[tuple[Path, bytes]]:
    """A fresh state directory (with its boot_aggregate) every PER_STATE trials."""
    k = 0
    while True:
        state = base / f"state{k}"
        if tpm is not None:
            tpm.reset()  # power-on PCRs for the new log
        with LogStore(state, tpm=tpm.tcti if tpm is not None else None) as s:
            first = s.raw()
        yield state, first
        k += 1


def campaign(
    base: Path, trials: int, seed: int, caplog: pytest.LogCaptureFixture, tpm: Swtpm | None
) -> Figures:
    caplog.set_level(logging.INFO, logger=_STORE_LOG)
    rng = random.Random(seed)
    figures = Figures()
    start = time.monotonic()
    states = _states(base, tpm)
    data = b""
    state = base
    for n in range(trials):
        if n % PER_STATE == 0:
            state, data = next(states)
        trial = run_trial(state, n, rng, tpm.tcti if tpm is not None else None)
        data = check_after_kill(state, n, trial, data, figures, caplog)
    figures.seconds = time.monotonic() - start
    return figures


def test_sigkill_software_pcrs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    figures = campaign(tmp_path, TRIALS, 20261205, caplog, None)
    print("\n" + figures.line("SIGKILL, software PCRs"))
    assert figures.trials == TRIALS
    assert figures.lost == 0
    assert figures.acked > TRIALS // 2, "the writers were killed before they appended much"
    assert figures.mid_append > 0, "no kill landed inside an append"


def test_sigkill_tpm(tmp_path: Path, tpm: Swtpm, caplog: pytest.LogCaptureFixture) -> None:
    figures = campaign(tmp_path, TPM_TRIALS, 1205, caplog, tpm)
    print("\n" + figures.line("SIGKILL, TPM (swtpm)"))
    assert figures.trials == TPM_TRIALS
    assert figures.lost == 0
    assert figures.mid_append > 0, "no kill landed inside an append"
    # The independent view of the TPM agrees with the last log's replay.
    last = max(tmp_path.glob("state*"), key=lambda p: int(p.name[5:]))
    replayed = replay_binary((last / LOG).read_bytes())
    assert {b: v[10] for b, v in tpm.pcrread().items()} == {
        b: replayed[b][10].hex() for b in ("sha1", "sha256")
    }
