"""Evaluation beyond the conformance table: imaguard-mode conditions, the request model
(Subject defaults, masks), which kinds are requested (ima_policy_flag), and decision bookkeeping."""

from __future__ import annotations

import pytest

from helpers.policy import acts, decide_both, req, rules_of
from imaguard.errors import PolicyError
from imaguard.policy import (
    CompiledPolicy,
    Object,
    PolicyDecision,
    Request,
    Subject,
    evaluate_naive,
    match_rule,
    parse_mask,
    parse_policy,
    parse_rule,
)
from imaguard.policy._evaluate import requested_kinds

# --------------------------------------------------------------------------------------
# imaguard mode
# --------------------------------------------------------------------------------------

APP_POLICY = (
    "appraise func=PLUGIN_CHECK path_prefix=/opt/plugins/ appraise_type=imasig\n"
    "measure func=PLUGIN_CHECK pcr=12\n"
    "dont_appraise path=/usr/bin/special\n"
    "appraise func=BPRM_CHECK path_prefix=/usr/bin/ cache=no\n"
    "audit path=/etc/shadow\n"
)


def _app(request: Request) -> PolicyDecision:
    return decide_both(rules_of(APP_POLICY, mode="imaguard"), request)


def test_app_hook_rule_matches_its_own_hook() -> None:
    d = _app(req("PLUGIN_CHECK", "MAY_READ", path="/opt/plugins/a.so"))
    assert acts(d) == {"appraise", "measure"}
    assert d.appraise_type == "imasig"
    assert d.pcr == 12


def test_app_hook_rule_does_not_match_other_hooks() -> None:
    d = _app(req("FILE_CHECK", "MAY_READ", path="/opt/plugins/a.so"))
    assert acts(d) == set()
    d = _app(req("CONFIG_CHECK", "MAY_READ", path="/opt/plugins/a.so"))
    assert acts(d) == set()


def test_path_prefix_is_a_string_prefix_and_needs_a_path() -> None:
    assert acts(_app(req("PLUGIN_CHECK", path="/opt/plugins/sub/b.so"))) == {
        "appraise",
        "measure",
    }
    assert acts(_app(req("PLUGIN_CHECK", path="/opt/pluginsX/b.so"))) == {"measure"}
    assert acts(_app(req("PLUGIN_CHECK"))) == {"measure"}  # unknown path never matches


def test_path_is_exact() -> None:
    assert acts(_app(req("FILE_CHECK", path="/etc/shadow"))) == {"audit"}
    assert acts(_app(req("FILE_CHECK", path="/etc/shadow.bak"))) == set()
    assert acts(_app(req("FILE_CHECK", path="/etc/shado"))) == set()


def test_dont_appraise_by_path_beats_later_prefix_rule() -> None:
    assert acts(_app(req("BPRM_CHECK", "MAY_EXEC", path="/usr/bin/special"))) == set()
    d = _app(req("BPRM_CHECK", "MAY_EXEC", path="/usr/bin/ls"))
    assert acts(d) == {"appraise"}
    assert d.cache is False  # cache=no: verify at every use


def test_cache_defaults_to_true() -> None:
    d = decide_both(rules_of("appraise\n"), req("FILE_CHECK"))
    assert d.appraise
    assert d.cache is True


def test_func_less_rule_applies_to_app_hooks() -> None:
    d = decide_both(rules_of("measure fowner=0\n"), req("PLUGIN_CHECK", fowner=0))
    assert acts(d) == {"measure"}


# --------------------------------------------------------------------------------------
# The request model
# --------------------------------------------------------------------------------------


def test_subject_ids_default_to_the_real_ones() -> None:
    s = Subject(uid=5, gid=7)
    assert (s.uid, s.euid, s.suid) == (5, 5, 5)
    assert (s.gid, s.egid, s.sgid) == (7, 7, 7)
    s = Subject(uid=5, euid=0)
    assert (s.uid, s.euid, s.suid) == (5, 0, 0)
    s = Subject()
    assert s.uid is s.euid is s.suid is None


def test_subject_euid_default_is_what_euid_rules_see() -> None:
    # a task that did not change identity: euid=0 rule matches uid 0
    d = decide_both(rules_of("measure euid=0\n"), Request("FILE_CHECK", 4, Subject(uid=0)))
    assert d.measure


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("MAY_EXEC", 0x1),
        ("MAY_WRITE", 0x2),
        ("MAY_READ", 0x4),
        ("MAY_APPEND", 0x8),
        ("MAY_READ|MAY_WRITE", 0x6),
        (" MAY_READ | MAY_EXEC ", 0x5),
        ("MAY_EXEC|MAY_WRITE|MAY_READ|MAY_APPEND", 0xF),
        (None, 0),
        (6, 6),
    ],
)
def test_parse_mask(text: str | int | None, bits: int) -> None:
    assert parse_mask(text) == bits


@pytest.mark.parametrize("text", ["MAY_OPEN", "may_read", "MAY_READ|", "^MAY_READ", ""])
def test_parse_mask_rejects_unknown_names(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_mask(text)


def test_match_rule_is_the_single_rule_predicate() -> None:
    rule = parse_rule("measure func=FILE_CHECK mask=^MAY_READ uid<1000 fsname=ext4")
    assert match_rule(rule, req("FILE_CHECK", "MAY_READ|MAY_APPEND", uid=1, fsname="ext4"))
    assert not match_rule(rule, req("FILE_CHECK", "MAY_READ", uid=1000, fsname="ext4"))
    assert not match_rule(rule, req("FILE_CHECK", "MAY_READ", uid=1, fsname="xfs"))
    assert match_rule(rule, req("POST_SETATTR", uid=1, fsname="ext4"))


def test_evaluation_is_pure() -> None:
    rules = rules_of("builtin:tcb|appraise_tcb")
    compiled = CompiledPolicy(rules)
    r = req("FILE_CHECK", "MAY_READ", uid=0, fowner=0, fsmagic=0xEF53)
    first = compiled.evaluate(r)
    other = compiled.evaluate(req("FILE_CHECK", "MAY_WRITE", uid=1000, fsmagic=0x9FA0))
    assert acts(other) == set()
    assert compiled.evaluate(r) == first == evaluate_naive(rules, r)
    assert acts(first) == {"measure", "appraise"}


# --------------------------------------------------------------------------------------
# which kinds are requested (ima_update_policy_flags, process_measurement)
# --------------------------------------------------------------------------------------


def test_requested_kinds_are_the_positive_actions_present() -> None:
    rules = rules_of("dont_measure\nappraise\ndont_hash\n")
    assert requested_kinds(rules) == frozenset({"appraise"})
    assert requested_kinds(rules, appraise_enabled=False) == frozenset()
    # SETXATTR_CHECK rules do not contribute
    rules = rules_of("appraise func=SETXATTR_CHECK appraise_algos=sha256\nmeasure\n")
    assert requested_kinds(rules) == frozenset({"measure"})


def test_unrequested_kind_adds_no_flags() -> None:
    # no positive measure rule: measure is not requested, the dont_measure rule is not
    # consulted, and its permit_directio is not collected
    d = decide_both(rules_of("dont_measure permit_directio\nappraise\n"), req("FILE_CHECK"))
    assert acts(d) == {"appraise"}
    assert d.permit_directio is False
    d = decide_both(rules_of("dont_measure permit_directio\nmeasure fowner=0\n"), req("FILE_CHECK"))
    assert d.permit_directio is True


def test_appraise_disabled_removes_appraise() -> None:
    # ima_update_policy_flags: with ima_appraise == 0, APPRAISE is not requested
    rules = rules_of("hash\nappraise appraise_type=imasig\nmeasure\n")
    r = req("FILE_CHECK", "MAY_READ")
    on = CompiledPolicy(rules).evaluate(r)
    off = CompiledPolicy(rules, appraise_enabled=False).evaluate(r)
    assert acts(on) == {"appraise", "measure"}
    assert acts(off) == {"hash", "measure"}
    assert off.appraise_type is None
    kinds = requested_kinds(rules, appraise_enabled=False)
    assert evaluate_naive(rules, r, kinds) == off


def test_explicit_kinds_limit_the_walk() -> None:
    # ima_must_appraise asks for APPRAISE|HASH only
    rules = rules_of("measure\nappraise fowner=0\nhash\n")
    d = evaluate_naive(rules, req("POST_SETATTR", fowner=0), frozenset({"appraise", "hash"}))
    assert acts(d) == {"appraise", "hash"}


# --------------------------------------------------------------------------------------
# Decision bookkeeping
# --------------------------------------------------------------------------------------


def test_decided_lists_every_deciding_rule_in_list_order() -> None:
    rules = parse_policy(
        "audit func=MMAP_CHECK\n"
        "dont_measure fsmagic=0x9fa0\n"
        "hash\n"
        "appraise fowner=0\n"
        "measure\n"
        "audit\n"
    ).rules
    d = decide_both(rules, req("FILE_CHECK", fowner=0, fsmagic=0x9FA0))
    assert [(k, r.line) for k, r in d.decided] == [
        ("measure", 2),
        ("hash", 3),
        ("appraise", 4),
        ("audit", 6),
    ]
    assert acts(d) == {"appraise", "audit"}  # appraise cleared the earlier hash
    measure_rule = d.rule_for("measure")
    assert measure_rule is not None
    assert measure_rule.canonical() == "dont_measure fsmagic=0x9fa0"
    assert d.any_action


def test_empty_decision() -> None:
    d = decide_both(rules_of("measure func=BPRM_CHECK\n"), req("FILE_CHECK"))
    assert d == PolicyDecision()
    assert not d.any_action
    assert d.rule_for("measure") is None
    assert (d.pcr, d.template, d.appraise_type, d.digest_type) == (10, None, None, None)


def test_rules_for_other_hooks_are_not_looked_at() -> None:
    base = ["measure func=BPRM_CHECK", "dont_measure fsmagic=0x9fa0"]
    small = CompiledPolicy(rules_of("\n".join(base)))
    noise = [f"measure func=FILE_CHECK fowner={i}" for i in range(5000)]
    big = CompiledPolicy(rules_of("\n".join(base + noise)))
    assert small.rules_for("BPRM_CHECK") == big.rules_for("BPRM_CHECK") == 2
    assert big.rules_for("FILE_CHECK") == 5001
    assert big.rules_for("KEY_CHECK") == 0
    r = req("BPRM_CHECK", "MAY_EXEC", fsmagic=0xEF53)
    assert big.evaluate(r) == small.evaluate(r)
    assert big.evaluate(r).measure


def test_object_fsuuid_is_compared_as_a_uuid() -> None:
    rules = rules_of("measure fsuuid=0123ABCD-4567-89ab-CDEF-0123456789ab\n")
    upper = Request(
        "FILE_CHECK", 0, Subject(), Object(fsuuid="0123ABCD-4567-89AB-CDEF-0123456789AB")
    )
    assert decide_both(rules, upper).measure
