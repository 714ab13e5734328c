"""Runs an Enforcer on one test filesystem (a child process of the system tests).

argv: MOUNTPOINT POLICY CERT DECISIONS_LOG [--permissive] [--queue-limit N] [--workers N]
      [--adopt-fd FD] [--inflight PATH] [--interpreter GLOB]... [--no-open-events]
Prints READY after the mark is in place. stdin commands, one per line: ``stats`` (prints a
JSON line), ``flush``, ``quit`` (or EOF).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading

from imaguard import Keyring
from imaguard.core import Guard
from imaguard.enforce import ROOT_OWNED, Enforcer, EventDecision, FanotifyGroup
from imaguard.policy import PolicySet, parse_policy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mount")
    ap.add_argument("policy")
    ap.add_argument("cert")
    ap.add_argument("log")
    ap.add_argument("--permissive", action="store_true")
    ap.add_argument("--queue-limit", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--adopt-fd", type=int)
    ap.add_argument("--inflight")
    ap.add_argument("--interpreter", action="append")
    ap.add_argument("--no-open-events", action="store_true")
    ap.add_argument("--slow", type=float, default=0.0)
    ap.add_argument("--no-open-marks", action="store_true")
    ap.add_argument("--all-open-marks", action="store_true")
    ap.add_argument("--own-pid", type=int, action="append", default=[])
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    pset = PolicySet()
    with open(a.policy, "rb") as f:
        pset.add("test", parse_policy(f.read(), mode="imaguard", source=a.policy))
    guard = Guard(pset, Keyring.load(a.cert), store="xattr")
    if a.slow:
        import time

        real = guard.process

        def slow(*args, **kw):  # type: ignore[no-untyped-def]
            time.sleep(a.slow)
            return real(*args, **kw)

        guard.process = slow  # type: ignore[method-assign]
    log = open(a.log, "a", buffering=1)  # noqa: SIM115 - open before the mark, kept open
    lock = threading.Lock()

    def record(d: EventDecision) -> None:
        row = {
            "path": d.path,
            "pid": d.pid,
            "hook": d.hook,
            "mask": d.mask,
            "allowed": d.allowed,
            "override": d.permissive_override,
            "reason": d.reason,
            "exe": d.exe,
            "appraise": d.decision.actions["appraise"].outcome if d.decision is not None else None,
        }
        with lock:
            log.write(json.dumps(row) + "\n")

    if a.adopt_fd is not None:
        group = FanotifyGroup.adopt(a.adopt_fd)
    else:
        group = FanotifyGroup.create()
        group.mark_filesystem(a.mount, open_events=not a.no_open_events)
    kw = {}
    if a.interpreter:
        kw["interpreters"] = a.interpreter
    enf = Enforcer(
        group,
        guard,
        permissive=a.permissive,
        workers=a.workers,
        queue_limit=a.queue_limit,
        inflight_path=a.inflight,
        on_decision=record,
        own_pids=a.own_pid,
        open_marks=False if a.no_open_marks else True if a.all_open_marks else ROOT_OWNED,
        **kw,
    )
    recovered = enf.recover_inflight()
    stop = threading.Event()
    t = threading.Thread(target=enf.run, args=(stop,), daemon=True)
    t.start()
    print(f"READY {recovered} {os.getpid()}", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "stats":
            print(json.dumps(enf.stats().__dict__), flush=True)
        elif cmd == "flush":
            enf.flush()
            print("OK", flush=True)
        elif cmd == "quit":
            break
    stop.set()
    t.join(30)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
