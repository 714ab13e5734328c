"""The daemon under load and faults, the quick versions (docs/reliability.md); the long runs
and the figures are ``make soak`` (bench/soak.py).

Safety: as every daemon test, only the test's own tmpfs is marked; each daemon runs under a
hard timeout and is killed by its PID.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import imaguard

from .conftest import Daemon, cli, daemon_on_tmpfs, env, prepare, run

pytestmark = pytest.mark.root


class Loop:
    """Threads exec'ing ``paths`` in turn until stopped: (path, exit status, start, end) each."""

    def __init__(self, paths: list[Path], threads: int = 2) -> None:
        self.paths = [str(p) for p in paths]
        self.rows: list[tuple[str, int, float, float]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def _run(self, i: int) -> None:
        while not self._stop.is_set():
            p = self.paths[i % len(self.paths)]
            start = time.monotonic()
            self.rows.append((p, run(p), start, time.monotonic()))
            i += 1

    def __enter__(self) -> Loop:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def results(self, name: str, since: float = 0.0) -> list[int]:
        return [rc for p, rc, _, end in self.rows if p.endswith("/" + name) and end >= since]


def in_execve(pid: int) -> bool:
    """Is ``pid`` blocked in execve (59 on x86_64, 221 on arm64): waiting for the daemon."""
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[0] in ("59", "221")
    except (OSError, IndexError):
        return False


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def reloaded(d: Daemon, n: int) -> Callable[[], bool]:
    return lambda: bool(d.status()["reloads"] == n)


# -- a slow hash ---------------------------------------------------------------------------
def big_program(path: Path, key: imaguard.PrivateKey, mib: int) -> Path:
    """/bin/true with ``mib`` MiB appended (real pages, not sparse: hashing 768 MiB takes a
    second or two here), signed with sha512."""
    shutil.copy("/bin/true", path)
    block = os.urandom(1 << 20)
    with open(path, "ab") as f:
        for _ in range(mib):
            f.write(block)
    imaguard.sign_file(path, key, "sha512")
    return path


def exec_waiting(path: Path) -> subprocess.Popen[bytes]:
    """Exec ``path`` through sh (Popen returns once sh runs); back when the exec waits for
    the daemon."""
    proc = subprocess.Popen(["/bin/sh", "-c", f"exec {path}"])
    wait_for("the exec to wait for the daemon", lambda: in_execve(proc.pid))
    return proc


def test_large_execs_being_hashed_do_not_hold_the_small_ones(tmp_path: Path) -> None:
    with daemon_on_tmpfs(tmp_path, "1700m") as d:
        key = prepare(d)
        # one main decision thread: before the slow lane, two large files held everything
        d.config.write_text("workers = 1\n" + d.config.read_text())
        bigs = [big_program(d.mnt / f"big{i}", key, 768) for i in range(2)]
        smalls = []
        for i in range(40):
            small = d.mnt / f"small{i}"
            shutil.copy("/bin/true", small)
            imaguard.sign_file(small, key, "sha256")
            smalls.append(small)
        d.start()
        procs = [exec_waiting(b) for b in bigs]
        try:
            done_while_held = []
            for small in smalls:  # each a fresh file: a full decision, not the kernel's cache
                results = (run(small), run(d.mnt / "evil"))
                if not any(in_execve(p.pid) for p in procs):
                    break
                done_while_held.append(results)
            assert [p.wait(timeout=120) for p in procs] == [0, 0]
        finally:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait(timeout=30)
        # the small ones were decided, and rightly, while a large one was still being hashed
        # (without the slow lane, they waited in the one worker's queue behind both)
        assert len(done_while_held) >= 5, done_while_held
        assert set(done_while_held) == {(0, 126)}


# -- the audit trail rotated under load ---------------------------------------------------------
def test_audit_trail_rotated_under_load_loses_no_record(daemon_env: Daemon) -> None:
    d = daemon_env
    d.start()
    trail = d.state / "audit.jsonl"
    with Loop([d.mnt / "good", d.mnt / "evil"], threads=4) as loop:
        for i in range(1, 4):  # logrotate's way: rename, then SIGHUP
            time.sleep(1.0)
            os.rename(trail, f"{trail}.{i}")
            os.kill(d.status()["pid"], signal.SIGHUP)
            wait_for(f"reload {i}", reloaded(d, i))
        time.sleep(1.0)
    assert set(loop.results("good")) == {0}
    evil = loop.results("evil")
    assert set(evil) == {126}
    assert run(d.mnt / "evil") == 126  # after the last rotation: a record for the new file
    tries = len(evil) + 1

    def records() -> list[list[dict[str, object]]]:
        files = [Path(f"{trail}.{i}") for i in (1, 2, 3)] + [trail]
        return [[json.loads(x) for x in f.read_text().splitlines()] for f in files]

    wait_for("every record", lambda: sum(len(r) for r in records()) == tries)
    per_file = records()  # every line one JSON object: nothing interleaved, nothing lost
    assert all(per_file), [len(r) for r in per_file]  # decisions went on in every period
    assert all(
        r["result"] == "denied" and str(r["file"]).endswith("/evil") for f in per_file for r in f
    )
    sizes = [Path(f"{trail}.{i}").stat().st_size for i in (1, 2, 3)]
    time.sleep(1.2)
    assert [Path(f"{trail}.{i}").stat().st_size for i in (1, 2, 3)] == sizes  # old files closed


# -- reloads under load --------------------------------------------------------------------------
def test_reloads_and_policy_replaces_under_load_never_deny_a_permitted_file(
    tmp_path: Path,
) -> None:
    with daemon_on_tmpfs(tmp_path) as d:
        key = prepare(d)
        owners = tmp_path / "owners"
        owners.mkdir()
        (owners / "admin.toml").write_text('name = "admin"\nuids = [0]\n')
        base = d.config.read_text()
        d.config.write_text(f'owners = "{owners}"\n' + base)
        goods = [d.mnt / "good"]
        for i in range(8):
            p = d.mnt / f"good{i}"
            shutil.copy("/bin/true", p)
            imaguard.sign_file(p, key, "sha256")
            goods.append(p)
        rules = (d.base / "exec-guard.policy").read_text()
        variants = [tmp_path / "a.policy", tmp_path / "b.policy"]
        variants[0].write_text(rules)  # what exec-guard demands already, and a measure rule
        variants[1].write_text(rules.splitlines()[-1] + "\n")
        extra = '\n[[policy]]\nname = "attest"\nowner = "keylime"\nbuiltin = "tcb"\n'
        d.start()
        sock = ["ctl", "--socket", str(d.sock)]
        assert cli(*sock, "load", "pushed", str(variants[1])).returncode == 0
        with Loop([*goods, d.mnt / "evil"], threads=3) as loop:
            for i in range(1, 5):
                time.sleep(0.5)
                # a reload that adds, then drops, a policy (a tcb one: no inode cache then)
                d.config.write_text(f'owners = "{owners}"\n' + base + (extra if i % 2 else ""))
                os.kill(d.status()["pid"], signal.SIGHUP)
                wait_for(f"reload {i}", reloaded(d, i))
                time.sleep(0.5)
                # and a policy pushed over the socket, replaced
                r = cli(*sock, "replace", "pushed", str(variants[(i + 1) % 2]))
                assert r.returncode == 0, r.stderr
        doc = d.status()
        assert doc["last_reload_error"] is None
        assert [p["version"] for p in doc["policies"] if p["name"] == "pushed"] == [5]
        for good in goods:
            assert set(loop.results(good.name)) == {0}, good  # no false denial
        assert set(loop.results("evil")) == {126}  # and nothing unsigned allowed
        assert len(loop.rows) > 50


def test_a_reload_during_a_long_decision_keeps_its_measurement(tmp_path: Path) -> None:
    with daemon_on_tmpfs(tmp_path, "700m") as d:
        big = big_program(d.mnt / "big", prepare(d), 512)
        d.start()
        proc = exec_waiting(big)
        try:
            os.kill(d.status()["pid"], signal.SIGHUP)  # while the old Guard hashes the file
            wait_for("the reload", reloaded(d, 1))
            assert proc.wait(timeout=120) == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=30)
        assert run(d.mnt / "good") == 0  # the new Guard measures too, into the same log
        log = cli("log", "show", "--state", str(d.state / "log"))
        names = [line.split()[-1] for line in log.stdout.splitlines()]
        # before: the old Guard had handed its log over, and the big file ran unmeasured
        assert str(big) in names, log.stdout
        assert str(d.mnt / "good") in names
        assert cli("log", "verify", "--state", str(d.state / "log")).returncode == 0


# -- SIGKILL ---------------------------------------------------------------------------------------
def test_worker_sigkill_under_an_exec_loop_lets_nothing_through(daemon_env: Daemon) -> None:
    d = daemon_env
    d.start()
    worker = d.status()["worker_pid"]
    with Loop([d.mnt / "evil"]) as loop:
        time.sleep(0.3)
        killed = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        doc = d.wait_ready(restarts=1)
        time.sleep(0.3)
    assert doc["worker_pid"] != worker
    assert loop.results("evil", since=killed)  # execs were raised across the restart ...
    assert set(loop.results("evil")) == {126}  # ... and none was let through
    assert doc["last_restart_gap_ms"] > 0


class FdStore:
    """A stand-in for systemd's fd store: takes the fd a ``FDSTORE=1`` message carries on
    ``$NOTIFY_SOCKET``, and hands it back as fd 3 with ``$LISTEN_FDS`` to the next start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.fd: int | None = None
        self.messages: list[bytes] = []

    def receive(self, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while self.fd is None and time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                msg, anc, _f, _a = self.sock.recvmsg(4096, socket.CMSG_SPACE(4 * 4))
                self.messages.append(msg)
                fds = array.array("i")
                for level, kind, data in anc:
                    if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                        fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                if b"FDSTORE=1" in msg and fds:
                    self.fd = fds[0]
        assert self.fd is not None, self.messages

    def start(self, d: Daemon) -> subprocess.Popen[bytes]:
        """The daemon as systemd would start it; LISTEN_PID must be the daemon's own pid, so
        no timeout(1) here: it dies with this test (pdeathsig) or when killed by its PID."""
        e = env()
        e["NOTIFY_SOCKET"] = str(self.path)
        cmd = [sys.executable, "-m", "imaguard", "daemon", "--foreground", "--config"]
        cmd += [str(d.config)]
        pass_fds: tuple[int, ...] = ()
        if self.fd is not None:
            e.update(LISTEN_FDS="1", LISTEN_FDNAMES="fanotify")
            pass_fds = (self.fd,)
            script = f'exec 3<&{self.fd}; export LISTEN_PID=$$; exec "$@"'
            cmd = ["bash", "-c", script, "daemon", "setpriv", "--pdeathsig", "KILL", *cmd]
        else:
            cmd = ["setpriv", "--pdeathsig", "KILL", *cmd]
        with open(d.log, "ab") as log:
            d.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=e, pass_fds=pass_fds)
        d.wait_ready()
        return d.proc

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.sock.close()


@pytest.fixture
def fd_store(tmp_path: Path) -> Iterator[FdStore]:
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv(1) (util-linux) for the daemon's parent-death signal")
    store = FdStore(tmp_path / "notify.sock")
    try:
        yield store
    finally:
        store.close()


def _kill_daemon(d: Daemon) -> float:
    doc = d.status()
    killed = time.monotonic()
    for pid in (doc["pid"], doc["worker_pid"]):
        os.kill(pid, signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait(timeout=30)
    return killed


def test_whole_daemon_sigkill_fails_open_until_restarted(daemon_env: Daemon) -> None:
    d = daemon_env
    d.start()
    with Loop([d.mnt / "evil"]) as loop:
        time.sleep(0.3)
        killed = _kill_daemon(d)
        time.sleep(0.1)  # RestartSec=100ms
        d.start()
        ready = time.monotonic()
        time.sleep(0.3)
    after = loop.results("evil", since=killed)
    # no fd store: the group closed with the daemon, and the kernel allowed (fanotify(7))
    assert 0 in after
    # the restarted daemon enforces again: every exec that began after it was ready is denied
    assert {rc for _, rc, start, _ in loop.rows if start >= ready} == {126}
    allowed = [end for _, rc, _, end in loop.rows if rc == 0]
    print(f"let through {len(allowed)}; open {(max(allowed) - killed) * 1000:.0f} ms")


def test_whole_daemon_sigkill_with_the_fd_kept_lets_nothing_through(
    tmp_path: Path, fd_store: FdStore
) -> None:
    with daemon_on_tmpfs(tmp_path) as d:
        prepare(d)
        first = fd_store.start(d)
        fd_store.receive()
        d.pids.update({d.status()["pid"], d.status()["worker_pid"]})
        try:
            with Loop([d.mnt / "evil"]) as loop:
                time.sleep(0.3)
                killed = _kill_daemon(d)
                time.sleep(0.1)
                second = fd_store.start(d)  # adopts the group from "systemd"
                time.sleep(0.3)
            assert d.status()["pid"] == second.pid != first.pid
            assert loop.results("evil", since=killed)
            assert set(loop.results("evil")) == {126}  # held while no daemon ran, then denied
            assert "adopting the fanotify group" in d.log.read_text()
        finally:
            d.stop()
            fd_store.close()  # the marks go with the group: nothing on the tmpfs may wait
