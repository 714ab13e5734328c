"""Many named policies side by side (docs/architecture.md).

* Each policy is evaluated **on its own** with the kernel's rule (first match per action
  kind); one owner's ``dont_appraise`` never cancels another owner's ``appraise``.
* The set's answer is the **union** of what the policies demand, appraisal requirements
  combined to the strictest: a signature beats a digest, ``appraise_algos`` lists
  intersect, and requirements that no single file can meet (an empty algorithm
  intersection, sigv3 against imasig) **fail closed** with both rules named.
* Every answer carries **provenance**: for each action, the policy and rule that decided it.
* Each policy has a **lock** (open < append-only < signed-only < sealed; a lock only
  ever gets stricter) and a **version** that must grow with every change.

Hash versus appraise across policies: as within one kernel policy, appraisal supersedes
keeping the hash, so a policy's ``hash`` is dropped when *another* policy appraises (within
one policy the kernel's own order decides).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from imaguard.appraise._calls import appraise as appraise_file
from imaguard.appraise._files import open_target
from imaguard.appraise._sigstore import SignatureStore, store_for
from imaguard.crypto._keyring import Keyring
from imaguard.errors import FileError, PolicyError, PolicyLockedError, StoreError
from imaguard.formats.hashalgo import by_name
from imaguard.policy._compiled import CompiledPolicy
from imaguard.policy._evaluate import DEFAULT_PCR, PolicyDecision, Request
from imaguard.policy._parser import Mode, Policy, parse_policy

__all__ = [
    "Conflict",
    "Lock",
    "MeasureTarget",
    "PolicySet",
    "Provenance",
    "SetDecision",
]

MAX_POLICY_FILE = 16 << 20


class Lock(StrEnum):
    """How a policy in a :class:`PolicySet` may change, from loosest to strictest.

    Whatever the lock, every change must carry a higher version than the policy has
    (rollback is refused), and a lock can only be made stricter (:meth:`PolicySet.set_lock`).
    A change the lock does not allow raises :class:`~imaguard.PolicyLockedError`.
    """

    OPEN = "open"
    """Any change: :meth:`~PolicySet.replace`, :meth:`~PolicySet.append`,
    :meth:`~PolicySet.update_file`, :meth:`~PolicySet.remove`."""
    APPEND_ONLY = "append-only"
    """Rules may only be added after the existing ones, which stay as they are, in order;
    the policy cannot be removed."""
    SIGNED_ONLY = "signed-only"
    """Changes come only as a policy file whose ``security.ima`` signature verifies against
    the set's ``policy_keyring`` and that carries ``#@ version N`` inside the signed bytes
    (:meth:`~PolicySet.add_file`, :meth:`~PolicySet.update_file`), as the kernel's
    ``POLICY_CHECK`` appraisal of a policy file; never by :meth:`~PolicySet.replace`, and
    the policy cannot be removed."""
    SEALED = "sealed"
    """No change at all until the process restarts; the policy cannot be removed."""

    @property
    def rank(self) -> int:
        """Strictness: open 0 < append-only 1 < signed-only 2 < sealed 3."""
        return list(Lock).index(self)


@dataclass(frozen=True)
class Provenance:
    """Which rule of which policy decided an action."""

    action: str
    policy: str
    line: int
    rule: str
    owner: str | None = None
    """The policy's owner (``None`` for a policy added without one)."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "action": self.action,
            "policy": self.policy,
            "line": self.line,
            "rule": self.rule,
        }
        if self.owner is not None:
            d["owner"] = self.owner
        return d


@dataclass(frozen=True)
class MeasureTarget:
    """One measurement a policy demands: into which PCR, with which template (None: the
    log's default)."""

    policy: str
    pcr: int
    template: str | None


@dataclass(frozen=True)
class Conflict:
    """Requirements no file can meet at once: the decision fails closed."""

    reason: str
    rules: tuple[Provenance, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "rules": [r.to_dict() for r in self.rules]}


@dataclass(frozen=True)
class SetDecision:
    """The union of what every policy in the set demands for one request."""

    measure: bool
    appraise: bool
    audit: bool
    hash: bool
    appraise_type: str | None
    appraise_algos: tuple[str, ...] | None
    digest_type: str | None
    pcr: int
    template: str | None
    permit_directio: bool
    check_blacklist: bool
    fail_unverifiable_sigs: bool
    cache: bool
    provenance: tuple[Provenance, ...]
    measure_targets: tuple[MeasureTarget, ...]
    conflict: Conflict | None
    per_policy: tuple[tuple[str, PolicyDecision], ...] = field(compare=False, default=())

    @property
    def digsig_required(self) -> bool:
        return self.appraise_type is not None

    def provenance_for(self, kind: str) -> list[Provenance]:
        return [p for p in self.provenance if p.action.removeprefix("dont_") == kind]

    def to_json(self) -> dict[str, Any]:
        """The ``imaguard policy eval --json`` object (a contract: keep the keys)."""
        return {
            "measure": self.measure,
            "appraise": self.appraise,
            "audit": self.audit,
            "hash": self.hash,
            "appraise_type": self.appraise_type,
            "appraise_algos": list(self.appraise_algos)
            if self.appraise_algos is not None
            else None,
            "digest_type": self.digest_type,
            "pcr": self.pcr,
            "template": self.template,
            "permit_directio": self.permit_directio,
            "provenance": [p.to_dict() for p in self.provenance],
            "measure_targets": [
                {"policy": t.policy, "pcr": t.pcr, "template": t.template}
                for t in self.measure_targets
            ],
            "conflict": self.conflict.to_dict() if self.conflict else None,
        }


@dataclass(frozen=True)
class _Entry:
    name: str
    policy: Policy
    compiled: CompiledPolicy
    version: int
    lock: Lock
    owner: str | None
    fail_securely: bool


def _prov(
    name: str, decision: PolicyDecision, kind: str, owners: dict[str, str | None] | None = None
) -> Provenance:
    rule = decision.rule_for(kind)
    assert rule is not None
    owner = owners.get(name) if owners else None
    return Provenance(rule.action.value, name, rule.line, rule.canonical(), owner)


def combine(
    decisions: list[tuple[str, PolicyDecision, bool]],
    owners: dict[str, str | None] | None = None,
) -> SetDecision:
    """Union of per-policy decisions; ``bool`` is the policy's fail_securely flag;
    ``owners`` maps policy names to their owners (named in the provenance)."""
    own = owners or {}
    provenance = [
        Provenance(rule.action.value, name, rule.line, rule.canonical(), own.get(name))
        for name, d, _ in decisions
        for _, rule in sorted(d.decided, key=lambda kr: kr[1].line)
    ]
    measure = any(d.measure for _, d, _ in decisions)
    appraise = any(d.appraise for _, d, _ in decisions)
    audit = any(d.audit for _, d, _ in decisions)
    # Within a policy the kernel's rule already applies (appraise clears an earlier hash);
    # across policies, another policy's appraisal supersedes keeping the hash.
    hashing = any(
        d.hash and not any(o.appraise for m, o, _ in decisions if m != n) for n, d, _ in decisions
    )
    targets: list[MeasureTarget] = []
    seen: set[tuple[int, str | None]] = set()
    for name, d, _ in decisions:
        if d.measure and (d.pcr, d.template) not in seen:
            seen.add((d.pcr, d.template))
            targets.append(MeasureTarget(name, d.pcr, d.template))
    conflict: Conflict | None = None
    appraisers = [(n, d) for n, d, _ in decisions if d.appraise]
    types = [(n, d, d.appraise_type) for n, d in appraisers if d.appraise_type is not None]
    appraise_type: str | None = None
    if types:
        sigv3 = [(n, d) for n, d, t in types if t == "sigv3"]
        other = [(n, d) for n, d, t in types if t != "sigv3"]
        if sigv3 and other:
            conflict = Conflict(
                "one policy requires a sigv3 (fs-verity) signature, another an imasig signature",
                (_prov(*sigv3[0], "appraise", own), _prov(*other[0], "appraise", own)),
            )
            appraise_type = "sigv3"
        elif sigv3:
            appraise_type = "sigv3"
        elif all(t == "imasig|modsig" for _, _, t in types):
            appraise_type = "imasig|modsig"
        elif all(t == "digestlist" for _, _, t in types):
            appraise_type = "digestlist"  # a signature, or a digest a signed list vouches for
        else:
            appraise_type = "imasig"
    algos: tuple[str, ...] | None = None
    algo_source: tuple[str, PolicyDecision] | None = None
    for n, d in appraisers:
        if d.appraise_algos is None:
            continue
        if algos is None:
            algos, algo_source = d.appraise_algos, (n, d)
            continue
        both = [a for a in algos if a in d.appraise_algos]
        if not both and conflict is None and algo_source is not None:
            conflict = Conflict(
                "the allowed hash algorithms of two policies have nothing in common",
                (_prov(*algo_source, "appraise", own), _prov(n, d, "appraise", own)),
            )
        algos = tuple(both)
    if algos is not None:
        algos = tuple(sorted(algos, key=lambda a: by_name(a).id))
    acting = [d for _, d, _ in decisions if d.any_action]
    first_measure = next((d for _, d, _ in decisions if d.measure), None)
    return SetDecision(
        measure=measure,
        appraise=appraise,
        audit=audit,
        hash=hashing,
        appraise_type=appraise_type,
        appraise_algos=algos,
        digest_type="verity" if any(d.verity_required for _, d, _ in decisions) else None,
        pcr=first_measure.pcr if first_measure else DEFAULT_PCR,
        template=first_measure.template if first_measure else None,
        permit_directio=bool(acting) and all(d.permit_directio for d in acting),
        check_blacklist=any(d.check_blacklist for _, d, _ in decisions),
        fail_unverifiable_sigs=appraise and any(fs for _, d, fs in decisions if d.appraise),
        cache=all(d.cache for d in acting),
        provenance=tuple(provenance),
        measure_targets=tuple(targets),
        conflict=conflict,
        per_policy=tuple((n, d) for n, d, _ in decisions),
    )


class PolicySet:
    """Named policies, each with an owner, a lock and a version; evaluated side by side.

    Each policy is evaluated on its own with the kernel's rules (first match per action
    kind, ``dont_X`` stops only that policy's later ``X`` rules); :meth:`evaluate` returns
    the union of what they demand, appraisal requirements combined to the strictest and
    impossible combinations failing closed (see the module doc), with the policy and rule
    behind every action.

    Lifecycle: :meth:`add` / :meth:`add_file`, then :meth:`replace`, :meth:`append`,
    :meth:`update_file` and :meth:`remove` as each policy's :class:`Lock` allows;
    :meth:`set_lock` only tightens. ``policy_keyring`` is the keyring signed-only policy
    files must verify against. ``appraise_enabled=False`` makes appraise rules inert
    (the kernel's ``ima_appraise=off``).
    """

    def __init__(
        self, *, policy_keyring: Keyring | None = None, appraise_enabled: bool = True
    ) -> None:
        self.policy_keyring = policy_keyring
        self.appraise_enabled = appraise_enabled
        self._entries: dict[str, _Entry] = {}
        self._combined: dict[tuple[int, ...], tuple[tuple[PolicyDecision, ...], SetDecision]] = {}

    # -- queries ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> list[str]:
        """The policies' names, in the order they were added."""
        return list(self._entries)

    def policy(self, name: str) -> Policy:
        """The named policy (PolicyError if there is none)."""
        return self._get(name).policy

    def version(self, name: str) -> int:
        """The named policy's version: every change must raise it."""
        return self._get(name).version

    def lock(self, name: str) -> Lock:
        """The named policy's lock."""
        return self._get(name).lock

    def owner(self, name: str) -> str | None:
        """The named policy's owner (None when it was added without one)."""
        return self._get(name).owner

    def snapshot(self) -> object:
        """An opaque token of the set's current policies, for :meth:`restore`."""
        return self._entries

    def restore(self, token: object) -> None:
        """Put back the policies of a :meth:`snapshot` (undo changes that could not be kept)."""
        if not isinstance(token, dict):
            raise PolicyError("not a snapshot of a PolicySet")
        self._set_entries(token)

    def _set_entries(self, entries: dict[str, _Entry]) -> None:
        # Copy on write: evaluate() reads self._entries once, so a change made while other
        # threads evaluate is seen whole or not at all (never a dict changing under them).
        self._entries = entries
        self._combined = {}

    def _put(self, entry: _Entry) -> None:
        self._set_entries({**self._entries, entry.name: entry})

    def _get(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise PolicyError(f"no policy named {name!r} in the set") from None

    def _entry(
        self,
        name: str,
        policy: Policy,
        version: int,
        lock: Lock,
        owner: str | None,
        fail_securely: bool,
    ) -> _Entry:
        return _Entry(
            name,
            policy,
            CompiledPolicy(policy.rules, appraise_enabled=self.appraise_enabled),
            version,
            lock,
            owner,
            fail_securely,
        )

    # -- lifecycle ----------------------------------------------------------------------
    def add(
        self,
        name: str,
        policy: Policy,
        *,
        version: int | None = None,
        lock: Lock | str = Lock.OPEN,
        owner: str | None = None,
        fail_securely: bool = False,
    ) -> None:
        """Add a new named policy. A signed-only policy must come through :meth:`add_file`."""
        lock = Lock(lock)
        if not name or any(c.isspace() for c in name) or "=" in name:
            raise PolicyError(f"bad policy name {name!r} (no spaces or '=')")
        if name in self._entries:
            raise PolicyError(f"a policy named {name!r} is already in the set (use replace)")
        if lock is Lock.SIGNED_ONLY:
            raise PolicyLockedError(
                f"{name}: a signed-only policy is loaded from a signed file (add_file)"
            )
        v = version if version is not None else (policy.version or 1)
        self._put(self._entry(name, policy, v, lock, owner, fail_securely))

    def add_file(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        lock: Lock | str = Lock.OPEN,
        owner: str | None = None,
        mode: Mode = "kernel",
        store: SignatureStore | str | None = None,
    ) -> None:
        """Add a policy from a file; a signed-only one must verify against the policy keyring."""
        lock = Lock(lock)
        policy = self._read_file(path, mode=mode, signed=lock is Lock.SIGNED_ONLY, store=store)
        if name in self._entries:
            raise PolicyError(f"a policy named {name!r} is already in the set (use update_file)")
        v = policy.version or 1
        self._put(self._entry(name, policy, v, lock, owner, False))

    def add_signed(
        self,
        name: str,
        data: bytes,
        signature: bytes | None,
        *,
        keyring: Keyring | None = None,
        lock: Lock | str = Lock.SIGNED_ONLY,
        owner: str | None = None,
        version: int | None = None,
        mode: Mode = "imaguard",
        source: str = "<policy>",
    ) -> None:
        """Add a policy from its text and the ``security.ima`` value signed over it.

        The signature must verify against ``keyring`` (default: the set's policy keyring)
        whatever ``lock`` is; a ``signed-only`` policy added this way must carry ``#@
        version N`` inside the signed bytes, as :meth:`update_file` requires.
        """
        lock = Lock(lock)
        if name in self._entries:
            raise PolicyError(f"a policy named {name!r} is already in the set (use update_signed)")
        policy = self._verified(data, signature, keyring, mode, source)
        if lock is Lock.SIGNED_ONLY and policy.version is None:
            raise PolicyLockedError(
                f"{source}: a signed-only policy must carry '#@ version N' inside the signed file"
            )
        v = version if version is not None else (policy.version or 1)
        if lock is Lock.SIGNED_ONLY and v != policy.version:
            raise PolicyLockedError(
                f"{source}: a signed-only policy's version is the one signed inside it "
                f"({policy.version}), not {v}"
            )
        self._put(self._entry(name, policy, v, lock, owner, False))

    def update_signed(
        self,
        name: str,
        data: bytes,
        signature: bytes | None,
        *,
        keyring: Keyring | None = None,
        mode: Mode | None = None,
        source: str = "<policy>",
    ) -> None:
        """Replace a policy with signed text (what a signed-only lock allows)."""
        entry = self._get(name)
        if entry.lock is Lock.SEALED:
            raise PolicyLockedError(f"{name}: the policy is sealed; no change until restart")
        policy = self._verified(data, signature, keyring, mode or entry.policy.mode, source)
        if entry.lock is Lock.SIGNED_ONLY and policy.version is None:
            raise PolicyLockedError(
                f"{source}: a signed-only update must carry '#@ version N' inside the signed file"
            )
        self._replace(entry, policy, None)

    def _verified(
        self,
        data: bytes,
        signature: bytes | None,
        keyring: Keyring | None,
        mode: Mode,
        source: str,
    ) -> Policy:
        ring = keyring if keyring is not None else self.policy_keyring
        if ring is None:
            raise PolicyLockedError(f"{source}: no policy keyring to verify the signature against")
        if len(data) > MAX_POLICY_FILE:
            raise PolicyError(f"{source}: policy is {len(data)} bytes (at most {MAX_POLICY_FILE})")
        verdict = appraise_file(data, ring, value=signature)
        if not verdict.passed:
            raise PolicyLockedError(
                f"{source}: policy signature does not verify ({verdict.describe()}); refused"
            )
        return parse_policy(data, mode=mode, source=source)

    def replace(self, name: str, policy: Policy, *, version: int | None = None) -> None:
        """Replace a policy's rules, as its lock allows, with a higher version."""
        entry = self._get(name)
        if entry.lock is Lock.SEALED:
            raise PolicyLockedError(f"{name}: the policy is sealed; no change until restart")
        if entry.lock is Lock.SIGNED_ONLY:
            raise PolicyLockedError(
                f"{name}: the policy is signed-only; an update must be a "
                "policy file signed by a policy key (update_file)"
            )
        self._replace(entry, policy, version)

    def append(self, name: str, policy: Policy, *, version: int | None = None) -> None:
        """Append rules to a policy (what an append-only lock allows)."""
        entry = self._get(name)
        combined = Policy(
            entry.policy.rules + policy.rules,
            entry.policy.source,
            entry.policy.mode,
            policy.version,
        )
        self.replace(name, combined, version=version)

    def update_file(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        mode: Mode | None = None,
        store: SignatureStore | str | None = None,
    ) -> None:
        """Replace a policy from a file; signed-only policies need a valid signature on it."""
        entry = self._get(name)
        if entry.lock is Lock.SEALED:
            raise PolicyLockedError(f"{name}: the policy is sealed; no change until restart")
        signed = entry.lock is Lock.SIGNED_ONLY
        policy = self._read_file(path, mode=mode or entry.policy.mode, signed=signed, store=store)
        if signed and policy.version is None:
            raise PolicyLockedError(
                f"{path}: a signed-only update must carry '#@ version N' inside the signed file"
            )
        self._replace(entry, policy, None)

    def _replace(self, entry: _Entry, policy: Policy, version: int | None) -> None:
        name = entry.name
        if (
            entry.lock is Lock.APPEND_ONLY
            and policy.rules[: len(entry.policy.rules)] != entry.policy.rules
        ):
            raise PolicyLockedError(
                f"{name}: the policy is append-only; the update must keep "
                "every existing rule, in order, and only add after them"
            )
        new_version = version if version is not None else policy.version
        if new_version is None:
            new_version = entry.version + 1
        if new_version <= entry.version:
            raise PolicyLockedError(
                f"{name}: version {new_version} is not newer than "
                f"{entry.version} (rollback refused)"
            )
        self._put(
            self._entry(name, policy, new_version, entry.lock, entry.owner, entry.fail_securely)
        )

    def reinstate(
        self,
        name: str,
        policy: Policy,
        *,
        version: int,
        lock: Lock | str,
        owner: str | None,
    ) -> None:
        """Put a policy in as it was kept elsewhere, with no lock or version check.

        For a service that checks locks, versions and signatures itself and persists them
        (the daemon's policy service restoring its state, or applying a change it has
        authorised); replaces a policy of that name. Everyone else uses :meth:`add` and
        the lifecycle methods, which enforce the rules.
        """
        if not name or any(c.isspace() for c in name) or "=" in name:
            raise PolicyError(f"bad policy name {name!r} (no spaces or '=')")
        old = self._entries.get(name)
        fail_securely = old.fail_securely if old is not None else False
        self._put(self._entry(name, policy, version, Lock(lock), owner, fail_securely))

    def remove(self, name: str) -> None:
        """Remove a policy; only an open one can be removed."""
        entry = self._get(name)
        if entry.lock is not Lock.OPEN:
            raise PolicyLockedError(f"{name}: a {entry.lock} policy cannot be removed")
        self._set_entries({k: v for k, v in self._entries.items() if k != name})

    def set_lock(self, name: str, lock: Lock | str) -> None:
        """Make a policy's lock stricter (never looser)."""
        entry = self._get(name)
        lock = Lock(lock)
        if lock.rank < entry.lock.rank:
            raise PolicyLockedError(
                f"{name}: the lock can only get stricter ({entry.lock} -> {lock} refused)"
            )
        if lock is Lock.SIGNED_ONLY and self.policy_keyring is None:
            raise PolicyLockedError(f"{name}: signed-only needs a policy keyring")
        self._put(
            _Entry(
                entry.name,
                entry.policy,
                entry.compiled,
                entry.version,
                lock,
                entry.owner,
                entry.fail_securely,
            )
        )

    def _read_file(
        self,
        path: str | os.PathLike[str],
        *,
        mode: Mode,
        signed: bool,
        store: SignatureStore | str | None,
    ) -> Policy:
        """Read a policy file once, through one descriptor.

        The bytes whose signature is verified are the bytes that are parsed.
        """
        source = os.fspath(path)
        if signed and self.policy_keyring is None:
            raise PolicyLockedError(
                f"{source}: signed-only needs a policy keyring to verify against"
            )
        try:
            with open_target(source) as ref:
                if ref.st.st_size > MAX_POLICY_FILE:
                    raise PolicyError(
                        f"{source}: policy file is {ref.st.st_size} bytes "
                        f"(at most {MAX_POLICY_FILE})"
                    )
                data = os.pread(ref.fd, ref.st.st_size + 1, 0)
                value: bytes | None = None
                if signed:
                    st = (
                        store
                        if store is not None and not isinstance(store, str)
                        else store_for(store)
                    )
                    value = st.read(ref)
        except (FileError, StoreError) as e:
            raise PolicyError(str(e)) from e
        if signed:
            assert self.policy_keyring is not None
            verdict = appraise_file(data, self.policy_keyring, value=value)
            if not verdict.passed:
                raise PolicyLockedError(
                    f"{source}: policy signature does not verify "
                    f"({verdict.describe()}); update refused"
                )
        return parse_policy(data, mode=mode, source=source)

    # -- evaluation ------------------------------------------------------------------------
    @property
    def uses_paths(self) -> bool:
        """True when some rule has a path= or path_prefix= condition."""
        return any(
            r.path is not None or r.path_prefix is not None
            for e in self._entries.values()
            for r in e.policy.rules
        )

    def evaluate(self, req: Request) -> SetDecision:
        """What the set demands for one request (hook, mask, subject, object)."""
        entries, memo = self._entries, self._combined  # one consistent view (copy on write)
        decisions = [(e.name, e.compiled.evaluate(req), e.fail_securely) for e in entries.values()]
        # Per-policy decisions are memoised objects, so their identities make a cheap key;
        # the memo holds them, so an id is never reused for another decision meanwhile.
        key = tuple(id(d) for _, d, _ in decisions)
        hit = memo.get(key)
        if hit is not None:
            return hit[1]
        owners: dict[str, str | None] = {
            e.name: e.owner for e in entries.values() if e.owner is not None
        }
        result = combine(decisions, owners)
        if len(memo) < 4096:
            memo[key] = (tuple(d for _, d, _ in decisions), result)
        return result
