"""Signing with keys on a PKCS#11 token (SoftHSM2), checked by evmctl and imaguard.

The token is made by the session fixture (tokens/conftest.py). imaguard reaches it the
default way, through p11-kit's proxy module, unless a test names a module. Everything a
token key signs is judged by evmctl (``ima_verify``) and by ``imaguard verify``; evmctl's
own PKCS#11 path (``--engine pkcs11``) signs and imaguard verifies.

A wrong PIN is tried only in child processes: PKCS#11 login state belongs to the process,
so once this process has logged in, a later login is not checked again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

import imaguard
from helpers.interop import EVMCTL_OK, Run, Tools, content_for
from imaguard.crypto import TokenError, load_signing_key
from imaguard.formats import xattr
from imaguard.formats.hashalgo import by_name
from interop.tokens.softhsm import Token

KEYS = ("rsa-key", "ec-key")
ALGOS = ("sha1", "sha256", "sha384", "sha512")


def _file(tmp_path: Path, name: str, size: int = 4096 + 3) -> Path:
    path = tmp_path / name
    path.write_bytes(content_for(f"{tmp_path}/{name}", size))
    return path


def _sig(path: Path) -> xattr.SignatureValue:
    value = xattr.parse(Path(f"{path}.sig").read_bytes())
    assert isinstance(value, xattr.SignatureValue)
    return value


# -- imaguard signs with a token key; evmctl and imaguard verify -----------------------------


@pytest.mark.interop
@pytest.mark.parametrize("obj", KEYS)
@pytest.mark.parametrize("algo", ALGOS)
def test_token_signature_accepted_by_evmctl_and_imaguard(
    tools: Tools,
    token: Token,
    token_certs: dict[str, Path],
    pin_env: str,
    tmp_path: Path,
    obj: str,
    algo: str,
) -> None:
    target = _file(tmp_path, "prog")
    r = tools.imaguard("sign", "--store", "sigfile", "-a", algo, "--key", token.uri(obj), target)
    assert r.returncode == 0, r.explain()
    assert (r.out, r.stderr) == ("", ""), r.explain()
    cert = imaguard.load_certificates(token_certs[obj])[0]
    value = _sig(target)
    assert value.type == xattr.XattrType.EVM_IMA_XATTR_DIGSIG
    assert value.algorithm.name == algo
    assert value.key_id == cert.key_id
    tools.assert_evmctl_accepts(target, token_certs[obj], sigfile=True)
    r = tools.imaguard("verify", "--store", "sigfile", "--cert", token_certs[obj], target)
    assert r.returncode == 0, r.explain()
    tools.tamper(target)
    tools.assert_evmctl_rejects_content(target, token_certs[obj], sigfile=True)
    r = tools.imaguard("verify", "--store", "sigfile", "--cert", token_certs[obj], target)
    assert r.returncode == 1, r.explain()


@pytest.mark.interop
def test_token_keys_found_by_public_object_modulus_and_certificate(
    tools: Tools, token: Token, token_certs: dict[str, Path], pin_env: str, tmp_path: Path
) -> None:
    """rsa-imported has no public key object (the modulus comes from the private object),
    ec-imported only a certificate object: both sign what evmctl accepts."""
    for obj in ("rsa-imported", "ec-imported"):
        target = _file(tmp_path, obj)
        r = tools.imaguard("sign", "--store", "sigfile", "--key", token.uri(obj), target)
        assert r.returncode == 0, r.explain()
        tools.assert_evmctl_accepts(target, token_certs[obj], sigfile=True)


def test_imported_rsa_key_signs_byte_identical_to_the_file_key(token: Token) -> None:
    """PKCS#1 v1.5 is deterministic: the same key on the token and in a file gives the
    same bytes, for every digest algorithm a DigestInfo is built for."""
    on_token = load_signing_key(token.uri("rsa-imported"), pin=token.pin)
    in_file = load_signing_key(token.rsa_file_key)
    assert on_token.key_id == in_file.key_id
    for name in ("sha1", "sha224", "sha256", "sha384", "sha512", "sha3-256", "sha3-512"):
        algo = by_name(name)
        digest = bytes(range(algo.digest_size))
        assert on_token.sign_digest(algo, digest) == in_file.sign_digest(algo, digest), name


def test_imported_rsa_key_gives_the_same_sigfile_bytes(
    tools: Tools, token: Token, pin_env: str, tmp_path: Path
) -> None:
    a, b = _file(tmp_path, "a"), tmp_path / "b"
    b.write_bytes(a.read_bytes())
    assert (
        tools.imaguard("sign", "--store", "sigfile", "--key", token.rsa_file_key, a).returncode == 0
    )
    r = tools.imaguard("sign", "--store", "sigfile", "--key", token.uri("rsa-imported"), b)
    assert r.returncode == 0, r.explain()
    assert Path(f"{b}.sig").read_bytes() == Path(f"{a}.sig").read_bytes()


@pytest.mark.parametrize("obj", ["ec-key", "ec-imported"])
def test_ecdsa_token_signature_is_der_as_a_file_keys(token: Token, obj: str) -> None:
    """CKM_ECDSA answers r||s; imaguard re-encodes it as the DER SEQUENCE a file key writes."""
    key = load_signing_key(token.uri(obj), pin=token.pin)
    assert isinstance(key.public_key, ec.EllipticCurvePublicKey)
    algo = by_name("sha256")
    digest = bytes(range(32))
    sig = key.sign_digest(algo, digest)
    r, s = decode_dss_signature(sig)
    assert encode_dss_signature(r, s) == sig  # canonical DER, nothing trailing
    assert sig[0] == 0x30
    assert sig[1] == len(sig) - 2
    prehashed = ec.ECDSA(Prehashed(hashes.SHA256()))
    key.public_key.verify(sig, digest, prehashed)  # raises if it does not verify
    with pytest.raises(InvalidSignature):
        key.public_key.verify(sig, bytes(32), prehashed)
    # randomized: a second signature differs, and verifies too
    again = key.sign_digest(algo, digest)
    assert again != sig
    key.public_key.verify(again, digest, prehashed)


@pytest.mark.interop
def test_recursive_signing_in_forked_workers(
    tools: Tools, token: Token, token_certs: dict[str, Path], pin_env: str, tmp_path: Path
) -> None:
    """-r with more files than run in-process: each forked worker opens the token again."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(300):
        (tree / f"f{i:03}").write_bytes(content_for(f"f{i}", 100 + i))
    r = tools.imaguard(
        "sign", "--store", "sigfile", "-r", "-j", "2", "--key", token.uri("ec-key"), tree
    )
    assert r.returncode == 0, r.explain()
    assert "300 signed" in r.stderr, r.explain()
    r = tools.imaguard("verify", "--store", "sigfile", "-r", "--cert", token_certs["ec-key"], tree)
    assert r.returncode == 0, r.explain()
    assert "300 verified" in r.stderr, r.explain()
    for name in ("f000", "f299"):
        tools.assert_evmctl_accepts(tree / name, token_certs["ec-key"], sigfile=True)


@pytest.mark.interop
def test_pin_from_uri_and_from_a_pin_source_file(
    tools: Tools, token: Token, token_certs: dict[str, Path], tmp_path: Path
) -> None:
    target = _file(tmp_path, "p")
    r = tools.imaguard(
        "sign", "--store", "sigfile", "--key", token.uri("rsa-key", pin=True), target
    )
    assert r.returncode == 0, r.explain()
    assert token.pin not in r.stderr + r.out
    pin_file = tmp_path / "pin"
    pin_file.write_text(token.pin + "\n")
    other = _file(tmp_path, "q")
    uri = token.uri("rsa-key") + f"?pin-source=file:{pin_file}"
    r = tools.imaguard("sign", "--store", "sigfile", "--key", uri, other)
    assert r.returncode == 0, r.explain()
    for path in (target, other):
        tools.assert_evmctl_accepts(path, token_certs["rsa-key"], sigfile=True)


@pytest.mark.interop
def test_explicit_module_path(
    tools: Tools, token: Token, token_certs: dict[str, Path], pin_env: str, tmp_path: Path
) -> None:
    """--pkcs11-module names SoftHSM's own module instead of p11-kit's proxy."""
    target = _file(tmp_path, "m")
    r = tools.imaguard(
        "sign",
        "--store",
        "sigfile",
        "--pkcs11-module",
        token.softhsm_module,
        "--key",
        token.uri("ec-key"),
        target,
    )
    assert r.returncode == 0, r.explain()
    tools.assert_evmctl_accepts(target, token_certs["ec-key"], sigfile=True)


# -- evm sign and digestlist sign take the same keys -------------------------------------------


@pytest.mark.interop
def test_evm_sign_with_a_token_key(
    tools: Tools, token: Token, token_certs: dict[str, Path], pin_env: str, tmp_path: Path
) -> None:
    target = _file(tmp_path, "evm")
    key = token.uri("rsa-key")
    r = tools.imaguard("sign", "--store", "user-xattr", "--key", key, target)
    assert r.returncode == 0, r.explain()
    r = tools.imaguard("evm", "sign", "--xattr-user", "--key", key, target)
    assert r.returncode == 0, r.explain()
    cert = token_certs["rsa-key"]
    r = tools.imaguard("evm", "verify", "--xattr-user", "--cert", cert, target)
    assert (r.returncode, r.out.strip()) == (0, f"{target}: pass_immutable"), r.explain()
    r = tools.imaguard("evm", "verify", "--xattr-user", "--cert", token_certs["ec-key"], target)
    assert r.returncode == 1, r.explain()


@pytest.mark.interop
def test_digestlist_sign_with_a_token_key(
    tools: Tools, token: Token, token_certs: dict[str, Path], pin_env: str, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(3):
        (tree / f"f{i}").write_bytes(content_for(f"dl{i}", 50))
    made = tmp_path / "app.list"
    r = tools.imaguard("digestlist", "make", "--tree", tree, "-o", made)
    assert r.returncode == 0, r.explain()
    r = tools.imaguard("digestlist", "sign", "--key", token.uri("ec-key"), made)
    assert r.returncode == 0, r.explain()
    cert = imaguard.load_certificates(token_certs["ec-key"])[0]
    assert r.out.strip() == f"{made}: signed (key id {cert.key_id:08x})"
    r = tools.imaguard("digestlist", "verify", "--cert", token_certs["ec-key"], made)
    assert r.returncode == 0, r.explain()
    r = tools.imaguard("digestlist", "verify", "--cert", token_certs["rsa-key"], made)
    assert r.returncode == 1, r.explain()


# -- evmctl signs through OpenSSL's PKCS#11 engine; imaguard verifies ---------------------------


@pytest.mark.interop
@pytest.mark.parametrize("obj", KEYS)
def test_evmctl_engine_signature_verified_by_imaguard(
    tools: Tools, token: Token, token_certs: dict[str, Path], tmp_path: Path, obj: str
) -> None:
    """``evmctl --engine pkcs11 --key pkcs11:...`` (libengine-pkcs11-openssl, through
    p11-kit's proxy). evmctl 1.4 cannot compute a key id for a URI key and says so
    ("you must provide the keyid with an option"): the test gives the certificate's."""
    cert = imaguard.load_certificates(token_certs[obj])[0]
    target = _file(tmp_path, "engine")
    r = tools.evmctl(
        "ima_sign",
        "--engine",
        "pkcs11",
        "--keyid",
        f"{cert.key_id:08x}",
        "--sigfile",
        "--xattr-user",
        "-a",
        "sha256",
        "--key",
        f"pkcs11:token={token.label};object={obj};type=private;pin-value={token.pin}",
        target,
    )
    assert r.returncode == 0, r.explain()
    value = _sig(target)
    assert value.key_id == cert.key_id
    r = tools.imaguard("verify", "--store", "sigfile", "--cert", token_certs[obj], target)
    assert r.returncode == 0, r.explain()
    verify = tools.evmctl_verify(target, token_certs[obj], sigfile=True)
    assert EVMCTL_OK in verify.stderr, verify.explain()


# -- errors: one line, exit 2, naming what is at fault ----------------------------------------


def _one_error(r: Run) -> str:
    assert r.returncode == 2, r.explain()
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.explain()
    assert "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.interop
def test_wrong_pin_is_one_error(tools: Tools, token: Token, tmp_path: Path) -> None:
    target = _file(tmp_path, "w")
    uri = f"pkcs11:token={token.label};object=rsa-key;pin-value=0000"
    line = _one_error(tools.imaguard("sign", "--store", "sigfile", "--key", uri, target))
    assert line.startswith(f"imaguard: token {token.label}: wrong PIN (PinIncorrect) (module ")
    assert not Path(f"{target}.sig").exists()


@pytest.mark.interop
def test_missing_object_is_one_error(
    tools: Tools, token: Token, pin_env: str, tmp_path: Path
) -> None:
    target = _file(tmp_path, "o")
    line = _one_error(
        tools.imaguard("sign", "--store", "sigfile", "--key", token.uri("no-such-key"), target)
    )
    assert line.startswith(
        f"imaguard: token {token.label}: no private key object=no-such-key on the token (module "
    )


@pytest.mark.interop
def test_missing_module_is_one_error(
    tools: Tools, token: Token, pin_env: str, tmp_path: Path
) -> None:
    target = _file(tmp_path, "m")
    missing = tmp_path / "no-such-module.so"
    line = _one_error(
        tools.imaguard(
            "sign",
            "--store",
            "sigfile",
            "--pkcs11-module",
            missing,
            "--key",
            token.uri("rsa-key"),
            target,
        )
    )
    assert line == f"imaguard: PKCS#11 module {missing}: no such file"


@pytest.mark.interop
def test_missing_token_and_missing_pin_are_one_error(
    tools: Tools, token: Token, tmp_path: Path
) -> None:
    target = _file(tmp_path, "t")
    line = _one_error(
        tools.imaguard("sign", "--store", "sigfile", "--key", "pkcs11:token=nope;object=x", target)
    )
    assert line.startswith("imaguard: token nope: no token matches pkcs11:token=nope;object=x ")
    assert f"'{token.label}'" in line  # the tokens that are there
    line = _one_error(
        tools.imaguard("sign", "--store", "sigfile", "--key", token.uri("rsa-key"), target)
    )
    assert line.startswith(f"imaguard: token {token.label}: the token needs a PIN: ")
    assert "IMAGUARD_PKCS11_PIN" in line


@pytest.mark.interop
@pytest.mark.parametrize("verb", [["evm", "sign", "--xattr-user"], ["digestlist", "sign"]])
def test_other_verbs_report_token_errors_alike(
    tools: Tools, token: Token, pin_env: str, tmp_path: Path, verb: list[str]
) -> None:
    target = _file(tmp_path, "v")
    line = _one_error(tools.imaguard(*verb, "--key", token.uri("no-such-key"), target))
    assert "no private key object=no-such-key on the token" in line


def test_token_errors_carry_fields(token: Token, tmp_path: Path) -> None:
    with pytest.raises(TokenError) as exc:
        load_signing_key(token.uri("no-such-key"), pin=token.pin)
    assert (exc.value.token, exc.value.object) == (token.label, "object=no-such-key")
    assert exc.value.module.endswith("p11-kit-proxy.so")
    missing = str(tmp_path / "gone.so")
    with pytest.raises(TokenError) as exc:
        load_signing_key(token.uri("rsa-key"), pkcs11_module=missing, pin=token.pin)
    assert (exc.value.module, exc.value.token) == (missing, token.label)
    with pytest.raises(TokenError) as exc:
        load_signing_key(token.uri("ec-lonely"), pin=token.pin)
    assert "no public key or certificate object for object=ec-lonely" in str(exc.value)
    assert isinstance(exc.value, imaguard.Error)


def test_token_key_types(token: Token, tmp_path: Path) -> None:
    rsa_key = load_signing_key(token.uri("rsa-key"), pin=token.pin)
    assert isinstance(rsa_key.public_key, rsa.RSAPublicKey)
    assert (rsa_key.description, rsa_key.source) == ("RSA-2048", token.uri("rsa-key"))
    ec_key = load_signing_key(token.uri("ec-key", pin=True))
    assert ec_key.description == "ECDSA P-256"
    assert ec_key.source == token.uri("ec-key")  # the PIN never shows
    cert = imaguard.crypto.self_signed_certificate(ec_key)
    generated = imaguard.crypto.GeneratedKey(ec_key, cert)
    with pytest.raises(imaguard.KeyLoadError, match="stays on the PKCS#11 token"):
        generated.write(tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
