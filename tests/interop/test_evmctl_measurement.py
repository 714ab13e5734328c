"""evmctl ``ima_measurement`` as an independent judge of imaguard's binary logs.

evmctl (ima-evm-utils src/evmctl.c) replays a ``binary_runtime_measurements`` file against PCR
values (``--pcrs`` files, or a TPM read through tsspcrread). The verdict rule (observed):
accept <=> exit 0 AND "Matched per TPM bank calculated digest(s)." on stderr AND none of
"verification failed", "unknown keyid", "Failed to verify template data digest".

The tampering cases are judged by both verifiers; where evmctl cannot tell (an
appended record) imaguard must still say so (finding ``beyond-pcr``).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import needs_root_because
from helpers.measure import (
    EVMCTL_MATCHED,
    Swtpm,
    content_for,
    evmctl_accepts,
    evmctl_measurement,
    finding_codes,
    findings_of,
    imaguard,
    imaguard_ok,
    log_pcrs,
    pcr_file,
    verify_json,
)
from imaguard.formats.measurelist import iter_binary
from imaguard.formats.template import TemplateDescriptor
from imaguard.measure import LogStore, file_entry, violation_entry

pytestmark = pytest.mark.interop


def _sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()  # noqa: S324 - the template hash is SHA-1


@pytest.fixture
def tree(tmp_path: Path, request: pytest.FixtureRequest) -> list[Path]:
    d = tmp_path / "tree"
    d.mkdir()
    out = []
    for name, size in (("bin-one", 3000), ("bin two", 17), ("lib.so", 70_000), ("conf", 1)):
        p = d / name
        p.write_bytes(content_for(f"{request.node.nodeid}/{name}", size))
        out.append(p)
    return out


def build_log(
    state: Path, files: list[Path], out: Path, *measure_args: str
) -> tuple[Path, list[str]]:
    """Measure, export the binary list and the evmctl PCR files: (log, --pcrs args)."""
    imaguard_ok("measure", "--state", state, *measure_args, *files)
    imaguard_ok("log", "export", "--state", state, "--binary", out)
    args = imaguard_ok(
        "log", "pcrs", "--state", state, "--format", "evmctl", "-o", out.parent
    ).out.split()
    assert args == [
        "--pcrs", f"sha1,{out.parent / 'pcrs-sha1.txt'}",
        "--pcrs", f"sha256,{out.parent / 'pcrs-sha256.txt'}",
    ]  # fmt: skip
    return out, args


def imaguard_pcr_args(state: Path) -> list[str]:
    pcrs = log_pcrs(state)
    return [a for b in ("sha1", "sha256") for a in ("--pcrs", f"{b}={pcrs[b]['10']}")]


# -- genuine logs -----------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["sha1", "sha512"])
def test_evmctl_accepts_ima_ng(tmp_path: Path, tree: list[Path], algo: str) -> None:
    log, pcrs = build_log(tmp_path / "s", tree, tmp_path / "log.bin", "-a", algo)
    r = evmctl_measurement(log, *pcrs)
    assert evmctl_accepts(r), r.explain()
    assert "succeed at entry 5" in r.stderr, r.explain()


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
def test_evmctl_accepts_every_template(tmp_path: Path, tree: list[Path], template: str) -> None:
    """evmctl hashes the template data of any template (the legacy ``ima`` one with its
    256-byte name) and replays it: every template imaguard writes must match."""
    log, pcrs = build_log(
        tmp_path / "s", tree, tmp_path / "log.bin", "--template", template, "--store", "sigfile"
    )
    r = evmctl_measurement(log, *pcrs)
    assert evmctl_accepts(r), r.explain()
    assert "succeed at entry 5" in r.stderr, r.explain()


@pytest.mark.parametrize("key_type", ["rsa2048", "ecdsa-p256"])
@pytest.mark.parametrize(
    "store", [pytest.param("xattr", marks=needs_root_because("security.ima needs root")), "sigfile"]
)
def test_evmctl_accepts_ima_sig_with_signatures(
    tmp_path: Path, tree: list[Path], keys_dir: dict[str, Path], key_type: str, store: str
) -> None:
    keys = keys_dir[key_type]
    signed = tree[:2]
    r = imaguard("sign", "--key", keys / "private.pem", "--store", store, *signed)
    assert r.returncode == 0, r.explain()
    log, pcrs = build_log(
        tmp_path / "s", tree, tmp_path / "log.bin", "--template", "ima-sig", "--store", store
    )
    shown = imaguard_ok("log", "show", "--state", tmp_path / "s").out.splitlines()
    assert all(" 030204" in line for line in shown[1:3]), shown
    assert all(line.endswith(" ") for line in (shown[0], *shown[3:])), shown
    r = evmctl_measurement(log, "--verify-sig", "--key", str(keys / "cert.der"), *pcrs)
    assert evmctl_accepts(r), r.explain()
    assert r.stderr.count("verification is OK") == len(signed), r.explain()
    # imaguard agrees, signatures included.
    code, doc = verify_json(
        "--binary", log, *imaguard_pcr_args(tmp_path / "s"), "--keyring", str(keys / "cert.der")
    )
    assert code == 0, doc


def test_evmctl_accepts_logs_against_the_swtpm(
    tpm: Swtpm, tmp_path: Path, tree: list[Path], keys_dir: dict[str, Path]
) -> None:
    """imaguard extends the swtpm; evmctl reads the swtpm's PCRs itself (tsspcrread)."""
    keys = keys_dir["rsa2048"]
    imaguard_ok("sign", "--key", keys / "private.pem", "--store", "sigfile", tree[0])
    state = tmp_path / "s"
    imaguard_ok(
        "measure",
        "--state",
        state,
        "--tpm",
        tpm.tcti,
        "--template",
        "ima-sig",
        "--store",
        "sigfile",
        *tree,
    )
    log = tmp_path / "log.bin"
    imaguard_ok("log", "export", "--state", state, "--binary", log)
    r = evmctl_measurement(log, "--verify-sig", "--key", str(keys / "cert.der"), env=tpm.tss_env)
    assert evmctl_accepts(r), r.explain()
    assert "tsspcrread" in r.stderr, r.explain()
    # PCR files made from tpm2_pcrread agree too.
    read = tpm.pcrread(
        "sha1:" + ",".join(map(str, range(24))) + "+sha256:" + ",".join(map(str, range(24)))
    )
    args = []
    for bank in ("sha1", "sha256"):
        f = pcr_file(tmp_path / f"tpm-{bank}.txt", bank, read[bank])
        args += ["--pcrs", f"{bank},{f}"]
    r = evmctl_measurement(log, "--verify-sig", "--key", str(keys / "cert.der"), *args)
    assert evmctl_accepts(r), r.explain()
    # ... and a tampered copy is rejected against the same TPM.
    bad = tamper_digest(log.read_bytes(), 2)
    (tmp_path / "bad.bin").write_bytes(bad)
    r = evmctl_measurement(
        tmp_path / "bad.bin", "--verify-sig", "--key", str(keys / "cert.der"), env=tpm.tss_env
    )
    assert not evmctl_accepts(r), r.explain()


# -- tampering --------------------------------------------------------------------------


def _split(data: bytes) -> list[bytes]:
    recs = list(iter_binary(data))
    ends = [r.offset for r in recs[1:]] + [len(data)]
    return [data[r.offset : end] for r, end in zip(recs, ends, strict=True)]


def _rebuild(rec: bytes, td: bytes) -> bytes:
    """A record with new template data and a recomputed SHA-1 template digest."""
    (name_len,) = struct.unpack_from("<I", rec, 24)
    name = rec[28 : 28 + name_len]
    return (
        rec[:4] + _sha1(td) + struct.pack("<I", name_len) + name + struct.pack("<I", len(td)) + td
    )


def _td(rec: bytes) -> bytes:
    (name_len,) = struct.unpack_from("<I", rec, 24)
    return rec[28 + name_len + 4 :]


def tamper_digest(data: bytes, index: int) -> bytes:
    """Change one byte of the d-ng file digest, keep the record self-consistent."""
    recs = _split(data)
    td = bytearray(_td(recs[index]))
    td[4 + td[4:].index(b"\0") + 1 + 7] ^= 0x01
    recs[index] = _rebuild(recs[index], bytes(td))
    return b"".join(recs)


def tamper_name(data: bytes, index: int, *, consistent: bool) -> bytes:
    recs = _split(data)
    td = _td(recs[index])
    new_td = td.replace(b"/tree/", b"/tre3/")
    assert new_td != td
    if consistent:
        recs[index] = _rebuild(recs[index], new_td)
    else:
        recs[index] = recs[index][: len(recs[index]) - len(td)] + new_td
    return b"".join(recs)


def drop(data: bytes, index: int) -> bytes:
    recs = _split(data)
    del recs[index]
    return b"".join(recs)


def reorder(data: bytes, i: int, j: int) -> bytes:
    recs = _split(data)
    recs[i], recs[j] = recs[j], recs[i]
    return b"".join(recs)


CASES: dict[str, tuple[Callable[[bytes, bytes], bytes], bool, set[str]]] = {
    # name: (make the log from (genuine, extra record), evmctl accepts?, imaguard findings)
    "genuine": (lambda d, x: d, True, set()),
    "tampered digest": (lambda d, x: tamper_digest(d, 2), False, {"pcr-mismatch"}),
    "tampered name (self-consistent)": (
        lambda d, x: tamper_name(d, 3, consistent=True),
        False,
        {"pcr-mismatch"},
    ),
    "tampered name (digest kept)": (
        lambda d, x: tamper_name(d, 3, consistent=False),
        False,
        {"template-hash", "pcr-mismatch"},
    ),
    "dropped entry": (lambda d, x: drop(d, 2), False, {"pcr-mismatch"}),
    "dropped last entry": (lambda d, x: drop(d, 4), False, {"pcr-mismatch"}),
    "reordered entries": (lambda d, x: reorder(d, 1, 3), False, {"pcr-mismatch"}),
    "reordered last two": (lambda d, x: reorder(d, 3, 4), False, {"pcr-mismatch"}),
    # evmctl stops at the first matching record: it cannot see an appended one.
    "appended record": (lambda d, x: d + x, True, {"beyond-pcr"}),
}


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes, list[str], list[str]]:
    """(log bytes, one more record, evmctl --pcrs args, imaguard --pcrs args), made once."""
    base = tmp_path_factory.mktemp("evmctl-genuine")
    d = base / "tree"
    d.mkdir()
    files = []
    for i in range(4):
        p = d / f"file-{i}"
        p.write_bytes(content_for(f"genuine/{i}", 100 + 1000 * i))
        files.append(p)
    state = base / "s"
    log, pcrs = build_log(state, files, base / "log.bin")
    data = log.read_bytes()
    ours = imaguard_pcr_args(state)
    extra = base / "extra"
    extra.write_bytes(b"measured after the quote")
    imaguard_ok("measure", "--state", state, extra)
    imaguard_ok("log", "export", "--state", state, "--binary", base / "longer.bin")
    longer = (base / "longer.bin").read_bytes()
    assert longer.startswith(data)
    return data, longer[len(data) :], pcrs, ours


@pytest.mark.parametrize("case", CASES)
def test_tampering_judged_by_evmctl_and_imaguard(
    tmp_path: Path, genuine: tuple[bytes, bytes, list[str], list[str]], case: str
) -> None:
    data, extra, evm_pcrs, our_pcrs = genuine
    make, evmctl_ok, findings = CASES[case]
    log = tmp_path / f"{case.replace(' ', '-')}.bin"
    log.write_bytes(make(data, extra))
    r = evmctl_measurement(log, *evm_pcrs)
    assert evmctl_accepts(r) is evmctl_ok, r.explain()
    if case == "tampered name (digest kept)":
        assert "Failed to verify template data digest" in r.stderr, r.explain()
    if not evmctl_ok:
        assert r.returncode == 1, r.explain()
    code, doc = verify_json("--binary", log, *our_pcrs)
    assert finding_codes(doc) == findings, doc
    assert code == (0 if not findings else 1)
    # The plain output lists every finding with its code.
    r2 = imaguard("log", "verify", "--binary", log, *our_pcrs)
    assert r2.returncode == code, r2.explain()
    for f in findings:
        assert f"{f}:" in r2.out, r2.explain()


def test_appended_record_is_accepted_with_prefix_ok(
    tmp_path: Path, genuine: tuple[bytes, bytes, list[str], list[str]]
) -> None:
    data, extra, _, our_pcrs = genuine
    log = tmp_path / "appended.bin"
    log.write_bytes(data + extra)
    code, doc = verify_json("--binary", log, *our_pcrs, "--prefix-ok")
    assert code == 0, doc
    assert doc["matched_at"] == 5
    assert doc["entries"] == 6


# -- violations and signatures ----------------------------------------------------------


def test_violation_replays_with_ff_as_evmctl_ignore_violations(
    tmp_path: Path, tree: list[Path]
) -> None:
    ng = TemplateDescriptor.lookup("ima-ng")
    state = tmp_path / "s"
    with LogStore(state) as s:
        s.append(file_entry(tree[0], ng, store="sigfile"))
        s.append(violation_entry(str(tree[1]), ng))
        s.append(file_entry(tree[2], ng, store="sigfile"))
        pcrs = {b: {i: v.hex() for i, v in p.items()} for b, p in s.pcrs().items()}
    log = tmp_path / "log.bin"
    imaguard_ok("log", "export", "--state", state, "--binary", log)
    args = imaguard_ok(
        "log", "pcrs", "--state", state, "--format", "evmctl", "-o", tmp_path
    ).out.split()
    r = evmctl_measurement(log, *args)
    assert not evmctl_accepts(r), r.explain()  # evmctl extends zeros without the flag
    r = evmctl_measurement(log, "--ignore-violations", *args)
    assert evmctl_accepts(r), r.explain()
    ours = [a for b in ("sha1", "sha256") for a in ("--pcrs", f"{b}={pcrs[b][10]}")]
    code, doc = verify_json("--binary", log, *ours)
    assert (code, finding_codes(doc)) == (1, {"violation"})
    code, doc = verify_json("--binary", log, *ours, "--ignore-violations")
    assert code == 0, doc


def test_bad_signature_and_unknown_key(
    tmp_path: Path, tree: list[Path], keys_dir: dict[str, Path]
) -> None:
    """evmctl exits 0 for both: only stderr tells. imaguard exits 1 with the finding."""
    rsa, ec = keys_dir["rsa2048"], keys_dir["ecdsa-p256"]
    imaguard_ok("sign", "--key", rsa / "private.pem", "--store", "sigfile", tree[0], tree[1])
    sig = tree[1].with_name(tree[1].name + ".sig")
    value = bytearray(sig.read_bytes())
    value[-1] ^= 0x01  # the signature no longer matches the digest
    sig.write_bytes(bytes(value))
    state = tmp_path / "s"
    log, pcrs = build_log(
        state, tree, tmp_path / "log.bin", "--template", "ima-sig", "--store", "sigfile"
    )
    ours = imaguard_pcr_args(state)

    r = evmctl_measurement(log, "--verify-sig", "--key", str(rsa / "cert.der"), *pcrs)
    assert r.returncode == 0, r.explain()
    assert EVMCTL_MATCHED in r.stderr
    assert "verification failed" in r.stderr
    assert not evmctl_accepts(r)
    code, doc = verify_json("--binary", log, *ours, "--keyring", str(rsa / "cert.der"))
    assert code == 1
    assert [(f["code"], f["index"]) for f in findings_of(doc)] == [("signature-invalid", 2)]

    r = evmctl_measurement(log, "--verify-sig", "--key", str(ec / "cert.der"), *pcrs)
    assert r.returncode == 0, r.explain()
    assert "unknown keyid" in r.stderr
    assert not evmctl_accepts(r)
    code, doc = verify_json("--binary", log, *ours, "--keyring", str(ec / "cert.der"))
    assert code == 1
    assert finding_codes(doc) == {"unknown-key"}
    assert sorted(f["index"] for f in findings_of(doc)) == [1, 2]


def test_json_pcrs_and_pcr_files_agree(tmp_path: Path, tree: list[Path]) -> None:
    """``log pcrs --json`` has the contract's shape and is what evmctl computes."""
    state = tmp_path / "s"
    log, pcrs = build_log(state, tree, tmp_path / "log.bin")
    doc = log_pcrs(state)
    assert set(doc) == {"sha1", "sha256"}
    assert set(doc["sha1"]) == {"10"}
    r = evmctl_measurement(log, *pcrs)
    for bank in ("sha1", "sha256"):
        assert f"{bank}: PCRAgg  10: {doc[bank]['10']}" in r.stderr, r.explain()
    assert json.loads(json.dumps(doc)) == doc
