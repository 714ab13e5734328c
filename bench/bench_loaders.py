"""Verified-loader benchmarks (imaguard.loaders).

1. Verified exec of a small signed static program, in-process (``prepare_exec(...).spawn()``
   + ``waitpid``: copy into a sealed memfd, hash, verify, fork, ``execveat``) against a
   plain ``posix_spawn`` + ``waitpid`` of the same file: µs per run, side by side. The
   ``imaguard exec`` command (a Python process start on top) is reported too.
2. Import guard: a cold ``import rich.console, rich.table, rich.markdown`` (a fresh
   interpreter each time, bytecode caches present and signed) timed inside the process,
   under ``python -m imaguard.run`` against the same script run by a launcher that loads
   the same imaguard modules and keyring first, without the guard. Target: <= x1.5.

Run: ``.venv/bin/python bench/bench_loaders.py [--quick] [--json OUT]`` (as root: the
signatures go to security.ima; needs gcc).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import imaguard
from imaguard.loaders import prepare_exec

ROOT = Path(__file__).resolve().parents[1]
IMPORT_SCRIPT = """\
import time
t0 = time.perf_counter()
import rich.console, rich.table, rich.markdown
t1 = time.perf_counter()
print(f"IMPORT_US {(t1 - t0) * 1e6:.1f}")
"""


def _static_program(work: Path) -> Path:
    src = work / "p.c"
    src.write_text("int main(void) { return 0; }\n")
    out = work / "prog"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(out), str(src)], check=True)
    return out


def bench_exec(
    work: Path, key: imaguard.PrivateKey, ring: imaguard.Keyring, n: int
) -> dict[str, Any]:
    prog = _static_program(work)
    imaguard.sign_file(prog, key, "sha256")
    plain: list[float] = []
    verified: list[float] = []
    for _ in range(10):  # warm up both
        os.waitpid(os.posix_spawn(str(prog), [str(prog)], {}), 0)
        with prepare_exec([str(prog)], ring) as p:
            os.waitpid(p.spawn({}), 0)
    for _ in range(n):
        t = time.perf_counter()
        _, st = os.waitpid(os.posix_spawn(str(prog), [str(prog)], {}), 0)
        plain.append(time.perf_counter() - t)
        assert os.waitstatus_to_exitcode(st) == 0
        t = time.perf_counter()
        with prepare_exec([str(prog)], ring) as p:
            _, st = os.waitpid(p.spawn({}), 0)
        verified.append(time.perf_counter() - t)
        assert os.waitstatus_to_exitcode(st) == 0
    ring_dir = work / "ring"
    cli: list[float] = []
    for _ in range(max(5, n // 100)):
        t = time.perf_counter()
        subprocess.run(
            [str(ROOT / ".venv/bin/imaguard"), "exec", "--keyring", str(ring_dir), "--", str(prog)],
            check=True,
        )
        cli.append(time.perf_counter() - t)
    pm, vm = statistics.median(plain) * 1e6, statistics.median(verified) * 1e6
    return {
        "runs": n,
        "plain_median_us": round(pm, 1),
        "verified_median_us": round(vm, 1),
        "ratio": round(vm / pm, 2),
        "cli_median_us": round(statistics.median(cli) * 1e6, 1),
        "program_bytes": prog.stat().st_size,
    }


def _copy_rich(site: Path) -> None:
    import markdown_it
    import mdurl
    import pygments
    import rich

    for mod in (rich, pygments, markdown_it, mdurl):
        src = Path(mod.__file__ or "").parent
        shutil.copytree(src, site / src.name)


def _import_us(cmd: list[str], env: dict[str, str]) -> float:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    line = next(x for x in out.splitlines() if x.startswith("IMPORT_US"))
    return float(line.split()[1])


def bench_import(work: Path, key: imaguard.PrivateKey, rounds: int) -> dict[str, Any]:
    site = work / "site"
    site.mkdir()
    _copy_rich(site)
    script = work / "imp.py"
    script.write_text(IMPORT_SCRIPT)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT / "src")])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # compile the caches once (as pip does), then sign everything, caches included
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(site)], check=True)
    subprocess.run(
        [
            str(ROOT / ".venv/bin/imaguard"),
            "sign",
            "--key",
            str(work / "keys/private.pem"),
            "-r",
            str(site),
            str(script),
        ],
        check=True,
        capture_output=True,
    )
    # The plain run loads what imaguard.run loads before the script (imaguard, the keyring),
    # so both imports start from the same modules already in memory.
    launcher = (
        "import runpy, sys, imaguard.loaders, imaguard.crypto; "
        f"imaguard.crypto.Keyring.load({str(work / 'ring')!r}); "
        f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    plain_cmd = [sys.executable, "-c", launcher]
    guard_cmd = [sys.executable, "-m", "imaguard.run", "--keyring", str(work / "ring"), str(script)]
    for cmd in (plain_cmd, guard_cmd):
        _import_us(cmd, env)
    plain: list[float] = []
    guarded: list[float] = []
    wall_plain: list[float] = []
    wall_guard: list[float] = []
    for _ in range(rounds):
        t = time.perf_counter()
        plain.append(_import_us(plain_cmd, env))
        wall_plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        guarded.append(_import_us(guard_cmd, env))
        wall_guard.append(time.perf_counter() - t)
    pm, gm = statistics.median(plain), statistics.median(guarded)
    modules = sum(1 for _ in site.rglob("*.py"))
    return {
        "rounds": rounds,
        "plain_import_us": round(pm, 1),
        "guarded_import_us": round(gm, 1),
        "ratio": round(gm / pm, 2),
        "target": 1.5,
        "met": gm / pm <= 1.5,
        "plain_process_ms": round(statistics.median(wall_plain) * 1e3, 1),
        "guarded_process_ms": round(statistics.median(wall_guard) * 1e3, 1),
        "py_files_in_packages": modules,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_loaders: run as root (signatures in security.ima)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="imaguard-bench-loaders-") as tmp:
        work = Path(tmp)
        imaguard.generate_key("ecdsa-p256").write(work / "keys")
        (work / "ring").mkdir()
        shutil.copy(work / "keys/cert.der", work / "ring/cert.der")
        key = imaguard.load_private_key(work / "keys/private.pem")
        ring = imaguard.Keyring.load(work / "ring")
        result: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{os.cpu_count()} vCPU, kernel {platform.release()}",
        }
        result["exec"] = bench_exec(work, key, ring, 200 if args.quick else 2000)
        print("exec:", result["exec"], flush=True)
        result["import"] = bench_import(work, key, 5 if args.quick else 30)
        print("import:", result["import"], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
