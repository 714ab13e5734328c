"""Running one command and measuring it: wall time, CPU time and peak RSS.

Each measured command is started with ``posix_spawn`` and reaped with ``wait4``; wall time
is ``time.perf_counter`` around the two, CPU time (user + sys of the command and the
descendants it waited for) comes from ``wait4``.

Peak RSS is taken from ``/usr/bin/time -f %M``, which wraps the command. It cannot come
from our own ``wait4``: when a process execs, Linux folds the high-water RSS of the
memory image it replaces into the process's ``ru_maxrss``, and a child spawned from this
Python process starts with *our* image, so every command would report at least this
process's RSS (36 MiB in a trial run, for ``sha256sum`` too). ``time`` is small (about
2 MiB), and its child starts from ``time``'s image, so the figure is the command's own
peak (with a floor of ``time``'s RSS, measured once and reported). Without
``/usr/bin/time`` the ``wait4`` figure is used and flagged as an upper bound.

stdin is ``/dev/null``; stdout and stderr go to ``/dev/null`` or to a file in the scratch
directory, never to a terminal (so imaguard draws no progress bar).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

DEVNULL = os.devnull


@dataclass(frozen=True)
class Sample:
    """One run of one command."""

    wall_s: float
    user_s: float
    sys_s: float
    maxrss_kib: int
    rc: int
    other_cpu_s: float = 0.0
    """CPU time the rest of the machine used meanwhile (all CPUs busy time minus ours)."""
    steal_s: float = 0.0
    """CPU time the hypervisor took from this VM meanwhile."""
    waited_s: float = 0.0
    """Time spent waiting for a quiet machine before this run (see timed())."""
    retaken: int = 0
    """Earlier attempts at this sample discarded because the machine was busy."""

    @property
    def contended(self) -> bool:
        """Other processes used more than CONTENDED of one CPU while this ran."""
        return self.other_cpu_s > CONTENDED * self.wall_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"contended": self.contended}


class CommandFailedError(RuntimeError):
    pass


history: list[Sample] = []
"""Every sample taken, for the run's contention summary."""

TIME = "/usr/bin/time"
HAVE_TIME = os.access(TIME, os.X_OK)
RSS_METHOD = "/usr/bin/time -f %M" if HAVE_TIME else "wait4 ru_maxrss (upper bound)"
_workdir: str | None = None


def set_workdir(path: str) -> None:
    """Where the short-lived files of /usr/bin/time -o go (inside the scratch directory)."""
    global _workdir
    _workdir = path


def spawn(
    argv: Sequence[str],
    *,
    stdout: str = DEVNULL,
    stderr: str = DEVNULL,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> Sample:
    """Run ``argv`` to completion and measure it. stdout/stderr are file paths."""
    rss_file = None
    full = list(argv)
    if HAVE_TIME:
        fd, rss_file = tempfile.mkstemp(prefix="rss-", dir=_workdir)
        os.close(fd)
        full = [TIME, "-f", "%M", "-o", rss_file, *argv]
    wr = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, DEVNULL, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, stdout, wr, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, stderr, wr, 0o644),
    ]
    environ = dict(os.environ if env is None else env)
    try:
        cpu0 = cpu_times()
        t0 = time.perf_counter()
        pid = os.posix_spawnp(full[0], full, environ, file_actions=actions)
        _, status, ru = os.wait4(pid, 0)
        wall = time.perf_counter() - t0
        cpu1 = cpu_times()
        maxrss = ru.ru_maxrss
        if rss_file is not None:
            with open(rss_file) as f:
                lines = f.read().split()
            maxrss = int(lines[-1])  # "Command exited with non-zero status N" may precede
    finally:
        if rss_file is not None:
            os.unlink(rss_file)
    rc = os.waitstatus_to_exitcode(status)
    own = ru.ru_utime + ru.ru_stime
    other = max(0.0, (cpu1[0] - cpu0[0]) - own)
    sample = Sample(wall, ru.ru_utime, ru.ru_stime, maxrss, rc, other, cpu1[1] - cpu0[1])
    if check and rc != 0:
        raise CommandFailedError(f"exit {rc}: {' '.join(argv)} (stderr in {stderr})")
    return sample


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_times() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / _TICK, steal / _TICK


QUIET_LOAD = 0.10
"""The machine is quiet when the rest of it uses less than this fraction of one CPU."""
CONTENDED = 0.15
"""A sample is contended when the rest of the machine used more than this fraction of one
CPU (averaged over the sample's wall time) while it ran."""
_slack = 0.0


def set_slack(seconds: float) -> None:
    """How long, in all, timed() may spend waiting for quiet and retaking samples."""
    global _slack
    _slack = seconds


def slack() -> float:
    return _slack


def _quiet() -> float:
    """Wait (within the slack) until the rest of the machine is quiet; time waited."""
    global _slack
    waited = 0.0
    while True:
        b0 = cpu_times()[0]
        time.sleep(0.3)
        busy = cpu_times()[0] - b0
        waited += 0.3
        if busy / 0.3 < QUIET_LOAD or _slack <= 0:
            return waited
        time.sleep(0.7)
        waited += 0.7
        _slack -= 1.0


def timed(
    argv: Sequence[str], *, before: Callable[[], None] | None = None, **kwargs: Any
) -> Sample:
    """A benchmark sample: spawn() on a quiet machine, retaken if others got busy meanwhile.

    Waiting and retaking draw on one shared slack (``set_slack``); once it is spent,
    samples are kept as they come and a contended one is counted as such in the report.
    """
    global _slack
    waited = 0.0
    retaken = 0
    while True:
        if before is not None:
            before()  # untimed preparation, repeated for a retaken sample
        waited += _quiet()
        s = spawn(argv, **kwargs)
        if s.contended and _slack >= s.wall_s:
            _slack -= s.wall_s
            retaken += 1
            continue
        s = replace(s, waited_s=waited, retaken=retaken)
        history.append(s)
        return s


def summarize(samples: Sequence[Sample]) -> dict[str, Any]:
    """Median (the reported figure), min and max over repetitions, plus the raw samples."""
    walls = [s.wall_s for s in samples]
    return {
        "median_wall_s": statistics.median(walls),
        "min_wall_s": min(walls),
        "max_wall_s": max(walls),
        "median_cpu_s": statistics.median(s.user_s + s.sys_s for s in samples),
        "max_rss_kib": max(s.maxrss_kib for s in samples),
        "median_other_cpu_s": statistics.median(s.other_cpu_s for s in samples),
        "max_other_cpu_s": max(s.other_cpu_s for s in samples),
        "steal_s": sum(s.steal_s for s in samples),
        "retaken": sum(s.retaken for s in samples),
        "contended_kept": sum(s.contended for s in samples),
        "samples": [s.to_dict() for s in samples],
    }


def output(argv: Sequence[str]) -> str:
    """stdout+stderr of a quick informational command ('' if it cannot run)."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (p.stdout + p.stderr).strip()


def machine_info(data_dir: str, python: str) -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    hypervisor = False
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and " hypervisor" in line:
                hypervisor = True
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    fs = output(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", data_dir])
    if not fs:
        df = output(["df", "-T", data_dir]).splitlines()
        fs = " ".join(df[-1].split()[:2][::-1]) if len(df) > 1 else "unknown"
    py_info = output(
        [
            python,
            "-c",
            "import sys, ssl, cryptography, imaguard;"
            "from cryptography.hazmat.backends.openssl import backend as b;"
            "print(sys.version.split()[0]);print(ssl.OPENSSL_VERSION);"
            "print(cryptography.__version__);print(b.openssl_version_text());"
            "print(imaguard.__version__)",
        ]
    ).splitlines()
    py_info += [""] * (5 - len(py_info))
    return {
        "nproc": int(output(["nproc"]) or os.cpu_count() or 0),
        "cpu_model": model,
        "hypervisor": hypervisor,
        "sha_ni": _has_flag("sha_ni"),
        "mem_total_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "data_dir": data_dir,
        "data_fs": fs,
        "tools": {
            "imaguard": py_info[4],
            "python": py_info[0],
            "python_hashlib_openssl": py_info[1],
            "cryptography": f"{py_info[2]} ({py_info[3]})",
            "evmctl": output(["evmctl", "--version"]),
            "openssl": output(["openssl", "version"]),
            "sha256sum": (output(["sha256sum", "--version"]).splitlines() or [""])[0],
        },
    }


def source_identity(root: str) -> dict[str, str | int]:
    """Which imaguard was measured: git HEAD, uncommitted changes under src/, a content hash."""
    import hashlib

    h = hashlib.sha256()
    src = os.path.join(root, "src", "imaguard")
    for dirpath, dirs, names in os.walk(src):
        dirs.sort()
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                h.update(os.path.relpath(path, src).encode() + b"\0")
                with open(path, "rb") as f:
                    h.update(f.read())
    status = output(["git", "-C", root, "status", "--porcelain", "--", "src"])
    return {
        "git_head": output(["git", "-C", root, "rev-parse", "--short", "HEAD"]),
        "src_changes_uncommitted": len(status.splitlines()) if status else 0,
        "src_sha256": h.hexdigest()[:16],
    }


def _has_flag(flag: str) -> bool:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return flag in line.split()
    return False
