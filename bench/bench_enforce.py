"""Enforcement micro-benchmark (by hand; root): fork+exec of a signed copy of /bin/true.

The program lives on a private tmpfs mounted for the run; an Enforcer (in a child process,
killed by PID at the end, under ``timeout``) marks only that filesystem. Three
configurations alternate in every round, each timing N ``posix_spawn`` + ``waitpid``:

* ``none``: no enforcer;
* ``miss``: an enforcer whose Guard keeps no cache (``use_cache=False``): every exec is an
  event and a full appraisal (hash + signature check), no ignore marks;
* ``cached``: the normal enforcer after one warm-up exec: the inode carries an ignore mark,
  so the kernel raises no event.

Reports the median per-spawn time of each configuration per round and the median over
rounds of the ratios to ``none``. Targets for context: cached <= x1.05.

Run: ``.venv/bin/python bench/bench_enforce.py [--n 2000] [--rounds 3] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SERVE = r"""
import sys, threading
from imaguard import Keyring
from imaguard.core import Guard
from imaguard.enforce import Enforcer, FanotifyGroup
from imaguard.policy import PolicySet, parse_policy
mount, cert, cache = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
pset = PolicySet()
pset.add("bench", parse_policy(
    "appraise func=BPRM_CHECK fsmagic=0x01021994 appraise_type=imasig\n"
    "appraise func=MMAP_CHECK mask=MAY_EXEC fsmagic=0x01021994 appraise_type=imasig\n",
    mode="imaguard"))
guard = Guard(pset, Keyring.load(cert), store="xattr", use_cache=cache)
group = FanotifyGroup.create()
group.mark_filesystem(mount)
enf = Enforcer(group, guard, workers=2)
stop = threading.Event()
t = threading.Thread(target=enf.run, args=(stop,), daemon=True)
t.start()
print("READY", flush=True)
sys.stdin.read()
stop.set()
t.join(30)
print(enf.stats(), file=sys.stderr, flush=True)
"""


def _spawn_times(prog: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        pid = os.posix_spawn(prog, [prog], {})
        _, status = os.waitpid(pid, 0)
        out.append(time.perf_counter() - t0)
        if status != 0:
            raise SystemExit(f"{prog} failed under the enforcer (status {status})")
    return out


def _start(mount: Path, cert: Path, cache: bool) -> subprocess.Popen[str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.Popen(
        [
            "timeout",
            "-s",
            "KILL",
            "600",
            sys.executable,
            "-c",
            SERVE,
            str(mount),
            str(cert),
            "1" if cache else "0",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert p.stdout is not None
    if p.stdout.readline().strip() != "READY":
        p.kill()
        raise SystemExit("the enforcer did not start")
    return p


def _stop(p: subprocess.Popen[str]) -> None:
    assert p.stdin is not None
    assert p.stdout is not None
    p.stdin.close()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)
    p.stdout.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (fanotify permission events, security.ima)")
    import imaguard

    with tempfile.TemporaryDirectory(prefix="imaguard-bench-enforce-") as tmp:
        mount = Path(tmp) / "mnt"
        mount.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True)
        try:
            key = imaguard.generate_key("ecdsa-p256")
            key.write(Path(tmp) / "key")
            prog = mount / "true"
            shutil.copy2("/bin/true", prog)
            imaguard.sign_file(
                prog, imaguard.load_private_key(Path(tmp) / "key/private.pem"), store="xattr"
            )
            cert = Path(tmp) / "key/cert.der"
            rounds: list[dict[str, float]] = []
            for r in range(a.rounds):
                row: dict[str, float] = {}
                order = ["none", "miss", "cached"]
                order = order[r % 3 :] + order[: r % 3]
                for cfg in order:
                    p = None if cfg == "none" else _start(mount, cert, cfg == "cached")
                    try:
                        if p is not None:
                            _spawn_times(str(prog), 5)  # warm-up (sets the mark when cached)
                        row[cfg] = statistics.median(_spawn_times(str(prog), a.n))
                    finally:
                        if p is not None:
                            _stop(p)
                rounds.append(row)
                print(
                    f"round {r + 1}: none {row['none'] * 1e6:.0f} us, "
                    f"miss {row['miss'] * 1e6:.0f} us (x{row['miss'] / row['none']:.2f}), "
                    f"cached {row['cached'] * 1e6:.0f} us (x{row['cached'] / row['none']:.2f})",
                    flush=True,
                )
        finally:
            subprocess.run(["umount", "-l", str(mount)], check=False)
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.uname().release} {os.uname().machine}, {os.cpu_count()} CPUs",
        "n": a.n,
        "rounds": rounds,
        "ratio_miss": statistics.median(x["miss"] / x["none"] for x in rounds),
        "ratio_cached": statistics.median(x["cached"] / x["none"] for x in rounds),
    }
    print(json.dumps({k: res[k] for k in ("date", "machine", "ratio_miss", "ratio_cached")}))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
