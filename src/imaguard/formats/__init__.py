"""Wire formats: pure functions and frozen types, no I/O (the lowest layer).

See docs/architecture.md for the layers.
"""

from imaguard.formats.hashalgo import ALGORITHMS, HashAlgo, by_id, by_name, computable_names
from imaguard.formats.xattr import (
    DigestNgValue,
    DigestValue,
    HmacValue,
    ImaValue,
    SignatureValue,
    XattrType,
    digest_value,
    parse,
)

__all__ = [
    "ALGORITHMS",
    "DigestNgValue",
    "DigestValue",
    "HashAlgo",
    "HmacValue",
    "ImaValue",
    "SignatureValue",
    "XattrType",
    "by_id",
    "by_name",
    "computable_names",
    "digest_value",
    "parse",
]
