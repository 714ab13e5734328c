"""Keys, certificates, key ids and keyrings; sign and verify over a digest (DESIGN §2).

Names load on first use (PEP 562): importing ``cryptography`` costs tens of milliseconds
that commands such as ``imaguard hash`` never need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imaguard._lazy import lazy_names
from imaguard.crypto._keytypes import KEY_TYPES

_LAZY = {
    "PASSWORD_ENV": "imaguard.crypto._keys",
    "Certificate": "imaguard.crypto._keys",
    "GeneratedKey": "imaguard.crypto._keygen",
    "Keyring": "imaguard.crypto._keyring",
    "PrivateKey": "imaguard.crypto._keys",
    "generate_key": "imaguard.crypto._keygen",
    "key_id_from_public_key": "imaguard.crypto._keys",
    "load_certificates": "imaguard.crypto._keys",
    "load_private_key": "imaguard.crypto._keys",
}

if TYPE_CHECKING:
    from imaguard.crypto._keygen import GeneratedKey, generate_key
    from imaguard.crypto._keyring import Keyring
    from imaguard.crypto._keys import (
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
