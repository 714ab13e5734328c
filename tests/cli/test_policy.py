"""The ``imaguard policy`` commands: the contract of issue 3 (exit codes, the
``FILE:LINE:COL: reason`` lines, canonical ``show`` output, and the ``eval --json`` object).

Run in-process through ``imaguard.cli.main`` (fast), plus a few subprocess runs of the
installed script.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers.clirun import run_in_process as run
from imaguard.policy import builtin_policy

IMAGUARD = Path(sys.executable).with_name("imaguard")
ERROR_LINE = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<col>\d+): (?P<reason>.+)$")

REQUIRED_KEYS = {
    "measure",
    "appraise",
    "audit",
    "hash",
    "appraise_type",
    "appraise_algos",
    "digest_type",
    "pcr",
    "template",
    "permit_directio",
    "provenance",
}


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


# --------------------------------------------------------------------------------------
# policy check
# --------------------------------------------------------------------------------------


def test_check_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "ok.policy", "# c\nmeasure func=BPRM_CHECK\nappraise fowner=0\n")
    code, out, _ = run(capsys, "policy", "check", f)
    assert code == 0
    assert out == ""


def test_check_invalid_prints_file_line_col(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(
        tmp_path,
        "bad.policy",
        "measure func=BPRM_CHECK\nmeasure func=BOGUS\nhash pcr=3\nmeasure uid=0 euid=0\n",
    )
    code, out, _ = run(capsys, "policy", "check", f)
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 3
    parsed = [ERROR_LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [(m["file"], int(m["line"]), int(m["col"])) for m in parsed if m] == [
        (str(f), 2, 9),
        (str(f), 3, 6),
        (str(f), 4, 15),
    ]
    assert "pcr" in lines[1]


def test_check_several_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.policy", "measure\n")
    bad = write(tmp_path, "bad.policy", "measure\nfrobnicate\n")
    code, out, _ = run(capsys, "policy", "check", good, bad, good)
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{bad}:2:1: ")


def test_check_unreadable_file_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.policy"
    code, _out, err = run(capsys, "policy", "check", missing)
    assert code == 2
    assert str(missing) in err
    code, _out, err = run(capsys, "policy", "check", tmp_path)  # a directory
    assert code == 2
    bad = write(tmp_path, "bad.policy", "frobnicate\n")
    code, out, _err = run(capsys, "policy", "check", bad, missing)
    assert code == 2  # the operational error dominates
    assert out.startswith(f"{bad}:1:1: ")


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (b"measure\nmeasure fsname=\xff\n", (2, 16)),
        (b"measure\n\nmeasure fsname=a\0b\n", (3, 17)),
        (b"measure\r\n", (1, 1)),
        (b"", (1, 1)),
        (b"# only a comment\n", (1, 1)),
        (b"measure fsname=" + b"x" * 100_000 + b"\n", (1, 1)),
    ],
)
def test_check_bad_bytes_are_exit_1_with_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, where: tuple[int, int]
) -> None:
    f = write(tmp_path, "x.policy", content)
    code, out, _ = run(capsys, "policy", "check", f)
    assert code == 1
    m = ERROR_LINE.match(out.splitlines()[0])
    assert m, out
    assert m["file"] == str(f)
    assert (int(m["line"]), int(m["col"])) == where


def test_check_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "app.policy", "appraise func=PLUGIN_CHECK path_prefix=/opt/plugins/\n")
    code, out, _ = run(capsys, "policy", "check", f)
    assert code == 1
    assert "imaguard mode" in out
    code, out, _ = run(capsys, "policy", "check", "--policy-mode", "imaguard", f)
    assert code == 0
    code, _, _ = run(capsys, "policy", "check", "--policy-mode", "kernel", f)
    assert code == 1
    code, _, _ = run(capsys, "policy", "check", "--policy-mode", "lenient", f)
    assert code == 2


def test_old_spellings_mode_and_func_are_hidden_aliases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(tmp_path, "app.policy", "measure func=PLUGIN_CHECK\n")
    assert run(capsys, "policy", "check", "--mode", "imaguard", f)[0] == 0
    assert run(capsys, "policy", "check", "--mode", "kernel", f)[0] == 1
    new = ev(capsys, "--policy", f, "--policy-mode", "imaguard", "--hook", "PLUGIN_CHECK")
    old = ev(capsys, "--policy", f, "--mode", "imaguard", "--func", "PLUGIN_CHECK")
    assert new == old
    assert new["measure"] is True
    code, _, err = run(
        capsys, "policy", "eval", "--policy", f, "--policy-mode", "imaguard",
        "--hook", "PLUGIN_CHECK", "--func", "FILE_CHECK",
    )  # fmt: skip
    assert code == 2
    assert "--func" in err
    for verb in ("check", "show", "eval"):
        code, out, _ = run(capsys, "policy", verb, "--help")
        assert code == 0
        assert "--policy-mode" in out
        assert "--mode" not in out.replace("--policy-mode", "")
        assert "--func" not in out


# --------------------------------------------------------------------------------------
# policy show
# --------------------------------------------------------------------------------------


def test_show_file_prints_canonical_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(
        tmp_path,
        "p.policy",
        "# comment\n  measure uid=0 func=PATH_CHECK mask=^MAY_READ # why\n"
        "appraise appraise_algos=sha512,sha256 fsmagic=EF53\n",
    )
    code, out, _ = run(capsys, "policy", "show", f)
    assert code == 0
    assert out == (
        "measure func=FILE_CHECK mask=^MAY_READ uid=0 \n"
        "appraise fsmagic=0xef53 appraise_algos=sha256,sha512 \n"
    )


@pytest.mark.parametrize(
    "names", ["tcb", "tcb|appraise_tcb", "tcb,appraise_tcb,secure_boot", "critical_data|ima_tcb"]
)
def test_show_builtin(capsys: pytest.CaptureFixture[str], names: str) -> None:
    code, out, _ = run(capsys, "policy", "show", "--builtin", names)
    assert code == 0
    assert out == builtin_policy(names).policy.text()
    assert out.endswith(" \n")


def test_show_builtin_separators_are_equivalent(capsys: pytest.CaptureFixture[str]) -> None:
    outs = {
        run(capsys, "policy", "show", "--builtin", n)[1]
        for n in ("tcb,secure_boot", "tcb|secure_boot")
    }
    assert len(outs) == 1


def test_show_imaguard_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "app.policy", "appraise cache=no path=/usr/bin/sudo func=PLUGIN_CHECK\n")
    code, out, _ = run(capsys, "policy", "show", "--policy-mode", "imaguard", f)
    assert code == 0
    assert out == "appraise func=PLUGIN_CHECK path=/usr/bin/sudo cache=no \n"


def test_show_usage_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "p.policy", "measure\n")
    assert run(capsys, "policy", "show")[0] == 2
    assert run(capsys, "policy", "show", "--builtin", "tcb", f)[0] == 2
    assert run(capsys, "policy", "show", "--builtin", "nope")[0] != 0
    assert run(capsys, "policy", "show", tmp_path / "missing")[0] == 2
    bad = write(tmp_path, "bad.policy", "measure\nbogus\n")
    code, out, _ = run(capsys, "policy", "show", bad)
    assert code == 1  # as policy check: invalid is 1, unreadable 2
    assert out.startswith(f"{bad}:2:1: ")
    assert (code, out) == run(capsys, "policy", "check", bad)[:2]


def test_show_help_states_the_verity_order_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "policy", "show", "--help")
    assert code == 0
    assert "digest_type=verity" in out
    assert "ima_policy_show()" in out
    f = write(
        tmp_path, "v.policy", "appraise func=BPRM_CHECK digest_type=verity appraise_type=sigv3\n"
    )
    code, out, _ = run(capsys, "policy", "show", f)
    assert code == 0
    assert out == "appraise func=BPRM_CHECK digest_type=verity appraise_type=sigv3 \n"


# --------------------------------------------------------------------------------------
# policy eval --json
# --------------------------------------------------------------------------------------


def ev(capsys: pytest.CaptureFixture[str], *args: str | os.PathLike[str]) -> dict[str, Any]:
    code, out, _ = run(capsys, "policy", "eval", *args, "--json")
    assert code == 0
    obj = json.loads(out)  # exactly one JSON document on stdout
    assert isinstance(obj, dict)
    _check_types(obj)
    return obj


def _check_types(obj: dict[str, Any]) -> None:
    missing = REQUIRED_KEYS - set(obj)
    assert not missing, missing
    for k in ("measure", "appraise", "audit", "hash", "permit_directio"):
        assert type(obj[k]) is bool, k
    assert obj["appraise_type"] in (None, "imasig", "imasig|modsig", "sigv3")
    assert obj["appraise_algos"] is None or (
        isinstance(obj["appraise_algos"], list)
        and all(isinstance(a, str) for a in obj["appraise_algos"])
    )
    assert obj["digest_type"] in (None, "verity")
    assert type(obj["pcr"]) is int
    assert obj["template"] is None or isinstance(obj["template"], str)
    assert isinstance(obj["provenance"], list)
    for p in obj["provenance"]:
        assert set(p) == {"action", "policy", "line", "rule"}
        assert isinstance(p["action"], str)
        assert isinstance(p["policy"], str)
        assert type(p["line"]) is int
        assert isinstance(p["rule"], str)


def kinds(obj: dict[str, Any]) -> set[str]:
    return {k for k in ("measure", "appraise", "audit", "hash") if obj[k]}


def test_eval_json_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(
        tmp_path,
        "exec.policy",
        "dont_measure fsmagic=0x9fa0\n"
        "measure func=BPRM_CHECK mask=MAY_EXEC pcr=11 template=ima-sig permit_directio\n"
        "appraise func=BPRM_CHECK appraise_type=imasig appraise_algos=sha512,sha256\n"
        "audit\n",
    )
    obj = ev(
        capsys, "--policy", f, "--hook", "BPRM_CHECK", "--mask", "MAY_EXEC", "--fsmagic", "ef53"
    )
    assert kinds(obj) == {"measure", "appraise", "audit"}
    assert obj["pcr"] == 11
    assert obj["template"] == "ima-sig"
    assert obj["appraise_type"] == "imasig"
    assert obj["appraise_algos"] == ["sha256", "sha512"]
    assert obj["digest_type"] is None
    assert obj["permit_directio"] is True  # within one policy the flags are OR'd (ima_match_policy)
    assert obj["provenance"] == [
        {
            "action": "measure",
            "policy": "exec",
            "line": 2,
            "rule": "measure func=BPRM_CHECK mask=MAY_EXEC pcr=11 template=ima-sig permit_directio",
        },
        {
            "action": "appraise",
            "policy": "exec",
            "line": 3,
            "rule": "appraise func=BPRM_CHECK appraise_algos=sha256,sha512 appraise_type=imasig",
        },
        {"action": "audit", "policy": "exec", "line": 4, "rule": "audit"},
    ]


def test_eval_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "p.policy", "measure func=MODULE_CHECK\n")
    obj = ev(capsys, "--policy", f, "--hook", "FILE_CHECK")
    assert kinds(obj) == set()
    assert obj["pcr"] == 10
    assert (obj["template"], obj["appraise_type"], obj["appraise_algos"]) == (None, None, None)
    assert obj["provenance"] == []
    obj = ev(capsys, "--policy", f, "--hook", "MODULE_CHECK")
    assert kinds(obj) == {"measure"}
    assert obj["pcr"] == 10


def test_eval_appraise_type_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(
        tmp_path,
        "t.policy",
        "appraise func=MODULE_CHECK appraise_type=imasig|modsig\n"
        "appraise func=BPRM_CHECK digest_type=verity appraise_type=sigv3\n"
        "appraise func=FIRMWARE_CHECK appraise_type=imasig\n"
        "appraise func=FILE_CHECK\n",
    )
    want = {
        "MODULE_CHECK": ("imasig|modsig", None),
        "BPRM_CHECK": ("sigv3", "verity"),
        "FIRMWARE_CHECK": ("imasig", None),
        "FILE_CHECK": (None, None),
    }
    for func, (atype, dtype) in want.items():
        obj = ev(capsys, "--policy", f, "--hook", func)
        assert obj["appraise"] is True
        assert (obj["appraise_type"], obj["digest_type"]) == (atype, dtype), func


def test_eval_mask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(
        tmp_path,
        "m.policy",
        "measure func=FILE_CHECK mask=MAY_READ\naudit func=FILE_CHECK mask=^MAY_WRITE\n",
    )
    obj = ev(capsys, "--policy", f, "--hook", "FILE_CHECK", "--mask", "MAY_READ")
    assert kinds(obj) == {"measure"}
    obj = ev(capsys, "--policy", f, "--hook", "FILE_CHECK", "--mask", "MAY_READ|MAY_WRITE")
    assert kinds(obj) == {"audit"}
    obj = ev(capsys, "--policy", f, "--hook", "PATH_CHECK", "--mask", "MAY_WRITE|MAY_APPEND")
    assert kinds(obj) == {"audit"}
    assert (
        run(
            capsys,
            "policy",
            "eval",
            "--policy",
            f,
            "--hook",
            "FILE_CHECK",
            "--mask",
            "MAY_OPEN",
            "--json",
        )[0]
        == 2
    )


@pytest.mark.parametrize("names", ["tcb,appraise_tcb", "tcb|appraise_tcb", "appraise_tcb|tcb"])
def test_eval_builtin_separators(capsys: pytest.CaptureFixture[str], names: str) -> None:
    obj = ev(
        capsys,
        "--builtin",
        names,
        "--hook",
        "FILE_CHECK",
        "--mask",
        "MAY_READ",
        "--uid",
        "0",
        "--fowner",
        "0",
        "--fsmagic",
        "ef53",
    )
    assert kinds(obj) == {"measure", "appraise"}
    assert {p["policy"] for p in obj["provenance"]} == {"builtin"}
    assert [p["line"] for p in obj["provenance"]] == [16, 35]  # euid=0 rule (euid = uid)
    obj = ev(
        capsys,
        "--builtin",
        names,
        "--hook",
        "FILE_CHECK",
        "--mask",
        "MAY_READ",
        "--uid",
        "0",
        "--fowner",
        "0",
        "--fsmagic",
        "9fa0",
    )
    assert kinds(obj) == set()


def test_eval_policy_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path, "guard.policy", "appraise func=BPRM_CHECK appraise_type=imasig\n")
    b = write(tmp_path, "b.policy", "dont_appraise\nappraise fowner=5\nmeasure pcr=12\n")
    obj = ev(
        capsys,
        "--policy",
        f"exec-guard={a}",
        "--policy",
        b,
        "--hook",
        "BPRM_CHECK",
        "--mask",
        "MAY_EXEC",
    )
    assert kinds(obj) == {"appraise", "measure"}
    assert obj["appraise_type"] == "imasig"
    assert obj["pcr"] == 12
    prov = {(p["action"], p["policy"], p["line"]) for p in obj["provenance"]}
    assert prov == {("appraise", "exec-guard", 1), ("dont_appraise", "b", 1), ("measure", "b", 3)}


def test_eval_conflict_fails_closed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path, "a.policy", "appraise appraise_algos=sha256\n")
    b = write(tmp_path, "b.policy", "appraise appraise_algos=sha512\n")
    obj = ev(capsys, "--policy", a, "--policy", b, "--hook", "FILE_CHECK")
    assert obj["appraise"] is True
    assert not obj["appraise_algos"]


def test_eval_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "p.policy", "measure\n")
    assert run(capsys, "policy", "eval", "--hook", "FILE_CHECK", "--json")[0] == 2
    assert run(capsys, "policy", "eval", "--policy", f, "--json")[0] == 2  # no --func
    assert (
        run(
            capsys,
            "policy",
            "eval",
            "--policy",
            f,
            "--hook",
            "FILE_CHECK",
            "--fsmagic",
            "zz",
            "--json",
        )[0]
        == 2
    )
    assert (
        run(
            capsys, "policy", "eval", "--policy", f, "--hook", "FILE_CHECK", "--uid", "x", "--json"
        )[0]
        == 2
    )
    assert (
        run(
            capsys,
            "policy",
            "eval",
            "--policy",
            tmp_path / "missing",
            "--hook",
            "FILE_CHECK",
            "--json",
        )[0]
        == 2
    )
    bad = write(tmp_path, "bad.policy", "measure\nbogus\n")
    code, out, err = run(
        capsys, "policy", "eval", "--policy", bad, "--hook", "FILE_CHECK", "--json"
    )
    assert code != 0
    assert out == ""
    assert f"{bad}:2:1" in err


# Every subject/object option changes the result at least once.

OPTION_CASES: list[tuple[str, str, list[str], list[str], str]] = [
    # (id, policy, args that match, args that do not, mode)
    ("uid", "measure uid=0", ["--uid", "0"], ["--uid", "5"], "kernel"),
    (
        "euid",
        "measure euid=0",
        ["--uid", "5", "--euid", "0"],
        ["--uid", "5", "--euid", "6"],
        "kernel",
    ),
    ("gid", "measure gid=0", ["--gid", "0"], ["--gid", "5"], "kernel"),
    (
        "egid",
        "measure egid=0",
        ["--gid", "5", "--egid", "0"],
        ["--gid", "5", "--egid", "7"],
        "kernel",
    ),
    ("fowner", "measure fowner<1000", ["--fowner", "0"], ["--fowner", "1000"], "kernel"),
    ("fgroup", "measure fgroup>10", ["--fgroup", "11"], ["--fgroup", "10"], "kernel"),
    (
        "fsmagic",
        "dont_measure fsmagic=0x9fa0\nmeasure",
        ["--fsmagic", "ef53"],
        ["--fsmagic", "9fa0"],
        "kernel",
    ),
    (
        "fsmagic-0x",
        "dont_measure fsmagic=0x9fa0\nmeasure",
        ["--fsmagic", "0xef53"],
        ["--fsmagic", "0x9FA0"],
        "kernel",
    ),
    ("fsname", "measure fsname=ext4", ["--fsname", "ext4"], ["--fsname", "xfs"], "kernel"),
    (
        "fsuuid",
        "measure fsuuid=0123abcd-4567-89ab-cdef-0123456789ab",
        ["--fsuuid", "0123abcd-4567-89ab-cdef-0123456789ab"],
        ["--fsuuid", "0123abcd-4567-89ab-cdef-0123456789ac"],
        "kernel",
    ),
    (
        "path",
        "measure path_prefix=/usr/",
        ["--path", "/usr/bin/ls"],
        ["--path", "/etc/passwd"],
        "imaguard",
    ),
    (
        "path-exact",
        "measure path=/etc/shadow",
        ["--path", "/etc/shadow"],
        ["--path", "/etc/shadow-"],
        "imaguard",
    ),
    (
        "cap-setuid",
        "measure euid=0",
        ["--uid", "0", "--euid", "5", "--cap-setuid"],
        ["--uid", "0", "--euid", "5"],
        "kernel",
    ),
    (
        "cap-setgid",
        "measure egid=0",
        ["--gid", "0", "--egid", "5", "--cap-setgid"],
        ["--gid", "0", "--egid", "5", "--cap-setuid"],
        "kernel",
    ),
    (
        "subj-user",
        "measure subj_user=staff_u",
        ["--subj-user", "staff_u"],
        ["--obj-user", "staff_u"],
        "kernel",
    ),
    (
        "subj-role",
        "measure subj_role=sysadm_r",
        ["--subj-role", "sysadm_r"],
        ["--subj-role", "staff_r"],
        "kernel",
    ),
    (
        "subj-type",
        "measure subj_type=init_t",
        ["--subj-type", "init_t"],
        ["--obj-type", "init_t"],
        "kernel",
    ),
    (
        "obj-user",
        "measure obj_user=system_u",
        ["--obj-user", "system_u"],
        ["--subj-user", "system_u"],
        "kernel",
    ),
    (
        "obj-role",
        "measure obj_role=object_r",
        ["--obj-role", "object_r"],
        ["--subj-role", "object_r"],
        "kernel",
    ),
    (
        "obj-type",
        "measure obj_type=etc_t",
        ["--obj-type", "etc_t"],
        ["--obj-type", "shadow_t"],
        "kernel",
    ),
]


@pytest.mark.parametrize(
    ("policy", "hit", "miss", "mode"),
    [pytest.param(p, h, m, mode, id=i) for i, p, h, m, mode in OPTION_CASES],
)
def test_eval_option_changes_result(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    policy: str,
    hit: list[str],
    miss: list[str],
    mode: str,
) -> None:
    f = write(tmp_path, "o.policy", policy + "\n")
    base = ["--policy-mode", mode, "--policy", str(f), "--hook", "FILE_CHECK", "--mask", "MAY_READ"]
    assert ev(capsys, *base, *hit)["measure"] is True
    assert ev(capsys, *base, *miss)["measure"] is False
    # without the option the attribute is unknown: only the dont_measure case measures
    assert ev(capsys, *base)["measure"] is policy.startswith("dont_measure")


def test_eval_keyring_and_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(
        tmp_path,
        "d.policy",
        "measure func=KEY_CHECK keyrings=.ima|.evm pcr=12\n"
        "measure func=CRITICAL_DATA label=selinux\n",
    )
    obj = ev(capsys, "--policy", f, "--hook", "KEY_CHECK", "--keyring", ".evm")
    assert (obj["measure"], obj["pcr"]) == (True, 12)
    assert (
        ev(capsys, "--policy", f, "--hook", "KEY_CHECK", "--keyring", ".builtin")["measure"]
        is False
    )
    assert ev(capsys, "--policy", f, "--hook", "KEY_CHECK")["measure"] is False
    # --label is the CRITICAL_DATA name; --keyring does not stand in for it
    assert (
        ev(capsys, "--policy", f, "--hook", "CRITICAL_DATA", "--label", "selinux")["measure"]
        is True
    )
    assert (
        ev(capsys, "--policy", f, "--hook", "CRITICAL_DATA", "--label", "modules")["measure"]
        is False
    )
    assert (
        ev(capsys, "--policy", f, "--hook", "CRITICAL_DATA", "--keyring", "selinux")["measure"]
        is False
    )
    assert ev(capsys, "--policy", f, "--hook", "KEY_CHECK", "--label", ".evm")["measure"] is False


def test_eval_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "p.policy", "measure pcr=11\nappraise appraise_type=imasig\n")
    code, out, _ = run(capsys, "policy", "eval", "--policy", f, "--hook", "BPRM_CHECK")
    assert code == 0
    assert "measure" in out
    assert "appraise" in out
    assert "p:1" in out


# --------------------------------------------------------------------------------------
# The installed script, as a subprocess
# --------------------------------------------------------------------------------------


def _sub(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(IMAGUARD), *(os.fspath(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_subprocess_check(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.policy", b"measure\nmeasure func=NOPE\n\xff\n")
    r = _sub("policy", "check", bad)
    assert r.returncode == 1
    assert "Traceback" not in r.stdout + r.stderr
    first = r.stdout.splitlines()[0]
    m = ERROR_LINE.match(first)
    assert m, r.stdout
    assert (m["file"], m["line"]) == (str(bad), "3")
    r = _sub("policy", "check", tmp_path / "missing.policy")
    assert r.returncode == 2
    assert "Traceback" not in r.stdout + r.stderr


def test_subprocess_eval_json() -> None:
    r = _sub(
        "policy",
        "eval",
        "--builtin",
        "tcb|secure_boot",
        "--hook",
        "MODULE_CHECK",
        "--mask",
        "MAY_READ",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    _check_types(obj)
    assert kinds(obj) == {"measure", "appraise"}
    assert obj["appraise_type"] == "imasig"
    assert obj["pcr"] == 10


def test_dont_audit_and_fs_subtype_in_kernel_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(
        tmp_path,
        "audit.policy",
        "dont_audit fs_subtype=sshfs\naudit func=BPRM_CHECK fsname=fuse\n",
    )
    code, out, _ = run(capsys, "policy", "check", "--policy-mode", "kernel", f)
    assert code == 0, out
    base = ("--policy", f, "--hook", "BPRM_CHECK", "--fsname", "fuse")
    assert ev(capsys, *base)["audit"] is True  # no subtype: fs_subtype= never matches
    assert ev(capsys, *base, "--fs-subtype", "sshfs")["audit"] is False
    assert ev(capsys, *base, "--fs-subtype", "gvfsd-fuse")["audit"] is True
    code, out, _ = run(capsys, "policy", "show", f)
    assert out == "dont_audit fs_subtype=sshfs \naudit func=BPRM_CHECK fsname=fuse \n"
