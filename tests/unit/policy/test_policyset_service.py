"""What the policy service needs of a PolicySet: owners in the provenance, reinstate,
snapshot/restore, policies added and updated from signed text, and evaluation that stays
consistent while another thread changes the set."""

from __future__ import annotations

import sys
import threading
import time

import pytest

import imaguard
from helpers.policy import req
from imaguard.errors import PolicyError, PolicyLockedError
from imaguard.policy import Lock, Policy, PolicySet, Provenance, parse_policy
from imaguard.policy._policyset import combine

BPRM = req("BPRM_CHECK", "MAY_EXEC", uid=0, fowner=0, fsmagic=0xEF53)
FILE_READ = req("FILE_CHECK", "MAY_READ", uid=0, fowner=0, fsmagic=0xEF53)


def pol(text: str, source: str = "<policy>") -> Policy:
    return parse_policy(text, mode="imaguard", source=source)


def owned() -> PolicySet:
    s = PolicySet()
    s.add("plugins", pol("appraise func=BPRM_CHECK appraise_type=imasig\n"), owner="plugins")
    s.add("ops", pol("measure func=BPRM_CHECK\n"), owner="ops")
    s.add("anon", pol("audit func=BPRM_CHECK\n"))
    return s


# --------------------------------------------------------------------------------------
# Owners
# --------------------------------------------------------------------------------------


def test_owner() -> None:
    s = owned()
    assert [s.owner(n) for n in s.names()] == ["plugins", "ops", None]
    with pytest.raises(PolicyError):
        s.owner("ghost")


def test_provenance_carries_the_owner() -> None:
    d = owned().evaluate(BPRM)
    assert {(p.policy, p.action, p.owner) for p in d.provenance} == {
        ("plugins", "appraise", "plugins"),
        ("ops", "measure", "ops"),
        ("anon", "audit", None),
    }


def test_to_dict_has_owner_only_when_set() -> None:
    with_owner = Provenance("appraise", "p", 3, "appraise", "plugins")
    without = Provenance("appraise", "p", 3, "appraise")
    assert with_owner.to_dict() == {
        "action": "appraise",
        "policy": "p",
        "line": 3,
        "rule": "appraise",
        "owner": "plugins",
    }
    assert without.to_dict() == {"action": "appraise", "policy": "p", "line": 3, "rule": "appraise"}
    doc = owned().evaluate(BPRM).to_json()
    by_policy = {p["policy"]: p for p in doc["provenance"]}
    assert by_policy["plugins"]["owner"] == "plugins"
    assert "owner" not in by_policy["anon"]


def test_combine_names_owners_only_when_given() -> None:
    d = owned().evaluate(BPRM)
    decisions = [(n, pd, False) for n, pd in d.per_policy]
    assert {p.owner for p in combine(decisions).provenance} == {None}
    named = combine(decisions, {"plugins": "p-owner", "ops": None})
    assert {(p.policy, p.owner) for p in named.provenance} == {
        ("plugins", "p-owner"),
        ("ops", None),
        ("anon", None),
    }


def test_a_conflict_names_the_owners_of_both_rules() -> None:
    s = PolicySet()
    s.add("v", pol("appraise func=BPRM_CHECK digest_type=verity appraise_type=sigv3\n"), owner="a")
    s.add("i", pol("appraise func=BPRM_CHECK appraise_type=imasig\n"), owner="b")
    conflict = s.evaluate(BPRM).conflict
    assert conflict is not None
    assert [(r.policy, r.owner) for r in conflict.rules] == [("v", "a"), ("i", "b")]
    assert [r["owner"] for r in conflict.to_dict()["rules"]] == ["a", "b"]


# --------------------------------------------------------------------------------------
# reinstate, snapshot / restore
# --------------------------------------------------------------------------------------


def test_reinstate_replaces_in_place_keeping_the_order() -> None:
    s = owned()
    s.replace("ops", pol("measure func=BPRM_CHECK\n"), version=7)
    s.reinstate(
        "ops", pol("measure func=FILE_CHECK\n"), version=2, lock=Lock.SEALED, owner="someone"
    )
    assert s.names() == ["plugins", "ops", "anon"]
    assert s.version("ops") == 2  # no version check: the caller checked
    assert s.lock("ops") is Lock.SEALED
    assert s.owner("ops") == "someone"
    assert [r.canonical() for r in s.policy("ops").rules] == ["measure func=FILE_CHECK"]
    assert s.evaluate(FILE_READ).measure is True
    assert s.evaluate(BPRM).measure is False
    # no lock check either: a sealed policy is put back open (a lapsed seal)
    s.reinstate("ops", pol("measure\n"), version=3, lock="open", owner=None)
    assert (s.lock("ops"), s.owner("ops")) == (Lock.OPEN, None)
    s.reinstate("new", pol("measure\n"), version=1, lock="append-only", owner="x")
    assert s.names() == ["plugins", "ops", "anon", "new"]
    assert s.lock("new") is Lock.APPEND_ONLY


def test_reinstate_keeps_fail_securely() -> None:
    s = PolicySet()
    s.add("fs", pol("appraise func=BPRM_CHECK\n"), fail_securely=True)
    assert s.evaluate(BPRM).fail_unverifiable_sigs is True
    s.reinstate("fs", pol("appraise func=BPRM_CHECK\n"), version=2, lock="open", owner=None)
    assert s.evaluate(BPRM).fail_unverifiable_sigs is True


@pytest.mark.parametrize("name", ["", "two words", "a=b"])
def test_reinstate_refuses_a_bad_name(name: str) -> None:
    with pytest.raises(PolicyError):
        PolicySet().reinstate(name, pol("measure\n"), version=1, lock="open", owner=None)


def test_snapshot_and_restore() -> None:
    s = owned()
    token = s.snapshot()
    before = s.evaluate(BPRM)
    s.replace("ops", pol("measure func=FILE_CHECK\n"))
    s.remove("anon")
    s.add("extra", pol("appraise func=FILE_CHECK\n"), owner="x")
    s.set_lock("plugins", Lock.SEALED)
    assert s.names() == ["plugins", "ops", "extra"]
    s.restore(token)
    assert s.names() == ["plugins", "ops", "anon"]
    assert (s.version("ops"), s.lock("plugins"), s.owner("ops")) == (1, Lock.OPEN, "ops")
    assert s.evaluate(BPRM) == before
    assert s.evaluate(FILE_READ).appraise is False
    s.restore(token)  # twice: the token is not used up
    assert s.names() == ["plugins", "ops", "anon"]


def test_restore_refuses_what_is_not_a_snapshot() -> None:
    s = owned()
    with pytest.raises(PolicyError):
        s.restore(["plugins"])
    assert s.names() == ["plugins", "ops", "anon"]


# --------------------------------------------------------------------------------------
# add_signed / update_signed
# --------------------------------------------------------------------------------------

V3 = b"#@ version 3\nmeasure func=FILE_CHECK\n"
V4 = b"#@ version 4\nmeasure func=FILE_CHECK\nmeasure func=MMAP_CHECK\n"


def sig(data: bytes, key: imaguard.PrivateKey) -> bytes:
    return imaguard.sign_bytes(data, key).serialize()


def test_add_signed_with_a_good_signature(
    ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    s = PolicySet()
    s.add_signed("p", V3, sig(V3, ec_key), keyring=ec_ring, owner="plugins", source="p.pol")
    assert (s.lock("p"), s.version("p"), s.owner("p")) == (Lock.SIGNED_ONLY, 3, "plugins")
    assert [r.canonical() for r in s.policy("p").rules] == ["measure func=FILE_CHECK"]
    assert s.evaluate(FILE_READ).measure is True
    # the set's own policy keyring is the default
    t = PolicySet(policy_keyring=ec_ring)
    t.add_signed("p", V3, sig(V3, ec_key))
    assert t.version("p") == 3


def test_add_signed_open_with_an_explicit_version(
    ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    s = PolicySet()
    plain = b"measure func=FILE_CHECK\n"
    s.add_signed("p", plain, sig(plain, ec_key), keyring=ec_ring, lock="open", version=9)
    assert (s.lock("p"), s.version("p")) == (Lock.OPEN, 9)


@pytest.mark.parametrize("case", ["wrong-key", "no-signature", "other-bytes", "no-keyring"])
def test_add_signed_refuses_a_bad_signature(
    case: str,
    ec_key: imaguard.PrivateKey,
    rsa_key: imaguard.PrivateKey,
    ec_ring: imaguard.Keyring,
) -> None:
    s = PolicySet()
    value: bytes | None = {
        "wrong-key": sig(V3, rsa_key),
        "no-signature": None,
        "other-bytes": sig(V4, ec_key),
        "no-keyring": sig(V3, ec_key),
    }[case]
    ring = None if case == "no-keyring" else ec_ring
    for lock in ("signed-only", "open"):
        with pytest.raises(PolicyLockedError):
            s.add_signed("p", V3, value, keyring=ring, lock=lock)
    assert s.names() == []


def test_add_signed_signed_only_needs_the_version_inside(
    ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    s = PolicySet()
    plain = b"measure func=FILE_CHECK\n"
    with pytest.raises(PolicyLockedError) as e:
        s.add_signed("p", plain, sig(plain, ec_key), keyring=ec_ring)
    assert "#@ version N" in str(e.value)
    with pytest.raises(PolicyLockedError):
        s.add_signed("p", V3, sig(V3, ec_key), keyring=ec_ring, version=4)
    assert s.names() == []


def test_add_signed_refuses_a_taken_name(
    ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    s = owned()
    with pytest.raises(PolicyError) as e:
        s.add_signed("ops", V3, sig(V3, ec_key), keyring=ec_ring)
    assert not isinstance(e.value, PolicyLockedError)
    assert s.version("ops") == 1


def test_update_signed(
    ec_key: imaguard.PrivateKey, rsa_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    s = PolicySet()
    s.add_signed("p", V3, sig(V3, ec_key), keyring=ec_ring, owner="o")
    for data, value in (
        (V4, sig(V4, rsa_key)),  # another key
        (V4, sig(V3, ec_key)),  # over other bytes
        (V4, None),  # none at all
    ):
        with pytest.raises(PolicyLockedError):
            s.update_signed("p", data, value, keyring=ec_ring)
    assert s.version("p") == 3
    unversioned = b"measure func=MMAP_CHECK\n"
    with pytest.raises(PolicyLockedError) as e:
        s.update_signed("p", unversioned, sig(unversioned, ec_key), keyring=ec_ring)
    assert "#@ version N" in str(e.value)
    with pytest.raises(PolicyLockedError) as e:
        s.update_signed("p", V3, sig(V3, ec_key), keyring=ec_ring)  # not newer
    assert "rollback" in str(e.value)
    s.update_signed("p", V4, sig(V4, ec_key), keyring=ec_ring)
    assert (s.version("p"), s.lock("p"), s.owner("p"), len(s.policy("p"))) == (
        4,
        Lock.SIGNED_ONLY,
        "o",
        2,
    )
    s.set_lock("p", Lock.SEALED)
    v5 = b"#@ version 5\nmeasure\n"
    with pytest.raises(PolicyLockedError):
        s.update_signed("p", v5, sig(v5, ec_key), keyring=ec_ring)
    assert s.version("p") == 4


def test_update_signed_still_honours_append_only(
    ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    s = PolicySet()
    s.add("a", pol("measure func=FILE_CHECK\n"), lock="append-only")
    dropped = b"#@ version 2\nmeasure func=MMAP_CHECK\n"
    with pytest.raises(PolicyLockedError):
        s.update_signed("a", dropped, sig(dropped, ec_key), keyring=ec_ring)
    kept = b"#@ version 2\nmeasure func=FILE_CHECK\nmeasure func=MMAP_CHECK\n"
    s.update_signed("a", kept, sig(kept, ec_key), keyring=ec_ring)
    assert (s.version("a"), len(s.policy("a"))) == (2, 2)


# --------------------------------------------------------------------------------------
# Evaluation while another thread changes the set
# --------------------------------------------------------------------------------------


def test_evaluate_stays_consistent_while_policies_change() -> None:
    s = owned()
    versions = [
        pol("appraise func=BPRM_CHECK appraise_type=imasig\n"),
        pol("measure func=BPRM_CHECK\nappraise func=BPRM_CHECK\n"),
        pol("dont_appraise\n"),
    ]
    # what "plugins" contributes to a BPRM_CHECK decision under each version, whole
    expected: dict[tuple[tuple[str, str | None], ...], str | None] = {
        (("appraise", "o0"),): "imasig",
        (("appraise", "o1"),): "imasig",
        (("appraise", "o0"), ("measure", "o0")): None,
        (("appraise", "o1"), ("measure", "o1")): None,
        (("appraise", "plugins"),): "imasig",  # before the first change
        (): None,  # dont_appraise alone decides nothing
    }
    stop = threading.Event()
    errors: list[BaseException] = []
    changes = [0]

    def change() -> None:
        try:
            i = 0
            while not stop.is_set():
                i += 1
                s.reinstate("plugins", versions[i % 3], version=i, lock="open", owner=f"o{i % 2}")
                if i % 7 == 0:
                    s.replace("ops", pol("measure func=BPRM_CHECK\n"))
                changes[0] = i
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: evaluations interleave with changes
    t = threading.Thread(target=change)
    t.start()
    seen: set[tuple[tuple[str, str | None], ...]] = set()
    evaluations = 0
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (
            changes[0] < 200 or evaluations < 1500 or len(seen) < 3
        ):
            d = s.evaluate(BPRM)
            evaluations += 1
            mine = tuple(sorted((p.action, p.owner) for p in d.provenance if p.policy == "plugins"))
            seen.add(mine)
            assert mine in expected, mine
            assert d.appraise_type == expected[mine], (mine, d.appraise_type)
            assert {(p.policy, p.owner) for p in d.provenance if p.policy != "plugins"} == {
                ("ops", "ops"),
                ("anon", None),
            }
            assert d.measure
            assert d.audit
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(interval)
    assert errors == []
    assert changes[0] >= 200
    assert len(seen) >= 3  # the evaluations saw the policy change under them
    assert s.names() == ["plugins", "ops", "anon"]
