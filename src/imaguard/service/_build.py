"""A Guard from a Config: the policy set (owners, locks), the keyrings, the state directory.

Every failure is a :class:`ConfigError` naming the key whose value could not be used, so
a reload that fails says which setting to fix while the old Guard stays in force.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imaguard.errors import BackendError, Error, LogIntegrityError
from imaguard.service._config import Config, ConfigError

if TYPE_CHECKING:
    from imaguard.core import Guard
    from imaguard.crypto import Keyring
    from imaguard.policy import PolicySet

__all__ = ["build_guard", "build_policy_set", "hand_over_log"]

_log = logging.getLogger(__name__)


def _load_keyring(cfg: Config, key: str, paths: tuple[str, ...]) -> Keyring:
    from imaguard.crypto import Keyring

    for i, p in enumerate(paths):
        if not os.path.exists(p):
            raise ConfigError(cfg.source, f"{key}[{i}]", f"{p} does not exist")
    try:
        return Keyring.load(*paths) if paths else Keyring()
    except Error as e:
        raise ConfigError(cfg.source, key, str(e)) from e


def build_policy_set(cfg: Config, *, with_state: bool = True) -> tuple[PolicySet, Keyring]:
    """The policy set (read in imaguard mode) and the appraisal keyring of ``cfg``.

    ``with_state``: put the policy service's persisted state (policies loaded over the
    socket, seals of this boot, version marks; :func:`~imaguard.service.apply_state`) over
    the config's policies, as the daemon runs them.
    """
    from imaguard.policy import PolicySet, builtin_policy, parse_policy

    ring = _load_keyring(cfg, "keyrings", cfg.keyrings)
    if cfg.policy_keyrings is not None:
        policy_ring = _load_keyring(cfg, "policy_keyrings", cfg.policy_keyrings)
    else:
        policy_ring = ring  # as the kernel appraises POLICY_CHECK against its .ima keyring
    pset = PolicySet(policy_keyring=policy_ring, appraise_enabled=True)
    for i, spec in enumerate(cfg.policies):
        at = f"policy[{i}]"
        try:
            if spec.file is not None:
                key = f"{at}.file"
                pset.add_file(
                    spec.name, spec.file, lock=spec.lock, owner=spec.owner, mode="imaguard"
                )
            elif spec.builtin is not None:
                key = f"{at}.builtin"
                b = builtin_policy(spec.builtin)
                pset.add(
                    spec.name,
                    b.policy,
                    lock=spec.lock,
                    owner=spec.owner,
                    fail_securely=b.fail_securely,
                )
            else:
                key = f"{at}.rules"
                policy = parse_policy(spec.rules or "", mode="imaguard", source=f"{at}.rules")
                pset.add(spec.name, policy, lock=spec.lock, owner=spec.owner)
        except Error as e:
            raise ConfigError(cfg.source, key, str(e)) from e
    if with_state:
        from imaguard.service._policies import apply_state

        apply_state(pset, cfg)  # reads the owners too: a bad owners file fails here
    return pset, ring


def build_guard(cfg: Config, *, open_log: bool = True) -> Guard:
    """A Guard for ``cfg``: ``enforce``/``permissive`` appraise in enforce mode, ``log`` in log.

    ``open_log`` opens the measurement log (and the TPM) now, so a bad ``state`` or ``tpm``
    fails here rather than at the first measured exec. A reload that keeps the state
    directory passes ``open_log=False`` and takes the running log over (:func:`hand_over_log`).
    """
    from imaguard.core import AuditSink, Guard

    pset, ring = build_policy_set(cfg)
    state = Path(cfg.state)
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        audit = AuditSink(state / "audit.jsonl", use_syslog=cfg.audit_syslog)
    except OSError as e:
        raise ConfigError(cfg.source, "state", f"{state}: {e.strerror or e}") from e
    mode: Any = cfg.guard_mode
    try:
        from imaguard.appraise import TrustDB

        trust = TrustDB(cfg.trust_dir)
    except (Error, OSError, ValueError) as e:
        audit.close()
        raise ConfigError(cfg.source, "trust", f"{cfg.trust_dir}: {e}") from e
    try:
        guard = Guard(
            pset,
            ring,
            state=state,
            mode=mode,
            audit=audit,
            tpm=cfg.tpm,
            trust=trust,
            measure_listed=cfg.measure_listed,
        )
    except Error as e:
        audit.close()
        raise ConfigError(cfg.source, "state", str(e)) from e
    if open_log:
        try:
            _ = guard.log
        except (BackendError, LogIntegrityError, OSError) as e:
            guard.close()
            key = "tpm" if cfg.tpm is not None and isinstance(e, BackendError) else "state"
            raise ConfigError(cfg.source, key, f"measurement log: {e}") from e
    return guard


def hand_over_log(old: Guard, new: Guard) -> None:
    """Give ``old``'s open measurement log to ``new`` (same state directory, one writer).

    The log holds an exclusive lock, so a second Guard on the same state directory cannot
    open it; the new Guard takes the open one over and the old one no longer closes it.
    """
    if old.state != new.state or new._log is not None:
        return
    new._log = old._log
    old._log = None
