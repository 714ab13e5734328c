"""Keys, certificates, key ids and keyrings; sign and verify over a digest (DESIGN §2).

Names load on first use (PEP 562): importing ``cryptography`` costs tens of milliseconds
that commands such as ``imaguard hash`` never need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imaguard._lazy import lazy_names
from imaguard.crypto.keytypes import KEY_TYPES

_LAZY = {
    "PASSWORD_ENV": "imaguard.crypto.keys",
    "Certificate": "imaguard.crypto.keys",
    "GeneratedKey": "imaguard.crypto.keygen",
    "Keyring": "imaguard.crypto.keyring",
    "PrivateKey": "imaguard.crypto.keys",
    "generate_key": "imaguard.crypto.keygen",
    "key_id_from_public_key": "imaguard.crypto.keys",
    "load_certificates": "imaguard.crypto.keys",
    "load_private_key": "imaguard.crypto.keys",
}

if TYPE_CHECKING:
    from imaguard.crypto.keygen import GeneratedKey, generate_key
    from imaguard.crypto.keyring import Keyring
    from imaguard.crypto.keys import (
        PASSWORD_ENV,
        Certificate,
        PrivateKey,
        key_id_from_public_key,
        load_certificates,
        load_private_key,
    )


__all__ = [
    "KEY_TYPES",
    "PASSWORD_ENV",
    "Certificate",
    "GeneratedKey",
    "Keyring",
    "PrivateKey",
    "generate_key",
    "key_id_from_public_key",
    "load_certificates",
    "load_private_key",
]

__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__, globals())
