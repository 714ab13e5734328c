"""The direct calls: hash, sign, appraise, signature_info; typed verdicts (DESIGN §2).

No policy and no cache live here: every call reads the file and decides.
"""

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
from imaguard.appraise._sigstore import (
    STORE_NAMES,
    MemoryStore,
    SidecarStore,
    SignatureStore,
    XattrStore,
    default_store,
    store_for,
)
from imaguard.appraise._verdict import Cause, SignatureInfo, Status, Verdict

__all__ = [
    "STORE_NAMES",
    "Cause",
    "Digest",
    "MemoryStore",
    "Require",
    "SidecarStore",
    "SignatureInfo",
    "SignatureStore",
    "Status",
    "Target",
    "Verdict",
    "XattrStore",
    "appraise",
    "default_store",
    "hash_file",
    "sign_bytes",
    "sign_file",
    "signature_info",
    "store_digest",
    "store_for",
    "verify_file",
]
