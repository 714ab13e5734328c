"""The direct calls: ``hash_file``, ``sign_file``, ``appraise``, ``verify_file``, ...

No policy, no cache: every call opens the file, reads what it needs and decides.
``appraise`` returns a :class:`Verdict` and never raises for a bad file; ``verify_file``
raises :class:`~imaguard.VerificationError` unless the file passes.

Targets are a path, an open file descriptor, or the content as ``bytes``. For bytes
there is no file to read a value from, so the stored value is given as ``value=``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from imaguard.appraise._cache import VerdictCache
from imaguard.appraise._files import (
    Digest,
    FileRef,
    Target,
    change_cookie,
    hash_bytes,
    hash_fd,
    open_target,
)
from imaguard.appraise._sigstore import SignatureStore, store_for
from imaguard.appraise._verdict import Cause, SignatureInfo, Signer, Status, Verdict
from imaguard.appraise._verity import VERITY_ALGORITHMS, fsverity_digest, fsverity_digest_bytes
from imaguard.errors import (
    FileError,
    FormatError,
    StoreError,
    UnsupportedAlgorithmError,
    UsageError,
    VerificationError,
)
from imaguard.formats import hashalgo
from imaguard.formats.hashalgo import HashAlgo
from imaguard.formats.xattr import (
    DigestNgValue,
    DigestValue,
    HmacValue,
    SignatureValue,
    XattrType,
    digest_value,
    file_id,
)
from imaguard.formats.xattr import parse as parse_value

if TYPE_CHECKING:  # the crypto layer loads on first use: `imaguard hash` never needs it
    from imaguard.crypto._keyring import Keyring
    from imaguard.crypto._keys import PrivateKey

__all__ = [
    "Require",
    "appraise",
    "appraise_value",
    "hash_file",
    "sign_bytes",
    "sign_file",
    "signature_info",
    "store_digest",
    "verify_file",
]

_log = logging.getLogger(__name__)

Require = Literal["signature", "digest", "any", "verity"]
"""What a file must carry: a signature; or a digest value (only meaningful when something
else protects it, e.g. EVM); or either."""

DEFAULT_ALGORITHM = "sha256"


def _algo(algorithm: str | HashAlgo) -> HashAlgo:
    algo = algorithm if isinstance(algorithm, HashAlgo) else hashalgo.by_name(algorithm)
    if not algo.computable:
        raise UsageError(f"hash algorithm {algo.name} cannot be computed by this Python/OpenSSL")
    return algo


def _store(store: SignatureStore | str | None) -> SignatureStore:
    if store is None or isinstance(store, str):
        return store_for(store)
    return store


def _name(target: Target) -> str:
    if isinstance(target, int):
        return f"<fd {target}>"
    if isinstance(target, bytes):
        return "<bytes>"
    return os.fspath(target)


def hash_file(target: Target, algorithm: str | HashAlgo = DEFAULT_ALGORITHM) -> Digest:
    """Hash a file's content (a path, a descriptor or bytes)."""
    algo = _algo(algorithm)
    if isinstance(target, bytes):
        return hash_bytes(target, algo)
    with open_target(target) as ref:
        return hash_fd(ref, algo)


def store_digest(
    target: str | os.PathLike[str] | int,
    algorithm: str | HashAlgo = DEFAULT_ALGORITHM,
    store: SignatureStore | str | None = None,
) -> DigestValue | DigestNgValue:
    """Hash a file and store its digest value (0x04, or 0x01 for md5/sha1 as the kernel does)."""
    algo = _algo(algorithm)
    st = _store(store)
    with open_target(target) as ref:
        digest = hash_fd(ref, algo)
        value = digest_value(algo, digest.value)
        st.write(ref, value.serialize())
    return value


def sign_file(
    target: str | os.PathLike[str] | int,
    key: PrivateKey,
    algorithm: str | HashAlgo = DEFAULT_ALGORITHM,
    store: SignatureStore | str | None = None,
    *,
    sigv3: bool = False,
) -> SignatureValue:
    """Hash a file, sign the digest and store a v2 (0x03) signature value.

    The previous value is replaced in one step or left untouched; a file that changes
    while it is hashed is not signed (:class:`~imaguard.FileChangedError`). With
    ``sigv3`` the value is a v3 (0x06) signature over the file's fs-verity digest, as
    ``evmctl sign_hash --veritysig`` makes (sha256 or sha512 only).
    """
    algo = _algo(algorithm)
    st = _store(store)
    with open_target(target) as ref:
        if sigv3:
            if algo.name not in VERITY_ALGORITHMS:
                raise UsageError(f"sigv3 signatures use sha256 or sha512, not {algo.name}")
            h = algo.new()
            h.update(file_id(algo, fsverity_digest(ref, algo.name)))
            value = SignatureValue(
                XattrType.IMA_VERITY_DIGSIG, algo, key.key_id, key.sign_digest(algo, h.digest())
            )
        else:
            digest = hash_fd(ref, algo)
            value = SignatureValue(
                XattrType.EVM_IMA_XATTR_DIGSIG,
                algo,
                key.key_id,
                key.sign_digest(algo, digest.value),
            )
        st.write(ref, value.serialize())
    _log.debug("signed %s with key %08x (%s)", ref.name, key.key_id, algo.name)
    return value


def sign_bytes(
    data: bytes, key: PrivateKey, algorithm: str | HashAlgo = DEFAULT_ALGORITHM
) -> SignatureValue:
    """The v2 signature value for ``data`` (nothing is stored)."""
    algo = _algo(algorithm)
    digest = hash_bytes(data, algo)
    return SignatureValue(
        XattrType.EVM_IMA_XATTR_DIGSIG, algo, key.key_id, key.sign_digest(algo, digest.value)
    )


def _lenient_parse(raw: bytes) -> DigestValue | DigestNgValue | HmacValue | SignatureValue:
    """Parse as the kernel reads a value for appraisal: a 0x04 digest may carry trailing
    bytes (only the first digest_size bytes are compared: ima_appraise.c xattr_verify)."""
    if raw[0] == 4 and len(raw) >= 2:
        algo = hashalgo.by_id(raw[1])
        if len(raw) > 2 + algo.digest_size:
            return DigestNgValue(algo, raw[2 : 2 + algo.digest_size])
    return parse_value(raw)


def _verdict_from_value(
    name: str,
    raw: bytes | None,
    hasher: Callable[[HashAlgo], Digest | Verdict],
    keyring: Keyring,
    require: Require,
    algorithms: frozenset[str] | None,
    verity: Callable[[str], bytes | Verdict] | None = None,
) -> Verdict:
    """Appraisal proper: ``ima_appraise_measurement()`` and ``xattr_verify()`` in
    security/integrity/ima/ima_appraise.c, with the blacklist and algorithm checks.

    ``verity`` gives the file's fs-verity digest for an algorithm (sigv3 values).
    """
    if raw is None:
        cause = {
            "signature": Cause.SIGNATURE_REQUIRED,
            "verity": Cause.VERITY_SIGNATURE_REQUIRED,
        }.get(require, Cause.MISSING_HASH)
        return Verdict(name, Status.NO_XATTR, cause, detail="no value stored for this file")
    if require == "verity" and raw[:1] in (b"\x01", b"\x03", b"\x04"):
        return Verdict(
            name,
            Status.FAIL,
            Cause.VERITY_SIGNATURE_REQUIRED,
            value_type=raw[0],
            detail="an fs-verity (sigv3) signature is required",
        )
    if len(raw) == 0 or raw[0] not in (1, 3, 4, 6):
        kind = f"0x{raw[0]:02x}" if raw else "an empty value"
        return Verdict(
            name,
            Status.UNKNOWN,
            Cause.UNKNOWN_IMA_DATA,
            value_type=raw[0] if raw else None,
            detail=f"stored value of type {kind} is not an IMA hash or signature",
        )
    if raw[0] in (1, 4) and require == "signature":
        # The kernel refuses a hash before looking at it when a signature is required.
        return Verdict(
            name,
            Status.FAIL,
            Cause.SIGNATURE_REQUIRED,
            value_type=raw[0],
            detail="a digest is stored but a signature is required",
        )
    if raw[0] == 6 and require == "signature":
        return Verdict(
            name,
            Status.FAIL,
            Cause.SIGNATURE_REQUIRED,
            value_type=6,
            detail="a sigv3 (fs-verity) signature is stored; an IMA signature is required",
        )
    try:
        value = _lenient_parse(raw)
    except FormatError as e:
        if raw[0] in (1, 4):
            cause = Cause.INVALID_HASH
        elif len(raw) > 1 and ((raw[0] == 3 and raw[1] >= 3) or (raw[0] == 6 and raw[1] != 3)):
            cause = Cause.INVALID_SIGNATURE_VERSION
        else:
            cause = Cause.INVALID_SIGNATURE
        return Verdict(name, Status.FAIL, cause, value_type=raw[0], detail=str(e))
    assert not isinstance(value, HmacValue)  # excluded by the type-byte check above
    algo = value.algorithm
    key_id = value.key_id if isinstance(value, SignatureValue) else None

    def verdict(status: Status, cause: str | None, detail: str = "", **extra: Any) -> Verdict:
        """A verdict about this value: the name, key id, algorithm and type filled in."""
        return Verdict(
            name,
            status,
            cause,
            key_id=key_id,
            algorithm=algo.name,
            value_type=int(value.type),
            detail=detail,
            **extra,
        )

    if algorithms is not None and algo.name not in algorithms:
        return verdict(
            Status.FAIL,
            Cause.DENIED_HASH_ALGORITHM,
            f"{algo.name} is not among the allowed algorithms ({', '.join(sorted(algorithms))})",
        )
    if isinstance(value, DigestValue | DigestNgValue):
        # (A required signature was refused before parsing, as the kernel does.)
        digest = hasher(algo)
        if isinstance(digest, Verdict):
            return digest
        if keyring.is_blacklisted(digest.value):
            return verdict(
                Status.FAIL,
                Cause.BLACKLISTED_HASH,
                "the content digest is blacklisted",
                digest=digest.value,
            )
        if digest.value != value.digest:
            return verdict(
                Status.FAIL,
                Cause.INVALID_HASH,
                "content does not match the stored digest",
                digest=digest.value,
            )
        return verdict(Status.PASS, None, digest=digest.value)
    # A signature.
    if require == "digest":
        return verdict(
            Status.FAIL, Cause.MISSING_HASH, "a signature is stored but a digest value is required"
        )
    sigv3 = value.type == XattrType.IMA_VERITY_DIGSIG
    bad_signature = Cause.INVALID_VERITY_SIGNATURE if sigv3 else Cause.INVALID_SIGNATURE
    if sigv3 and (verity is None or algo.name not in VERITY_ALGORITHMS):
        why = "no fs-verity digest source" if verity is None else f"fs-verity has no {algo.name}"
        return verdict(Status.UNKNOWN, Cause.SIGV3_HASHING_ERROR, why)
    certs = keyring.lookup(value.key_id)
    if not certs:
        return verdict(
            Status.UNKNOWN_KEY,
            Cause.INVALID_SIGNATURE,
            f"no key with id {value.key_id:08x} in keyring {keyring.name}",
        )
    if keyring.is_revoked(value.key_id):
        return verdict(Status.FAIL, Cause.INVALID_SIGNATURE, f"key {value.key_id:08x} is revoked")
    if not algo.computable:
        return verdict(Status.UNKNOWN, Cause.UNKNOWN, f"{algo.name} cannot be computed here")
    if sigv3:
        assert verity is not None
        vd = verity(algo.name)
        if isinstance(vd, Verdict):
            return replace(vd, cause=Cause.SIGV3_HASHING_ERROR)
        # sigv3 signs H(0x06 || algo || fs-verity digest): ima_appraise.c calc_file_id_hash.
        h = algo.new()
        h.update(file_id(algo, vd))
        signed, blacklist_key = h.digest(), vd
    else:
        content = hasher(algo)
        if isinstance(content, Verdict):
            return content
        signed, blacklist_key = content.value, content.value
    if keyring.is_blacklisted(blacklist_key):
        return verdict(
            Status.FAIL, Cause.BLACKLISTED_HASH, "the content digest is blacklisted", digest=signed
        )
    for cert in certs:
        try:
            ok = cert.verifies(algo, signed, value.signature)
        except UnsupportedAlgorithmError as e:
            # Not judged, so not "invalid-signature": this OpenSSL cannot check it.
            return verdict(Status.UNKNOWN, Cause.UNKNOWN, str(e), digest=signed)
        if ok:
            return verdict(Status.PASS, None, digest=signed, signer=cert.description)
    return verdict(
        Status.FAIL, bad_signature, "signature does not match the content", digest=signed
    )


def appraise_value(
    name: str,
    raw: bytes | None,
    hasher: Callable[[HashAlgo], Digest | Verdict],
    keyring: Keyring,
    require: Require = "signature",
    algorithms: frozenset[str] | None = None,
    verity: Callable[[str], bytes | Verdict] | None = None,
) -> Verdict:
    """Appraise a stored value against content given by ``hasher`` (algorithm -> digest).

    The building block of :func:`appraise` for callers that already hold the file open and
    want to share one hash between appraisal and measurement (the integrity core).
    """
    return _verdict_from_value(name, raw, hasher, keyring, require, algorithms, verity)


class _Hasher:
    """Hashes the target once per algorithm, turning file problems into a verdict."""

    def __init__(self, name: str, ref: FileRef | None, data: bytes | None) -> None:
        self.name = name
        self.ref = ref
        self.data = data

    def __call__(self, algo: HashAlgo) -> Digest | Verdict:
        if not algo.computable:
            return Verdict(
                self.name,
                Status.UNKNOWN,
                Cause.UNKNOWN,
                algorithm=algo.name,
                detail=f"{algo.name} cannot be computed here",
            )
        if self.data is not None:
            return hash_bytes(self.data, algo)
        assert self.ref is not None
        try:
            return hash_fd(self.ref, algo)
        except FileError as e:
            return Verdict(
                self.name, Status.UNKNOWN, Cause.UNKNOWN, algorithm=algo.name, detail=e.reason
            )

    def verity(self, algorithm: str) -> bytes | Verdict:
        """The fs-verity digest of the target (sigv3), or a verdict saying why not."""
        if self.data is not None:
            return fsverity_digest_bytes(self.data, algorithm)
        assert self.ref is not None
        try:
            return fsverity_digest(self.ref, algorithm)
        except FileError as e:
            return Verdict(
                self.name,
                Status.UNKNOWN,
                Cause.SIGV3_HASHING_ERROR,
                algorithm=algorithm,
                detail=e.reason,
            )


def _keyring(
    keyring: Keyring | str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> Keyring:
    from imaguard.crypto._keyring import Keyring

    if isinstance(keyring, Keyring):
        return keyring
    if isinstance(keyring, str | os.PathLike):
        return Keyring.load(keyring)
    return Keyring.load(*keyring)


def appraise(
    target: Target,
    keyring: Keyring | str | os.PathLike[str],
    *,
    require: Require = "signature",
    algorithms: Iterable[str] | None = None,
    store: SignatureStore | str | None = None,
    value: bytes | None = None,
    cache: VerdictCache | None = None,
) -> Verdict:
    """Appraise a file against a keyring; returns a :class:`Verdict`, never raises for a bad file.

    ``require`` is ``"signature"`` by default: a bare digest value is not evidence of
    anything unless something else (EVM, a signed digest list) protects it. ``algorithms``
    restricts the hash algorithms accepted (as the kernel's ``appraise_algos``). ``value``
    gives the stored value directly (needed for bytes targets; overrides the store).
    A keyring given as a path is loaded; its errors do raise (they are the caller's).
    Nothing is cached unless ``cache`` is a :class:`VerdictCache` the caller made and
    owns; there is no process-wide cache (``cache=True`` is refused).
    """
    if cache is not None and not isinstance(cache, VerdictCache):
        raise UsageError(
            f"cache= takes a VerdictCache (imaguard.VerdictCache()), not {cache!r}: "
            "there is no process-wide cache"
        )
    ring = _keyring(keyring)
    allowed = (
        frozenset(hashalgo.by_name(a).name for a in algorithms) if algorithms is not None else None
    )
    if require not in ("signature", "digest", "any", "verity"):
        raise UsageError(
            f"require must be 'signature', 'digest', 'any' or 'verity', not {require!r}"
        )
    name = _name(target)
    if isinstance(target, bytes):
        h = _Hasher(name, None, target)
        return _verdict_from_value(name, value, h, ring, require, allowed, h.verity)
    st = _store(store)
    try:
        with open_target(target) as ref:
            if value is None:
                try:
                    raw = st.read(ref)
                except StoreError as e:
                    return Verdict(name, Status.UNKNOWN, Cause.UNKNOWN, detail=e.reason)
            else:
                raw = value
            h = _Hasher(name, ref, None)
            if cache is None:
                return _verdict_from_value(name, raw, h, ring, require, allowed, h.verity)
            vc = cache
            cookie = change_cookie(ref.fd, ref.st)
            key = (cookie.key, raw, ring.fingerprint(), require, allowed)
            hit = vc.get(key, cookie)
            if hit is not None:
                return replace(hit, target=name)
            verdict = _verdict_from_value(name, raw, h, ring, require, allowed, h.verity)
            if change_cookie(ref.fd) == cookie:
                vc.put(key, cookie, verdict)
            return verdict
    except FileError as e:
        return Verdict(name, Status.UNKNOWN, Cause.UNKNOWN, detail=e.reason)


def verify_file(
    target: Target,
    keyring: Keyring | str | os.PathLike[str],
    **kwargs: object,
) -> Verdict:
    """Like :func:`appraise`, but raise VerificationError unless the file passes."""
    verdict = appraise(target, keyring, **kwargs)  # type: ignore[arg-type]
    if not verdict.passed:
        raise VerificationError(f"{verdict.target}: {verdict.describe()}", verdict)
    return verdict


_TYPE_NAMES = {
    0x01: "digest",
    0x02: "evm-hmac",
    0x03: "signature-v2",
    0x04: "digest-ng",
    0x05: "evm-portable-signature",
    0x06: "signature-v3-verity",
}


def _info_from_raw(name: str, raw: bytes | None, store_name: str) -> SignatureInfo:
    if raw is None:
        return SignatureInfo(name, present=False, store=store_name)
    kind = raw[0] if raw else None
    base = SignatureInfo(
        name,
        present=True,
        value_type=kind,
        type_name=_TYPE_NAMES.get(kind) if kind is not None else None,
        value_size=len(raw),
        store=store_name,
    )
    try:
        value = parse_value(raw)
    except FormatError as e:
        return replace(base, error=str(e))
    if isinstance(value, SignatureValue):
        return replace(
            base,
            algorithm=value.algorithm.name,
            key_id=value.key_id,
            signature_size=len(value.signature),
        )
    if isinstance(value, HmacValue):
        return replace(base, algorithm="sha1", digest=value.hmac)
    return replace(base, algorithm=value.algorithm.name, digest=value.digest)


def signature_info(
    target: Target,
    *,
    store: SignatureStore | str | None = None,
    value: bytes | None = None,
    keyring: Keyring | str | os.PathLike[str] | None = None,
) -> SignatureInfo:
    """Decode what is stored for a file without verifying it: no hashing.

    With ``keyring``, the signer is named: the certificate whose key id the signature
    carries (subject, key id, validity), looked up, not verified. Raises
    FileError/StoreError when the file or its store cannot be read at all; a malformed
    value is reported in ``.error``.
    """
    name = _name(target)
    if isinstance(target, bytes) or value is not None:
        info = _info_from_raw(name, value, "given")
    else:
        st = _store(store)
        with open_target(target) as ref:
            info = _info_from_raw(name, st.read(ref), st.name)
    if keyring is None:
        return info
    return replace(info, signer=_signer(_keyring(keyring), info.key_id), keyring_checked=True)


def _signer(ring: Keyring, key_id: int | None) -> Signer | None:
    if key_id is None:
        return None
    certs = ring.lookup(key_id)
    if not certs:
        return None
    x = certs[0].x509
    return Signer(
        x.subject.rfc4514_string(),
        key_id,
        x.not_valid_before_utc.isoformat(),
        x.not_valid_after_utc.isoformat(),
        certs[0].source,
    )
