"""imaguard: file integrity for Linux user space, compatible with the kernel's IMA.

The public API is what ``__all__`` lists; every other name is private and may change.
See README.md for the two interfaces and docs/architecture.md for the architecture.

The errors and the direct calls load with the package; keys, the policy engine and the
integrity core load on first use (PEP 562), so ``import imaguard`` and the command line
start fast.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from imaguard._lazy import lazy_names as _lazy_names
from imaguard.appraise import (
    Cause,
    Digest,
    MemoryStore,
    SidecarStore,
    SignatureInfo,
    SignatureStore,
    Status,
    Verdict,
    VerdictCache,
    XattrStore,
    appraise,
    hash_file,
    sign_bytes,
    sign_file,
    signature_info,
    store_digest,
    verify_file,
)
from imaguard.errors import (
    BackendError,
    Error,
    FileChangedError,
    FileError,
    FormatError,
    KeyLoadError,
    LogIntegrityError,
    PolicyError,
    PolicyLockedError,
    ServiceError,
    StoreError,
    TruncatedError,
    UnsupportedAlgorithmError,
    UsageError,
    VerificationError,
)
from imaguard.formats import (
    HashAlgo,
)

__version__ = "0.1.0"

_LAZY = {
    "Certificate": "imaguard.crypto",
    "Client": "imaguard.service",
    "Decision": "imaguard.core",
    "GeneratedKey": "imaguard.crypto",
    "Guard": "imaguard.core",
    "Keyring": "imaguard.crypto",
    "PrivateKey": "imaguard.crypto",
    "Subject": "imaguard.policy",
    "VerifiedFile": "imaguard.appraise",
    "generate_key": "imaguard.crypto",
    "load_certificates": "imaguard.crypto",
    "load_private_key": "imaguard.crypto",
    "load_verified": "imaguard.appraise",
    "verified_open": "imaguard.loaders",
}

if _TYPE_CHECKING:
    from imaguard.appraise import VerifiedFile, load_verified
    from imaguard.core import Decision, Guard
    from imaguard.crypto import (
        Certificate,
        GeneratedKey,
        Keyring,
        PrivateKey,
        generate_key,
        load_certificates,
        load_private_key,
    )
    from imaguard.loaders import verified_open
    from imaguard.policy import Subject
    from imaguard.service import Client


__all__ = [
    "BackendError",
    "Cause",
    "Certificate",
    "Client",
    "Decision",
    "Digest",
    "Error",
    "FileChangedError",
    "FileError",
    "FormatError",
    "GeneratedKey",
    "Guard",
    "HashAlgo",
    "KeyLoadError",
    "Keyring",
    "LogIntegrityError",
    "MemoryStore",
    "PolicyError",
    "PolicyLockedError",
    "PrivateKey",
    "ServiceError",
    "SidecarStore",
    "SignatureInfo",
    "SignatureStore",
    "Status",
    "StoreError",
    "Subject",
    "TruncatedError",
    "UnsupportedAlgorithmError",
    "UsageError",
    "Verdict",
    "VerdictCache",
    "VerificationError",
    "VerifiedFile",
    "XattrStore",
    "__version__",
    "appraise",
    "generate_key",
    "hash_file",
    "load_certificates",
    "load_private_key",
    "load_verified",
    "sign_bytes",
    "sign_file",
    "signature_info",
    "store_digest",
    "verified_open",
    "verify_file",
]

__getattr__, __dir__ = _lazy_names(__name__, _LAZY, __all__, globals())
