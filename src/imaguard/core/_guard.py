"""The Guard: one engine behind every interface.

``Guard.process(target, hook, mask, subject)`` evaluates the policy set for the hook, then
does what it demands - appraise against the keyrings, measure into the log, emit an audit
record with the file's hash, keep the stored hash up to date - and returns a
:class:`~imaguard.core._decision.Decision` that says, per action, whether it was required,
passed or failed and which policy rule demanded it.

Appraisal modes follow the kernel's ``ima_appraise=``: ``enforce`` (a failed appraisal
denies), ``log`` (failures are audited, access allowed), ``fix`` (a missing or wrong *hash*
is rewritten; signatures are never written; then allowed), ``off`` (appraise rules are
inert). Requirements no file can meet (two policies that disagree) fail closed.

The file is opened once and hashed at most once per algorithm per call, shared by
appraisal, measurement and audit. Results are kept in the integrity cache, keyed on the
file's change cookie, unless a rule says ``cache=no``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from imaguard.appraise._calls import Require, appraise_value
from imaguard.appraise._evm import evm_verify
from imaguard.appraise._files import (
    ChangeCookie,
    Digest,
    FileRef,
    change_cookie,
    hash_fd,
    open_ref,
)
from imaguard.appraise._sigstore import SignatureStore, XattrStore, default_store, store_for
from imaguard.appraise._trustdb import ListInfo, TrustDB
from imaguard.appraise._verdict import Cause, Status, Verdict
from imaguard.appraise._verity import fsverity_digest
from imaguard.core._audit import AuditSink, MemoryAudit
from imaguard.core._cache import CacheEntry, IntegrityCache, slot_for
from imaguard.core._decision import NOT_REQUIRED, ActionResult, Decision, Outcome
from imaguard.core._objects import current_subject, file_object
from imaguard.core._objects import fs_magic as _fs_magic
from imaguard.crypto._keyring import Keyring
from imaguard.errors import Error, FileError, StoreError, UsageError
from imaguard.formats import hashalgo
from imaguard.formats.hashalgo import HashAlgo
from imaguard.formats.template import TemplateDescriptor
from imaguard.formats.xattr import digest_value, is_signature
from imaguard.measure._entries import entry_for_open_file, violation_entry
from imaguard.measure._logstore import LogStore
from imaguard.policy._ast import ACTION_KINDS, FUNC_ALIASES, Action
from imaguard.policy._builtin import builtin_policy
from imaguard.policy._evaluate import Object, Request, Subject, parse_mask
from imaguard.policy._parser import Mode, parse_policy
from imaguard.policy._policyset import PolicySet, Provenance, SetDecision

__all__ = ["MODES", "EvmConfig", "Guard"]

_log = logging.getLogger(__name__)

AppraiseMode = Literal["enforce", "log", "fix", "off"]
MODES = ("enforce", "log", "fix", "off")

_EXEC_HOOKS = {"BPRM_CHECK", "MMAP_CHECK", "MMAP_CHECK_REQPROT", "CREDS_CHECK"}
MAY_EXEC, MAY_WRITE, MAY_READ = 0x1, 0x2, 0x4
_VIOLATION_HOOKS = {"FILE_CHECK", "MMAP_CHECK", "MMAP_CHECK_REQPROT"}
FUSE_SUPER_MAGIC = 0x65735546
"""FUSE marks its superblock as having unverifiable signatures (SB_I_IMA_UNVERIFIABLE_SIGNATURE)."""


def _default_mask(hook: str) -> int:
    if hook in _EXEC_HOOKS:
        return MAY_EXEC
    if hook in ("KEXEC_CMDLINE", "KEY_CHECK", "CRITICAL_DATA"):
        return 0
    return MAY_READ


class Guard:
    """A policy set, keyrings, a measurement log, an integrity cache and an audit sink."""

    def __init__(
        self,
        policies: PolicySet,
        keyring: Keyring | None = None,
        *,
        state: str | os.PathLike[str] | None = None,
        mode: AppraiseMode = "enforce",
        store: SignatureStore | str | None = None,
        audit: AuditSink | MemoryAudit | None = None,
        ima_hash: str = "sha256",
        template: str = "ima-ng",
        tpm: str | None = None,
        use_cache: bool = True,
        evm: EvmConfig | None = None,
        trust: TrustDB | None = None,
        measure_listed: bool = True,
    ) -> None:
        if mode not in MODES:
            raise UsageError(f"unknown appraisal mode {mode!r} ({', '.join(MODES)})")
        if mode == "off" and policies.appraise_enabled:
            raise UsageError("mode 'off' needs a PolicySet(appraise_enabled=False)")
        self.policies = policies
        self.keyring = keyring if keyring is not None else Keyring()
        self.mode = mode
        self.store = store_for(store) if isinstance(store, str) else (store or default_store())
        self.ima_hash = hashalgo.by_name(ima_hash).name
        self.template = TemplateDescriptor.lookup(template)
        self.tpm = tpm
        self.state = Path(state) if state is not None else None
        if self.state is not None:
            self.state.mkdir(parents=True, exist_ok=True)
        self.audit = audit
        if self.audit is None and self.state is not None:
            self.audit = AuditSink(self.state / "audit.jsonl")
        self._log: LogStore | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.use_cache = use_cache
        self._value_in_cookie = isinstance(self.store, XattrStore)
        self._measures = any(
            r.action is Action.MEASURE for n in policies.names() for r in policies.policy(n).rules
        )
        self.evm = evm
        self.trust = trust
        self.measure_listed = measure_listed
        self._paths = policies.uses_paths
        self.cache = IntegrityCache(
            self._epoch(), self.state / "cache.json" if self.state is not None else None
        )

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_files(
        cls,
        policies: Mapping[str, str | os.PathLike[str]] | None = None,
        keyrings: Iterable[str | os.PathLike[str]] = (),
        state: str | os.PathLike[str] | None = None,
        mode: AppraiseMode = "enforce",
        policy_mode: Mode = "imaguard",
        *,
        builtin: str | None = None,
        **kwargs: Any,
    ) -> Guard:
        """A Guard from policy files ({name: path}), built-ins, and certificate files or dirs.

        Policies are read in ``policy_mode`` "imaguard" by default: the kernel's grammar plus
        application hooks, ``path=`` and ``cache=no`` (every kernel policy parses the same);
        pass "kernel" to refuse what the kernel would refuse.
        """
        pset = PolicySet(appraise_enabled=mode != "off")
        if builtin:
            b = builtin_policy(builtin)
            pset.add("builtin", b.policy, fail_securely=b.fail_securely)
        for name, path in (policies or {}).items():
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                raise UsageError(f"{path}: cannot read policy: {e.strerror or e}") from e
            pset.add(name, parse_policy(data, mode=policy_mode, source=os.fspath(path)))
        if len(pset) == 0:
            raise UsageError("a Guard needs at least one policy (policies= or builtin=)")
        paths = list(keyrings)
        ring = Keyring.load(*paths) if paths else Keyring()
        return cls(pset, ring, state=state, mode=mode, **kwargs)

    def _epoch(self) -> str:
        h = hashlib.sha256()
        for name in self.policies.names():
            h.update(name.encode() + b"\0" + str(self.policies.version(name)).encode() + b"\0")
            h.update(self.policies.policy(name).text().encode())
        h.update(self.keyring.fingerprint().encode())
        if self.trust is not None:
            h.update(f"trust:{self.trust.dir}:{self.trust.generation}".encode())
        h.update(f"{self.mode}|{self.store.name}|{self.ima_hash}|{self.template.name}".encode())
        return h.hexdigest()[:32]

    def reload(self) -> None:
        """Call after changing the policy set or keyring: cached results are dropped."""
        self._paths = self.policies.uses_paths
        self._measures = any(
            r.action is Action.MEASURE
            for n in self.policies.names()
            for r in self.policies.policy(n).rules
        )
        self.cache.epoch = self._epoch()
        self.cache.invalidate()

    @property
    def log(self) -> LogStore:
        """The measurement log: in the state directory, or a temporary one without it."""
        if self._log is None:
            if self.state is not None:
                where = self.state / "log"
            else:
                self._tmp = tempfile.TemporaryDirectory(prefix="imaguard-log-")
                where = Path(self._tmp.name)
            self._log = LogStore(
                where, tpm=self.tpm, template=self.template.name, ima_hash=self.ima_hash
            )
        return self._log

    def close(self) -> None:
        self.cache.save()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        if self.audit is not None:
            self.audit.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the hook ---------------------------------------------------------------------------
    def process(
        self,
        target: str | os.PathLike[str] | int,
        hook: str = "BPRM_CHECK",
        mask: str | int | None = None,
        subject: Subject | None = None,
        *,
        name: str | None = None,
    ) -> Decision:
        """Run what the policy set demands for ``hook`` on ``target``; never raises for it.

        ``name``: for a descriptor target, the file's path as the caller knows it (e.g. from
        ``readlink(/proc/self/fd/N)``); decisions and audit records carry it, and path rules
        match it. Without it a descriptor is named ``<fd N>``.
        """
        hook = FUNC_ALIASES.get(hook, hook)
        bits = parse_mask(mask) if mask is not None else _default_mask(hook)
        subj = subject if subject is not None else current_subject()
        fd_name = name if isinstance(target, int) and name is not None else None
        if fd_name is not None:
            name = fd_name
        else:
            name = f"<fd {target}>" if isinstance(target, int) else os.fspath(target)
        try:
            ref = open_ref(target)
            if fd_name is not None:
                ref = dataclasses.replace(ref, name=fd_name, path=fd_name)
        except FileError as e:
            path = fd_name if isinstance(target, int) else os.path.realpath(name)
            sd = self.policies.evaluate(Request(hook, bits, subj, Object(path=path)))
            return self._unexaminable(name, hook, sd, subj, e.reason)
        try:
            if (
                self.use_cache
                and self._value_in_cookie
                and (fd_name is not None or not self._paths)
            ):
                cookie = change_cookie(ref.fd, ref.st)
                memo = self._memo_lookup(cookie, (hook, bits, subj, name, self.mode))
                if memo is not None:
                    return memo
                return self._process_open(name, hook, bits, subj, ref, cookie)
            return self._process_open(name, hook, bits, subj, ref)
        finally:
            if not isinstance(target, int):
                os.close(ref.fd)

    # -- the memo: repeated requests on an unchanged file ---------------------------------------
    # A decision reached on a cache hit, with nothing failed, nothing written, nothing
    # measured or audited for the first time and no write in the mask, is what the same
    # request gives again until the file changes (its change cookie) or the cache is
    # dropped (reload: policies, keyrings, trust, mode, store). Such a decision is kept on
    # the file's cache entry and returned as is: no policy evaluation, no xattr read. Path
    # targets skip the memo when a policy matches paths (a directory renamed above the file
    # changes its path but not its cookie); a descriptor's name is the caller's.

    _MEMO_MAX = 16
    """Requests remembered per file (subjects differ); the oldest go first."""

    def _memo_lookup(self, cookie: ChangeCookie, key: tuple[Any, ...]) -> Decision | None:
        entry = self.cache.peek(cookie.key)
        if entry is None or not entry.memo or entry.cookie != cookie:
            return None
        try:
            found: tuple[Decision, bool] | None = entry.memo.get(key)
        except TypeError:  # a subject with unhashable labels
            return None
        if found is None:
            return None
        decision, measured_read = found
        if measured_read:
            entry.may_emit_tomtou = True  # as the full path does for a measured read
        if decision.cached:
            self.cache.hits += 1
        return decision

    def _memo_store(
        self,
        entry: CacheEntry,
        key: tuple[Any, ...],
        epoch: str,
        decision: Decision,
        sd: SetDecision,
        audit_hash: str | None,
    ) -> None:
        steady = (
            (decision.cached or not sd.appraise)
            and not sd.hash
            and audit_hash is None
            and not decision.extra
            and decision.violation_error is None
            and all(a.outcome != Outcome.FAILED for a in decision.actions.values())
        )
        if not steady or self.cache.epoch != epoch:
            return
        try:
            if len(entry.memo) >= self._MEMO_MAX:
                entry.memo.pop(next(iter(entry.memo)))
            measured_read = bool(sd.measure) and decision.hook in _VIOLATION_HOOKS
            entry.memo[key] = (decision, measured_read)
        except TypeError:  # a subject with unhashable labels
            pass

    def _unexaminable(
        self, name: str, hook: str, sd: SetDecision, subj: Subject, reason: str
    ) -> Decision:
        actions: dict[str, ActionResult] = {}
        for kind in ACTION_KINDS:
            if getattr(sd, kind):
                p = _first(sd, kind)
                actions[kind] = ActionResult(
                    True, Outcome.FAILED, Cause.UNKNOWN, p.policy, p.line, reason
                )
            else:
                actions[kind] = NOT_REQUIRED
        allowed = not (sd.appraise and self.mode == "enforce")
        decision = Decision(name, hook, allowed, actions, None, sd.provenance, False, None, reason)
        self._audit(decision, subj, None)
        return decision

    def _process_open(
        self,
        name: str,
        hook: str,
        bits: int,
        subj: Subject,
        ref: FileRef,
        cookie: ChangeCookie | None = None,
    ) -> Decision:
        """``cookie``: the file's change cookie when the caller has it already (the memo)."""
        obj = file_object(ref.fd, ref.st, ref.path, resolve=self._paths)
        sd = self.policies.evaluate(Request(hook, bits, subj, obj))
        actions: dict[str, ActionResult] = dict.fromkeys(ACTION_KINDS, NOT_REQUIRED)
        violation, violation_error = (
            self._tomtou(name, hook, bits, ref) if bits & MAY_WRITE else (None, None)
        )
        extra = {"violation": violation} if violation else {}
        if not (sd.measure or sd.appraise or sd.audit or sd.hash):
            return Decision(
                name,
                hook,
                True,
                actions,
                None,
                sd.provenance,
                extra=extra,
                violation_error=violation_error,
            )
        epoch = self.cache.epoch
        if cookie is None:
            cookie = change_cookie(ref.fd, ref.st)
        use_cache = self.use_cache and sd.cache
        entry = self.cache.lookup(cookie) if use_cache else CacheEntry(cookie)
        digests: dict[str, Digest] = {}
        value_box: list[bytes | None] = []

        def hasher(algo: HashAlgo) -> Digest:
            d = digests.get(algo.name)
            if d is None:
                d = hash_fd(ref, algo)
                digests[algo.name] = d
            return d

        def safe_hasher(algo: HashAlgo) -> Digest | Verdict:
            try:
                return hasher(algo)
            except FileError as e:
                return Verdict(
                    name, Status.UNKNOWN, Cause.UNKNOWN, algorithm=algo.name, detail=e.reason
                )

        store_error: list[StoreError] = []

        def value() -> bytes | None:
            if not value_box:
                try:
                    value_box.append(self.store.read(ref))
                except StoreError as e:
                    # No xattr support, or the value cannot be read: appraisal is UNKNOWN
                    # (ima_appraise_measurement, security/integrity/ima/ima_appraise.c);
                    # measurement goes on without a signature, and its action result says so.
                    store_error.append(e)
                    value_box.append(None)
            return value_box[0]

        allowed = True
        detail = ""
        verdict: Verdict | None = None
        cached = False
        conflict = sd.conflict.reason if sd.conflict else None
        if sd.appraise:
            p = _first(sd, "appraise")
            if sd.conflict is not None:
                actions["appraise"] = ActionResult(
                    True, Outcome.FAILED, "policy-conflict", p.policy, p.line, sd.conflict.reason
                )
                allowed = self.mode != "enforce"
            else:
                verdict, cached = self._appraise(
                    name, sd, p, entry, value, safe_hasher, hasher, ref, store_error
                )
                ok = verdict.passed
                actions["appraise"] = ActionResult(
                    True,
                    Outcome.PASSED if ok else Outcome.FAILED,
                    verdict.cause,
                    p.policy,
                    p.line,
                    verdict.detail,
                )
                if not ok and self.mode == "enforce":
                    allowed = False
                if ok and self.mode == "enforce" and bits & MAY_WRITE and is_signature(value()):
                    # Signed files are immutable under appraisal (ima_main.c process_measurement).
                    allowed = False
                    detail = "a signed file cannot be opened for write under appraisal"
        if sd.measure:
            actions["measure"] = self._measure(sd, entry, ref, value, hasher, store_error)
            if hook in _VIOLATION_HOOKS and not bits & MAY_WRITE:
                entry.may_emit_tomtou = True  # a measured read: a later write open is ToMToU
        audit_hash: str | None = None
        if sd.audit:
            actions["audit"], audit_hash = self._audit_action(sd, entry, hasher)
        if sd.hash:
            actions["hash"] = self._hash(sd, ref, value, hasher, entry)
        decision = Decision(
            name,
            hook,
            allowed,
            actions,
            verdict,
            sd.provenance,
            cached,
            conflict,
            detail,
            extra,
            violation_error,
        )
        self._audit(decision, subj, audit_hash)
        if use_cache and self._value_in_cookie and not bits & MAY_WRITE:
            self._memo_store(
                entry, (hook, bits, subj, name, self.mode), epoch, decision, sd, audit_hash
            )
        return decision

    def _tomtou(
        self, name: str, hook: str, bits: int, ref: FileRef
    ) -> tuple[str | None, str | None]:
        """Time of measure, time of use: a file measured for reading is opened for write.

        The kernel emits a violation record (zero digest, PCR extended with 0xFF) once per
        measured read open, on the next write open (ima_main.c). User space cannot see the
        kernel's reader count, so a measured read counts until the next write open.

        Returns ``(violation, error)``: the violation seen (``"ToMToU"``) and, when its
        record could not be appended to the log, why not (the Decision carries both).
        """
        if hook != "FILE_CHECK" or not self._measures:
            return None, None
        entry = self.cache.peek(change_cookie(ref.fd, ref.st).key)
        if entry is None or not entry.may_emit_tomtou:
            return None, None
        entry.may_emit_tomtou = False
        try:
            self.log.append(
                violation_entry(ref.path or name, self.template, ima_hash=self.ima_hash)
            )
        except Error as e:
            _log.warning("%s: ToMToU violation not recorded: %s", name, e)
            return "ToMToU", str(e)
        return "ToMToU", None

    # -- actions ------------------------------------------------------------------------------
    def _appraise(
        self,
        name: str,
        sd: SetDecision,
        p: Provenance,
        entry: CacheEntry,
        value: Any,
        safe_hasher: Any,
        hasher: Any,
        ref: FileRef,
        store_error: list[StoreError],
    ) -> tuple[Verdict, bool]:
        rule = _rule(sd, p)
        algos = frozenset(sd.appraise_algos) if sd.appraise_algos is not None else None
        slot = (
            f"{slot_for(rule.func if rule else None)}|{sd.appraise_type}|"
            f"{','.join(sorted(algos)) if algos else ''}"
        )
        hit = entry.slots.get(slot)
        # An xattr change moves the file's ctime, so the cookie covers it; a sidecar .sig
        # does not, so then the value itself must match what the verdict was reached on.
        if hit is not None and (self._value_in_cookie or entry.values.get(slot) == value()):
            self.cache.hits += 1
            # dataclasses.replace costs ~6 us: only when the name differs from the cached one
            return (hit if hit.target == name else replace(hit, target=name)), True
        raw = value()
        if store_error:
            return Verdict(name, Status.UNKNOWN, Cause.UNKNOWN, detail=store_error[0].reason), False
        if sd.fail_unverifiable_sigs and fs_magic_of(ref) == FUSE_SUPER_MAGIC:
            # fail_securely: a filesystem whose signatures cannot be trusted always fails.
            return Verdict(
                name,
                Status.FAIL,
                "unverifiable-signature",
                detail="fail_securely: signatures on FUSE cannot be verified",
            ), False
        evm_ok_immutable = False
        if self.evm is not None:
            ev = evm_verify(
                ref, keyring=self.evm.keyring, hmac_key=self.evm.hmac_key, fs_uuid=self.evm.fs_uuid
            )
            cause = _EVM_CAUSES.get(ev.status)
            if cause is not None:
                verdict = Verdict(name, Status.FAIL, cause, detail=f"EVM: {ev.detail}")
                entry.slots[slot] = verdict
                entry.values[slot] = raw
                return verdict, False
            evm_ok_immutable = ev.status == "pass_immutable"
        if sd.appraise_type == "sigv3":
            verdict = appraise_value(
                name,
                raw,
                safe_hasher,
                self.keyring,
                "verity",
                algos,
                lambda algo: _verity_of(ref, name, algo),
            )
        else:
            # A portable EVM signature covering a plain hash satisfies a signature
            # requirement (ima_appraise.c xattr_verify).
            require: Require = "signature" if sd.digsig_required and not evm_ok_immutable else "any"
            listed = (
                self._listed(name, hasher, algos)
                if sd.appraise_type == "digestlist" and self.trust is not None
                else None
            )
            if listed is not None:
                verdict = listed
            else:
                verdict = appraise_value(name, raw, safe_hasher, self.keyring, require, algos)
            if (
                not verdict.passed
                and self.mode == "fix"
                and not sd.digsig_required
                and (raw is None or raw[:1] in (b"\x01", b"\x04"))
                and verdict.cause in (Cause.MISSING_HASH, Cause.INVALID_HASH)
            ):
                verdict = self._fix(name, ref, hasher, verdict, algos)
        if verdict.status is not Status.UNKNOWN or verdict.cause != Cause.UNKNOWN:
            entry.slots[slot] = verdict  # file problems are not cached: they may pass
            entry.values[slot] = raw
        return verdict, False

    def _vouching(
        self, hasher: Any, algos: frozenset[str] | None = None
    ) -> tuple[ListInfo, str, bytes] | None:
        """The digest list in the trust database that vouches for the content, with the
        algorithm and digest it matched; None when none does or the file cannot be hashed
        (the signature path then says why)."""
        assert self.trust is not None
        for algo_name in self.trust.algorithms():
            if algos is not None and algo_name not in algos:
                continue
            try:
                digest = hasher(hashalgo.by_name(algo_name)).value
            except Error:
                return None
            info = self.trust.vouches(digest, algo_name)
            if info is not None:
                return info, algo_name, digest
        return None

    def _listed(self, name: str, hasher: Any, algos: frozenset[str] | None) -> Verdict | None:
        """A pass when a signed digest list in the trust database vouches for the content."""
        found = self._vouching(hasher, algos)
        if found is None:
            return None
        info, algo_name, digest = found
        return Verdict(
            name,
            Status.PASS,
            None,
            int(info.key_id, 16) if info.key_id else None,
            algo_name,
            None,
            digest,
            f"vouched for by digest list {info.name} ({info.id})",
            info.signer,
        )

    def _fix(
        self, name: str, ref: FileRef, hasher: Any, failed: Verdict, algos: frozenset[str] | None
    ) -> Verdict:
        """Fix mode: write the computed hash (never a signature), as the kernel does."""
        algo = hashalgo.by_name(self.ima_hash)
        try:
            digest = hasher(algo)
            written = digest_value(algo, digest.value)
            self.store.write(ref, written.serialize())
        except Error as e:
            return Verdict(name, failed.status, failed.cause, detail=f"fix failed: {e}")
        _log.info("fix mode: wrote the %s hash of %s", algo.name, name)
        self.cache.rekey(self.cache.lookup(change_cookie(ref.fd)), change_cookie(ref.fd))
        return Verdict(
            name,
            Status.PASS,
            None,
            algorithm=algo.name,
            value_type=int(written.type),
            digest=digest.value,
            detail="hash written (fix mode)",
        )

    def _measure(
        self,
        sd: SetDecision,
        entry: CacheEntry,
        ref: FileRef,
        value: Any,
        hasher: Any,
        store_error: list[StoreError],
    ) -> ActionResult:
        p = _first(sd, "measure")
        if not self.measure_listed and self.trust is not None:
            found = self._vouching(hasher)
            if found is not None:
                info = found[0]
                return ActionResult(
                    True,
                    Outcome.PASSED,
                    None,
                    p.policy,
                    p.line,
                    f"not measured: digest list {info.name} vouches for it "
                    "(its measurement stands for the file)",
                )
        try:
            for target in sd.measure_targets:
                key = (target.pcr, target.template)
                if key in entry.measured:
                    continue
                desc = (
                    TemplateDescriptor.lookup(target.template) if target.template else self.template
                )
                e = entry_for_open_file(
                    ref, desc, value=value(), hasher=hasher, ima_hash=self.ima_hash, pcr=target.pcr
                )
                self.log.append(e)
                entry.measured.add(key)
            if store_error and not store_error[0].unsupported:
                # Measured, but a stored signature could not be read for the entry.
                return ActionResult(
                    True,
                    Outcome.PASSED,
                    None,
                    p.policy,
                    p.line,
                    f"measured without the stored value: {store_error[0].reason}",
                )
        except FileError as e:
            return ActionResult(True, Outcome.FAILED, "hashing_error", p.policy, p.line, e.reason)
        except Error as e:
            return ActionResult(True, Outcome.FAILED, "store_entry", p.policy, p.line, str(e))
        return ActionResult(True, Outcome.PASSED, None, p.policy, p.line)

    def _audit_action(
        self, sd: SetDecision, entry: CacheEntry, hasher: Any
    ) -> tuple[ActionResult, str | None]:
        """The audit action: the file's hash goes into the trail once until the file changes."""
        p = _first(sd, "audit")
        if entry.audited:
            return ActionResult(True, Outcome.PASSED, None, p.policy, p.line), None
        try:
            digest = hasher(hashalgo.by_name(self.ima_hash))
        except FileError as e:
            failed = ActionResult(True, Outcome.FAILED, "hashing_error", p.policy, p.line, e.reason)
            return failed, None
        entry.audited = True
        return (
            ActionResult(True, Outcome.PASSED, None, p.policy, p.line),
            f"{digest.algorithm.name}:{digest.hex}",
        )

    def _hash(
        self, sd: SetDecision, ref: FileRef, value: Any, hasher: Any, entry: CacheEntry
    ) -> ActionResult:
        p = _first(sd, "hash")
        raw = value()
        if is_signature(raw):
            return ActionResult(
                True, Outcome.PASSED, None, p.policy, p.line, "signed: the signature is kept"
            )
        algo = hashalgo.by_name(self.ima_hash)
        try:
            new = digest_value(algo, hasher(algo).value).serialize()
            if raw != new:
                self.store.write(ref, new)
                self.cache.rekey(entry, change_cookie(ref.fd))
        except Error as e:
            return ActionResult(True, Outcome.FAILED, "failed", p.policy, p.line, str(e))
        return ActionResult(True, Outcome.PASSED, None, p.policy, p.line)

    # -- audit trail ------------------------------------------------------------------------------
    def _audit(self, decision: Decision, subj: Subject, audit_hash: str | None) -> None:
        """Queue the trail's records: the audit action's hash, and every failed action.

        Every record carries the file, hook, subject, policy, rule, action, result and the
        kernel's cause string.
        """
        if self.audit is None:
            return
        rules = {p.action.removeprefix("dont_"): p for p in decision.provenance}
        subject = {"uid": subj.uid, "euid": subj.euid, "gid": subj.gid, "egid": subj.egid}
        for kind in ACTION_KINDS:
            a = decision.actions[kind]
            if not (a.outcome == Outcome.FAILED or (kind == "audit" and audit_hash is not None)):
                continue
            prov = rules.get(kind)
            record: dict[str, Any] = {
                "type": "INTEGRITY_RULE" if a.outcome == Outcome.PASSED else "INTEGRITY_DATA",
                "file": decision.path,
                "hook": decision.hook,
                "subject": subject,
                "policy": a.policy,
                "line": a.line,
                "rule": prov.rule if prov is not None else None,
                "action": kind,
                "result": "allowed" if decision.allowed else "denied",
                "outcome": a.outcome,
                "cause": a.cause,
                "mode": self.mode,
            }
            if kind == "audit" and audit_hash is not None:
                record["hash"] = audit_hash
            self.audit.emit(record)


@dataclass(frozen=True)
class EvmConfig:
    """Require EVM: appraisal fails when the file's security metadata does not verify."""

    keyring: Keyring | None = None
    hmac_key: bytes | None = None
    fs_uuid: bytes | None = None


_EVM_CAUSES = {
    "no_xattrs": "missing-HMAC",
    "no_label": "missing-HMAC",
    "fail_immutable": "invalid-fail-immutable",
    "fail": "invalid-HMAC",
}


def _verity_of(ref: FileRef, name: str, algorithm: str) -> bytes | Verdict:
    try:
        return fsverity_digest(ref, algorithm)
    except FileError as e:
        return Verdict(name, Status.UNKNOWN, Cause.SIGV3_HASHING_ERROR, detail=e.reason)


def fs_magic_of(ref: FileRef) -> int | None:
    return _fs_magic(ref.fd)


def _first(sd: SetDecision, kind: str) -> Provenance:
    for p in sd.provenance:
        if p.action == kind:
            return p
    return Provenance(kind, "", 0, "")


def _rule(sd: SetDecision, p: Provenance) -> Any:
    for name, decision in sd.per_policy:
        if name == p.policy:
            return decision.rule_for(p.action.removeprefix("dont_"))
    return None
