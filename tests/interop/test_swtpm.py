"""A real (software) TPM behind the log: swtpm, read back with tpm2-tools and evmctl.

One swtpm per session (conftest.py), reset to power-on PCRs for each test through the
``tpm`` fixture. tpm2-tools (``tpm2_pcrread``, ``tpm2_pcrextend``) and evmctl (through
the IBM TSS ``tsspcrread``) are the independent views of the TPM (spec evmctl.md §5).
"""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import pytest

from helpers.measure import Swtpm, imaguard, imaguard_ok, log_pcrs, run
from imaguard.errors import BackendError, LogIntegrityError
from imaguard.formats.measurelist import iter_binary, parse_binary, serialize_binary
from imaguard.formats.template import TemplateDescriptor
from imaguard.measure import LogStore, buffer_entry, file_entry

FRESH_BOOT_AGGREGATE = "7b6436b0c98f62380866d9432c2af0ee08ce16a171bda6951aecd95ee1307d61"
ALL_BANKS = "sha1:10+sha256:10+sha384:10+sha512:10"
NG = TemplateDescriptor.lookup("ima-ng")


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    d = tmp_path / "files"
    d.mkdir()
    out = []
    for i, name in enumerate(["alpha", "beta", "with space", "delta"]):
        p = d / name
        p.write_bytes(f"{name} {i}\n".encode() * 10)
        out.append(p)
    return out


def as_hex(pcrs: dict[str, dict[int, bytes]]) -> dict[str, dict[int, str]]:
    return {b: {i: v.hex() for i, v in p.items()} for b, p in pcrs.items()}


def own_boot_aggregate(tpm: Swtpm, bank: str) -> str:
    """boot_aggregate from tpm2_pcrread output: H(PCR0..7), plus 8..9 unless sha1 (§4.7)."""
    count = 8 if bank == "sha1" else 10
    values = tpm.pcrread(f"{bank}:" + ",".join(str(i) for i in range(count)))[bank]
    h = hashlib.new(bank)
    for i in range(count):
        h.update(bytes.fromhex(values[i]))
    return h.hexdigest()


def evmctl_boot_aggregate(tpm: Swtpm) -> dict[str, str]:
    """``evmctl ima_boot_aggregate`` reading the swtpm through tsspcrread (§5.1)."""
    r = run("evmctl", "ima_boot_aggregate", env=tpm.tss_env)
    assert r.returncode == 0, r.explain()
    out = {}
    for line in r.out.splitlines():
        bank, _, value = line.strip().partition(":")
        if bank in ("sha1", "sha256"):
            out[bank] = value
    assert set(out) == {"sha1", "sha256"}, r.explain()
    return out


def first_digest(state: Path) -> tuple[str, str]:
    """(algorithm, hex) of the boot_aggregate entry's d-ng field."""
    entries = json.loads(imaguard_ok("log", "show", "--state", state, "--format", "json").stdout)
    assert entries[0]["fields"]["n-ng"] == "boot_aggregate"
    algo, _, hexd = entries[0]["fields"]["d-ng"].partition(":")
    return algo, hexd


# -- extending and reading back ---------------------------------------------------------


def test_measure_extends_the_tpm_as_the_log_replays(
    tpm: Swtpm, tmp_path: Path, files: list[Path]
) -> None:
    state = tmp_path / "state"
    assert tpm.pcrread()["sha1"][10] == "00" * 20
    r = imaguard_ok("measure", "--state", state, "--tpm", tpm.tcti, *files[:2])
    assert r.out.splitlines() == [f"1 {files[0]}", f"2 {files[1]}"]
    imaguard_ok("measure", "--state", state, "--tpm", tpm.tcti, *files[2:])
    read = tpm.pcrread(ALL_BANKS)
    replayed = log_pcrs(state)
    # The store uses every bank the TPM has allocated (a fresh swtpm: four).
    assert set(replayed) == {"sha1", "sha256", "sha384", "sha512"}
    for bank in ("sha1", "sha256", "sha384", "sha512"):
        assert read[bank][10] == replayed[bank]["10"], bank
    assert read["sha256"][10] != "00" * 32
    # The same check through imaguard's own reader.
    r = imaguard("log", "verify", "--state", state, "--tpm", tpm.tcti, "--json")
    assert r.returncode == 0, r.explain()
    assert json.loads(r.stdout)["matched_at"] == 5


def test_extend_in_another_pcr(tpm: Swtpm, tmp_path: Path, files: list[Path]) -> None:
    state = tmp_path / "state"
    imaguard_ok("measure", "--state", state, "--tpm", tpm.tcti, "--pcr", "11", files[0])
    read = tpm.pcrread("sha1:10,11+sha256:10,11")
    replayed = log_pcrs(state)
    for bank in ("sha1", "sha256"):
        assert read[bank][10] == replayed[bank]["10"]
        assert read[bank][11] == replayed[bank]["11"]


def test_boot_aggregate_of_a_fresh_tpm(tpm: Swtpm, tmp_path: Path, files: list[Path]) -> None:
    state = tmp_path / "state"
    imaguard_ok("measure", "--state", state, "--tpm", tpm.tcti, files[0])
    assert first_digest(state) == ("sha256", FRESH_BOOT_AGGREGATE)
    assert own_boot_aggregate(tpm, "sha256") == FRESH_BOOT_AGGREGATE
    assert evmctl_boot_aggregate(tpm)["sha256"] == FRESH_BOOT_AGGREGATE


@pytest.mark.parametrize("algo", ["sha256", "sha1"])
def test_boot_aggregate_reads_pcrs_0_to_9_from_the_tpm(
    tpm: Swtpm, tmp_path: Path, files: list[Path], algo: str
) -> None:
    """PCRs 0-9 made non-zero first (by tpm2_pcrextend): the aggregate must change and
    equal both evmctl's and a computation from tpm2_pcrread. PCR 8 and 9 count for sha256
    but not for sha1 (§4.7)."""
    for pcr in (0, 4, 7, 8, 9):
        tpm.pcrextend(pcr, {"sha1": f"{pcr:02x}" * 20, "sha256": f"{pcr:02x}" * 32})
    state = tmp_path / "state"
    imaguard_ok("measure", "--state", state, "--tpm", tpm.tcti, "-a", algo, files[0])
    got_algo, got = first_digest(state)
    assert got_algo == algo
    assert got != FRESH_BOOT_AGGREGATE
    assert got == own_boot_aggregate(tpm, algo)
    assert got == evmctl_boot_aggregate(tpm)[algo]


def test_boot_aggregate_ignores_pcr_8_and_9_for_sha1(tpm: Swtpm, tmp_path: Path) -> None:
    tpm.pcrextend(8, {"sha1": "11" * 20, "sha256": "11" * 32})
    with LogStore(tmp_path / "s", tpm=tpm.tcti, ima_hash="sha1") as s:
        digest = s.entries()[0].fields[0]
    assert digest == b"sha1:\0" + hashlib.sha1(b"\0" * 20 * 8).digest()  # noqa: S324


# -- the log is bound to the TPM --------------------------------------------------------


def test_reopen_after_a_tpm_reset_is_refused(tpm: Swtpm, tmp_path: Path, files: list[Path]) -> None:
    state = tmp_path / "state"
    imaguard_ok("measure", "--state", state, "--tpm", tpm.tcti, files[0])
    log_before = (state / "binary_runtime_measurements").read_bytes()
    tpm.reset()  # a reboot: PCRs back to zero, reset count + 1
    with pytest.raises(LogIntegrityError, match="reset"):
        LogStore(state, tpm=tpm.tcti)
    r = imaguard("measure", "--state", state, files[1])  # the state names the TPM
    assert r.returncode == 2, r.explain()
    assert "reset" in r.stderr
    assert (state / "binary_runtime_measurements").read_bytes() == log_before
    assert tpm.pcrread()["sha1"][10] == "00" * 20, "a refused log must not touch the TPM"


def test_tpm_extended_by_someone_else_is_refused(
    tpm: Swtpm, tmp_path: Path, files: list[Path]
) -> None:
    state = tmp_path / "state"
    imaguard_ok("measure", "--state", state, "--tpm", tpm.tcti, *files[:2])
    tpm.pcrextend(10, {"sha1": "ab" * 20, "sha256": "ab" * 32})
    with pytest.raises(LogIntegrityError):
        LogStore(state, tpm=tpm.tcti)
    r = imaguard("measure", "--state", state, "--tpm", tpm.tcti, files[2])
    assert r.returncode == 2, r.explain()
    assert "TPM" in r.stderr
    r = imaguard("log", "verify", "--state", state, "--tpm", tpm.tcti, "--json")
    assert r.returncode == 1, r.explain()
    assert {f["code"] for f in json.loads(r.stdout)["findings"]} == {"pcr-mismatch"}


def test_software_log_is_not_silently_moved_to_a_tpm(
    tpm: Swtpm, tmp_path: Path, files: list[Path]
) -> None:
    state = tmp_path / "state"
    imaguard_ok("measure", "--state", state, files[0])
    r = imaguard("measure", "--state", state, "--tpm", tpm.tcti, files[1])
    assert r.returncode == 2, r.explain()
    assert "bound" in r.stderr
    assert tpm.pcrread()["sha1"][10] == "00" * 20


def test_entries_the_tpm_missed_are_extended_on_reopen(tpm: Swtpm, tmp_path: Path) -> None:
    """A crash between the durable write and the extend: the TPM equals the replay of a
    prefix; reopening extends the rest (and reports it)."""
    state = tmp_path / "state"
    with LogStore(state, tpm=tpm.tcti) as s:
        s.append(buffer_entry("extended", b"1"))
    missed = [buffer_entry(f"missed-{i}", bytes([i])) for i in range(3)]
    with open(state / "binary_runtime_measurements", "ab") as f:
        f.write(serialize_binary(missed))
    with LogStore(state, tpm=tpm.tcti) as s:
        assert s.report.re_extended == 3
        expected = as_hex(s.pcrs())
    read = tpm.pcrread(ALL_BANKS)
    for bank, values in expected.items():
        assert read[bank][10] == values[10]
    r = imaguard("log", "verify", "--state", state, "--tpm", tpm.tcti)
    assert r.returncode == 0, r.explain()


def test_store_api_with_the_tpm(tpm: Swtpm, tmp_path: Path, files: list[Path]) -> None:
    with LogStore(tmp_path / "s", tpm=tpm.tcti) as s:
        assert s.banks == ("sha1", "sha256", "sha384", "sha512")
        for p in files:
            assert s.append(file_entry(p, NG, store="sigfile")).added
        assert not s.append(file_entry(files[0], NG, store="sigfile")).added
        expected = as_hex(s.pcrs())
        backend_view = as_hex(s.backend.read([10]))  # type: ignore[union-attr]
    read = tpm.pcrread(ALL_BANKS)
    for bank in expected:
        assert read[bank][10] == expected[bank][10] == backend_view[bank][10]


# -- a TPM that goes away ---------------------------------------------------------------


def test_tpm_gone_mid_run(second_swtpm: Swtpm, tmp_path: Path, files: list[Path]) -> None:
    state = tmp_path / "state"
    log_path = state / "binary_runtime_measurements"
    store = LogStore(state, tpm=second_swtpm.tcti)
    try:
        acked = [store.append(file_entry(p, NG, store="sigfile")) for p in files[:2]]
        assert all(r.added for r in acked)
        second_swtpm.stop(signal.SIGKILL)  # the TPM dies
        with pytest.raises(BackendError):
            store.append(file_entry(files[2], NG, store="sigfile"))
        # The store stays failed: no half-done state is reused.
        with pytest.raises(BackendError):
            store.append(file_entry(files[3], NG, store="sigfile"))
    finally:
        store.close()
    data = log_path.read_bytes()
    # Only whole records: the log parses to the end ...
    recs = list(iter_binary(data))
    assert recs[-1].offset + len(serialize_binary([parse_binary(data)[-1].entry])) == len(data)
    names = [r.entry.name for r in parse_binary(data)]
    logged = [bytes(p).replace(b" ", b"_") for p in files]
    # ... and holds boot_aggregate, the acknowledged entries and at most the one that failed.
    assert names[:3] == [b"boot_aggregate", logged[0], logged[1]]
    assert names[3:] in ([], [logged[2]])
    assert logged[3] not in names
    r = imaguard("log", "verify", "--state", state)
    assert r.returncode == 0, r.explain()
    # The command says what happened, with no traceback, and appends nothing.
    r = imaguard("measure", "--state", state, files[3])
    assert r.returncode == 2, r.explain()
    assert "TPM" in r.stderr
    assert log_path.read_bytes() == data


def test_tpm_unreachable_at_start(second_swtpm: Swtpm, tmp_path: Path, files: list[Path]) -> None:
    tcti = second_swtpm.tcti
    second_swtpm.stop(signal.SIGKILL)
    state = tmp_path / "state"
    with pytest.raises(BackendError):
        LogStore(state, tpm=tcti)
    r = imaguard("measure", "--state", state, "--tpm", tcti, files[0])
    assert r.returncode == 2, r.explain()
    assert tcti in r.stderr
    log_path = state / "binary_runtime_measurements"
    assert not log_path.exists() or log_path.stat().st_size == 0
    r = imaguard("log", "verify", "--ascii", "/dev/null", "--tpm", tcti)
    assert r.returncode == 2, r.explain()
