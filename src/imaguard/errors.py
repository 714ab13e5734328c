"""The one error tree of imaguard.

Every error imaguard raises derives from :class:`Error`. The branches are the
things a caller can act on::

    Error
    ├── FormatError          a value on the wire (xattr, signature header, ...) is malformed
    │   └── TruncatedError   the bytes end before the value does (a cut-short record)
    ├── KeyLoadError         a key or certificate cannot be loaded or used
    │   ├── UnsupportedAlgorithmError  this OpenSSL cannot use the key's or digest's algorithm
    │   └── TokenError       a PKCS#11 token, module or key object cannot be used (crypto)
    ├── VerificationError    a verification that was asked to raise did not pass
    ├── FileError            a file cannot be used: unreadable, not regular, changed while read
    │   └── FileChangedError the file changed while it was being hashed
    ├── StoreError           a signature store cannot read or write (no xattr support, ...)
    ├── PolicyError          a policy does not parse, or a change to it is refused
    │   └── PolicyLockedError    refused by a lock or a version rule
    ├── BackendError         a TPM or the log storage failed or is gone
    │   └── ServiceError     the daemon refused a control request (``code`` says why)
    ├── LogIntegrityError    a measurement log is corrupt or disagrees with its PCRs
    └── UsageError           the caller asked for something that makes no sense

Foreign exceptions (``OSError``, ``ValueError`` from ``cryptography``) are wrapped at
the boundary with ``raise ... from``, so the cause stays visible for debugging.
"""

from __future__ import annotations


class Error(Exception):
    """Root of every error imaguard raises."""


class FormatError(Error):
    """Bytes on the wire are malformed, truncated or of an unknown kind."""


class TruncatedError(FormatError):
    """The bytes end before the value or record they hold does (a cut-short tail)."""


class KeyLoadError(Error):
    """A key or certificate cannot be loaded, or is of a type or size imaguard refuses."""


class UnsupportedAlgorithmError(KeyLoadError):
    """The crypto library refuses an algorithm (a hash or key type this OpenSSL lacks).

    Distinct from a signature that does not verify: nothing was judged. ``algorithm``
    names what was refused.
    """

    def __init__(self, message: str, algorithm: str) -> None:
        super().__init__(message)
        self.algorithm = algorithm


class VerificationError(Error):
    """A verification that was asked to raise did not pass.

    ``verdict`` carries the structured result when one exists.
    """

    def __init__(self, message: str, verdict: object | None = None) -> None:
        super().__init__(message)
        self.verdict = verdict


class FileError(Error):
    """A file cannot be used: it is unreadable, not a regular file, or vanished."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class FileChangedError(FileError):
    """The file changed while it was being hashed; nothing was signed or trusted."""


class StoreError(Error):
    """A signature store cannot read or write (no xattr support, permission, ...).

    ``path`` names the file (or sidecar) at fault, ``reason`` says what went wrong without
    the path; the message is ``PATH: REASON``. ``unsupported`` is True when the store cannot
    hold a value for this file at all (a filesystem without extended attributes): the
    kernel's "no value" case, as opposed to a value that exists but cannot be read.
    """

    def __init__(self, path: str, reason: str, *, unsupported: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.unsupported = unsupported


class UsageError(Error):
    """The caller asked for something that makes no sense (a directory without -r, ...)."""


class PolicyError(Error):
    """A policy cannot be loaded, changed or evaluated.

    For a policy that does not parse, ``problems`` lists every malformed line as
    ``(source, line, column, reason)``; the message shows them as ``FILE:LINE:COL: reason``.
    """

    def __init__(
        self, message: str, problems: list[tuple[str, int, int, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.problems = problems or []


class PolicyLockedError(PolicyError):
    """A change was refused by the policy's lock or version (rollback, sealed, unsigned, ...)."""


class BackendError(Error):
    """A backend (TPM, log storage) failed or is gone; what was asked may not have happened."""


class LogIntegrityError(Error):
    """A measurement log is corrupt, or its replay disagrees with the PCRs it must match."""


class ServiceError(BackendError):
    """The daemon answered a control request with an error (docs/protocol.md).

    ``code`` is the protocol's error code (``permission-denied``, ``locked``,
    ``rollback``, ...); the message is the daemon's. A daemon that does not answer at all
    is a plain :class:`BackendError`.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
