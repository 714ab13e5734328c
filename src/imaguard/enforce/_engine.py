"""The enforcer: a reader thread, bounded queues, decision workers, kernel-side caching.

Threads and deadlock discipline:

* The **reader** polls the group fd, reads batches, answers events of its own process (and
  of ``own_pids``) with ``FAN_ALLOW`` at once, records every other event fd in the inflight
  registry and puts the event on a bounded queue. A full queue means ``FAN_DENY`` at once
  (counted in ``overflow_denied``), never an allow. The reader takes no lock a decision
  holds across any I/O; it opens no file and does not log (its log lines are queued and
  written by a worker: a log handler may write to a watched filesystem).
* **Workers** decide: subject and object facts, the hook (see ``_events``), then
  :meth:`imaguard.core.Guard.process` on the event fd. They write the response first, then
  add an ignore mark, clear the registry entry, close the fd, and only then call
  ``on_decision`` and log. Any exception while deciding answers ``FAN_DENY``.
* **A slow lane for large files.** Hashing a file takes about a second a GiB here, and
  while a worker hashes, it decides nothing else: ``workers`` large files opened at once
  would hold every other access on the watched filesystems for that long (measured:
  docs/reliability.md). So a worker that takes an event on a regular file of
  ``slow_bytes`` or more (one ``fstat``) hands it to a second bounded queue served by
  ``slow_workers`` threads of its own and goes back to the small ones. Large files wait
  behind each other, never in front of a small one; a full slow queue means ``FAN_DENY``
  at once (counted in ``overflow_denied``), as the main queue. ``slow_workers=0`` turns the
  lane off.
* Everything the event path uses is imported before the first mark exists (module level
  here), so the process's own file accesses never wait on itself; and they are answered by
  the reader anyway.

Kernel-side cache (ignore marks). After an allow that the policy lets stand for the inode,
the worker adds a per-inode ignore mark (``FAN_MARK_IGNORED_MASK | FAN_MARK_EVICTABLE``,
without ``SURV_MODIFY``): later opens and execs of the inode raise no event until it is
written (the kernel clears the mask on the first modify event), evicted, or the marks are
flushed (:meth:`Enforcer.swap_guard`). No mark is added when:

* the open may write (or its access mode is unknown), or some process has the file open
  for write at marking time (probed with a read lease, ``F_SETLEASE``/``F_RDLCK``, which
  the kernel refuses while the inode is open for write; fcntl(2));
* the Decision is not cacheable (a ``cache=no`` rule), or an action failed, or the answer
  was a permissive override;
* the policy set has conditions that can change without a write to the file or that
  depend on the subject (``uid``/``gid``/``fowner``/``fgroup``, LSM labels, ``path``,
  ``path_prefix``): an inode mark would apply to every process and survive a chown or a
  rename;
* the file changed between the decision and the mark (its ctime/mtime/size are compared
  after the mark is in place; the mark is removed if they moved).

``FAN_OPEN_EXEC_PERM`` is ignored after an allowed exec. ``FAN_OPEN_PERM`` is ignored too
only when every hook a read-only open of that file could be decided under demands no more
than the decision already showed (same appraisal kind, no measure/audit/hash), and only for
files the ``open_marks`` setting allows: ``"root-owned"`` (the default) — files owned by root
with no group/other write bit and no POSIX ACL, which no unprivileged process can open for
write; ``True`` — every file; ``False`` — none. Otherwise each open still comes to the daemon.

What cannot clear an ignore mark: **writes through a shared writable mmap raise no modify
event** (fanotify(7)). Covered as follows: a write open that reaches the daemon removes the
inode's marks before it is allowed; no mark is added while any process has the file open for
write; and the Guard's change cookie (ctime) catches the changed content on the next event
after the mark is gone. A write open reaches the daemon unless the inode carries an
open-ignore mark, which by default only files that only root can write get — and root is
outside what a user-space enforcer can stop. With ``open_marks=True`` the residual gap is
real: a process that opens an already-cached file for write (that open is ignored, so the
daemon does not see it) and changes it only through a shared mapping keeps the stale mark
until the inode is evicted, any ``write(2)`` reaches it, or the marks are flushed.

Other limits, stated plainly:

* ``memfd_create`` + ``fexecve`` raises no event on any watched filesystem: fanotify cannot
  see it. Only the kernel can (IMA's ``BPRM_CHECK``, or an interpreter calling
  ``execveat(AT_EXECVE_CHECK)`` on 6.14+ with a policy for it).
* A denial reads as ``EPERM`` (``FAN_DENY_ERRNO`` is for pre-content groups only).
* When the last holder of the group fd goes away, the kernel **allows** every pending
  event. A supervisor that keeps the group fd while a worker restarts turns a worker crash
  into a wait: the restarted worker answers what the dead one had read (``FAN_DENY``, from
  the inflight registry, before it reads anything) and decides the rest.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import logging
import mmap
import os
import queue
import resource
import select
import signal
import stat
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from imaguard.core import Decision, Guard, Outcome, file_object
from imaguard.enforce._events import (
    DEFAULT_INTERPRETERS,
    DEFAULT_SCRIPT_EXEMPT,
    MAY_EXEC,
    Classified,
    EventSubject,
    SubjectGoneError,
    candidate_hooks,
    classify,
    elf_type,
    fd_path,
    opener_mask,
    read_subject,
)
from imaguard.enforce._fanotify import (
    FAN_OPEN_EXEC_PERM,
    FAN_OPEN_PERM,
    Event,
    EventFormatError,
    FanotifyGroup,
    parse_events,
)
from imaguard.errors import BackendError
from imaguard.policy import Request

__all__ = ["Enforcer", "EnforcerStats", "EventDecision"]

_log = logging.getLogger(__name__)

F_SETLEASE = 1024
F_SETSIG = 10
ROOT_OWNED = "root-owned"
"""``open_marks`` value: cache plain opens in the kernel only for files no user but root can
write (the default); ``True`` caches them for every file, ``False`` for none."""
_LEASE_SIGNAL = signal.SIGWINCH  # default action: ignore (a lease break cannot kill us)


@dataclass(frozen=True)
class EnforcerStats:
    """Counters of one Enforcer: answers, the queue, kernel ignore marks, the Guard's cache."""

    allowed: int
    denied: int
    queue: int
    events: int
    overflow_denied: int
    ignore_marks: int
    cache_hits: int
    cache_misses: int


@dataclass(frozen=True)
class EventDecision:
    """What was answered for one event; ``allowed`` is the answer written to the kernel."""

    path: str
    pid: int
    hook: str
    mask: int
    allowed: bool
    permissive_override: bool
    decision: Decision | None
    reason: str
    exe: str | None = None


class _Inflight:
    """Event fds read but not yet answered: one byte per fd number in an mmap'd file.

    An fd number is unique among the open fds, so each byte has one writer at a time; the
    entry is set before the event is queued and cleared after the response is written and
    before the fd is closed (so the number cannot be reused while still recorded).
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._map: mmap.mmap | None = None
        if path is None:
            self.size = 0
            return
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        want = 1 << 20 if soft in (resource.RLIM_INFINITY, -1) else min(max(soft, 1024), 1 << 20)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                size = max(os.fstat(fd).st_size, want)
                os.ftruncate(fd, size)
                self._map = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        except OSError as e:
            raise BackendError(f"{path}: cannot map the inflight registry: {e.strerror}") from e
        self.size = size

    def add(self, fd: int) -> bool:
        if self._map is None:
            return True
        if not 0 <= fd < self.size:
            return False
        self._map[fd] = 1
        return True

    def remove(self, fd: int) -> None:
        if self._map is not None and 0 <= fd < self.size:
            self._map[fd] = 0

    def pending(self) -> list[int]:
        if self._map is None:
            return []
        out: list[int] = []
        start = 0
        while True:
            i = self._map.find(b"\x01", start)
            if i < 0:
                return out
            out.append(i)
            start = i + 1

    def close(self) -> None:
        if self._map is not None:
            self._map.flush()
            self._map.close()
            self._map = None


_STOP = Event(0, -1, 0)
SLOW_BYTES = 16 << 20
"""Files this large or larger are decided in the slow lane (about 15 ms of sha256 here)."""


class Enforcer:
    """Answers the permission events of ``group`` with the decisions of ``guard``."""

    def __init__(
        self,
        group: FanotifyGroup,
        guard: Guard,
        *,
        permissive: bool = False,
        interpreters: Sequence[str] = DEFAULT_INTERPRETERS,
        workers: int = 4,
        queue_limit: int = 4096,
        own_pids: Collection[int] = (),
        inflight_path: str | None = None,
        on_decision: Callable[[EventDecision], None] | None = None,
        open_marks: bool | str = ROOT_OWNED,
        script_exempt: Sequence[str] = DEFAULT_SCRIPT_EXEMPT,
        slow_workers: int = 2,
        slow_bytes: int = SLOW_BYTES,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if slow_workers < 0:
            raise ValueError("slow_workers must be 0 or more")
        if open_marks not in (True, False, ROOT_OWNED):
            raise ValueError(f"open_marks must be True, False or {ROOT_OWNED!r}")
        self.group = group
        self.permissive = permissive
        self.interpreters = tuple(interpreters)
        self.script_exempt = tuple(script_exempt)
        self.workers = workers
        self.slow_workers = slow_workers
        self.slow_bytes = slow_bytes
        self.queue_limit = queue_limit
        self.own_pids = frozenset({os.getpid(), *own_pids})
        self.on_decision = on_decision
        self.open_marks = open_marks
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=queue_limit)
        self._slow: queue.Queue[Event] = queue.Queue(maxsize=queue_limit)
        self._inflight = _Inflight(inflight_path)
        self._mark_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("allowed", "denied", "events", "overflow_denied", "ignore_marks", "hits", "misses"),
            0,
        )
        self._inhand: dict[int, Event] = {}
        self._notes: collections.deque[str] = collections.deque(maxlen=1000)
        self._recovered = False
        self._current: tuple[Guard, int, bool] = (guard, 0, _inode_stable(guard))
        # decisions under way per Guard (by id), and swapped-out Guards waiting for theirs
        self._users_lock = threading.Lock()
        self._users: dict[int, int] = {}
        self._retiring: dict[int, tuple[Guard, Callable[[Guard], None]]] = {}

    # -- public ------------------------------------------------------------------------
    @property
    def guard(self) -> Guard:
        return self._current[0]

    def swap_guard(self, guard: Guard, retired: Callable[[Guard], None] | None = None) -> None:
        """Use ``guard`` for every event decided from now on, then flush the ignore marks.

        ``retired(old)`` is called once no decision uses the previous Guard any more: at
        once (in this thread) when none does, else in a thread of its own after the last one
        (a decision that hashes a large file may take seconds; closing the old Guard's log or
        audit trail under it would lose its measurement and its records).
        """
        with self._mark_lock:
            with self._users_lock:
                old = self._current[0]
                gen = self._current[1] + 1
                self._current = (guard, gen, _inode_stable(guard))
                idle = old is guard or not self._users.get(id(old))
                if retired is not None and not idle:
                    self._retiring[id(old)] = (old, retired)
            self.group.flush_ignore_marks()
        if retired is not None and idle and old is not guard:
            retired(old)

    def flush(self) -> None:
        """Drop the kernel-side cache (e.g. after a keyring or list change in the Guard)."""
        with self._mark_lock:
            g, gen, stable = self._current
            self._current = (g, gen + 1, stable)
            self.group.flush_ignore_marks()

    def stats(self) -> EnforcerStats:
        with self._stats_lock:
            c = dict(self._counts)
        return EnforcerStats(
            allowed=c["allowed"],
            denied=c["denied"],
            queue=self._queue.qsize() + self._slow.qsize(),
            events=c["events"],
            overflow_denied=c["overflow_denied"],
            ignore_marks=c["ignore_marks"],
            cache_hits=c["hits"],
            cache_misses=c["misses"],
        )

    def recover_inflight(self) -> int:
        """Deny every event a previous worker read and left unanswered; how many were answered.

        Must run before this process reads from the group (run() calls it first): the kernel
        matches a response by the fd number recorded at read time.
        """
        n = 0
        for fd in self._inflight.pending():
            try:
                self.group.respond(fd, False, audit=True)
                n += 1
            except OSError as e:
                if e.errno != errno.ENOENT:
                    _log.warning("inflight event fd %d: cannot answer: %s", fd, e.strerror)
            self._inflight.remove(fd)
        self._recovered = True
        if n:
            _log.warning("denied %d event(s) a previous worker left unanswered", n)
        return n

    def run(self, stop: threading.Event) -> None:
        """Read and answer until ``stop`` is set; then answer what is held and return."""
        if not self._recovered:
            self.recover_inflight()
        threads = [
            threading.Thread(
                target=self._worker, args=(False,), name=f"imaguard-enforce-{i}", daemon=True
            )
            for i in range(self.workers)
        ]
        slow = [
            threading.Thread(
                target=self._worker, args=(True,), name=f"imaguard-enforce-slow-{i}", daemon=True
            )
            for i in range(self.slow_workers)
        ]
        for t in threads + slow:
            t.start()
        try:
            self._reader(stop)
        finally:
            # the main lane first: its workers may still hand events to the slow lane
            for q, lane in ((self._queue, threads), (self._slow, slow)):
                for _ in lane:
                    try:
                        q.put(_STOP, timeout=10)
                    except queue.Full:
                        break
                for t in lane:
                    t.join(timeout=10)
            self._deny_leftovers()
            self._inflight.close()
            self._flush_notes()

    # -- reader ------------------------------------------------------------------------
    def _reader(self, stop: threading.Event) -> None:
        poller = select.poll()
        poller.register(self.group.fd, select.POLLIN)
        while not stop.is_set():
            if not poller.poll(100):
                continue
            try:
                buf = self.group.read()
            except OSError as e:
                self._note(f"reading the fanotify group failed: {e.strerror}")
                stop.wait(0.1)
                continue
            if not buf:
                continue
            try:
                events = parse_events(buf)
            except EventFormatError as e:
                self._note(str(e))
                events = e.events
            for ev in events:
                self._dispatch(ev)

    def _dispatch(self, ev: Event) -> None:
        if ev.overflow:
            self._note("the fanotify queue overflowed: events were lost")
            return
        if not ev.permission:
            _close(ev.fd)
            _close_pidfd(ev)
            return
        if ev.pid in self.own_pids:
            self._answer(ev.fd, True)
            _close(ev.fd)
            _close_pidfd(ev)
            return
        if not self._inflight.add(ev.fd):
            self._answer(ev.fd, False)
            self._count("denied", "overflow_denied", "events")
            _close(ev.fd)
            _close_pidfd(ev)
            return
        self._enqueue(self._queue, ev)

    def _enqueue(self, q: queue.Queue[Event], ev: Event) -> None:
        """Queue ``ev``; a full queue answers it at once: deny (allow only when permissive)."""
        try:
            q.put_nowait(ev)
        except queue.Full:
            self._answer(ev.fd, self.permissive)
            self._inflight.remove(ev.fd)
            self._count("overflow_denied", "events", "allowed" if self.permissive else "denied")
            _close(ev.fd)
            _close_pidfd(ev)

    def _answer(self, fd: int, allow: bool) -> None:
        try:
            self.group.respond(fd, allow, audit=not allow)
        except OSError as e:
            self._note(f"answering event fd {fd} failed: {e.strerror}")

    def _note(self, message: str) -> None:
        """A log line from the reader: logged later by a worker (a log handler may write to
        a watched filesystem, and the reader must never wait for its own answer)."""
        self._notes.append(message)

    def _flush_notes(self) -> None:
        while True:
            try:
                message = self._notes.popleft()
            except IndexError:
                return
            _log.error("%s", message)

    def _count(self, *keys: str) -> None:
        with self._stats_lock:
            for k in keys:
                self._counts[k] += 1

    # -- workers -----------------------------------------------------------------------
    def _worker(self, slow: bool) -> None:
        q = self._slow if slow else self._queue
        while True:
            ev = q.get()
            if ev is _STOP:
                return
            if not slow and self.slow_workers and self._large(ev.fd):
                self._enqueue(self._slow, ev)  # not in hand here: the slow worker owns it
                continue
            self._inhand[ev.fd] = ev
            try:
                self._handle(ev)
            finally:
                self._inhand.pop(ev.fd, None)

    def _large(self, fd: int) -> bool:
        try:
            st = os.fstat(fd)
        except OSError:
            return False  # _handle denies it and says why
        return stat.S_ISREG(st.st_mode) and st.st_size >= self.slow_bytes

    def _handle(self, ev: Event) -> None:
        with self._users_lock:
            guard, gen, stable = self._current
            self._users[id(guard)] = self._users.get(id(guard), 0) + 1
        try:
            self._decide(ev, guard, gen, stable)
        finally:
            self._release(guard)

    def _release(self, guard: Guard) -> None:
        """One decision less uses ``guard``; retire it after the last one, if it was swapped."""
        with self._users_lock:
            left = self._users[id(guard)] - 1
            if left:
                self._users[id(guard)] = left
                return
            del self._users[id(guard)]
            retiring = self._retiring.pop(id(guard), None)
        if retiring is not None:
            old, retired = retiring
            threading.Thread(
                target=_call_quietly, args=(retired, old), name="imaguard-retire", daemon=True
            ).start()

    def _decide(self, ev: Event, guard: Guard, gen: int, stable: bool) -> None:
        path = f"<fd {ev.fd}>"
        subj: EventSubject | None = None
        cls = Classified(
            "BPRM_CHECK" if ev.mask & FAN_OPEN_EXEC_PERM else "FILE_CHECK", 0, "", True
        )
        decision: Decision | None = None
        reason = "error"
        st: os.stat_result | None = None
        try:
            st = os.fstat(ev.fd)
            path = fd_path(ev.fd)
            subj = read_subject(ev.pid, ev.pidfd)
            elf = elf_type(ev.fd)
            bits = opener_mask(ev.pid) if ev.mask & FAN_OPEN_PERM else MAY_EXEC
            cls = classify(
                ev.mask, bits, subj.exe, elf, path, self.interpreters, self.script_exempt
            )
            reason = cls.reason
            decision = guard.process(ev.fd, cls.hook, cls.mask, subj.subject, name=path)
            allowed = decision.allowed
        except SubjectGoneError as e:
            allowed, reason = False, "subject-gone"
            _log.info("%s: denied: %s", path, e)
        except Exception:
            allowed, reason = False, "error"
            _log.exception("%s: deciding failed; denied", path)
        answer = allowed or self.permissive
        if cls.write and answer:
            with self._mark_lock:
                self.group.unignore(ev.fd)  # a writer revokes the kernel-side cache first
        self._answer(ev.fd, answer)
        marked = False
        if allowed and decision is not None and st is not None and subj is not None:
            try:
                marked = self._maybe_mark(ev, guard, gen, stable, cls, decision, subj, path, st)
            except Exception:
                _log.exception("%s: ignore mark not added", path)
        self._inflight.remove(ev.fd)
        _close(ev.fd)
        _close_pidfd(ev)
        keys = ["events", "allowed" if answer else "denied"]
        if marked:
            keys.append("ignore_marks")
        if decision is not None and decision.actions["appraise"].required:
            keys.append("hits" if decision.cached else "misses")
        self._count(*keys)
        result = EventDecision(
            path,
            ev.pid,
            cls.hook,
            cls.mask,
            answer,
            answer and not allowed,
            decision,
            reason,
            subj.exe if subj is not None else None,
        )
        if not allowed:
            _log.warning(
                "%s %s by pid %d (%s) for %s: %s",
                "would deny" if self.permissive else "denied",
                path,
                ev.pid,
                result.exe,
                cls.hook,
                _why(decision, reason),
            )
        if self.on_decision is not None:
            try:
                self.on_decision(result)
            except Exception:
                _log.exception("on_decision callback failed")
        self._flush_notes()

    # -- ignore marks ------------------------------------------------------------------
    def _maybe_mark(
        self,
        ev: Event,
        guard: Guard,
        gen: int,
        stable: bool,
        cls: Classified,
        decision: Decision,
        subj: EventSubject,
        path: str,
        st: os.stat_result,
    ) -> bool:
        if cls.write or not stable or not guard.use_cache:
            return False
        if any(a.outcome == Outcome.FAILED for a in decision.actions.values()):
            return False
        policies = guard.policies
        obj = file_object(ev.fd, st, path, resolve=policies.uses_paths)
        decided = policies.evaluate(Request(cls.hook, cls.mask, subj.subject, obj))
        if not decided.cache or decided.conflict is not None:
            return False
        exec_ok = cls.hook == "BPRM_CHECK" and cls.mask == MAY_EXEC
        open_ok = self.open_marks is True or (
            self.open_marks == ROOT_OWNED and _only_root_can_write(ev.fd, st)
        )
        for hook, mask in candidate_hooks(cls.elf):
            if (hook, mask) == (cls.hook, cls.mask):
                continue
            other = policies.evaluate(Request(hook, mask, subj.subject, obj))
            ok = _dominated(other, decided, decision)
            if hook == "BPRM_CHECK":
                exec_ok = exec_ok or ok
            open_ok = open_ok and ok
        mask = (FAN_OPEN_EXEC_PERM if exec_ok else 0) | (FAN_OPEN_PERM if open_ok else 0)
        if not mask:
            return False
        with self._mark_lock:
            if gen != self._current[1]:
                return False  # the Guard changed while this was decided
            if not self.group.ignore(ev.fd, mask):
                return False
            now = os.fstat(ev.fd)
            if _changed(st, now) or _open_for_write(ev.fd):
                self.group.unignore(ev.fd)
                return False
        return True

    def _deny_leftovers(self) -> None:
        while True:
            try:
                ev = self._queue.get_nowait()
            except queue.Empty:
                try:
                    ev = self._slow.get_nowait()
                except queue.Empty:
                    break
            if ev is _STOP:
                continue
            self._answer(ev.fd, self.permissive)
            self._inflight.remove(ev.fd)
            _close(ev.fd)
            _close_pidfd(ev)
            self._count("events", "allowed" if self.permissive else "denied")
        for fd, _ev in list(self._inhand.items()):
            _log.error("a worker did not finish event fd %d; denied at shutdown", fd)
            self._answer(fd, self.permissive)


def _call_quietly(retired: Callable[[Guard], None], old: Guard) -> None:
    try:
        retired(old)
    except Exception:
        _log.exception("retiring the previous Guard failed")


def _inode_stable(guard: Guard) -> bool:
    """No rule condition that may change without a write, or that depends on the subject."""
    policies = getattr(guard, "policies", None)
    if policies is None:
        return False
    for name in policies.names():
        for r in policies.policy(name).rules:
            if r.uid or r.gid or r.fowner or r.fgroup or r.lsm or r.path or r.path_prefix:
                return False
    return True


def _dominated(other: Any, decided: Any, decision: Decision) -> bool:
    """Does allowing ``decision`` also settle a request that the policy answers with ``other``?"""
    if other.conflict is not None or other.measure or other.audit or other.hash:
        return False
    if not other.appraise:
        return True
    return bool(
        decided.appraise
        and decision.verified
        and other.appraise_type == decided.appraise_type
        and other.appraise_algos == decided.appraise_algos
        and other.digest_type == decided.digest_type
        and other.cache
    )


def _changed(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) != (
        b.st_ino,
        b.st_size,
        b.st_mtime_ns,
        b.st_ctime_ns,
    )


def _only_root_can_write(fd: int, st: os.stat_result) -> bool:
    """Can no user but root open this file for write (or change who can)?

    Owned by root, no group or other write bit, and no POSIX ACL that could grant more
    (see acl(5)): then an unprivileged writer is refused by the kernel's own permission
    check before any fanotify event, and only root (outside the threat model) could open
    it for write behind an ignore mark.
    """
    if st.st_uid != 0 or st.st_mode & 0o022:
        return False
    try:
        os.getxattr(fd, "system.posix_acl_access")
    except OSError as e:
        return e.errno in (errno.ENODATA, errno.EOPNOTSUPP)
    return False


def _open_for_write(fd: int) -> bool:
    """True unless a read lease can be taken (the kernel refuses it while anyone may write)."""
    try:
        fcntl.fcntl(fd, F_SETSIG, _LEASE_SIGNAL)
        fcntl.fcntl(fd, F_SETLEASE, fcntl.F_RDLCK)
    except OSError:
        return True
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETLEASE, fcntl.F_UNLCK)
    return False


def _why(decision: Decision | None, reason: str) -> str:
    if decision is None:
        return reason
    a = decision.actions["appraise"]
    return f"{reason}: {a.cause or decision.detail or 'not allowed'}"


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _close_pidfd(ev: Event) -> None:
    if ev.pidfd is not None and ev.pidfd >= 0:
        _close(ev.pidfd)
