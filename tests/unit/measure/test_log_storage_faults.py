"""The measurement log when its storage fails: ENOSPC on a small file system, EIO injected.

An append that fails raises one :class:`~imaguard.BackendError` naming the log file and
the errno; nothing of it stays in the file or in the PCRs (software or a TPM's); the store
keeps working, so once space is back the next append succeeds and ``health()`` is ok again.

ENOSPC is real: ext4 in a loop-mounted image (helpers.smallfs; tmpfs where loop devices
are missing) filled up by a file. EIO is injected in-process - the ``os`` module the store
uses is replaced by one whose ``write``/``fdatasync``/``ftruncate`` fail - because this
machine's kernel has no device-mapper (no ``error``/``flakey`` target: ``dmsetup targets``
fails, /dev/mapper/control is missing) and no fault injection (``make-it-fail``).
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.measure import Swtpm, content_for, replay_binary
from helpers.measure import imaguard as run_imaguard
from helpers.smallfs import SmallFs, small_fs
from imaguard.errors import BackendError
from imaguard.formats.measurelist import serialize_binary
from imaguard.measure import LogStore, _logstore, buffer_entry

LOG = "binary_runtime_measurements"
STORE_LOG = "imaguard.measure._logstore"


class Pcrs:
    """Where the test reads PCR 10 from: the store's software PCRs, or the TPM itself
    through tpm2-tools (an outside view)."""

    def __init__(self, tpm: Swtpm | None) -> None:
        self.tpm = tpm
        self.tcti = tpm.tcti if tpm is not None else None

    def read(self, store: LogStore) -> dict[str, str]:
        if self.tpm is not None:
            return {b: v[10] for b, v in self.tpm.pcrread().items()}
        return {b: v[10].hex() for b, v in store.pcrs().items()}


@pytest.fixture(params=["software", "tpm"])
def pcrs(request: pytest.FixtureRequest) -> Pcrs:
    if request.param == "tpm":
        tpm: Swtpm = request.getfixturevalue("tpm")
        return Pcrs(tpm)
    return Pcrs(None)


def replayed(data: bytes) -> dict[str, str]:
    return {b: v[10].hex() for b, v in replay_binary(data).items()}


def verify_cli(state: Path) -> None:
    r = run_imaguard("log", "verify", "--state", state)
    assert r.returncode == 0, r.explain()


def errors_logged(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == STORE_LOG and r.levelno == level]


# -- ENOSPC -------------------------------------------------------------------------------


def test_enospc_fails_cleanly_and_appends_work_again_when_space_returns(
    tmp_path: Path, pcrs: Pcrs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=STORE_LOG)
    with small_fs(tmp_path / "small") as fs:
        state = fs.path / "state"
        log = state / LOG
        big = buffer_entry("too big for the space left", content_for("big", 64 * 1024))
        with LogStore(state, tpm=pcrs.tcti) as store:
            for i in range(5):
                store.append(buffer_entry(f"before/{i}", f"entry {i}".encode()))
            before, pcrs_before = log.read_bytes(), pcrs.read(store)
            assert fs.fill() > 0
            for attempt in (1, 2):  # a failure does not stop the store: the second fails alike
                with pytest.raises(BackendError) as info:
                    store.append(big)
                message = str(info.value)
                assert str(log) in message, message
                assert "ENOSPC" in message, message
                assert "nothing was added" in message, message
                assert log.read_bytes() == before, f"attempt {attempt}: bytes of it stayed"
                assert len(store) == 6
                assert pcrs.read(store) == pcrs_before, "a failed append extended the PCRs"
            health = store.health()
            assert not health.ok
            assert health.failed_appends == 2
            assert health.error is not None
            assert "ENOSPC" in health.error
            assert health.entries == 6
            assert len(errors_logged(caplog, logging.ERROR)) == 1, "one error, not one per try"
        # Still full: the log reopens cleanly (nothing to cut) and replays to its PCRs.
        with LogStore(state, tpm=pcrs.tcti) as store:
            assert store.report.torn_bytes == 0
            assert store.report.entries == 6
            assert replayed(before) == pcrs.read(store)
            with pytest.raises(BackendError, match="ENOSPC"):
                store.append(big)
            fs.free()
            result = store.append(big)
            assert result.added
            assert result.index == 6
            health = store.health()
            assert health.ok
            assert health.error is None
            assert health.failed_appends == 1
            assert health.entries == 7
            assert any("appends work again" in m for m in errors_logged(caplog, logging.WARNING))
            after = log.read_bytes()
            assert after == before + serialize_binary([big])
            assert replayed(after) == pcrs.read(store)
        verify_cli(state)


# -- EIO (injected) -------------------------------------------------------------------------


class FailingOs:
    """Stands for ``os`` inside imaguard.measure._logstore; everything else is the real os.

    ``cut``: the next write writes only that many bytes (for real) and the write after it
    raises EIO, as a device failing part way does. ``sync_failures``: that many fdatasync
    calls raise EIO. ``truncate_fails``: ftruncate raises EIO.
    """

    def __init__(self) -> None:
        self.cut: int | None = None
        self._fail_next_write = False
        self.sync_failures = 0
        self.truncate_fails = False
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def _eio(what: str) -> OSError:
        return OSError(errno.EIO, os.strerror(errno.EIO), what)

    def write(self, fd: int, data: bytes) -> int:
        self.calls.append("write")
        if self._fail_next_write:
            self._fail_next_write = False
            raise self._eio("write")
        if self.cut is not None:
            cut, self.cut = self.cut, None
            self._fail_next_write = True
            return os.write(fd, bytes(data[:cut]))
        return os.write(fd, data)

    def fdatasync(self, fd: int) -> None:
        self.calls.append("fdatasync")
        if self.sync_failures:
            self.sync_failures -= 1
            raise self._eio("fdatasync")
        os.fdatasync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        self.calls.append("ftruncate")
        if self.truncate_fails:
            raise self._eio("ftruncate")
        os.ftruncate(fd, size)


@pytest.fixture
def failing_os(monkeypatch: pytest.MonkeyPatch) -> FailingOs:
    fake = FailingOs()
    monkeypatch.setattr(_logstore, "os", fake)
    return fake


@pytest.fixture
def opened(tmp_path: Path, pcrs: Pcrs) -> Iterator[tuple[LogStore, Path]]:
    state = tmp_path / "state"
    with LogStore(state, tpm=pcrs.tcti) as store:
        for i in range(3):
            store.append(buffer_entry(f"before/{i}", f"entry {i}".encode()))
        yield store, state


BATCH = [buffer_entry(f"batch/{i}", content_for(f"batch/{i}", 300)) for i in range(3)]


def _check_clean_failure(
    store: LogStore, state: Path, pcrs: Pcrs, before: bytes, pcrs_before: dict[str, str]
) -> None:
    with pytest.raises(BackendError) as info:
        store.append_many(BATCH)
    message = str(info.value)
    assert str(state / LOG) in message, message
    assert "EIO" in message, message
    assert (state / LOG).read_bytes() == before, "bytes of the failed batch stayed"
    assert pcrs.read(store) == pcrs_before, "a failed append extended the PCRs"
    assert len(store) == 4
    health = store.health()
    assert not health.ok
    assert health.failed_appends == len(BATCH)


def _check_recovered(store: LogStore, state: Path, pcrs: Pcrs, before: bytes) -> None:
    # The same entries again: the failed batch left no trace in the duplicate check either.
    results = store.append_many(BATCH)
    assert [(r.added, r.index) for r in results] == [(True, 4), (True, 5), (True, 6)]
    assert store.health().ok
    after = (state / LOG).read_bytes()
    assert after == before + serialize_binary(BATCH)
    assert replayed(after) == pcrs.read(store)


@pytest.mark.parametrize("fault", ["write part way", "fdatasync"])
def test_eio_fails_cleanly_and_appends_work_again(
    opened: tuple[LogStore, Path], pcrs: Pcrs, failing_os: FailingOs, fault: str
) -> None:
    store, state = opened
    before, pcrs_before = (state / LOG).read_bytes(), pcrs.read(store)
    if fault == "fdatasync":
        failing_os.sync_failures = 1  # the batch is written whole; its sync fails
    else:
        failing_os.cut = 100  # 100 bytes of the batch land, then EIO
    _check_clean_failure(store, state, pcrs, before, pcrs_before)
    assert "ftruncate" in failing_os.calls, "the store did not cut the file back"
    _check_recovered(store, state, pcrs, before)
    verify_cli(state)


def test_eio_when_the_cut_fails_too_the_store_stops_and_reopening_repairs(
    opened: tuple[LogStore, Path],
    pcrs: Pcrs,
    failing_os: FailingOs,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Half a record stays (the write failed part way and so did the ftruncate): the store
    refuses every later append rather than write after it; reopening truncates the torn
    tail, reports it, and the log is whole again."""
    caplog.set_level(logging.INFO, logger=STORE_LOG)
    store, state = opened
    before, pcrs_before = (state / LOG).read_bytes(), pcrs.read(store)
    failing_os.cut, failing_os.truncate_fails = 100, True
    with pytest.raises(BackendError, match="opened again") as info:
        store.append_many(BATCH)
    assert str(state / LOG) in str(info.value)
    assert (state / LOG).read_bytes() == before + serialize_binary(BATCH)[:100]
    assert pcrs.read(store) == pcrs_before
    monkeypatch.setattr(_logstore, "os", os)  # the storage works again ...
    with pytest.raises(BackendError, match="failed earlier"):
        store.append(buffer_entry("after", b"x"))  # ... but not after half a record
    health = store.health()
    assert not health.ok
    assert health.failed_appends == len(BATCH) + 1
    store.close()
    with LogStore(state, tpm=pcrs.tcti) as reopened:
        assert reopened.report.torn_bytes == 100
        assert reopened.report.entries == 4
        assert any("torn tail of 100 bytes" in m for m in errors_logged(caplog, logging.WARNING))
        assert (state / LOG).read_bytes() == before
        _check_recovered(reopened, state, pcrs, before)
    verify_cli(state)


def test_a_short_write_goes_on_until_everything_is_written(
    opened: tuple[LogStore, Path], failing_os: FailingOs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short write that is not an error (a signal, a file system's partial write) is
    continued: the batch lands whole."""
    store, state = opened
    before = (state / LOG).read_bytes()
    real_write: Callable[[int, bytes], int] = os.write
    sizes: list[int] = []

    def short(fd: int, data: bytes) -> int:
        sizes.append(len(data))
        return real_write(fd, bytes(data[:50]))

    monkeypatch.setattr(failing_os, "write", short)
    store.append_many(BATCH)
    assert len(sizes) > 1
    assert sizes[0] == len(serialize_binary(BATCH))
    assert (state / LOG).read_bytes() == before + serialize_binary(BATCH)
    assert store.health().ok


# -- a log that cannot be opened ----------------------------------------------------------


def test_a_read_only_file_system_is_a_backend_error_naming_the_file(tmp_path: Path) -> None:
    """ext4 turns read-only after a journal failure (errors=remount-ro): reopening the log
    then says so, as an imaguard error, not a bare OSError."""
    with small_fs(tmp_path / "small") as fs:
        state = fs.path / "state"
        with LogStore(state) as store:
            store.append(buffer_entry("one", b"1"))
        r = subprocess.run(
            ["mount", "-o", "remount,ro", str(fs.path)], capture_output=True, check=False
        )
        assert r.returncode == 0, r.stderr
        with pytest.raises(BackendError, match="EROFS") as info:
            LogStore(state)
        assert str(state / "lock") in str(info.value)


def test_a_log_file_that_cannot_be_opened_is_a_backend_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    LogStore(state).close()
    real_open = os.open

    def refuse_log(path: Any, flags: int, mode: int = 0o777) -> int:
        if os.fspath(path).endswith(LOG):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_open(path, flags, mode)

    fake = FailingOs()
    monkeypatch.setattr(fake, "open", refuse_log, raising=False)
    monkeypatch.setattr(_logstore, "os", fake)
    with pytest.raises(BackendError, match="EACCES") as info:
        LogStore(state)
    assert str(state / LOG) in str(info.value)
    monkeypatch.setattr(_logstore, "os", os)
    with LogStore(state) as store:  # the refusal released the lock and changed nothing
        assert store.report.entries == 1


# -- a device that fails at writeback (real: a loop device whose backing store is full) ---


def _sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_a_device_failing_at_writeback_loses_no_acknowledged_entry(tmp_path: Path) -> None:
    """ext4 in a sparse image on a 3 MiB tmpfs: when the tmpfs is full, ext4 still takes the
    write (its own blocks are free) and the failure comes at ``fdatasync``, from the loop
    device (ENOSPC from the backing file; ext4 then aborts its journal, so cutting the file
    back fails with EIO). The append fails naming the file, the store's view and PCRs stay
    as they were, and after space is back, fsck and a remount, the log holds exactly the
    acknowledged entries and takes appends again."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    backing = SmallFs(tmp_path / "backing", "tmpfs")
    backing.path.mkdir()
    r = _sh("mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(backing.path))
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        image, mnt = backing.path / "ext4.img", tmp_path / "ext4"
        mnt.mkdir()
        image.write_bytes(b"")
        os.truncate(image, 16 << 20)
        assert _sh("mkfs.ext4", "-q", "-F", "-m", "0", str(image)).returncode == 0
        r = _sh("mount", "-o", "loop", str(image), str(mnt))
        if r.returncode != 0:
            pytest.skip(f"mount -o loop failed: {r.stderr.strip()}")
        try:
            state = mnt / "state"
            with LogStore(state) as store:
                for i in range(3):
                    store.append(buffer_entry(f"acked/{i}", f"entry {i}".encode()))
                before, pcrs_before = store.raw(), store.pcrs()
                assert backing.fill() > 0
                with pytest.raises(BackendError) as info:
                    store.append(buffer_entry("big", content_for("big", 200_000)))
                message = str(info.value)
                assert str(state / LOG) in message, message
                assert "ENOSPC" in message or "EIO" in message, message
                assert store.raw() == before
                assert store.pcrs() == pcrs_before
                assert not store.health().ok
            backing.free()
            assert _sh("umount", str(mnt)).returncode == 0
            assert _sh("fsck.ext4", "-p", str(image)).returncode in (0, 1), "fsck: errors left"
            assert _sh("mount", "-o", "loop", str(image), str(mnt)).returncode == 0
            with LogStore(state) as store:
                assert store.report.entries == 4
                assert store.raw() == before, "the log is not exactly the acknowledged entries"
                assert store.append(buffer_entry("after", b"z")).index == 4
                assert store.health().ok
            verify_cli(state)
        finally:
            _sh("umount", str(mnt))
    finally:
        _sh("umount", str(backing.path))
        assert not _sh("losetup", "-j", str(image)).stdout.strip(), "a loop device is left"


@pytest.mark.parametrize(
    ("write", "named"),
    [(lambda fd, data: 0, "EIO (write returned 0)"), (None, "a failure without an errno")],
)
def test_odd_write_failures_are_named_too(
    opened: tuple[LogStore, Path],
    failing_os: FailingOs,
    monkeypatch: pytest.MonkeyPatch,
    write: Callable[[int, bytes], int] | None,
    named: str,
) -> None:
    """A write that returns 0 (it would loop for ever) is EIO; an OSError without an errno
    is named by its text."""
    store, state = opened
    before = (state / LOG).read_bytes()

    def no_errno(fd: int, data: bytes) -> int:
        raise OSError("a failure without an errno")

    monkeypatch.setattr(failing_os, "write", write or no_errno)
    with pytest.raises(BackendError, match=named.replace("(", r"\(").replace(")", r"\)")):
        store.append(buffer_entry("odd", b"o"))
    assert (state / LOG).read_bytes() == before
