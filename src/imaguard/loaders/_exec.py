"""Verified exec: run only bytes verified in memory (``imaguard exec``).

PROGRAM is copied into a sealed memfd (:func:`imaguard.load_verified`), the copy is verified
against the keyring with the signature stored for PROGRAM, and that very memfd is executed
(``execveat(memfd, "", AT_EMPTY_PATH)``, which is what ``os.execve(fd, ...)`` does): a
writer who changes or renames PROGRAM after the check changes nothing that runs.

* **Scripts** (``#!``, parsed as ``fs/binfmt_script.c`` does: the first line, at most 256
  bytes, an interpreter and one optional argument): the interpreter is verified and run
  the same way, and the script is handed to it as its own verified memfd
  (``/proc/self/fd/N``), so neither can be swapped. Interpreters that are scripts nest, up
  to 4 levels (the kernel's limit). The script sees ``$0`` = ``/proc/self/fd/N``.
* **ELF programs**: a dynamically linked program names its loader (``PT_INTERP``, e.g.
  ``/lib64/ld-linux-x86-64.so.2``); the kernel opens the loader by that path when it
  executes the memfd, so imaguard verifies the loader file on disk before the exec — a
  window remains between that check and the kernel's open. Shared libraries are opened by
  the loader later and are **not** verified by ``imaguard exec``; with the daemon running,
  its ``MMAP_CHECK`` rule covers them (and its exec rule the loader) in the kernel's path.
* A **setuid or setgid** program is refused: executing a memfd copy drops those bits.

``mode="log"`` runs what fails verification anyway and only reports it (as the kernel's
``ima_appraise=log``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NoReturn

from imaguard.appraise import MemoryStore, Verdict, VerifiedFile
from imaguard.appraise._files import open_target
from imaguard.appraise._loaded import copy_and_appraise
from imaguard.appraise._sigstore import SignatureStore, store_for
from imaguard.crypto import Keyring
from imaguard.errors import Error, FileError, UsageError, VerificationError

if TYPE_CHECKING:
    from imaguard.core import Decision, Guard

__all__ = ["PreparedExec", "exec_verified", "prepare_exec", "spawn_verified"]

_log = logging.getLogger(__name__)

LoaderMode = Literal["enforce", "log"]
SHEBANG_MAX = 256  # BINPRM_BUF_SIZE (include/linux/binfmts.h)
MAX_NESTING = 5  # scripts in a chain the kernel runs (BINPRM_MAX_RECURSION = 4 counts from 0)
_PT_INTERP = 3


class ExecRefused(VerificationError):  # noqa: N818 - reads as what happened
    """``imaguard exec`` refused to run something (the message names the file and why)."""


@dataclass
class PreparedExec:
    """What will be executed: the verified memfd, the final argv, and what was checked.

    ``exec_fd`` is the memfd of the ELF that runs; ``pass_fds`` are script memfds the
    interpreter opens as ``/proc/self/fd/N``. ``checked`` lists every verdict, in order
    (program, interpreters, loaders); ``failures`` what failed (log mode runs anyway).
    """

    program: str
    argv: list[str]
    exec_fd: int
    pass_fds: list[int]
    checked: list[Verdict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    _files: list[VerifiedFile] = field(default_factory=list, repr=False)

    def exec(self, env: Mapping[str, str] | None = None) -> NoReturn:
        """Replace this process with the verified program (never returns)."""
        for fd in self.pass_fds:
            os.set_inheritable(fd, True)
        os.execve(self.exec_fd, self.argv, dict(os.environ if env is None else env))  # noqa: S606

    def spawn(self, env: Mapping[str, str] | None = None) -> int:
        """Fork and exec the verified program in the child; the child's pid."""
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child execs or exits
            try:
                self.exec(env)
            except BaseException as e:  # never return into the caller's code in the child
                why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                with contextlib.suppress(OSError):
                    os.write(2, f"imaguard exec: {self.program}: {why}\n".encode())
            finally:
                os._exit(126)
        return pid

    def close(self) -> None:
        for vf in self._files:
            vf.close()
        self._files.clear()

    def __enter__(self) -> PreparedExec:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _which(program: str) -> str:
    if "/" in program:
        return program
    found = shutil.which(program)
    if found is None:
        raise FileError(program, "not found in $PATH")
    return found


def _interp_of_elf(fd: int) -> str | None:
    """The ``PT_INTERP`` path of the ELF image in ``fd``, or None (static, or not ELF)."""
    head = os.pread(fd, 64, 0)
    if len(head) < 52 or head[:4] != b"\x7fELF":
        return None
    cls, enc = head[4], head[5]
    end = "<" if enc == 1 else ">"
    wide = "Q" if cls == 2 else "I"
    try:
        if cls == 2:
            (phoff,) = struct.unpack_from(end + "Q", head, 32)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 54)
            off_at, size_at = 8, 32
        else:
            (phoff,) = struct.unpack_from(end + "I", head, 28)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 42)
            off_at, size_at = 4, 16
        table = os.pread(fd, phentsize * min(phnum, 512), phoff)
        for i in range(min(phnum, 512)):
            base = i * phentsize
            (p_type,) = struct.unpack_from(end + "I", table, base)
            if p_type != _PT_INTERP:
                continue
            (offset,) = struct.unpack_from(end + wide, table, base + off_at)
            (size,) = struct.unpack_from(end + wide, table, base + size_at)
            raw = os.pread(fd, min(size, 4096), offset).split(b"\0", 1)[0]
            return os.fsdecode(raw) if raw else None
    except struct.error:
        return None
    return None


def parse_shebang(data: bytes, name: str) -> tuple[str, str | None]:
    """(interpreter, optional argument) of a ``#!`` line, as ``fs/binfmt_script.c``.

    ``data``: the file's first bytes (at least 257 when the file is that long).
    """
    head = data[:SHEBANG_MAX]
    nl = head.find(b"\n")
    if nl < 0:
        if len(data) > SHEBANG_MAX:
            raise ExecRefused(f"{name}: the #! line is longer than {SHEBANG_MAX} bytes")
        nl = len(head)
    line = head[2:nl].split(b"\0", 1)[0]  # the kernel's strings end at a NUL
    line = line.strip(b" \t")
    if not line:
        raise ExecRefused(f"{name}: the #! line names no interpreter")
    end = next((i for i, c in enumerate(line) if c in b" \t"), len(line))
    interp, arg = line[:end], line[end:].lstrip(b" \t")  # tabs inside the argument stay
    return os.fsdecode(interp), (os.fsdecode(arg) if arg else None)


def prepare_exec(
    argv: Sequence[str],
    keyring: Keyring | str | os.PathLike[str],
    *,
    guard: Guard | None = None,
    hook: str = "BPRM_CHECK",
    mode: LoaderMode = "enforce",
    store: SignatureStore | str | None = None,
    verify_loader: bool = True,
) -> PreparedExec:
    """Verify ``argv[0]`` (and its interpreters and loader) into memfds; ready to exec.

    Raises :class:`~imaguard.VerificationError` naming the file and the cause when anything
    fails in enforce mode (nothing is executed), FileError when a file cannot be read.
    ``guard``: a Guard whose policy runs for ``hook`` on each verified copy (measurement
    and audit; its appraisal too), with the value stored for the original file.
    """
    if not argv:
        raise UsageError("exec: no program given")
    if mode not in ("enforce", "log"):
        raise UsageError(f"exec: mode must be enforce or log, not {mode!r}")
    ring = keyring if isinstance(keyring, Keyring) else Keyring.load(keyring)
    st = store_for(store) if store is None or isinstance(store, str) else store
    program = _which(argv[0])
    prepared = PreparedExec(program, [], -1, [])
    try:
        tail = list(argv[1:])
        path, argv0 = program, argv[0]
        for depth in range(MAX_NESTING + 1):
            vf = _verify(path, ring, st, prepared, mode, guard, hook)
            data = os.pread(vf.fd, SHEBANG_MAX + 1, 0)
            if data[:2] == b"#!":
                if depth == MAX_NESTING:
                    raise ExecRefused(f"{program}: more than {MAX_NESTING} nested #! interpreters")
                interp, arg = parse_shebang(data, path)
                prepared.pass_fds.append(vf.fd)
                tail = ([arg] if arg else []) + [vf.path, *tail]
                path = argv0 = interp
                continue
            if data[:4] != b"\x7fELF":
                raise ExecRefused(f"{path}: neither an ELF program nor a #! script")
            loader = _interp_of_elf(vf.fd)
            if loader is not None and verify_loader:
                lvf = _verify(loader, ring, st, prepared, mode, guard, hook)
                lvf.close()
                prepared._files.remove(lvf)
            prepared.exec_fd = vf.fd
            prepared.argv = [argv0, *tail]
            return prepared
        raise AssertionError("unreachable")  # pragma: no cover
    except BaseException:
        prepared.close()
        raise


def _verify(
    path: str,
    ring: Keyring,
    store: SignatureStore,
    prepared: PreparedExec,
    mode: LoaderMode,
    guard: Guard | None,
    hook: str,
) -> VerifiedFile:
    with open_target(path) as ref:
        if ref.st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            raise ExecRefused(
                f"{path}: a setuid/setgid program cannot be run from a verified copy "
                "(executing a memfd drops the setuid bit); run it directly"
            )
    vf = copy_and_appraise(path, ring, store=store)
    verdict = vf.verdict
    if not verdict.passed:
        message = f"{path}: {verdict.describe()}"
        if mode == "enforce":
            vf.close()
            raise ExecRefused(message, verdict)
        prepared.failures.append(message)
        _log.info("exec (log mode): %s", message)
    prepared._files.append(vf)
    prepared.checked.append(verdict)
    if guard is not None:
        _hook(guard, vf, path, store, hook, prepared, mode)
    return vf


def _hook(
    guard: Guard,
    vf: VerifiedFile,
    path: str,
    store: SignatureStore,
    hook: str,
    prepared: PreparedExec,
    mode: LoaderMode,
) -> None:
    try:
        with open_target(path) as ref:
            value = store.read(ref)
    except Error:
        value = None
    if not isinstance(guard.store, MemoryStore):
        raise UsageError(
            "exec: the Guard must read values from a MemoryStore (store=MemoryStore())"
        )
    if value is not None:
        guard.store.values[path] = value
    decision = guard.process(vf.fd, hook, "MAY_EXEC", name=path)
    prepared.decisions.append(decision)
    if not decision.allowed:
        why = decision.detail or "refused by the policy"
        if mode == "enforce":
            raise ExecRefused(f"{path}: {hook}: {why}")
        prepared.failures.append(f"{path}: {hook}: {why}")


def exec_verified(
    argv: Sequence[str],
    keyring: Keyring | str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    **kwargs: object,
) -> NoReturn:
    """:func:`prepare_exec`, then replace this process with the verified program."""
    prepared = prepare_exec(argv, keyring, **kwargs)  # type: ignore[arg-type]
    prepared.exec(env)


def spawn_verified(
    argv: Sequence[str],
    keyring: Keyring | str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    **kwargs: object,
) -> int:
    """:func:`prepare_exec`, then run the verified program in a child; its exit status.

    Returns the status as :func:`subprocess.run` would (the exit code, or minus the
    signal number).
    """
    with prepare_exec(argv, keyring, **kwargs) as prepared:  # type: ignore[arg-type]
        pid = prepared.spawn(env)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
