"""The parser and the canonical printer: parse -> print -> parse identity (Hypothesis over
the grammar), the read-back format (ima_policy_show), imaguard mode, and bad input."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers.policy import acts, decide_both, lines_to_policy, req, rule_and_line
from imaguard.errors import PolicyError
from imaguard.policy import (
    Action,
    CompiledPolicy,
    IdCondition,
    Policy,
    Rule,
    evaluate_naive,
    parse_policy,
    parse_rule,
)

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------
# parse -> print -> parse is the identity
# --------------------------------------------------------------------------------------


def _check_round_trip(expected: Rule, line: str, mode: str) -> None:
    parsed = parse_rule(line, mode=mode)  # type: ignore[arg-type]
    assert parsed == expected, f"{line!r} parsed to {parsed}"
    printed = parsed.read_back()
    (again,) = parse_policy(printed, mode=mode).rules  # type: ignore[arg-type]
    assert again == parsed, f"{printed!r} re-parsed to {again}"
    assert again.read_back() == printed
    assert parsed.canonical() == printed.rstrip("\n").rstrip(" ")


@PROPERTY
@given(rule_and_line())
def test_kernel_rule_round_trip(case: tuple[Rule, str]) -> None:
    _check_round_trip(*case, mode="kernel")


@PROPERTY
@given(rule_and_line(mode="imaguard"))
def test_imaguard_rule_round_trip(case: tuple[Rule, str]) -> None:
    _check_round_trip(*case, mode="imaguard")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rule_and_line(), min_size=1, max_size=25), st.booleans())
def test_policy_text_round_trip(cases: list[tuple[Rule, str]], comments: bool) -> None:
    lines = [line for _, line in cases]
    if comments:
        lines = [x for line in lines for x in ("# comment", "", line)]
    policy = parse_policy(lines_to_policy(lines), source="gen.policy")
    assert policy.rules == tuple(rule for rule, _ in cases)
    text = policy.text()
    assert text.count("\n") == len(cases)
    again = parse_policy(text)
    assert again.rules == policy.rules
    assert again.text() == text


def test_appraise_algos_order_survives_the_round_trip() -> None:
    # ima_policy_show prints appraise_algos in ascending id order; the kernel keeps a bitmask, so
    # the order written is not part of the rule. parse(print(parse(x))) must equal parse(x).
    first = parse_rule("appraise appraise_algos=sha512,sha256")
    (again,) = parse_policy(first.read_back()).rules
    assert first.canonical() == "appraise appraise_algos=sha256,sha512"
    assert again == first


def test_ids_print_unsigned_and_reparse() -> None:
    # documented deviation: the kernel prints %d; imaguard prints the id it parsed
    rule = parse_rule("measure uid>4000000000 fowner<4294967294")
    assert rule.canonical() == "measure uid>4000000000 fowner<4294967294"
    assert parse_policy(rule.read_back()).rules == (rule,)


def test_verity_before_sigv3_in_print() -> None:
    # documented deviation: digest_type=verity printed before appraise_type=sigv3
    rule = parse_rule("appraise func=BPRM_CHECK digest_type=verity appraise_type=sigv3")
    assert rule.read_back() == (
        "appraise func=BPRM_CHECK digest_type=verity appraise_type=sigv3 \n"
    )
    assert parse_policy(rule.read_back()).rules == (rule,)


def test_parse_rule_accepts_a_read_back_line() -> None:
    # A read-back line ends in "\n"; written back to the kernel it is one rule (ima_write_policy:
    # the write is split at the newline). parse_rule should take it as the same rule.
    rule = parse_rule("measure func=BPRM_CHECK")
    assert parse_rule(rule.read_back()) == rule


# --------------------------------------------------------------------------------------
# The read-back format (ima_policy.c ima_policy_show)
# --------------------------------------------------------------------------------------

UUID = "0123abcd-4567-89ab-cdef-0123456789ab"


def test_read_back_field_order_measure() -> None:
    shuffled = (
        "permit_directio subj_type=st fgroup=0 obj_user=u uid<5 "
        f"fsuuid={UUID.upper()} pcr=11 fsname=ext4 fsmagic=EF53 mask=^MAY_READ fowner>7 "
        "subj_role=sr obj_type=t measure template=ima-sig gid=3 obj_role=r subj_user=su "
        "func=FILE_CHECK"
    )
    rule = parse_rule(shuffled)
    assert rule.read_back() == (
        "measure func=FILE_CHECK mask=^MAY_READ fsmagic=0xef53 fsname=ext4 pcr=11 "
        f"fsuuid={UUID} uid<5 gid=3 fowner>7 fgroup=0 obj_user=u obj_role=r obj_type=t "
        "subj_user=su subj_role=sr subj_type=st template=ima-sig permit_directio \n"
    )


def test_read_back_field_order_effective_ids() -> None:
    rule = parse_rule("measure egid>5 fgroup<2 euid=0 fowner=1")
    assert rule.read_back() == "measure euid=0 egid>5 fowner=1 fgroup<2 \n"


def test_read_back_field_order_appraise() -> None:
    rule = parse_rule(
        "appraise permit_directio appraise_type=imasig obj_type=bin_t "
        "appraise_algos=sha512,sha1,sha256 fowner=0 func=BPRM_CHECK mask=MAY_EXEC"
    )
    assert rule.read_back() == (
        "appraise func=BPRM_CHECK mask=MAY_EXEC fowner=0 appraise_algos=sha1,sha256,sha512 "
        "obj_type=bin_t appraise_type=imasig permit_directio \n"
    )


def test_read_back_data_hooks() -> None:
    rule = parse_rule("measure template=ima-buf uid=0 pcr=12 keyrings=.ima|.evm func=KEY_CHECK")
    assert rule.read_back() == (
        "measure func=KEY_CHECK keyrings=.ima|.evm pcr=12 uid=0 template=ima-buf \n"
    )
    rule = parse_rule("measure label=selinux|kernel_info func=CRITICAL_DATA")
    assert rule.read_back() == "measure func=CRITICAL_DATA label=selinux|kernel_info \n"


def test_read_back_fsmagic_is_lowercase_hex_with_0x() -> None:
    assert parse_rule("measure fsmagic=DE5E81E4").read_back() == "measure fsmagic=0xde5e81e4 \n"
    assert parse_rule("measure fsmagic=0x0").read_back() == "measure fsmagic=0x0 \n"
    assert parse_rule("measure fsmagic=0X00FF").read_back() == "measure fsmagic=0xff \n"


def test_read_back_appraise_algos_in_ascending_id_order() -> None:
    rule = parse_rule("appraise appraise_algos=sha3-512,sm3,sha256,md5,wp512,sha1")
    assert rule.canonical() == "appraise appraise_algos=md5,sha1,sha256,wp512,sm3,sha3-512"


def test_read_back_alias_func_and_modsig() -> None:
    assert parse_rule("measure func=PATH_CHECK").read_back() == "measure func=FILE_CHECK \n"
    assert parse_rule("measure func=FILE_MMAP").read_back() == "measure func=MMAP_CHECK \n"
    rule = parse_rule("appraise func=MODULE_CHECK appraise_type=imasig|modsig")
    assert rule.read_back() == "appraise func=MODULE_CHECK appraise_type=imasig|modsig \n"


def test_read_back_every_line_ends_with_space_newline() -> None:
    policy = parse_policy("measure\n  # c\nappraise fowner=0\ndont_hash\n")
    assert policy.text() == "measure \nappraise fowner=0 \ndont_hash \n"
    assert [r.canonical() for r in policy.rules] == ["measure", "appraise fowner=0", "dont_hash"]
    assert [r.line for r in policy.rules] == [1, 3, 4]


def test_appraise_flag_is_not_printed() -> None:
    assert parse_rule("appraise appraise_flag=check_blacklist").read_back() == "appraise \n"


def test_rules_are_frozen_and_compare_by_content() -> None:
    a = parse_policy("measure uid=0\n").rules[0]
    b = parse_policy("# x\n\nmeasure uid=0\n").rules[0]
    assert a == b
    assert a.line != b.line
    assert hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.uid = None  # type: ignore[misc]


def test_rule_values_are_typed() -> None:
    rule = parse_rule(
        f"measure func=BPRM_CHECK mask=^MAY_EXEC fsmagic=0x9fa0 fsuuid={UUID} euid<1000 "
        "fgroup=5 obj_type=bin_t pcr=11 template=d-ng|n-ng"
    )
    assert rule.action is Action.MEASURE
    assert rule.func == "BPRM_CHECK"
    assert rule.mask == 0x1
    assert rule.inmask is True
    assert rule.fsmagic == 0x9FA0
    assert rule.fsuuid == uuid.UUID(UUID)
    assert rule.uid == IdCondition("<", 1000, effective=True)
    assert rule.fgroup == IdCondition("=", 5)
    assert rule.lsm_map == {"obj_type": "bin_t"}
    assert rule.pcr == 11
    assert rule.template == "ima-ng"


# --------------------------------------------------------------------------------------
# imaguard mode: app hooks, path=, path_prefix=, cache=no
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canon"),
    [
        ("measure func=PLUGIN_CHECK", "measure func=PLUGIN_CHECK"),
        (
            "appraise func=PLUGIN_CHECK appraise_type=imasig|modsig",
            "appraise func=PLUGIN_CHECK appraise_type=imasig|modsig",
        ),
        (
            "appraise func=CONFIG_CHECK digest_type=verity appraise_type=sigv3",
            "appraise func=CONFIG_CHECK digest_type=verity appraise_type=sigv3",
        ),
        (
            "measure func=X1 mask=^MAY_READ uid=0 pcr=12",
            "measure func=X1 mask=^MAY_READ pcr=12 uid=0",
        ),
        ("appraise path=/usr/bin/sudo", "appraise path=/usr/bin/sudo"),
        ("appraise path_prefix=/usr/lib/ cache=no", "appraise path_prefix=/usr/lib/ cache=no"),
        ("measure cache=no func=BPRM_CHECK", "measure func=BPRM_CHECK cache=no"),
        ("measure cache=yes", "measure"),
        (
            "appraise func=PLUGIN_CHECK path_prefix=/opt/plugins/ appraise_type=imasig",
            "appraise func=PLUGIN_CHECK appraise_type=imasig path_prefix=/opt/plugins/",
        ),
        (
            "measure func=MODULE_CHECK path=/lib/modules/x.ko",
            "measure func=MODULE_CHECK path=/lib/modules/x.ko",
        ),
        # kernel rules are still valid in imaguard mode
        ("measure func=KEY_CHECK keyrings=.ima", "measure func=KEY_CHECK keyrings=.ima"),
    ],
)
def test_imaguard_mode_accepts_extensions(text: str, canon: str) -> None:
    policy = parse_policy(text, mode="imaguard")
    assert policy.mode == "imaguard"
    assert policy.rules[0].canonical() == canon
    assert parse_policy(policy.text(), mode="imaguard").rules == policy.rules


@pytest.mark.parametrize(
    "text",
    [
        "measure func=PLUGIN_CHECK",
        "appraise path=/usr/bin/sudo",
        "appraise path_prefix=/usr/lib/",
        "measure cache=no",
    ],
)
def test_extensions_are_rejected_in_kernel_mode_naming_imaguard_mode(text: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy(text)
    ((_, line, col, reason),) = exc.value.problems
    assert (line, col) == (1, 9 if text.startswith("measure") else 10)
    assert "imaguard mode" in reason


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("appraise path=usr/bin/sudo", "absolute"),
        ("appraise path_prefix=usr/", "absolute"),
        ("appraise path_prefix=./x", "absolute"),
        ("appraise path=/a path=/b", "path"),
        ("appraise path=/a path_prefix=/b", "path"),
        ("measure cache=maybe", "cache"),
        ("measure func=plugin_check", "func"),
        ("measure func=POST_SETATTR", "func"),
        ("measure func=Plugin", "func"),
        ("measure func=1PLUGIN", "func"),
        ("measure func=KEY_CHECK path=/x", "path"),
        ("measure func=CRITICAL_DATA cache=no", "cache"),
        ("appraise func=SETXATTR_CHECK appraise_algos=sha256 path=/x", "path"),
        ("measure func=KEXEC_CMDLINE path=/x", "path"),
        ("measure func=PLUGIN_CHECK func=PLUGIN_CHECK", "func"),
        # the kernel's rules still hold for app hooks
        ("measure func=PLUGIN_CHECK appraise_type=imasig", "appraise"),
        ("appraise func=PLUGIN_CHECK pcr=3", "pcr"),
    ],
)
def test_imaguard_mode_still_validates(text: str, why: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, mode="imaguard")
    assert why in exc.value.problems[0][3]


def test_unknown_mode_is_a_policy_error() -> None:
    with pytest.raises(PolicyError):
        parse_policy("measure", mode="permissive")  # type: ignore[arg-type]


def test_version_comment() -> None:
    policy = parse_policy("#@ version 7\nmeasure\n")
    assert policy.version == 7
    assert parse_policy("#@version 12\nmeasure\n").version == 12
    assert parse_policy("measure\n# @ version 3\n").version is None
    assert parse_policy("measure\n").version is None
    assert Policy(()).version is None


# --------------------------------------------------------------------------------------
# Bad input: clear PolicyError or a correct result, never another exception
# --------------------------------------------------------------------------------------


def test_huge_line_is_a_clear_error_naming_the_line() -> None:
    text = "measure\ndont_measure fsname=" + "a" * (100 * 1024) + "\nappraise\n"
    for mode in ("kernel", "imaguard"):
        with pytest.raises(PolicyError) as exc:
            parse_policy(text, mode=mode, source="big.policy")
        ((source, line, _col, reason),) = exc.value.problems
        assert (source, line) == ("big.policy", 2)
        assert "bytes" in reason
        assert str(exc.value).startswith("big.policy:2:")


def test_kernel_line_limit_is_a_page() -> None:
    # ima_fs.c ima_write_policy: one write of at most PAGE_SIZE-1 bytes is one rule
    head = "measure fsname="
    fits = head + "a" * (4095 - len(head))
    assert parse_policy(fits + "\n").rules[0].fsname == "a" * (4095 - len(head))
    with pytest.raises(PolicyError):
        parse_policy(fits + "a\n")


def test_nul_byte_names_line_and_column() -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy("measure\nmeasure fsname=ab\0c\n", source="nul.policy")
    ((source, line, col, reason),) = exc.value.problems
    assert (source, line, col) == ("nul.policy", 2, 18)
    assert "NUL" in reason
    with pytest.raises(PolicyError):
        parse_policy(b"measure\0\n")


def test_non_utf8_bytes_name_line_and_column() -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy(b"measure\n# ok\nmeasure fsname=\xff\xfe\n", source="bin.policy")
    ((source, line, col, _reason),) = exc.value.problems
    assert (source, line, col) == ("bin.policy", 3, 16)
    assert str(exc.value).startswith("bin.policy:3:16: ")


def test_utf8_bytes_parse_like_text() -> None:
    assert (
        parse_policy("measure fsname=é\n".encode()).rules
        == parse_policy("measure fsname=é\n").rules
    )


def test_hundred_thousand_rules_parse_and_evaluate() -> None:
    n = 100_000
    lines = []
    for i in range(n):
        if i % 4 == 0:
            lines.append(f"dont_measure fsmagic=0x{i:x}")
        elif i % 4 == 1:
            lines.append(f"measure func=FILE_CHECK mask=^MAY_READ fowner={i}")
        elif i % 4 == 2:
            lines.append(f"appraise func=BPRM_CHECK uid={i} appraise_type=imasig")
        else:
            lines.append(f"audit func=MMAP_CHECK fsname=fs{i}")
    text = "".join(line + "\n" for line in lines)
    policy = parse_policy(text)  # no time limit here: speed targets live in bench/
    assert len(policy) == n
    compiled = CompiledPolicy(policy.rules)
    late = 99_998  # an appraise rule near the end
    r = req("BPRM_CHECK", "MAY_EXEC", uid=late, fsmagic=0x5)
    d = compiled.evaluate(r)
    assert d == evaluate_naive(policy.rules, r)
    assert acts(d) == {"appraise"}
    rule = d.rule_for("appraise")
    assert rule is not None
    assert rule.line == late + 1
    r = req("FILE_CHECK", "MAY_READ", fowner=99_993, fsmagic=0x4)
    assert acts(compiled.evaluate(r)) == set()  # dont_measure fsmagic=0x4 comes first
    r = req("FILE_CHECK", "MAY_READ", fowner=99_993, fsmagic=0x1)
    assert acts(compiled.evaluate(r)) == {"measure"}


def test_repeated_permit_directio() -> None:
    line = "measure " + " ".join(["permit_directio"] * 500)
    # 8 KiB: longer than the kernel takes in one write; fine in imaguard mode
    with pytest.raises(PolicyError):
        parse_policy(line)
    rule = parse_policy(line, mode="imaguard").rules[0]
    assert rule.permit_directio is True
    assert rule.canonical() == "measure permit_directio"
    short = "measure " + " ".join(["permit_directio"] * 200)
    assert parse_policy(short).rules[0].canonical() == "measure permit_directio"


def test_deeply_repeated_options() -> None:
    line = "measure " + " ".join(f"fsname=a{i}" for i in range(1000))
    rule = parse_policy(line, mode="imaguard").rules[0]
    assert rule.fsname == "a999"  # the later one wins (ima_parse_rule)
    with pytest.raises(PolicyError):
        parse_policy(line)  # too long for one kernel write
    same = "measure " + " ".join(["fsname=a"] * 400)
    assert parse_policy(same).rules[0].canonical() == "measure fsname=a"
    with pytest.raises(PolicyError) as exc:
        parse_policy("measure " + " ".join(["uid=0"] * 600))
    assert exc.value.problems[0][2] == 15
    with pytest.raises(PolicyError):
        parse_policy("measure " + " ".join(["func=FILE_CHECK"] * 200))
    with pytest.raises(PolicyError):
        parse_policy(" ".join(["measure"] * 400))


def test_many_bad_lines_do_not_explode() -> None:
    text = "bogus\n" * 10_000
    with pytest.raises(PolicyError) as exc:
        parse_policy(text)
    problems = exc.value.problems
    assert len(problems) == 10_000  # every bad line is named, none twice
    assert [(line, col) for _src, line, col, _why in problems] == [(n, 1) for n in range(1, 10_001)]
    assert exc.value.problems[0][:3] == ("<policy>", 1, 1)


_FRAGMENTS = st.sampled_from(
    [
        "measure",
        "dont_measure",
        "appraise",
        "dont_appraise",
        "audit",
        "hash",
        "dont_hash",
        "func=",
        "FILE_CHECK",
        "KEY_CHECK",
        "CRITICAL_DATA",
        "SETXATTR_CHECK",
        "PLUGIN_CHECK",
        "mask=",
        "^",
        "MAY_READ",
        "fsmagic=",
        "0x",
        "ff",
        "fsname=",
        "fsuuid=",
        "0123abcd-4567-89ab-cdef-0123456789ab",
        "uid",
        "euid",
        "gid",
        "egid",
        "fowner",
        "fgroup",
        "=",
        "<",
        ">",
        "+",
        "-",
        "0",
        "4294967295",
        "99999999999999999999999999",
        "obj_type=",
        "subj_user=",
        "keyrings=",
        "label=",
        "|",
        ",",
        "pcr=",
        "64",
        "template=",
        "ima-sig",
        "d-ng|n-ng",
        "appraise_type=",
        "imasig",
        "imasig|modsig",
        "sigv3",
        "digest_type=verity",
        "appraise_algos=",
        "sha256",
        "appraise_flag=",
        "permit_directio",
        "path=",
        "path_prefix=",
        "/usr",
        "cache=no",
        " ",
        "\t",
        "\n",
        "\r",
        "\0",
        "#",
        "#@ version 3",
        "é",
        "\udc80",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_FRAGMENTS, max_size=40).map("".join), st.sampled_from(["kernel", "imaguard"]))
def test_fuzz_token_soup_only_raises_policy_error(text: str, mode: str) -> None:
    try:
        policy = parse_policy(text, mode=mode)  # type: ignore[arg-type]
    except PolicyError as e:
        problems = e.problems
        message = str(e)
    else:
        problems, message = [], ""
    if message:
        assert problems or "no rules" in message
        return
    assert isinstance(policy, Policy)
    assert len(policy) >= 1
    # whatever was accepted prints canonically and re-parses to the same text
    assert parse_policy(policy.text(), mode=mode).text() == policy.text()  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.binary()), st.sampled_from(["kernel", "imaguard"]))
@example("measure\n", "kernel")
@example(b"\xff", "kernel")
@example("\udcff", "kernel")
def test_fuzz_arbitrary_input_only_raises_policy_error(data: str | bytes, mode: str) -> None:
    try:
        policy = parse_policy(data, mode=mode)  # type: ignore[arg-type]
    except PolicyError:
        return
    assert isinstance(policy, Policy)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_parse_rule_only_raises_policy_error(text: str) -> None:
    try:
        rule = parse_rule(text, mode="imaguard")
    except PolicyError:
        return
    assert isinstance(rule, Rule)


def test_parsed_policy_decides_like_its_text() -> None:
    # sanity: parse + evaluate a small realistic policy end to end
    policy = parse_policy(
        "#@ version 2\n"
        "dont_measure fsmagic=0x9fa0\n"
        "measure func=BPRM_CHECK mask=MAY_EXEC\n"
        "appraise func=BPRM_CHECK appraise_type=imasig\n"
    )
    d = decide_both(policy.rules, req("BPRM_CHECK", "MAY_EXEC"))
    assert acts(d) == {"measure", "appraise"}
    assert d.appraise_type == "imasig"
