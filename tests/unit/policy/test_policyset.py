"""Many named policies side by side (docs/architecture.md): union, provenance, strictest appraisal,
conflicts that fail closed, lifecycle, locks, signed updates and versions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imaguard
from helpers import needs_root_because
from helpers.policy import NARROW, acts, req, request_near, rule_and_line
from imaguard.errors import PolicyError, PolicyLockedError
from imaguard.formats.hashalgo import by_name
from imaguard.policy import (
    Lock,
    MeasureTarget,
    Policy,
    PolicySet,
    Provenance,
    Rule,
    SetDecision,
    builtin_policy,
    evaluate_naive,
    parse_policy,
)


def pol(text: str, source: str = "<policy>") -> Policy:
    return parse_policy(text, source=source)


def pset(**policies: str) -> PolicySet:
    s = PolicySet()
    for name, text in policies.items():
        s.add(name, pol(text, name))
    return s


BPRM = req("BPRM_CHECK", "MAY_EXEC", uid=0, fowner=0, fsmagic=0xEF53)


def test_policy_errors_are_public() -> None:
    # docs/architecture.md names imaguard.PolicyError / imaguard.PolicyLockedError
    assert imaguard.PolicyError is PolicyError
    assert imaguard.PolicyLockedError is PolicyLockedError
    assert "PolicyError" in imaguard.__all__
    assert "PolicyLockedError" in imaguard.__all__


# --------------------------------------------------------------------------------------
# Evaluation side by side
# --------------------------------------------------------------------------------------


def test_one_owners_dont_appraise_cannot_switch_off_anothers_appraise() -> None:
    s = pset(
        exec_guard="measure func=MODULE_CHECK\nappraise func=BPRM_CHECK appraise_type=imasig\n",
        other="dont_appraise\ndont_measure\nappraise fowner=1000\nmeasure fowner=1000\n",
    )
    d = s.evaluate(BPRM)
    assert d.appraise is True
    assert d.appraise_type == "imasig"
    want = Provenance("appraise", "exec_guard", 2, "appraise func=BPRM_CHECK appraise_type=imasig")
    assert want in d.provenance
    assert want in d.provenance_for("appraise")
    assert Provenance("dont_appraise", "other", 1, "dont_appraise") in d.provenance
    assert d.conflict is None


def test_a_policy_of_only_dont_rules_demands_nothing_and_decides_nothing() -> None:
    # ima_update_policy_flags: only the positive kinds present in a policy are requested from it
    d = pset(a="appraise\n", b="dont_appraise\ndont_measure\n").evaluate(BPRM)
    assert acts(d) == {"appraise"}
    assert [p.policy for p in d.provenance] == ["a"]


def test_dont_x_still_works_within_its_own_policy() -> None:
    s = pset(a="dont_appraise fowner=0\nappraise\n", b="measure\n")
    d = s.evaluate(BPRM)
    assert acts(d) == {"measure"}
    assert [p.action for p in d.provenance_for("appraise")] == ["dont_appraise"]


def test_union_of_actions() -> None:
    s = pset(a="measure func=BPRM_CHECK pcr=11\n", b="audit\n", c="hash\n")
    d = s.evaluate(BPRM)
    assert acts(d) == {"measure", "audit", "hash"}
    assert {(p.action, p.policy, p.line) for p in d.provenance} == {
        ("measure", "a", 1),
        ("audit", "b", 1),
        ("hash", "c", 1),
    }
    assert d.pcr == 11
    assert acts(s.evaluate(req("FILE_CHECK"))) == {"audit", "hash"}


def test_provenance_items_carry_policy_line_and_canonical_rule() -> None:
    s = pset(a="# header\n\n  measure   uid=0 func=BPRM_CHECK\t# why\n")
    (p,) = s.evaluate(BPRM).provenance
    assert p == Provenance("measure", "a", 3, "measure func=BPRM_CHECK uid=0")
    assert p.to_dict() == {
        "action": "measure",
        "policy": "a",
        "line": 3,
        "rule": "measure func=BPRM_CHECK uid=0",
    }


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        ("appraise", "appraise appraise_type=imasig", "imasig"),
        ("appraise appraise_type=imasig", "appraise", "imasig"),
        ("appraise", "appraise", None),
        (
            "appraise func=MODULE_CHECK appraise_type=imasig|modsig",
            "appraise func=MODULE_CHECK appraise_type=imasig",
            "imasig",
        ),
        (
            "appraise func=MODULE_CHECK appraise_type=imasig|modsig",
            "appraise func=MODULE_CHECK appraise_type=imasig|modsig",
            "imasig|modsig",
        ),
        ("appraise func=MODULE_CHECK appraise_type=imasig|modsig", "appraise", "imasig|modsig"),
        (
            "appraise digest_type=verity appraise_type=sigv3",
            "appraise",
            "sigv3",
        ),
    ],
)
def test_signature_beats_digest(a: str, b: str, want: str | None) -> None:
    d = pset(a=a, b=b).evaluate(req("MODULE_CHECK", "MAY_READ"))
    assert d.appraise is True
    assert d.appraise_type == want
    assert d.digsig_required is (want is not None)
    assert d.conflict is None


def test_appraise_algos_intersect() -> None:
    s = pset(
        a="appraise appraise_algos=sha256,sha512,sha384\n",
        b="appraise appraise_algos=sha512,sha1,sha384\n",
        c="appraise\n",
    )
    d = s.evaluate(BPRM)
    assert d.appraise_algos == ("sha384", "sha512")
    assert d.conflict is None
    assert pset(a="appraise appraise_algos=sha512,sha256\n", c="appraise\n").evaluate(
        BPRM
    ).appraise_algos == ("sha256", "sha512")
    assert pset(c="appraise\n").evaluate(BPRM).appraise_algos is None


def test_appraise_algos_in_ascending_id_order() -> None:
    d = pset(a="appraise appraise_algos=sha3-256,sha512,sha1,sm3\n").evaluate(BPRM)
    assert d.appraise_algos is not None
    ids = [by_name(a).id for a in d.appraise_algos]
    assert ids == sorted(ids)


def test_empty_algorithm_intersection_fails_closed_naming_both_rules() -> None:
    s = pset(
        a="measure\nappraise func=BPRM_CHECK appraise_algos=sha256\n",
        b="appraise appraise_algos=sha512,sha384\n",
    )
    d = s.evaluate(BPRM)
    assert d.conflict is not None
    assert d.appraise is True
    assert set(d.conflict.rules) == {
        Provenance("appraise", "a", 2, "appraise func=BPRM_CHECK appraise_algos=sha256"),
        Provenance("appraise", "b", 1, "appraise appraise_algos=sha384,sha512"),
    }
    assert not d.appraise_algos  # nothing is allowed: every file fails
    as_json = d.to_json()["conflict"]
    assert as_json is not None
    assert {r["policy"] for r in as_json["rules"]} == {"a", "b"}


def test_sigv3_against_imasig_is_a_conflict_naming_both_rules() -> None:
    s = pset(
        v="appraise func=BPRM_CHECK digest_type=verity appraise_type=sigv3\n",
        i="appraise func=BPRM_CHECK appraise_type=imasig\n",
    )
    d = s.evaluate(BPRM)
    assert d.conflict is not None
    assert {(p.policy, p.line) for p in d.conflict.rules} == {("v", 1), ("i", 1)}
    assert d.appraise is True


def test_hash_is_dropped_when_another_policy_appraises() -> None:
    assert pset(a="hash\n").evaluate(BPRM).hash is True
    d = pset(a="hash\n", b="appraise fowner=0\n").evaluate(BPRM)
    assert (d.hash, d.appraise) == (False, True)
    d = pset(a="hash\n", b="appraise fowner=1\n").evaluate(BPRM)
    assert (d.hash, d.appraise) == (True, False)


def test_measure_targets_deduplicated_by_pcr_and_template() -> None:
    s = pset(
        a="measure pcr=11\n",
        b="measure pcr=11\n",
        c="measure pcr=12 template=ima-sig\n",
        d="measure\n",
        e="measure pcr=12 template=ima-ng\n",
        f="dont_measure\nmeasure fowner=1000\n",
        g="measure template=ima-sig pcr=12\n",
    )
    d = s.evaluate(BPRM)
    assert d.measure_targets == (
        MeasureTarget("a", 11, None),
        MeasureTarget("c", 12, "ima-sig"),
        MeasureTarget("d", 10, None),
        MeasureTarget("e", 12, "ima-ng"),
    )
    assert {p.policy for p in d.provenance_for("measure")} == set("abcdefg")


def test_permit_directio_only_when_every_acting_policy_permits() -> None:
    assert pset(a="measure permit_directio\n").evaluate(BPRM).permit_directio is True
    assert (
        pset(a="measure permit_directio\n", b="appraise\n").evaluate(BPRM).permit_directio is False
    )
    d = pset(a="measure permit_directio\n", b="appraise permit_directio\n").evaluate(BPRM)
    assert d.permit_directio is True
    # a policy that demands nothing does not veto
    d = pset(a="measure permit_directio\n", b="measure func=MODULE_CHECK\n").evaluate(BPRM)
    assert d.permit_directio is True
    assert pset(b="measure func=MODULE_CHECK\n").evaluate(BPRM).permit_directio is False


def test_fail_securely_marks_appraisal() -> None:
    s = PolicySet()
    b = builtin_policy("appraise_tcb|fail_securely")
    s.add("boot", b.policy, fail_securely=b.fail_securely)
    assert s.evaluate(req("FILE_CHECK", fowner=0, fsmagic=0xEF53)).fail_unverifiable_sigs is True
    assert s.evaluate(req("FILE_CHECK", fowner=1, fsmagic=0xEF53)).fail_unverifiable_sigs is False
    s2 = pset(a="appraise\n")
    assert s2.evaluate(BPRM).fail_unverifiable_sigs is False


def test_empty_set_demands_nothing() -> None:
    d = PolicySet().evaluate(BPRM)
    assert acts(d) == set()
    assert (d.pcr, d.provenance, d.conflict, d.appraise_type) == (10, (), None, None)


# A single policy in a set behaves exactly like the kernel (evaluate_naive).


def _same_as_naive(d: SetDecision, rules: list[Rule], r: object) -> None:
    n = evaluate_naive(rules, r)  # type: ignore[arg-type]
    assert acts(d) == acts(n)
    assert d.appraise_type == n.appraise_type
    assert d.digest_type == n.digest_type
    assert d.pcr == n.pcr
    assert d.template == n.template
    want_algos = (
        None if n.appraise_algos is None else sorted(n.appraise_algos, key=lambda a: by_name(a).id)
    )
    assert (None if d.appraise_algos is None else list(d.appraise_algos)) == want_algos
    if n.any_action:
        assert d.permit_directio == n.permit_directio
    assert [(p.action, p.line, p.rule) for p in d.provenance] == [
        (rule.action.value, rule.line, rule.canonical())
        for _, rule in sorted(n.decided, key=lambda kr: kr[1].line)
    ]
    assert d.conflict is None


@st.composite
def _kernel_policy(draw: st.DrawFn) -> Policy:
    rate = draw(st.sampled_from((0, 1, 3)))
    rule = rule_and_line(domain=NARROW, rate=rate)
    pool = draw(st.lists(rule, min_size=1, max_size=15))
    picks = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=40))
    return parse_policy("".join(line + "\n" for _, line in picks))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data(), _kernel_policy())
def test_single_policy_set_equals_naive(data: st.DataObject, policy: Policy) -> None:
    s = PolicySet()
    s.add("only", policy)
    rules = list(policy.rules)
    for r in data.draw(st.lists(request_near(rules), min_size=5, max_size=15)):
        _same_as_naive(s.evaluate(r), rules, r)


def test_single_policy_appraise_then_hash_keeps_hash() -> None:
    # ima_match_policy: a later matching hash rule can set it again - one policy alone in a set
    # must decide as the kernel does (docs/architecture.md)
    policy = pol("appraise\nhash\n")
    s = PolicySet()
    s.add("only", policy)
    naive = evaluate_naive(policy.rules, BPRM)
    assert (naive.appraise, naive.hash) == (True, True)
    d = s.evaluate(BPRM)
    assert (d.appraise, d.hash) == (True, True)


# --------------------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------------------


def test_add_replace_remove() -> None:
    s = PolicySet()
    s.add("a", pol("measure\n"))
    s.add("b", pol("appraise\n"), owner="kexec")
    assert s.names() == ["a", "b"]
    assert len(s) == 2
    assert list(s) == ["a", "b"]
    assert s.version("a") == 1
    assert s.lock("a") is Lock.OPEN
    s.replace("a", pol("audit\n"))
    assert s.version("a") == 2
    assert s.policy("a").text() == "audit \n"
    assert acts(s.evaluate(BPRM)) == {"audit", "appraise"}
    s.remove("a")
    assert s.names() == ["b"]
    assert acts(s.evaluate(BPRM)) == {"appraise"}
    with pytest.raises(PolicyError):
        s.policy("a")
    with pytest.raises(PolicyError):
        s.replace("a", pol("measure\n"))
    with pytest.raises(PolicyError):
        s.remove("a")


def test_duplicate_name_refused() -> None:
    s = pset(a="measure\n")
    with pytest.raises(PolicyError, match="already"):
        s.add("a", pol("appraise\n"))
    assert s.policy("a").text() == "measure \n"


@pytest.mark.parametrize("name", ["", "a b", "a=b", "tab\tname"])
def test_bad_names_refused(name: str) -> None:
    with pytest.raises(PolicyError):
        PolicySet().add(name, pol("measure\n"))


def test_versions_must_grow() -> None:
    s = PolicySet()
    s.add("a", pol("measure\n"), version=5)
    assert s.version("a") == 5
    for v in (5, 4, 0):
        with pytest.raises(PolicyLockedError, match="rollback"):
            s.replace("a", pol("audit\n"), version=v)
    assert s.policy("a").text() == "measure \n"
    s.replace("a", pol("audit\n"), version=9)
    assert s.version("a") == 9
    s.replace("a", pol("hash\n"))  # no version given: the next one
    assert s.version("a") == 10


def test_version_comment_is_read() -> None:
    s = PolicySet()
    s.add("a", pol("#@ version 7\nmeasure\n"))
    assert s.version("a") == 7
    with pytest.raises(PolicyLockedError, match="rollback"):
        s.replace("a", pol("#@ version 7\naudit\n"))
    with pytest.raises(PolicyLockedError, match="rollback"):
        s.replace("a", pol("#@ version 3\naudit\n"))
    s.replace("a", pol("#@ version 8\naudit\n"))
    assert s.version("a") == 8
    assert s.policy("a").text() == "audit \n"


def test_open_lock_allows_everything() -> None:
    s = pset(a="measure\n")
    s.append("a", pol("audit\n"))
    assert s.policy("a").text() == "measure \naudit \n"
    s.replace("a", pol("hash\n"))
    s.remove("a")
    assert len(s) == 0


def test_append_only_lock() -> None:
    s = PolicySet()
    s.add("a", pol("measure func=BPRM_CHECK\nappraise fowner=0\n"), lock="append-only")
    s.append("a", pol("audit\n"))
    assert s.policy("a").text() == "measure func=BPRM_CHECK \nappraise fowner=0 \naudit \n"
    assert s.version("a") == 2
    assert acts(s.evaluate(BPRM)) == {"measure", "appraise", "audit"}
    # a replacement that keeps every rule in order and adds after them is an append
    s.replace("a", pol("measure func=BPRM_CHECK\nappraise fowner=0\naudit\nhash\n"))
    assert s.version("a") == 3
    with pytest.raises(PolicyLockedError):  # changes an existing rule
        s.replace("a", pol("measure func=BPRM_CHECK\nappraise fowner=1\naudit\nhash\n"))
    with pytest.raises(PolicyLockedError):  # removes one
        s.replace("a", pol("measure func=BPRM_CHECK\nappraise fowner=0\nhash\n"))
    with pytest.raises(PolicyLockedError):  # inserts before an existing rule
        s.replace(
            "a", pol("dont_appraise\nmeasure func=BPRM_CHECK\nappraise fowner=0\naudit\nhash\n")
        )
    with pytest.raises(PolicyLockedError):
        s.remove("a")
    assert s.version("a") == 3
    assert len(s.policy("a")) == 4


def test_append_only_still_refuses_rollback() -> None:
    s = PolicySet()
    s.add("a", pol("#@ version 4\nmeasure\n"), lock="append-only")
    with pytest.raises(PolicyLockedError, match="rollback"):
        s.append("a", pol("#@ version 4\naudit\n"))
    s.append("a", pol("#@ version 5\naudit\n"))
    assert s.version("a") == 5


def test_sealed_lock_refuses_everything(tmp_path: Path) -> None:
    s = PolicySet()
    s.add("a", pol("measure\n"), lock="sealed")
    f = tmp_path / "p.policy"
    f.write_text("#@ version 9\nmeasure\naudit\n")
    changes: tuple[Callable[[], object], ...] = (
        lambda: s.replace("a", pol("audit\n"), version=10),
        lambda: s.append("a", pol("audit\n"), version=10),
        lambda: s.remove("a"),
        lambda: s.update_file("a", f),
        lambda: s.set_lock("a", "open"),
        lambda: s.set_lock("a", "append-only"),
    )
    for change in changes:
        with pytest.raises(PolicyLockedError):
            change()
    assert s.policy("a").text() == "measure \n"
    assert s.version("a") == 1
    assert s.lock("a") is Lock.SEALED


def test_lock_only_gets_stricter() -> None:
    s = pset(a="measure\n")
    s.set_lock("a", Lock.APPEND_ONLY)
    with pytest.raises(PolicyLockedError, match="stricter"):
        s.set_lock("a", Lock.OPEN)
    s.set_lock("a", "sealed")
    with pytest.raises(PolicyLockedError):
        s.set_lock("a", Lock.APPEND_ONLY)
    assert s.lock("a") is Lock.SEALED
    with pytest.raises(PolicyLockedError):
        pset(b="measure\n").set_lock("b", "signed-only")  # no policy keyring


def test_update_file_on_an_open_policy(tmp_path: Path) -> None:
    s = pset(a="measure\n")
    f = tmp_path / "a.policy"
    f.write_text("#@ version 3\naudit\n")
    s.update_file("a", f)
    assert (s.version("a"), s.policy("a").text()) == (3, "audit \n")
    f.write_text("#@ version 3\nhash\n")
    with pytest.raises(PolicyLockedError, match="rollback"):
        s.update_file("a", f)
    f.write_text("#@ version 4\nbogus\n")
    with pytest.raises(PolicyError):
        s.update_file("a", f)
    with pytest.raises(PolicyError):
        s.update_file("a", tmp_path / "missing.policy")
    assert (s.version("a"), s.policy("a").text()) == (3, "audit \n")


def test_add_file_open(tmp_path: Path) -> None:
    f = tmp_path / "exec.policy"
    f.write_text("#@ version 4\nmeasure func=BPRM_CHECK\n")
    s = PolicySet()
    s.add_file("exec", f)
    assert (s.version("exec"), s.lock("exec")) == (4, Lock.OPEN)
    (p,) = s.evaluate(BPRM).provenance
    assert (p.policy, p.line) == ("exec", 2)
    with pytest.raises(PolicyError, match="already"):
        s.add_file("exec", f)
    bad = tmp_path / "bad.policy"
    bad.write_text("measure\nbogus\n")
    with pytest.raises(PolicyError):
        s.add_file("bad", bad)
    assert s.names() == ["exec"]
    app = tmp_path / "app.policy"
    app.write_text("appraise func=PLUGIN_CHECK path_prefix=/opt/\n")
    with pytest.raises(PolicyError):
        s.add_file("app", app)
    s.add_file("app", app, mode="imaguard")
    assert s.evaluate(req("PLUGIN_CHECK", path="/opt/x")).appraise is True


def test_lock_order() -> None:
    order = [Lock.OPEN, Lock.APPEND_ONLY, Lock.SIGNED_ONLY, Lock.SEALED]
    assert [lock.rank for lock in order] == sorted(lock.rank for lock in order)
    assert [str(lock) for lock in order] == ["open", "append-only", "signed-only", "sealed"]


# --------------------------------------------------------------------------------------
# Signed-only (the kernel's POLICY_CHECK)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy_key() -> imaguard.GeneratedKey:
    return imaguard.generate_key("ecdsa-p256", common_name="policy signing key")


@pytest.fixture(scope="module")
def other_key() -> imaguard.GeneratedKey:
    return imaguard.generate_key("ecdsa-p256", common_name="someone else")


@pytest.fixture
def ring(policy_key: imaguard.GeneratedKey) -> imaguard.Keyring:
    return imaguard.Keyring.of([policy_key.certificate], name=".ima_policy")


STORES = [
    "sigfile",
    pytest.param(
        "xattr",
        marks=needs_root_because("security.ima needs root"),
    ),
]


def _write_signed(path: Path, text: str, key: imaguard.GeneratedKey, store: str) -> Path:
    path.write_text(text)
    imaguard.sign_file(path, key.private_key, store=store)
    return path


@pytest.mark.parametrize("store", STORES)
def test_signed_only_add_and_update(
    tmp_path: Path, ring: imaguard.Keyring, policy_key: imaguard.GeneratedKey, store: str
) -> None:
    s = PolicySet(policy_keyring=ring)
    f1 = _write_signed(
        tmp_path / "v1.policy",
        "#@ version 1\nappraise func=BPRM_CHECK appraise_type=imasig\n",
        policy_key,
        store,
    )
    s.add_file("kexec", f1, lock="signed-only", owner="kexec", store=store)
    assert s.lock("kexec") is Lock.SIGNED_ONLY
    assert s.version("kexec") == 1
    assert s.evaluate(BPRM).appraise_type == "imasig"
    f2 = _write_signed(
        tmp_path / "v2.policy",
        "#@ version 2\nappraise func=BPRM_CHECK appraise_type=imasig\nmeasure func=BPRM_CHECK\n",
        policy_key,
        store,
    )
    s.update_file("kexec", f2, store=store)
    assert s.version("kexec") == 2
    assert acts(s.evaluate(BPRM)) == {"appraise", "measure"}
    (p,) = s.evaluate(BPRM).provenance_for("measure")
    assert (p.policy, p.line) == ("kexec", 3)


@pytest.mark.parametrize("store", STORES)
def test_signed_only_refusals(
    tmp_path: Path,
    ring: imaguard.Keyring,
    policy_key: imaguard.GeneratedKey,
    other_key: imaguard.GeneratedKey,
    store: str,
) -> None:
    s = PolicySet(policy_keyring=ring)
    f = _write_signed(
        tmp_path / "v5.policy", "#@ version 5\nmeasure func=BPRM_CHECK\n", policy_key, store
    )
    s.add_file("p", f, lock="signed-only", store=store)
    before = (s.version("p"), s.policy("p").text())

    unsigned = tmp_path / "unsigned.policy"
    unsigned.write_text("#@ version 6\naudit\n")
    with pytest.raises(PolicyLockedError):
        s.update_file("p", unsigned, store=store)

    foreign = _write_signed(tmp_path / "foreign.policy", "#@ version 6\naudit\n", other_key, store)
    with pytest.raises(PolicyLockedError):
        s.update_file("p", foreign, store=store)

    for v in (5, 4):
        old = _write_signed(
            tmp_path / f"old{v}.policy", f"#@ version {v}\naudit\n", policy_key, store
        )
        with pytest.raises(PolicyLockedError, match="rollback"):
            s.update_file("p", old, store=store)

    no_version = _write_signed(tmp_path / "nover.policy", "audit\n", policy_key, store)
    with pytest.raises(PolicyLockedError):
        s.update_file("p", no_version, store=store)

    tampered = _write_signed(
        tmp_path / "tampered.policy", "#@ version 6\naudit\n", policy_key, store
    )
    with open(tampered, "r+b") as fh:  # same size, same inode: only the content changes
        fh.seek(len("#@ version 6\n"))
        fh.write(b"hash!")
    with pytest.raises(PolicyLockedError):
        s.update_file("p", tampered, store=store)

    with pytest.raises(PolicyLockedError):
        s.replace("p", pol("#@ version 9\naudit\n"))
    with pytest.raises(PolicyLockedError):
        s.append("p", pol("#@ version 9\naudit\n"))
    with pytest.raises(PolicyLockedError):
        s.remove("p")
    with pytest.raises(PolicyLockedError):
        s.set_lock("p", "append-only")
    assert (s.version("p"), s.policy("p").text()) == before

    # and a good one still goes through
    good = _write_signed(tmp_path / "v6.policy", "#@ version 6\naudit\n", policy_key, store)
    s.update_file("p", good, store=store)
    assert (s.version("p"), s.policy("p").text()) == (6, "audit \n")


def test_signed_only_add_needs_a_valid_signature(
    tmp_path: Path, ring: imaguard.Keyring, other_key: imaguard.GeneratedKey
) -> None:
    s = PolicySet(policy_keyring=ring)
    f = tmp_path / "p.policy"
    f.write_text("#@ version 1\nmeasure\n")
    with pytest.raises(PolicyLockedError):
        s.add_file("p", f, lock="signed-only", store="sigfile")
    imaguard.sign_file(f, other_key.private_key, store="sigfile")
    with pytest.raises(PolicyLockedError):
        s.add_file("p", f, lock="signed-only", store="sigfile")
    assert len(s) == 0


def test_signed_only_needs_a_keyring_and_a_file(
    tmp_path: Path, policy_key: imaguard.GeneratedKey
) -> None:
    f = _write_signed(tmp_path / "p.policy", "#@ version 1\nmeasure\n", policy_key, "sigfile")
    with pytest.raises(PolicyLockedError):
        PolicySet().add_file("p", f, lock="signed-only", store="sigfile")
    with pytest.raises(PolicyLockedError):
        PolicySet(policy_keyring=imaguard.Keyring.of([policy_key.certificate])).add(
            "p", pol("measure\n"), lock="signed-only"
        )


def test_open_policy_can_become_signed_only(
    tmp_path: Path, ring: imaguard.Keyring, policy_key: imaguard.GeneratedKey
) -> None:
    s = PolicySet(policy_keyring=ring)
    s.add("p", pol("#@ version 1\nmeasure\n"))
    s.set_lock("p", "signed-only")
    with pytest.raises(PolicyLockedError):
        s.replace("p", pol("#@ version 2\naudit\n"))
    f = _write_signed(tmp_path / "p.policy", "#@ version 2\naudit\n", policy_key, "sigfile")
    s.update_file("p", f, store="sigfile")
    assert s.version("p") == 2
    s.set_lock("p", "sealed")
    with pytest.raises(PolicyLockedError):
        s.update_file("p", f, store="sigfile")
