"""The compiled index decides exactly as the naive linear walk (issue: part 5).

Random policies (up to ~200 rules, every condition and option, kernel and imaguard
features) and random requests (every hook incl. POST_SETATTR and the data hooks, unknown
attributes, capability flags). One variant shrinks the compiled index's leaf size so
bucket splitting is exercised on nearly every list.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.policy import NARROW, acts, req, request_near, requests, rule_and_line, rules_of
from imaguard.policy import CompiledPolicy, Request, Rule, evaluate_naive
from imaguard.policy import _compiled as compiled_module
from imaguard.policy._evaluate import requested_kinds

POLICY_FUNCS = (
    None,
    None,
    None,
    "FILE_CHECK",
    "FILE_CHECK",
    "BPRM_CHECK",
    "MMAP_CHECK",
    "MMAP_CHECK_REQPROT",
    "CREDS_CHECK",
    "MODULE_CHECK",
    "FIRMWARE_CHECK",
    "KEXEC_CMDLINE",
    "KEY_CHECK",
    "KEY_CHECK",
    "CRITICAL_DATA",
    "CRITICAL_DATA",
    "SETXATTR_CHECK",
    "PLUGIN_CHECK",
    "PLUGIN_CHECK",
    "CONFIG_CHECK",
)
DENSE = ("fsmagic", "fsname", "fsuuid", "uid", "gid", "fowner", "fgroup", "mask", "lsm", "data")


@st.composite
def policies(draw: Any) -> list[Rule]:
    """A pool of random rules, then a long policy drawn from it (repeats make first-match
    order matter) mixed with fresh rules."""
    dense = draw(st.frozensets(st.sampled_from((*DENSE, "path")), max_size=4))
    rate = draw(st.sampled_from((0, 1, 3)))
    rule = rule_and_line(
        mode="imaguard", domain=NARROW, funcs=POLICY_FUNCS, dense=dense, rate=rate
    ).map(lambda case: case[0])
    pool = draw(st.lists(rule, min_size=1, max_size=30))
    size = draw(st.integers(0, 200))
    picks = draw(st.lists(st.integers(0, len(pool) - 1), min_size=size, max_size=size))
    out = [pool[i] for i in picks]
    fresh = draw(st.lists(rule, max_size=10))
    for r in fresh:
        out.insert(draw(st.integers(0, len(out))), r)
    return out


def _requests(rules: list[Rule]) -> st.SearchStrategy[list[Request]]:
    return st.lists(request_near(rules, NARROW), min_size=8, max_size=25)


def _check(rules: list[Rule], reqs: list[Request]) -> None:
    compiled = CompiledPolicy(rules)
    no_appraise = CompiledPolicy(rules, appraise_enabled=False)
    kinds_off = requested_kinds(rules, appraise_enabled=False)
    for r in reqs:
        assert compiled.evaluate(r) == evaluate_naive(rules, r), r
        assert no_appraise.evaluate(r) == evaluate_naive(rules, r, kinds_off), r


SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(st.data(), policies())
def test_compiled_equals_naive(data: st.DataObject, rules: list[Rule]) -> None:
    _check(rules, data.draw(_requests(rules)))


@pytest.mark.parametrize("leaf", [1, 2])
@SETTINGS
@given(st.data(), policies())
def test_compiled_equals_naive_with_tiny_leaves(
    leaf: int, data: st.DataObject, rules: list[Rule]
) -> None:
    # every list longer than one or two rules goes through the index
    reqs = data.draw(_requests(rules))
    with mock.patch.object(compiled_module, "LEAF_SIZE", leaf):
        _check(rules, reqs)


@pytest.mark.parametrize("leaf", [0, 1, 2])
def test_tiny_leaves_on_a_keyed_policy(leaf: int) -> None:
    # many rules keyed on the same attributes, so every bucket and the wildcard list meet
    text = "\n".join(
        [f"dont_measure fsmagic=0x{m:x}" for m in range(1, 40)]
        + [f"measure func=FILE_CHECK fowner={u} pcr={u}" for u in range(5)]
        + ["measure fsname=ext4 pcr=20", "measure pcr=21"]
        + [f"appraise uid={u} appraise_type=imasig" for u in range(5)]
        + ["dont_appraise fsmagic=0x3", "appraise"]
    )
    rules = rules_of(text)
    with mock.patch.object(compiled_module, "LEAF_SIZE", leaf):
        compiled = CompiledPolicy(rules)
        for magic in (1, 3, 39, 40, None):
            for owner in (0, 4, 9, None):
                for uid in (0, 3, None):
                    for fsname in ("ext4", None):
                        r = req(
                            "FILE_CHECK",
                            "MAY_READ",
                            fsmagic=magic,
                            fowner=owner,
                            uid=uid,
                            fsname=fsname,
                        )
                        assert compiled.evaluate(r) == evaluate_naive(rules, r), r
        d = compiled.evaluate(req("FILE_CHECK", fsmagic=40, fowner=4, uid=3))
        assert acts(d) == {"measure", "appraise"}
        assert (d.pcr, d.appraise_type) == (4, "imasig")
        d = compiled.evaluate(req("FILE_CHECK", fsmagic=3, fowner=9, fsname="ext4"))
        assert acts(d) == set()
        d = compiled.evaluate(req("FILE_CHECK", fsmagic=41, fowner=9, fsname="ext4"))
        assert (acts(d), d.pcr) == ({"measure", "appraise"}, 20)


GRID_POLICY = (
    "measure func=FILE_CHECK mask=^MAY_WRITE pcr=1\n"
    "measure func=FILE_CHECK mask=MAY_READ pcr=2\n"
    "dont_measure uid<1000 fsname=tmpfs\n"
    "measure uid>1000 pcr=3\n"
    "measure euid=0 pcr=4\n"
    "appraise egid=0 appraise_type=imasig\n"
    "appraise gid<10 fowner>5\n"
    "dont_appraise fgroup<3\n"
    "appraise path_prefix=/usr/ appraise_algos=sha256\n"
    "audit path=/etc/shadow\n"
    "audit fsuuid=11111111-1111-1111-1111-111111111111\n"
    "hash obj_type=etc_t\n"
    "dont_hash subj_user=root\n"
    "hash fsmagic=0x9fa0\n"
    "measure func=KEY_CHECK uid<5 keyrings=x|y pcr=5\n"
    "measure func=KEY_CHECK uid=7 pcr=6\n"
    "measure func=CRITICAL_DATA label=x\n"
    "measure func=PLUGIN_CHECK pcr=7\n"
)


@pytest.mark.parametrize("leaf", [0, 1, 2, 1000])
def test_grid_of_requests_on_a_mixed_policy(leaf: int) -> None:
    # a deterministic sweep over the conditions an index could get wrong: ^mask supersets,
    # < and > ids, euid/egid with and without capabilities, path prefixes, data hooks
    rules = list(rules_of(GRID_POLICY, mode="imaguard"))
    rules = rules * 3  # repeats: the first copy must keep winning
    with mock.patch.object(compiled_module, "LEAF_SIZE", leaf):
        compiled = CompiledPolicy(rules)
        count = 0
        for func in ("FILE_CHECK", "BPRM_CHECK", "POST_SETATTR", "PLUGIN_CHECK", "KEY_CHECK"):
            for mask in (0, 2, 4, 6, 14):
                for ids in (None, 0, 7, 1000, 1001):
                    for cap in (False, True):
                        for extra in (
                            {},
                            {"fsname": "tmpfs", "path": "/usr/bin/ls"},
                            {"path": "/etc/shadow", "obj_type": "etc_t", "fsmagic": 0x9FA0},
                            {"fsuuid": "11111111-1111-1111-1111-111111111111", "subj_user": "root"},
                        ):
                            r = req(
                                func,
                                mask,
                                data="x" if ids == 0 else "z",
                                uid=ids,
                                euid=None if ids is None else ids + 1,
                                suid=0 if cap else None,
                                gid=ids,
                                egid=None if ids is None else ids + 3,
                                sgid=0 if cap else None,
                                cap_setuid=cap,
                                cap_setgid=cap,
                                fowner=ids,
                                fgroup=ids,
                                **extra,
                            )
                            assert compiled.evaluate(r) == evaluate_naive(rules, r), r
                            count += 1
    assert count == 5 * 5 * 5 * 2 * 4


def test_compiled_equals_naive_on_builtins() -> None:
    rules = rules_of("builtin:tcb|appraise_tcb|secure_boot|critical_data")
    compiled = CompiledPolicy(rules)

    @settings(max_examples=300, deadline=None)
    @given(requests(NARROW))
    def inner(r: Request) -> None:
        assert compiled.evaluate(r) == evaluate_naive(rules, r)

    inner()
