"""The agent's TPM work against swtpm, judged by Keylime 7.14.3's own code.

Keylime's registrar makes the credential (``Tpm.encrypt_aik_with_ek``) and its verifier
checks the quotes (``Tpm().check_quote``: signature by the registered AK, nonce, PCR
digest, PCR 16 binding the agent's public key, PCR 10 replayed from imaguard's log and
the list judged by a runtime policy), exactly as they do for a Rust agent.
"""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from helpers.measure import Swtpm, run
from imaguard.attest import (
    AK_HANDLE,
    DATA_PCR,
    AttestTpm,
    ImaList,
    encode_pcrblob,
    mask_to_pcrs,
)
from imaguard.errors import BackendError, FormatError

from .conftest import KeylimeSide, make_log, policy_of, safe_clock

NONCE = "k7Qz0pXw3LmN9aB2cD4e"


def _pubkey() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _programs(tmp_path: Path, *names: str) -> list[Path]:
    out = []
    for name in names:
        p = tmp_path / "bin" / name
        p.parent.mkdir(exist_ok=True)
        p.write_text(f"#!/bin/sh\necho {name}\n")
        out.append(p)
    return out


def test_registrar_credential_activates_only_with_this_tpm(
    tpm: Swtpm, keylime_side: KeylimeSide
) -> None:
    with AttestTpm(tpm.tcti) as at:
        made = keylime_side(
            op="makecredential",
            uuid="agent-1",
            ek_tpm=_b64(at.ek_public),
            aik_tpm=_b64(at.ak_public),
        )
        secret = at.activate_credential(base64.b64decode(made["blob"]))
        # The registrar keeps the Base64 of the secret and expects the HMAC keyed with it.
        assert base64.b64encode(secret).decode() == made["key"]
        assert at.ak_name == bytes.fromhex("000b") + at.ak_name[2:]
        # A credential for another AK name does not activate with this AK.
        other = keylime_side(
            op="makecredential",
            uuid="agent-1",
            ek_tpm=_b64(at.ek_public),
            aik_tpm=_b64(at.ek_public),
        )
        with pytest.raises(BackendError, match="activating the credential"):
            at.activate_credential(base64.b64decode(other["blob"]))
        with pytest.raises(FormatError, match="credential blob"):
            at.activate_credential(b"not a blob")


def test_keys_survive_a_restart_and_a_tpm_reset(tpm: Swtpm) -> None:
    with AttestTpm(tpm.tcti) as at:
        ek, ak = at.ek_public, at.ak_public
    tpm.reset()
    with AttestTpm(tpm.tcti) as again:
        assert (again.ek_public, again.ak_public) == (ek, ak)


def test_quote_is_accepted_by_keylime_and_bound_to_nonce_and_key(
    tpm: Swtpm, keylime_side: KeylimeSide
) -> None:
    safe_clock(tpm)
    pubkey = _pubkey()
    with AttestTpm(tpm.tcti) as at:
        q = at.quote(NONCE.encode(), [], pubkey.encode())
        aik = _b64(at.ak_public)
    ok = keylime_side(
        op="check_quote",
        nonce=NONCE,
        pubkey=pubkey,
        quote=q.text,
        aik_tpm=aik,
        hash_alg="sha256",
        mask="0x0",
    )
    assert ok["events"] == [], ok["contexts"]
    assert set(ok["pcrs"]) == {str(DATA_PCR)}
    assert bytes.fromhex(ok["pcrs"]["16"]) == q.pcrs[DATA_PCR]
    wrong_nonce = keylime_side(
        op="check_quote",
        nonce=NONCE[:-1] + "X",
        pubkey=pubkey,
        quote=q.text,
        aik_tpm=aik,
        hash_alg="sha256",
        mask="0x0",
    )
    assert wrong_nonce["events"] == ["qoute_validation.quote_validation"]
    wrong_key = keylime_side(
        op="check_quote",
        nonce=NONCE,
        pubkey=_pubkey(),
        quote=q.text,
        aik_tpm=aik,
        hash_alg="sha256",
        mask="0x0",
    )
    assert wrong_key["events"] == ["pcr_validation.invalid_pcr_16"]


def test_integrity_quote_with_imaguard_log_is_judged_by_keylime(
    tpm: Swtpm, keylime_side: KeylimeSide, tmp_path: Path
) -> None:
    safe_clock(tpm)
    state = tmp_path / "state"
    make_log(state, tpm, _programs(tmp_path, "hello", "backup"))
    policy = policy_of(state)
    pubkey = _pubkey()
    ima = ImaList(state)
    with AttestTpm(tpm.tcti) as at:
        aik = _b64(at.ak_public)
        q = at.quote(NONCE.encode(), mask_to_pcrs("0x400"), pubkey.encode())
        listed = ima.read(0)
        assert listed.total == 3  # boot_aggregate and the two programs
        good = keylime_side(
            op="check_quote",
            nonce=NONCE,
            pubkey=pubkey,
            quote=q.text,
            aik_tpm=aik,
            hash_alg="sha256",
            mask="0x400",
            ima_list=listed.text,
            policy=policy,
        )
        assert good["events"] == []
        assert bytes.fromhex(good["pcrs"]["10"]) == q.pcrs[10]

        # An unlisted program: Keylime names the failure (and the quote still verifies).
        make_log(state, tpm, _programs(tmp_path, "intruder"))
        q2 = at.quote(NONCE.encode(), mask_to_pcrs("0x400"), pubkey.encode())
        bad = keylime_side(
            op="check_quote",
            nonce=NONCE,
            pubkey=pubkey,
            quote=q2.text,
            aik_tpm=aik,
            hash_alg="sha256",
            mask="0x400",
            ima_list=ima.read(0).text,
            policy=policy,
        )
        assert bad["events"] == ["ima.validation.ima-ng.not_in_allowlist"]

        # A log that does not match PCR 10 (the TPM was extended by someone else).
        tpm.pcrextend(10, {"sha256": "11" * 32})
        q3 = at.quote(NONCE.encode(), [10], pubkey.encode())
        forged = keylime_side(
            op="check_quote",
            nonce=NONCE,
            pubkey=pubkey,
            quote=q3.text,
            aik_tpm=aik,
            hash_alg="sha256",
            mask="0x400",
            ima_list=ima.read(0).text,
            policy=policy_of(state),
        )
        assert forged["events"] == ["ima.pcr_mismatch"], forged


def test_quote_reports_the_tpm_reset_count(tpm: Swtpm) -> None:
    with AttestTpm(tpm.tcti) as at:
        first = at.quote(b"abc", [], b"key").reset_count
        tpm.reset()
        assert at.quote(b"abc", [], b"key").reset_count == first + 1


def test_quote_input_is_checked(tpm: Swtpm) -> None:
    with AttestTpm(tpm.tcti) as at:
        with pytest.raises(FormatError, match="nonce"):
            at.quote(b"", [], b"k")
        with pytest.raises(FormatError, match="nonce"):
            at.quote(b"x" * 65, [], b"k")


def test_a_foreign_object_at_the_ak_handle_is_refused(tpm: Swtpm) -> None:
    with AttestTpm(tpm.tcti) as at:
        ak = at.ak_public
    # tpm2-tools puts a storage key (not a signing key) where the AK lives.
    r = run("tpm2_evictcontrol", "-C", "o", "-c", hex(AK_HANDLE), env=tpm.tools_env)
    assert r.returncode == 0, r.explain()
    ctx = tpm.state_dir / "primary.ctx"
    r = run("tpm2_createprimary", "-C", "o", "-c", ctx, env=tpm.tools_env)
    assert r.returncode == 0, r.explain()
    r = run("tpm2_evictcontrol", "-C", "o", "-c", ctx, hex(AK_HANDLE), env=tpm.tools_env)
    assert r.returncode == 0, r.explain()
    try:
        with pytest.raises(BackendError, match="is not imaguard's AK"):
            AttestTpm(tpm.tcti)
    finally:
        r = run("tpm2_evictcontrol", "-C", "o", "-c", hex(AK_HANDLE), env=tpm.tools_env)
        assert r.returncode == 0, r.explain()
    with AttestTpm(tpm.tcti) as again:  # made anew, the same key as before
        assert again.ak_public == ak


def test_unknown_bank_and_unreachable_tpm_are_named() -> None:
    with pytest.raises(BackendError, match="unknown PCR bank 'md5'"):
        AttestTpm("swtpm:host=127.0.0.1,port=1", bank="md5")
    with pytest.raises(BackendError, match="port=1"):
        AttestTpm("swtpm:host=127.0.0.1,port=1")


def test_mask_and_pcrblob() -> None:
    assert mask_to_pcrs("0x408000") == [15, 16, 22]
    assert mask_to_pcrs("400") == [10, 16]
    assert mask_to_pcrs(0) == [16]
    for bad in ("", "0xzz", "0x1000000", "123456789"):
        with pytest.raises(FormatError, match="mask"):
            mask_to_pcrs(bad)
    values = {i: bytes([i]) * 32 for i in range(10)}
    blob = encode_pcrblob(0x000B, values)
    # count, 16 selections of 8 bytes, digest-list count, two lists of 4 + 8 * 66 bytes
    assert len(blob) == 4 + 16 * 8 + 4 + 2 * (4 + 8 * 66)
    assert struct.unpack_from("<IHB", blob) == (1, 0x000B, 3)
    assert blob[7:10] == (0x3FF).to_bytes(3, "little")
    assert struct.unpack_from("<II", blob, 132) == (2, 8)


def test_ek_certificate_in_nv_is_sent(tpm: Swtpm, tmp_path: Path) -> None:
    """A TPM with an EK certificate (NV index 0x01C00002, as manufacturers and swtpm_setup
    provision it): the agent reads it whole, for the registrar's ``ekcert``."""
    cert = bytes(range(256)) * 5 + b"end"  # 1,283 bytes: read in several chunks
    blob = tmp_path / "ekcert.der"
    blob.write_bytes(cert)
    index = "0x01c00002"
    r = run(
        "tpm2_nvdefine", index, "-C", "o", "-s", str(len(cert)),
        "-a", "ownerread|ownerwrite|authread|authwrite", env=tpm.tools_env,
    )  # fmt: skip
    assert r.returncode == 0, r.explain()
    try:
        r = run("tpm2_nvwrite", index, "-C", "o", "-i", blob, env=tpm.tools_env)
        assert r.returncode == 0, r.explain()
        with AttestTpm(tpm.tcti) as at:
            assert at.ek_cert == cert
    finally:
        r = run("tpm2_nvundefine", index, "-C", "o", env=tpm.tools_env)
        assert r.returncode == 0, r.explain()
    with AttestTpm(tpm.tcti) as at:
        assert at.ek_cert is None
