"""Keys, certificates, key ids and keyrings; sign and verify over a digest (DESIGN §2)."""

from imaguard.crypto.keygen import KEY_TYPES, GeneratedKey, generate_key
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
