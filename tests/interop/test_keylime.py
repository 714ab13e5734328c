"""Keylime 7.14.3's own verifier judging imaguard's ASCII logs and runtime policies.

Keylime runs offline in its own venv (``make test`` installs it) through
scripts/keylime-check: ``process_measurement_list`` per bank (sha1, sha256),
with the policy imaguard generated and, where given, the PCR 10 value imaguard computed.

Event ids <-> imaguard findings:
  ima.validation.ima-ng.runtime_policy_hash <-> digest-not-allowed
  ima.validation.ima-ng.not_in_allowlist    <-> not-in-policy
  ima.validation.ima_hash                   <-> template-hash
  ima.pcr_mismatch                          <-> pcr-mismatch
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

import imaguard
from helpers.measure import (
    KEYLIME_EVENTS,
    Keylime,
    content_for,
    finding_codes,
    imaguard_ok,
    log_pcrs,
    run,
    verify_json,
)
from helpers.measure import imaguard as run_imaguard
from imaguard.formats.keylime import RuntimePolicy
from imaguard.formats.measurelist import parse_ascii, serialize_ascii
from imaguard.formats.template import TemplateEntry

pytestmark = pytest.mark.interop

TO_IMAGUARD = {
    KEYLIME_EVENTS["runtime_policy_hash"]: "digest-not-allowed",
    KEYLIME_EVENTS["not_in_allowlist"]: "not-in-policy",
    KEYLIME_EVENTS["ima_hash"]: "template-hash",
    KEYLIME_EVENTS["pcr_mismatch"]: "pcr-mismatch",
}


class Case:
    """A state directory measured by the CLI, its ASCII export, and helpers to judge it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.state = base / "state"
        self.tree = base / "tree"
        self.tree.mkdir(parents=True)

    def file(self, name: str, content: bytes | None = None) -> Path:
        p = self.tree / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if content is not None else content_for(name, 200 + len(name)))
        return p

    def measure(self, *files: Path, template: str = "ima-ng") -> None:
        imaguard_ok(
            "measure", "--state", self.state, "--template", template, "--store", "sigfile", *files
        )

    def export(self, name: str = "log.txt") -> Path:
        out = self.base / name
        imaguard_ok("log", "export", "--state", self.state, "--ascii", out)
        return out

    def policy(self, log: Path, *args: str, name: str = "policy.json") -> Path:
        out = self.base / name
        imaguard_ok("policy", "runtime", "--from-log", log, "-o", out, *args)
        return out

    def pcrs(self) -> dict[str, str]:
        p = log_pcrs(self.state)
        return {b: p[b]["10"] for b in ("sha1", "sha256")}


@pytest.fixture
def case(tmp_path: Path) -> Case:
    return Case(tmp_path)


def keylime_events(result: dict[str, dict[str, object]]) -> set[str]:
    out: set[str] = set()
    for bank in ("sha1", "sha256"):
        events = result[bank]["events"]
        assert isinstance(events, list)
        out |= set(events)
    return out


def judge(
    keylime: Keylime,
    log: Path,
    policy: Path,
    pcrs: dict[str, str] | None,
    *extra: str,
) -> tuple[set[str], set[str], dict[str, dict[str, object]]]:
    """(Keylime event ids, imaguard finding codes, Keylime's raw result)."""
    result = keylime.check(log, policy, pcrs)
    args = [a for b, v in (pcrs or {}).items() for a in ("--pcrs", f"{b}={v}")]
    code, doc = verify_json("--ascii", log, "--runtime-policy", policy, *args, *extra)
    codes = finding_codes(doc)
    assert (code == 0) is (not codes)
    return keylime_events(result), codes, result


def assert_agree(events: set[str], codes: set[str]) -> None:
    mapped = {TO_IMAGUARD.get(e, e) for e in events}
    assert mapped == codes, f"Keylime: {sorted(events)}; imaguard: {sorted(codes)}"


# -- genuine logs -----------------------------------------------------------------------


def test_keylime_accepts_ima_ng_with_a_generated_policy(keylime: Keylime, case: Case) -> None:
    files = [case.file("usr/bin/tool"), case.file("usr/lib/lib a.so"), case.file("etc/my conf")]
    case.measure(*files)
    log = case.export()
    assert b"/usr/lib/lib_a.so\n" in log.read_bytes()
    policy = case.policy(log)
    pcrs = case.pcrs()
    events, codes, result = judge(keylime, log, policy, pcrs)
    assert events == set()
    assert codes == set()
    for bank in ("sha1", "sha256"):
        assert result[bank]["running"] == pcrs[bank], bank
    # Without expected PCRs Keylime replays to the same values.
    replay = keylime.check(log, policy, None)
    assert {b: replay[b]["running"] for b in ("sha1", "sha256")} == pcrs


@pytest.mark.parametrize("template", ["ima", "ima-buf"])
def test_keylime_accepts_the_other_templates_it_knows(
    keylime: Keylime, case: Case, template: str
) -> None:
    """Keylime parses ima, ima-ng, ima-sig and ima-buf (keylime/ima/ast.py); for ``ima`` it
    hashes d and the name padded to 256 bytes, independently of imaguard."""
    files = [case.file("sbin/init"), case.file("sbin/with space")]
    case.measure(*files, template=template)
    log = case.export()
    policy = case.policy(log)
    pcrs = case.pcrs()
    events, codes, result = judge(keylime, log, policy, pcrs)
    assert (events, codes) == (set(), set())
    for bank in ("sha1", "sha256"):
        assert result[bank]["running"] == pcrs[bank], bank


def test_keylime_accepts_a_sha256_template_hash_column(keylime: Keylime, case: Case) -> None:
    """An ``ascii_runtime_measurements_sha256``-style export: the policy generated from it
    says log_hash_alg sha256, and Keylime checks the template hashes with it."""
    case.measure(case.file("usr/bin/a"), case.file("usr/bin/b"))
    log = case.base / "log256.txt"
    imaguard_ok("log", "export", "--state", case.state, "--ascii", log, "--bank", "sha256")
    assert len(log.read_bytes().split(b"\n")[0].split(b" ")[1]) == 64
    policy = case.policy(log)
    assert json.loads(policy.read_text())["ima"]["log_hash_alg"] == "sha256"
    pcrs = case.pcrs()
    events, codes, result = judge(keylime, log, policy, pcrs)
    assert (events, codes) == (set(), set())
    for bank in ("sha1", "sha256"):
        assert result[bank]["running"] == pcrs[bank], bank


@pytest.mark.parametrize("key_type", ["rsa2048", "ecdsa-p256"])
def test_keylime_accepts_ima_sig_with_unsigned_entries(
    keylime: Keylime, case: Case, keys_dir: dict[str, Path], key_type: str
) -> None:
    signed = [case.file("bin/signed one"), case.file("bin/signed-two")]
    unsigned = [case.file("bin/plain"), case.file("bin/plain with spaces")]
    imaguard_ok("sign", "--key", keys_dir[key_type] / "private.pem", "--store", "sigfile", *signed)
    case.measure(*signed, *unsigned, template="ima-sig")
    log = case.export()
    lines = log.read_bytes().split(b"\n")
    assert lines[0].endswith(b" boot_aggregate ")  # unsigned: trailing space kept
    assert lines[3].endswith(b"/bin/plain ")
    assert lines[4].endswith(b"/bin/plain_with_spaces ")
    assert re.search(rb"/bin/signed_one 030204[0-9a-f]+$", lines[1])
    policy = case.policy(log)
    pcrs = case.pcrs()
    events, codes, result = judge(keylime, log, policy, pcrs)
    assert events == set()
    assert codes == set()
    for bank in ("sha1", "sha256"):
        assert result[bank]["running"] == pcrs[bank]


def test_keylime_validates_the_policies_imaguard_writes(keylime: Keylime, case: Case) -> None:
    """The runner calls ima.validate_runtime_policy (jsonschema): a generated policy with
    excludes, and one read and re-serialized by imaguard, both pass it."""
    case.measure(case.file("x"))
    log = case.export()
    policy = case.policy(log, "--exclude", "/var/log/", "--exclude", r".*\.pyc")
    doc = json.loads(policy.read_text())
    assert doc["excludes"] == ["/var/log/", r".*\.pyc"]
    again = case.base / "again.json"
    again.write_text(RuntimePolicy.parse(policy.read_text()).serialize())
    for p in (policy, again):
        events, codes, _ = judge(keylime, log, p, case.pcrs())
        assert (events, codes) == (set(), set())


def test_policy_from_tree_with_boot_aggregate(keylime: Keylime, case: Case) -> None:
    files = [case.file("a/one"), case.file("a/two"), case.file("b/three")]
    case.measure(*files)
    log = case.export()
    policy = case.base / "tree-policy.json"
    imaguard_ok(
        "policy", "runtime", "--from-tree", case.tree, "--boot-aggregate", "00" * 32, "-o", policy
    )
    events, codes, _ = judge(keylime, log, policy, case.pcrs())
    assert (events, codes) == (set(), set())
    # Without the boot_aggregate line both refuse the first entry.
    bare = case.base / "bare.json"
    imaguard_ok("policy", "runtime", "--from-tree", case.tree, "-o", bare)
    events, codes, _ = judge(keylime, log, bare, case.pcrs())
    assert_agree(events, codes)
    assert codes == {"not-in-policy"}


def test_policy_from_tree_covers_names_with_spaces(keylime: Keylime, case: Case) -> None:
    """The kernel logs "/dir/a b" as "/dir/a_b" (ima_template_lib.c), and Keylime matches the logged
    name (keylime/ima/ast.py). A policy generated from a tree must allow what measuring that
    tree logs, so its paths need the same encoding."""
    files = [case.file("plain"), case.file("with space")]
    case.measure(*files)
    log = case.export()
    policy = case.base / "tree-policy.json"
    imaguard_ok(
        "policy", "runtime", "--from-tree", case.tree, "--boot-aggregate", "00" * 32, "-o", policy
    )
    events, codes, _ = judge(keylime, log, policy, case.pcrs())
    assert_agree(events, codes)
    assert (events, codes) == (set(), set())


# -- agreement on rejections ------------------------------------------------------------


@pytest.fixture
def base_case(case: Case) -> tuple[Case, list[Path], Path]:
    """A genuine log of three files and the policy generated from it."""
    files = [case.file("opt/app/run"), case.file("opt/app/lib one.so"), case.file("opt/app/cfg")]
    case.measure(*files)
    policy = case.policy(case.export("genuine.txt"))
    return case, files, policy


def test_agree_on_a_digest_not_in_the_policy(
    keylime: Keylime, base_case: tuple[Case, list[Path], Path]
) -> None:
    case, files, policy = base_case
    files[0].write_bytes(b"replaced by an attacker\n")
    case.measure(files[0])
    events, codes, _ = judge(keylime, case.export(), policy, case.pcrs())
    assert events == {KEYLIME_EVENTS["runtime_policy_hash"]}
    assert_agree(events, codes)


def test_agree_on_a_path_not_in_the_policy(
    keylime: Keylime, base_case: tuple[Case, list[Path], Path]
) -> None:
    case, _, policy = base_case
    case.measure(case.file("opt/app/new"))
    events, codes, _ = judge(keylime, case.export(), policy, case.pcrs())
    assert events == {KEYLIME_EVENTS["not_in_allowlist"]}
    assert_agree(events, codes)


def test_agree_on_an_excluded_path(
    keylime: Keylime, base_case: tuple[Case, list[Path], Path]
) -> None:
    case, _, _ = base_case
    genuine = case.base / "genuine.txt"
    new = case.file("opt/app/cache/blob")
    excl = re.escape(str(new.parent.resolve())) + "/"
    policy = case.policy(genuine, "--exclude", excl, name="excl.json")
    case.measure(new)
    events, codes, _ = judge(keylime, case.export(), policy, case.pcrs())
    assert (events, codes) == (set(), set())
    # A regex that matches only later in the path excludes nothing (re.match).
    policy2 = case.policy(genuine, "--exclude", "cache/", name="excl2.json")
    events, codes, _ = judge(keylime, case.export(), policy2, case.pcrs())
    assert events == {KEYLIME_EVENTS["not_in_allowlist"]}
    assert_agree(events, codes)


def test_agree_on_a_signed_entry_accepted_through_verification_keys(
    keylime: Keylime, case: Case, keys_dir: dict[str, Path]
) -> None:
    signed = case.file("bin/signed")
    other = case.file("bin/other")
    key = keys_dir["rsa2048"]
    imaguard_ok("sign", "--key", key / "private.pem", "--store", "sigfile", signed)
    case.measure(signed, other, template="ima-sig")
    log = case.export()
    full = RuntimePolicy.parse(case.policy(log).read_text())
    name = str(signed.resolve())
    assert name in full.digests
    cert = imaguard.Keyring.load(key / "cert.der").certificates[0]
    spki = cert.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    vkeys = RuntimePolicy.keyring_string([spki])
    without = {k: v for k, v in full.digests.items() if k != name}
    wrong = {**without, name: ("ab" * 32,)}
    pcrs = case.pcrs()
    for label, digests, keys, accepted in (
        ("unlisted, key given", without, vkeys, True),
        ("wrong digest, key given", wrong, vkeys, True),
        ("unlisted, no key", without, "", False),
        ("wrong digest, no key", wrong, "", False),
    ):
        p = case.base / f"{label.replace(' ', '_').replace(',', '')}.json"
        p.write_text(RuntimePolicy(digests=digests, verification_keys=keys).serialize())
        events, codes, _ = judge(keylime, log, p, pcrs)
        assert_agree(events, codes)
        assert (not codes) is accepted, (label, codes)


def _retamper(log: Path, index: int, *, consistent: bool) -> bytes:
    """The ASCII log with one byte of entry ``index``'s file digest changed; the template
    hash recomputed (``consistent``) or left as it was."""
    lines = log.read_bytes().split(b"\n")
    (rec,) = parse_ascii(lines[index] + b"\n")
    d = bytearray(rec.entry.fields[0])
    d[-1] ^= 0x01
    entry = TemplateEntry(rec.entry.pcr, rec.entry.template, (bytes(d), *rec.entry.fields[1:]))
    new = serialize_ascii([entry]).rstrip(b"\n")
    if not consistent:
        new = lines[index][:44] + new[44:]
        assert new[3:43] == lines[index][3:43]
    lines[index] = new
    return b"\n".join(lines)


@pytest.mark.parametrize("consistent", [True, False])
def test_agree_on_a_tampered_file_digest(
    keylime: Keylime, base_case: tuple[Case, list[Path], Path], consistent: bool
) -> None:
    case, _, policy = base_case
    genuine = case.base / "genuine.txt"
    bad = case.base / "bad.txt"
    bad.write_bytes(_retamper(genuine, 2, consistent=consistent))
    events, codes, _ = judge(keylime, bad, policy, case.pcrs())
    if consistent:
        assert events == {
            KEYLIME_EVENTS["runtime_policy_hash"],
            KEYLIME_EVENTS["pcr_mismatch"],
        }
        assert_agree(events, codes)
    else:
        # Keylime stops judging the entry at the template hash; imaguard reports every
        # problem it sees (the digest is also not allowed).
        assert KEYLIME_EVENTS["ima_hash"] in events
        assert {"template-hash", "pcr-mismatch"} <= codes
        assert {TO_IMAGUARD[e] for e in events} <= codes


def test_agree_on_a_dropped_entry(
    keylime: Keylime, base_case: tuple[Case, list[Path], Path]
) -> None:
    case, _, policy = base_case
    lines = (case.base / "genuine.txt").read_bytes().split(b"\n")
    del lines[2]
    bad = case.base / "dropped.txt"
    bad.write_bytes(b"\n".join(lines))
    events, codes, _ = judge(keylime, bad, policy, case.pcrs())
    assert events == {KEYLIME_EVENTS["pcr_mismatch"]}
    assert_agree(events, codes)


def test_agree_on_a_log_ahead_of_the_quote_with_prefix_ok(
    keylime: Keylime, base_case: tuple[Case, list[Path], Path]
) -> None:
    """Keylime accepts a PCR that matches a prefix of the log (keylime/ima/ima.py); imaguard
    does too with --prefix-ok, and says beyond-pcr without it."""
    case, files, policy = base_case
    quoted = case.pcrs()
    files[2].write_bytes(files[2].read_bytes())  # same content: a duplicate, not logged
    extra = case.file("opt/app/run2", files[0].read_bytes())
    case.measure(extra)
    log = case.export()
    lax = case.base / "lax.json"
    doc = json.loads(policy.read_text())
    doc["digests"][str(extra.resolve())] = doc["digests"][str(files[0].resolve())]
    lax.write_text(json.dumps(doc))
    events, codes, _ = judge(keylime, log, lax, quoted, "--prefix-ok")
    assert (events, codes) == (set(), set())
    r = run_imaguard(
        "log",
        "verify",
        "--ascii",
        log,
        "--runtime-policy",
        lax,
        "--pcrs",
        f"sha1={quoted['sha1']}",
        "--pcrs",
        f"sha256={quoted['sha256']}",
    )
    assert r.returncode == 1, r.explain()
    assert "beyond-pcr:" in r.out


def test_policy_runtime_keyring_fills_verification_keys_keylime_uses(
    keylime: Keylime, case: Case, keys_dir: dict[str, Path]
) -> None:
    """``policy runtime --keyring DIR``: Keylime accepts a signed entry through the keys the
    option wrote, with the entry's digest removed from the policy."""
    signed = case.file("bin/signed")
    other = case.file("bin/other")
    key = keys_dir["rsa2048"]
    imaguard_ok("sign", "--key", key / "private.pem", "--store", "sigfile", signed)
    case.measure(signed, other, template="ima-sig")
    log = case.export()
    name = str(signed.resolve())
    pcrs = case.pcrs()
    for keyring, accepted in (((), False), (("--keyring", str(key / "cert.der")), True)):
        full = RuntimePolicy.parse(case.policy(log, *keyring).read_text())
        assert bool(full.verification_keys) is accepted
        without = {k: v for k, v in full.digests.items() if k != name}
        p = case.base / "without.json"
        p.write_text(dataclasses.replace(full, digests=without).serialize())
        events, codes, _ = judge(keylime, log, p, pcrs)
        assert_agree(events, codes)
        assert (not codes) is accepted, (keyring, codes)


def test_policy_runtime_rootfs_rewrites_paths_keylime_matches(keylime: Keylime, case: Case) -> None:
    """A policy made from an image mounted elsewhere (--from-tree, --rootfs OLD=NEW) matches
    the log of the machine where the files live at NEW."""
    files = [case.file("a"), case.file("b")]
    case.measure(*files)
    log = case.export()
    image = case.base / "image"
    (image / "srv").mkdir(parents=True)
    for f in files:
        (image / "srv" / f.name).write_bytes(f.read_bytes())
    tree_root = str(case.tree.resolve())
    agg = case.base / "agg.json"
    imaguard_ok("policy", "runtime", "--from-log", log, "-o", agg)
    boot = RuntimePolicy.parse(agg.read_text()).digests["boot_aggregate"]
    out = case.base / "image.json"
    imaguard_ok(
        "policy", "runtime", "--from-tree", image, "-o", out, "--boot-aggregate", boot[0],
        "--rootfs", f"{(image / 'srv').resolve()}={tree_root}",
    )  # fmt: skip
    pol = RuntimePolicy.parse(out.read_text())
    assert sorted(pol.digests) == sorted([*(str(f.resolve()) for f in files), "boot_aggregate"])
    events, codes, _ = judge(keylime, log, out, case.pcrs())
    assert (events, codes) == (set(), set())


def test_keylime_check_script_says_accepted_or_rejected(keylime: Keylime, case: Case) -> None:
    """scripts/keylime-check, the documented command: words and exit codes 0/1/2."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "keylime-check"
    files = [case.file("a"), case.file("b")]
    case.measure(*files)
    log = case.export()
    policy = case.policy(log)
    pcrs = [f"--pcr={b}={v}" for b, v in case.pcrs().items()]
    r = run(keylime.python, script, log, policy, *pcrs, timeout=60)
    assert r.returncode == 0, r.explain()
    assert r.out.splitlines()[0].startswith("sha1: accepted (PCR checked;")
    doc = json.loads(policy.read_text())
    del doc["digests"][str(files[0].resolve())]
    policy.write_text(json.dumps(doc))
    r = run(keylime.python, script, log, policy, timeout=60)
    assert r.returncode == 1, r.explain()
    assert "REJECTED: " + KEYLIME_EVENTS["not_in_allowlist"] in r.out
    assert "PCR not checked" in r.out
    r = run(keylime.python, script, log, case.base / "missing.json", timeout=60)
    assert r.returncode == 2, r.explain()
