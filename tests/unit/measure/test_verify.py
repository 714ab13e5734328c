"""Log verification through the API: replay, PCRs, signatures, runtime policies.

The finding codes are the ones imaguard.measure._verify documents: template-hash,
pcr-mismatch, beyond-pcr, violation, boot-aggregate, signature-invalid, unknown-key,
signature-malformed, not-in-policy, digest-not-allowed, parse.
"""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

import imaguard
from helpers.measure import replay_binary
from imaguard.formats.keylime import RuntimePolicy
from imaguard.formats.measurelist import RawRecord, serialize_ascii, serialize_binary
from imaguard.formats.template import TemplateDescriptor, TemplateEntry
from imaguard.measure import (
    VerifyResult,
    buffer_entry,
    file_entry,
    policy_from_records,
    policy_from_tree,
    records_from_ascii,
    records_from_binary,
    verify_records,
    violation_entry,
)
from imaguard.measure._pcr import boot_aggregate_entry

NG = TemplateDescriptor.lookup("ima-ng")
SIG = TemplateDescriptor.lookup("ima-sig")


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def boot(template: TemplateDescriptor = NG) -> TemplateEntry:
    return boot_aggregate_entry(template, None)


def ng(path: str, content: bytes, pcr: int = 10) -> TemplateEntry:
    return TemplateEntry(
        pcr,
        NG,
        (b"sha256:\0" + hashlib.sha256(content).digest(), path.encode() + b"\0"),
    )


def records(entries: list[TemplateEntry]) -> list[RawRecord]:
    recs, problem = records_from_binary(serialize_binary(entries))
    assert problem is None
    return recs


def pcrs_of(
    entries: list[TemplateEntry], banks: tuple[str, ...] = ("sha1", "sha256")
) -> dict[str, dict[int, bytes]]:
    """The PCRs ``entries`` extend, computed with hashlib alone (not SoftwarePcrs)."""
    return replay_binary(serialize_binary(entries), banks)


def codes(result: VerifyResult) -> list[str]:
    return [f.code for f in result.findings]


def self_consistent(rec: RawRecord, td: bytes) -> RawRecord:
    """The record with new template data and a template digest recomputed to match."""
    return RawRecord(
        rec.index,
        rec.offset,
        rec.pcr,
        hashlib.sha1(td).digest(),  # noqa: S324
        rec.template_name,
        td,
    )


@pytest.fixture
def log() -> list[TemplateEntry]:
    return [boot(), *(ng(f"/usr/bin/tool{i}", f"tool {i}".encode()) for i in range(5))]


# -- replay -----------------------------------------------------------------------------


def test_genuine_log_is_valid_and_replays_like_the_pcrs(log: list[TemplateEntry]) -> None:
    expected = pcrs_of(log)
    result = verify_records(records(log), expected=expected)
    assert result.ok, result.findings
    assert result.entries == len(log)
    assert result.matched_at == len(log)
    assert result.pcrs == {b: {i: v.hex() for i, v in p.items()} for b, p in expected.items()}


def test_replay_per_bank_hashes_template_data_in_that_bank(log: list[TemplateEntry]) -> None:
    """Kernel >= 5.8: PCR_bank = H_bank(PCR || H_bank(template data)) (ima_pcr_extend)."""
    pcr = {b: b"\0" * hashlib.new(b).digest_size for b in ("sha1", "sha256", "sha384", "sha512")}
    for e in log:
        for b in pcr:
            pcr[b] = hashlib.new(b, pcr[b] + hashlib.new(b, e.template_data()).digest()).digest()
    result = verify_records(records(log), banks=tuple(pcr))
    assert result.pcrs == {b: {10: v.hex()} for b, v in pcr.items()}


def test_tampered_digest_self_consistent_is_a_pcr_mismatch(log: list[TemplateEntry]) -> None:
    expected = pcrs_of(log)
    recs = records(log)
    td = bytearray(recs[2].template_data)
    td[4 + len(b"sha256:\0") + 3] ^= 0x01
    recs[2] = self_consistent(recs[2], bytes(td))
    result = verify_records(recs, expected=expected)
    assert codes(result) == ["pcr-mismatch"]


def test_tampered_data_with_the_old_digest_is_a_template_hash_finding(
    log: list[TemplateEntry],
) -> None:
    expected = pcrs_of(log)
    recs = records(log)
    td = recs[3].template_data.replace(b"/usr/bin/tool", b"/usr/bin/toot")
    recs[3] = RawRecord(3, 0, 10, recs[3].digest, "ima-ng", td)
    result = verify_records(recs, expected=expected)
    assert sorted(codes(result)) == ["pcr-mismatch", "template-hash"]
    assert next(f for f in result.findings if f.code == "template-hash").index == 3


def test_dropped_entry_is_a_pcr_mismatch(log: list[TemplateEntry]) -> None:
    expected = pcrs_of(log)
    recs = records(log)
    del recs[2]
    assert codes(verify_records(recs, expected=expected)) == ["pcr-mismatch"]


def test_reordered_entries_are_a_pcr_mismatch(log: list[TemplateEntry]) -> None:
    expected = pcrs_of(log)
    recs = records(log)
    recs[2], recs[4] = recs[4], recs[2]
    assert codes(verify_records(recs, expected=expected)) == ["pcr-mismatch"]


def test_appended_entry_is_beyond_pcr_unless_prefix_ok(log: list[TemplateEntry]) -> None:
    expected = pcrs_of(log)
    recs = records([*log, ng("/usr/bin/late", b"late")])
    result = verify_records(recs, expected=expected)
    assert codes(result) == ["beyond-pcr"]
    assert result.findings[0].index == len(log)
    assert result.matched_at == len(log)
    ok = verify_records(recs, expected=expected, prefix_ok=True)
    assert ok.ok, ok.findings
    assert ok.notes


def test_pcrs_of_an_empty_prefix_are_beyond_pcr(log: list[TemplateEntry]) -> None:
    zeros = {"sha1": {10: b"\0" * 20}, "sha256": {10: b"\0" * 32}}
    result = verify_records(records(log), expected=zeros)
    assert codes(result) == ["beyond-pcr"]
    assert result.matched_at == 0


def test_log_for_a_different_pcr_does_not_match(log: list[TemplateEntry]) -> None:
    moved = [boot()] + [TemplateEntry(11, e.template, e.fields) for e in log[1:]]
    expected = pcrs_of(log)  # PCR 10 of the genuine log
    result = verify_records(records(moved), expected=expected)
    assert "pcr-mismatch" in codes(result) or "beyond-pcr" in codes(result)
    assert not result.ok
    assert set(result.pcrs["sha1"]) == {10, 11}


def test_expected_pcrs_for_several_banks_must_all_match(log: list[TemplateEntry]) -> None:
    expected = pcrs_of(log, ("sha1", "sha256", "sha384"))
    assert verify_records(records(log), expected=expected).ok
    wrong = {**expected, "sha384": {10: b"\x01" * 48}}
    assert codes(verify_records(records(log), expected=wrong)) == ["pcr-mismatch"]


def test_every_finding_is_reported_not_just_the_first(log: list[TemplateEntry]) -> None:
    recs = records(log)
    for i in (1, 3, 5):
        td = recs[i].template_data[:-2] + b"X\0"
        recs[i] = RawRecord(i, 0, 10, recs[i].digest, "ima-ng", td)
    result = verify_records(recs)
    assert [(f.code, f.index) for f in result.findings] == [
        ("template-hash", 1),
        ("template-hash", 3),
        ("template-hash", 5),
    ]


def test_violation_is_a_finding_unless_ignored_and_replays_with_ff(
    log: list[TemplateEntry],
) -> None:
    with_v = [*log[:3], violation_entry("/var/log/app.log", NG), *log[3:]]
    expected = pcrs_of(with_v)
    result = verify_records(records(with_v), expected=expected)
    assert codes(result) == ["violation"]
    assert result.findings[0].index == 3
    ok = verify_records(records(with_v), expected=expected, ignore_violations=True)
    assert ok.ok, ok.findings
    # Extending a violation with zeros (what evmctl does without --ignore-violations)
    # gives a different value.
    assert expected != pcrs_of(log)


def test_first_entry_must_be_boot_aggregate(log: list[TemplateEntry]) -> None:
    assert codes(verify_records(records(log[1:]))) == ["boot-aggregate"]
    assert codes(verify_records(records(log))) == []


def test_parse_error_reports_the_good_prefix(log: list[TemplateEntry]) -> None:
    data = serialize_binary(log)
    recs, problem = records_from_binary(data[:-3])
    assert problem is not None
    result = verify_records(recs, parse_error=problem)
    assert codes(result) == ["parse"]
    assert result.entries == len(log) - 1


def test_ascii_and_binary_agree_including_sha256_column(log: list[TemplateEntry]) -> None:
    expected = pcrs_of(log)
    for bank in ("sha1", "sha256"):
        recs, col, problem = records_from_ascii(serialize_ascii(log, bank))
        assert problem is None
        assert col == bank
        result = verify_records(recs, digest_bank=col, expected=expected)
        assert result.ok, result.findings
    recs, problem = records_from_binary(serialize_binary(log, "sha256"), "sha256")
    assert problem is None
    assert verify_records(recs, digest_bank="sha256", expected=expected).ok


def test_ima_template_log_replays(log: list[TemplateEntry]) -> None:
    ima = TemplateDescriptor.lookup("ima")
    entries = [boot(ima)] + [
        TemplateEntry(10, ima, (hashlib.sha1(f"x{i}".encode()).digest(), f"/f{i}\0".encode()))  # noqa: S324
        for i in range(3)
    ]
    expected = pcrs_of(entries)
    result = verify_records(records(entries), expected=expected)
    assert result.ok, result.findings


@settings(max_examples=40, deadline=None)
@given(
    items=st.lists(
        st.tuples(st.binary(min_size=1, max_size=40), st.sampled_from([10, 10, 11]), st.booleans()),
        max_size=12,
    )
)
def test_replay_property(items: list[tuple[bytes, int, bool]]) -> None:
    entries = [boot()]
    for content, pcr, viol in items:
        if viol:
            entries.append(violation_entry("/v", NG))
        else:
            entries.append(ng("/p/" + content.hex(), content, pcr))
    expected = pcrs_of(entries)
    result = verify_records(records(entries), expected=expected, ignore_violations=True)
    assert result.ok, result.findings
    assert result.pcrs == {b: {i: v.hex() for i, v in p.items()} for b, p in expected.items()}


# -- signatures -------------------------------------------------------------------------


@pytest.fixture
def signed_log(
    tmp_path: Path, rsa_key: imaguard.PrivateKey, ec_key: imaguard.PrivateKey
) -> tuple[list[TemplateEntry], dict[str, Path]]:
    store = imaguard.SidecarStore()
    paths = {}
    for name, key in (("rsa", rsa_key), ("ec", ec_key), ("plain", None)):
        p = tmp_path / name
        p.write_bytes(f"{name} program\n".encode())
        if key is not None:
            imaguard.sign_file(p, key, "sha256", store)
        paths[name] = p
    entries = [boot(SIG), *(file_entry(p, SIG, store=store) for p in paths.values())]
    return entries, paths


def test_valid_signatures_verify_against_the_keyring(
    signed_log: tuple[list[TemplateEntry], dict[str, Path]], keys_dir: dict[str, Path]
) -> None:
    entries, _ = signed_log
    assert entries[1].fields[2][:2] == b"\x03\x02"
    assert entries[3].fields[2] == b""
    ring = imaguard.Keyring.load(
        keys_dir["rsa2048"] / "cert.der", keys_dir["ecdsa-p256"] / "cert.der"
    )
    result = verify_records(records(entries), keyring=ring, expected=pcrs_of(entries))
    assert result.ok, result.findings


def test_unknown_key_and_bad_signature_are_findings(
    signed_log: tuple[list[TemplateEntry], dict[str, Path]], rsa_ring: imaguard.Keyring
) -> None:
    entries, _ = signed_log
    result = verify_records(records(entries), keyring=rsa_ring)
    assert [(f.code, f.index) for f in result.findings] == [("unknown-key", 2)]
    # A signature over another digest (self-consistent record: only the signature is wrong).
    bad = list(entries)
    sig = bytearray(entries[1].fields[2])
    sig[-1] ^= 0x01
    bad[1] = TemplateEntry(10, SIG, (entries[1].fields[0], entries[1].fields[1], bytes(sig)))
    result = verify_records(records(bad), keyring=rsa_ring)
    assert ("signature-invalid", 1) in [(f.code, f.index) for f in result.findings]
    # A malformed signature value.
    bad[1] = TemplateEntry(10, SIG, (entries[1].fields[0], entries[1].fields[1], b"\x03\x02"))
    result = verify_records(records(bad), keyring=rsa_ring)
    assert ("signature-malformed", 1) in [(f.code, f.index) for f in result.findings]


# -- runtime policies (Keylime semantics, keylime/ima/ima.py) ---------------------------


def test_policy_from_records_accepts_its_log(log: list[TemplateEntry]) -> None:
    recs = records(log)
    pol = policy_from_records(recs)
    assert pol.digests["boot_aggregate"] == ("00" * 32,)
    assert pol.digests["/usr/bin/tool0"] == (hashlib.sha256(b"tool 0").hexdigest(),)
    result = verify_records(recs, runtime_policy=pol, expected=pcrs_of(log))
    assert result.ok, result.findings


def test_policy_findings(log: list[TemplateEntry]) -> None:
    pol = policy_from_records(records(log))
    tampered = [*log, ng("/usr/bin/tool1", b"evil"), ng("/usr/bin/new", b"new")]
    result = verify_records(records(tampered), runtime_policy=pol)
    assert [(f.code, f.index, f.path) for f in result.findings] == [
        ("digest-not-allowed", 6, "/usr/bin/tool1"),
        ("not-in-policy", 7, "/usr/bin/new"),
    ]
    excluded = RuntimePolicy(
        digests=pol.digests, excludes=(re.escape("/usr/bin/tool1"), "/usr/bin/n")
    )
    assert verify_records(records(tampered), runtime_policy=excluded).ok


def test_exclude_is_anchored_at_the_start_only(log: list[TemplateEntry]) -> None:
    pol = policy_from_records(records(log))
    entries = [*log, ng("/opt/local/x", b"x")]
    for regex, ok in (
        ("local", False),
        ("/opt/", True),
        (".*/local/", True),
        ("/opt/local/x$", True),
    ):
        p = RuntimePolicy(digests=pol.digests, excludes=(regex,))
        assert verify_records(records(entries), runtime_policy=p).ok is ok, regex


def test_signed_entry_accepted_through_verification_keys(
    signed_log: tuple[list[TemplateEntry], dict[str, Path]], rsa_ring: imaguard.Keyring
) -> None:
    entries, paths = signed_log
    spki = rsa_ring.certificates[0].public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    full = policy_from_records(records(entries))
    # The policy knows no digest for the RSA-signed file, or a wrong one: the signature
    # carries it (keylime/ima/ima.py, the ima-sig check).
    digests = {k: v for k, v in full.digests.items() if k != str(paths["rsa"])}
    for table in (digests, {**digests, str(paths["rsa"]): ("ab" * 32,)}):
        pol = RuntimePolicy(digests=table, verification_keys=RuntimePolicy.keyring_string([spki]))
        result = verify_records(records(entries), runtime_policy=pol)
        assert result.ok, result.findings
        without_key = RuntimePolicy(digests=table)
        result = verify_records(records(entries), runtime_policy=without_key)
        assert [f.path for f in result.findings] == [str(paths["rsa"])]


def test_ima_buf_entries_against_the_policy() -> None:
    entries = [boot(), buffer_entry("kernel_version", b"6.1.0")]
    pol = policy_from_records(records(entries))
    assert pol.ima_buf == {"kernel_version": (hashlib.sha256(b"6.1.0").hexdigest(),)}
    assert verify_records(records(entries), runtime_policy=pol).ok
    other = [boot(), buffer_entry("kernel_version", b"6.2.0")]
    result = verify_records(records(other), runtime_policy=pol)
    assert codes(result) == ["not-in-policy"]


def test_policy_from_tree(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "sub" / "b").write_bytes(b"b")
    pol = policy_from_tree(tmp_path, boot_aggregates=["00" * 32])
    root = tmp_path.resolve()
    assert pol.digests == {
        str(root / "a"): (hashlib.sha256(b"a").hexdigest(),),
        str(root / "sub" / "b"): (hashlib.sha256(b"b").hexdigest(),),
        "boot_aggregate": ("00" * 32,),
    }
    entries = [
        boot(),
        file_entry(root / "a", NG, store="sigfile"),
        file_entry(root / "sub" / "b", NG, store="sigfile"),
    ]
    assert verify_records(records(entries), runtime_policy=pol).ok
