"""The daemon process: a small supervisor that owns the fanotify group and runs one worker.

The supervisor creates the fanotify group, starts the worker (``python -m
imaguard.service._worker``) with the group fd inherited (``pass_fds``), marks every watched
filesystem once the worker has loaded its config, and restarts the worker when it dies.
Because the supervisor keeps the group fd, a worker crash is a wait, not an allow: events
raised while no worker reads are held by the supervisor's :class:`~imaguard.service._gate.Gate`
and answered ``FAN_DENY`` when the restarted worker takes over, and events the dead worker
had read but not answered are denied by the new worker (``Enforcer.recover_inflight``).

When the supervisor itself dies, the worker follows (it cannot be restarted any more) and
the kernel allows every pending event as the last fd of the group closes (fanotify(7)),
unless systemd keeps the fd in its fd store (``FileDescriptorStoreMax=``; the supervisor
sends it with ``FDSTORE=1`` and adopts it from ``$LISTEN_FDS`` after a restart).

Worker protocol (a SOCK_SEQPACKET pair, one word a message): worker ``loaded`` ->
supervisor ``go`` -> worker ``running``; ``reloading`` / ``reloaded`` / ``reload-failed
MESSAGE`` around a SIGHUP; ``fatal MESSAGE`` when the worker cannot start.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from imaguard.errors import BackendError, Error
from imaguard.service import _sdnotify
from imaguard.service._config import Config
from imaguard.service._gate import Gate

__all__ = ["Supervisor", "WorkerHandle", "backoff_delay"]

_log = logging.getLogger(__name__)

EXIT_CONFIG = 78  # EX_CONFIG: the worker could not load its configuration
STOP_TIMEOUT = 10.0
STABLE_AFTER = 10.0  # a worker that ran this long resets the backoff


class GroupLike(Protocol):
    fd: int

    def mark_filesystem(self, path: str, *, open_events: bool = True) -> None: ...

    def close(self) -> None: ...


def backoff_delay(failures: int, maximum: float) -> float:
    """Seconds before restart number ``failures`` of a worker that keeps dying quickly."""
    if failures <= 1:
        return 0.0
    return float(min(maximum, 0.1 * 2 ** (failures - 2)))


@dataclass
class WorkerHandle:
    """A running worker: its process and the supervisor's end of the channel."""

    process: subprocess.Popen[bytes]
    channel: socket.socket
    pidfd: int
    started: float = field(default_factory=time.monotonic)
    running: bool = False
    channel_open: bool = True

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.channel.close()
        with contextlib.suppress(OSError):
            os.close(self.pidfd)


def worker_argv(
    config_path: str | None,
    permissive: bool,
    group_fd: int,
    channel_fd: int,
    restarts: int,
    gap_ms: float | None,
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "imaguard.service._worker",
        "--group-fd",
        str(group_fd),
        "--channel-fd",
        str(channel_fd),
        "--supervisor-pid",
        str(os.getpid()),
        "--restarts",
        str(restarts),
    ]
    if gap_ms is not None:
        argv += ["--gap-ms", f"{gap_ms:.3f}"]
    if config_path is not None:
        argv += ["--config", config_path]
    if permissive:
        argv.append("--permissive")
    return argv


class Supervisor:
    """Owns the group fd, marks the watched filesystems, runs and restarts the worker."""

    def __init__(
        self,
        cfg: Config,
        config_path: str | None,
        *,
        permissive: bool = False,
        group_factory: Callable[[], tuple[GroupLike, bool]] | None = None,
        argv: Callable[..., list[str]] = worker_argv,
        notify: Callable[..., bool] = _sdnotify.notify,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.permissive = permissive
        self._group_factory = group_factory or _real_group
        self._argv = argv
        self._notify = notify
        self._on_ready = on_ready
        self.group: GroupLike | None = None
        self.marked = False
        self.worker: WorkerHandle | None = None
        self.restarts = 0
        self.failures = 0
        self.gaps_ms: list[float] = []
        self.ready_once = False
        self.stopping = False
        self._died_at: float | None = None
        self._restart_at: float | None = None
        self._gate: Gate | None = None
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self.exit_code = 0
        self._fatal: str | None = None
        self._stop_deadline: float | None = None

    # -- signals ----------------------------------------------------------------------------
    def _install_signals(self) -> dict[int, Any]:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        old: dict[int, Any] = {}
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, lambda *_: None)
        old[-1] = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "signal")
        return old

    @staticmethod
    def _restore_signals(old: dict[int, Any]) -> None:
        signal.set_wakeup_fd(old.pop(-1))
        for sig, handler in old.items():
            signal.signal(sig, handler)

    # -- the worker -------------------------------------------------------------------------
    def _spawn(self) -> None:
        assert self.group is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        gap = self.gaps_ms[-1] if self.gaps_ms else None  # the previous restart's
        argv = self._argv(
            self.config_path,
            self.permissive,
            self.group.fd,
            theirs.fileno(),
            self.restarts,
            gap,
        )
        try:
            proc = subprocess.Popen(
                argv, pass_fds=(self.group.fd, theirs.fileno()), stdin=subprocess.DEVNULL
            )
        finally:
            theirs.close()
        pidfd = os.pidfd_open(proc.pid)
        self.worker = WorkerHandle(proc, ours, pidfd)
        self._sel.register(ours, selectors.EVENT_READ, "channel")
        self._sel.register(pidfd, selectors.EVENT_READ, "exit")
        _log.info("worker started (pid %d)", proc.pid)

    def _send(self, word: str) -> None:
        if self.worker is not None:
            try:
                self.worker.channel.send(word.encode())
            except OSError as e:
                _log.warning("worker channel: %s", e)

    def _gate_on(self) -> None:
        if self._gate is None and self.group is not None and self.marked:
            self._gate = Gate(self.group.fd)
            self._sel.register(self.group.fd, selectors.EVENT_READ, "group")

    def _gate_off(self) -> int:
        if self._gate is None:
            return 0
        assert self.group is not None
        self._sel.unregister(self.group.fd)
        gate, self._gate = self._gate, None
        # what is still queued waits for the worker; what the gate read is denied now
        denied = gate.release()
        if denied:
            _log.warning("%d access(es) raised during the worker restart: denied", denied)
        return denied

    def _on_message(self, text: str) -> None:
        word, _, rest = text.partition(" ")
        if word == "loaded":
            if not self.marked:
                self._mark_all()
            self._gate_off()
            self._send("go")
        elif word == "running":
            assert self.worker is not None
            self.worker.running = True
            if self._died_at is not None:
                gap = (time.monotonic() - self._died_at) * 1000
                self.gaps_ms.append(gap)
                self._died_at = None
                _log.warning("worker restarted (pid %d); gap %.1f ms", self.worker.pid, gap)
                self._send(f"gap {gap:.3f}")
                self._notify(f"STATUS=enforcing (worker restarted, gap {gap:.0f} ms)")
            if not self.ready_once:
                self.ready_once = True
                self._notify(
                    "READY=1",
                    f"STATUS=enforcing on {len(self.cfg.watch)} filesystem(s), mode {self._mode}",
                    f"MAINPID={os.getpid()}",
                )
                if self._on_ready is not None:
                    self._on_ready()
        elif word == "reloading":
            self._notify("RELOADING=1", f"MONOTONIC_USEC={_sdnotify.monotonic_usec()}")
        elif word == "reloaded":
            self._notify("READY=1", "STATUS=enforcing (configuration reloaded)")
        elif word == "reload-failed":
            self._notify("READY=1", f"STATUS=enforcing (reload refused, old config kept: {rest})")
        elif word == "fatal":
            _log.error("worker cannot start: %s", rest)
            self._fatal = rest

    @property
    def _mode(self) -> str:
        return "permissive" if self.permissive else self.cfg.mode

    def _mark_all(self) -> None:
        assert self.group is not None
        for path in self.cfg.watch:
            self.group.mark_filesystem(path, open_events=self.cfg.open_events)
            _log.info("marked the filesystem of %s", path)
        self.marked = True

    def _on_exit(self) -> None:
        w = self.worker
        assert w is not None
        if w.channel_open:
            self._sel.unregister(w.channel)
        self._sel.unregister(w.pidfd)
        # a final message (fatal ...) may still be queued on the channel
        w.channel.setblocking(False)
        with contextlib.suppress(OSError):
            while msg := w.channel.recv(4096):
                self._on_message(msg.decode(errors="replace"))
        code = w.process.wait()
        w.close()
        self.worker = None
        if self.stopping:
            _log.info("worker stopped (exit %d)", code)
            return
        fatal = self._fatal
        if not self.ready_once:
            raise BackendError(
                f"the worker could not start: {fatal}"
                if fatal
                else f"the worker exited with {code} before it was ready"
            )
        self._died_at = time.monotonic()
        ran = self._died_at - w.started
        self.failures = 1 if ran >= STABLE_AFTER else self.failures + 1
        delay = backoff_delay(self.failures, self.cfg.restart_delay_max)
        _log.error(
            "worker (pid %d) died (%s); restarting in %.2f s; events wait meanwhile",
            w.pid,
            f"exit {code}" if code >= 0 else f"signal {-code}",
            delay,
        )
        self._fatal = None
        self.restarts += 1
        self._gate_on()
        self._restart_at = time.monotonic() + delay

    def _on_signal(self) -> None:
        with contextlib.suppress(OSError):
            data = self._wake_r.recv(64)
            for signum in data:
                if signum == signal.SIGHUP:
                    if self.worker is not None and self.worker.running:
                        _log.info("SIGHUP: reloading the worker's configuration")
                        self.worker.process.send_signal(signal.SIGHUP)
                    else:
                        _log.warning("SIGHUP ignored: no worker is running")
                elif signum in (signal.SIGTERM, signal.SIGINT):
                    self.stop()

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self._notify("STOPPING=1")
        _log.info("stopping")
        if self.worker is not None:
            with contextlib.suppress(ProcessLookupError):
                self.worker.process.send_signal(signal.SIGTERM)
            self._stop_deadline = time.monotonic() + STOP_TIMEOUT

    # -- main loop --------------------------------------------------------------------------
    def status_line(self) -> str:
        return f"enforcing, mode {self._mode}, restarts {self.restarts}"

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code. Raises Error if it cannot start."""
        old = self._install_signals()
        try:
            self.group, adopted = self._group_factory()
            if adopted:
                self.marked = True  # a group from the fd store already carries its marks
                self._mark_all()
                self._gate_on()
            else:
                self._notify("FDSTORE=1", "FDNAME=fanotify", fds=[self.group.fd])
            self._spawn()
            while True:
                if self.stopping and self.worker is None:
                    break
                timeout = self._timeout()
                for key, _ in self._sel.select(timeout):
                    self._dispatch(key.data, key.fileobj)
                now = time.monotonic()
                if (
                    self._restart_at is not None
                    and now >= self._restart_at
                    and self.worker is None
                    and not self.stopping
                ):
                    self._restart_at = None
                    self._spawn()
                if (
                    self._stop_deadline is not None
                    and now >= self._stop_deadline
                    and self.worker is not None
                ):
                    _log.error("worker did not stop in %.0f s: killed", STOP_TIMEOUT)
                    with contextlib.suppress(ProcessLookupError):
                        self.worker.process.kill()
                    self._stop_deadline = None
            return self.exit_code
        finally:
            self._shutdown()
            self._restore_signals(old)

    def _timeout(self) -> float | None:
        now = time.monotonic()
        deadlines = [d for d in (self._restart_at, self._stop_deadline) if d is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def _dispatch(self, what: str, fileobj: Any) -> None:
        if what == "signal":
            self._on_signal()
        elif what == "group":
            if self._gate is not None:
                allowed = {os.getpid()}
                if self.worker is not None:
                    allowed.add(self.worker.pid)
                self._gate.read(allowed)
        elif what == "channel":
            assert self.worker is not None
            try:
                msg = self.worker.channel.recv(4096)
            except OSError as e:
                if e.errno != errno.EAGAIN:
                    _log.debug("worker channel: %s", e)
                return
            if msg:
                self._on_message(msg.decode(errors="replace"))
            else:
                self._sel.unregister(self.worker.channel)  # EOF: the exit follows on the pidfd
                self.worker.channel_open = False
        elif what == "exit":
            self._on_exit()

    def _shutdown(self) -> None:
        if self.worker is not None:
            with contextlib.suppress(ProcessLookupError):
                self.worker.process.kill()
            self.worker.process.wait()
            self.worker.close()
            self.worker = None
        if self._gate is not None and self.group is not None:
            self._gate.release()
            self._gate = None
        if self.group is not None:
            self.group.close()  # the kernel allows whatever is still pending
            self.group = None
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()


def _real_group() -> tuple[GroupLike, bool]:
    from imaguard.enforce import FanotifyGroup

    stored = _sdnotify.listen_fds().get("fanotify")
    if stored:
        _log.info("adopting the fanotify group from systemd's fd store (fd %d)", stored[0])
        return FanotifyGroup.adopt(stored[0]), True
    return FanotifyGroup.create(), False


def run_daemon(
    config_path: str | None,
    *,
    permissive: bool = False,
    foreground: bool = True,
    log_level: int = logging.INFO,
) -> int:
    """``imaguard daemon``: check the config, then supervise (daemonized unless foreground)."""
    from imaguard.service._build import build_policy_set
    from imaguard.service._config import load_config

    cfg = load_config(config_path)
    if permissive:
        cfg = cfg.with_mode("permissive")
    build_policy_set(cfg)  # a bad policy file or keyring fails here, before any mark
    if config_path is not None:
        config_path = os.path.abspath(config_path)
    if foreground:
        _configure_logging(log_level, "imaguard")
        return Supervisor(cfg, config_path, permissive=permissive).run()
    return _daemonize(cfg, config_path, permissive, log_level)


def _configure_logging(level: int, name: str, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(f"{name}[%(process)d]: %(levelname)s: %(message)s"))
    root = logging.getLogger("imaguard")
    root.handlers[:] = [handler]
    root.setLevel(level)


def _daemonize(cfg: Config, config_path: str | None, permissive: bool, level: int) -> int:
    """Double fork; the parent returns 0 once the daemon is ready, 2 if it failed to start."""
    r, w = os.pipe()
    if os.fork() > 0:
        os.close(w)
        with os.fdopen(r, "rb") as f:
            answer = f.read()
        if answer.startswith(b"ready"):
            return 0
        raise BackendError(answer.decode(errors="replace") or "the daemon failed to start")
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    from logging.handlers import SysLogHandler

    root = logging.getLogger("imaguard")
    try:
        handler: logging.Handler = SysLogHandler(address="/dev/log")
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("imaguard[%(process)d]: %(levelname)s: %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(level)

    def ready() -> None:
        with contextlib.suppress(OSError):
            os.write(w, f"ready {os.getpid()}".encode())
            os.close(w)

    code = 1
    try:
        code = Supervisor(cfg, config_path, permissive=permissive, on_ready=ready).run()
    except Error as e:
        with contextlib.suppress(OSError):
            os.write(w, str(e).encode())
        _log.error("%s", e)
        code = 2
    finally:
        os._exit(code)
