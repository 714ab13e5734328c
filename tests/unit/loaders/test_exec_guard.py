"""``prepare_exec(guard=...)``: a policy run for the hook on each verified copy; exec_verified."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import imaguard
from imaguard.appraise import MemoryStore, SignatureStore
from imaguard.core import Guard
from imaguard.core._audit import MemoryAudit
from imaguard.errors import UsageError
from imaguard.loaders import ExecRefused, prepare_exec

ECHO = shutil.which("echo") or "/bin/echo"
MakeGuard = Callable[..., Guard]


@pytest.fixture
def echo(tmp_path: Path, ec_key: imaguard.PrivateKey) -> Path:
    """A signed copy of /bin/echo (dynamic: prepared with verify_loader=False)."""
    p = tmp_path / "echo"
    shutil.copyfile(ECHO, p)
    p.chmod(0o755)
    imaguard.sign_file(p, ec_key, "sha256")
    return p


@pytest.fixture
def make_guard(tmp_path: Path, keys_dir: dict[str, Path]) -> Iterator[MakeGuard]:
    guards: list[Guard] = []

    def make(text: str, store: SignatureStore | str | None = None) -> Guard:
        pol = tmp_path / f"p{len(guards)}.policy"
        pol.write_text(text)
        g = Guard.from_files(
            {"exec": pol},
            [keys_dir["ecdsa-p256"]],
            store=MemoryStore() if store is None else store,
            audit=MemoryAudit(),
        )
        guards.append(g)
        return g

    yield make
    for g in guards:
        g.close()


def _audits(g: Guard) -> list[dict[str, object]]:
    assert isinstance(g.audit, MemoryAudit)
    return [r for r in g.audit.records if r["action"] == "audit"]


def test_guard_audits_the_verified_copy(
    echo: Path, ec_ring: imaguard.Keyring, make_guard: MakeGuard
) -> None:
    g = make_guard("audit func=BPRM_CHECK\nappraise func=BPRM_CHECK appraise_type=imasig\n")
    with prepare_exec([str(echo)], ec_ring, guard=g, verify_loader=False) as prepared:
        assert len(prepared.decisions) == 1
        assert prepared.decisions[0].allowed
        assert prepared.failures == []
    records = _audits(g)
    assert len(records) == 1
    assert records[0]["file"] == str(echo)
    assert records[0]["hook"] == "BPRM_CHECK"
    assert records[0]["hash"] == "sha256:" + hashlib.sha256(echo.read_bytes()).hexdigest()


def test_guard_hook_selects_the_rules(
    echo: Path, ec_ring: imaguard.Keyring, make_guard: MakeGuard
) -> None:
    g = make_guard("audit func=FILE_CHECK\n")
    with prepare_exec([str(echo)], ec_ring, guard=g, verify_loader=False):
        pass
    assert _audits(g) == []
    with prepare_exec([str(echo)], ec_ring, guard=g, hook="FILE_CHECK", verify_loader=False):
        pass
    assert [r["hook"] for r in _audits(g)] == ["FILE_CHECK"]


STRICT = "appraise func=BPRM_CHECK appraise_type=imasig appraise_algos=sha512\n"


def test_guard_refusal(echo: Path, ec_ring: imaguard.Keyring, make_guard: MakeGuard) -> None:
    g = make_guard(STRICT)
    with pytest.raises(ExecRefused) as e:
        prepare_exec([str(echo)], ec_ring, guard=g, verify_loader=False)
    assert str(e.value) == f"{echo}: BPRM_CHECK: refused by the policy"
    # In log mode the refusal is reported and the program prepared anyway.
    with prepare_exec([str(echo)], ec_ring, guard=g, mode="log", verify_loader=False) as p:
        assert p.failures == [f"{echo}: BPRM_CHECK: refused by the policy"]
        assert not p.decisions[0].allowed
        assert p.exec_fd >= 0


def test_guard_with_an_unsigned_program_in_log_mode(
    tmp_path: Path, ec_ring: imaguard.Keyring, make_guard: MakeGuard
) -> None:
    p = tmp_path / "echo"
    shutil.copyfile(ECHO, p)
    g = make_guard("audit func=BPRM_CHECK\n")
    with prepare_exec([str(p)], ec_ring, guard=g, mode="log", verify_loader=False) as prepared:
        assert prepared.failures[0].startswith(f"{p}: no-xattr")
        assert prepared.decisions[0].allowed
    assert [r["file"] for r in _audits(g)] == [str(p)]


def test_guard_must_use_a_memory_store(
    echo: Path, ec_ring: imaguard.Keyring, make_guard: MakeGuard
) -> None:
    g = make_guard("audit func=BPRM_CHECK\n", store="xattr")
    with pytest.raises(UsageError, match=r"MemoryStore"):
        prepare_exec([str(echo)], ec_ring, guard=g, verify_loader=False)


def test_exec_verified_replaces_the_process(echo: Path, keys_dir: dict[str, Path]) -> None:
    """Run in a child python: exec_verified never returns."""
    code = (
        "import sys\n"
        "from imaguard.loaders import exec_verified\n"
        "exec_verified([sys.argv[1], 'from', 'exec_verified'], sys.argv[2],"
        " env={'X': '1'}, verify_loader=False)\n"
        "print('NOT REPLACED')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(echo), str(keys_dir["ecdsa-p256"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (r.returncode, r.stdout) == (0, "from exec_verified\n"), r.stderr
