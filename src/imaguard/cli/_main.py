"""The ``imaguard`` command: a thin layer over the public API.

Exit codes, decided in one place (:func:`main`):

* 0 - everything asked for succeeded (skipped non-regular files do not count against it);
* 1 - some file failed verification;
* 2 - a usage or operational error (bad option, unreadable key, a file that could not
  be processed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, cast

import click

import imaguard
from imaguard.appraise import _batch as batch
from imaguard.appraise._batch import BatchOutcome as Outcome
from imaguard.appraise._batch import Result
from imaguard.appraise._calls import Require
from imaguard.appraise._sigstore import STORE_NAMES, SidecarStore, SignatureStore, store_for
from imaguard.appraise._verdict import Cause, Status, Verdict
from imaguard.cli import _daemon
from imaguard.crypto._keytypes import KEY_TYPES
from imaguard.errors import Error
from imaguard.formats import hashalgo

if TYPE_CHECKING:
    from imaguard.core._guard import AppraiseMode
    from imaguard.policy._parser import Mode as PolicyMode

_log = logging.getLogger("imaguard.cli")

_VERDICT_KEYS = tuple(Verdict("", Status.UNKNOWN).to_dict())

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERROR = 2


class _Exit(Exception):  # noqa: N818 - control flow, not an error
    def __init__(self, code: int) -> None:
        self.code = code


def _err(message: str) -> None:
    click.echo(f"imaguard: {message}", err=True)


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("imaguard: %(levelname)s: %(message)s"))
    root = logging.getLogger("imaguard")
    root.handlers[:] = [handler]
    root.setLevel(level)


def _algorithm_choice() -> click.Choice[str]:
    return click.Choice(hashalgo.computable_names(), case_sensitive=False)


def _store_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--xattr-user",
        is_flag=True,
        help="Use the user.ima xattr (same as --store user-xattr).",
    )(f)
    return click.option(
        "--store",
        type=click.Choice(STORE_NAMES),
        default=None,
        help="Where values live: security.ima (xattr; default as root), user.ima "
        "(user-xattr; default otherwise) or a FILE.sig sidecar (sigfile).",
    )(f)


def _walk_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "-j",
        "--jobs",
        type=click.IntRange(min=1),
        default=None,
        help="Worker processes for -r (default: all cores).",
    )(f)
    f = click.option(
        "-L",
        "--follow-symlinks",
        is_flag=True,
        help="Follow symbolic links while walking (default: never).",
    )(f)
    return click.option("-r", "--recursive", is_flag=True, help="Walk directories.")(f)


def _resolve_store(store: str | None, xattr_user: bool) -> SignatureStore:
    if xattr_user:
        if store not in (None, "user-xattr"):
            raise click.UsageError("--xattr-user conflicts with --store " + str(store))
        store = "user-xattr"
    return store_for(store)


@dataclass
class _Progress:
    """A rich progress bar on a terminal; nothing otherwise."""

    total: int
    label: str
    enabled: bool = field(default_factory=lambda: sys.stderr.isatty())

    def __post_init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None
        if self.enabled and self.total > 1:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self._progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total)

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _run_batch(
    paths: Sequence[str],
    operation: batch.Operation,
    *,
    recursive: bool,
    follow: bool,
    jobs: int | None,
    store: SignatureStore,
    label: str,
    echo_failures: bool = True,
    echo_ok: Callable[[Result], None] | None = None,
) -> list[Result]:
    skip = (SidecarStore.suffix,) if isinstance(store, SidecarStore) else ()
    entries = list(
        batch.walk(paths, recursive=recursive, follow_symlinks=follow, skip_suffixes=skip)
    )
    progress = _Progress(len(entries), label)

    def report(r: Result) -> None:
        progress.advance()
        if r.outcome is Outcome.OK:
            if echo_ok is not None:
                echo_ok(r)
        elif r.outcome is Outcome.SKIPPED:
            _log.info("skipped %s", r.message)
        elif echo_failures:
            _err(r.message)

    try:
        return batch.run(operation, entries, jobs=jobs, on_result=report)
    finally:
        progress.close()


def _summary(verb: str, results: Sequence[Result], recursive: bool) -> int:
    counts = {o: 0 for o in Outcome}
    for r in results:
        counts[r.outcome] += 1
    if recursive or counts[Outcome.ERROR] or counts[Outcome.FAILED] or len(results) > 1:
        parts = [f"{counts[Outcome.OK]} {verb}"]
        if counts[Outcome.FAILED]:
            parts.append(f"{counts[Outcome.FAILED]} failed")
        if counts[Outcome.ERROR]:
            parts.append(f"{counts[Outcome.ERROR]} errors")
        if counts[Outcome.SKIPPED]:
            parts.append(f"{counts[Outcome.SKIPPED]} skipped")
        click.echo("imaguard: " + ", ".join(parts), err=True)
    if counts[Outcome.ERROR]:
        return EXIT_ERROR
    if counts[Outcome.FAILED]:
        return EXIT_FAILED
    return EXIT_OK


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(imaguard.__version__, prog_name="imaguard")
@click.option("-v", "--verbose", count=True, help="More output (-vv for debug logs).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """imaguard: sign, verify and hash files the way the kernel's IMA and evmctl do."""
    _configure_logging(verbose)
    ctx.obj = {"verbose": verbose}


cli.add_command(_daemon.daemon)
cli.add_command(_daemon.status)


@cli.group()
def keys() -> None:
    """Manage signing keys."""


@keys.command("generate")
@click.option(
    "--type", "key_type", type=click.Choice(KEY_TYPES), default="rsa2048", show_default=True
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory to write to.",
)
@click.option(
    "--cn", default="imaguard signing key", show_default=True, help="Certificate common name."
)
@click.option("--days", type=click.IntRange(min=1), default=3650, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def keys_generate(key_type: str, out_dir: str, cn: str, days: int, force: bool) -> None:
    """Write DIR/private.pem, DIR/cert.pem and DIR/cert.der (self-signed, with an SKID)."""
    generated = imaguard.generate_key(key_type, common_name=cn, days=days)
    written = generated.write(out_dir, overwrite=force)
    for path in written:
        click.echo(str(path))
    click.echo(f"key id: {generated.certificate.key_id:08x}", err=True)


@cli.command()
@click.option(
    "-k",
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Private key (PEM or DER).",
)
@click.option(
    "--cert",
    "cert_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Certificate whose SKID gives the key id (as evmctl --keyid-from-cert).",
)
@click.option(
    "-p",
    "--pass",
    "password",
    default=None,
    help="Password of an encrypted key (prefer the IMAGUARD_KEY_PASSWORD variable).",
)
@click.option(
    "-a", "--algo", "algorithm", type=_algorithm_choice(), default="sha256", show_default=True
)
@click.option(
    "--sigv3", is_flag=True, help="Write a v3 (0x06) signature over the fs-verity digest."
)
@_store_options
@_walk_options
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.pass_context
def sign(
    ctx: click.Context,
    key_path: str,
    cert_path: str | None,
    password: str | None,
    algorithm: str,
    store: str | None,
    xattr_user: bool,
    recursive: bool,
    follow_symlinks: bool,
    jobs: int | None,
    paths: tuple[str, ...],
    sigv3: bool = False,
) -> None:
    """Sign files: write a v2 signature (type 0x03) of their content (or v3 with --sigv3)."""
    st = _resolve_store(store, xattr_user)
    key = imaguard.load_private_key(key_path, password)
    if cert_path is not None:
        key = key.with_certificate(imaguard.load_certificates(cert_path)[0])
    algo = hashalgo.by_name(algorithm)
    verbose = ctx.obj["verbose"] > 0

    def op(path: str) -> Result:
        value = imaguard.sign_file(path, key, algo, st, sigv3=sigv3)
        return Result(path, Outcome.OK, value.serialize().hex() if verbose else "")

    results = _run_batch(
        paths,
        op,
        recursive=recursive,
        follow=follow_symlinks,
        jobs=jobs,
        store=st,
        label="signing",
        echo_ok=(lambda r: click.echo(f"{r.path}: {r.message}")) if verbose else None,
    )
    raise _Exit(_summary("signed", results, recursive))


def _load_keyring(certs: Sequence[str], keyrings: Sequence[str]) -> imaguard.Keyring:
    if not certs and not keyrings:
        raise click.UsageError("give --cert CERT or --keyring DIR (the keys to trust)")
    return imaguard.Keyring.load(*certs, *keyrings)


@cli.command()
@click.option(
    "--cert",
    "certs",
    multiple=True,
    type=click.Path(),
    help="Trusted certificate (PEM or DER); repeatable.",
)
@click.option(
    "--keyring",
    "keyrings",
    multiple=True,
    type=click.Path(),
    help="Directory of trusted certificates; repeatable.",
)
@click.option(
    "--allow-digest",
    is_flag=True,
    help="Also accept a bare digest value (only safe when something else protects it).",
)
@_store_options
@_walk_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of verdicts.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.pass_context
def verify(
    ctx: click.Context,
    certs: tuple[str, ...],
    keyrings: tuple[str, ...],
    allow_digest: bool,
    store: str | None,
    xattr_user: bool,
    recursive: bool,
    follow_symlinks: bool,
    jobs: int | None,
    as_json: bool,
    paths: tuple[str, ...],
) -> None:
    """Verify files against trusted keys; exit 1 if any file fails."""
    st = _resolve_store(store, xattr_user)
    ring = _load_keyring(certs, keyrings)
    require: Require = "any" if allow_digest else "signature"
    verbose = ctx.obj["verbose"] > 0

    def op(path: str) -> Result:
        verdict = imaguard.appraise(path, ring, require=require, store=st)
        if verdict.passed:
            outcome = Outcome.OK
            if not as_json and not verbose:
                return Result(path, outcome)  # nothing to say: keep the result small
        elif verdict.status is Status.UNKNOWN and verdict.cause == Cause.UNKNOWN:
            # The file could not be examined (unreadable, vanished, no xattr support).
            outcome = Outcome.ERROR
        else:
            outcome = Outcome.FAILED
        return Result(
            path, outcome, f"{path}: {verdict.describe()}", verdict.to_dict() if as_json else None
        )

    echo_ok = None if as_json or not verbose else (lambda r: click.echo(r.message))
    results = _run_batch(
        paths,
        op,
        recursive=recursive,
        follow=follow_symlinks,
        jobs=jobs,
        store=st,
        label="verifying",
        echo_failures=not as_json,
        echo_ok=echo_ok,
    )
    if as_json:
        out = []
        for r in results:
            if r.data is not None:
                out.append(r.data)
            else:
                blank = dict.fromkeys(_VERDICT_KEYS)
                out.append(
                    {**blank, "path": r.path, "status": r.outcome.value, "detail": r.message}
                )
        click.echo(json.dumps(out, indent=2))
    raise _Exit(_summary("verified", results, recursive))


@cli.command("hash")
@click.option(
    "-a", "--algo", "algorithm", type=_algorithm_choice(), default="sha256", show_default=True
)
@_store_options
@_walk_options
@click.option("-n", "--dry-run", is_flag=True, help="Print the value; store nothing.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def hash_cmd(
    algorithm: str,
    store: str | None,
    xattr_user: bool,
    recursive: bool,
    follow_symlinks: bool,
    jobs: int | None,
    dry_run: bool,
    paths: tuple[str, ...],
) -> None:
    """Store the digest value (0x04; 0x01 for md5/sha1, as the kernel) and print it."""
    st = _resolve_store(store, xattr_user)
    algo = hashalgo.by_name(algorithm)

    def op(path: str) -> Result:
        if dry_run:
            digest = imaguard.hash_file(path, algo)
            from imaguard.formats.xattr import digest_value

            value = digest_value(algo, digest.value)
        else:
            value = imaguard.store_digest(path, algo, st)
        return Result(path, Outcome.OK, value.serialize().hex())

    results = _run_batch(
        paths,
        op,
        recursive=recursive,
        follow=follow_symlinks,
        jobs=jobs,
        store=st,
        label="hashing",
        echo_ok=lambda r: click.echo(f"{r.message}  {r.path}"),
    )
    raise _Exit(_summary("hashed", results, recursive))


@cli.command()
@_store_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def show(store: str | None, xattr_user: bool, as_json: bool, paths: tuple[str, ...]) -> None:
    """Decode what is stored for each file (type, algorithm, key id, sizes); no verification."""
    st = _resolve_store(store, xattr_user)
    infos: list[dict[str, Any]] = []
    code = EXIT_OK
    for path in paths:
        try:
            info = imaguard.signature_info(path, store=st)
        except Error as e:
            _err(str(e))
            infos.append({"path": path, "present": False, "error": str(e)})
            code = EXIT_ERROR
            continue
        infos.append(info.to_dict())
        if as_json:
            continue
        if not info.present:
            click.echo(f"{path}: no value ({st.name})")
        elif info.error:
            click.echo(f"{path}: malformed value ({info.value_size} bytes): {info.error}")
        elif info.signed:
            click.echo(
                f"{path}: {info.type_name} type=0x{info.value_type:02x} algo={info.algorithm} "
                f"keyid={info.key_id:08x} sig={info.signature_size} bytes "
                f"value={info.value_size} bytes"
            )
        else:
            digest = info.digest.hex() if info.digest else ""
            click.echo(
                f"{path}: {info.type_name} type=0x{info.value_type:02x} "
                f"algo={info.algorithm} {digest}"
            )
    if as_json:
        click.echo(json.dumps(infos, indent=2))
    raise _Exit(code)


@cli.group()
def policy() -> None:
    """Check, print and evaluate IMA policies (kernel grammar)."""


_MODE = click.option(
    "--mode",
    type=click.Choice(["kernel", "imaguard"]),
    default="kernel",
    show_default=True,
    help="kernel: exactly the kernel's grammar; imaguard: plus app hooks, path=, cache=no.",
)


def _read_policy_file(path: str, mode: str, name: str | None = None) -> Any:
    from imaguard.policy import parse_policy

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise Error(f"{path}: cannot read policy: {e.strerror or e}") from e
    return parse_policy(data, mode=mode, source=name or path)  # type: ignore[arg-type]


@policy.command("check")
@_MODE
@click.argument("files", nargs=-1, required=True, type=click.Path())
def policy_check(mode: str, files: tuple[str, ...]) -> None:
    """Validate policy files: exit 0 valid, 1 invalid (FILE:LINE:COL: reason), 2 unreadable."""
    from imaguard.errors import PolicyError

    code = EXIT_OK
    for path in files:
        try:
            p = _read_policy_file(path, mode)
        except PolicyError as e:
            for source, line, col, reason in e.problems:
                click.echo(f"{source}:{line}:{col}: {reason}")
            if not e.problems:
                click.echo(f"{path}: {e}")
            code = max(code, EXIT_FAILED)
            continue
        except Error as e:
            _err(str(e))
            code = EXIT_ERROR
            continue
        click.echo(f"{path}: ok ({len(p)} rules)", err=True)
    raise _Exit(code)


def _builtin(names: str) -> Any:
    from imaguard.policy import builtin_policy

    return builtin_policy(names)


@policy.command("show")
@click.option(
    "--builtin",
    "builtin_names",
    default=None,
    help="Built-in names, as ima_policy= (tcb|appraise_tcb).",
)
@_MODE
@click.argument("file", required=False, type=click.Path())
def policy_show(builtin_names: str | None, mode: str, file: str | None) -> None:
    """Print a policy in the kernel's read-back format (one canonical line per rule)."""
    if (builtin_names is None) == (file is None):
        raise click.UsageError("give a policy FILE or --builtin NAMES (one of them)")
    pol = (
        _builtin(builtin_names).policy
        if builtin_names is not None
        else _read_policy_file(file or "", mode)
    )
    click.echo(pol.text(), nl=False)
    raise _Exit(EXIT_OK)


def _policy_spec(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name:
        return name, path
    return os.path.splitext(os.path.basename(spec))[0] or spec, spec


@policy.command("eval")
@click.option("--policy", "policies", multiple=True, help="[NAME=]FILE; repeat for a policy set.")
@click.option(
    "--builtin", "builtin_names", default=None, help="Built-in names (tcb,appraise_tcb or tcb|...)."
)
@_MODE
@click.option("--func", "func", required=True, help="The hook (FILE_CHECK, BPRM_CHECK, ...).")
@click.option("--mask", default=None, help="MAY_READ, or several joined by '|'.")
@click.option("--uid", type=int, default=None)
@click.option("--euid", type=int, default=None)
@click.option("--gid", type=int, default=None)
@click.option("--egid", type=int, default=None)
@click.option("--fowner", type=int, default=None)
@click.option("--fgroup", type=int, default=None)
@click.option("--fsmagic", default=None, help="Filesystem magic, hexadecimal.")
@click.option("--fsname", default=None)
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def policy_eval(
    policies: tuple[str, ...],
    builtin_names: str | None,
    mode: str,
    func: str,
    mask: str | None,
    uid: int | None,
    euid: int | None,
    gid: int | None,
    egid: int | None,
    fowner: int | None,
    fgroup: int | None,
    fsmagic: str | None,
    fsname: str | None,
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
    from imaguard.policy._ast import FUNC_ALIASES, KERNEL_FUNCS

    if not policies and builtin_names is None:
        raise click.UsageError("give --policy [NAME=]FILE (repeatable) or --builtin NAMES")
    pset = PolicySet()
    if builtin_names is not None:
        b = _builtin(builtin_names)
        pset.add("builtin", b.policy, fail_securely=b.fail_securely)
    for spec in policies:
        name, path = _policy_spec(spec)
        pset.add(name, _read_policy_file(path, mode, None))
    magic = None
    if fsmagic is not None:
        try:
            magic = int(fsmagic, 16)
        except ValueError:
            raise click.BadParameter(
                f"{fsmagic!r} is not hexadecimal", param_hint="--fsmagic"
            ) from None
    hook = FUNC_ALIASES.get(func, func)
    if hook not in KERNEL_FUNCS and not (
        mode == "imaguard" and re.fullmatch(r"[A-Z][A-Z0-9_]*", hook)
    ):
        hint = (
            " (application hooks need --mode imaguard)"
            if re.fullmatch(r"[A-Z][A-Z0-9_]*", hook)
            else ""
        )
        raise click.BadParameter(f"unknown hook {func!r}{hint}", param_hint="--func")
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


# -- measurement ------------------------------------------------------------------------


def _open_store(
    state: str, tpm: str | None = None, template: str = "ima-ng", algo: str = "sha256"
) -> Any:
    from imaguard.measure import LogStore

    store = LogStore(state, tpm=tpm, template=template, ima_hash=algo)
    report = store.report
    if report.torn_bytes:
        _err(
            f"{state}: the log had a torn tail of {report.torn_bytes} bytes; truncated "
            f"after {report.entries} entries"
        )
    if report.re_extended:
        _err(f"{state}: extended {report.re_extended} logged entries the TPM had missed")
    return store


@cli.command()
@click.option(
    "--state", required=True, type=click.Path(file_okay=False), help="State directory (the log)."
)
@click.option(
    "--template", default="ima-ng", show_default=True, help="Template name or field format."
)
@click.option(
    "-a",
    "--algo",
    "algorithm",
    type=_algorithm_choice(),
    default="sha256",
    show_default=True,
    help="Digest algorithm when the file carries no value naming one (ima_hash).",
)
@click.option("--pcr", type=click.IntRange(0, 23), default=10, show_default=True)
@click.option("--tpm", default=None, help="TCTI of a TPM to extend (swtpm:host=127.0.0.1,port=N).")
@_store_options
@click.argument("files", nargs=-1, required=True, type=click.Path())
def measure(
    state: str,
    template: str,
    algorithm: str,
    pcr: int,
    tpm: str | None,
    store: str | None,
    xattr_user: bool,
    files: tuple[str, ...],
) -> None:
    """Measure files into the log: one entry each (a new log starts with boot_aggregate)."""
    from imaguard.formats.template import TemplateDescriptor
    from imaguard.measure import file_entry

    st = _resolve_store(store, xattr_user)
    try:
        desc = TemplateDescriptor.lookup(template)
    except Error as e:
        raise click.BadParameter(str(e), param_hint="--template") from None
    code = EXIT_OK
    with _open_store(state, tpm, desc.name, algorithm) as log:
        for path in files:
            try:
                entry = file_entry(path, desc, ima_hash=algorithm, pcr=pcr, store=st)
                result = log.append(entry)
            except Error as e:
                _err(str(e))
                code = EXIT_ERROR
                continue
            if result.added:
                click.echo(f"{result.index} {path}")
            else:
                click.echo(f"- {path} (already measured: {result.reason})")
    raise _Exit(code)


@cli.group()
def log() -> None:
    """Show, export and verify measurement logs."""


def _read_state_log(state: str) -> tuple[bytes, tuple[str, ...]]:
    from imaguard.measure._logstore import LOG_NAME, STATE_NAME

    try:
        with open(os.path.join(state, STATE_NAME)) as f:
            banks = tuple(json.load(f)["banks"])
        with open(os.path.join(state, LOG_NAME), "rb") as f:
            return f.read(), banks
    except (OSError, ValueError, KeyError) as e:
        raise Error(f"{state}: not a measurement state directory ({e})") from e


def _state_entries(state: str) -> tuple[list[Any], tuple[str, ...]]:
    from imaguard.formats.measurelist import parse_binary

    data, banks = _read_state_log(state)
    return [r.entry for r in parse_binary(data, "sha1")], banks


@log.command("show")
@click.option("--state", required=True, type=click.Path(file_okay=False))
@click.option(
    "--format", "fmt", type=click.Choice(["ascii", "json"]), default="ascii", show_default=True
)
@click.option(
    "--bank",
    default="sha1",
    type=click.Choice(["sha1", "sha256", "sha384", "sha512"]),
    show_default=True,
    help="Bank of the template-digest column.",
)
def log_show(state: str, fmt: str, bank: str) -> None:
    """Print the log (kernel ASCII format, or JSON)."""
    from imaguard.formats.measurelist import serialize_ascii
    from imaguard.formats.template import render_field

    entries, _ = _state_entries(state)
    if fmt == "ascii":
        sys.stdout.buffer.write(serialize_ascii(entries, bank))
        sys.stdout.flush()
    else:
        out = [
            {
                "index": i,
                "pcr": e.pcr,
                "template": e.template.name,
                "digest": e.template_digest(bank).hex(),
                "violation": e.violation,
                "fields": {
                    f: render_field(f, d).decode("utf-8", "backslashreplace")
                    for f, d in zip(e.template.fields, e.fields, strict=True)
                },
            }
            for i, e in enumerate(entries)
        ]
        click.echo(json.dumps(out, indent=2))
    raise _Exit(EXIT_OK)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise Error(f"{path}: cannot write: {e.strerror or e}") from e


@log.command("export")
@click.option("--state", required=True, type=click.Path(file_okay=False))
@click.option("--binary", "binary_out", default=None, type=click.Path(dir_okay=False))
@click.option("--ascii", "ascii_out", default=None, type=click.Path(dir_okay=False))
@click.option(
    "--bank",
    default="sha1",
    type=click.Choice(["sha1", "sha256", "sha384", "sha512"]),
    show_default=True,
    help="Bank of the template-digest column.",
)
def log_export(state: str, binary_out: str | None, ascii_out: str | None, bank: str) -> None:
    """Write the log as binary_runtime_measurements and/or ascii_runtime_measurements."""
    from imaguard.formats.measurelist import serialize_ascii, serialize_binary

    if binary_out is None and ascii_out is None:
        raise click.UsageError("give --binary OUT, --ascii OUT, or both")
    entries, _ = _state_entries(state)
    if binary_out is not None:
        _write_atomic(binary_out, serialize_binary(entries, bank))
    if ascii_out is not None:
        _write_atomic(ascii_out, serialize_ascii(entries, bank))
    raise _Exit(EXIT_OK)


@log.command("pcrs")
@click.option("--state", required=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def log_pcrs(state: str, as_json: bool) -> None:
    """The PCR values the log replays to, per bank."""
    from imaguard.measure import records_from_binary, verify_records

    data, banks = _read_state_log(state)
    records, problem = records_from_binary(data, "sha1")
    if problem is not None:
        raise Error(f"{state}: {problem.message}")
    result = verify_records(records, banks=banks)
    if as_json:
        click.echo(
            json.dumps(
                {b: {str(i): v for i, v in sorted(p.items())} for b, p in result.pcrs.items()},
                indent=2,
            )
        )
    else:
        for b, p in result.pcrs.items():
            for i, v in sorted(p.items()):
                click.echo(f"{b}:{i} {v}")
    raise _Exit(EXIT_OK)


def _parse_pcr_specs(specs: tuple[str, ...]) -> dict[str, dict[int, bytes]]:
    out: dict[str, dict[int, bytes]] = {}
    for spec in specs:
        left, sep, hexval = spec.partition("=")
        bank, _, idx = left.partition(":")
        try:
            index = int(idx) if idx else 10
            value = bytes.fromhex(hexval)
            size = hashlib.new(bank).digest_size
        except ValueError as e:
            raise click.BadParameter(
                f"{spec!r}: use BANK=HEX or BANK:PCR=HEX ({e})", param_hint="--pcrs"
            ) from None
        if not sep or bank not in ("sha1", "sha256", "sha384", "sha512") or len(value) != size:
            raise click.BadParameter(
                f"{spec!r}: use BANK=HEX (sha1/sha256/sha384/sha512, full-length hex)",
                param_hint="--pcrs",
            )
        out.setdefault(bank, {})[index] = value
    return out


@log.command("verify")
@click.option("--state", default=None, type=click.Path(file_okay=False))
@click.option("--binary", "binary_in", default=None, type=click.Path(dir_okay=False))
@click.option("--ascii", "ascii_in", default=None, type=click.Path(dir_okay=False))
@click.option(
    "--bank",
    default="sha1",
    type=click.Choice(["sha1", "sha256", "sha384", "sha512"]),
    show_default=True,
    help="Bank of a --binary file's template-digest column.",
)
@click.option(
    "--pcrs", "pcr_specs", multiple=True, help="BANK=HEX (PCR 10) or BANK:PCR=HEX; repeatable."
)
@click.option("--tpm", default=None, help="Read the expected PCRs from this TPM (TCTI).")
@click.option(
    "--runtime-policy",
    default=None,
    type=click.Path(dir_okay=False),
    help="Keylime runtime policy JSON.",
)
@click.option(
    "--keyring",
    "keyrings",
    multiple=True,
    type=click.Path(),
    help="Certificates for ima-sig signatures.",
)
@click.option(
    "--prefix-ok", is_flag=True, help="Accept PCRs that match a prefix of the log (as Keylime)."
)
@click.option("--ignore-violations", is_flag=True, help="Do not count ToMToU/open-writers records.")
@click.option("--json", "as_json", is_flag=True)
def log_verify(
    state: str | None,
    binary_in: str | None,
    ascii_in: str | None,
    bank: str,
    pcr_specs: tuple[str, ...],
    tpm: str | None,
    runtime_policy: str | None,
    keyrings: tuple[str, ...],
    prefix_ok: bool,
    ignore_violations: bool,
    as_json: bool,
) -> None:
    """Replay a log and judge it: exit 0 valid, 1 invalid (every finding listed)."""
    from imaguard.formats.keylime import RuntimePolicy
    from imaguard.measure import records_from_ascii, records_from_binary, verify_records
    from imaguard.measure._tpm import TpmPcrs

    sources = [x for x in (state, binary_in, ascii_in) if x is not None]
    if len(sources) != 1:
        raise click.UsageError("give exactly one of --state DIR, --binary F, --ascii F")
    banks: tuple[str, ...] = ("sha1", "sha256")
    digest_bank = bank
    if state is not None:
        data, banks = _read_state_log(state)
        records, problem = records_from_binary(data, "sha1")
        digest_bank = "sha1"
    elif binary_in is not None:
        data = _read_file(binary_in)
        records, problem = records_from_binary(data, bank)
    else:
        data = _read_file(ascii_in or "")
        records, digest_bank, problem = records_from_ascii(data)
    expected = _parse_pcr_specs(pcr_specs)
    if tpm is not None:
        backend = TpmPcrs(tpm)
        try:
            used = sorted({r.pcr for r in records}) or [10]
            wanted = [b for b in banks if b in backend.banks()] or list(backend.banks())
            for b, vals in backend.read(used, wanted).items():
                expected.setdefault(b, {}).update(vals)
        finally:
            backend.close()
    policy = None
    if runtime_policy is not None:
        policy = RuntimePolicy.parse(_read_file(runtime_policy))
    ring = imaguard.Keyring.load(*keyrings) if keyrings else None
    result = verify_records(
        records,
        digest_bank=digest_bank,
        banks=banks,
        expected=expected or None,
        prefix_ok=prefix_ok,
        keyring=ring,
        runtime_policy=policy,
        ignore_violations=ignore_violations,
        parse_error=problem,
    )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        for f in result.findings:
            where = f"entry {f.index}: " if f.index is not None else ""
            click.echo(f"{f.code}: {where}{f.message}")
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
        verdict = "valid" if result.ok else f"INVALID ({len(result.findings)} findings)"
        click.echo(f"{result.entries} entries: {verdict}", err=True)
    raise _Exit(EXIT_OK if result.ok else EXIT_FAILED)


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise Error(f"{path}: cannot read: {e.strerror or e}") from e


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
@click.option(
    "-a",
    "--algo",
    "algorithm",
    type=_algorithm_choice(),
    default="sha256",
    show_default=True,
    help="Digest algorithm for --from-tree.",
)
@click.option(
    "--boot-aggregate",
    "boot_aggregates",
    multiple=True,
    help="Accepted boot_aggregate hex (--from-tree).",
)
def policy_runtime(
    from_log: str | None,
    from_tree: str | None,
    output: str,
    excludes: tuple[str, ...],
    algorithm: str,
    boot_aggregates: tuple[str, ...],
) -> None:
    """Generate a Keylime runtime policy from a log or a directory tree."""
    from imaguard.measure import (
        policy_from_records,
        policy_from_tree,
        records_from_ascii,
        records_from_binary,
    )

    if (from_log is None) == (from_tree is None):
        raise click.UsageError("give --from-log F or --from-tree DIR (one of them)")
    if from_log is not None:
        data = _read_file(from_log)
        if len(data) >= 4 and int.from_bytes(data[:4], "little") < 24:
            records, problem = records_from_binary(data, "sha1")
            log_hash = "sha1"
        else:
            records, log_hash, problem = records_from_ascii(data)
        if problem is not None:
            raise Error(f"{from_log}: {problem.message}")
        pol = policy_from_records(records, log_hash_alg=log_hash, excludes=excludes)
    else:
        pol = policy_from_tree(
            from_tree or "", algorithm=algorithm, excludes=excludes, boot_aggregates=boot_aggregates
        )
    _write_atomic(output, pol.serialize().encode())
    click.echo(f"{output}: {len(pol.digests)} paths", err=True)
    raise _Exit(EXIT_OK)


# -- the integrity core ---------------------------------------------------------------


@cli.command()
@click.option("--policy", "policies", multiple=True, help="[NAME=]FILE; repeat for a policy set.")
@click.option("--builtin", "builtin_names", default=None, help="Built-in names (tcb|appraise_tcb).")
@click.option(
    "--policy-mode", type=click.Choice(["kernel", "imaguard"]), default="kernel", show_default=True
)
@click.option(
    "--keyring",
    "keyrings",
    multiple=True,
    type=click.Path(),
    help="Trusted certificates (file or directory); repeatable.",
)
@click.option(
    "--state",
    default=None,
    type=click.Path(file_okay=False),
    help="Keeps the measurement log, the integrity cache and the audit trail.",
)
@click.option(
    "--hook", required=True, help="BPRM_CHECK, FILE_CHECK, MMAP_CHECK, ... or an app hook."
)
@click.option("--mask", default=None, help="MAY_READ, or several joined by '|'.")
@click.option("--as-uid", type=int, default=None, help="Decide as this uid (default: the caller).")
@click.option(
    "--mode",
    type=click.Choice(["enforce", "log", "fix", "off"]),
    default="enforce",
    show_default=True,
    help="As the kernel's ima_appraise=.",
)
@_store_options
@click.option(
    "--syslog",
    "use_syslog",
    is_flag=True,
    help="Also send the audit trail to syslog (journald reads it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of decisions.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def check(
    policies: tuple[str, ...],
    builtin_names: str | None,
    policy_mode: str,
    keyrings: tuple[str, ...],
    state: str | None,
    hook: str,
    mask: str | None,
    as_uid: int | None,
    mode: str,
    store: str | None,
    xattr_user: bool,
    use_syslog: bool,
    as_json: bool,
    paths: tuple[str, ...],
) -> None:
    """Decide for each file what the policies demand at HOOK; exit 0 all allowed, 1 any denied."""
    from imaguard.core import Guard, current_subject
    from imaguard.policy import Subject

    if not policies and builtin_names is None:
        raise click.UsageError("give --policy [NAME=]FILE (repeatable) or --builtin NAMES")
    named = dict(_policy_spec(p) for p in policies)
    st = _resolve_store(store, xattr_user)
    subject = None
    if as_uid is not None:
        me = current_subject()
        subject = Subject(uid=as_uid, euid=as_uid, gid=me.gid, egid=me.egid)
    with Guard.from_files(
        named,
        keyrings,
        state,
        cast("AppraiseMode", mode),
        cast("PolicyMode", policy_mode),
        builtin=builtin_names,
        store=st,
        audit=_audit_sink(state, use_syslog),
    ) as guard:
        decisions = [guard.process(p, hook=hook, mask=mask, subject=subject) for p in paths]
    if as_json:
        click.echo(json.dumps([d.to_dict() for d in decisions], indent=2))
    else:
        for d in decisions:
            verdict = "allowed" if d.allowed else "DENIED"
            parts = []
            for kind, a in d.actions.items():
                if a.required:
                    parts.append(f"{kind}={a.outcome}" + (f"({a.cause})" if a.cause else ""))
            click.echo(f"{d.path}: {verdict} " + (" ".join(parts) or "(no rule applies)"))
    raise _Exit(EXIT_OK if all(d.allowed for d in decisions) else EXIT_FAILED)


def _audit_sink(state: str | None, use_syslog: bool) -> Any:
    """The check command's audit trail: STATE/audit.jsonl and/or syslog (None: the default)."""
    if not use_syslog:
        return None
    from imaguard.core import AuditSink

    path = os.path.join(state, "audit.jsonl") if state is not None else None
    if state is not None:
        os.makedirs(state, exist_ok=True)
    return AuditSink(path, use_syslog=True)


@cli.command()
@_store_options
@click.option("--json", "as_json", is_flag=True)
@click.argument("path", type=click.Path())
def info(store: str | None, xattr_user: bool, as_json: bool, path: str) -> None:
    """Is PATH signed, by which key id and algorithm? (No verification, no hashing.)"""
    st = _resolve_store(store, xattr_user)
    i = imaguard.signature_info(path, store=st)
    if as_json:
        click.echo(json.dumps(i.to_dict(), indent=2))
    elif not i.present:
        click.echo(f"{path}: not signed (no value in {st.name})")
    elif i.error:
        click.echo(f"{path}: malformed value: {i.error}")
    elif i.signed:
        click.echo(f"{path}: signed, key id {i.key_id:08x}, {i.algorithm}, {i.type_name}")
    else:
        click.echo(f"{path}: not signed: a {i.algorithm} {i.type_name} value")
    raise _Exit(EXIT_OK)


@cli.group()
def evm() -> None:
    """EVM: security.evm HMACs and signatures over a file's security metadata."""


def _evm_attrs(xattr_user: bool) -> dict[str, str]:
    if xattr_user:
        return {"evm_attr": "user.evm", "ima_attr": "user.ima"}
    return {"evm_attr": "security.evm", "ima_attr": "security.ima"}


def _read_key_file(path: str) -> bytes:
    data = _read_file(path)
    return data.strip() if data.strip() else data


@evm.command("sign")
@click.option(
    "-k",
    "--key",
    "key_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Private key: write a signature.",
)
@click.option(
    "--hmac-key",
    default=None,
    type=click.Path(dir_okay=False),
    help="File holding the HMAC key: write an HMAC (0x02).",
)
@click.option(
    "--portable/--no-portable",
    default=True,
    show_default=True,
    help="Portable signature (0x05: no inode number, generation or fs UUID).",
)
@click.option("--uuid", "fs_uuid", default=None, help="Filesystem UUID (non-portable values).")
@click.option(
    "-a", "--algo", "algorithm", type=_algorithm_choice(), default="sha256", show_default=True
)
@click.option("-p", "--pass", "password", default=None)
@click.option("--xattr-user", is_flag=True, help="Use user.evm / user.ima.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def evm_sign(
    key_path: str | None,
    hmac_key: str | None,
    portable: bool,
    fs_uuid: str | None,
    algorithm: str,
    password: str | None,
    xattr_user: bool,
    paths: tuple[str, ...],
) -> None:
    """Write security.evm for each file."""
    from imaguard.appraise._evm import parse_uuid, sign_file_evm

    if (key_path is None) == (hmac_key is None):
        raise click.UsageError("give --key KEY (signature) or --hmac-key FILE (HMAC)")
    key = imaguard.load_private_key(key_path, password) if key_path else None
    secret = _read_key_file(hmac_key) if hmac_key else None
    code = EXIT_OK
    for path in paths:
        try:
            value = sign_file_evm(
                path,
                key=key,
                hmac_key=secret,
                portable=portable,
                fs_uuid=parse_uuid(fs_uuid),
                algorithm=algorithm,
                **_evm_attrs(xattr_user),
            )
            click.echo(f"{path}: {value.hex()}")
        except Error as e:
            _err(str(e))
            code = EXIT_ERROR
    raise _Exit(code)


@evm.command("verify")
@click.option(
    "--cert", "certs", multiple=True, type=click.Path(), help="Trusted certificate; repeatable."
)
@click.option(
    "--keyring", "keyrings", multiple=True, type=click.Path(), help="Directory of certificates."
)
@click.option("--hmac-key", default=None, type=click.Path(dir_okay=False))
@click.option("--uuid", "fs_uuid", default=None)
@click.option("--xattr-user", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def evm_verify_cmd(
    certs: tuple[str, ...],
    keyrings: tuple[str, ...],
    hmac_key: str | None,
    fs_uuid: str | None,
    xattr_user: bool,
    as_json: bool,
    paths: tuple[str, ...],
) -> None:
    """Verify security.evm for each file: exit 0 all pass, 1 any fails."""
    from imaguard.appraise._evm import evm_verify, parse_uuid
    from imaguard.appraise._files import open_target

    ring = imaguard.Keyring.load(*certs, *keyrings) if certs or keyrings else None
    secret = _read_key_file(hmac_key) if hmac_key else None
    attrs = _evm_attrs(xattr_user)
    out = []
    code = EXIT_OK
    for path in paths:
        try:
            with open_target(path) as ref:
                r = evm_verify(
                    ref, keyring=ring, hmac_key=secret, fs_uuid=parse_uuid(fs_uuid), **attrs
                )
        except Error as e:
            _err(str(e))
            code = EXIT_ERROR
            continue
        out.append({"path": path, **r.to_dict()})
        if not r.passed and code == EXIT_OK:
            code = EXIT_FAILED
        if not as_json:
            click.echo(
                f"{path}: {r.status}"
                + (f" ({r.cause})" if r.cause else "")
                + (f" - {r.detail}" if r.detail else "")
            )
    if as_json:
        click.echo(json.dumps(out, indent=2))
    raise _Exit(code)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: run the command and map every outcome to an exit code."""
    code = EXIT_OK
    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="imaguard",
            standalone_mode=False,
        )
    except _Exit as e:
        code = e.code
    except click.exceptions.Exit as e:
        code = e.exit_code
    except click.ClickException as e:
        e.show()
        code = EXIT_ERROR
    except click.exceptions.Abort:
        _err("aborted")
        code = EXIT_ERROR
    except Error as e:
        _err(str(e))
        code = EXIT_ERROR
    except KeyboardInterrupt:
        _err("interrupted")
        code = 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_ERROR
    sys.exit(code)
