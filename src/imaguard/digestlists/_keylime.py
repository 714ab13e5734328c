"""A digest list from a Keylime runtime policy (its ``digests`` map)."""

from __future__ import annotations

import logging
import os

from imaguard.digestlists._common import MakeReport, algorithm_for, build
from imaguard.errors import FileError, FormatError
from imaguard.formats.digestlist import DigestList
from imaguard.formats.hashalgo import HashAlgo
from imaguard.formats.keylime import RuntimePolicy

__all__ = ["make_from_runtime_policy"]

_log = logging.getLogger("imaguard.digestlists")


def make_from_runtime_policy(
    path: str | os.PathLike[str],
    *,
    algorithm: str | HashAlgo = "sha256",
    with_paths: bool = True,
    report: MakeReport | None = None,
) -> DigestList:
    """Every digest of ``algorithm`` that the runtime policy's ``digests`` map lists.

    A runtime policy does not say which algorithm made a digest: a digest belongs to
    ``algorithm`` when its length is that algorithm's (so sha256, sm3 and sha3-256 cannot
    be told apart; Keylime has the same ambiguity). Digests of other lengths are counted
    in ``report.skipped``. ``excludes``, ``keyrings`` and ``ima-buf`` describe no file
    content and are not carried over. The source is ``keylime:FILE`` (and its release).
    """
    algo = algorithm_for(algorithm)
    rep = report if report is not None else MakeReport()
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FileError(name, f"cannot read: {e.strerror or e}") from e
    try:
        policy = RuntimePolicy.parse(data)
    except FormatError as e:
        raise FormatError(f"{name}: {e}") from e
    width = 2 * algo.digest_size
    entries: list[tuple[bytes, str | None]] = []
    for file_path in sorted(policy.digests):
        for hexdigest in policy.digests[file_path]:
            if len(hexdigest) == width:
                entries.append((bytes.fromhex(hexdigest), file_path))
                rep.hashed += 1
            else:
                rep.skipped.append((file_path, f"a {len(hexdigest) * 4}-bit digest"))
    if policy.excludes:
        _log.info("%s: %d excludes are not carried over", name, len(policy.excludes))
    if not entries:
        _log.warning("%s: no %s digest in the policy; the list is empty", name, algo.name)
    source = f"keylime:{os.path.basename(name)}"
    if policy.release:
        source += f" release {policy.release}"
    return build(algo, entries, source=source, with_paths=with_paths)
