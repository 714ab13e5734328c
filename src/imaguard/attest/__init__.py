"""Remote attestation: a Keylime agent for an imaguard host (``imaguard agent``).

Keylime's verifier polls the agent (pull mode, Keylime 7.14's default) for quotes by a
TPM-resident AK over PCR 10, with imaguard's measurement log as the IMA list; the AK is
tied to the TPM's EK through the registrar's credential activation. docs/attestation.md
has the protocol, with references into Keylime's sources.
"""

from imaguard.attest._config import DEFAULT_CONFIG, AgentConfig, load_config
from imaguard.attest._imalist import ImaList, ImaSlice
from imaguard.attest._registrar import API_VERSIONS, Registrar, auth_tag
from imaguard.attest._server import Agent
from imaguard.attest._tls import TlsIdentity, ensure_identity, server_context
from imaguard.attest._tpm import (
    AK_HANDLE,
    DATA_PCR,
    EK_HANDLE,
    AttestTpm,
    Quote,
    encode_pcrblob,
    mask_to_pcrs,
)

__all__ = [
    "AK_HANDLE",
    "API_VERSIONS",
    "DATA_PCR",
    "DEFAULT_CONFIG",
    "EK_HANDLE",
    "Agent",
    "AgentConfig",
    "AttestTpm",
    "ImaList",
    "ImaSlice",
    "Quote",
    "Registrar",
    "TlsIdentity",
    "auth_tag",
    "encode_pcrblob",
    "ensure_identity",
    "load_config",
    "mask_to_pcrs",
    "server_context",
]
