"""The fuzz harnesses under fuzz/ (docs/reliability.md, "Fuzzing"): the quick part of the
fuzzing campaign that runs in ``make test``.

Every seed and every regression input (a crash the fuzzer once found) goes through its
target's check in-process; each target then runs a few thousand executions under atheris,
as ``make fuzz`` runs it for longer. The long runs are ``make fuzz``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # fuzz/ is a package at the top of the repository
    sys.path.insert(0, str(ROOT))

from fuzz import campaign, make_seeds, targets  # noqa: E402

from imaguard.errors import Error  # noqa: E402

NAMES = sorted(targets.TARGETS)


def test_the_campaign_knows_every_target() -> None:
    assert sorted(campaign.TARGET_NAMES) == NAMES
    assert set(campaign.DICTIONARIES) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_seed_is_accepted_by_its_parser(name: str) -> None:
    """Seeds are well-formed inputs: each parses and keeps the round-trip promise."""
    target = targets.TARGETS[name]
    seeds = sorted(target.seeds.iterdir())
    assert len(seeds) >= 2
    refused = [p.name for p in seeds if not target.check(p.read_bytes())]
    assert refused == []


@pytest.mark.parametrize("name", NAMES)
def test_every_regression_input_passes_its_check(name: str) -> None:
    """A crash the fuzzer found, replayed: the parser now refuses it with an imaguard.Error
    (or accepts it and keeps its promises)."""
    target = targets.TARGETS[name]
    for path in targets.inputs(target):
        target.check(path.read_bytes())


def test_regressions_exist_only_for_known_targets() -> None:
    base = targets.FUZZ_DIR / "regressions"
    found = {p.name for p in base.iterdir() if p.is_dir()}
    assert found <= set(NAMES)
    assert all(any((base / n).iterdir()) for n in found)


def test_the_seeds_are_what_make_seeds_writes() -> None:
    on_disk = {
        d.name: {p.name: p.read_bytes() for p in d.iterdir()}
        for d in (targets.FUZZ_DIR / "seeds").iterdir()
    }
    assert on_disk == make_seeds.all_seeds()


# -- the checks can fail ----------------------------------------------------------------------


def test_a_foreign_exception_escapes_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: bytes) -> None:
        raise IndexError("index out of range")

    monkeypatch.setattr("imaguard.formats.xattr.parse", broken)
    with pytest.raises(IndexError):
        targets.check_xattr(b"\x01" + b"\0" * 20)


def test_an_imaguard_error_is_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuses(data: bytes) -> None:
        raise Error("refused")

    monkeypatch.setattr("imaguard.formats.xattr.parse", refuses)
    assert targets.check_xattr(b"\x01" + b"\0" * 20) is False


def test_a_broken_round_trip_is_a_contract_error(monkeypatch: pytest.MonkeyPatch) -> None:
    seed = (targets.TARGETS["digestlist"].seeds / "paths-sha256").read_bytes()
    monkeypatch.setattr("imaguard.formats.digestlist.serialize", lambda dl: b"other bytes")
    with pytest.raises(targets.ContractError, match="changed bytes"):
        targets.check_digestlist(seed)


def test_json_equality_treats_nan_as_itself_and_types_apart() -> None:
    nan = float("nan")
    assert targets._same_json({"a": [nan, 1]}, {"a": [float("nan"), 1]})
    assert not targets._same_json({"a": 1}, {"a": True})
    assert not targets._same_json([1, 2], [1])
    assert not targets._same_json({"a": 1}, {"b": 1})


# -- under atheris -------------------------------------------------------------------------------

RUNS = 2000


@pytest.mark.parametrize("name", NAMES)
def test_the_harness_runs_under_atheris(name: str, tmp_path: Path) -> None:
    """A short fuzzing run from the seeds and regressions: no crash in RUNS executions."""
    cmd = campaign.fuzz_command(name, 0, RUNS, tmp_path)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Done {RUNS} runs" in done.stderr
    assert list((tmp_path / "crashes" / name).iterdir()) == []


def test_the_campaign_reports_each_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    report = tmp_path / "fuzz.json"
    args = ["--time", "0", "--runs", "300", "--only", "xattr", "--out", str(out)]
    assert campaign.main([*args, "--json", str(report)]) == 0
    (result,) = json.loads(report.read_text())
    assert result["target"] == "xattr"
    assert result["executions"] == 300
    assert result["coverage"] > 0
    assert result["crashes"] == []
    assert "xattr" in capsys.readouterr().out


def test_the_campaign_summary_reads_libfuzzer_output() -> None:
    log = (
        "#2\tINITED cov: 40 ft: 41 corp: 1/1b exec/s: 0 rss: 50Mb\n"
        "#512\tpulse  cov: 57 ft: 80 corp: 9/90b lim: 4 exec/s: 256 rss: 50Mb\n"
        "==1== ERROR: libFuzzer: fuzz target exited\n"
        "stat::number_of_executed_units: 733\n"
    )
    crash = campaign.ROOT / "fuzz" / "out" / "crashes" / "xattr" / "crash-1"
    summary = campaign.summarize("xattr", log, 2.0, [crash], 1)
    assert summary == {
        "target": "xattr",
        "executions": 733,
        "seconds": 2.0,
        "exec_per_second": 366,
        "coverage": 57,
        "crashes": ["fuzz/out/crashes/xattr/crash-1"],
        "exit_status": 1,
    }
    assert "crash-1" in campaign.table([summary])


def test_the_campaign_needs_a_limit() -> None:
    with pytest.raises(SystemExit):
        campaign.main(["--time", "0", "--runs", "0"])
