"""The agent's TPM: the EK, an AK, credential activation and quotes, through tpm2-pytss.

Keys (TCG EK Credential Profile 2.0, section 2.2.1.4; TCG TPM v2.0 Provisioning Guidance,
section 7.8, for the persistent handle ranges):

* **EK**: the default RSA-2048 EK template (``EK-RSA2048``, the template the TPM's EK
  certificate, if any, is made for). A persistent EK at ``0x81010001`` is used as it is;
  otherwise the EK is created in the endorsement hierarchy and made persistent there.
* **AK**: a restricted RSA-2048 signing key (RSASSA, SHA-256), created as a primary key in
  the endorsement hierarchy and made persistent at ``0x81010010``. Its authorization is
  empty, so it is exempt from dictionary-attack lockout (``noDA``): a TPM locked out after
  disorderly resets still quotes. Primary keys are derived
  from the hierarchy's seed and the template, so the AK stays the same key across agent
  restarts and TPM resets (until the TPM is cleared): a restarted agent re-registers with
  the same ``aik_tpm``, which Keylime's registrar requires.

Encodings are those Keylime's own code reads (``keylime/tpm/tpm_util.py``
``checkquote``, ``__get_pcrs_from_blob``, ``makecredential``; ``keylime/tpm/tpm_main.py``
``_get_quote_parameters``): a quote is ``r<b64 TPMS_ATTEST>:<b64 TPMT_SIGNATURE>:<b64
pcrblob>``, the pcrblob being tpm2-tools' in-memory ``TPML_PCR_SELECTION`` followed by a
count and that many ``TPML_DIGEST``. The credential blob from the registrar is tpm2-tools'
``0xBADCC0DE`` format.

PCR 16 carries the agent's public key (Keylime's ``TPM_DATA_PCR``): before each quote it is
reset and extended with ``H(pubkey PEM)``, and always quoted; the verifier checks it equals
``H(0 || H(pubkey))`` (``Tpm.sim_extend``).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from imaguard.errors import BackendError, FormatError

__all__ = [
    "AK_HANDLE",
    "DATA_PCR",
    "EK_HANDLE",
    "AttestTpm",
    "Quote",
    "encode_pcrblob",
    "mask_to_pcrs",
]

_log = logging.getLogger(__name__)

EK_HANDLE = 0x81010001
"""TCG Provisioning Guidance: the RSA 2048 EK's persistent handle."""
AK_HANDLE = 0x81010010
"""imaguard's AK, in the endorsement range of persistent handles."""
DATA_PCR = 16
"""Keylime's TPM_DATA_PCR (keylime/config.py): it binds the agent's public key to a quote."""
MAX_NONCE = 64
"""Largest qualifying data a quote takes (sizeof(TPMT_HA), TPM 2.0 Part 2, TPM2B_DATA)."""
_PCRS_PER_READ = 8
_QUOTE_TRIES = 10
_NV_CERT_RSA = 0x01C00002
"""The RSA 2048 EK certificate's NV index (TCG EK Credential Profile, section 2.2.1.4)."""

_HASH_ALGS = {"sha1": "SHA1", "sha256": "SHA256", "sha384": "SHA384", "sha512": "SHA512"}

T = TypeVar("T")


def _pytss() -> Any:
    try:
        import tpm2_pytss
        import tpm2_pytss.utils
    except ImportError as e:  # pragma: no cover - depends on the install
        raise BackendError(
            "the agent needs tpm2-pytss: pip install 'imaguard[tpm]' (and the Debian package "
            "libtss2-dev to build it)"
        ) from e
    return tpm2_pytss


def mask_to_pcrs(mask: str | int) -> list[int]:
    """PCR numbers of a Keylime mask (``0x408000``: bit i selects PCR i), plus PCR 16."""
    if isinstance(mask, str):
        text = mask.strip().lower()
        text = text[2:] if text.startswith("0x") else text
        if not text or len(text) > 8 or any(c not in "0123456789abcdef" for c in text):
            raise FormatError(f"mask {mask!r}: not a hexadecimal 32-bit PCR mask")
        value = int(text, 16)
    else:
        value = mask
    if value >> 24:
        raise FormatError(f"mask {mask!r}: selects a PCR above 23")
    return sorted({i for i in range(24) if value >> i & 1} | {DATA_PCR})


def encode_pcrblob(alg_id: int, values: dict[int, bytes]) -> bytes:
    """tpm2-tools' PCR output (tpm2_quote -o), which Keylime parses: the in-memory
    ``TPML_PCR_SELECTION`` (count u32, 16 x {hash u16, sizeofSelect u8, pcrSelect[4],
    pad u8}), then the number of ``TPML_DIGEST`` (u32) and each (count u32, 8 x
    {size u16, buffer[64]}), little-endian; one bank."""
    pcrs = sorted(values)
    select = 0
    for i in pcrs:
        select |= 1 << i
    out = bytearray(struct.pack("<I", 1))
    out += struct.pack("<HB", alg_id, 3) + select.to_bytes(3, "little") + b"\0\0"
    out += bytes(8 * 15)
    chunks = [pcrs[i : i + _PCRS_PER_READ] for i in range(0, len(pcrs), _PCRS_PER_READ)]
    out += struct.pack("<I", len(chunks))
    for chunk in chunks:
        out += struct.pack("<I", len(chunk))
        for slot in range(_PCRS_PER_READ):
            value = values[chunk[slot]] if slot < len(chunk) else b""
            out += struct.pack("<H", len(value)) + value.ljust(64, b"\0")
    return bytes(out)


@dataclass(frozen=True)
class Quote:
    """One quote in Keylime's string form, with what it covers."""

    text: str
    """``r<b64 TPMS_ATTEST>:<b64 TPMT_SIGNATURE>:<b64 pcrblob>``."""
    pcrs: dict[int, bytes]
    reset_count: int


class AttestTpm:
    """A TPM the agent attests with; every call is serialized (one command at a time).

    Only the EK and the AK are kept in the TPM (persistent); nothing transient is left
    behind, so other programs can share the TPM (imaguard's log store extends PCR 10
    through its own connection).
    """

    def __init__(self, tcti: str, *, bank: str = "sha256") -> None:
        if bank not in _HASH_ALGS:
            raise BackendError(f"TPM {tcti}: unknown PCR bank {bank!r} for quotes")
        self.tcti = tcti
        self.bank = bank
        self._t = _pytss()
        self._lock = threading.RLock()
        self._esys: Any = self._connect()
        self.ek_cert = self._read_ek_cert()
        self.ek_public = self._ensure_ek()
        self.ak_public = self._ensure_ak()
        self._ek = self._call("opening the EK", self._esys.tr_from_tpmpublic, EK_HANDLE)
        self._ak = self._call("opening the AK", self._esys.tr_from_tpmpublic, AK_HANDLE)

    # -- connection ----------------------------------------------------------------------
    def _connect(self) -> Any:
        t = self._t
        try:
            esys = t.ESAPI(t.TCTILdr.parse(self.tcti))
        except Exception as e:
            raise BackendError(f"TPM {self.tcti}: cannot connect ({e})") from e
        try:
            esys.startup(t.TPM2_SU.CLEAR)
        except t.TSS2_Exception as e:
            if int(e.rc) & 0xFFFF != int(t.TPM2_RC.INITIALIZE):
                esys.close()
                raise BackendError(f"TPM {self.tcti}: start-up failed ({e})") from e
        return esys

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        try:
            return fn(*args, **kw)
        except BackendError:
            raise
        except Exception as e:
            raise BackendError(f"TPM {self.tcti}: {what} failed ({e})") from e

    def close(self) -> None:
        with self._lock:
            if self._esys is not None:
                try:
                    self._esys.close()
                except Exception as e:  # pragma: no cover - closing a dead connection
                    _log.debug("TPM close: %s", e)
                self._esys = None

    def __enter__(self) -> AttestTpm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keys ----------------------------------------------------------------------------
    def _persistent(self) -> set[int]:
        t = self._t
        _, data = self._call(
            "listing persistent handles",
            self._esys.get_capability,
            t.TPM2_CAP.HANDLES,
            0x81000000,
            256,
        )
        return {int(h) for h in data.data.handles}

    def _nv_indices(self) -> set[int]:
        t = self._t
        _, data = self._call(
            "listing NV indices", self._esys.get_capability, t.TPM2_CAP.HANDLES, 0x01000000, 256
        )
        return {int(h) for h in data.data.handles}

    def _read_nv(self, index: int) -> bytes:
        esys = self._esys
        handle = self._call(f"opening NV index {index:#x}", esys.tr_from_tpmpublic, index)
        pub, _ = self._call(f"reading NV index {index:#x}", esys.nv_read_public, handle)
        size = int(pub.nvPublic.dataSize)
        out = b""
        while len(out) < size:
            n = min(512, size - len(out))
            chunk = self._call(
                f"reading NV index {index:#x}",
                esys.nv_read,
                handle,
                n,
                len(out),
                auth_handle=self._t.ESYS_TR.OWNER,
            )
            out += bytes(chunk)
        return out

    def _read_ek_cert(self) -> bytes | None:
        if _NV_CERT_RSA not in self._nv_indices():
            return None
        try:
            return self._read_nv(_NV_CERT_RSA)
        except BackendError as e:
            _log.warning("%s; registering without an EK certificate", e)
            return None

    def _public_of(self, handle: int) -> Any:
        esys = self._esys
        tr = self._call(f"opening handle {handle:#x}", esys.tr_from_tpmpublic, handle)
        try:
            pub, _, _ = self._call(f"reading the public area of {handle:#x}", esys.read_public, tr)
        finally:
            esys.tr_close(tr)
        return pub

    def _create_persistent(self, template: Any, handle: int, what: str) -> Any:
        t = self._t
        esys = self._esys
        obj, pub, _, _, _ = self._call(
            f"creating the {what}",
            esys.create_primary,
            t.TPM2B_SENSITIVE_CREATE(),
            template,
            t.ESYS_TR.ENDORSEMENT,
        )
        try:
            self._call(
                f"making the {what} persistent at {handle:#x}",
                esys.evict_control,
                t.ESYS_TR.OWNER,
                obj,
                handle,
            )
        finally:
            esys.flush_context(obj)
        _log.info("created the %s at %#x", what, handle)
        return pub

    def _ensure_ek(self) -> bytes:
        t = self._t
        if EK_HANDLE in self._persistent():
            pub = self._public_of(EK_HANDLE)
            if pub.publicArea.type != t.TPM2_ALG.RSA:
                raise BackendError(
                    f"TPM {self.tcti}: the persistent object at {EK_HANDLE:#x} is not an RSA EK"
                )
        else:
            _, template = t.utils.create_ek_template("EK-RSA2048", self._no_nv_template)
            pub = self._create_persistent(template, EK_HANDLE, "EK")
        return bytes(pub.marshal())

    def _no_nv_template(self, index: int) -> bytes:
        """create_ek_template's NV reader: the default template (no template in NV)."""
        raise self._t.utils.NoSuchIndex(index)

    def _ak_template(self) -> Any:
        t = self._t
        a = t.TPMA_OBJECT
        attrs = (
            a.RESTRICTED
            | a.SIGN_ENCRYPT
            | a.FIXEDTPM
            | a.FIXEDPARENT
            | a.SENSITIVEDATAORIGIN
            | a.USERWITHAUTH
            | a.NODA
        )
        return t.TPM2B_PUBLIC(
            t.TPMT_PUBLIC.parse("rsa2048:rsassa-sha256:null", objectAttributes=attrs)
        )

    def _ensure_ak(self) -> bytes:
        t = self._t
        want = self._ak_template().publicArea
        if AK_HANDLE in self._persistent():
            pub = self._public_of(AK_HANDLE)
            area = pub.publicArea
            if (
                area.type != t.TPM2_ALG.RSA
                or int(area.objectAttributes) != int(want.objectAttributes)
                or area.parameters.rsaDetail.scheme.scheme != t.TPM2_ALG.RSASSA
            ):
                raise BackendError(
                    f"TPM {self.tcti}: the persistent object at {AK_HANDLE:#x} is not "
                    "imaguard's AK (a restricted RSASSA signing key); evict it "
                    f"(tpm2_evictcontrol -c {AK_HANDLE:#x}) or use another TPM"
                )
        else:
            pub = self._create_persistent(self._ak_template(), AK_HANDLE, "AK")
        return bytes(pub.marshal())

    @property
    def ak_name(self) -> bytes:
        """The AK's name (nameAlg || H(TPMT_PUBLIC)), what MakeCredential binds to."""
        area = self.ak_public[2:]
        return struct.pack(">H", 0x000B) + hashlib.sha256(area).digest()

    # -- credential activation -------------------------------------------------------------
    def activate_credential(self, blob: bytes) -> bytes:
        """The secret of a credential blob made for the EK and the AK (tpm2-tools format)."""
        t = self._t
        try:
            cred, secret = t.utils.tools_to_credential(blob)
        except Exception as e:
            raise FormatError(f"credential blob: not tpm2-tools' format ({e})") from e
        with self._lock:
            esys = self._esys
            session = self._call(
                "starting a policy session",
                esys.start_auth_session,
                t.ESYS_TR.NONE,
                t.ESYS_TR.NONE,
                t.TPM2_SE.POLICY,
                t.TPMT_SYM_DEF(algorithm=t.TPM2_ALG.NULL),
                t.TPM2_ALG.SHA256,
            )
            try:
                # The EK's policy: PolicySecret(TPM_RH_ENDORSEMENT) (EK Credential Profile).
                self._call(
                    "satisfying the EK's policy",
                    esys.policy_secret,
                    t.ESYS_TR.ENDORSEMENT,
                    session,
                    t.TPM2B_NONCE(),
                    t.TPM2B_DIGEST(),
                    t.TPM2B_NONCE(),
                    0,
                )
                out = self._call(
                    "activating the credential",
                    esys.activate_credential,
                    self._ak,
                    self._ek,
                    cred,
                    secret,
                    session1=t.ESYS_TR.PASSWORD,
                    session2=session,
                )
            finally:
                esys.flush_context(session)
        return bytes(out)

    # -- quotes ----------------------------------------------------------------------------
    def _read_pcrs(self, pcrs: Iterable[int]) -> dict[int, bytes]:
        t = self._t
        idx = sorted(pcrs)
        out: dict[int, bytes] = {}
        for start in range(0, len(idx), _PCRS_PER_READ):
            chunk = idx[start : start + _PCRS_PER_READ]
            sel = t.TPML_PCR_SELECTION.parse(f"{self.bank}:{','.join(map(str, chunk))}")
            _, _, digests = self._call("reading PCRs", self._esys.pcr_read, sel)
            got = [bytes(d) for d in digests]
            if len(got) != len(chunk):
                raise BackendError(
                    f"TPM {self.tcti}: the {self.bank} bank has no PCRs {chunk} allocated"
                )
            out.update(zip(chunk, got, strict=True))
        return out

    def _bind_data(self, data: bytes) -> None:
        t = self._t
        alg = getattr(t.TPM2_ALG, _HASH_ALGS[self.bank])
        digest = hashlib.new(self.bank, data).digest()
        value = t.TPMT_HA(hashAlg=alg, digest=t.TPMU_HA(**{self.bank: digest}))
        pcr = t.ESYS_TR.PCR0 + DATA_PCR
        self._call("resetting PCR 16", self._esys.pcr_reset, pcr)
        self._call("extending PCR 16", self._esys.pcr_extend, pcr, t.TPML_DIGEST_VALUES([value]))

    def quote(self, nonce: bytes, pcrs: Iterable[int], data: bytes) -> Quote:
        """A quote by the AK over ``pcrs`` (and PCR 16, which is set to carry ``data``).

        The PCRs are read around the quote and the quote retried until the values read
        are the ones the TPM signed (another process may extend PCR 10 meanwhile).
        """
        if not nonce or len(nonce) > MAX_NONCE:
            raise FormatError(f"nonce: {len(nonce)} bytes (1-{MAX_NONCE})")
        t = self._t
        selected = sorted(set(pcrs) | {DATA_PCR})
        selection = t.TPML_PCR_SELECTION.parse(f"{self.bank}:{','.join(map(str, selected))}")
        alg = int(getattr(t.TPM2_ALG, _HASH_ALGS[self.bank]))
        with self._lock:
            esys = self._esys
            self._bind_data(data)
            for _ in range(_QUOTE_TRIES):
                quoted, sig = self._call(
                    "quoting",
                    esys.quote,
                    self._ak,
                    selection,
                    t.TPM2B_DATA(nonce),
                    t.TPMT_SIG_SCHEME(scheme=t.TPM2_ALG.NULL),
                )
                attest_bytes = bytes(quoted)
                attest, _ = t.TPMS_ATTEST.unmarshal(attest_bytes)
                values = self._read_pcrs(selected)
                h = hashlib.new(self.bank)
                for i in selected:
                    h.update(values[i])
                if h.digest() == bytes(attest.attested.quote.pcrDigest):
                    break
                _log.debug("PCRs changed during the quote; quoting again")
            else:
                raise BackendError(
                    f"TPM {self.tcti}: PCRs kept changing during {_QUOTE_TRIES} quotes"
                )
        text = "r" + ":".join(
            base64.b64encode(part).decode("ascii")
            for part in (attest_bytes, bytes(sig.marshal()), encode_pcrblob(alg, values))
        )
        return Quote(text, values, int(attest.clockInfo.resetCount))
