"""The token-key API in this process: how keys and tokens are found, the PIN sources, and
what a token key refuses to do (it never gives out its private half)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

import imaguard
from imaguard.crypto import (
    TokenError,
    create_ca,
    create_csr,
    load_pkcs11_key,
    load_signing_key,
)
from imaguard.crypto._pkcs11 import Pkcs11Uri, _module_for
from interop.tokens.softhsm import Token

pytestmark = pytest.mark.interop


def test_key_found_by_id(token: Token) -> None:
    by_id = load_signing_key(f"pkcs11:token={token.label};id=%01", pin=token.pin)
    by_label = load_signing_key(token.uri("rsa-key"), pin=token.pin)
    assert by_id.public_key.public_numbers() == by_label.public_key.public_numbers()
    assert by_id.source == f"pkcs11:token={token.label};id=%01"


def test_token_found_by_manufacturer_and_model(token: Token) -> None:
    key = load_signing_key(
        "pkcs11:manufacturer=SoftHSM%20project;model=SoftHSM%20v2;object=ec-key", pin=token.pin
    )
    assert key.description == "ECDSA P-256"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("pkcs11:token=imaguard-test", "5 private keys match a private key; name one with"),
        (
            "pkcs11:token=imaguard-test;object=rsa-key;type=cert",
            "type=cert names no signing key",
        ),
        ("pkcs11:token=imaguard-test;object=rsa-key;id=%02", "no private key object=rsa-key;id=02"),
        ("pkcs11:model=nothing-like-it;object=rsa-key", "no token matches"),
    ],
)
def test_ambiguous_or_unmatched_names(token: Token, uri: str, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        load_signing_key(uri, pin=token.pin)


def test_pin_prompt_asked_with_the_token_name(
    token: Token, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMAGUARD_PKCS11_PIN", raising=False)
    asked: list[str] = []

    def prompt(name: str) -> str:
        asked.append(name)
        return token.pin

    key = load_pkcs11_key(token.uri("ec-key"), pin_prompt=prompt)
    assert asked == [token.label]
    assert key.description == "ECDSA P-256"


def test_unreadable_pin_source(token: Token, tmp_path: Path) -> None:
    missing = tmp_path / "no-pin"
    with pytest.raises(TokenError, match=f"pin-source {missing}: cannot read"):
        load_pkcs11_key(token.uri("ec-key") + f"?pin-source=file:{missing}")


def test_module_name_is_looked_up_beside_the_proxy(token: Token) -> None:
    path = _module_for(Pkcs11Uri.parse("pkcs11:?module-name=p11-kit-proxy"), None)
    assert path.endswith("/p11-kit-proxy.so")
    assert _module_for(Pkcs11Uri.parse("pkcs11:?module-name=nowhere"), None) == "nowhere.so"
    with pytest.raises(TokenError, match=r"PKCS#11 module nowhere.so: cannot load it"):
        load_pkcs11_key("pkcs11:token=t?module-name=nowhere")


def test_token_key_refuses_to_show_its_private_half(token: Token) -> None:
    for obj in ("rsa-key", "ec-key"):
        key = load_signing_key(token.uri(obj), pin=token.pin).key
        assert copy.copy(key) is key
        assert copy.deepcopy(key) is key
        with pytest.raises(imaguard.KeyLoadError, match="stays on the PKCS#11 token"):
            key.private_numbers()
        with pytest.raises(imaguard.KeyLoadError, match="stays on the PKCS#11 token"):
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
    rsa_key = load_signing_key(token.uri("rsa-key"), pin=token.pin).key
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    assert rsa_key.key_size == 2048
    with pytest.raises(imaguard.KeyLoadError, match="decrypt"):
        rsa_key.decrypt(b"x" * 256, padding.PKCS1v15())
    ec_key = load_signing_key(token.uri("ec-key"), pin=token.pin).key
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey)
    assert (ec_key.key_size, ec_key.curve.name) == (256, "secp256r1")
    with pytest.raises(imaguard.KeyLoadError, match="exchange"):
        ec_key.exchange(ec.ECDH(), ec.generate_private_key(ec.SECP256R1()).public_key())


def test_token_key_through_cryptography_interfaces(token: Token) -> None:
    """cryptography's own calls (data hashed by the key) work; a bare Prehashed (no
    algorithm name for the DigestInfo) and another padding are refused."""
    rsa_key = load_signing_key(token.uri("rsa-key"), pin=token.pin).key
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    sig = rsa_key.sign(b"data", padding.PKCS1v15(), hashes.SHA256())
    rsa_key.public_key().verify(sig, b"data", padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(ValueError, match=r"PKCS#1 v1\.5 only"):
        rsa_key.sign(
            b"data",
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
            hashes.SHA256(),
        )
    with pytest.raises(ValueError, match=r"through PrivateKey\.sign_digest"):
        rsa_key.sign(bytes(32), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    ec_key = load_signing_key(token.uri("ec-key"), pin=token.pin).key
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey)
    sig = ec_key.sign(b"data", ec.ECDSA(hashes.SHA384()))
    ec_key.public_key().verify(sig, b"data", ec.ECDSA(hashes.SHA384()))


def test_ca_on_a_token_writes_no_key_file(token: Token, tmp_path: Path) -> None:
    key = load_signing_key(token.uri("ec-key"), pin=token.pin)
    ca = create_ca(key, common_name="token CA")
    written = ca.write(tmp_path / "ca")
    assert [p.name for p in written] == ["ca.pem", "ca.der"]
    assert ca.certificate.x509.public_key().public_numbers() == key.public_key.public_numbers()  # type: ignore[union-attr]
    assert create_csr(key).startswith(b"-----BEGIN CERTIFICATE REQUEST-----\n")


def test_two_token_keys_sign_in_a_forked_child(token: Token) -> None:
    """A forked child initializes the module again once, and both keys open on it."""
    import os

    from imaguard.formats.hashalgo import by_name

    keys = [load_signing_key(token.uri(o), pin=token.pin) for o in ("rsa-key", "ec-key")]
    algo, digest = by_name("sha256"), bytes(range(32))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            # the first key again after the second opened: its session must still be valid
            sigs = [k.sign_digest(algo, digest) for k in (*keys, keys[0])]
            os.write(write, b"\0".join(s.hex().encode() for s in sigs))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    sigs = [bytes.fromhex(h.decode()) for h in out.split(b"\0")]
    assert len(sigs) == 3
    for key, sig in zip((*keys, keys[0]), sigs, strict=True):
        cert = imaguard.crypto.self_signed_certificate(key)
        assert cert.verifies(algo, digest, sig)
    # and the parent's sessions still sign
    for key in keys:
        assert imaguard.crypto.self_signed_certificate(key).verifies(
            algo, digest, key.sign_digest(algo, digest)
        )
