"""The direct calls: hash, sign, appraise, signature_info; typed verdicts.

See docs/architecture.md for the layers and the two interfaces.

No policy lives here, and nothing is cached unless the caller passes its own
:class:`VerdictCache`: every call reads the file and decides.
"""

from imaguard.appraise._cache import VerdictCache
from imaguard.appraise._calls import (
    Require,
    appraise,
    hash_file,
    sign_bytes,
    sign_file,
    signature_info,
    store_digest,
    verify_file,
)
from imaguard.appraise._files import Digest, Target
from imaguard.appraise._loaded import VerifiedFile, load_verified
from imaguard.appraise._sigstore import (
    STORE_NAMES,
    MemoryStore,
    SidecarStore,
    SignatureStore,
    XattrStore,
    default_store,
    store_for,
)
from imaguard.appraise._trustdb import ListInfo, TrustDB, verify_list
from imaguard.appraise._verdict import Cause, SignatureInfo, Signer, Status, Verdict

__all__ = [
    "STORE_NAMES",
    "Cause",
    "Digest",
    "ListInfo",
    "MemoryStore",
    "Require",
    "SidecarStore",
    "SignatureInfo",
    "SignatureStore",
    "Signer",
    "Status",
    "Target",
    "TrustDB",
    "Verdict",
    "VerdictCache",
    "VerifiedFile",
    "XattrStore",
    "appraise",
    "default_store",
    "hash_file",
    "load_verified",
    "sign_bytes",
    "sign_file",
    "signature_info",
    "store_digest",
    "store_for",
    "verify_file",
    "verify_list",
]
