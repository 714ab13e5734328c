"""Verifying a measurement log: replay, PCRs, signatures, Keylime runtime policies.

Every check reports *findings*; verification goes on to the end of the log and reports
every problem, not just the first. The checks:

* ``template-hash``: a stored template digest does not match its template data;
* ``pcr-mismatch``: the replay never equals the expected PCR values;
* ``beyond-pcr``: a prefix of the log replays to the expected values but later entries are
  not covered (Keylime accepts this because quotes lag the log; so does ``prefix_ok``);
* ``violation``: a ToMToU/open-writers record (unless violations are ignored);
* ``boot-aggregate``: the first entry is not boot_aggregate;
* ``signature-invalid`` / ``unknown-key`` / ``signature-malformed``: an ima-sig signature
  does not verify against the keyring;
* ``signature-unsupported``: this OpenSSL cannot verify the signature's algorithm (nothing
  was judged);
* ``excluded`` never appears; ``not-in-policy`` / ``digest-not-allowed``: the runtime policy
  (Keylime's rules, keylime/ima/ima.py) does not allow an entry;
* ``parse``: the log is malformed (verification stops there; everything before is judged).

The replay is :class:`~imaguard.measure._replay.Replay`, the one the log store uses too:
it follows the kernel (>= 5.8) and evmctl (each bank is extended with the template data
hashed in that bank's algorithm, or 0xFF bytes for a violation).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imaguard.errors import FormatError, KeyLoadError, UnsupportedAlgorithmError
from imaguard.formats.digestlist import DigestList
from imaguard.formats.hashalgo import by_id, by_name
from imaguard.formats.keylime import RuntimePolicy
from imaguard.formats.measurelist import RawRecord, iter_ascii, iter_binary, split_fields
from imaguard.formats.template import TemplateDescriptor, decode_digest_field
from imaguard.formats.xattr import SignatureValue
from imaguard.measure._replay import Replay

if TYPE_CHECKING:
    from imaguard.crypto._keyring import Keyring
    from imaguard.crypto._keys import PublicKey

# The crypto layer (and the cryptography package under it) loads when a key is first
# needed: most verifications check no signature, and the command starts faster without it.

__all__ = [
    "Finding",
    "VerifyResult",
    "ascii_bank",
    "conclude",
    "records_from_ascii",
    "records_from_binary",
    "verify_records",
]

_SIG_TEMPLATES = {"ima-sig", "ima-sigv2", "ima-modsig"}


@dataclass(frozen=True)
class Finding:
    """One problem found in a log: its code (module doc), message, entry index and path."""

    code: str
    message: str
    index: int | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "index": self.index, "path": self.path}


@dataclass(frozen=True)
class VerifyResult:
    """A log's verification: entries replayed, the PCR values they give, every finding."""

    entries: int
    pcrs: dict[str, dict[int, str]]
    findings: tuple[Finding, ...]
    matched_at: int | None = None
    """Entries replayed when the expected PCRs first matched (None: never, or none given)."""
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.ok,
            "entries": self.entries,
            "pcrs": {b: {str(i): v for i, v in sorted(p.items())} for b, p in self.pcrs.items()},
            "matched_at": self.matched_at,
            "findings": [f.to_dict() for f in self.findings],
            "notes": list(self.notes),
        }


def records_from_binary(data: bytes, bank: str = "sha1") -> tuple[list[RawRecord], Finding | None]:
    """Raw records of a binary list; a parse error becomes a finding after the good records."""
    out: list[RawRecord] = []
    try:
        for rec in iter_binary(data, bank):
            out.append(rec)
    except FormatError as e:
        return out, Finding("parse", str(e), len(out))
    return out, None


def ascii_bank(text: bytes) -> str:
    """The bank of an ASCII list's template-digest column, from the width of its first
    line's digest (sha1 when it is none of the known widths)."""
    first = text.lstrip(b" \n").split(b"\n", 1)[0].lstrip(b" ").split(b" ")
    if len(first) > 1:
        return {40: "sha1", 64: "sha256", 96: "sha384", 128: "sha512"}.get(len(first[1]), "sha1")
    return "sha1"


def records_from_ascii(text: bytes) -> tuple[list[RawRecord], str, Finding | None]:
    """Raw records of an ASCII list and the bank of its digest column (from its width)."""
    bank = ascii_bank(text)
    out: list[RawRecord] = []
    try:
        for rec in iter_ascii(text, bank):
            out.append(rec)
    except FormatError as e:
        return out, bank, Finding("parse", str(e), len(out))
    return out, bank, None


class _Keys:
    """Public keys by key id: from a keyring's certificates and a policy's verification keys."""

    def __init__(self) -> None:
        self.by_id: dict[int, list[PublicKey]] = {}

    def add(self, key: PublicKey, key_id: int | None = None) -> None:
        from imaguard.crypto._keys import key_id_from_public_key

        ids = {key_id_from_public_key(key)}
        if key_id is not None:
            ids.add(key_id)
        for i in ids:
            self.by_id.setdefault(i, []).append(key)

    def add_keyring(self, ring: Keyring) -> None:
        for cert in ring.certificates:
            for i in cert.key_ids:
                self.by_id.setdefault(i, []).append(cert.public_key)

    def __bool__(self) -> bool:
        return bool(self.by_id)


def _decode(rec: RawRecord, desc_cache: dict[str, TemplateDescriptor]) -> dict[str, bytes]:
    desc = desc_cache.get(rec.template_name)
    if desc is None:
        desc = TemplateDescriptor.lookup(rec.template_name)
        desc_cache[rec.template_name] = desc
    if desc.is_ima:
        return {"d": rec.template_data[:20], "n": rec.template_data[20:].rstrip(b"\0") + b"\0"}
    fields = split_fields(rec.template_data, len(desc.fields), f"record {rec.index}")
    return dict(zip(desc.fields, fields, strict=True))


class _Judge:
    """What verification says about a record besides its template hash and violation:
    the boot_aggregate check of the first record, signatures and the runtime policy.

    Findings go to ``findings`` in record order; a problem with the policy's own keys is
    reported when the judge is made (before any record's).
    """

    def __init__(
        self,
        findings: list[Finding],
        keyring: Keyring | None,
        runtime_policy: RuntimePolicy | None,
        digest_lists: Sequence[tuple[bytes, DigestList]],
    ) -> None:
        self.findings = findings
        self.list_files = {d.hex() for d, _ in digest_lists}
        self.digest_lists = digest_lists
        self.keys = _Keys()
        self.keyring = keyring
        self.policy = runtime_policy
        if keyring is not None:
            self.keys.add_keyring(keyring)
        self.excl = None
        if runtime_policy is not None:
            self.excl = runtime_policy.exclude_regex
            keys = runtime_policy.public_keys()
            if keys:
                from imaguard.crypto._keys import load_public_key
            for key_id, der in keys:
                try:
                    self.keys.add(load_public_key(der), key_id)
                except KeyLoadError as e:
                    findings.append(Finding("policy", f"verification-keys: {e}"))
        self.active = runtime_policy is not None or keyring is not None
        """False: no record needs judging beyond the first one's boot_aggregate check."""
        self.descs: dict[str, TemplateDescriptor] = {}
        self.fast_digests = runtime_policy.digests if runtime_policy is not None else None

    def record(self, rec: RawRecord, viol: bool, first: bool) -> None:
        findings = self.findings
        if first and not viol:
            name = rec.name
            if name is None:
                try:
                    fields = _decode(rec, self.descs)
                    name = (fields.get("n-ng") or fields.get("n") or b"").rstrip(b"\0")
                except FormatError:
                    name = b""
            if name != b"boot_aggregate":
                findings.append(
                    Finding("boot-aggregate", "the first entry is not boot_aggregate", 0)
                )
        if not self.active or viol:
            return
        nm = rec.name
        fast_digests = self.fast_digests
        if (
            fast_digests is not None
            and nm is not None
            and rec.template_name == "ima-ng"
            and rec.file_digest is not None
        ):
            # The common case inline: an ima-ng entry against the runtime policy.
            path = nm.decode("utf-8", "surrogateescape")
            if self.digest_lists and _listed(
                path, rec.file_digest, self.list_files, self.digest_lists, rec.index, findings
            ):
                pass
            elif self.excl is None or not self.excl.match(path):
                _check_file_digest(
                    fast_digests, path, rec.file_digest[1].hex(), rec.index, findings
                )
        else:
            _judge(
                rec,
                self.descs,
                self.keys,
                self.keyring is not None,
                self.policy,
                self.excl,
                findings,
                (self.list_files, self.digest_lists),
            )


def verify_records(
    records: Iterable[RawRecord],
    *,
    digest_bank: str = "sha1",
    banks: Iterable[str] = ("sha1", "sha256"),
    expected: Mapping[str, Mapping[int, bytes]] | None = None,
    prefix_ok: bool = False,
    keyring: Keyring | None = None,
    runtime_policy: RuntimePolicy | None = None,
    ignore_violations: bool = False,
    parse_error: Finding | None = None,
    digest_lists: Sequence[tuple[bytes, DigestList]] = (),
) -> VerifyResult:
    """Replay ``records`` and judge them (see the module doc for the findings).

    ``digest_lists``: (SHA-256 of the list file, the list) of the signed digest lists the
    verifier trusts. Judged against a runtime policy, an ``imaguard:digestlist:NAME:add``
    entry must carry the digest of one of these files, and a file entry whose digest one
    of them holds is accepted as the runtime policy would accept it (a daemon with
    ``measure_listed = false`` measures the list once instead of each file it vouches for).
    """
    replay = Replay(banks, digest_bank=digest_bank, expected=expected)
    findings: list[Finding] = []
    judge = _Judge(findings, keyring, runtime_policy, digest_lists)
    zero = replay.zero
    step = replay.step
    record = judge.record
    count = 0
    for rec in records:
        count += 1
        viol = rec.digest == zero
        if not step(rec):
            findings.append(
                Finding(
                    "template-hash",
                    "stored template digest does not match the template data",
                    rec.index,
                )
            )
        if viol and not ignore_violations:
            findings.append(
                Finding("violation", "a ToMToU/open-writers violation record", rec.index)
            )
        record(rec, viol, count == 1)
    return conclude(
        findings,
        parse_error,
        count,
        replay.banks,
        replay.pcrs,
        expecting=replay.expecting,
        matches=replay.matches,
        matched_at=replay.matched_at,
        expected=expected,
        prefix_ok=prefix_ok,
    )


def conclude(
    findings: list[Finding],
    parse_error: Finding | None,
    count: int,
    banks: Sequence[str],
    pcrs: Mapping[str, Sequence[bytes]],
    *,
    expecting: bool,
    matches: bool,
    matched_at: int | None,
    expected: Mapping[str, Mapping[int, bytes]] | None,
    prefix_ok: bool,
) -> VerifyResult:
    """The result of a replay of ``count`` records: the parse error and the PCR check
    (``beyond-pcr`` / ``pcr-mismatch``) after the records' ``findings``; ``pcrs`` holds
    every bank's 24 PCR values after the replay."""
    if parse_error is not None:
        findings.append(parse_error)
    notes: list[str] = []
    if expecting and not matches:
        if matched_at is not None and matched_at < count:
            if prefix_ok:
                notes.append(
                    f"the PCRs match after entry {matched_at}; entries "
                    f"{matched_at}..{count - 1} are not covered by them"
                )
            else:
                findings.append(
                    Finding(
                        "beyond-pcr",
                        f"the PCRs match the first {matched_at} entries; entries "
                        f"{matched_at}..{count - 1} are not covered "
                        "(use --prefix-ok to accept)",
                        matched_at,
                    )
                )
        else:
            given = ", ".join(f"{b}:{i}" for b, v in (expected or {}).items() for i in v)
            findings.append(
                Finding("pcr-mismatch", f"the log never replays to the given PCR values ({given})")
            )
    used = sorted({i for b in banks for i, v in enumerate(pcrs[b]) if any(v)})
    values = {b: {i: pcrs[b][i].hex() for i in used} for b in banks}
    return VerifyResult(count, values, tuple(findings), matched_at, tuple(notes))


def _judge(
    rec: RawRecord,
    descs: dict[str, TemplateDescriptor],
    keys: _Keys,
    strict_sigs: bool,
    policy: RuntimePolicy | None,
    excl: Any,
    findings: list[Finding],
    lists: tuple[set[str], Sequence[tuple[bytes, DigestList]]] = (set(), ()),
) -> None:
    if rec.name is not None and rec.file_digest is not None:
        # Fast path: the ASCII reader already split out the name, digest and signature.
        path = rec.name.decode("utf-8", "surrogateescape")
        # (An ima-ng record judged against a runtime policy never gets here: verify_records
        # checks it inline.)
        fields = {"sig": rec.sig or b"", "buf": rec.sig or b""}
        try:
            algo = by_name(rec.file_digest[0])
        except FormatError as e:
            findings.append(Finding("parse", str(e), rec.index, path))
            return
        digest = rec.file_digest[1]
    else:
        try:
            fields = _decode(rec, descs)
        except FormatError as e:
            findings.append(Finding("parse", str(e), rec.index))
            return
        raw_name = (fields.get("n-ng") or fields.get("n") or b"").rstrip(b"\0")
        path = raw_name.decode("utf-8", "surrogateescape")
        digest_field = fields.get("d-ng") or fields.get("d-ngv2")
        if digest_field is not None:
            fid = "d-ngv2" if "d-ngv2" in fields else "d-ng"
            try:
                _, algo, digest = decode_digest_field(digest_field, fid)
            except FormatError as e:
                findings.append(Finding("parse", str(e), rec.index, path))
                return
        else:
            algo, digest = by_id(2), fields.get("d", b"")
    signed_ok = False
    sig = fields.get("sig", b"")
    if rec.template_name in _SIG_TEMPLATES and sig and keys:
        signed_ok = _check_signature(rec, path, algo.id, digest, sig, keys, strict_sigs, findings)
    if policy is None:
        return
    if lists[1] and _listed(path, (algo.name, digest), lists[0], lists[1], rec.index, findings):
        return
    if excl is not None and excl.match(path):
        return
    if signed_ok:
        return
    hexd = digest.hex()
    if rec.template_name == "ima-buf":
        buf = fields.get("buf", b"")
        key = _as_key(buf)
        if key is not None:
            if "*" in policy.ignored_keyrings or path in policy.ignored_keyrings:
                return
            allowed = policy.keyrings.get(path)
            if allowed is None or hexd not in allowed:
                findings.append(
                    Finding(
                        "not-in-policy",
                        f"key measured into {path} is not allowed by the policy's keyrings",
                        rec.index,
                        path,
                    )
                )
                return
            keys.add(key)  # learned, as Keylime does
            return
        allowed = policy.ima_buf.get(path)
        if allowed is None or hexd not in allowed:
            findings.append(
                Finding(
                    "not-in-policy",
                    f"ima-buf {path} with digest {hexd} is not allowed by the policy",
                    rec.index,
                    path,
                )
            )
        return
    _check_file_digest(policy.digests, path, hexd, rec.index, findings)


LIST_ENTRY = "imaguard:digestlist:"


def _listed(
    path: str,
    file_digest: tuple[str, bytes],
    list_files: set[str],
    digest_lists: Sequence[tuple[bytes, DigestList]],
    index: int,
    findings: list[Finding],
) -> bool:
    """True when the entry is judged here: a digest list's own entry, or a listed file."""
    algo, digest = file_digest
    if path.startswith(LIST_ENTRY):
        if path.endswith(":add") and not (algo == "sha256" and digest.hex() in list_files):
            findings.append(
                Finding(
                    "not-in-policy",
                    f"{path}: the digest list measured ({digest.hex()}) is none of the lists "
                    "given (--digestlist)",
                    index,
                    path,
                )
            )
        return True
    return any(dl.algorithm.name == algo and digest in dl for _, dl in digest_lists)


def _check_file_digest(
    digests: Mapping[str, Any], path: str, hexd: str, index: int, findings: list[Finding]
) -> None:
    """The runtime policy's file check (Keylime semantics): the path is listed, and the
    digest is among its allowed digests. The one place this check is made."""
    allowed = digests.get(path)
    if allowed is None:
        findings.append(
            Finding("not-in-policy", f"{path} is not in the runtime policy", index, path)
        )
    elif hexd not in allowed:
        findings.append(
            Finding(
                "digest-not-allowed",
                f"{path}: digest {hexd} is not among the allowed digests",
                index,
                path,
            )
        )


def _as_key(buf: bytes) -> PublicKey | None:
    if not buf:
        return None
    from cryptography import x509

    from imaguard.crypto._keys import load_public_key

    try:
        return load_public_key(buf)
    except KeyLoadError:
        pass
    try:
        key = x509.load_der_x509_certificate(buf).public_key()
    except ValueError:
        return None
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    return key if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey) else None


def _check_signature(
    rec: RawRecord,
    path: str,
    algo_id: int,
    digest: bytes,
    sig: bytes,
    keys: _Keys,
    strict: bool,
    findings: list[Finding],
) -> bool:
    try:
        value = SignatureValue.parse(sig)
    except FormatError as e:
        if strict:
            findings.append(Finding("signature-malformed", str(e), rec.index, path))
        return False
    if value.version != 2 or value.algorithm.id != algo_id:
        if strict:
            findings.append(
                Finding(
                    "signature-invalid",
                    "signature algorithm or version does not match the digest",
                    rec.index,
                    path,
                )
            )
        return False
    from imaguard.crypto._keys import verify_prehashed

    candidates = keys.by_id.get(value.key_id, [])
    if not candidates:
        if strict:
            findings.append(
                Finding("unknown-key", f"no key with id {value.key_id:08x}", rec.index, path)
            )
        return False
    try:
        if any(verify_prehashed(k, value.algorithm, digest, value.signature) for k in candidates):
            return True
    except UnsupportedAlgorithmError as e:
        # Not judged: reported as its own finding, never as an invalid signature.
        findings.append(Finding("signature-unsupported", str(e), rec.index, path))
        return False
    if strict:
        findings.append(Finding("signature-invalid", "signature does not verify", rec.index, path))
    return False
