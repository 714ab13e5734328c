"""Measurement: templates into an append-only log in the kernel's format, PCR banks and a
TPM backend, and verification of logs against PCRs, keyrings and Keylime runtime policies."""

from imaguard.measure._entries import buffer_entry, file_entry, violation_entry
from imaguard.measure._logstore import AppendResult, LogHealth, LogStore, OpenReport
from imaguard.measure._parallel import verify_log
from imaguard.measure._pcr import PcrBackend, SoftwarePcrs, compute_boot_aggregate
from imaguard.measure._runtime import policy_from_records, policy_from_tree
from imaguard.measure._state import StateLog, read_state, records_from_any
from imaguard.measure._tpm import TpmPcrs
from imaguard.measure._verify import (
    Finding,
    VerifyResult,
    records_from_ascii,
    records_from_binary,
    verify_records,
)

__all__ = [
    "AppendResult",
    "Finding",
    "LogHealth",
    "LogStore",
    "OpenReport",
    "PcrBackend",
    "SoftwarePcrs",
    "StateLog",
    "TpmPcrs",
    "VerifyResult",
    "buffer_entry",
    "compute_boot_aggregate",
    "file_entry",
    "policy_from_records",
    "policy_from_tree",
    "read_state",
    "records_from_any",
    "records_from_ascii",
    "records_from_binary",
    "verify_log",
    "verify_records",
    "violation_entry",
]
