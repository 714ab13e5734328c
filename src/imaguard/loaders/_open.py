"""``verified_open``: a read-only binary file over verified bytes (configs, plugins)."""

from __future__ import annotations

import io
import os

from imaguard.appraise import Verdict, load_verified
from imaguard.appraise._calls import Require
from imaguard.appraise._sigstore import SignatureStore
from imaguard.crypto import Keyring

__all__ = ["VerifiedReader", "verified_open"]


class VerifiedReader(io.BufferedReader):
    """A binary reader over a sealed memfd of verified bytes; ``verdict`` says why."""

    verdict: Verdict
    name_: str

    @property
    def path(self) -> str:
        """The file that was verified (``name`` is the memfd's descriptor number)."""
        return self.name_


def verified_open(
    path: str | os.PathLike[str],
    keyring: Keyring | str | os.PathLike[str],
    *,
    require: Require = "signature",
    algorithms: list[str] | None = None,
    store: SignatureStore | str | None = None,
) -> VerifiedReader:
    """Open ``path`` for reading the bytes that were verified, and only those.

    The file is copied into a sealed memfd and the copy verified (:func:`imaguard.load_verified`);
    the reader reads the memfd, so a writer changing ``path`` afterwards changes nothing
    read. Raises :class:`~imaguard.VerificationError` when the copy does not verify.
    """
    vf = load_verified(path, keyring, require=require, algorithms=algorithms, store=store)
    raw = io.FileIO(vf.fd, "rb", closefd=True)
    reader = VerifiedReader(raw)
    reader.verdict = vf.verdict
    reader.name_ = os.fspath(path)
    return reader
