"""The command-line contract of issue 4: measure, log show/export/pcrs/verify, policy runtime.

Exit codes: 0 success / valid, 1 invalid (verify: findings listed), 2 bad input or an
operational error, always with a message on stderr and never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from helpers.measure import Run, imaguard, imaguard_ok, log_pcrs
from imaguard import load_certificates
from imaguard.formats.keylime import RuntimePolicy
from imaguard.formats.measurelist import parse_ascii, parse_binary

LOG = "binary_runtime_measurements"


@pytest.fixture
def tree(tmp_path: Path) -> list[Path]:
    d = tmp_path / "tree"
    d.mkdir()
    out = []
    for name in ("one", "two", "three four"):
        p = d / name
        p.write_bytes(f"{name}\n".encode() * 3)
        out.append(p)
    return out


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def logged(p: Path) -> str:
    """The name the log holds for a file: the resolved path, spaces as '_'."""
    return str(p.resolve()).replace(" ", "_")


def measured(state: Path, files: list[Path], *args: str) -> Path:
    imaguard_ok("measure", "--state", state, *args, *files)
    return state


def assert_error(r: Run, *needles: str) -> None:
    """Exit 2 with a message on stderr (containing the needles)."""
    assert r.returncode == 2, r.explain()
    assert r.stderr.strip(), r.explain()
    for n in needles:
        assert n in r.stderr, r.explain()


# -- measure ----------------------------------------------------------------------------


def test_measure_appends_one_entry_per_file_after_boot_aggregate(
    state: Path, tree: list[Path]
) -> None:
    r = imaguard_ok("measure", "--state", state, *tree)
    assert r.out.splitlines() == [f"{i + 1} {p}" for i, p in enumerate(tree)]
    lines = imaguard_ok("log", "show", "--state", state).out.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("10 ")
    assert lines[0].endswith(" ima-ng sha256:" + "0" * 64 + " boot_aggregate")
    for line, p in zip(lines[1:], tree, strict=True):
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        assert line.endswith(f" ima-ng sha256:{digest} {logged(p)}"), line
    # A second run appends; the same files again are duplicates.
    r = imaguard_ok("measure", "--state", state, tree[0])
    assert r.out.strip() == f"- {tree[0]} (already measured: hash_exists)"
    tree[0].write_bytes(b"new content\n")
    r = imaguard_ok("measure", "--state", state, tree[0])
    assert r.out.strip() == f"4 {tree[0]}"


def test_measure_recursive_walks_directories(state: Path, tree: list[Path], tmp_path: Path) -> None:
    d = tree[0].parent
    sub = d / "sub"
    sub.mkdir()
    (sub / "five").write_bytes(b"five\n")
    os.symlink(tree[0], d / "link")
    r = imaguard("measure", "--state", state, d)
    assert r.returncode == 2, r.explain()
    assert "use -r" in r.stderr
    r = imaguard_ok("measure", "--state", state, "-r", d)
    added = sorted(line.split(" ", 1)[1] for line in r.out.splitlines())
    assert added == sorted(str(p) for p in [*tree, sub / "five"])
    names = [rec.entry.name for rec in parse_binary((state / LOG).read_bytes())]
    assert len(names) == 5  # boot_aggregate + 4 files; the symlink is not followed
    r = imaguard_ok("measure", "--state", state, "-r", d)
    assert all(line.startswith("- ") for line in r.out.splitlines())  # already measured


@pytest.mark.parametrize(
    "template",
    [
        "ima",
        "ima-ng",
        "ima-ngv2",
        "ima-sig",
        "ima-sigv2",
        "ima-buf",
        "ima-modsig",
        "evm-sig",
        "d-ng|n-ng|iuid|igid|imode",
    ],
)
def test_measure_with_every_template(
    state: Path, tree: list[Path], tmp_path: Path, template: str
) -> None:
    measured(state, tree, "--template", template, "--store", "sigfile")
    ascii_out, bin_out = tmp_path / "log.txt", tmp_path / "log.bin"
    imaguard_ok("log", "export", "--state", state, "--ascii", ascii_out, "--binary", bin_out)
    recs = parse_binary(bin_out.read_bytes())
    assert [r.entry for r in parse_ascii(ascii_out.read_bytes())] == [r.entry for r in recs]
    assert [r.entry.template.name for r in recs] == [template] * 4
    assert [r.entry.name for r in recs] == [b"boot_aggregate"] + [logged(p).encode() for p in tree]
    for rec in recs:
        assert rec.digest == rec.entry.template_digest("sha1")
    if template == "ima":
        assert recs[0].entry.fields[0] == b"\0" * 20
        assert recs[1].entry.fields[0] == hashlib.sha1(tree[0].read_bytes()).digest()  # noqa: S324
    if template in ("evm-sig", "d-ng|n-ng|iuid|igid|imode"):
        st = tree[0].stat()
        line = ascii_out.read_bytes().split(b"\n")[1]
        assert line.endswith(f" {st.st_uid} {st.st_gid} {st.st_mode & 0xFFFF}".encode()), line
    r = imaguard("log", "verify", "--state", state)
    assert r.returncode == 0, r.explain()


@pytest.mark.parametrize("algo", ["sha1", "sha384", "sha512"])
def test_measure_algorithm(state: Path, tree: list[Path], algo: str) -> None:
    measured(state, tree[:1], "-a", algo)
    doc = json.loads(imaguard_ok("log", "show", "--state", state, "--format", "json").stdout)
    digest = hashlib.new(algo, tree[0].read_bytes()).hexdigest()
    assert doc[0]["fields"]["d-ng"] == f"{algo}:" + "00" * hashlib.new(algo).digest_size
    assert doc[1]["fields"]["d-ng"] == f"{algo}:{digest}"


def test_measure_into_another_pcr(state: Path, tree: list[Path], tmp_path: Path) -> None:
    measured(state, tree, "--pcr", "11")
    doc = json.loads(imaguard_ok("log", "show", "--state", state, "--format", "json").stdout)
    assert [e["pcr"] for e in doc] == [10, 11, 11, 11]  # boot_aggregate stays in PCR 10
    pcrs = log_pcrs(state)
    assert set(pcrs["sha1"]) == {"10", "11"}
    # Checked against PCR 10 only, the PCR-11 entries are not covered: a log for another PCR.
    r = imaguard("log", "verify", "--state", state, "--pcrs", f"sha1={pcrs['sha1']['11']}")
    assert r.returncode == 1, r.explain()
    assert "pcr-mismatch:" in r.out
    r = imaguard(
        "log",
        "verify",
        "--state",
        state,
        "--pcrs",
        f"sha1:10={pcrs['sha1']['10']}",
        "--pcrs",
        f"sha1:11={pcrs['sha1']['11']}",
        "--pcrs",
        f"sha256:11={pcrs['sha256']['11']}",
    )
    assert r.returncode == 0, r.explain()


def test_measure_ima_sig_reads_security_ima_by_default(
    state: Path, tree: list[Path], keys_dir: dict[str, Path]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("security.ima needs root; `make test` runs as root")
    imaguard_ok("sign", "--key", keys_dir["rsa2048"] / "private.pem", tree[0])
    measured(state, tree[:2], "--template", "ima-sig")
    lines = imaguard_ok("log", "show", "--state", state).stdout.split(b"\n")
    value = os.getxattr(tree[0], "security.ima")
    assert lines[1].endswith(b" " + value.hex().encode())
    assert lines[2].endswith(b" ")


def test_non_utf8_file_names(state: Path, tmp_path: Path) -> None:
    d = os.fsencode(tmp_path / "raw")
    os.mkdir(d)
    name = d + b"/caf\xe9 \xff"
    with open(name, "wb") as f:
        f.write(b"latin-1 named\n")
    r = imaguard("measure", "--state", state, name)
    assert r.returncode == 0, r.explain()
    text = imaguard_ok("log", "show", "--state", state).stdout
    assert d + b"/caf\xe9_\xff\n" in text
    doc = json.loads(imaguard_ok("log", "show", "--state", state, "--format", "json").stdout)
    assert len(doc) == 2
    out = tmp_path / "log.txt"
    imaguard_ok("log", "export", "--state", state, "--ascii", out)
    assert parse_ascii(out.read_bytes())[1].entry.name == d + b"/caf\xe9_\xff"
    imaguard_ok("log", "verify", "--ascii", out)
    imaguard_ok("log", "verify", "--state", state)
    pol = tmp_path / "pol.json"
    imaguard_ok("policy", "runtime", "--from-log", out, "-o", pol)
    imaguard_ok("log", "verify", "--ascii", out, "--runtime-policy", pol)


# -- log show / export / pcrs -----------------------------------------------------------


def test_show_export_and_pcrs(state: Path, tree: list[Path], tmp_path: Path) -> None:
    measured(state, tree)
    shown = imaguard_ok("log", "show", "--state", state).stdout
    assert shown == imaguard_ok("log", "show", "--state", state, "--format", "ascii").stdout
    a, b = tmp_path / "a.txt", tmp_path / "b.bin"
    imaguard_ok("log", "export", "--state", state, "--ascii", a)
    assert not b.exists()
    assert a.read_bytes() == shown
    imaguard_ok("log", "export", "--state", state, "--binary", b)
    assert b.read_bytes() == (state / LOG).read_bytes()
    a.unlink()
    b.unlink()
    imaguard_ok("log", "export", "--state", state, "--binary", b, "--ascii", a)
    assert a.read_bytes() == shown
    assert b.read_bytes() == (state / LOG).read_bytes()
    r = imaguard("log", "export", "--state", state)
    assert_error(r)

    doc = json.loads(imaguard_ok("log", "show", "--state", state, "--format", "json").stdout)
    assert [e["index"] for e in doc] == [0, 1, 2, 3]
    assert doc[3]["fields"]["n-ng"] == logged(tree[2])
    assert doc[3]["template"] == "ima-ng"
    assert doc[3]["pcr"] == 10
    assert doc[3]["violation"] is False
    assert doc[3]["digest"] == shown.split(b"\n")[3].split(b" ")[1].decode()

    pcrs = log_pcrs(state)
    assert set(pcrs) == {"sha1", "sha256"}
    assert set(pcrs["sha1"]) == {"10"}
    assert set(pcrs["sha256"]) == {"10"}
    assert len(pcrs["sha1"]["10"]) == 40
    assert len(pcrs["sha256"]["10"]) == 64
    # Recomputed here from the ASCII log: PCR = H(PCR || H(template data)).
    expected = {"sha1": b"\0" * 20, "sha256": b"\0" * 32}
    for rec in parse_ascii(shown):
        td = rec.entry.template_data()
        for bank in expected:
            expected[bank] = hashlib.new(
                bank, expected[bank] + hashlib.new(bank, td).digest()
            ).digest()
    assert {b: v["10"] for b, v in pcrs.items()} == {b: v.hex() for b, v in expected.items()}
    text = imaguard_ok("log", "pcrs", "--state", state).out.splitlines()
    assert sorted(text) == sorted(f"{b}:10 {v['10']}" for b, v in pcrs.items())


def test_pcrs_format_evmctl_writes_evmctl_pcr_files(
    state: Path, tree: list[Path], tmp_path: Path
) -> None:
    measured(state, tree)
    pcrs = log_pcrs(state)
    out = tmp_path / "pcrs"
    r = imaguard_ok("log", "pcrs", "--state", state, "--format", "evmctl", "-o", out)
    assert r.out.split() == [
        "--pcrs", f"sha1,{out / 'pcrs-sha1.txt'}", "--pcrs", f"sha256,{out / 'pcrs-sha256.txt'}"
    ]  # fmt: skip
    for bank, size in (("sha1", 20), ("sha256", 32)):
        lines = (out / f"pcrs-{bank}.txt").read_text().splitlines()
        assert [line.split(": ")[0] for line in lines] == [f"PCR-{i:02d}" for i in range(24)]
        values = [line.split(": ")[1] for line in lines]
        assert values[10] == pcrs[bank]["10"]
        assert all(v == "00" * size for i, v in enumerate(values) if i != 10)
    assert json.loads(imaguard_ok("log", "pcrs", "--state", state, "--format", "json").stdout) == (
        pcrs
    )
    assert_error(imaguard("log", "pcrs", "--state", state, "--format", "evmctl"), "-o DIR")
    assert_error(imaguard("log", "pcrs", "--state", state, "-o", out), "-o DIR")
    assert_error(imaguard("log", "pcrs", "--state", state, "--json", "--format", "text"), "--json")


# -- log verify -------------------------------------------------------------------------


def test_verify_sources_and_outputs(state: Path, tree: list[Path], tmp_path: Path) -> None:
    measured(state, tree)
    pcrs = log_pcrs(state)
    a, b = tmp_path / "a.txt", tmp_path / "b.bin"
    imaguard_ok("log", "export", "--state", state, "--ascii", a, "--binary", b)
    given = ["--pcrs", f"sha1={pcrs['sha1']['10']}", "--pcrs", f"sha256={pcrs['sha256']['10']}"]
    for source in (["--state", str(state)], ["--binary", str(b)], ["--ascii", str(a)]):
        r = imaguard_ok("log", "verify", *source, *given)
        assert "valid" in r.stderr
        r = imaguard_ok("log", "verify", *source, *given, "--json")
        doc = json.loads(r.stdout)
        assert doc["valid"] is True
        assert doc["entries"] == 4
        assert doc["findings"] == []
        assert doc["matched_at"] == 4
        assert doc["pcrs"]["sha1"]["10"] == pcrs["sha1"]["10"]
    wrong = ["--pcrs", "sha1=" + "11" * 20]
    r = imaguard("log", "verify", "--binary", b, *wrong)
    assert r.returncode == 1, r.explain()
    assert "pcr-mismatch:" in r.out
    assert "INVALID" in r.stderr
    r = imaguard("log", "verify", "--binary", b, *wrong, "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["valid"] is False
    assert [f["code"] for f in doc["findings"]] == ["pcr-mismatch"]


def test_verify_without_a_reference_says_pcrs_not_checked(
    state: Path, tree: list[Path], tmp_path: Path
) -> None:
    measured(state, tree)
    b = tmp_path / "b.bin"
    imaguard_ok("log", "export", "--state", state, "--binary", b)
    r = imaguard_ok("log", "verify", "--binary", b)
    assert "PCRs not checked" in r.stderr
    assert "internal consistency" in r.stderr
    assert "4 entries: valid (PCRs not checked)" in r.stderr
    doc = json.loads(imaguard_ok("log", "verify", "--binary", b, "--json").stdout)
    assert doc["valid"] is True
    assert doc["pcrs_checked"] is False
    assert any("PCRs not checked" in n for n in doc["notes"])
    pcrs = log_pcrs(state)
    given = ("--pcrs", f"sha1={pcrs['sha1']['10']}")
    r = imaguard_ok("log", "verify", "--binary", b, *given)
    assert "not checked" not in r.stderr
    doc = json.loads(imaguard_ok("log", "verify", "--binary", b, *given, "--json").stdout)
    assert doc["pcrs_checked"] is True
    assert not any("not checked" in n for n in doc["notes"])


def test_verify_reports_every_finding(state: Path, tree: list[Path], tmp_path: Path) -> None:
    measured(state, tree)
    b = tmp_path / "b.bin"
    imaguard_ok("log", "export", "--state", state, "--binary", b)
    data = bytearray(b.read_bytes())
    for rec in parse_binary(bytes(data))[1:]:
        name = rec.entry.name
        i = data.index(name)
        data[i + len(name) - 1] ^= 0x01  # last character of the name; digest kept
    b.write_bytes(bytes(data))
    r = imaguard("log", "verify", "--binary", b, "--json")
    assert r.returncode == 1, r.explain()
    found = [(f["code"], f["index"]) for f in json.loads(r.stdout)["findings"]]
    assert found == [("template-hash", 1), ("template-hash", 2), ("template-hash", 3)]


def test_verify_with_runtime_policy_and_keyring(
    state: Path, tree: list[Path], tmp_path: Path, keys_dir: dict[str, Path]
) -> None:
    key = keys_dir["ecdsa-p256"]
    imaguard_ok("sign", "--key", key / "private.pem", "--store", "sigfile", tree[0])
    measured(state, tree, "--template", "ima-sig", "--store", "sigfile")
    pol = tmp_path / "pol.json"
    imaguard_ok("policy", "runtime", "--from-log", state / LOG, "-o", pol)
    imaguard_ok("log", "verify", "--state", state, "--runtime-policy", pol, "--keyring", key)
    doc = json.loads(pol.read_text())
    del doc["digests"][str(tree[1].resolve())]
    pol.write_text(json.dumps(doc))
    r = imaguard("log", "verify", "--state", state, "--runtime-policy", pol)
    assert r.returncode == 1, r.explain()
    assert f"not-in-policy: entry 2: {tree[1].resolve()}" in r.out
    r = imaguard("log", "verify", "--state", state, "--keyring", keys_dir["rsa2048"] / "cert.der")
    assert r.returncode == 1, r.explain()
    assert "unknown-key:" in r.out


# -- policy runtime ---------------------------------------------------------------------


def test_policy_runtime_rootfs_keyring_and_zero_boot_aggregate(
    state: Path, tree: list[Path], tmp_path: Path, keys_dir: dict[str, Path]
) -> None:
    measured(state, tree)
    root = str(tree[0].parent.resolve())
    out = tmp_path / "p.json"
    r = imaguard_ok("policy", "runtime", "--from-log", state / LOG, "-o", out, "--rootfs", root)
    assert "all-zero boot_aggregate" in r.stderr  # a log made without a TPM
    pol = RuntimePolicy.parse(out.read_text())
    assert sorted(pol.digests) == sorted(["boot_aggregate", "/one", "/two", "/three_four"])
    assert pol.digests["/one"] == (hashlib.sha256(tree[0].read_bytes()).hexdigest(),)
    imaguard_ok("policy", "runtime", "--from-log", state / LOG, "-o", out, "--rootfs",
                f"{root}=/usr/lib/app/")  # fmt: skip
    assert "/usr/lib/app/one" in RuntimePolicy.parse(out.read_text()).digests
    # only whole path components match: /x/tre is not a prefix of /x/tree/one
    imaguard_ok("policy", "runtime", "--from-log", state / LOG, "-o", out, "--rootfs", root[:-1])
    assert logged(tree[0]) in RuntimePolicy.parse(out.read_text()).digests
    r = imaguard("policy", "runtime", "--from-log", state / LOG, "-o", out, "--rootfs", "rel")
    assert_error(r, "--rootfs")

    r = imaguard_ok("policy", "runtime", "--from-tree", tree[0].parent, "-o", out)
    assert "boot_aggregate" not in r.stderr
    certs = [keys_dir[k] / "cert.der" for k in ("rsa2048", "ecdsa-p256")]
    imaguard_ok("policy", "runtime", "--from-tree", tree[0].parent, "-o", out,
                "--keyring", certs[0], "--keyring", certs[1])  # fmt: skip
    keys = RuntimePolicy.parse(out.read_text()).public_keys()
    expected = []
    for c in certs:
        cert = load_certificates(c)[0]
        spki = cert.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        expected.append((cert.key_id, spki))
    assert sorted(keys) == sorted(expected)
    assert_error(
        imaguard("policy", "runtime", "--from-tree", tree[0].parent, "-o", out,
                 "--keyring", tmp_path / "none"),
    )  # fmt: skip
    assert json.loads(out.read_text())["verification-keys"]  # the failed run left it whole


def test_policy_runtime_from_log_and_tree(state: Path, tree: list[Path], tmp_path: Path) -> None:
    measured(state, tree)
    a, b = tmp_path / "a.txt", tmp_path / "b.bin"
    imaguard_ok("log", "export", "--state", state, "--ascii", a, "--binary", b)
    pa, pb, pt = tmp_path / "pa.json", tmp_path / "pb.json", tmp_path / "pt.json"
    imaguard_ok("policy", "runtime", "--from-log", a, "-o", pa)
    imaguard_ok("policy", "runtime", "--from-log", b, "-o", pb)
    assert RuntimePolicy.parse(pa.read_text()) == RuntimePolicy.parse(pb.read_text())
    pol = RuntimePolicy.parse(pa.read_text())
    assert pol.digests["boot_aggregate"] == ("00" * 32,)
    for p in tree:
        assert pol.digests[logged(p)] == (hashlib.sha256(p.read_bytes()).hexdigest(),)
    assert pol.log_hash_alg == "sha1"
    sha256_col = tmp_path / "a256.txt"
    imaguard_ok("log", "export", "--state", state, "--ascii", sha256_col, "--bank", "sha256")
    p256 = tmp_path / "p256.json"
    imaguard_ok("policy", "runtime", "--from-log", sha256_col, "-o", p256)
    assert RuntimePolicy.parse(p256.read_text()).log_hash_alg == "sha256"
    imaguard_ok(
        "policy",
        "runtime",
        "--from-tree",
        tree[0].parent,
        "-a",
        "sha512",
        "-o",
        pt,
        "--exclude",
        "/var/log/",
    )
    pol = RuntimePolicy.parse(pt.read_text())
    assert pol.digests[str(tree[0].resolve())] == (
        hashlib.sha512(tree[0].read_bytes()).hexdigest(),
    )
    assert pol.excludes == ("/var/log/",)
    assert_error(imaguard("policy", "runtime", "-o", pt))
    assert_error(
        imaguard("policy", "runtime", "--from-log", a, "--from-tree", tree[0].parent, "-o", pt)
    )
    assert_error(imaguard("policy", "runtime", "--from-log", a))


# -- bad input --------------------------------------------------------------------------


def test_unknown_template(state: Path, tree: list[Path]) -> None:
    r = imaguard("measure", "--state", state, "--template", "ima-foo", tree[0])
    assert_error(r, "ima-foo")
    assert not (state / LOG).exists(), "nothing may be created for a refused command"


def test_missing_file_is_an_error_but_the_others_are_measured(
    state: Path, tree: list[Path], tmp_path: Path
) -> None:
    missing = tmp_path / "missing"
    r = imaguard("measure", "--state", state, tree[0], missing, tree[1])
    assert_error(r, str(missing))
    assert r.out.splitlines() == [f"1 {tree[0]}", f"2 {tree[1]}"]
    imaguard_ok("log", "verify", "--state", state)


def test_fifo_and_directory_are_refused_without_blocking(state: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = imaguard("measure", "--state", state, fifo, timeout=20)
    assert_error(r, str(fifo))
    r = imaguard("measure", "--state", state, tmp_path, timeout=20)
    assert_error(r, str(tmp_path))
    data = (state / LOG).read_bytes()
    assert [r.entry.name for r in parse_binary(data)] == [b"boot_aggregate"]
    imaguard_ok("log", "verify", "--state", state)


@pytest.mark.parametrize(
    "spec",
    [
        "garbage",
        "sha1=zz",
        "sha1=abcd",
        "sha1=" + "00" * 21,
        "md5=" + "00" * 16,
        "sha999=" + "00" * 20,
        "sha1:x=" + "00" * 20,
        "=" + "00" * 20,
        "sha256=" + "00" * 20,
    ],
)
def test_garbage_pcrs(state: Path, tree: list[Path], spec: str) -> None:
    measured(state, tree[:1])
    r = imaguard("log", "verify", "--state", state, "--pcrs", spec)
    assert_error(r, "--pcrs")


def test_unreadable_and_malformed_logs(state: Path, tree: list[Path], tmp_path: Path) -> None:
    missing = tmp_path / "nope.bin"
    assert_error(imaguard("log", "verify", "--binary", missing), str(missing))
    assert_error(imaguard("log", "verify", "--ascii", missing), str(missing))
    assert_error(imaguard("log", "verify", "--binary", tmp_path))
    assert_error(imaguard("log", "show", "--state", tmp_path / "no-state"))
    assert_error(imaguard("log", "pcrs", "--state", tmp_path / "no-state"))
    assert_error(
        imaguard("log", "export", "--state", tmp_path / "no-state", "--ascii", tmp_path / "x")
    )
    assert_error(imaguard("policy", "runtime", "--from-log", missing, "-o", tmp_path / "p.json"))
    # A state whose log is damaged: every reader says so.
    measured(state, tree)
    data = bytearray((state / LOG).read_bytes())
    data[0] = 99  # PCR 99
    (state / LOG).write_bytes(bytes(data))
    readers: list[list[str | Path]] = [
        ["log", "show", "--state", state],
        ["log", "pcrs", "--state", state],
        ["log", "export", "--state", state, "--binary", tmp_path / "out.bin"],
        ["measure", "--state", state, tree[0]],
    ]
    for args in readers:
        assert_error(imaguard(*args))
    r = imaguard("log", "verify", "--state", state, "--json")
    assert r.returncode in (1, 2), r.explain()
    if r.returncode == 1:
        assert "parse" in {f["code"] for f in json.loads(r.stdout)["findings"]}
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(os.urandom(64) + b"\xff" * 8)
    assert_error(imaguard("policy", "runtime", "--from-log", garbage, "-o", tmp_path / "p.json"))
    r = imaguard("log", "verify", "--binary", garbage)
    assert r.returncode in (1, 2), r.explain()
    assert "parse" in r.out + r.stderr


def test_bad_options(state: Path, tree: list[Path], tmp_path: Path) -> None:
    assert_error(imaguard("measure", "--state", state, "--pcr", "24", tree[0]))
    assert_error(imaguard("measure", "--state", state, "-a", "nosuch", tree[0]))
    assert_error(imaguard("measure", "--state", state))
    measured(state, tree[:1])
    b = state / LOG
    assert_error(imaguard("log", "verify"))
    assert_error(imaguard("log", "verify", "--state", state, "--binary", b))
    bad_pol = tmp_path / "bad.json"
    bad_pol.write_text(RuntimePolicy().serialize().replace('"excludes": []', '"excludes": ["("]'))
    assert_error(imaguard("log", "verify", "--state", state, "--runtime-policy", bad_pol), "(")
    assert_error(imaguard("log", "verify", "--state", state, "--keyring", tmp_path / "nokeys"))
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert_error(imaguard("measure", "--state", not_a_dir, tree[0]))
