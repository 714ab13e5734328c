"""The ``policy`` verbs: check, show, eval and runtime (Keylime runtime policies)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import click

from imaguard.cli._common import (
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_OK,
    _Exit,
    err,
    pick_alias,
    policy_spec,
    read_file,
    write_atomic,
)
from imaguard.cli._options import (
    algorithm_option,
    check_hook,
    hook_option,
    json_option,
    keyring_option,
    mask_option,
    policy_mode_option,
    policy_options,
)
from imaguard.errors import Error


@click.group()
def policy() -> None:
    """Check, print and evaluate IMA policies."""


_MODE = policy_mode_option("kernel", old_mode_flag=True)


def _policy_mode(policy_mode: str | None, old_mode: str | None) -> str:
    return str(pick_alias(policy_mode, old_mode, "--policy-mode", "--mode") or "kernel")


def _read_policy_file(path: str, mode: str, name: str | None = None) -> Any:
    from imaguard.policy import parse_policy

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise Error(f"{path}: cannot read policy: {e.strerror or e}") from e
    return parse_policy(data, mode=mode, source=name or path)  # type: ignore[arg-type]


def _builtin(names: str) -> Any:
    from imaguard.policy import builtin_policy

    return builtin_policy(names)


def _echo_policy_error(path: str, e: Any) -> None:
    """A PolicyError as FILE:LINE:COL: reason lines on stdout (every problem found)."""
    for source, line, col, reason in e.problems:
        click.echo(f"{source}:{line}:{col}: {reason}")
    if not e.problems:
        click.echo(f"{path}: {e}")


@policy.command("check")
@_MODE
@click.argument("files", nargs=-1, required=True, type=click.Path())
def policy_check(policy_mode: str | None, old_mode: str | None, files: tuple[str, ...]) -> None:
    """Validate policy files: exit 0 valid, 1 invalid (FILE:LINE:COL: reason), 2 unreadable."""
    from imaguard.errors import PolicyError

    mode = _policy_mode(policy_mode, old_mode)
    code = EXIT_OK
    for path in files:
        try:
            p = _read_policy_file(path, mode)
        except PolicyError as e:
            _echo_policy_error(path, e)
            code = max(code, EXIT_FAILED)
            continue
        except Error as e:
            err(str(e))
            code = EXIT_ERROR
            continue
        click.echo(f"{path}: ok ({len(p)} rules)", err=True)
    raise _Exit(code)


@policy.command("show")
@click.option(
    "--builtin",
    "builtin_names",
    default=None,
    help="Built-in names, as ima_policy= (tcb|appraise_tcb).",
)
@_MODE
@click.argument("file", required=False, type=click.Path())
def policy_show(
    builtin_names: str | None, policy_mode: str | None, old_mode: str | None, file: str | None
) -> None:
    """Print a policy canonically: one line per rule, as the kernel reads it back.

    The lines follow the kernel's read-back format (ima_policy_show() in
    security/integrity/ima/ima_policy.c) with two documented differences (docs/decisions.md):
    digest_type=verity is printed before appraise_type=sigv3 (the kernel prints them the
    other way round, an order its own parser refuses), and ids above 2^31 are printed
    unsigned (the kernel prints them with %d). Both keep the lines loadable as they are.
    An invalid policy is reported as by `policy check` (FILE:LINE:COL: reason) and exits 1.
    """
    from imaguard.errors import PolicyError

    if (builtin_names is None) == (file is None):
        raise click.UsageError("give a policy FILE or --builtin NAMES (one of them)")
    if builtin_names is not None:
        pol = _builtin(builtin_names).policy
    else:
        try:
            pol = _read_policy_file(file or "", _policy_mode(policy_mode, old_mode))
        except PolicyError as e:
            _echo_policy_error(file or "", e)
            raise _Exit(EXIT_FAILED) from None
    click.echo(pol.text(), nl=False)
    raise _Exit(EXIT_OK)


@policy.command("eval")
@policy_options
@_MODE
@hook_option(old_func_flag=True)
@mask_option
@click.option("--uid", type=int, default=None)
@click.option("--euid", type=int, default=None)
@click.option("--gid", type=int, default=None)
@click.option("--egid", type=int, default=None)
@click.option("--fowner", type=int, default=None)
@click.option("--fgroup", type=int, default=None)
@click.option("--fsmagic", default=None, help="Filesystem magic, hexadecimal.")
@click.option("--fsname", default=None)
@click.option("--fs-subtype", default=None, help="Filesystem subtype (FUSE: sshfs, ...).")
@click.option("--fsuuid", default=None)
@click.option("--path", "obj_path", default=None)
@click.option("--cap-setuid", is_flag=True)
@click.option("--cap-setgid", is_flag=True)
@click.option("--subj-user", default=None)
@click.option("--subj-role", default=None)
@click.option("--subj-type", default=None)
@click.option("--obj-user", default=None)
@click.option("--obj-role", default=None)
@click.option("--obj-type", default=None)
@click.option("--keyring", "keyring_name", default=None, help="Keyring name (KEY_CHECK).")
@click.option("--label", default=None, help="Data label (CRITICAL_DATA).")
@json_option("Print one JSON object.")
def policy_eval(
    policies: tuple[str, ...],
    builtin_names: str | None,
    policy_mode: str | None,
    old_mode: str | None,
    hook: str | None,
    old_func: str | None,
    mask: str | None,
    uid: int | None,
    euid: int | None,
    gid: int | None,
    egid: int | None,
    fowner: int | None,
    fgroup: int | None,
    fsmagic: str | None,
    fsname: str | None,
    fs_subtype: str | None,
    fsuuid: str | None,
    obj_path: str | None,
    cap_setuid: bool,
    cap_setgid: bool,
    subj_user: str | None,
    subj_role: str | None,
    subj_type: str | None,
    obj_user: str | None,
    obj_role: str | None,
    obj_type: str | None,
    keyring_name: str | None,
    label: str | None,
    as_json: bool,
) -> None:
    """Decide which actions the policy (or policy set) demands for one request."""
    from imaguard.policy import Object, PolicySet, Request, Subject, parse_mask

    mode = _policy_mode(policy_mode, old_mode)
    hook = check_hook(hook, mode, old_func)
    if not policies and builtin_names is None:
        raise click.UsageError("give --policy [NAME=]FILE (repeatable) or --builtin NAMES")
    pset = PolicySet()
    if builtin_names is not None:
        b = _builtin(builtin_names)
        pset.add("builtin", b.policy, fail_securely=b.fail_securely)
    for spec in policies:
        name, path = policy_spec(spec)
        pset.add(name, _read_policy_file(path, mode, None))
    magic = None
    if fsmagic is not None:
        try:
            magic = int(fsmagic, 16)
        except ValueError:
            raise click.BadParameter(
                f"{fsmagic!r} is not hexadecimal", param_hint="--fsmagic"
            ) from None
    data = keyring_name if hook == "KEY_CHECK" else label
    req = Request(
        hook,
        parse_mask(mask),
        Subject(
            uid=uid,
            euid=euid,
            gid=gid,
            egid=egid,
            cap_setuid=cap_setuid,
            cap_setgid=cap_setgid,
            user=subj_user,
            role=subj_role,
            type=subj_type,
        ),
        Object(
            fowner=fowner,
            fgroup=fgroup,
            fsmagic=magic,
            fsname=fsname,
            fs_subtype=fs_subtype,
            fsuuid=fsuuid,
            user=obj_user,
            role=obj_role,
            type=obj_type,
            path=obj_path,
        ),
        data,
    )
    decision = pset.evaluate(req)
    if as_json:
        click.echo(json.dumps(decision.to_json(), indent=2))
    else:
        kinds = [k for k in ("measure", "appraise", "audit", "hash") if getattr(decision, k)]
        click.echo("actions: " + (", ".join(kinds) if kinds else "none"))
        if decision.appraise_type:
            click.echo(f"appraise_type: {decision.appraise_type}")
        if decision.appraise_algos is not None:
            click.echo("appraise_algos: " + ",".join(decision.appraise_algos))
        if decision.measure:
            click.echo(f"pcr: {decision.pcr}  template: {decision.template or '(default)'}")
        for p in decision.provenance:
            click.echo(f"  {p.action:<14} {p.policy}:{p.line}: {p.rule}")
        if decision.conflict:
            click.echo(f"CONFLICT (fails closed): {decision.conflict.reason}")
    raise _Exit(EXIT_OK)


@policy.command("runtime")
@click.option(
    "--from-log",
    "from_log",
    default=None,
    type=click.Path(dir_okay=False),
    help="A binary or ASCII measurement list.",
)
@click.option(
    "--from-tree",
    "from_tree",
    default=None,
    type=click.Path(file_okay=False),
    help="A directory: allow the current content of every file.",
)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--exclude", "excludes", multiple=True, help="Regex of paths to exclude (re.match).")
@algorithm_option("Digest algorithm for --from-tree.")
@click.option(
    "--boot-aggregate",
    "boot_aggregates",
    multiple=True,
    help="Accepted boot_aggregate hex (--from-tree).",
)
@click.option(
    "--rootfs",
    default=None,
    metavar="PREFIX|OLD=NEW",
    help="Paths under PREFIX are written without it (an image mounted at PREFIX); "
    "OLD=NEW replaces the prefix OLD with NEW instead.",
)
@keyring_option(
    "Certificates (file or directory) whose public keys fill verification-keys, for "
    "Keylime to check ima-sig signatures; repeatable."
)
def policy_runtime(
    from_log: str | None,
    from_tree: str | None,
    output: str,
    excludes: tuple[str, ...],
    algorithm: str,
    boot_aggregates: tuple[str, ...],
    rootfs: str | None,
    keyrings: tuple[str, ...],
) -> None:
    """Generate a Keylime runtime policy from a log or a directory tree.

    A boot_aggregate of all zeros (a log from a machine without a TPM) is written as it
    is, with a warning: a machine with a TPM never reports it.
    """
    import dataclasses

    from imaguard.measure import policy_from_records, policy_from_tree, records_from_any

    if (from_log is None) == (from_tree is None):
        raise click.UsageError("give --from-log F or --from-tree DIR (one of them)")
    rebase = _parse_rootfs(rootfs) if rootfs is not None else None
    verification_keys = _verification_keys(keyrings) if keyrings else ""
    if from_log is not None:
        records, log_hash, problem = records_from_any(read_file(from_log))
        if problem is not None:
            raise Error(f"{from_log}: {problem.message}")
        pol = policy_from_records(records, log_hash_alg=log_hash, excludes=excludes)
    else:
        pol = policy_from_tree(
            from_tree or "", algorithm=algorithm, excludes=excludes, boot_aggregates=boot_aggregates
        )
    if rebase is not None:
        pol = dataclasses.replace(pol, digests=_rebased(pol.digests, *rebase))
    if verification_keys:
        pol = dataclasses.replace(pol, verification_keys=verification_keys)
    for digest in pol.digests.get("boot_aggregate", ()):
        if not digest.strip("0"):
            err(
                "warning: the policy allows an all-zero boot_aggregate (a log made without a "
                "TPM); a machine with a TPM reports a real one, which this entry will not match"
            )
    write_atomic(output, pol.serialize().encode())
    click.echo(f"{output}: {len(pol.digests)} paths", err=True)
    raise _Exit(EXIT_OK)


def _parse_rootfs(spec: str) -> tuple[str, str]:
    """``PREFIX`` → (PREFIX, "") and ``OLD=NEW`` → (OLD, NEW); both absolute paths."""
    old, sep, new = spec.partition("=")
    old = old.rstrip("/")
    if not old.startswith("/") or (sep and new and not new.startswith("/")):
        raise click.BadParameter(
            f"{spec!r}: use an absolute PREFIX or OLD=NEW (absolute paths)", param_hint="--rootfs"
        )
    return old, new.rstrip("/")


def _rebased(
    digests: Mapping[str, tuple[str, ...]], old: str, new: str
) -> dict[str, tuple[str, ...]]:
    """DIGESTS with the path prefix OLD (whole components) replaced by NEW ("" strips it)."""
    out: dict[str, list[str]] = {}
    for path, values in digests.items():
        if path == old:
            path = new or "/"
        elif path.startswith(old + "/"):
            path = new + path[len(old) :]
        merged = out.setdefault(path, [])
        merged.extend(v for v in values if v not in merged)
    return {k: tuple(v) for k, v in out.items()}


def _verification_keys(keyrings: tuple[str, ...]) -> str:
    """Keylime's ``verification-keys`` (an ImaKeyring as a JSON string) from certificates."""
    from cryptography.hazmat.primitives import serialization

    import imaguard
    from imaguard.formats.keylime import RuntimePolicy

    ring = imaguard.Keyring.load(*keyrings)  # refuses a keyring with no certificates
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return RuntimePolicy.keyring_string(
        [c.public_key.public_bytes(der, spki) for c in ring.certificates],
        [c.key_id for c in ring.certificates],
    )
