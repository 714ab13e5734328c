"""The direct calls: hash, sign, appraise, signature_info; typed verdicts.

See docs/architecture.md for the layers and the two interfaces.

No policy lives here, and nothing is cached unless the caller passes its own
:class:`VerdictCache`: every call reads the file and decides.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from imaguard._lazy import lazy_names as _lazy_names
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
from imaguard.appraise._sigstore import (
    STORE_NAMES,
    MemoryStore,
    SidecarStore,
    SignatureStore,
    XattrStore,
    default_store,
    store_for,
)
from imaguard.appraise._verdict import Cause, SignatureInfo, Signer, Status, Verdict

# Loaded on first use (PEP 562): the tree verbs of the command line never need them.
_LAZY = {
    "ListInfo": "imaguard.appraise._trustdb",
    "TrustDB": "imaguard.appraise._trustdb",
    "VerifiedFile": "imaguard.appraise._loaded",
    "load_verified": "imaguard.appraise._loaded",
    "verify_list": "imaguard.appraise._trustdb",
}

if _TYPE_CHECKING:
    from imaguard.appraise._loaded import VerifiedFile, load_verified
    from imaguard.appraise._trustdb import ListInfo, TrustDB, verify_list

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

__getattr__, __dir__ = _lazy_names(__name__, _LAZY, __all__, globals())
