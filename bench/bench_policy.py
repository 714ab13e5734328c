"""Policy engine benchmark: parse a 10,000-rule policy, decide 100,000 requests.

Measures, in one run:

* parse time of a generated 10,000-rule kernel-grammar policy;
* per-decision time of the compiled index over 100,000 random requests (median, p99);
* the naive linear walk (the kernel's algorithm, rule by rule) on a sample of the same
  requests, for the speed-up ratio;
* the isolation curve: decision time for BPRM_CHECK requests while the rules for *other*
  hooks grow from 10 to 1,000 to 10,000 (the BPRM_CHECK rules stay the same).

Run: ``.venv/bin/python bench/bench_policy.py [--quick] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from typing import Any

from imaguard.policy import CompiledPolicy, Object, Request, Subject, evaluate_naive, parse_policy

FUNCS = [
    "FILE_CHECK",
    "MMAP_CHECK",
    "BPRM_CHECK",
    "CREDS_CHECK",
    "MODULE_CHECK",
    "FIRMWARE_CHECK",
    "POLICY_CHECK",
    "KEXEC_KERNEL_CHECK",
]
ACTIONS = ["measure", "dont_measure", "appraise", "dont_appraise", "audit", "hash", "dont_hash"]
MAGICS = [0x1000 + i for i in range(400)]


def rule_text(rng: random.Random, func: str | None) -> str:
    action = rng.choice(ACTIONS)
    parts = [action]
    if func is not None:
        parts.append(f"func={func}")
    r = rng.random()
    if r < 0.5:
        parts.append(f"fsmagic=0x{rng.choice(MAGICS):x}")
    elif r < 0.7:
        parts.append(f"fowner={rng.randint(0, 2000)}")
    elif r < 0.85:
        parts.append(f"uid={rng.randint(0, 2000)}")
    else:
        parts.append(f"fsname=fs{rng.randint(0, 300)}")
    if rng.random() < 0.3:
        parts.append(rng.choice(["mask=MAY_READ", "mask=^MAY_EXEC", "mask=MAY_EXEC"]))
    if action == "measure" and rng.random() < 0.2:
        parts.append(f"pcr={rng.randint(10, 14)}")
    if action == "appraise" and rng.random() < 0.5:
        parts.append("appraise_type=imasig")
    return " ".join(parts)


def make_policy(rng: random.Random, n: int) -> str:
    return "\n".join(rule_text(rng, rng.choice(FUNCS)) for _ in range(n)) + "\n"


def make_request(rng: random.Random, func: str | None = None) -> Request:
    return Request(
        func or rng.choice(FUNCS),
        rng.choice([1, 4, 6]),
        Subject(uid=rng.randint(0, 2000)),
        Object(
            fowner=rng.randint(0, 2000),
            fgroup=0,
            fsmagic=rng.choice(MAGICS),
            fsname=f"fs{rng.randint(0, 300)}",
        ),
    )


def time_each(fn: Any, items: list[Request]) -> list[float]:
    out = []
    clock = time.perf_counter_ns
    for item in items:
        t0 = clock()
        fn(item)
        out.append((clock() - t0) / 1000.0)
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def run(quick: bool) -> dict[str, Any]:
    rng = random.Random(20261128)
    n_rules = 2_000 if quick else 10_000
    n_requests = 10_000 if quick else 100_000
    n_naive = 500 if quick else 2_000
    text = make_policy(rng, n_rules)
    t0 = time.perf_counter()
    pol = parse_policy(text)
    parse_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = CompiledPolicy(pol.rules)
    for f in FUNCS:  # build every hook's index up front, so decisions measure lookups only
        compiled.evaluate(Request(f))
    compile_s = time.perf_counter() - t0
    requests = [make_request(rng) for _ in range(n_requests)]
    fast = time_each(compiled.evaluate, requests)
    sample = requests[:n_naive]
    naive = time_each(lambda r: evaluate_naive(pol.rules, r), sample)
    fast_sample = time_each(compiled.evaluate, sample)
    mismatches = sum(1 for r in sample if compiled.evaluate(r) != evaluate_naive(pol.rules, r))
    result: dict[str, Any] = {
        "rules": n_rules,
        "requests": n_requests,
        "parse_s": parse_s,
        "compile_s": compile_s,
        "compiled_median_us": statistics.median(fast),
        "compiled_p99_us": pct(fast, 0.99),
        "naive_sample": n_naive,
        "naive_median_us": statistics.median(naive),
        "compiled_median_us_same_sample": statistics.median(fast_sample),
        "speedup_median": statistics.median(naive) / statistics.median(fast_sample),
        "mismatches": mismatches,
    }
    # Isolation curve: 10 BPRM_CHECK rules fixed; other hooks' rules grow.
    curve = []
    bprm_rules = [rule_text(rng, "BPRM_CHECK") for _ in range(10)]
    bprm_requests = [make_request(rng, "BPRM_CHECK") for _ in range(20_000 if not quick else 5_000)]
    others = [f for f in FUNCS if f != "BPRM_CHECK"]
    for n_other in (10, 1_000, 10_000):
        lines = bprm_rules + [rule_text(rng, rng.choice(others)) for _ in range(n_other)]
        rng.shuffle(lines)
        p = parse_policy("\n".join(lines) + "\n")
        c = CompiledPolicy(p.rules)
        c.evaluate(bprm_requests[0])
        ts = time_each(c.evaluate, bprm_requests)
        nv = time_each(lambda r, rules=p.rules: evaluate_naive(rules, r), bprm_requests[:300])
        curve.append(
            {
                "other_rules": n_other,
                "compiled_median_us": statistics.median(ts),
                "naive_median_us": statistics.median(nv),
            }
        )
    result["isolation_curve"] = curve
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    res = run(args.quick)
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0 if res["mismatches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
