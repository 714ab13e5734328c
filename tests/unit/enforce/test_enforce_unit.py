"""imaguard.enforce without root: event parsing, flag and file classification, the engine
with a fake group (responses into a list)."""

from __future__ import annotations

import os
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imaguard.enforce import (
    DEFAULT_INTERPRETERS,
    Enforcer,
    EventDecision,
    classify,
    elf_type,
    is_loader,
    open_mask,
    pack_event,
    parse_events,
)
from imaguard.enforce._events import parse_syscall_line
from imaguard.enforce._fanotify import (
    FAN_NOFD,
    FAN_OPEN_EXEC_PERM,
    FAN_OPEN_PERM,
    EventFormatError,
)
from imaguard.errors import FormatError

MAY_EXEC, MAY_WRITE, MAY_READ, MAY_APPEND = 1, 2, 4, 8


# -- parsing ------------------------------------------------------------------------------
def test_several_records_in_one_buffer() -> None:
    buf = pack_event(FAN_OPEN_EXEC_PERM, 7, 100) + pack_event(FAN_OPEN_PERM, 8, 101, pidfd=9)
    a, b = parse_events(buf)
    assert (a.mask, a.fd, a.pid, a.pidfd) == (FAN_OPEN_EXEC_PERM, 7, 100, None)
    assert (b.mask, b.fd, b.pid, b.pidfd) == (FAN_OPEN_PERM, 8, 101, 9)
    assert len(pack_event(FAN_OPEN_PERM, 1, 1)) == 24
    assert a.permission
    assert not a.overflow


def test_overflow_marker() -> None:
    (ev,) = parse_events(pack_event(0x4000, FAN_NOFD, 0))
    assert ev.overflow
    assert not ev.permission


def test_bad_version_keeps_the_records_before_it() -> None:
    buf = pack_event(FAN_OPEN_PERM, 5, 1) + pack_event(FAN_OPEN_PERM, 6, 1, vers=2)
    with pytest.raises(EventFormatError, match="version 2") as e:
        parse_events(buf)
    assert isinstance(e.value, FormatError)
    assert [x.fd for x in e.value.events] == [5]


def test_truncated_and_overlong_records() -> None:
    with pytest.raises(FormatError, match="truncated"):
        parse_events(pack_event(FAN_OPEN_PERM, 5, 1)[:20])
    long = bytearray(pack_event(FAN_OPEN_PERM, 5, 1))
    struct.pack_into("=I", long, 0, 48)
    with pytest.raises(FormatError, match="bad length"):
        parse_events(bytes(long))


# -- flags and classification -----------------------------------------------------------
def test_open_mask() -> None:
    assert open_mask(os.O_RDONLY) == MAY_READ
    assert open_mask(os.O_WRONLY) == MAY_WRITE
    assert open_mask(os.O_RDWR) == MAY_READ | MAY_WRITE
    assert open_mask(os.O_WRONLY | os.O_APPEND) == MAY_WRITE | MAY_APPEND
    assert open_mask(os.O_RDONLY | os.O_TRUNC) == MAY_READ | MAY_WRITE


def test_syscall_line_gives_the_opener_flags() -> None:
    # x86_64: openat(AT_FDCWD, path, O_WRONLY|O_APPEND|O_CLOEXEC)
    if os.uname().machine != "x86_64":
        pytest.skip("the syscall numbers in this test are x86_64's")
    line = "257 0xffffff9c 0x7f28211f1910 0x80401 0x0 0x0 0x0 0x7ffc 0x7f28"
    assert parse_syscall_line(line) == 0x80401
    assert parse_syscall_line("2 0x7f 0x2 0x0 0 0 0 0 0") == os.O_RDWR
    assert parse_syscall_line("85 0x7f 0x1a4 0 0 0 0 0 0") == os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    assert parse_syscall_line("0 0x3 0x7f 0x10 0 0 0 0 0") is None  # read(2)
    assert parse_syscall_line("running") is None


def test_loader_names() -> None:
    for exe in (
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "/lib/ld-musl-x86_64.so.1",
        "/lib/ld.so.1",
        "/lib64/ld64.so.2",
    ):
        assert is_loader(exe), exe
    assert not is_loader("/usr/bin/python3.11")
    assert not is_loader(None)


def _elf(tmp_path: Path, e_type: int, big: bool = False) -> int:
    p = tmp_path / f"elf{e_type}{big}"
    head = b"\x7fELF" + bytes([2, 2 if big else 1, 1]) + bytes(9)
    head += e_type.to_bytes(2, "big" if big else "little")
    p.write_bytes(head + bytes(46))
    return os.open(p, os.O_RDONLY)


def test_elf_type(tmp_path: Path) -> None:
    for t, big in ((2, False), (3, False), (3, True)):
        fd = _elf(tmp_path, t, big)
        try:
            assert elf_type(fd) == t
        finally:
            os.close(fd)
    (tmp_path / "s").write_text("#!/bin/sh\n")
    fd = os.open(tmp_path / "s", os.O_RDONLY)
    try:
        assert elf_type(fd) is None
    finally:
        os.close(fd)


LD = "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
PY = "/usr/bin/python3.11"


@pytest.mark.parametrize(
    ("event", "bits", "exe", "elf", "path", "want"),
    [
        (FAN_OPEN_EXEC_PERM, None, "/bin/x", 2, "/t/p", ("BPRM_CHECK", MAY_EXEC, "exec", False)),
        (FAN_OPEN_PERM, MAY_READ, LD, 3, "/t/p", ("BPRM_CHECK", MAY_EXEC, "loader-exec", False)),
        (FAN_OPEN_PERM, MAY_READ, LD, 2, "/t/p", ("BPRM_CHECK", MAY_EXEC, "loader-exec", False)),
        (
            FAN_OPEN_PERM,
            MAY_READ,
            PY,
            None,
            "/t/a.py",
            ("BPRM_CHECK", 1, "interpreter-script", False),
        ),
        (
            FAN_OPEN_PERM,
            MAY_READ,
            PY,
            None,
            "/usr/lib/python3.11/os.py",
            ("FILE_CHECK", 4, "open", False),
        ),
        (FAN_OPEN_PERM, MAY_WRITE, PY, None, "/t/a.py", ("FILE_CHECK", MAY_WRITE, "open", True)),
        (
            FAN_OPEN_PERM,
            MAY_READ,
            "/usr/bin/cat",
            3,
            "/t/l.so",
            ("MMAP_CHECK", 1, "shared-object", False),
        ),
        (
            FAN_OPEN_PERM,
            MAY_READ,
            "/usr/bin/cat",
            2,
            "/t/p",
            ("FILE_CHECK", MAY_READ, "open", False),
        ),
        (
            FAN_OPEN_PERM,
            MAY_READ,
            "/usr/bin/cat",
            None,
            "/t/d",
            ("FILE_CHECK", MAY_READ, "open", False),
        ),
        (FAN_OPEN_PERM, None, "/usr/bin/cat", None, "/t/d", ("FILE_CHECK", MAY_READ, "open", True)),
        (FAN_OPEN_PERM, MAY_READ | MAY_WRITE, LD, 3, "/t/l", ("FILE_CHECK", 6, "open", True)),
    ],
)
def test_classify(event: int, bits: Any, exe: str, elf: Any, path: str, want: Any) -> None:
    c = classify(event, bits, exe, elf, path, DEFAULT_INTERPRETERS)
    assert (c.hook, c.mask, c.reason, c.write) == want


# -- the engine with a fake group ---------------------------------------------------------
class FakeGroup:
    def __init__(self) -> None:
        self._r, self.fd = os.pipe()
        self.fd, self._w = self._r, self.fd
        self.pending: list[bytes] = []
        self.responses: list[tuple[int, bool]] = []
        self.ignored: list[int] = []
        self.audit = False
        self.lock = threading.Lock()
        self.answered = threading.Condition(self.lock)

    def feed(self, data: bytes) -> None:
        with self.lock:
            self.pending.append(data)
        os.write(self._w, b"x")

    def read(self, size: int = 65536) -> bytes:
        os.read(self.fd, 4096)
        with self.lock:
            data, self.pending = b"".join(self.pending), []
        return data

    def respond(self, fd: int, allow: bool, *, audit: bool = False) -> None:
        with self.answered:
            self.responses.append((fd, allow))
            self.answered.notify_all()

    def wait_for(self, n: int, timeout: float = 10) -> list[tuple[int, bool]]:
        with self.answered:
            assert self.answered.wait_for(lambda: len(self.responses) >= n, timeout)
            return list(self.responses)

    def ignore(self, fd: int, mask: int) -> bool:
        self.ignored.append(fd)
        return True

    def unignore(self, fd: int) -> None:
        pass

    def flush_ignore_marks(self) -> None:
        pass

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


class RaisingGuard:
    use_cache = True

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.calls = 0

    def process(self, *a: Any, **kw: Any) -> Any:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        raise RuntimeError("boom")


@pytest.fixture
def other_pid() -> Iterator[int]:
    p = subprocess.Popen(["sleep", "30"])
    try:
        yield p.pid
    finally:
        p.kill()
        p.wait(5)


def _fds(tmp_path: Path, n: int) -> list[int]:
    out = []
    for i in range(n):
        p = tmp_path / f"f{i}"
        p.write_bytes(b"data")
        out.append(os.open(p, os.O_RDONLY))
    return out


class Running:
    def __init__(self, enf: Enforcer) -> None:
        self.enf = enf
        self.stop = threading.Event()
        self.t = threading.Thread(target=enf.run, args=(self.stop,))

    def __enter__(self) -> Enforcer:
        self.t.start()
        return self.enf

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.t.join(30)
        assert not self.t.is_alive()


def test_worker_exception_denies(tmp_path: Path, other_pid: int) -> None:
    g = FakeGroup()
    seen: list[EventDecision] = []
    enf = Enforcer(g, RaisingGuard(), workers=1, on_decision=seen.append)  # type: ignore[arg-type]
    (fd,) = _fds(tmp_path, 1)
    with Running(enf):
        g.feed(pack_event(FAN_OPEN_EXEC_PERM, fd, other_pid))
        assert g.wait_for(1) == [(fd, False)]
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
    assert seen[0].reason == "error"
    assert not seen[0].allowed
    assert enf.stats().denied == 1
    assert enf.stats().events == 1
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # the worker closed the event fd
    g.close()


def test_permissive_answers_allow_and_reports_the_override(tmp_path: Path, other_pid: int) -> None:
    g = FakeGroup()
    seen: list[EventDecision] = []
    enf = Enforcer(g, RaisingGuard(), permissive=True, workers=1, on_decision=seen.append)  # type: ignore[arg-type]
    (fd,) = _fds(tmp_path, 1)
    with Running(enf):
        g.feed(pack_event(FAN_OPEN_EXEC_PERM, fd, other_pid))
        assert g.wait_for(1) == [(fd, True)]
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
    assert seen[0].allowed
    assert seen[0].permissive_override
    assert g.ignored == []  # never a kernel-side cache for a would-deny
    g.close()


def test_own_pid_is_allowed_by_the_reader(tmp_path: Path) -> None:
    g = FakeGroup()
    guard = RaisingGuard()
    enf = Enforcer(g, guard, workers=1)  # type: ignore[arg-type]
    (fd,) = _fds(tmp_path, 1)
    with Running(enf):
        g.feed(pack_event(FAN_OPEN_PERM, fd, os.getpid()))
        assert g.wait_for(1) == [(fd, True)]
    assert guard.calls == 0
    g.close()


def test_queue_overflow_denies_at_once(tmp_path: Path, other_pid: int) -> None:
    g = FakeGroup()
    gate = threading.Event()
    enf = Enforcer(g, RaisingGuard(gate), workers=1, queue_limit=1)  # type: ignore[arg-type]
    fds = _fds(tmp_path, 4)
    with Running(enf):
        g.feed(pack_event(FAN_OPEN_EXEC_PERM, fds[0], other_pid))
        deadline = time.monotonic() + 5
        while enf.stats().queue and time.monotonic() < deadline:
            time.sleep(0.01)  # the worker holds the first event
        time.sleep(0.1)
        g.feed(b"".join(pack_event(FAN_OPEN_EXEC_PERM, fd, other_pid) for fd in fds[1:]))
        early = g.wait_for(2)
        assert sorted(early) == [(fds[2], False), (fds[3], False)]
        assert enf.stats().overflow_denied == 2
        gate.set()
        assert sorted(g.wait_for(4)) == sorted((fd, False) for fd in fds)
    assert enf.stats().denied == 4
    g.close()


def test_overflow_in_permissive_mode_allows_but_counts(tmp_path: Path, other_pid: int) -> None:
    g = FakeGroup()
    gate = threading.Event()
    enf = Enforcer(g, RaisingGuard(gate), workers=1, queue_limit=1, permissive=True)  # type: ignore[arg-type]
    fds = _fds(tmp_path, 3)
    with Running(enf):
        g.feed(pack_event(FAN_OPEN_EXEC_PERM, fds[0], other_pid))
        time.sleep(0.2)
        g.feed(b"".join(pack_event(FAN_OPEN_EXEC_PERM, fd, other_pid) for fd in fds[1:]))
        assert g.wait_for(1) == [(fds[2], True)]
        gate.set()
        g.wait_for(3)
    assert enf.stats().overflow_denied == 1
    g.close()


def test_inflight_registry_recovery(tmp_path: Path) -> None:
    g = FakeGroup()
    reg = tmp_path / "inflight"
    enf = Enforcer(g, RaisingGuard(), inflight_path=str(reg))  # type: ignore[arg-type]
    enf._inflight.add(17)
    enf._inflight.add(40)
    enf._inflight.close()
    g2 = FakeGroup()
    successor = Enforcer(g2, RaisingGuard(), inflight_path=str(reg))  # type: ignore[arg-type]
    assert successor.recover_inflight() == 2
    assert g2.responses == [(17, False), (40, False)]
    assert successor.recover_inflight() == 0
    g.close()
    g2.close()


class MarkingGroup(FakeGroup):
    def __init__(self) -> None:
        super().__init__()
        self.marks: list[int] = []
        self.flushes = 0

    def ignore(self, fd: int, mask: int) -> bool:
        self.marks.append(mask)
        return True

    def flush_ignore_marks(self) -> None:
        self.flushes += 1


def _guard(text: str, ring: Any) -> Any:
    from imaguard.core import Guard
    from imaguard.policy import PolicySet, parse_policy

    pset = PolicySet()
    pset.add("t", parse_policy(text, mode="imaguard"))
    return Guard(pset, ring, store="user-xattr")


def _exec_event(g: FakeGroup, path: Path, pid: int) -> int:
    fd = os.open(path, os.O_RDONLY)
    g.feed(pack_event(FAN_OPEN_EXEC_PERM, fd, pid))
    return fd


def test_allowed_exec_gets_an_ignore_mark_and_swap_flushes(
    tmp_path: Path, other_pid: int, ec_key: Any, ec_ring: Any
) -> None:
    import imaguard
    from imaguard.enforce._fanotify import FAN_OPEN_EXEC_PERM as EXEC

    prog = tmp_path / "prog"
    prog.write_bytes(b"#!/bin/true\n" + os.urandom(64))
    imaguard.sign_file(prog, ec_key, store="user-xattr")
    g = MarkingGroup()
    enf = Enforcer(g, _guard("appraise func=BPRM_CHECK appraise_type=imasig\n", ec_ring))  # type: ignore[arg-type]
    with Running(enf):
        fd = _exec_event(g, prog, other_pid)
        assert g.wait_for(1) == [(fd, True)]
        deadline = time.monotonic() + 5
        while enf.stats().events < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert g.marks
        assert g.marks[0] & EXEC
        assert enf.stats().ignore_marks == 1
        enf.swap_guard(_guard("appraise func=BPRM_CHECK uid=0 appraise_type=imasig\n", ec_ring))
        assert g.flushes == 1
        fd2 = _exec_event(g, prog, other_pid)
        assert g.wait_for(2)[1] == (fd2, True)
        deadline = time.monotonic() + 5
        while enf.stats().events < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    # a uid= rule: a per-inode mark would apply to every user, so none is added
    assert len(g.marks) == 1
    g.close()


def test_unsigned_exec_is_denied_without_a_mark(
    tmp_path: Path, other_pid: int, ec_ring: Any
) -> None:
    prog = tmp_path / "prog"
    prog.write_bytes(b"#!/bin/true\n")
    g = MarkingGroup()
    seen: list[EventDecision] = []
    enf = Enforcer(
        g,  # type: ignore[arg-type]
        _guard("appraise func=BPRM_CHECK appraise_type=imasig\n", ec_ring),
        on_decision=seen.append,
    )
    with Running(enf):
        fd = _exec_event(g, prog, other_pid)
        assert g.wait_for(1) == [(fd, False)]
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
    assert seen[0].path == str(prog)  # the real path, not "<fd N>"
    assert seen[0].decision is not None
    assert seen[0].decision.path == str(prog)
    assert seen[0].decision.actions["appraise"].cause == "IMA-signature-required"
    assert g.marks == []
    g.close()


# -- the slow lane ------------------------------------------------------------------------
class BigGatedGuard:
    """Holds every decision on a file of ``big`` bytes or more until ``gate`` is set; denies
    everything (by raising), so the answers show the order of the decisions."""

    use_cache = True

    def __init__(self, gate: threading.Event, big: int) -> None:
        self.gate = gate
        self.big = big
        self.threads: list[str] = []

    def process(self, fd: int, *a: Any, **kw: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        if os.fstat(fd).st_size >= self.big:
            self.gate.wait(10)
        raise RuntimeError("boom")


def _sized(tmp_path: Path, name: str, size: int) -> int:
    p = tmp_path / name
    with open(p, "wb") as f:
        f.truncate(size)  # sparse: the lane looks at the size only
    return os.open(p, os.O_RDONLY)


def test_a_large_file_does_not_hold_the_small_ones(tmp_path: Path, other_pid: int) -> None:
    g = FakeGroup()
    gate = threading.Event()
    guard = BigGatedGuard(gate, 1 << 20)
    enf = Enforcer(g, guard, workers=1, slow_workers=1, slow_bytes=1 << 20)  # type: ignore[arg-type]
    big = [_sized(tmp_path, f"big{i}", 2 << 20) for i in range(2)]
    small = [_sized(tmp_path, f"small{i}", 100) for i in range(3)]
    with Running(enf):
        g.feed(b"".join(pack_event(FAN_OPEN_EXEC_PERM, fd, other_pid) for fd in big))
        g.feed(b"".join(pack_event(FAN_OPEN_EXEC_PERM, fd, other_pid) for fd in small))
        # the one main worker answers every small file while both large ones wait
        assert sorted(g.wait_for(3)) == sorted((fd, False) for fd in small)
        time.sleep(0.1)
        assert len(g.responses) == 3
        gate.set()
        assert sorted(g.wait_for(5)) == sorted((fd, False) for fd in big + small)
    assert guard.threads.count("imaguard-enforce-slow-0") == 2
    assert guard.threads.count("imaguard-enforce-0") == 3
    assert enf.stats().denied == 5
    assert enf.stats().overflow_denied == 0
    g.close()


def test_a_full_slow_lane_denies_at_once(tmp_path: Path, other_pid: int) -> None:
    g = FakeGroup()
    gate = threading.Event()
    guard = BigGatedGuard(gate, 1 << 20)
    enf = Enforcer(g, guard, workers=1, slow_workers=1, slow_bytes=1 << 20, queue_limit=1)  # type: ignore[arg-type]
    big = [_sized(tmp_path, f"big{i}", 1 << 20) for i in range(3)]
    with Running(enf):
        for fd in big:  # one at a time: the main queue (limit 1) must not be the one full
            g.feed(pack_event(FAN_OPEN_EXEC_PERM, fd, other_pid))
            deadline = time.monotonic() + 5
            while enf.stats().queue and time.monotonic() < deadline and not g.responses:
                time.sleep(0.01)
            time.sleep(0.05)
        # the slow worker holds the first, the slow queue the second: the third is denied
        assert g.wait_for(1) == [(big[2], False)]
        assert enf.stats().overflow_denied == 1
        gate.set()
        assert sorted(g.wait_for(3)) == sorted((fd, False) for fd in big)
    assert enf.stats().denied == 3
    g.close()


def test_without_a_slow_lane_the_main_workers_decide_everything(
    tmp_path: Path, other_pid: int
) -> None:
    g = FakeGroup()
    gate = threading.Event()
    gate.set()
    guard = BigGatedGuard(gate, 1 << 20)
    enf = Enforcer(g, guard, workers=1, slow_workers=0, slow_bytes=1 << 20)  # type: ignore[arg-type]
    fd = _sized(tmp_path, "big", 2 << 20)
    with Running(enf):
        g.feed(pack_event(FAN_OPEN_EXEC_PERM, fd, other_pid))
        assert g.wait_for(1) == [(fd, False)]
    assert guard.threads == ["imaguard-enforce-0"]
    with pytest.raises(ValueError, match="slow_workers"):
        Enforcer(g, guard, slow_workers=-1)  # type: ignore[arg-type]
    g.close()


def test_an_event_fd_that_cannot_be_examined_is_denied(other_pid: int) -> None:
    g = FakeGroup()
    enf = Enforcer(g, RaisingGuard(), workers=1)  # type: ignore[arg-type]
    bad = os.open(os.devnull, os.O_RDONLY)
    os.close(bad)  # a number no open file has: fstat fails in the lane check and in the decision
    with Running(enf):
        g.feed(pack_event(FAN_OPEN_EXEC_PERM, bad, other_pid))
        assert g.wait_for(1) == [(bad, False)]
    g.close()


def test_a_swapped_guard_retires_after_its_last_decision(
    tmp_path: Path, other_pid: int, caplog: pytest.LogCaptureFixture
) -> None:
    g = FakeGroup()
    gates = [threading.Event() for _ in range(3)]
    a, b, c = (BigGatedGuard(gate, 0) for gate in gates)  # each holds every decision
    gates[1].set()
    enf = Enforcer(g, a, workers=1, slow_workers=0)  # type: ignore[arg-type]
    retired: list[Any] = []

    def wait_until(check: Any) -> None:
        deadline = time.monotonic() + 5
        while not check() and time.monotonic() < deadline:
            time.sleep(0.01)

    with Running(enf):
        fd = _sized(tmp_path, "f0", 10)
        g.feed(pack_event(FAN_OPEN_EXEC_PERM, fd, other_pid))
        wait_until(lambda: a.threads)
        enf.swap_guard(b, retired=retired.append)  # type: ignore[arg-type]
        time.sleep(0.1)
        assert retired == []  # a decision still runs with the old Guard
        gates[0].set()
        assert g.wait_for(1) == [(fd, False)]
        wait_until(lambda: retired)
        assert retired == [a]
        enf.swap_guard(b, retired=retired.append)  # type: ignore[arg-type]
        assert retired == [a]  # the same Guard again: nothing retires
        enf.swap_guard(c, retired=retired.append)  # type: ignore[arg-type]
        assert retired == [a, b]  # idle: retired at once

        def fails(old: Any) -> None:
            raise RuntimeError("close failed")

        fd = _sized(tmp_path, "f1", 10)
        g.feed(pack_event(FAN_OPEN_EXEC_PERM, fd, other_pid))
        wait_until(lambda: c.threads)
        enf.swap_guard(a, retired=fails)  # type: ignore[arg-type]
        gates[2].set()
        g.wait_for(2)
        wait_until(lambda: "retiring the previous Guard failed" in caplog.text)
    assert "retiring the previous Guard failed" in caplog.text
    g.close()
