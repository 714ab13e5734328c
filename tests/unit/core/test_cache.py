"""The integrity cache: hits, per-hook slots, invalidation, cache=no, the direct-call cache."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

import imaguard
from helpers.core import EVIL, IMA, edit_in_place_keep_mtime, write_policy
from imaguard.appraise import _calls as calls_mod
from imaguard.appraise import _files as files_mod
from imaguard.core import Guard
from imaguard.core import _guard as guard_mod
from imaguard.policy import PolicySet, parse_policy

EXEC_SIG = "appraise func=BPRM_CHECK appraise_type=imasig\n"
V2_EXTRA = "measure func=KEXEC_KERNEL_CHECK\n"  # a real change (comments do not count)


@pytest.fixture
def count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every content hash the Guard and the direct calls compute, by file name."""
    seen: list[str] = []
    real_guard = real_calls = files_mod.hash_fd  # both modules import it from _files

    def counting(real: Callable[..., object]) -> Callable[..., object]:
        def wrapper(ref: object, algo: object) -> object:
            seen.append(getattr(ref, "name", "?"))
            return real(ref, algo)

        return wrapper

    monkeypatch.setattr(guard_mod, "hash_fd", counting(real_guard))
    monkeypatch.setattr(calls_mod, "hash_fd", counting(real_calls))
    return seen


def _guard(tmp_path: Path, text: str, rsa_dir: Path, **kw: object) -> Guard:
    pol = write_policy(tmp_path, "p", text)
    return Guard.from_files({"p": pol}, [rsa_dir / "cert.der"], **kw)  # type: ignore[arg-type]


def test_second_decision_for_the_same_file_and_hook_is_cached(
    tmp_path: Path, signed: Path, rsa_dir: Path, count_hashes: list[str]
) -> None:
    with _guard(tmp_path, EXEC_SIG, rsa_dir) as guard:
        first = guard.process(signed, hook="BPRM_CHECK")
        hashed = len(count_hashes)
        second = guard.process(signed, hook="BPRM_CHECK")
        third = guard.process(signed, hook="BPRM_CHECK")
    assert hashed == 1
    assert len(count_hashes) == 1  # no re-hash on a hit
    assert first.cached is False
    assert (second.cached, third.cached) == (True, True)
    for d in (first, second, third):
        assert d.allowed is True
        assert d.actions["appraise"].outcome == "passed"
    assert first.verdict is not None
    assert second.verdict is not None
    assert second.verdict.key_id == first.verdict.key_id


def test_a_cached_failure_stays_a_failure(
    tmp_path: Path, make_file: Callable[..., Path], rsa_dir: Path
) -> None:
    prog = make_file()
    with _guard(tmp_path, EXEC_SIG, rsa_dir) as guard:
        guard.process(prog, hook="BPRM_CHECK")
        d = guard.process(prog, hook="BPRM_CHECK")
    assert d.cached is True
    assert d.allowed is False
    assert d.actions["appraise"].cause == "IMA-signature-required"


def test_rules_with_func_have_per_hook_slots(tmp_path: Path, signed: Path, rsa_dir: Path) -> None:
    text = "appraise func=BPRM_CHECK appraise_type=imasig\nappraise func=FILE_CHECK\n"
    with _guard(tmp_path, text, rsa_dir) as guard:
        bprm1 = guard.process(signed, hook="BPRM_CHECK")
        file1 = guard.process(signed, hook="FILE_CHECK", mask="MAY_READ")
        bprm2 = guard.process(signed, hook="BPRM_CHECK")
        file2 = guard.process(signed, hook="FILE_CHECK", mask="MAY_READ")
        mmap1 = guard.process(signed, hook="MMAP_CHECK")  # no rule: nothing cached or needed
    assert (bprm1.cached, file1.cached) == (False, False)  # separate slots
    assert (bprm2.cached, file2.cached) == (True, True)
    assert (bprm1.actions["appraise"].line, file1.actions["appraise"].line) == (1, 2)
    assert mmap1.actions["appraise"].required is False
    assert mmap1.cached is False


def test_a_rule_without_func_shares_the_file_slot(
    tmp_path: Path, signed: Path, rsa_dir: Path
) -> None:
    with _guard(tmp_path, "appraise appraise_type=imasig\n", rsa_dir) as guard:
        bprm = guard.process(signed, hook="BPRM_CHECK")
        file = guard.process(signed, hook="FILE_CHECK", mask="MAY_READ")
        mmap = guard.process(signed, hook="MMAP_CHECK")
    assert bprm.cached is False
    assert (file.cached, mmap.cached) == (True, True)
    assert all(d.allowed for d in (bprm, file, mmap))


def test_content_write_with_mtime_restored_invalidates(
    tmp_path: Path, signed: Path, rsa_dir: Path
) -> None:
    with _guard(tmp_path, EXEC_SIG, rsa_dir) as guard:
        guard.process(signed, hook="BPRM_CHECK")
        assert guard.process(signed, hook="BPRM_CHECK").cached is True
        edit_in_place_keep_mtime(signed, EVIL)
        d = guard.process(signed, hook="BPRM_CHECK")
    assert d.cached is False
    assert d.allowed is False
    assert d.actions["appraise"].cause == "invalid-signature"


def test_xattr_change_invalidates(
    tmp_path: Path,
    signed: Path,
    ec_key: imaguard.PrivateKey,
    rsa_key: imaguard.PrivateKey,
    rsa_dir: Path,
    ec_dir: Path,
) -> None:
    pol = write_policy(tmp_path, "p", EXEC_SIG)
    with Guard.from_files({"p": pol}, [rsa_dir / "cert.der", ec_dir / "cert.der"]) as guard:
        first = guard.process(signed, hook="BPRM_CHECK")
        assert guard.process(signed, hook="BPRM_CHECK").cached is True
        imaguard.sign_file(signed, ec_key)  # re-signed with another (trusted) key
        d = guard.process(signed, hook="BPRM_CHECK")
        assert d.cached is False
        assert d.allowed is True
        assert first.verdict is not None
        assert d.verdict is not None
        assert (first.verdict.key_id, d.verdict.key_id) == (rsa_key.key_id, ec_key.key_id)
        # A value that no longer verifies: a signature over other content.
        os.setxattr(signed, IMA, imaguard.sign_bytes(b"other", rsa_key).serialize())
        bad = guard.process(signed, hook="BPRM_CHECK")
    assert bad.cached is False
    assert bad.allowed is False
    assert bad.actions["appraise"].cause == "invalid-signature"


def test_keyring_change_and_reload_invalidates(
    signed: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    pset = PolicySet()
    pset.add("p", parse_policy(EXEC_SIG))
    with Guard(pset, rsa_ring) as guard:
        guard.process(signed, hook="BPRM_CHECK")
        assert guard.process(signed, hook="BPRM_CHECK").cached is True
        guard.keyring = rsa_ring.revoke(rsa_key.key_id)
        guard.reload()
        d = guard.process(signed, hook="BPRM_CHECK")
    assert d.cached is False
    assert d.allowed is False
    assert d.actions["appraise"].cause == "invalid-signature"


def test_policy_change_and_reload_invalidates(
    make_file: Callable[..., Path], rsa_ring: imaguard.Keyring
) -> None:
    prog = make_file()
    imaguard.store_digest(prog, "sha256")
    pset = PolicySet()
    pset.add("p", parse_policy("appraise func=BPRM_CHECK\n"))
    with Guard(pset, rsa_ring) as guard:
        assert guard.process(prog, hook="BPRM_CHECK").allowed is True
        assert guard.process(prog, hook="BPRM_CHECK").cached is True
        pset.replace("p", parse_policy("appraise func=BPRM_CHECK fowner=0\n"))
        assert pset.version("p") == 2
        guard.reload()
        same_rule = guard.process(prog, hook="BPRM_CHECK")
        assert same_rule.cached is False  # a new policy version drops every cached result
        assert same_rule.allowed is True
        pset.replace("p", parse_policy(EXEC_SIG))
        guard.reload()
        d = guard.process(prog, hook="BPRM_CHECK")
    assert d.cached is False
    assert d.allowed is False
    assert d.actions["appraise"].cause == "IMA-signature-required"


def test_cache_no_rules_are_never_cached(
    tmp_path: Path, signed: Path, rsa_dir: Path, count_hashes: list[str]
) -> None:
    text = "appraise func=PLUGIN_CHECK appraise_type=imasig cache=no\n"
    with _guard(tmp_path, text, rsa_dir, policy_mode="imaguard") as guard:
        results = [guard.process(signed, hook="PLUGIN_CHECK") for _ in range(3)]
    assert [d.cached for d in results] == [False, False, False]
    assert all(d.allowed for d in results)
    assert len(count_hashes) == 3  # re-verified at every use


def test_cache_no_in_one_policy_wins_over_a_cached_rule_in_another(
    tmp_path: Path, signed: Path, rsa_dir: Path
) -> None:
    a = write_policy(tmp_path, "a", "appraise func=PLUGIN_CHECK\n")
    b = write_policy(tmp_path, "b", "appraise func=PLUGIN_CHECK cache=no\n")
    with Guard.from_files(
        {"a": a, "b": b}, [rsa_dir / "cert.der"], policy_mode="imaguard"
    ) as guard:
        results = [guard.process(signed, hook="PLUGIN_CHECK") for _ in range(2)]
    assert [d.cached for d in results] == [False, False]


# -- the direct call ---------------------------------------------------------------------------


def test_direct_appraise_does_not_cache_unless_asked(
    signed: Path, rsa_ring: imaguard.Keyring, count_hashes: list[str]
) -> None:
    for _ in range(3):
        assert imaguard.appraise(signed, rsa_ring).passed
    assert len(count_hashes) == 3


def test_direct_appraise_with_a_callers_cache_caches_and_rechecks_a_changed_file(
    signed: Path, rsa_ring: imaguard.Keyring, count_hashes: list[str]
) -> None:
    cache = imaguard.VerdictCache()
    first = imaguard.appraise(signed, rsa_ring, cache=cache)
    second = imaguard.appraise(signed, rsa_ring, cache=cache)
    assert first.passed
    assert second.passed
    assert len(count_hashes) == 1
    assert cache.hits == 1

    edit_in_place_keep_mtime(signed, EVIL)
    changed = imaguard.appraise(signed, rsa_ring, cache=cache)
    assert changed.passed is False
    assert changed.cause == "invalid-signature"
    assert len(count_hashes) == 2


# -- persistence -------------------------------------------------------------------------------


def test_persisted_cache_is_0600_and_shared_between_guards(
    tmp_path: Path, signed: Path, rsa_dir: Path
) -> None:
    state = tmp_path / "state"
    with _guard(tmp_path, EXEC_SIG, rsa_dir, state=state) as guard:
        assert guard.process(signed, hook="BPRM_CHECK").cached is False
    path = state / "cache.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with _guard(tmp_path, EXEC_SIG, rsa_dir, state=state) as guard:
        assert guard.process(signed, hook="BPRM_CHECK").cached is True


def test_cache_from_another_epoch_is_ignored(
    tmp_path: Path, signed: Path, rsa_dir: Path, ec_dir: Path
) -> None:
    state = tmp_path / "state"
    with _guard(tmp_path, EXEC_SIG, rsa_dir, state=state) as guard:
        guard.process(signed, hook="BPRM_CHECK")
    # A comment is not a policy change: same epoch.
    with _guard(tmp_path, "# a comment\n" + EXEC_SIG, rsa_dir, state=state) as guard:
        assert guard.process(signed, hook="BPRM_CHECK").cached is True
    # Another policy: another epoch.
    with _guard(tmp_path, EXEC_SIG + V2_EXTRA, rsa_dir, state=state) as guard:
        assert guard.process(signed, hook="BPRM_CHECK").cached is False
    # Another keyring: another epoch.
    pol = write_policy(tmp_path, "p", EXEC_SIG + V2_EXTRA)
    with Guard.from_files(
        {"p": pol}, [rsa_dir / "cert.der", ec_dir / "cert.der"], state=state
    ) as guard:
        assert guard.process(signed, hook="BPRM_CHECK").cached is False
    # The same Guard again: now it is a hit ...
    with Guard.from_files(
        {"p": pol}, [rsa_dir / "cert.der", ec_dir / "cert.der"], state=state
    ) as guard:
        assert guard.process(signed, hook="BPRM_CHECK").cached is True
    # ... unless the file's epoch was altered.
    doc = json.loads((state / "cache.json").read_text())
    doc["epoch"] = "0" * 32
    (state / "cache.json").write_text(json.dumps(doc))
    with Guard.from_files(
        {"p": pol}, [rsa_dir / "cert.der", ec_dir / "cert.der"], state=state
    ) as guard:
        assert guard.process(signed, hook="BPRM_CHECK").cached is False


def test_a_damaged_cache_file_is_only_a_slower_start(
    tmp_path: Path, signed: Path, rsa_dir: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "cache.json").write_text("{ not json")
    with _guard(tmp_path, EXEC_SIG, rsa_dir, state=state) as guard:
        d = guard.process(signed, hook="BPRM_CHECK")
    assert (d.allowed, d.cached) == (True, False)


def test_sidecar_signature_change_invalidates(
    tmp_path: Path,
    make_file: Callable[..., Path],
    rsa_key: imaguard.PrivateKey,
    rsa_dir: Path,
) -> None:
    # With the sigfile store the value lives in PATH.sig: replacing or deleting it does not
    # touch the file's inode (no ctime change), so the file's change cookie alone cannot see
    # it. The direct-call cache keys on the value for this reason (appraise/cache.py); the
    # Guard's cache must not keep a verdict for a value that is gone.
    prog = make_file()
    imaguard.sign_file(prog, rsa_key, store="sigfile")
    sig = Path(f"{prog}.sig")
    with _guard(tmp_path, EXEC_SIG, rsa_dir, store="sigfile") as guard:
        assert guard.process(prog, hook="BPRM_CHECK").allowed is True
        assert guard.process(prog, hook="BPRM_CHECK").cached is True
        sig.write_bytes(imaguard.sign_bytes(b"other content", rsa_key).serialize())
        replaced = guard.process(prog, hook="BPRM_CHECK")
        sig.unlink()
        removed = guard.process(prog, hook="BPRM_CHECK")
    assert imaguard.appraise(prog, rsa_dir / "cert.der", store="sigfile").passed is False
    assert (replaced.allowed, replaced.actions["appraise"].cause) == (False, "invalid-signature")
    assert (removed.allowed, removed.actions["appraise"].cause) == (
        False,
        "IMA-signature-required",
    )
