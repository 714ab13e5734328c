"""The Enforcer against the real kernel: exec and open appraisal on a private tmpfs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import (
    EXEC_SNIPPET,
    POLICY,
    child_env,
    copy_true,
    enforcer,
    exec_result,
    refused_eperm,
    run,
    sign,
)

pytestmark = pytest.mark.root


@pytest.fixture
def env(tmpfs: Path, signer, tmp_path: Path):  # type: ignore[no-untyped-def]
    key, cert = signer
    good = copy_true(tmpfs / "good")
    sign(good, key)
    bad = copy_true(tmpfs / "bad")
    return tmpfs, key, cert, tmp_path, good, bad


def test_signed_runs_unsigned_is_eperm(env) -> None:  # type: ignore[no-untyped-def]
    mnt, _key, cert, tmp, good, bad = env
    with enforcer(mnt, cert, tmp):
        assert exec_result([str(good)]).returncode == 0
        assert refused_eperm(exec_result([str(bad)]))
        assert run(["/bin/true"]).returncode == 0


LD_SO = next(
    (
        str(p)
        for p in (
            Path("/lib64/ld-linux-x86-64.so.2"),
            Path("/lib/ld-linux-aarch64.so.1"),
        )
        if p.exists()
    ),
    None,
)
INTERPRETERS = ["/usr/bin/dash", "/usr/bin/bash", "/usr/bin/python3*", "*/bin/python3*"]


def _interp_args() -> list[str]:
    out: list[str] = []
    for g in INTERPRETERS:
        out += ["--interpreter", g]
    return out


def test_ld_so_of_unsigned_is_refused(env) -> None:  # type: ignore[no-untyped-def]
    mnt, _key, cert, tmp, good, bad = env
    if LD_SO is None:
        pytest.skip("no known dynamic loader path on this machine")
    with enforcer(mnt, cert, tmp) as d:
        assert run([LD_SO, str(good)]).returncode == 0
        r = run([LD_SO, str(bad)])
        assert r.returncode != 0
        assert "Operation not permitted" in r.stderr
        assert any(x["reason"] == "loader-exec" and not x["allowed"] for x in d.decisions())


@pytest.mark.parametrize(
    ("interp", "suffix", "body"),
    [("/bin/sh", "sh", "echo RAN\n"), ("/usr/bin/python3", "py", "print('RAN')\n")],
)
def test_interpreter_script_is_refused(env, interp, suffix, body) -> None:  # type: ignore[no-untyped-def]
    mnt, key, cert, tmp, _good, _bad = env
    if not Path(interp).exists():
        pytest.skip(f"{interp} is not installed")
    signed = mnt / f"signed.{suffix}"
    signed.write_text(body)
    sign(signed, key)
    unsigned = mnt / f"unsigned.{suffix}"
    unsigned.write_text(body)
    with enforcer(mnt, cert, tmp, *_interp_args()) as d:
        ok = run([interp, str(signed)])
        assert ok.returncode == 0, ok.stderr
        assert "RAN" in ok.stdout
        r = run([interp, str(unsigned)])
        assert r.returncode != 0
        assert "RAN" not in r.stdout
        assert "ermission denied" in r.stderr or "not permitted" in r.stderr, r.stderr
        assert any(x["reason"] == "interpreter-script" and not x["allowed"] for x in d.decisions())


def test_in_place_edit_with_mtime_restored_is_refused(env) -> None:  # type: ignore[no-untyped-def]
    mnt, _key, cert, tmp, good, _bad = env
    with enforcer(mnt, cert, tmp):
        for _ in range(3):
            assert exec_result([str(good)]).returncode == 0  # cached, ignore mark set
        st = os.stat(good)
        with open(good, "r+b") as f:  # same size, same inode
            f.seek(st.st_size - 64)
            f.write(b"\0" * 8)
        os.utime(good, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(good).st_mtime_ns == st.st_mtime_ns
        assert refused_eperm(exec_result([str(good)]))


def test_unshare_urm_then_exec_is_refused(env) -> None:  # type: ignore[no-untyped-def]
    mnt, _key, cert, tmp, good, bad = env
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    os.chmod(mnt, 0o755)  # noqa: S103 - a program must be executable
    with enforcer(mnt, cert, tmp):
        r = run(["unshare", "-Urm", str(bad)])
        assert r.returncode != 0
        assert "Permission denied" in r.stderr or "not permitted" in r.stderr, r.stderr
        r2 = run(["unshare", "-Urm", str(good)])
        assert r2.returncode == 0, r2.stderr


def test_bind_mount_then_exec_is_refused(env) -> None:  # type: ignore[no-untyped-def]
    mnt, _key, cert, tmp, _good, _bad = env
    other = tmp / "bind"
    other.mkdir()
    assert run(["mount", "--bind", str(mnt), str(other)]).returncode == 0
    try:
        with enforcer(mnt, cert, tmp):
            assert refused_eperm(exec_result([str(other / "bad")]))
    finally:
        run(["umount", "-l", str(other)])


def test_rename_over_signed_is_refused(env) -> None:  # type: ignore[no-untyped-def]
    mnt, _key, cert, tmp, good, bad = env
    with enforcer(mnt, cert, tmp):
        assert exec_result([str(good)]).returncode == 0
        os.rename(bad, good)
        assert refused_eperm(exec_result([str(good)]))


def test_hard_link_swap_is_refused(env) -> None:  # type: ignore[no-untyped-def]
    mnt, _key, cert, tmp, good, bad = env
    with enforcer(mnt, cert, tmp):
        assert exec_result([str(good)]).returncode == 0
        os.unlink(good)
        os.link(bad, good)
        assert refused_eperm(exec_result([str(good)]))
        assert os.stat(good).st_nlink == 2


def _build_so(where: Path, name: str) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed (make test installs it)")
    src = where.parent / f"{name}.c"
    src.write_text(
        "#include <stdio.h>\n__attribute__((constructor)) static void hi(void)"
        '{ fprintf(stderr, "PRELOADED\\n"); }\n'
    )
    out = where / f"{name}.so"
    r = run([gcc, "-shared", "-fPIC", "-o", str(out), str(src)])
    assert r.returncode == 0, r.stderr
    return out


def test_ld_preload_of_unsigned_library_is_refused(env) -> None:  # type: ignore[no-untyped-def]
    mnt, key, cert, tmp, good, _bad = env
    lib_ok = _build_so(mnt, "signed")
    sign(lib_ok, key)
    lib_bad = _build_so(mnt, "unsigned")
    with enforcer(mnt, cert, tmp) as d:
        ok = run([str(good)], env={"LD_PRELOAD": str(lib_ok)})
        assert ok.returncode == 0, ok.stderr
        assert "PRELOADED" in ok.stderr
        r = run([str(good)], env={"LD_PRELOAD": str(lib_bad)})
        # ld.so cannot open the library: it says so and starts the program without it.
        assert "PRELOADED" not in r.stderr
        assert "cannot be preloaded" in r.stderr or "cannot open shared object" in r.stderr
        assert any(
            x["reason"] == "shared-object" and not x["allowed"] and x["path"] == str(lib_bad)
            for x in d.decisions()
        )


def test_memfd_exec_of_unsigned_bytes_runs_known_gap(env) -> None:  # type: ignore[no-untyped-def]
    mnt, _key, cert, tmp, _good, bad = env
    code = (
        "import os, sys\n"
        "fd = os.memfd_create('x', 0)\n"
        "os.write(fd, open(sys.argv[1], 'rb').read())\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.execve(fd, ['x'], {})\n"
        "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
    )
    bad_copy = tmp / "bad-bytes"  # read from an unmarked fs: the gap is the exec itself
    shutil.copy(bad, bad_copy)
    with enforcer(mnt, cert, tmp):
        r = run([sys.executable, "-c", code, str(bad_copy)])
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "0"  # the unsigned bytes ran: a documented gap


def test_cached_exec_raises_no_event_until_modified(env) -> None:  # type: ignore[no-untyped-def]
    mnt, _key, cert, tmp, good, _bad = env
    with enforcer(mnt, cert, tmp) as d:
        assert exec_result([str(good)]).returncode == 0
        before = d.stats()
        assert before["ignore_marks"] >= 1
        for _ in range(50):
            assert run([str(good)]).returncode == 0
        after = d.stats()
        assert after["events"] == before["events"]
        with open(good, "ab") as f:
            f.write(b"\0")
        r = exec_result([str(good)])
        assert refused_eperm(r)  # appended to: the signature no longer matches
        assert d.stats()["events"] > after["events"]


def test_queue_overflow_denies(env) -> None:  # type: ignore[no-untyped-def]
    mnt, _key, cert, tmp, good, _bad = env
    args = ["--queue-limit", "1", "--workers", "1", "--slow", "0.5"]
    with enforcer(mnt, cert, tmp, *args) as d:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", EXEC_SNIPPET, str(good)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(6)
        ]
        outs = [p.communicate(timeout=60)[0] for p in procs]
        st = d.stats()
    assert st["overflow_denied"] >= 1, (st, outs)
    assert sum(o.strip() == "ERRNO 1" for o in outs) >= st["overflow_denied"] >= 1


def test_policy_with_nothing_applying_allows_not_required(env) -> None:  # type: ignore[no-untyped-def]
    mnt, _key, cert, tmp, _good, bad = env
    policy = "appraise func=BPRM_CHECK fsmagic=0x12345678 appraise_type=imasig\n"
    with enforcer(mnt, cert, tmp, policy=policy) as d:
        assert exec_result([str(bad)]).returncode == 0
        rows = [x for x in d.decisions() if x["path"] == str(bad) and x["hook"] == "BPRM_CHECK"]
        assert rows
        assert rows[0]["allowed"]
        assert rows[0]["appraise"] == "not-required"


def test_permissive_allows_and_reports(env) -> None:  # type: ignore[no-untyped-def]
    mnt, _key, cert, tmp, _good, bad = env
    with enforcer(mnt, cert, tmp, "--permissive") as d:
        assert exec_result([str(bad)]).returncode == 0
        rows = [x for x in d.decisions() if x["path"] == str(bad) and x["hook"] == "BPRM_CHECK"]
        assert rows
        assert rows[0]["allowed"]
        assert rows[0]["override"]
        assert d.stats()["ignore_marks"] == 0


_MMAP_WRITE = (
    "import mmap, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR)\n"
    "m = mmap.mmap(fd, 0)\n"
    "m[-64:-56] = b'\\0' * 8\n"
    "m.flush()\n"
    "m.close()\n"
    "os.close(fd)\n"
)


def test_shared_mmap_write_with_exec_only_marks_is_refused(env) -> None:  # type: ignore[no-untyped-def]
    """open_marks=False: the writer's open reaches the daemon and drops the exec mark."""
    mnt, _key, cert, tmp, good, _bad = env
    with enforcer(mnt, cert, tmp, "--no-open-marks") as d:
        assert exec_result([str(good)]).returncode == 0
        assert d.stats()["ignore_marks"] >= 1
        assert run([sys.executable, "-c", _MMAP_WRITE, str(good)]).returncode == 0
        assert refused_eperm(exec_result([str(good)]))


def test_shared_mmap_write_by_an_unprivileged_owner_is_refused(env) -> None:  # type: ignore[no-untyped-def]
    """open_marks="root-owned" (default): a file its unprivileged owner can write gets an
    exec-only mark, so the owner's write open reaches the daemon and drops it before the
    shared-mmap write; the changed program is refused."""
    mnt, _key, cert, tmp, good, _bad = env
    os.chown(good, 65534, 65534)
    os.chmod(good, 0o755)  # noqa: S103 - a program must be executable
    with enforcer(mnt, cert, tmp) as d:
        assert exec_result([str(good)]).returncode == 0
        events = d.stats()["events"]
        assert exec_result([str(good)]).returncode == 0
        assert d.stats()["events"] > events  # the exec's own open still reaches the daemon
        # cwd is entered before the uid changes: the pytest tmp dir above is root-only
        r = run(
            ["/usr/bin/python3", "-c", _MMAP_WRITE, good.name],
            user=65534,
            group=65534,
            extra_groups=[],
            cwd=good.parent,
        )
        assert r.returncode == 0, r.stderr
        assert refused_eperm(exec_result([str(good)]))


def test_root_owned_files_are_cached_whole_in_the_kernel(env) -> None:  # type: ignore[no-untyped-def]
    """open_marks="root-owned" (default): a root-owned program no one else can write gets the
    open mark too, so a cached exec raises no event at all."""
    mnt, _key, cert, tmp, good, _bad = env
    assert os.stat(good).st_uid == 0
    with enforcer(mnt, cert, tmp) as d:
        assert exec_result([str(good)]).returncode == 0
        events = d.stats()["events"]
        for _ in range(5):
            assert exec_result([str(good)]).returncode == 0
        assert d.stats()["events"] == events
        os.chmod(good, 0o775)  # noqa: S103 - now the group may write: the next mark is exec-only
        d.flush()
        assert exec_result([str(good)]).returncode == 0
        events = d.stats()["events"]
        assert exec_result([str(good)]).returncode == 0
        assert d.stats()["events"] > events


def test_shared_mmap_write_under_open_marks_is_the_documented_gap(env) -> None:  # type: ignore[no-untyped-def]
    """open_marks=True: a write open of a cached file is ignored by the kernel and a
    shared-mmap write raises no modify event, so the stale mark stands until flushed."""
    mnt, _key, cert, tmp, good, _bad = env
    with enforcer(mnt, cert, tmp, "--all-open-marks") as d:
        assert exec_result([str(good)]).returncode == 0
        events = d.stats()["events"]
        assert run([sys.executable, "-c", _MMAP_WRITE, str(good)]).returncode == 0
        assert d.stats()["events"] == events  # the daemon saw nothing
        assert exec_result([str(good)]).returncode == 0  # the gap: modified bytes ran
        d.flush()  # a flush (reload) drops the mark; the change cookie catches the edit
        assert refused_eperm(exec_result([str(good)]))


def test_no_ignore_mark_while_a_writer_holds_the_file(env) -> None:  # type: ignore[no-untyped-def]
    mnt, key, cert, tmp, _good, _bad = env
    lib = mnt / "lib.so"
    shutil.copy2("/bin/true", lib)  # an ET_DYN object: read-only opens are MMAP_CHECK
    sign(lib, key)
    hold = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os,sys; fd=os.open(sys.argv[1], os.O_RDWR); "
            "print('open', flush=True); sys.stdin.read()",
            str(lib),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    # no measure rule: a verified read-only open could otherwise be cached for every hook
    policy = "".join(x + "\n" for x in POLICY.splitlines() if not x.startswith("measure"))
    try:
        with enforcer(mnt, cert, tmp, policy=policy) as d:
            assert hold.stdout is not None
            # the writer opened before the mark: the daemon cannot have seen that open
            assert hold.stdout.readline().strip() == "open"
            before = d.stats()
            assert run(["dd", f"if={lib}", "of=/dev/null", "status=none"]).returncode == 0
            after = d.stats()
            assert after["allowed"] > before["allowed"]
            assert after["ignore_marks"] == before["ignore_marks"]
            rows = [x for x in d.decisions() if x["path"] == str(lib)]
            assert rows[-1]["hook"] == "MMAP_CHECK"
            assert hold.stdin is not None
            hold.stdin.close()  # the writer goes away: now the read may be cached
            assert hold.wait(10) == 0
            assert run(["dd", f"if={lib}", "of=/dev/null", "status=none"]).returncode == 0
            assert d.stats()["ignore_marks"] == after["ignore_marks"] + 1
    finally:
        assert hold.stdin is not None
        if not hold.stdin.closed:
            hold.stdin.close()
        hold.wait(10)
        if hold.stdout is not None:
            hold.stdout.close()


def test_marking_a_missing_path_names_it(fanotify_ok: None, tmp_path: Path) -> None:
    from imaguard.enforce import FanotifyGroup
    from imaguard.errors import BackendError

    missing = tmp_path / "not-there"
    with FanotifyGroup.create() as group, pytest.raises(BackendError, match="not-there"):
        group.mark_filesystem(str(missing))


def test_creating_a_group_without_privilege_says_so(fanotify_ok: None) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv(1) is not installed")
    code = (
        "from imaguard.enforce import FanotifyGroup\n"
        "from imaguard.errors import BackendError\n"
        "try:\n"
        "    FanotifyGroup.create()\n"
        "except BackendError as e:\n"
        "    print(e)\n"
    )
    r = run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        env=child_env(),
        cwd="/",
    )
    assert "CAP_SYS_ADMIN" in r.stdout, r.stderr
