"""A SoftHSM2 token made for the tests, with RSA and EC keys on it.

SoftHSM2 (Debian ``softhsm2``) is a software PKCS#11 token. The token directory and its
configuration live in a temporary directory named by ``SOFTHSM2_CONF``; the token is made
with ``softhsm2-util --init-token --free`` and its keys are generated (or imported) by a
child Python with python-pkcs11 through SoftHSM's own module, so the test process loads
PKCS#11 only the way imaguard does (through p11-kit's proxy, which finds SoftHSM through
``/usr/share/p11-kit/modules/softhsm2.module``).

Objects on the token (label, CKA_ID):

* ``rsa-key`` (01): RSA-2048 generated on the token, with its public key object;
* ``ec-key`` (02): ECDSA P-256 generated on the token, with its public key object;
* ``rsa-imported`` (03): the RSA key of ``Token.rsa_file_key`` imported, private object
  only (the public key is read from the private object's modulus);
* ``ec-imported`` (04): the P-256 key of ``Token.ec_file_key`` imported, with a
  certificate object and no public key object;
* ``ec-lonely`` (05): an imported P-256 key with neither (its public key is unknown).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

import imaguard
from helpers import oracle_missing

LABEL = "imaguard-test"
PIN = "1234"
SO_PIN = "5678"
_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
)

_PREPARE = r"""
import json, sys
import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util.ec import decode_ec_private_key, encode_named_curve_parameters
from pkcs11.util.rsa import decode_rsa_private_key

spec = json.loads(sys.argv[1])
lib = pkcs11.lib(spec["module"])
token = lib.get_token(token_label=spec["label"])
with token.open(rw=True, user_pin=spec["pin"]) as s:
    s.generate_keypair(KeyType.RSA, 2048, label="rsa-key", id=b"\x01", store=True)
    params = s.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("1.2.840.10045.3.1.7")},
        local=True,
    )
    params.generate_keypair(label="ec-key", id=b"\x02", store=True)
    common = {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True}
    rsa = decode_rsa_private_key(bytes.fromhex(spec["rsa_der"]))
    s.create_object({**rsa, **common, Attribute.LABEL: "rsa-imported", Attribute.ID: b"\x03"})
    ec = decode_ec_private_key(bytes.fromhex(spec["ec_der"]))
    s.create_object({**ec, **common, Attribute.LABEL: "ec-imported", Attribute.ID: b"\x04"})
    s.create_object({
        Attribute.CLASS: ObjectClass.CERTIFICATE,
        Attribute.CERTIFICATE_TYPE: pkcs11.CertificateType.X_509,
        Attribute.TOKEN: True,
        Attribute.LABEL: "ec-imported",
        Attribute.ID: b"\x04",
        Attribute.VALUE: bytes.fromhex(spec["ec_cert"]),
        Attribute.SUBJECT: bytes.fromhex(spec["ec_subject"]),
    })
    lonely = decode_ec_private_key(bytes.fromhex(spec["lonely_der"]))
    s.create_object({**lonely, **common, Attribute.LABEL: "ec-lonely", Attribute.ID: b"\x05"})
"""


@dataclass(frozen=True)
class Token:
    """The test token: how to name its keys, and the file keys imported onto it."""

    conf: Path
    softhsm_module: str
    rsa_file_key: Path
    ec_file_key: Path
    ec_file_cert: Path

    label: str = LABEL
    pin: str = PIN

    def uri(self, obj: str, *, pin: bool = False, extra: str = "") -> str:
        """``pkcs11:token=...;object=OBJ`` (with ``pin-value`` when asked)."""
        out = f"pkcs11:token={self.label};object={obj}{extra}"
        return out + (f";pin-value={self.pin}" if pin else "")


def softhsm_module() -> str | None:
    for path in _MODULE_CANDIDATES:
        if os.path.exists(path):
            return path
    return None


def make_token(base: Path) -> Token:
    """Initialize a SoftHSM token under ``base`` and put the test keys on it.

    ``SOFTHSM2_CONF`` must already name ``base / "softhsm2.conf"`` (the caller sets it for
    the whole session: a PKCS#11 module reads its configuration once per process).
    """
    util = shutil.which("softhsm2-util")
    module = softhsm_module()
    if util is None or module is None:
        oracle_missing(
            "the token tests need SoftHSM2 (softhsm2-util and libsofthsm2.so); "
            "`make test` installs it (apt-get install softhsm2 p11-kit-modules)"
        )
    tokens = base / "tokens"
    tokens.mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
        "slots.removable = false\n"
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    subprocess.run(
        [util, "--init-token", "--free", "--label", LABEL, "--pin", PIN, "--so-pin", SO_PIN],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    keys = base / "file-keys"
    rsa_dir, ec_dir = keys / "rsa", keys / "ec"
    imaguard.generate_key("rsa2048").write(rsa_dir)
    imaguard.generate_key("ecdsa-p256", common_name="ec-imported").write(ec_dir)

    def der(path: Path, fmt: serialization.PrivateFormat) -> str:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        return key.private_bytes(
            serialization.Encoding.DER, fmt, serialization.NoEncryption()
        ).hex()

    lonely = imaguard.generate_key("ecdsa-p256").private_key.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    spec = {
        "module": module,
        "label": LABEL,
        "pin": PIN,
        "rsa_der": der(rsa_dir / "private.pem", serialization.PrivateFormat.TraditionalOpenSSL),
        "ec_der": der(ec_dir / "private.pem", serialization.PrivateFormat.TraditionalOpenSSL),
        "ec_cert": (ec_dir / "cert.der").read_bytes().hex(),
        "ec_subject": imaguard.load_certificates(ec_dir / "cert.der")[0]
        .x509.subject.public_bytes()
        .hex(),
        "lonely_der": lonely.hex(),
    }
    r = subprocess.run(
        [sys.executable, "-c", _PREPARE, json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return Token(conf, module, rsa_dir / "private.pem", ec_dir / "private.pem", ec_dir / "cert.der")
