"""Integrity-core benchmarks.

1. A decision on a cached file through the Python API (``Guard.process``, a policy that
   measures and appraises at BPRM_CHECK, the file already appraised): median and p99 over
   20,000 calls. Target: median <= 10 us.
2. The first appraisal of a 100 MiB signed file (``Guard.process`` with a cold cache, and
   ``imaguard.appraise``), against its parts measured in the same run: the time to
   sha256 the file (hashlib over the same buffer size) plus one RSA-2048 signature
   verification. Target: <= 1.1x.
3. ``signature_info`` on a 1 GiB file against hashing it: it must not read the content.

Run: ``.venv/bin/python bench/bench_core.py [--quick] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import imaguard
from imaguard.core import Guard, MemoryAudit
from imaguard.policy import PolicySet, parse_policy

POLICY = "measure func=BPRM_CHECK\nappraise func=BPRM_CHECK appraise_type=imasig\n"


def _file(path: Path, size: int) -> None:
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)


def _guard(work: Path, ring: imaguard.Keyring) -> Guard:
    pset = PolicySet()
    pset.add("exec", parse_policy(POLICY))
    return Guard(pset, ring, state=work / "state", audit=MemoryAudit())


def bench_cached(
    work: Path, key: imaguard.PrivateKey, ring: imaguard.Keyring, n: int
) -> dict[str, Any]:
    target = work / "tool"
    _file(target, 64 << 10)
    imaguard.sign_file(target, key)
    guard = _guard(work, ring)
    first = guard.process(target, "BPRM_CHECK")
    assert first.allowed
    assert not first.cached
    times = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        d = guard.process(target, "BPRM_CHECK")
        times.append((clock() - t0) / 1000)
    assert d.cached
    assert d.allowed
    guard.close()
    times.sort()
    return {
        "calls": n,
        "median_us": statistics.median(times),
        "p99_us": times[int(0.99 * (len(times) - 1))],
        "target_us": 10,
    }


def bench_first(
    work: Path, key: imaguard.PrivateKey, ring: imaguard.Keyring, size: int, reps: int
) -> dict[str, Any]:
    target = work / "big"
    _file(target, size)
    value = imaguard.sign_file(target, key)
    cert = ring.certificates[0]
    rows = []
    for _ in range(reps):
        # The parts, measured now: hash with the same reader, then one verification.
        with open(target, "rb") as f:  # warm the page cache equally for everyone
            while f.read(1 << 22):
                pass
        t0 = time.perf_counter()
        h = hashlib.sha256()
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        with open(target, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
        digest = h.digest()
        t_hash = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert cert.verifies(value.algorithm, digest, value.signature)
        t_verify = time.perf_counter() - t0
        t0 = time.perf_counter()
        verdict = imaguard.appraise(target, ring)
        t_appraise = time.perf_counter() - t0
        assert verdict.passed
        guard = Guard(_guard(work, ring).policies, ring, audit=MemoryAudit())
        t0 = time.perf_counter()
        d = guard.process(target, "BPRM_CHECK")
        t_guard = time.perf_counter() - t0
        guard.close()
        assert d.allowed
        assert not d.cached
        rows.append((t_hash, t_verify, t_appraise, t_guard))
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    parts = med[0] + med[1]
    return {
        "size_mib": size >> 20,
        "sha256_s": med[0],
        "verify_s": med[1],
        "appraise_s": med[2],
        "guard_first_s": med[3],
        "ratio_appraise": med[2] / parts,
        "ratio_guard": med[3] / parts,
        "target_ratio": 1.1,
        "note": "the Guard also measures the file into the log (one hash shared by both)",
    }


def bench_info(work: Path, key: imaguard.PrivateKey, size: int) -> dict[str, Any]:
    target = work / "huge"
    _file(target, size)
    imaguard.sign_file(target, key)
    t0 = time.perf_counter()
    imaguard.hash_file(target, "sha256")
    t_hash = time.perf_counter() - t0
    times = []
    for _ in range(100):
        t0 = time.perf_counter()
        info = imaguard.signature_info(target)
        times.append(time.perf_counter() - t0)
    assert info.signed
    med = statistics.median(times)
    return {
        "size_mib": size >> 20,
        "hash_s": t_hash,
        "signature_info_median_s": med,
        "ratio": med / t_hash,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imaguard-bench-core-", dir="/var/tmp"))
    try:
        gen = imaguard.generate_key("rsa2048")
        gen.write(work / "keys")
        key = imaguard.load_private_key(work / "keys" / "private.pem")
        ring = imaguard.Keyring.load(work / "keys" / "cert.der")
        res = {
            "cached_decision": bench_cached(work, key, ring, 2_000 if args.quick else 20_000),
            "first_appraisal": bench_first(
                work, key, ring, (16 if args.quick else 100) << 20, 1 if args.quick else 5
            ),
            "signature_info": bench_info(work, key, (64 if args.quick else 1024) << 20),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
