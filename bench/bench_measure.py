"""Measurement-log benchmarks.

1. Verify a 100,000-entry ima-ng log (plus boot_aggregate), sha1 + sha256 banks, against
   a runtime policy allowing every entry and the expected PCR 10 values: imaguard
   (``verify_records`` on the ASCII list in one process; ``verify_log`` with the policy's
   JSON, on every core; and the whole ``imaguard log verify`` command, start-up, policy
   parsing and exit included) vs Keylime 7.14.3's ``process_measurement_list`` (run once
   per bank, as its verifier does) on the same log and policy, in one run, the order
   rotating per repetition. Keylime is timed in-process around parse + replay + policy
   checks (its policy is loaded before the clock starts); the headline ratio is that time
   over imaguard's whole command. Wall and CPU time (user + sys, children included) of
   both processes are reported too.
2. Durable appends: ``LogStore.append`` from 1, 8 and 64 threads (group commit, fdatasync
   per group, software PCR banks), and ``append_many`` in batches of 100 from one thread;
   entries/s and the latency from the call to the durable acknowledgement (median, p99;
   for batches, per batch).

Run: ``.venv/bin/python bench/bench_measure.py [--quick] [--json OUT]``; Keylime's
Python is ``.venv-keylime/bin/python`` (``make keylime``) or ``$IMAGUARD_KEYLIME_PYTHON``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from imaguard.formats.keylime import RuntimePolicy
from imaguard.formats.measurelist import serialize_ascii
from imaguard.formats.template import (
    TemplateDescriptor,
    TemplateEntry,
    encode_digest_ng,
    encode_name,
)
from imaguard.measure import (
    LogStore,
    buffer_entry,
    policy_from_records,
    records_from_ascii,
    verify_log,
    verify_records,
)

ROOT = Path(__file__).resolve().parent.parent

KEYLIME_TIMER = r"""
import copy, json, os, sys, time, types
os.environ.setdefault("KEYLIME_VERIFIER_IGNORE_TOMTOU_ERRORS", "false")
try:
    import gpg  # noqa
except ImportError:
    sys.modules["gpg"] = types.ModuleType("gpg")
import logging
logging.getLogger("keylime").setLevel(logging.CRITICAL)
from keylime.common import algorithms
from keylime.ima import file_signatures, ima
log_path, policy_path, sha1, sha256 = sys.argv[1:5]
policy = ima.deserialize_runtime_policy(open(policy_path).read())
ima.validate_runtime_policy(policy)
text = open(log_path).read()
t0 = time.perf_counter()
events = {}
for bank, want in (("sha1", sha1), ("sha256", sha256)):
    lines = text.split("\n")
    rings = file_signatures.ImaKeyrings()
    rings.set_tenant_keyring(file_signatures.ImaKeyring.from_string(policy["verification-keys"]))
    running, failure = ima.process_measurement_list(None, lines, copy.deepcopy(policy), pcrval=want,
        ima_keyrings=rings, boot_aggregates=None, hash_alg=algorithms.Hash(bank))
    events[bank] = [e.event_id for e in failure.events] if failure else []
print(json.dumps({"seconds": time.perf_counter() - t0, "events": events}))
"""


def make_log(n: int, seed: int = 20261128) -> list[TemplateEntry]:
    rng = random.Random(seed)
    desc = TemplateDescriptor.lookup("ima-ng")
    entries = [
        TemplateEntry(
            10, desc, (encode_digest_ng("sha256", b"\0" * 32), encode_name("boot_aggregate"))
        )
    ]
    for i in range(n):
        name = f"/usr/lib/pkg{i % 997}/file-{i}.so"
        entries.append(
            TemplateEntry(
                10, desc, (encode_digest_ng("sha256", rng.randbytes(32)), encode_name(name))
            )
        )
    return entries


def keylime_python() -> str:
    return os.environ.get("IMAGUARD_KEYLIME_PYTHON", str(ROOT / ".venv-keylime" / "bin" / "python"))


def bench_verify(n: int, reps: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="imaguard-bench-log-"))
    try:
        entries = make_log(n)
        ascii_log = serialize_ascii(entries)
        (work / "log.ascii").write_bytes(ascii_log)
        records, _, _ = records_from_ascii(ascii_log)
        replay = verify_records(records)
        expected = {b: {10: bytes.fromhex(v[10])} for b, v in replay.pcrs.items()}
        policy = policy_from_records(records)
        (work / "policy.json").write_text(policy.serialize())
        pol = RuntimePolicy.parse((work / "policy.json").read_text())

        def imaguard_once() -> float:
            t0 = time.perf_counter()
            recs, _, problem = records_from_ascii(ascii_log)
            result = verify_records(
                recs, expected=expected, runtime_policy=pol, parse_error=problem
            )
            elapsed = time.perf_counter() - t0
            if not result.ok:
                raise RuntimeError(f"imaguard rejected the benchmark log: {result.findings[:3]}")
            return elapsed

        def verify_log_once() -> float:
            t0 = time.perf_counter()
            result = verify_log(
                ascii_log, expected=expected, runtime_policy=(work / "policy.json").read_bytes()
            )
            elapsed = time.perf_counter() - t0
            if not result.ok:
                raise RuntimeError(f"verify_log rejected the benchmark log: {result.findings[:3]}")
            return elapsed

        # Both commands run as installed packages do: with their modules' bytecode cached
        # (the checkout's own environment may forbid writing it; the cache goes to scratch).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        cli_cmd = [
            str(ROOT / ".venv" / "bin" / "imaguard"),
            "log",
            "verify",
            "--ascii",
            str(work / "log.ascii"),
            "--runtime-policy",
            str(work / "policy.json"),
            "--pcrs",
            f"sha1={expected['sha1'][10].hex()}",
            "--pcrs",
            f"sha256={expected['sha256'][10].hex()}",
        ]
        kl_cmd = [
            keylime_python(),
            "-c",
            KEYLIME_TIMER,
            str(work / "log.ascii"),
            str(work / "policy.json"),
            expected["sha1"][10].hex(),
            expected["sha256"][10].hex(),
        ]
        subprocess.run(cli_cmd, check=True, capture_output=True, timeout=600, env=env)  # warm-up

        def timed(cmd: list[str]) -> tuple[float, float, str]:
            """Wall time, CPU time (user + sys, the command and its children) and stdout."""
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            r = subprocess.run(
                cmd, check=True, capture_output=True, text=True, timeout=900, env=env
            )
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            return wall, cpu, r.stdout

        load_before = os.getloadavg()
        ig, vl, cli, cli_cpu, kl, kl_process, kl_cpu = [], [], [], [], [], [], []
        kl_events: Any = None
        for rep in range(reps):
            # The order rotates from one repetition to the next.
            for which in ("cli", "keylime", "inprocess")[rep % 3 :] + (
                "cli",
                "keylime",
                "inprocess",
            )[: rep % 3]:
                if which == "cli":
                    wall, cpu, _ = timed(cli_cmd)
                    cli.append(wall)
                    cli_cpu.append(cpu)
                elif which == "keylime":
                    wall, cpu, out_text = timed(kl_cmd)
                    out = json.loads(out_text.strip().splitlines()[-1])
                    kl.append(out["seconds"])
                    kl_process.append(wall)
                    kl_cpu.append(cpu)
                    kl_events = out["events"]
                else:
                    ig.append(imaguard_once())
                    vl.append(verify_log_once())
        med_kl = statistics.median(kl)
        return {
            "entries": n + 1,
            "cpus": len(os.sched_getaffinity(0)),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "imaguard_inprocess_s": ig,
            "imaguard_verify_log_s": vl,
            "imaguard_cli_s": cli,
            "imaguard_cli_cpu_s": cli_cpu,
            "keylime_s": kl,
            "keylime_process_s": kl_process,
            "keylime_process_cpu_s": kl_cpu,
            "keylime_events": kl_events,
            "speedup_process": statistics.median(kl_process) / statistics.median(cli),
            "speedup_inprocess": med_kl / statistics.median(ig),
            "speedup_verify_log": med_kl / statistics.median(vl),
            "speedup_cli": med_kl / statistics.median(cli),
            "target_cli": 8.0,
            "met_cli": med_kl / statistics.median(cli) >= 8.0,
            "imaguard_pcrs": {b: v[10].hex() for b, v in expected.items()},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _append_worker(
    store: LogStore, mine: list[TemplateEntry], lat: list[float], batch: int
) -> None:
    clock = time.perf_counter
    if batch > 1:
        for i in range(0, len(mine), batch):
            t0 = clock()
            store.append_many(mine[i : i + batch])
            lat.append(clock() - t0)
        return
    for e in mine:
        t0 = clock()
        store.append(e)
        lat.append(clock() - t0)


def bench_appends(total: int) -> list[dict[str, Any]]:
    out = []
    for threads, batch in ((1, 1), (8, 1), (64, 1), (1, 100)):
        work = Path(tempfile.mkdtemp(prefix="imaguard-bench-append-", dir="/var/tmp"))
        try:
            store = LogStore(work / "state")
            per = total // threads
            entries = [
                [buffer_entry(f"event-{t}-{i}", f"{t}:{i}".encode()) for i in range(per)]
                for t in range(threads)
            ]
            latencies: list[list[float]] = [[] for _ in range(threads)]

            ts = [
                threading.Thread(
                    target=_append_worker, args=(store, entries[t], latencies[t], batch)
                )
                for t in range(threads)
            ]
            t0 = time.perf_counter()
            for th in ts:
                th.start()
            for th in ts:
                th.join()
            elapsed = time.perf_counter() - t0
            n = per * threads
            store.close()
            all_lat = sorted(x for lat in latencies for x in lat)
            out.append(
                {
                    "threads": threads,
                    "batch": batch,
                    "entries": n,
                    "seconds": elapsed,
                    "entries_per_s": n / elapsed,
                    "latency_median_ms": 1000 * statistics.median(all_lat),
                    "latency_p99_ms": 1000 * all_lat[int(0.99 * (len(all_lat) - 1))],
                }
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", choices=["verify", "append"], default=None)
    args = ap.parse_args()
    res: dict[str, Any] = {}
    if args.only in (None, "verify"):
        res["verify"] = bench_verify(10_000 if args.quick else 100_000, 1 if args.quick else 5)
    if args.only in (None, "append"):
        res["append"] = bench_appends(2_000 if args.quick else 20_000)
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
