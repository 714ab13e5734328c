"""Run every fuzz target in turn and report (``make fuzz``).

``python -m fuzz.campaign [--time SECONDS] [--runs N] [--only NAME ...] [--json FILE]``

Each target runs as its own ``python -m fuzz.run NAME`` process for ``--time`` seconds
(``0``: no limit) and at most ``--runs`` executions (``0``: no limit), starting from its seeds
and regressions and from the corpus it grew before (``fuzz/out/corpus/NAME``). Crashing
inputs are saved in ``fuzz/out/crashes/NAME/`` (the directory is not committed: a crash is
fixed in ``src/`` and its input copied to ``fuzz/regressions/NAME/``). The table printed at
the end gives, per target, the executions, the time, executions per second, atheris's
coverage count (``cov:``, edges of instrumented code) and the crashes; the exit status is 1
when any target crashed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FUZZ_DIR = Path(__file__).resolve().parent
ROOT = FUZZ_DIR.parent
TARGET_NAMES = (
    "xattr",
    "policy-kernel",
    "policy-imaguard",
    "measurelist-binary",
    "measurelist-ascii",
    "keylime",
    "digestlist",
    "protocol",
    "config",
    "owner",
)
"""The keys of fuzz.targets.TARGETS (not imported here: this process stays small)."""
DICTIONARIES = {
    "policy-kernel": ("policy",),
    "policy-imaguard": ("policy",),
    "measurelist-binary": ("measurelist",),
    "measurelist-ascii": ("measurelist",),
    "keylime": ("json", "keylime"),
    "protocol": ("json", "protocol"),
    "config": ("toml", "config"),
    "owner": ("toml", "config"),
}
"""The libFuzzer dictionaries (fuzz/dicts/*.dict) each target's mutations draw tokens from."""


def dictionary(name: str, out: Path) -> Path | None:
    """One dictionary file for ``name`` (libFuzzer takes one), merged from fuzz/dicts/."""
    parts = DICTIONARIES.get(name)
    if not parts:
        return None
    merged = out / "dicts" / f"{name}.dict"
    merged.parent.mkdir(parents=True, exist_ok=True)
    merged.write_text("".join((FUZZ_DIR / "dicts" / f"{p}.dict").read_text() for p in parts))
    return merged


def fuzz_command(name: str, seconds: int, runs: int, out: Path) -> list[str]:
    """The ``fuzz.run`` command line for one target."""
    corpus = out / "corpus" / name
    crashes = out / "crashes" / name
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "fuzz.run",
        name,
        f"-max_total_time={seconds}",
        "-timeout=10",  # one input taking longer is reported as a hang
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={crashes}/",
    ]
    if runs:
        cmd.append(f"-runs={runs}")
    merged = dictionary(name, out)
    if merged is not None:
        cmd.append(f"-dict={merged}")
    cmd.append(str(corpus))
    for extra in (FUZZ_DIR / "seeds" / name, FUZZ_DIR / "regressions" / name):
        if extra.is_dir():
            cmd.append(str(extra))
    return cmd


def summarize(name: str, log: str, seconds: float, crashes: list[Path], rc: int) -> dict[str, Any]:
    """The figures of one run, read from libFuzzer's output."""
    execs = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
    done = re.search(r"Done (\d+) runs", log)
    covs = re.findall(r"\bcov: (\d+)", log)
    count = int(execs.group(1)) if execs else int(done.group(1)) if done else 0
    return {
        "target": name,
        "executions": count,
        "seconds": round(seconds, 1),
        "exec_per_second": round(count / seconds) if seconds > 0 else 0,
        "coverage": int(covs[-1]) if covs else 0,
        "crashes": [
            str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in crashes
        ],
        "exit_status": rc,
    }


def run_target(name: str, seconds: int, runs: int, out: Path) -> dict[str, Any]:
    cmd = fuzz_command(name, seconds, runs, out)
    crash_dir = out / "crashes" / name
    before = set(crash_dir.iterdir())
    log_path = out / f"{name}.log"
    start = time.monotonic()
    with log_path.open("wb") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
    elapsed = time.monotonic() - start
    crashes = sorted(set(crash_dir.iterdir()) - before)
    text = log_path.read_text(errors="replace")
    return summarize(name, text, elapsed, crashes, rc.returncode)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'target':<20} {'executions':>12} {'seconds':>9} {'exec/s':>8} {'cov':>6}  crashes",
    ]
    for r in results:
        crashes = ", ".join(r["crashes"]) or ("none" if r["exit_status"] == 0 else "?")
        lines.append(
            f"{r['target']:<20} {r['executions']:>12,} {r['seconds']:>9.1f} "
            f"{r['exec_per_second']:>8,} {r['coverage']:>6}  {crashes}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.campaign", description=__doc__)
    parser.add_argument("--time", type=int, default=60, help="seconds per target (0: none)")
    parser.add_argument("--runs", type=int, default=0, help="executions per target (0: none)")
    parser.add_argument("--only", nargs="+", choices=TARGET_NAMES, help="these targets only")
    parser.add_argument("--out", type=Path, default=FUZZ_DIR / "out", help="working directory")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not args.time and not args.runs:
        parser.error("give --time or --runs (or both): a run with neither never ends")
    results = []
    for name in args.only or TARGET_NAMES:
        print(f"fuzzing {name} ...", flush=True)
        results.append(run_target(name, args.time, args.runs, args.out))
    print(table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    failed = [r["target"] for r in results if r["crashes"] or r["exit_status"] != 0]
    if failed:
        print(f"crashed: {', '.join(failed)} (inputs and logs under {args.out})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
