"""imaguard benchmarks against sha256sum, openssl and evmctl (see bench/README.md).

    .venv/bin/python bench/run.py [--only hash|tree|tree1k] [--quick] [--keep] [--profile]

Benchmarks: hash (one large file), tree (sign/verify -r of 20,200 files) and tree1k (verify
-r of 100,000 files of 1 KiB; sign too with --sign-1k), each against its peers.
Writes bench/out/results-<timestamp>.json and, for a full run, docs/benchmarks.md. All
data lives in the scratch directory (default /var/tmp/imaguard-bench), removed at the
end unless --keep (a kept scratch directory is reused by the next run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import time
from typing import Any

import _data
import _measure
import _report
from _measure import Sample, spawn, summarize, timed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".venv", "bin")
PYTHON = os.path.join(BIN, "python")
IMAGUARD = os.path.join(BIN, "imaguard")
BENCH = os.path.join(ROOT, "bench")
OUT = os.path.join(BENCH, "out")
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")
MIB = 1 << 20

FULL_HASH_SIZE = 1 << 30
FULL_TREE = _data.TreeSpec(
    small_files=20_000,
    small_min=100,
    small_max=8192,
    files_per_dir=100,
    dirs_per_parent=10,
    big_files=200,
    big_size=1 << 20,
)
QUICK_TREE = _data.TreeSpec(
    small_files=1_000,
    small_min=100,
    small_max=8192,
    files_per_dir=100,
    dirs_per_parent=10,
    big_files=10,
    big_size=1 << 20,
)

# The second tree: many small files of one size, where per-file overhead dominates.
FULL_TREE_1K = _data.TreeSpec(
    small_files=100_000,
    small_min=1024,
    small_max=1024,
    files_per_dir=100,
    dirs_per_parent=10,
    big_files=0,
    big_size=1 << 20,
)
QUICK_TREE_1K = _data.TreeSpec(
    small_files=2_000,
    small_min=1024,
    small_max=1024,
    files_per_dir=100,
    dirs_per_parent=10,
    big_files=0,
    big_size=1 << 20,
)

HASH_TARGET = 0.9
RSS_TARGET_BYTES = 100_000_000
# Tree targets, as ratios imaguard / evmctl (at most): `ratio` is wall time with imaguard's
# default worker count, `cpu_ratio` CPU time (user + sys, workers included), `ratio_j1`
# wall time of imaguard -j 1.
SIGN_TARGETS = {"ratio": 0.2}
VERIFY_TARGETS = {"ratio": 0.6, "cpu_ratio": 1.2, "ratio_j1": 1.2}

BENCHMARKS = ("hash", "tree", "tree1k")  # --only choices; "tree1k" stores under "tree_1k"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def shown(argv: list[str], scratch: str) -> str:
    """A command line for the docs, with the scratch directory and venv path shortened."""
    text = shlex.join(argv) if argv[:2] != ["sh", "-c"] else argv[2]
    return text.replace(scratch, "$SCRATCH").replace(BIN + "/", "").replace("'", "")


def rotated(names: list[str], rep: int) -> list[str]:
    k = rep % len(names)
    return names[k:] + names[:k]


# --------------------------------------------------------------------------- hash


def _digest_from(tool: str, text: str) -> str:
    line = text.strip().splitlines()[0]
    if tool == "imaguard":
        return line.split()[0][4:]  # 0x04 type byte, algorithm id, digest
    if tool == "openssl":
        return line.rsplit("= ", 1)[1]
    return line.split()[0]


def bench_hash(scratch: str, quick: bool) -> dict[str, Any]:
    size = 64 * MIB if quick else FULL_HASH_SIZE
    reps = 2 if quick else 5
    log(f"hash: preparing a {size // MIB} MiB random file")
    path, reused = _data.random_file(scratch, size)
    nbytes, warm_s = _data.warm_read([path])
    log(f"hash: file {'reused' if reused else 'created'}; warm-up read {warm_s:.2f} s")
    cmds = {
        "imaguard": [IMAGUARD, "hash", "-n", "-a", "sha256", path],
        "sha256sum": ["sha256sum", path],
        "openssl": ["openssl", "dgst", "-sha256", path],
    }
    work = os.path.join(scratch, "out")
    os.makedirs(work, exist_ok=True)
    samples: dict[str, list[Sample]] = {k: [] for k in cmds}
    digests: set[str] = set()
    for rep in range(reps):
        for name in rotated(list(cmds), rep):
            out = os.path.join(work, f"hash-{name}.out")
            err = os.path.join(work, f"hash-{name}.err")
            s = timed(cmds[name], stdout=out, stderr=err)
            samples[name].append(s)
            with open(out) as f:
                digests.add(_digest_from(name, f.read()))
        log(f"hash: rep {rep + 1}/{reps} done")
    if len(digests) != 1:
        raise SystemExit(f"bench: the tools disagree on the digest: {sorted(digests)}")
    result: dict[str, Any] = {
        "file": path,
        "file_size": size,
        "file_reused": reused,
        "reps": reps,
        "warmup_s": warm_s,
        "warmup_bytes": nbytes,
        "digest": digests.pop(),
        "commands": {},
    }
    for name, argv in cmds.items():
        summ = summarize(samples[name])
        summ["argv"] = argv
        summ["shown"] = shown(argv, scratch)
        summ["throughput_mib_s"] = size / MIB / summ["median_wall_s"]
        result["commands"][name] = summ
    c = result["commands"]
    peer = max(("sha256sum", "openssl"), key=lambda k: c[k]["throughput_mib_s"])
    other = "sha256sum" if peer == "openssl" else "openssl"
    result["fastest_peer"] = peer
    result["ratio"] = c["imaguard"]["throughput_mib_s"] / c[peer]["throughput_mib_s"]
    result["ratio_other"] = c["imaguard"]["throughput_mib_s"] / c[other]["throughput_mib_s"]
    result["target"] = HASH_TARGET
    result["met"] = result["ratio"] >= HASH_TARGET
    result["rss_target_bytes"] = RSS_TARGET_BYTES
    result["rss_met"] = c["imaguard"]["max_rss_kib"] * 1024 < RSS_TARGET_BYTES

    # Startup: the same command on an empty file.
    empty = os.path.join(scratch, "hash", "empty")
    open(empty, "wb").close()
    start = [timed([IMAGUARD, "hash", "-n", "-a", "sha256", empty]) for _ in range(reps)]
    result["startup_empty_file"] = summarize(start)

    # The RSS floor of the method: the wrapper measuring `true`.
    result["rss_method"] = _measure.RSS_METHOD
    result["rss_floor_kib"] = spawn(["true"]).maxrss_kib

    # In-process library call, in a fresh interpreter.
    out = os.path.join(work, "inprocess.json")
    s = timed([PYTHON, os.path.join(BENCH, "_inprocess.py"), path, str(reps)], stdout=out)
    with open(out) as f:
        ip = json.load(f)
    if ip["digest"] != result["digest"]:
        raise SystemExit("bench: imaguard.hash_file gave a different digest")
    ip["hash_file_median_s"] = statistics.median(ip["hash_file_s"])
    ip["hashlib_median_s"] = statistics.median(ip["hashlib_s"])
    ip["throughput_mib_s"] = size / MIB / ip["hash_file_median_s"]
    ip["ratio"] = ip["throughput_mib_s"] / c[peer]["throughput_mib_s"]
    ip["process_max_rss_kib"] = s.maxrss_kib
    result["inprocess"] = ip
    log(
        f"hash: imaguard {c['imaguard']['throughput_mib_s']:.0f} MiB/s, "
        f"sha256sum {c['sha256sum']['throughput_mib_s']:.0f}, "
        f"openssl {c['openssl']['throughput_mib_s']:.0f}; ratio vs {peer} "
        f"{result['ratio']:.2f} (target ≥ {HASH_TARGET}); in-process {ip['ratio']:.2f}"
    )
    return result


# --------------------------------------------------------------------------- tree


_SUMMARY = re.compile(r"imaguard: (\d+) (signed|verified)")


def _imaguard_count(errfile: str, verb: str) -> int:
    with open(errfile) as f:
        text = f.read()
    for m in _SUMMARY.finditer(text):
        if m.group(2) == verb:
            return int(m.group(1))
    return -1


def make_keys(scratch: str) -> str:
    """An RSA-2048 key and certificate, generated once per run, shared by the trees."""
    keydir = os.path.join(scratch, "keys")
    spawn([IMAGUARD, "keys", "generate", "--type", "rsa2048", "--out", keydir, "--force"])
    return keydir


def tree_dir(scratch: str, key: str) -> str:
    """The scratch subdirectory of one tree (make_tree keeps `tree` and `tree.done` in it).

    Scratch directories kept by earlier versions have the tree directly in the scratch
    directory (``tree/`` and ``tree.done``); that layout is removed first.
    """
    legacy = os.path.join(scratch, "tree.done")
    if os.path.exists(legacy):
        os.unlink(legacy)
        shutil.rmtree(os.path.join(scratch, "tree"), ignore_errors=True)
    d = os.path.join(scratch, key)
    os.makedirs(d, exist_ok=True)
    return d


def _ratios(op: dict[str, Any], targets: dict[str, float]) -> None:
    """Wall and CPU ratios imaguard / evmctl, the targets and whether each is met."""
    ev = op["evmctl"]
    op["ratio"] = op["imaguard"]["median_wall_s"] / ev["median_wall_s"]
    op["ratio_j1"] = op["imaguard_j1"]["median_wall_s"] / ev["median_wall_s"]
    op["cpu_ratio"] = op["imaguard"]["median_cpu_s"] / ev["median_cpu_s"]
    op["cpu_ratio_j1"] = op["imaguard_j1"]["median_cpu_s"] / ev["median_cpu_s"]
    op["targets"] = dict(targets)
    op["met_each"] = {k: op[k] <= t for k, t in targets.items()}
    op["target"] = targets["ratio"]  # the wall-time target (kept from older results files)
    op["met"] = all(op["met_each"].values())


def _ratio_log(key: str, verb: str, op: dict[str, Any]) -> str:
    t = op["targets"]
    parts = [
        f"{k} {op[k]:.2f} (≤ {t[k]:.2f}: {'met' if op['met_each'][k] else 'NOT met'})" for k in t
    ]
    rest = [f"{k} {op[k]:.2f}" for k in ("ratio", "ratio_j1", "cpu_ratio") if k not in t]
    return f"{key}: {verb} " + ", ".join(parts + rest)


def bench_tree(
    scratch: str,
    key: str,
    spec: _data.TreeSpec,
    reps: int,
    keydir: str,
    *,
    sign_timed: bool = True,
) -> dict[str, Any]:
    """sign -r and verify -r of one tree, imaguard (all cores and -j 1) vs evmctl.

    The tree lives in ``scratch/key/``; the results are stored under ``key``. With
    ``sign_timed`` false the tree is signed once, untimed, by imaguard (and checked), and
    only verify is timed.
    """
    jobs = os.cpu_count() or 1
    log(f"{key}: preparing {spec.small_files} small + {spec.big_files} big files")
    t0 = time.perf_counter()
    root, reused = _data.make_tree(tree_dir(scratch, key), spec)
    paths = sorted(_data.files(root))
    n = len(paths)
    expected = spec.small_files + spec.big_files
    if n != expected:
        raise SystemExit(f"bench: tree has {n} files, expected {expected}")
    log(f"{key}: {'reused' if reused else 'created'} in {time.perf_counter() - t0:.1f} s")
    nbytes, warm_s = _data.warm_read(paths)

    key_pem = os.path.join(keydir, "private.pem")
    cert = os.path.join(keydir, "cert.der")
    work = os.path.join(scratch, "out")
    os.makedirs(work, exist_ok=True)

    result: dict[str, Any] = {
        "key": key,
        "root": root,
        "keydir": keydir,
        "spec": spec.__dict__,
        "n_files": n,
        "bytes": nbytes,
        "reused": reused,
        "reps": reps,
        "jobs": jobs,
        "warmup_s": warm_s,
        "sign_timed": sign_timed,
    }

    # ---- sign
    sign_cmds = {
        "imaguard": [IMAGUARD, "sign", "--key", key_pem, "-a", "sha256", "-r", root],
        "imaguard_j1": [IMAGUARD, "sign", "--key", key_pem, "-a", "sha256", "-j", "1", "-r", root],
        "evmctl": ["evmctl", "ima_sign", "-r", "-a", "sha256", "--key", key_pem, root],
    }
    if sign_timed:
        result["sign"] = _bench_sign(key, sign_cmds, paths, reps, scratch, work)
    else:
        err = os.path.join(work, f"{key}-sign-untimed.err")
        _data.clear_xattrs(paths)
        s = spawn(sign_cmds["imaguard"], stderr=err)
        count, _fp = _data.xattr_census(paths)
        if count != n or _imaguard_count(err, "signed") != n:
            raise SystemExit(f"bench: the untimed sign left {count} of {n} files signed ({err})")
        result["signed_untimed"] = {
            "argv": sign_cmds["imaguard"],
            "shown": shown(sign_cmds["imaguard"], scratch),
            "wall_s": s.wall_s,
            "cpu_s": s.user_s + s.sys_s,
        }
        log(f"{key}: signed once, untimed, by imaguard in {s.wall_s:.2f} s (sign not timed)")

    # ---- verify (the tree is signed by the last sign run; all runs wrote the same values)
    q = shlex.quote
    evm_verify = f"find {q(root)} -type f -print0 | xargs -0 evmctl ima_verify --key {q(cert)}"
    verify_cmds = {
        "imaguard": [IMAGUARD, "verify", "--cert", cert, "-r", root],
        "imaguard_j1": [IMAGUARD, "verify", "--cert", cert, "-j", "1", "-r", root],
        "evmctl": ["sh", "-c", evm_verify],
    }
    # Once, untimed: evmctl -v really verified every file.
    err = os.path.join(work, f"{key}-verify-evmctl-v.err")
    spawn(["sh", "-c", evm_verify.replace("evmctl ima_verify", "evmctl -v ima_verify")], stderr=err)
    with open(err) as f:
        text = f.read()
    ok_lines = len(re.findall(r": verification is OK$", text, re.MULTILINE))
    invocations = len(re.findall(r"^key 1: ", text, re.MULTILINE))
    if ok_lines != n:
        raise SystemExit(f"bench: evmctl verified {ok_lines} of {n} files ({err})")
    samples: dict[str, list[Sample]] = {k: [] for k in verify_cmds}
    for rep in range(reps):
        for name in rotated(list(verify_cmds), rep):
            err = os.path.join(work, f"{key}-verify-{name}.err")
            s = timed(verify_cmds[name], stderr=err)  # exit 0 is checked by spawn
            samples[name].append(s)
            if name.startswith("imaguard") and _imaguard_count(err, "verified") != n:
                raise SystemExit(f"bench: {name} did not report {n} verified ({err})")
            log(f"{key}: verify {name} rep {rep + 1}/{reps}: {s.wall_s:.2f} s")
    find_only = summarize(
        [timed(["find", root, "-type", "f", "-print0"]) for _ in range(max(reps, 3))]
    )
    verify: dict[str, Any] = {k: summarize(v) for k, v in samples.items()}
    for name, argv in verify_cmds.items():
        verify[name]["argv"] = argv
        verify[name]["shown"] = shown(argv, scratch)
    verify["find_only"] = find_only
    verify["checks"] = {
        "evmctl_verification_ok_lines": ok_lines,
        "evmctl_invocations_by_xargs": invocations,
        "summary": (
            f"Every run exited 0; each imaguard run reported {n:,} verified, and an untimed "
            f"`evmctl -v` pass printed {ok_lines:,} `verification is OK` lines "
            f"(xargs ran evmctl {invocations} times)."
        ),
    }
    _ratios(verify, VERIFY_TARGETS)
    result["verify"] = verify
    log(_ratio_log(key, "verify", verify))
    return result


def _bench_sign(
    key: str,
    sign_cmds: dict[str, list[str]],
    paths: list[str],
    reps: int,
    scratch: str,
    work: str,
) -> dict[str, Any]:
    n = len(paths)
    samples: dict[str, list[Sample]] = {k: [] for k in sign_cmds}
    fingerprints: dict[str, set[str]] = {k: set() for k in sign_cmds}
    counts: dict[str, list[int]] = {k: [] for k in sign_cmds}
    for rep in range(reps):
        for name in rotated(list(sign_cmds), rep):
            err = os.path.join(work, f"{key}-sign-{name}.err")
            s = timed(sign_cmds[name], stderr=err, before=lambda: _data.clear_xattrs(paths))
            samples[name].append(s)
            count, fp = _data.xattr_census(paths)
            counts[name].append(count)
            fingerprints[name].add(fp)
            if count != n:
                raise SystemExit(f"bench: {name} signed {count} of {n} files ({err})")
            if name.startswith("imaguard") and _imaguard_count(err, "signed") != n:
                raise SystemExit(f"bench: {name} did not report {n} signed ({err})")
            log(f"{key}: sign {name} rep {rep + 1}/{reps}: {s.wall_s:.2f} s")
    all_fps = set().union(*fingerprints.values())
    sign: dict[str, Any] = {k: summarize(v) for k, v in samples.items()}
    for name, argv in sign_cmds.items():
        sign[name]["argv"] = argv
        sign[name]["shown"] = shown(argv, scratch)
    identical = len(all_fps) == 1
    sign["checks"] = {
        "files_with_security_ima": counts,
        "identical_values_all_tools": identical,
        "summary": (
            f"every run left all {n:,} files signed"
            + (
                ", and imaguard and evmctl wrote byte-identical values in every run "
                "(RSA PKCS#1 v1.5 is deterministic and both use the same key id), "
                "so each tool verifies the other's signatures below."
                if identical
                else "; the values written by the tools differ (see the JSON)."
            )
        ),
    }
    _ratios(sign, SIGN_TARGETS)
    log(_ratio_log(key, "sign", sign))
    return sign


# --------------------------------------------------------------------------- bytecode


def prepare_bytecode() -> dict[str, Any]:
    """Compile imaguard's modules once and let the timed commands use the bytecode.

    imaguard is installed editable from src/, so with PYTHONDONTWRITEBYTECODE set (as in
    the development shell) and no cached bytecode every imaguard process would compile
    its modules from source, which an installed program does not pay. The variable is
    removed from this process's environment, so every command started afterwards
    (timed or not) runs without it; the peers do not read it.
    """
    src = os.path.join(ROOT, "src")
    argv = [PYTHON, "-m", "compileall", "-q", src]
    s = spawn(argv)
    was_set = os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None
    missing = []
    n = 0
    for dirpath, _dirs, names in os.walk(os.path.join(src, "imaguard")):
        for name in names:
            if name.endswith(".py"):
                n += 1
                path = os.path.join(dirpath, name)
                if not os.path.exists(importlib.util.cache_from_source(path)):
                    missing.append(os.path.relpath(path, ROOT))
    if missing:
        raise SystemExit(f"bench: compileall left {len(missing)} modules uncompiled: {missing}")
    log(f"bytecode: {n} modules compiled in {s.wall_s:.1f} s (PYTHONDONTWRITEBYTECODE removed)")
    return {
        "compileall": ".venv/bin/python -m compileall -q src",
        "compileall_wall_s": s.wall_s,
        "modules_with_bytecode": n,
        "pythondontwritebytecode_was_set": was_set,
        "pythondontwritebytecode_removed": True,
    }


# --------------------------------------------------------------------------- profile


def profile(scratch: str, stamp: str, tree: dict[str, Any] | None) -> dict[str, Any]:
    """python -X importtime for startup; cProfile of sign/verify -j 1 over the tree."""
    pdir = os.path.join(OUT, f"profile-{stamp}")
    os.makedirs(pdir, exist_ok=True)
    it = os.path.join(pdir, "importtime.txt")
    spawn([PYTHON, "-X", "importtime", "-c", "import imaguard.cli"], stderr=it)
    rows = []
    with open(it) as f:
        for line in f:
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
            if m:
                rows.append((int(m.group(2)), int(m.group(1)), len(m.group(3)), m.group(4)))
    top = [r for r in rows if r[2] <= 3]
    top.sort(reverse=True)
    result: dict[str, Any] = {
        "dir": pdir,
        "import_imaguard_cli_us": max((r[0] for r in rows if r[3] == "imaguard.cli"), default=0),
        "top_level_imports_us": [(name, cum) for cum, _self, _d, name in top[:15]],
    }
    if tree is not None:
        root = tree["root"]
        keydir = tree.get("keydir", os.path.join(scratch, "keys"))
        for op, args in (
            ("verify", ["verify", "--cert", os.path.join(keydir, "cert.der"), "-j", "1"]),
            ("sign", ["sign", "--key", os.path.join(keydir, "private.pem"), "-j", "1"]),
        ):
            out = os.path.join(pdir, f"cprofile-{op}.txt")
            s = spawn(
                [PYTHON, os.path.join(BENCH, "_profile.py"), out, *args, "-r", root],
                stderr=os.path.join(pdir, f"cprofile-{op}.err"),
            )
            result[f"cprofile_{op}_wall_s"] = s.wall_s
    log(f"profile: written to {pdir}")
    return result


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        help="run only this benchmark (repeatable); default: all",
    )
    ap.add_argument(
        "--sign-1k",
        action="store_true",
        help="also time sign on the 1 KiB tree (tree1k; about 8 minutes more on 2 cores: "
        "evmctl signs about 1,000 files/s); default: that tree is signed once, untimed",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, fewer repetitions (smoke)")
    ap.add_argument("--scratch", default="/var/tmp/imaguard-bench", help="scratch directory")
    ap.add_argument("--keep", action="store_true", help="keep the scratch data for the next run")
    ap.add_argument(
        "--profile", action="store_true", help="also write importtime/cProfile to bench/out"
    )
    ap.add_argument(
        "--slack",
        type=float,
        default=240.0,
        help="seconds in all that may be spent waiting for other processes to go quiet "
        "and retaking samples they disturbed (default 240; 0 = never)",
    )
    ap.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="run nothing: rewrite docs/benchmarks.md from a results file (analysis kept)",
    )
    docs = ap.add_mutually_exclusive_group()
    docs.add_argument("--docs", action="store_true", help="write docs/benchmarks.md regardless")
    docs.add_argument("--no-docs", action="store_true", help="never write docs/benchmarks.md")
    args = ap.parse_args()

    if args.render:
        with open(args.render) as f:
            text = _report.render(
                json.load(f), _report.existing_analysis(DOCS), _report.existing_other(DOCS)
            )
        with open(DOCS, "w") as f:
            f.write(text)
        log(f"{DOCS} rewritten from {args.render}")
        return
    for tool in (IMAGUARD, PYTHON):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"bench: {tool} missing; run `make venv` first")
    only = args.only or list(BENCHMARKS)
    if os.geteuid() != 0 and {"tree", "tree1k"} & set(only):
        raise SystemExit("bench: the tree benchmarks write security.ima and need root")
    _measure.set_slack(args.slack)
    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    scratch = _data.prepare_scratch(
        os.path.join(args.scratch, "quick") if args.quick else args.scratch
    )
    os.environ["LC_ALL"] = "C"
    os.makedirs(os.path.join(scratch, "out"), exist_ok=True)
    _measure.set_workdir(os.path.join(scratch, "out"))
    bytecode = prepare_bytecode()
    res: dict[str, Any] = {
        "timestamp": stamp,
        "date": now.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "only": only,
        "machine": _measure.machine_info(scratch, PYTHON),
        "source": _measure.source_identity(ROOT),
        "bytecode": bytecode,
    }
    tree_reps = 1 if args.quick else 3
    try:
        if "hash" in only:
            res["hash"] = bench_hash(scratch, args.quick)
        keydir = make_keys(scratch) if {"tree", "tree1k"} & set(only) else ""
        if "tree" in only:
            spec = QUICK_TREE if args.quick else FULL_TREE
            res["tree"] = bench_tree(scratch, "tree", spec, tree_reps, keydir)
        if "tree1k" in only:
            spec = QUICK_TREE_1K if args.quick else FULL_TREE_1K
            res["tree_1k"] = bench_tree(
                scratch, "tree_1k", spec, tree_reps, keydir, sign_timed=args.sign_1k
            )
        if args.profile:
            res["profile"] = profile(scratch, stamp, res.get("tree") or res.get("tree_1k"))
    finally:
        if args.keep:
            log(f"scratch data kept in {scratch} (reused by the next run)")
        else:
            _data.cleanup(scratch)
            if args.quick:  # the parent too, if the quick run created it
                parent = os.path.dirname(scratch)
                if set(os.listdir(parent)) <= {_data.MARKER}:
                    if os.path.exists(os.path.join(parent, _data.MARKER)):
                        os.unlink(os.path.join(parent, _data.MARKER))
                    os.rmdir(parent)
            log(f"scratch data removed ({scratch})")
    res["elapsed_s"] = time.perf_counter() - started
    hist = _measure.history
    res["contention"] = {
        "slack_s": args.slack,
        "slack_left_s": _measure.slack(),
        "quiet_threshold_cpu": _measure.QUIET_LOAD,
        "contended_threshold_cpu": _measure.CONTENDED,
        "retaken": sum(x.retaken for x in hist),
        "contended_kept": sum(x.contended for x in hist),
        "waited_s": sum(x.waited_s for x in hist),
        "measured_wall_s": sum(x.wall_s for x in hist),
        "other_cpu_s": sum(x.other_cpu_s for x in hist),
        "steal_s": sum(x.steal_s for x in hist),
    }

    os.makedirs(OUT, exist_ok=True)
    out = os.path.join(OUT, f"results-{stamp}.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=2)
    log(f"results: {out} ({res['elapsed_s']:.0f} s in all)")

    full = not args.quick and set(only) == set(BENCHMARKS)
    if args.docs or (full and not args.no_docs):
        text = _report.render(res, _report.existing_analysis(DOCS), _report.existing_other(DOCS))
        with open(DOCS, "w") as f:
            f.write(text)
        log(f"figures written to {DOCS}")
    print()
    for row in _report.summary_rows(res):
        print(" | ".join(c.replace("**", "").replace("`", "") for c in row if c))


if __name__ == "__main__":
    sys.exit(main())
