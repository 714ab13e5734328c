"""Keys, certificates, key ids and keyrings; sign and verify over a digest.

Signing keys live in files or on PKCS#11 tokens (``load_signing_key`` takes either, a
``pkcs11:`` URI for a token); a local CA issues the code-signing certificates the kernel's
``.ima`` keyring accepts (``create_ca``, ``issue_certificate``, ``create_csr``).

Names load on first use (PEP 562): importing ``cryptography`` costs tens of milliseconds
that commands such as ``imaguard hash`` never need.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from imaguard._lazy import lazy_names as _lazy_names
from imaguard.crypto._keytypes import KEY_TYPES

_LAZY = {
    "PASSWORD_ENV": "imaguard.crypto._keys",
    "PKCS11_MODULE_ENV": "imaguard.crypto._pkcs11",
    "PKCS11_PIN_ENV": "imaguard.crypto._pkcs11",
    "Certificate": "imaguard.crypto._keys",
    "CertificateAuthority": "imaguard.crypto._ca",
    "GeneratedKey": "imaguard.crypto._keygen",
    "Keyring": "imaguard.crypto._keyring",
    "Pkcs11Uri": "imaguard.crypto._pkcs11",
    "PrivateKey": "imaguard.crypto._keys",
    "TokenError": "imaguard.crypto._pkcs11",
    "create_ca": "imaguard.crypto._ca",
    "create_csr": "imaguard.crypto._ca",
    "default_pkcs11_module": "imaguard.crypto._pkcs11",
    "generate_key": "imaguard.crypto._keygen",
    "is_pkcs11_uri": "imaguard.crypto._pkcs11",
    "issue_certificate": "imaguard.crypto._ca",
    "key_id_from_public_key": "imaguard.crypto._keys",
    "load_certificates": "imaguard.crypto._keys",
    "load_pkcs11_key": "imaguard.crypto._pkcs11",
    "load_private_key": "imaguard.crypto._keys",
    "load_signing_key": "imaguard.crypto._pkcs11",
    "self_signed_certificate": "imaguard.crypto._ca",
    "write_certificate": "imaguard.crypto._ca",
}

if _TYPE_CHECKING:
    from imaguard.crypto._ca import (
        CertificateAuthority,
        create_ca,
        create_csr,
        issue_certificate,
        self_signed_certificate,
        write_certificate,
    )
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
    from imaguard.crypto._pkcs11 import (
        PKCS11_MODULE_ENV,
        PKCS11_PIN_ENV,
        Pkcs11Uri,
        TokenError,
        default_pkcs11_module,
        is_pkcs11_uri,
        load_pkcs11_key,
        load_signing_key,
    )


__all__ = [
    "KEY_TYPES",
    "PASSWORD_ENV",
    "PKCS11_MODULE_ENV",
    "PKCS11_PIN_ENV",
    "Certificate",
    "CertificateAuthority",
    "GeneratedKey",
    "Keyring",
    "Pkcs11Uri",
    "PrivateKey",
    "TokenError",
    "create_ca",
    "create_csr",
    "default_pkcs11_module",
    "generate_key",
    "is_pkcs11_uri",
    "issue_certificate",
    "key_id_from_public_key",
    "load_certificates",
    "load_pkcs11_key",
    "load_private_key",
    "load_signing_key",
    "self_signed_certificate",
    "write_certificate",
]

__getattr__, __dir__ = _lazy_names(__name__, _LAZY, __all__, globals())
