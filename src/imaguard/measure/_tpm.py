"""A real TPM as the PCR backend, through tpm2-pytss (the optional extra ``imaguard[tpm]``).

Selected by a TCTI string, as tpm2-tools take it: ``swtpm:host=127.0.0.1,port=2321``,
``device:/dev/tpmrm0``, ``mssim:...``. Every TPM failure (gone, refused, timed out)
becomes :class:`~imaguard.BackendError` naming the TCTI.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from imaguard.errors import BackendError

__all__ = ["TpmPcrs", "open_tpm"]

_log = logging.getLogger(__name__)

_ALGS = {"sha1": "SHA1", "sha256": "SHA256", "sha384": "SHA384", "sha512": "SHA512"}
_MAX_PCRS_PER_READ = 8


def _pytss() -> Any:
    try:
        import tpm2_pytss
    except ImportError as e:  # pragma: no cover - depends on the install
        raise BackendError(
            "a TPM needs tpm2-pytss: pip install 'imaguard[tpm]' (and the Debian package "
            "libtss2-dev to build it)"
        ) from e
    return tpm2_pytss


class TpmPcrs:
    """PCRs of a TPM 2.0, read and extended through ESAPI."""

    def __init__(self, tcti: str) -> None:
        self.tcti = tcti
        self.name = f"tpm:{tcti}"
        t = _pytss()
        self._t = t
        try:
            self._esys = t.ESAPI(t.TCTILdr.parse(tcti))
        except Exception as e:
            raise BackendError(f"TPM {tcti}: cannot connect ({e})") from e
        try:
            self._esys.startup(t.TPM2_SU.CLEAR)
        except Exception as e:  # TPM_RC_INITIALIZE: already started, harmless
            _log.debug("TPM startup: %s", e)
        self._banks = self._read_banks()

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:
            raise BackendError(f"TPM {self.tcti}: {what} failed ({e})") from e

    def _read_banks(self) -> tuple[str, ...]:
        t = self._t
        _, data = self._call(
            "reading the PCR banks", self._esys.get_capability, t.TPM2_CAP.PCRS, 0, 1
        )
        out = []
        for sel in data.data.assignedPCR:
            name = next((n for n, a in _ALGS.items() if sel.hash == getattr(t.TPM2_ALG, a)), None)
            if name is not None and any(bytes(sel.pcrSelect)[: sel.sizeofSelect]):
                out.append(name)
        if not out:
            raise BackendError(
                f"TPM {self.tcti}: no sha1/sha256/sha384/sha512 PCR bank is allocated"
            )
        return tuple(out)

    def banks(self) -> tuple[str, ...]:
        return self._banks

    def reset_count(self) -> int:
        """The TPM's reset counter: it grows with every TPM reset (reboot)."""
        info = self._call("reading the clock", self._esys.read_clock)
        return int(info.clockInfo.resetCount)

    def read(
        self, pcrs: Iterable[int], banks: Iterable[str] | None = None
    ) -> dict[str, dict[int, bytes]]:
        t = self._t
        idx = sorted(set(pcrs))
        out: dict[str, dict[int, bytes]] = {}
        for bank in banks or self._banks:
            if bank not in self._banks:
                raise BackendError(f"TPM {self.tcti}: bank {bank} is not allocated")
            values: dict[int, bytes] = {}
            for start in range(0, len(idx), _MAX_PCRS_PER_READ):
                chunk = idx[start : start + _MAX_PCRS_PER_READ]
                sel = t.TPML_PCR_SELECTION.parse(f"{bank}:{','.join(map(str, chunk))}")
                _, _, digests = self._call(f"reading {bank} PCRs {chunk}", self._esys.pcr_read, sel)
                got = [bytes(d) for d in digests]
                if len(got) != len(chunk):
                    raise BackendError(
                        f"TPM {self.tcti}: asked for {len(chunk)} {bank} PCRs, got {len(got)}"
                    )
                values.update(zip(chunk, got, strict=True))
            out[bank] = values
        return out

    def extend(self, pcr: int, digests: Mapping[str, bytes]) -> None:
        t = self._t
        values = []
        for bank, value in digests.items():
            alg = getattr(t.TPM2_ALG, _ALGS[bank])
            values.append(t.TPMT_HA(hashAlg=alg, digest=t.TPMU_HA(**{bank: value})))
        handle = t.ESYS_TR.PCR0 + pcr
        self._call(
            f"extending PCR {pcr}", self._esys.pcr_extend, handle, t.TPML_DIGEST_VALUES(values)
        )

    def close(self) -> None:
        try:
            self._esys.close()
        except Exception as e:  # pragma: no cover - closing a dead TPM connection
            _log.debug("TPM close: %s", e)


def open_tpm(tcti: str | None) -> TpmPcrs | None:
    """The TPM named by ``tcti``, or None when no TPM is configured."""
    return TpmPcrs(tcti) if tcti else None
