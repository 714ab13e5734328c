"""imaguard: file integrity for Linux user space, compatible with the kernel's IMA.

The public API is what ``__all__`` lists; every other name is private and may change.
See README.md for the two interfaces and DESIGN.md for the architecture.
"""

from imaguard.appraise import (
    Cause,
    Digest,
    MemoryStore,
    SidecarStore,
    SignatureInfo,
    SignatureStore,
    Status,
    Verdict,
    XattrStore,
    appraise,
    hash_file,
    sign_bytes,
    sign_file,
    signature_info,
    store_digest,
    verify_file,
)
from imaguard.crypto import (
    Certificate,
    GeneratedKey,
    Keyring,
    PrivateKey,
    generate_key,
    load_certificates,
    load_private_key,
)
from imaguard.errors import (
    Error,
    FileChangedError,
    FileError,
    FormatError,
    KeyLoadError,
    PolicyError,
    PolicyLockedError,
    StoreError,
    UsageError,
    VerificationError,
)
from imaguard.formats import HashAlgo

__version__ = "0.1.0"

__all__ = [
    "Cause",
    "Certificate",
    "Digest",
    "Error",
    "FileChangedError",
    "FileError",
    "FormatError",
    "GeneratedKey",
    "HashAlgo",
    "KeyLoadError",
    "Keyring",
    "MemoryStore",
    "PolicyError",
    "PolicyLockedError",
    "PrivateKey",
    "SidecarStore",
    "SignatureInfo",
    "SignatureStore",
    "Status",
    "StoreError",
    "UsageError",
    "Verdict",
    "VerificationError",
    "XattrStore",
    "__version__",
    "appraise",
    "generate_key",
    "hash_file",
    "load_certificates",
    "load_private_key",
    "sign_bytes",
    "sign_file",
    "signature_info",
    "store_digest",
    "verify_file",
]
