"""PKCS#11 key names (RFC 7512 URIs), the RSA DigestInfo and key loading without a token.

Signing on a real (software) token is tested in tests/interop/tokens/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

import imaguard
from imaguard.crypto import (
    PKCS11_MODULE_ENV,
    Pkcs11Uri,
    TokenError,
    default_pkcs11_module,
    is_pkcs11_uri,
    load_pkcs11_key,
    load_signing_key,
)
from imaguard.crypto._pkcs11 import digest_info

# -- URIs ------------------------------------------------------------------------------------


def test_parse_path_and_query_attributes() -> None:
    uri = Pkcs11Uri.parse(
        "pkcs11:token=My%20Token;object=sign%3Bkey;id=%01%ff;type=private"
        "?pin-value=12%2634&module-path=/usr/lib/x.so"
    )
    assert uri.attributes == {
        "token": "My Token",
        "object": "sign;key",
        "id": "01ff",
        "type": "private",
        "pin-value": "12&34",
        "module-path": "/usr/lib/x.so",
    }
    assert uri.key_id == b"\x01\xff"
    assert uri.token == "My Token"
    assert uri.object == "object=sign;key;id=01ff"
    assert uri.redacted() == (
        "pkcs11:token=My%20Token;object=sign%3Bkey;id=%01%ff;type=private"
        "?module-path=%2Fusr%2Flib%2Fx.so"
    )


def test_pin_value_in_the_path_is_accepted_and_never_shown() -> None:
    uri = Pkcs11Uri.parse("pkcs11:token=t;object=k;pin-value=1234")
    assert uri.get("pin-value") == "1234"
    assert uri.redacted() == "pkcs11:token=t;object=k"
    assert "1234" not in repr(uri.redacted())


def test_serial_names_the_token_when_no_label() -> None:
    uri = Pkcs11Uri.parse("pkcs11:serial=0dbb8cc1638d0f26")
    assert (uri.token, uri.object) == ("0dbb8cc1638d0f26", "")
    assert Pkcs11Uri.parse("pkcs11:").token == "(any token)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file:/x", "not a PKCS#11 URI"),
        ("pkcs11:token=a;label=b", "unknown attribute 'label'"),
        ("pkcs11:token=a;token=b", "attribute 'token' given twice"),
        ("pkcs11:token", "'token' is not an attribute=value pair"),
        ("pkcs11:type=secret", "type='secret' is not one of"),
        ("pkcs11:slot-id=x1", "slot-id='x1' is not a number"),
    ],
)
def test_malformed_uris_are_refused(text: str, message: str) -> None:
    with pytest.raises(imaguard.KeyLoadError, match=message):
        Pkcs11Uri.parse(text)


def test_a_refused_uri_does_not_echo_its_pin() -> None:
    with pytest.raises(imaguard.KeyLoadError) as exc:
        Pkcs11Uri.parse("pkcs:token=a;pin-value=secret")
    assert "secret" not in str(exc.value)


def test_vendor_attributes_pass() -> None:
    assert Pkcs11Uri.parse("pkcs11:object=k;x-vendor=1").get("x-vendor") == "1"


def test_is_pkcs11_uri() -> None:
    assert is_pkcs11_uri("pkcs11:token=a")
    assert is_pkcs11_uri("PKCS11:token=a")
    assert not is_pkcs11_uri("./pkcs11:token=a")
    assert not is_pkcs11_uri("key.pem")


# -- the module ------------------------------------------------------------------------------


def test_default_module_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PKCS11_MODULE_ENV, "/opt/vendor/libp11.so")
    assert default_pkcs11_module() == "/opt/vendor/libp11.so"


def test_default_module_is_p11_kit_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PKCS11_MODULE_ENV, raising=False)
    path = default_pkcs11_module()
    assert os.path.basename(path) == "p11-kit-proxy.so"
    assert path.startswith("/usr/lib")


def test_missing_module_is_a_token_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "libnothing.so")
    with pytest.raises(TokenError) as exc:
        load_pkcs11_key("pkcs11:token=t;object=k", module=missing, pin="1")
    assert str(exc.value) == f"PKCS#11 module {missing}: no such file"
    assert (exc.value.module, exc.value.token, exc.value.object) == (missing, "t", "object=k")
    assert isinstance(exc.value, imaguard.KeyLoadError)


def test_uri_module_path_is_used(tmp_path: Path) -> None:
    missing = str(tmp_path / "from-uri.so")
    with pytest.raises(TokenError) as exc:
        load_pkcs11_key(f"pkcs11:token=t?module-path={missing}")
    assert exc.value.module == missing
    # --pkcs11-module wins over the URI
    other = str(tmp_path / "explicit.so")
    with pytest.raises(TokenError) as exc:
        load_pkcs11_key(f"pkcs11:token=t?module-path={missing}", module=other)
    assert exc.value.module == other


def test_not_a_library_is_a_token_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.so"
    bogus.write_bytes(b"not an ELF file")
    with pytest.raises(TokenError) as exc:
        load_pkcs11_key("pkcs11:token=t", module=str(bogus))
    assert str(exc.value).startswith(f"PKCS#11 module {bogus}: cannot load it (")
    assert exc.value.module == str(bogus)


# -- load_signing_key: files and URIs ----------------------------------------------------------


def test_file_keys_load_as_before(keys_dir: dict[str, Path]) -> None:
    path = keys_dir["ecdsa-p256"] / "private.pem"
    key = load_signing_key(path)
    assert key.public_key.public_numbers() == (
        imaguard.load_private_key(path).public_key.public_numbers()
    )
    cert = keys_dir["ecdsa-p256"] / "cert.der"
    with_cert = load_signing_key(str(path), certificate=cert)
    assert with_cert.key_id == imaguard.load_certificates(cert)[0].key_id


def test_options_of_the_other_kind_are_usage_errors(keys_dir: dict[str, Path]) -> None:
    with pytest.raises(imaguard.UsageError, match="a password is for an encrypted key file"):
        load_signing_key("pkcs11:token=t", "secret")
    with pytest.raises(imaguard.UsageError, match="--pkcs11-module is for a pkcs11: key"):
        load_signing_key(keys_dir["rsa2048"] / "private.pem", pkcs11_module="/x.so")


# -- the DigestInfo PKCS#1 v1.5 signs ----------------------------------------------------------

# RFC 8017 section 9.2, note 1: the DER prefixes of the DigestInfo values.
RFC8017_PREFIXES = {
    "md5": "3020300c06082a864886f70d020505000410",
    "sha1": "3021300906052b0e03021a05000414",
    "sha224": "302d300d06096086480165030402040500041c",
    "sha256": "3031300d060960864801650304020105000420",
    "sha384": "3041300d060960864801650304020205000430",
    "sha512": "3051300d060960864801650304020305000440",
}


@pytest.mark.parametrize("name", sorted(RFC8017_PREFIXES))
def test_digest_info_matches_rfc_8017(name: str) -> None:
    size = bytes.fromhex(RFC8017_PREFIXES[name])[-1]
    digest = bytes(range(size))
    assert digest_info(name, digest) == bytes.fromhex(RFC8017_PREFIXES[name]) + digest


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sha1", hashes.SHA1),
        ("sha256", hashes.SHA256),
        ("sha512", hashes.SHA512),
        ("sha3-256", hashes.SHA3_256),
        ("sha3-384", hashes.SHA3_384),
        ("sha3-512", hashes.SHA3_512),
    ],
)
def test_digest_info_is_what_openssl_signs(
    rsa_key: imaguard.PrivateKey, name: str, cls: type[hashes.HashAlgorithm]
) -> None:
    """Recover what a file key's PKCS#1 v1.5 signature holds: exactly our DigestInfo."""
    algorithm = cls()
    digest = bytes(range(algorithm.digest_size))
    key = rsa_key.key
    assert isinstance(key, rsa.RSAPrivateKey)
    signature = key.sign(digest, padding.PKCS1v15(), utils.Prehashed(algorithm))
    recovered = key.public_key().recover_data_from_signature(
        signature, padding.PKCS1v15(), utils.NoDigestInfo()
    )
    assert recovered == digest_info(name, digest)


def test_digest_info_refuses_unknown_algorithms() -> None:
    with pytest.raises(imaguard.KeyLoadError, match="no PKCS#1 DigestInfo for hash algorithm"):
        digest_info("streebog256", bytes(32))


def test_default_module_when_no_proxy_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    from imaguard.crypto import _pkcs11

    monkeypatch.delenv(PKCS11_MODULE_ENV, raising=False)
    gone = ["/nonexistent/a/p11-kit-proxy.so", "/nonexistent/b/p11-kit-proxy.so"]
    monkeypatch.setattr(_pkcs11, "_proxy_candidates", lambda: gone)
    assert default_pkcs11_module() == gone[0]
    with pytest.raises(TokenError) as exc:
        load_pkcs11_key("pkcs11:token=t")
    assert str(exc.value) == (
        f"PKCS#11 module {gone[0]}: no such file (give --pkcs11-module PATH or set "
        "IMAGUARD_PKCS11_MODULE; Debian's p11-kit-modules package installs p11-kit-proxy.so)"
    )


def test_der_lengths_and_ec_points() -> None:
    from imaguard.crypto._pkcs11 import _der, _unwrap_ec_point

    assert _der(0x04, bytes(3)) == b"\x04\x03\x00\x00\x00"
    assert _der(0x04, bytes(200))[:3] == b"\x04\x81\xc8"
    assert _der(0x04, bytes(300))[:4] == b"\x04\x82\x01\x2c"
    point = b"\x04" + bytes(range(64))  # an uncompressed P-256 point, 65 bytes
    assert _unwrap_ec_point(point, 256) == point
    assert _unwrap_ec_point(b"\x04\x41" + point, 256) == point  # DER OCTET STRING around it
    assert _unwrap_ec_point(b"\x05\x41" + point, 256) == b"\x05\x41" + point  # left as is
