"""``make soak``: the enforcement daemon under load and faults, the long runs (root).

Each scenario runs the real daemon (``imaguard daemon --foreground``) on a tmpfs this script
mounts and watches nothing else; docs/reliability.md describes them and records the figures.

1. ``slow-hash``: execs of large signed programs (``/bin/true`` with ``--big-mib`` MiB
   appended, signed with sha512: hashing one takes seconds) while a loop execs fresh signed
   copies of ``/bin/true`` and an unsigned one: the latency of those small decisions while
   the big hashes run, against the same loop without them; with the default ``workers``
   (one large program, then four at once: as many as there are workers) and with
   ``workers = 1``. Large files go to the Enforcer's slow lane (``slow_workers`` threads);
   before it existed, four large programs (or one with ``workers = 1``) held everything.
2. ``load``: ``--loops`` concurrent exec loops for ``--seconds`` (the bench_daemon C helper:
   signed copies, an unsigned program every 50th exec) while, every ``--every`` seconds,
   the audit trail is renamed and the daemon sent SIGHUP (logrotate's way, and a reload that
   alternately adds and drops a policy), and then a policy pushed over the control socket
   is replaced (``imaguard ctl replace``): no hang, no false denial, no unsigned program
   allowed, every denial's audit record present exactly once across the rotated files.
3. ``kill-worker``: SIGKILL of the worker while a loop execs an unsigned program: accesses
   let through (expected 0: the supervisor holds the group), the restart gap.
4. ``kill-daemon``: SIGKILL of the supervisor and the worker, restarted after 100 ms (as
   systemd's ``Restart=always``, ``RestartSec=100ms``): the gap until enforcement resumes and
   the unsigned execs let through in it; then the same with the fanotify fd kept across the
   restart by a stand-in for systemd's fd store (``FDSTORE=1`` received on
   ``$NOTIFY_SOCKET``, handed back as ``$LISTEN_FDS``).

Run: ``nice -n 19 .venv/bin/python bench/soak.py [--quick] [--only NAME] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bench_daemon
from bench_daemon import POLICY_EXEC, Bench, _pct

import imaguard

EXTRA_POLICY = '\n[[policy]]\nname = "extra"\nowner = "bench"\nbuiltin = "tcb"\n'


def spawn(path: str) -> tuple[int, float]:
    """posix_spawn ``path`` and wait: (exit status, or 126 when refused; seconds)."""
    t0 = time.perf_counter()
    try:  # subprocess waits for the exec with the GIL released (os.posix_spawn may not)
        rc = subprocess.run([path], check=False).returncode
    except PermissionError:
        rc = 126
    return rc, time.perf_counter() - t0


def in_execve(pid: int) -> bool:
    """Is ``pid`` blocked in execve (59 on x86_64, 221 on arm64): waiting for the daemon."""
    try:
        call = Path(f"/proc/{pid}/syscall").read_text().split()[0]
    except (OSError, IndexError):
        return False
    return call in ("59", "221")


class Loop:
    """A thread exec'ing ``paths`` in turn until stopped: (start, seconds, path, rc) each."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.rows: list[tuple[float, float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            p = self.paths[i % len(self.paths)]
            t = time.monotonic()
            rc, dt = spawn(p)
            self.rows.append((t, dt, p, rc))
            i += 1

    def __enter__(self) -> Loop:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


class Soak(Bench):
    def __init__(self, base: Path, quick: bool, size: str) -> None:
        super().__init__(base, quick)
        self.size = size
        self.store_fd: int | None = None

    def setup(self) -> None:
        super().setup()
        subprocess.run(["mount", "-o", f"remount,size={self.size}", str(self.mnt)], check=True)

    def signed_copies(self, n: int, tag: str) -> list[str]:
        d = self.mnt / tag
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        out = []
        for i in range(n):
            p = d / f"t{i}"
            shutil.copy("/bin/true", p)
            imaguard.sign_file(p, self.key, "sha256")
            out.append(str(p))
        return out

    def big_program(self, name: str, mib: int) -> tuple[str, float]:
        """``/bin/true`` + ``mib`` MiB (real pages, not sparse), signed sha512; signing time."""
        p = self.mnt / name
        shutil.copy("/bin/true", p)
        block = os.urandom(1 << 20)
        with open(p, "ab") as f:
            for _ in range(mib):
                f.write(block)
        t0 = time.perf_counter()
        imaguard.sign_file(p, self.key, "sha512")
        return str(p), time.perf_counter() - t0

    def config_text(self, extra: str = "") -> str:
        state = self.base / "state"
        return (
            f'mode = "enforce"\nwatch = ["{self.mnt}"]\nstate = "{state}"\n'
            f'socket = "{self.sock}"\nkeyrings = ["{self.base / "ring"}"]\n'
            + extra
            + '[[policy]]\nname = "bench"\nowner = "bench"\nfile = "bench.policy"\n'
        )

    def wait_ready(self, timeout: float = 30, restarts: int = 0) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with contextlib.suppress(imaguard.Error):
                st = self.status()
                if st["ready"] and st["restarts"] >= restarts:
                    self.pids = [st["pid"], st["worker_pid"]]
                    return st
            time.sleep(0.02)
        raise RuntimeError("the daemon did not become ready: " + self.daemon_log())

    def start_raw(self, fd_store: bool) -> None:
        """Start the daemon without waiting; with ``fd_store``, as systemd would: the stored
        fanotify fd as fd 3 with ``$LISTEN_FDS``, and ``$NOTIFY_SOCKET`` to store it."""
        e = bench_daemon._env()
        cmd = [sys.executable, "-m", "imaguard", "daemon", "--foreground", "--config"]
        cmd.append(str(self.base / "imaguard.toml"))
        pass_fds: tuple[int, ...] = ()
        if fd_store:
            e["NOTIFY_SOCKET"] = str(self.base / "notify.sock")
            if self.store_fd is not None:
                e.update(LISTEN_FDS="1", LISTEN_FDNAMES="fanotify")
                pass_fds = (self.store_fd,)
                # timeout(1) forks, and LISTEN_PID must name the daemon itself: the daemon
                # dies with this script instead (pdeathsig) and is killed after 900 s
                script = f'exec 3<&{self.store_fd}; export LISTEN_PID=$$; exec "$@"'
                cmd = ["bash", "-c", script, "daemon", "setpriv", "--pdeathsig", "KILL", *cmd]
        if not pass_fds:
            cmd = ["timeout", "900", *cmd]
        log = open(self.base / "daemon.log", "ab")  # noqa: SIM115 - kept for the daemon's life
        self.daemon = subprocess.Popen(cmd, stdout=log, stderr=log, env=e, pass_fds=pass_fds)
        log.close()
        if pass_fds:
            killer = threading.Timer(900, self.daemon.kill)  # a no-op once it has exited
            killer.daemon = True
            killer.start()


# -- 1. slow hash ---------------------------------------------------------------------------
def slow_hash(b: Soak, args: argparse.Namespace) -> dict[str, Any]:
    (b.base / "bench.policy").write_text(POLICY_EXEC)
    evil = str(b.mnt / "evil")
    out: dict[str, Any] = {"big_mib": args.big_mib}
    for workers in (4, 1):
        key = f"workers_{workers}"
        res: dict[str, Any] = {}
        for nbig in sorted({1, workers}) if workers > 1 else (1,):
            bigs = []
            for i in range(nbig):
                path, signing = b.big_program(f"big{i}", args.big_mib)
                bigs.append(path)
                out["signing_s"] = round(signing, 2)
            small = b.signed_copies(3000, "small")
            with b.running(POLICY_EXEC, f"workers = {workers}\n"):
                base_rows = _small_loop(small[:300] + [evil] * 300, 1.5)
                # through sh: Popen returns once sh runs, and sh's exec waits for the daemon
                procs = [subprocess.Popen(["/bin/sh", "-c", f"exec {p}"]) for p in bigs]
                t0 = time.monotonic()
                while not all(in_execve(p.pid) for p in procs):
                    if time.monotonic() - t0 > 10 or any(p.poll() is not None for p in procs):
                        break
                    time.sleep(0.001)
                paths = [x for pair in zip(small[300:], [evil] * 3000, strict=False) for x in pair]
                with Loop(paths) as loop:
                    rcs = [p.wait(timeout=600) for p in procs]
                    big_s = time.monotonic() - t0
                during = [r for r in loop.rows if r[0] + r[1] <= t0 + big_s]
            wrong = sum(1 for _, _, p, rc in during if (rc == 0) != (p != evil))
            res[f"big_{nbig}"] = {
                "big_exec_s": round(big_s, 2),
                "big_rc": rcs,
                "small_execs_during": len(during),
                "small_wrong_answers": wrong,
                "small_p50_ms": _ms(_pct([r[1] for r in during], 0.5)) if during else None,
                "small_p99_ms": _ms(_pct([r[1] for r in during], 0.99)) if during else None,
                "small_max_ms": _ms(max(r[1] for r in during)) if during else None,
                "baseline_p50_ms": _ms(_pct([r[1] for r in base_rows], 0.5)),
                "baseline_p99_ms": _ms(_pct([r[1] for r in base_rows], 0.99)),
            }
            for p in bigs:
                os.unlink(p)
            print(f"slow-hash {key} big_{nbig}:", res[f"big_{nbig}"], flush=True)
        out[key] = res
    return out


def ctl(*args: str, sock: Path) -> None:
    cmd = [sys.executable, "-m", "imaguard", "ctl", "--socket", str(sock), *args]
    subprocess.run(cmd, check=True, capture_output=True, env=bench_daemon._env(), timeout=60)


def _small_loop(paths: list[str], seconds: float) -> list[tuple[float, float, str, int]]:
    with Loop(paths) as loop:
        time.sleep(seconds)
    return loop.rows


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# -- 2. load with rotations and reloads ------------------------------------------------------
def load(b: Soak, args: argparse.Namespace) -> dict[str, Any]:
    (b.base / "bench.policy").write_text(POLICY_EXEC)
    goods = b.signed_copies(args.loops, "goods")
    out_dir = b.base / "load"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    audit = b.base / "state" / "audit.jsonl"
    cfg = b.base / "imaguard.toml"
    owners = b.base / "owners"
    owners.mkdir(exist_ok=True)
    (owners / "bench.toml").write_text('name = "bench"\nuids = [0]\n')
    extra = f'owners = "{owners}"\n'
    # a policy pushed over the socket and replaced in turn by these two (both permit the goods)
    pushed = [b.base / "pushed-a.policy", b.base / "pushed-b.policy"]
    pushed[0].write_text(POLICY_EXEC)
    pushed[1].write_text(POLICY_EXEC.splitlines()[-1] + "\n")  # the measure rule alone
    rotations = reloads_sent = replaces = 0
    with b.running(POLICY_EXEC, extra):
        ctl("load", "pushed", str(pushed[1]), sock=b.sock)
        t0 = time.monotonic()
        argv = [str(b.helper), "load", str(args.loops), str(args.seconds), str(out_dir)]
        helper = subprocess.Popen([*argv, str(b.mnt / "evil"), *goods])
        while helper.poll() is None:
            time.sleep(args.every)
            if helper.poll() is not None:
                break
            rotations += 1
            with contextlib.suppress(FileNotFoundError):
                os.rename(audit, f"{audit}.{rotations}")
            # a reload that alternately adds and drops a measure-only policy
            cfg.write_text(b.config_text(extra) + (EXTRA_POLICY if rotations % 2 else ""))
            os.kill(b.pids[0], signal.SIGHUP)
            reloads_sent += 1
            time.sleep(args.every / 2)
            ctl("replace", "pushed", str(pushed[rotations % 2]), sock=b.sock)
            replaces += 1
        try:
            helper.wait(timeout=args.seconds + 120)
            hung = False
        except subprocess.TimeoutExpired:
            helper.kill()
            hung = True
        took = time.monotonic() - t0
        time.sleep(1.5)  # the last records reach the trail
        st = b.status()
        rss = b.rss_kib()
        # after the last rotation, the new file gets the new records
        last = b.status()["decisions"]["denied"]
        rc, _ = spawn(str(b.mnt / "evil"))
        time.sleep(1.2)
        fresh = [json.loads(x) for x in audit.read_text().splitlines()] if audit.exists() else []
    lat: list[float] = []
    total = good_fail = evil_ok = evil_tries = 0
    for f in out_dir.iterdir():
        for line in f.read_text().splitlines():
            if line.startswith("#"):
                _, a, g, e = line.split()
                total, good_fail, evil_ok = total + int(a), good_fail + int(g), evil_ok + int(e)
                evil_tries += int(a) // 50
            else:
                lat.append(int(line) / 1e6)
    records, bad_lines, files = [], 0, sorted(audit.parent.glob("audit.jsonl*"))
    for f in files:
        for line in f.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                bad_lines += 1
    denied_records = [
        r for r in records if str(r.get("file", "")).endswith("/evil") and r["result"] == "denied"
    ]
    result = {
        "loops": args.loops,
        "seconds": args.seconds,
        "wall_s": round(took, 1),
        "hung": hung,
        "execs": total,
        "false_denials": good_fail,
        "unsigned_allowed": evil_ok,
        "p50_ms": round(_pct(lat, 0.5), 2),
        "p99_ms": round(_pct(lat, 0.99), 2),
        "max_ms": round(max(lat), 1),
        "rotations": rotations,
        "reloads_sent": reloads_sent,
        "reloads_done": st["reloads"],
        "reload_errors": st["last_reload_error"],
        "socket_replaces": replaces,
        "pushed_version": next(p["version"] for p in st["policies"] if p["name"] == "pushed"),
        "unsigned_tries": evil_tries,
        "audit_files": len(files),
        "audit_denial_records": len(denied_records),
        "audit_bad_lines": bad_lines,
        "daemon_denied": last,
        "after_rotation_denied": rc == 126,
        "after_rotation_record_in_new_file": any(
            str(r.get("file", "")).endswith("/evil") for r in fresh
        ),
        "overflow_denied": st.get("overflow_denied"),
        "daemon_rss_kib": rss,
    }
    print("load:", result, flush=True)
    return result


# -- 3./4. kills ------------------------------------------------------------------------------
def kill_worker(b: Soak, args: argparse.Namespace) -> dict[str, Any]:
    (b.base / "bench.policy").write_text(POLICY_EXEC)
    evil = str(b.mnt / "evil")
    gaps, held, let_through, tries = [], [], 0, 0
    with b.running(POLICY_EXEC):
        for i in range(args.kills):
            worker = b.pids[1]
            with Loop([evil]) as loop:
                time.sleep(0.3)
                killed = time.monotonic()
                os.kill(worker, signal.SIGKILL)
                st = b.wait_ready(restarts=i + 1)
                time.sleep(0.3)
            window = [r for r in loop.rows if r[0] + r[1] >= killed]
            let_through += sum(1 for r in loop.rows if r[3] == 0)
            tries += len(window)
            gaps.append(st["last_restart_gap_ms"])
            held.append(max(r[1] for r in window) * 1000)
    result = {
        "kills": args.kills,
        "unsigned_execs_across_the_kills": tries,
        "let_through": let_through,
        "restart_gap_ms": _spread(gaps),
        "longest_held_exec_ms": _spread(held),
    }
    print("kill-worker:", result, flush=True)
    return result


def kill_daemon(b: Soak, args: argparse.Namespace, fd_store: bool) -> dict[str, Any]:
    (b.base / "bench.policy").write_text(POLICY_EXEC)
    (b.base / "imaguard.toml").write_text(b.config_text())
    evil = str(b.mnt / "evil")
    store = _FdStore(b) if fd_store else None
    gaps, ready_ms, held, let_through, tries = [], [], [], 0, 0
    try:
        b.start_raw(fd_store)
        b.wait_ready()
        for _ in range(args.kills):
            if store is not None:
                store.wait()
            with Loop([evil]) as loop:
                time.sleep(0.3)
                killed = time.monotonic()
                for pid in b.pids:  # supervisor, then worker
                    os.kill(pid, signal.SIGKILL)
                assert b.daemon is not None
                b.daemon.wait(timeout=30)
                time.sleep(0.1)  # RestartSec=100ms
                b.start_raw(fd_store)
                b.wait_ready()
                ready = time.monotonic()
                time.sleep(0.3)
            after = [r for r in loop.rows if r[0] >= killed]
            let = [r for r in after if r[3] == 0]
            resumed = next(
                (r for r in after if r[3] != 0 and r[0] > max((x[0] for x in let), default=killed)),
                None,
            )
            let_through += len(let)
            tries += len(after)
            ready_ms.append((ready - killed) * 1000)
            held.append(max(r[1] for r in after) * 1000)
            if let:
                gaps.append((max(r[0] + r[1] for r in let) - killed) * 1000)
            elif resumed is not None:
                gaps.append(0.0)
    finally:
        b.stop_daemon()
        if store is not None:
            store.close()
    result = {
        "kills": args.kills,
        "fd_store": fd_store,
        "unsigned_execs_after_the_kills": tries,
        "let_through": let_through,
        "open_gap_ms": _spread(gaps),
        "kill_to_ready_ms": _spread(ready_ms),
        "longest_exec_ms": _spread(held),
    }
    print(f"kill-daemon (fd store {fd_store}):", result, flush=True)
    return result


class _FdStore:
    """A stand-in for systemd's fd store: receives ``FDSTORE=1`` with the fanotify fd on
    ``$NOTIFY_SOCKET`` and keeps it (``Soak.start_raw`` hands it back)."""

    def __init__(self, b: Soak) -> None:
        self.b = b
        path = b.base / "notify.sock"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.got = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                msg, anc, _f, _a = self.sock.recvmsg(4096, socket.CMSG_SPACE(4 * 4))
            except TimeoutError:
                continue
            except OSError:
                return
            fds = array.array("i")
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            if b"FDSTORE=1" in msg and fds:
                if self.b.store_fd is not None:
                    os.close(self.b.store_fd)
                self.b.store_fd = fds[0]
                for extra in fds[1:]:
                    os.close(extra)
                self.got.set()
            elif b"READY=1" in msg:
                self.got.set()

    def wait(self) -> None:
        if not self.got.wait(10):
            raise RuntimeError("no FDSTORE=1 / READY=1 from the daemon")

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()
        if self.b.store_fd is not None:
            os.close(self.b.store_fd)
            self.b.store_fd = None


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": round(min(values), 1),
        "median": round(statistics.median(values), 1),
        "max": round(max(values), 1),
    }


SCENARIOS = ("slow-hash", "load", "kill-worker", "kill-daemon")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    ap.add_argument("--only", action="append", choices=SCENARIOS)
    ap.add_argument("--json", default=None)
    ap.add_argument("--loops", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--every", type=float, default=None, help="seconds between rotations")
    ap.add_argument("--kills", type=int, default=None)
    ap.add_argument("--big-mib", type=int, default=None)
    ap.add_argument(
        "--src",
        default=None,
        help="run the daemon from this source tree (e.g. an older commit's src/, to compare)",
    )
    args = ap.parse_args()
    if args.src:
        src = os.path.abspath(args.src)
        bench_daemon._env = lambda: {**os.environ, "PYTHONPATH": src}
    if os.geteuid() != 0:
        print("soak: needs root (fanotify permission events); skipped")
        return 0
    args.loops = args.loops or (20 if args.quick else 200)
    args.seconds = args.seconds or (10 if args.quick else 60)
    args.every = args.every or (1.0 if args.quick else 2.0)
    args.kills = args.kills or (2 if args.quick else 10)
    args.big_mib = args.big_mib or (512 if args.quick else 1024)
    only = args.only or list(SCENARIOS)
    base = Path(tempfile.mkdtemp(prefix="imaguard-soak-"))
    size = f"{args.big_mib * 4 + 512}m"
    b = Soak(base, args.quick, size)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} vCPU, kernel {os.uname().release}",
        "nice": os.nice(0),
        "daemon_src": args.src or "this tree",
    }
    try:
        b.setup()
        if "slow-hash" in only:
            result["slow_hash"] = slow_hash(b, args)
        if "load" in only:
            result["load"] = load(b, args)
        if "kill-worker" in only:
            result["kill_worker"] = kill_worker(b, args)
        if "kill-daemon" in only:
            result["kill_daemon"] = kill_daemon(b, args, fd_store=False)
            result["kill_daemon_fd_store"] = kill_daemon(b, args, fd_store=True)
    finally:
        b.stop_daemon()
        subprocess.run(["umount", "-l", str(b.mnt)], check=False)
        shutil.rmtree(base, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
