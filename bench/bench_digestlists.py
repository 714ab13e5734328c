"""Digest-list benchmarks (imaguard.digestlists, the trust database).

1. ``imaguard digestlist make --tree /usr`` (every regular file, SHA-256) against
   ``find /usr -type f -exec sha256sum {} +`` on the same tree, page cache warmed first
   (``find ... -exec cat``), then signing the list.
2. A synthetic 1,000,000-digest list: make + sign, load into a fresh trust database;
   open the database (target <= 50 ms), lookup median from Python with the digest given
   (target <= 2 us), RSS growth of the process that opened it and looked 100,000 digests up
   (target <= 40 MB per million digests).
3. Adding a 1,000-file package list to that database (target <= 50 ms plus hashing), ten
   times: the median and the slowest (the fifth add folds the small tables into the base).
4. A cache-cold decision (``Guard.process``, a fresh Guard each time) on a 64 KiB file
   under ``appraise_type=digestlist`` (the digest in the database) against the same
   under ``appraise_type=imasig`` (the file signed): median over 2,000 files.

Run: ``.venv/bin/python bench/bench_digestlists.py [--quick] [--json OUT]`` (as root).
"""

from __future__ import annotations

import argparse
import hashlib
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
from imaguard.appraise import TrustDB
from imaguard.core import Guard, MemoryAudit
from imaguard.digestlists import sign_list
from imaguard.formats import digestlist as dlf
from imaguard.formats.hashalgo import by_name
from imaguard.policy import PolicySet, parse_policy

ROOT = Path(__file__).resolve().parents[1]


def bench_tree(work: Path, key_pem: Path, tree: str) -> dict[str, Any]:
    # warm the page cache first, so neither side pays for the disk
    subprocess.run(
        ["find", tree, "-type", "f", "-exec", "cat", "{}", "+"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    t = time.perf_counter()
    subprocess.run(
        ["find", tree, "-type", "f", "-exec", "sha256sum", "{}", "+"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    find_s = time.perf_counter() - t
    out = work / "usr.list"
    t = time.perf_counter()
    subprocess.run(
        [str(ROOT / ".venv/bin/imaguard"), "digestlist", "make", "--tree", tree, "-o", str(out)],
        check=True,
        capture_output=True,
    )
    make_s = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run(
        [str(ROOT / ".venv/bin/imaguard"), "digestlist", "sign", "--key", str(key_pem), str(out)],
        check=True,
        capture_output=True,
    )
    sign_s = time.perf_counter() - t
    dl = dlf.parse(dlf.split_signature(out.read_bytes())[0])
    return {
        "tree": tree,
        "files": len(dl),
        "list_bytes": out.stat().st_size,
        "imaguard_make_s": round(make_s, 2),
        "find_sha256sum_s": round(find_s, 2),
        "ratio": round(make_s / find_s, 2),
        "sign_s": round(sign_s, 3),
    }


def _list(n: int, seed: str, key: imaguard.PrivateKey) -> tuple[bytes, list[bytes]]:
    digests = sorted({hashlib.sha256(f"{seed}-{i}".encode()).digest() for i in range(n)})
    dl = dlf.DigestList(by_name("sha256"), tuple(digests))
    return sign_list(dl, key), digests


def bench_million(
    work: Path, key: imaguard.PrivateKey, ring: imaguard.Keyring, n: int
) -> dict[str, Any]:
    t = time.perf_counter()
    data, digests = _list(n, "big", key)
    make_s = time.perf_counter() - t
    db_dir = work / "trust"
    t = time.perf_counter()
    TrustDB(db_dir).add(data, ring, name="synthetic")
    load_s = time.perf_counter() - t
    # open and look up in a fresh process: its RSS growth is the table's cost
    probe = r"""
import sys, time, statistics, random, json
from imaguard.appraise import TrustDB
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
import array
digests = [bytes.fromhex(x) for x in sys.stdin.read().split()]
times = array.array("q", bytes(8 * len(digests)))  # allocated before the baseline
before = rss()
t = time.perf_counter(); db = TrustDB(sys.argv[1]); open_ms = (time.perf_counter() - t) * 1e3
for i, d in enumerate(digests):
    t = time.perf_counter_ns(); found = db.lookup(d); times[i] = time.perf_counter_ns() - t
    assert found
miss = bytes(32)
t = time.perf_counter_ns(); assert not db.lookup(miss); miss_ns = time.perf_counter_ns() - t
print(json.dumps({"open_ms": open_ms, "lookup_median_us": statistics.median(times) / 1e3,
                  "lookup_p99_us": sorted(times)[int(len(times) * 0.99)] / 1e3,
                  "rss_growth_kib": rss() - before, "lookups": len(times)}))
"""
    sample = random_sample(digests, 100_000)
    r = subprocess.run(
        [sys.executable, "-c", probe, str(db_dir)],
        input=" ".join(d.hex() for d in sample),
        capture_output=True,
        text=True,
        check=True,
    )
    probe_result = json.loads(r.stdout)
    per_million = probe_result["rss_growth_kib"] / 1024 * (1_000_000 / n)
    return {
        "digests": n,
        "make_and_sign_s": round(make_s, 2),
        "first_load_s": round(load_s, 2),
        "open_ms": round(probe_result["open_ms"], 3),
        "open_target_ms": 50,
        "lookup_median_us": round(probe_result["lookup_median_us"], 3),
        "lookup_p99_us": round(probe_result["lookup_p99_us"], 3),
        "lookup_target_us": 2,
        "rss_growth_mib_per_million": round(per_million, 1),
        "rss_target_mib": 40,
    }


def random_sample(items: list[bytes], k: int) -> list[bytes]:
    import random

    rnd = random.Random(1)
    return rnd.sample(items, min(k, len(items)))


def bench_add_package(
    work: Path, key: imaguard.PrivateKey, ring: imaguard.Keyring, rounds: int
) -> dict[str, Any]:
    db = TrustDB(work / "trust")
    times: list[float] = []
    for i in range(rounds):
        data, _ = _list(1000, f"pkg{i}", key)
        t = time.perf_counter()
        db.add(data, ring, name=f"pkg{i}")
        times.append(time.perf_counter() - t)
    return {
        "package_files": 1000,
        "adds": rounds,
        "median_ms": round(statistics.median(times) * 1e3, 1),
        "max_ms": round(max(times) * 1e3, 1),
        "target_ms": 50,
        "base_digests": len(db) - 1000 * rounds,
    }


def bench_exec_decision(
    work: Path, key: imaguard.PrivateKey, ring: imaguard.Keyring, n: int
) -> dict[str, Any]:
    files = work / "files"
    files.mkdir()
    digests: dict[bytes, str] = {}
    paths = []
    for i in range(n):
        p = files / f"f{i}"
        data = os.urandom(64 << 10)
        p.write_bytes(data)
        imaguard.sign_file(p, key)
        digests[hashlib.sha256(data).digest()] = str(p)
        paths.append(p)
    dl = dlf.DigestList.build("sha256", digests, with_paths=False)
    db = TrustDB(work / "trust-exec")
    db.add(sign_list(dl, key), ring, name="files")

    def timed(policy: str, trust: TrustDB | None) -> float:
        ps = PolicySet()
        ps.add("p", parse_policy(policy, mode="imaguard"))
        out: list[float] = []
        for p in paths:
            g = Guard(ps, ring, audit=MemoryAudit(), trust=trust, use_cache=False)
            t = time.perf_counter()
            d = g.process(p, "BPRM_CHECK")
            out.append(time.perf_counter() - t)
            assert d.allowed, d.verdict
        return statistics.median(out) * 1e6

    # the digest-list rule: the files carry signatures too, but the list is looked up first
    listed = timed("appraise func=BPRM_CHECK appraise_type=digestlist\n", db)
    signed = timed("appraise func=BPRM_CHECK appraise_type=imasig\n", None)
    return {
        "files": n,
        "file_bytes": 64 << 10,
        "digestlist_median_us": round(listed, 1),
        "signature_median_us": round(signed, 1),
        "ratio": round(listed / signed, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--tree", default="/usr")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_digestlists: run as root", file=sys.stderr)
        return 2
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} vCPU, kernel {platform.release()}",
    }
    with tempfile.TemporaryDirectory(prefix="imaguard-bench-lists-") as tmp:
        work = Path(tmp)
        imaguard.generate_key("ecdsa-p256").write(work / "keys")
        (work / "ring").mkdir()
        shutil.copy(work / "keys/cert.der", work / "ring/cert.der")
        key = imaguard.load_private_key(work / "keys/private.pem")
        ring = imaguard.Keyring.load(work / "ring")
        if not args.quick:
            result["tree"] = bench_tree(work, work / "keys/private.pem", args.tree)
            print("tree:", result["tree"], flush=True)
        result["million"] = bench_million(work, key, ring, 100_000 if args.quick else 1_000_000)
        print("million:", result["million"], flush=True)
        result["add_package"] = bench_add_package(work, key, ring, 5 if args.quick else 10)
        print("add_package:", result["add_package"], flush=True)
        result["exec"] = bench_exec_decision(work, key, ring, 200 if args.quick else 2000)
        print("exec:", result["exec"], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
