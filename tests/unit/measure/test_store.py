"""The measurement log store (``imaguard.measure.LogStore``) with software PCRs.

The kernel's ima_queue.c (duplicates), ima_api.c (violations), ima_init.c
(boot_aggregate without a TPM). The TPM-bound behaviour is in test_tpm_swtpm.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import imaguard
from helpers.measure import imaguard as run_imaguard
from helpers.measure import replay_binary
from imaguard.errors import BackendError, LogIntegrityError
from imaguard.formats.measurelist import iter_binary, parse_binary, serialize_binary
from imaguard.formats.template import TemplateDescriptor
from imaguard.measure import (
    LogStore,
    buffer_entry,
    file_entry,
    records_from_binary,
    verify_records,
    violation_entry,
)

LOG = "binary_runtime_measurements"
NG = TemplateDescriptor.lookup("ima-ng")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    d = tmp_path / "files"
    d.mkdir()
    out = []
    for i in range(5):
        p = d / f"f{i}"
        p.write_bytes(f"content {i}\n".encode() * (i + 1))
        out.append(p)
    return out


@pytest.fixture
def store(state: Path) -> Iterator[LogStore]:
    s = LogStore(state)
    try:
        yield s
    finally:
        s.close()


def replay(data: bytes, banks: tuple[str, ...] = ("sha1", "sha256")) -> dict[str, dict[int, bytes]]:
    """The PCRs a binary log replays to, computed with hashlib alone (not SoftwarePcrs)."""
    return replay_binary(data, banks)


def cli_verify_state(state: Path) -> None:
    r = run_imaguard("log", "verify", "--state", state)
    assert r.returncode == 0, r.explain()


def test_error_classes_are_exported_at_the_top_level() -> None:
    """The error tree (imaguard/errors.py) names BackendError and LogIntegrityError as
    public branches; callers catch them as imaguard.BackendError / imaguard.LogIntegrityError."""
    assert imaguard.BackendError is BackendError
    assert imaguard.LogIntegrityError is LogIntegrityError
    assert issubclass(BackendError, imaguard.Error)
    assert issubclass(LogIntegrityError, imaguard.Error)


# -- a new log --------------------------------------------------------------------------


def test_new_log_starts_with_boot_aggregate_all_zero_sha256(store: LogStore, state: Path) -> None:
    (entry,) = store.entries()
    assert entry.template.name == "ima-ng"
    assert entry.pcr == 10
    assert entry.fields == (b"sha256:\0" + b"\0" * 32, b"boot_aggregate\0")
    assert not entry.violation
    assert len(store) == 1
    assert store.report.entries == 0
    assert store.banks == ("sha1", "sha256")
    # The binary file holds exactly that record, with its SHA-1 template digest, built
    # here byte by byte (ima_measurements_show's layout), not with serialize_binary.
    d_ng, n_ng = b"sha256:\0" + b"\0" * 32, b"boot_aggregate\0"
    data = struct.pack("<I", len(d_ng)) + d_ng + struct.pack("<I", len(n_ng)) + n_ng
    record = (
        struct.pack("<I", 10)
        + hashlib.sha1(data).digest()  # noqa: S324
        + struct.pack("<I", 6)
        + b"ima-ng"
        + struct.pack("<I", len(data))
        + data
    )
    assert (state / LOG).read_bytes() == record
    assert json.loads((state / "state.json").read_text())["banks"] == ["sha1", "sha256"]


@pytest.mark.parametrize(
    ("template", "ima_hash", "first_field"),
    [
        ("ima-sig", "sha256", b"sha256:\0" + b"\0" * 32),
        ("ima-ng", "sha1", b"sha1:\0" + b"\0" * 20),
        ("ima-ng", "sha512", b"sha512:\0" + b"\0" * 64),
        ("ima", "sha256", b"\0" * 20),
        ("ima-ngv2", "sha256", b"ima:sha256:\0" + b"\0" * 32),
    ],
)
def test_boot_aggregate_follows_template_and_ima_hash(
    state: Path, template: str, ima_hash: str, first_field: bytes
) -> None:
    with LogStore(state, template=template, ima_hash=ima_hash) as s:
        (entry,) = s.entries()
    assert entry.template.name == template
    assert entry.fields[0] == first_field
    assert entry.name == b"boot_aggregate"
    assert all(f == b"" for f in entry.fields[2:])


def test_banks_are_kept_across_reopen(state: Path) -> None:
    with LogStore(state, banks=("sha1", "sha256", "sha384")) as s:
        s.append(buffer_entry("x", b"1"))
        assert set(s.pcrs()) == {"sha1", "sha256", "sha384"}
        expected = s.pcrs()
    with LogStore(state) as s:  # the stored banks win
        assert s.banks == ("sha1", "sha256", "sha384")
        assert s.pcrs() == expected
    assert replay((state / LOG).read_bytes(), ("sha1", "sha256", "sha384")) == expected


# -- appends ----------------------------------------------------------------------------


def test_appends_survive_reopen(state: Path, files: list[Path]) -> None:
    with LogStore(state) as s:
        results = [s.append(file_entry(p, NG, store="sigfile")) for p in files]
        assert [r.index for r in results] == [1, 2, 3, 4, 5]
        assert all(r.added for r in results)
        entries, pcrs = s.entries(), s.pcrs()
    data = (state / LOG).read_bytes()
    assert replay(data) == pcrs
    with LogStore(state) as s:
        assert s.report.entries == 6
        assert s.report.torn_bytes == 0
        assert s.entries() == entries
        assert s.pcrs() == pcrs
        assert s.append(buffer_entry("after reopen", b"x")).index == 6
    cli_verify_state(state)


def test_append_is_durable_before_it_returns(
    store: LogStore, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every acknowledged entry was covered by an fsync/fdatasync of the log file."""
    synced: list[int] = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def spy(real: object) -> object:
        def wrapper(fd: int) -> None:
            real(fd)  # type: ignore[operator]
            if os.path.samestat(os.fstat(fd), os.stat(state / LOG)):
                synced.append(os.fstat(fd).st_size)

        return wrapper

    monkeypatch.setattr(os, "fdatasync", spy(real_fdatasync))
    monkeypatch.setattr(os, "fsync", spy(real_fsync))
    for i in range(5):
        result = store.append(buffer_entry(f"durable-{i}", b"x" * i))
        assert result.added
        size = os.stat(state / LOG).st_size
        assert synced, "append returned before any sync of the log"
        assert max(synced) >= size, "append returned before its bytes were synced"


def test_append_many_keeps_order(store: LogStore) -> None:
    items = [buffer_entry(f"batch-{i}", bytes([i])) for i in range(50)]
    results = store.append_many(items)
    assert [r.index for r in results] == list(range(1, 51))
    assert store.entries()[1:] == items


def test_duplicates_are_not_added_but_violations_always_are(
    store: LogStore, files: list[Path], tmp_path: Path
) -> None:
    p = files[0]
    first = store.append(file_entry(p, NG, store="sigfile"))
    assert first.added
    again = store.append(file_entry(p, NG, store="sigfile"))
    assert (again.added, again.reason, again.index) == (False, "hash_exists", None)
    # Other PCR: a new entry (the kernel de-duplicates per PCR).
    assert store.append(file_entry(p, NG, pcr=11, store="sigfile")).added
    # Same content at another path: a new entry.
    other = tmp_path / "copy"
    other.write_bytes(p.read_bytes())
    assert store.append(file_entry(other, NG, store="sigfile")).added
    # Changed content at the same path: a new entry.
    p.write_bytes(b"changed\n")
    assert store.append(file_entry(p, NG, store="sigfile")).added
    # Violations are never de-duplicated.
    v1 = store.append(violation_entry(str(p), NG))
    v2 = store.append(violation_entry(str(p), NG))
    assert v1.added
    assert v2.added
    assert v2.index == v1.index + 1  # type: ignore[operator]
    assert len(store) == 7
    # Duplicates stay duplicates across a reopen.
    store.close()
    with LogStore(store.dir) as s:
        assert not s.append(file_entry(other, NG, store="sigfile")).added
        assert s.append(violation_entry(str(p), NG)).added


def test_duplicates_within_one_batch(store: LogStore) -> None:
    e = buffer_entry("same", b"same")
    results = store.append_many([e, e, violation_entry("/v", NG), violation_entry("/v", NG)])
    assert [r.added for r in results] == [True, False, True, True]
    assert results[1].reason == "hash_exists"


def test_violations_replay_with_ff(store: LogStore) -> None:
    store.append(violation_entry("/var/log/app.log", NG))
    data = store.raw()
    sha1_pcr = store.pcrs()["sha1"][10]
    assert sha1_pcr == replay(data)["sha1"][10]
    (boot, viol) = list(iter_binary(data))
    expected = hashlib.sha1(  # noqa: S324
        hashlib.sha1(b"\0" * 20 + boot.digest).digest() + b"\xff" * 20  # noqa: S324
    ).digest()
    assert viol.digest == b"\0" * 20
    assert sha1_pcr == expected


def test_every_template_replays_to_the_independent_oracle(state: Path, files: list[Path]) -> None:
    """The old ``ima`` template hashes differently (``n`` padded to 256 bytes, no lengths);
    ima-sig / ima-ngv2 carry more fields. Each log, violations included, replays (with
    hashlib alone) to the PCRs the store keeps, in three banks."""
    banks = ("sha1", "sha256", "sha384")
    for name in ("ima", "ima-ng", "ima-sig", "ima-ngv2"):
        where = state / name
        template = TemplateDescriptor.lookup(name)
        with LogStore(where, template=name, banks=banks) as s:
            for p in files[:3]:
                assert s.append(file_entry(p, template, store="sigfile")).added
            assert s.append(violation_entry("/var/log/app.log", template)).added
            pcrs = s.pcrs()
        assert replay((where / LOG).read_bytes(), banks) == pcrs, name


# -- torn tail --------------------------------------------------------------------------


def _fill(state: Path, n: int = 4) -> tuple[bytes, list[bytes]]:
    with LogStore(state) as s:
        for i in range(n):
            s.append(buffer_entry(f"entry-{i}", f"data {i}".encode()))
        entries = s.entries()
    data = (state / LOG).read_bytes()
    return data, [serialize_binary([e]) for e in entries]


def test_torn_tail_of_every_length_is_truncated_and_reported(state: Path) -> None:
    data, records = _fill(state)
    partial = serialize_binary([buffer_entry("in flight", b"never completed")])
    before = replay(data)
    for cut in range(1, len(partial)):
        (state / LOG).write_bytes(data + partial[:cut])
        with LogStore(state) as s:
            assert s.report.torn_bytes == cut, cut
            assert s.report.entries == len(records)
            assert s.pcrs() == before
        assert (state / LOG).read_bytes() == data, cut
    cli_verify_state(state)


def test_torn_tail_then_append_continues_cleanly(state: Path) -> None:
    data, records = _fill(state)
    partial = serialize_binary([buffer_entry("in flight", b"y" * 100)])
    with open(state / LOG, "ab") as f:
        f.write(partial[:57])
    with LogStore(state) as s:
        assert s.report.torn_bytes == 57
        r = s.append(buffer_entry("next", b"z"))
        assert r.index == len(records)
        pcrs = s.pcrs()
    data2 = (state / LOG).read_bytes()
    assert data2.startswith(data)
    assert replay(data2) == pcrs
    assert len(parse_binary(data2)) == len(records) + 1
    cli_verify_state(state)


def test_torn_tail_with_garbage_inside_a_claimed_record(state: Path) -> None:
    """A record header that claims more data than was written, followed by random bytes."""
    data, records = _fill(state)
    rng = random.Random(4)
    header = struct.pack("<I", 10) + bytes(20) + struct.pack("<I", 6) + b"ima-ng"
    tail = header + struct.pack("<I", 500) + rng.randbytes(123)
    (state / LOG).write_bytes(data + tail)
    with LogStore(state) as s:
        assert s.report.torn_bytes == len(tail)
        assert len(s) == len(records)
    assert (state / LOG).read_bytes() == data
    cli_verify_state(state)


def test_zero_filled_tail_is_a_torn_tail(state: Path) -> None:
    """After a crash, a file system may have extended the file before the data landed
    (a tail of zero blocks). Nothing after the last good record parses: it is a torn
    tail, truncated and reported, not a reason to refuse the whole log."""
    data, records = _fill(state)
    (state / LOG).write_bytes(data + b"\0" * 512)
    with LogStore(state) as s:
        assert s.report.torn_bytes == 512
        assert len(s) == len(records)
    assert (state / LOG).read_bytes() == data
    cli_verify_state(state)


# -- damage in the middle ---------------------------------------------------------------


def _offsets(data: bytes) -> list[int]:
    return [r.offset for r in iter_binary(data)]


@pytest.mark.parametrize("where", ["template digest", "file digest", "name", "data length"])
def test_a_record_altered_in_the_middle_is_refused(state: Path, where: str) -> None:
    data, _ = _fill(state, 6)
    rec = list(iter_binary(data))[3]
    head = rec.offset + 4 + 20 + 4 + len(rec.template_name) + 4  # start of template data
    bad = bytearray(data)
    if where == "template digest":
        bad[rec.offset + 4] ^= 0x01
    elif where == "file digest":
        bad[head + 4 + len(b"sha256:\0") + 5] ^= 0x80  # a byte of the d-ng digest
    elif where == "name":
        name_at = head + 4 + len(b"sha256:\0") + 32 + 4
        assert bad[name_at : name_at + 5] == b"entry"
        bad[name_at] ^= 0x20
    else:
        # A length field bumped past the end: the rest of the log would look like one
        # huge "torn" record. Three good records follow it; truncating them would
        # silently destroy the log.
        struct.pack_into("<I", bad, head - 4, 0x00FFFFFF)
    (state / LOG).write_bytes(bytes(bad))
    with pytest.raises(LogIntegrityError):
        LogStore(state).close()
    assert (state / LOG).read_bytes() == bytes(bad), "a refused log must be left as it was"
    r = run_imaguard("measure", "--state", state, "/dev/null")
    assert r.returncode == 2, r.explain()
    assert (state / LOG).read_bytes() == bytes(bad)


def test_a_refused_store_releases_its_lock(state: Path) -> None:
    data, _ = _fill(state)
    bad = bytearray(data)
    bad[_offsets(data)[1] + 4] ^= 0xFF
    (state / LOG).write_bytes(bytes(bad))
    with pytest.raises(LogIntegrityError):
        LogStore(state)
    (state / LOG).write_bytes(data)
    with LogStore(state) as s:
        assert s.report.entries == 5


def test_state_json_missing_with_a_log_present_is_refused(state: Path) -> None:
    data, _ = _fill(state)
    (state / "state.json").unlink()
    with pytest.raises(LogIntegrityError, match=r"state\.json"):
        LogStore(state)
    assert not (state / "state.json").exists(), "the refusal must not invent a state"
    assert (state / LOG).read_bytes() == data


def test_unreadable_state_json_is_refused(state: Path) -> None:
    _fill(state)
    (state / "state.json").write_text("{not json")
    with pytest.raises(LogIntegrityError):
        LogStore(state)


# -- concurrency ------------------------------------------------------------------------


def test_second_store_on_the_same_directory_is_refused(store: LogStore, state: Path) -> None:
    with pytest.raises(BackendError):
        LogStore(state)
    # ... and the CLI says so without a traceback.
    r = run_imaguard("measure", "--state", state, "/dev/null")
    assert r.returncode == 2, r.explain()
    assert "another process" in r.stderr
    # The first store still works.
    assert store.append(buffer_entry("still mine", b"1")).added


def test_concurrent_appends_from_many_threads(store: LogStore, state: Path) -> None:
    threads, per_thread = 16, 200
    results: dict[int, list[imaguard.measure.AppendResult]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            barrier.wait()
            out = []
            for i in range(per_thread):
                out.append(store.append(buffer_entry(f"thread-{t}/{i}", f"{t}:{i}".encode())))
            results[t] = out
        except BaseException as e:  # reported below
            errors.append(e)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in pool)
    assert not errors, errors
    entries = store.entries()
    assert len(entries) == 1 + threads * per_thread
    assert len(store) == len(entries)
    names = [e.name for e in entries[1:]]
    assert len(set(names)) == threads * per_thread
    for t, out in results.items():
        idx = [r.index for r in out if r.index is not None]
        assert len(idx) == len(out)
        assert all(r.added for r in out)
        assert idx == sorted(idx), f"thread {t}: its entries are out of order"
        for i, r in zip(range(per_thread), out, strict=True):
            assert r.index is not None
            assert entries[r.index].name == f"thread-{t}/{i}".encode()
    data = (state / LOG).read_bytes()
    assert replay(data) == store.pcrs()
    recs, problem = records_from_binary(data)
    assert problem is None
    result = verify_records(recs)
    assert result.ok, result.findings
    assert {b: {i: bytes.fromhex(v) for i, v in p.items()} for b, p in result.pcrs.items()} == (
        store.pcrs()
    )
    store.close()
    with LogStore(state) as s:
        assert s.entries() == entries
        assert s.report.torn_bytes == 0
