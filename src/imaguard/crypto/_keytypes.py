"""The key types ``imaguard keys generate`` makes (a light module: no cryptography import)."""

KEY_TYPES = ("rsa2048", "rsa3072", "rsa4096", "ecdsa-p256", "ecdsa-p384")

__all__ = ["KEY_TYPES"]
