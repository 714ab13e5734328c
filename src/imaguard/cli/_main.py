"""The ``imaguard`` command: a thin layer over the public API.

Exit codes, decided in one place (:func:`main`):

* 0 - everything asked for succeeded (skipped non-regular files do not count against it);
* 1 - some file failed verification;
* 2 - a usage or operational error (bad option, unreadable key, a file that could not
  be processed).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import click

import imaguard
from imaguard.appraise import batch
from imaguard.appraise.batch import Outcome, Result
from imaguard.appraise.calls import Require
from imaguard.appraise.store import STORE_NAMES, SidecarStore, SignatureStore, store_for
from imaguard.appraise.verdict import Cause, Status, Verdict
from imaguard.crypto.keygen import KEY_TYPES
from imaguard.errors import Error
from imaguard.formats import hashalgo

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
) -> None:
    """Sign files: write a v2 signature (type 0x03) of their content."""
    st = _resolve_store(store, xattr_user)
    key = imaguard.load_private_key(key_path, password)
    if cert_path is not None:
        key = key.with_certificate(imaguard.load_certificates(cert_path)[0])
    algo = hashalgo.by_name(algorithm)
    verbose = ctx.obj["verbose"] > 0

    def op(path: str) -> Result:
        value = imaguard.sign_file(path, key, algo, st)
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
    from imaguard.policy.ast import FUNC_ALIASES

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
