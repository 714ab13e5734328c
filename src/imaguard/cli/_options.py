"""Option blocks shared by several verbs, each defined once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from imaguard.appraise import STORE_NAMES, SignatureStore, store_for
from imaguard.cli._common import pick_alias
from imaguard.formats import hashalgo

F = TypeVar("F", bound=Callable[..., Any])

BANKS = ("sha1", "sha256", "sha384", "sha512")
POLICY_MODES = ("kernel", "imaguard")


def algorithm_option(help: str | None = None) -> Callable[[F], F]:
    """``-a/--algo``: any digest algorithm this Python can compute."""
    return click.option(
        "-a",
        "--algo",
        "algorithm",
        type=click.Choice(hashalgo.computable_names(), case_sensitive=False),
        default="sha256",
        show_default=True,
        help=help,
    )


def store_options(f: F) -> F:
    """``--store`` and its shorthand ``--xattr-user``."""
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


def resolve_store(store: str | None, xattr_user: bool) -> SignatureStore:
    """The signature store the ``--store``/``--xattr-user`` pair names."""
    if xattr_user:
        if store not in (None, "user-xattr"):
            raise click.UsageError("--xattr-user conflicts with --store " + str(store))
        store = "user-xattr"
    return store_for(store)


def walk_options(f: F) -> F:
    """``-r``, ``-L`` and ``-j``: walking directories and the worker pool."""
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


def cert_option(f: F) -> F:
    """``--cert`` (repeatable)."""
    return click.option(
        "--cert",
        "certs",
        multiple=True,
        type=click.Path(),
        help="Trusted certificate (PEM or DER); repeatable.",
    )(f)


def keyring_option(
    help: str = "Directory (or file) of trusted certificates; repeatable.",
) -> Callable[[F], F]:
    """``--keyring`` (repeatable)."""
    return click.option("--keyring", "keyrings", multiple=True, type=click.Path(), help=help)


def load_keyring(certs: Sequence[str], keyrings: Sequence[str]) -> Any:
    """A :class:`imaguard.Keyring` of the certificates given; one is required."""
    import imaguard

    if not certs and not keyrings:
        raise click.UsageError("give --cert CERT or --keyring DIR (the keys to trust)")
    return imaguard.Keyring.load(*certs, *keyrings)


def bank_option(help: str = "Bank of the template-digest column.") -> Callable[[F], F]:
    """``--bank``: a PCR bank, sha1 by default (the kernel's template-digest column)."""
    return click.option(
        "--bank", default="sha1", type=click.Choice(BANKS), show_default=True, help=help
    )


def json_option(help: str = "Print JSON.") -> Callable[[F], F]:
    """``--json``."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def policy_options(f: F) -> F:
    """``--policy`` (repeatable) and ``--builtin``: a policy set."""
    f = click.option(
        "--builtin",
        "builtin_names",
        default=None,
        help="Built-in policies, as the kernel's ima_policy= (tcb|appraise_tcb).",
    )(f)
    return click.option(
        "--policy", "policies", multiple=True, help="[NAME=]FILE; repeat for a policy set."
    )(f)


def mask_option(f: F) -> F:
    """``--mask``."""
    return click.option("--mask", default=None, help="MAY_READ, or several joined by '|'.")(f)


def policy_mode_option(default: str, *, old_mode_flag: bool = False) -> Callable[[F], F]:
    """``--policy-mode kernel|imaguard``: the grammar policies are read in.

    With OLD_MODE_FLAG, ``--mode`` is accepted too, hidden: the ``policy`` verbs' old
    spelling (``--mode`` now means the enforcement mode only, in ``check``).
    """

    def decorate(f: F) -> F:
        if old_mode_flag:
            f = click.option(
                "--mode", "old_mode", type=click.Choice(POLICY_MODES), default=None, hidden=True
            )(f)
        return click.option(
            "--policy-mode",
            type=click.Choice(POLICY_MODES),
            default=None,
            help="kernel: exactly the kernel's grammar; imaguard: plus application hooks, "
            f"path=, cache=no (a superset). [default: {default}]",
        )(f)

    return decorate


def hook_option(*, old_func_flag: bool = False) -> Callable[[F], F]:
    """``--hook NAME``: the hook a request comes from (kernel func= name or an app hook)."""

    def decorate(f: F) -> F:
        if old_func_flag:
            f = click.option("--func", "old_func", default=None, hidden=True)(f)
        return click.option(
            "--hook",
            default=None,
            help="BPRM_CHECK, FILE_CHECK, MMAP_CHECK, ... or an application hook (required).",
        )(f)

    return decorate


def check_hook(hook: str | None, policy_mode: str, old_func: str | None = None) -> str:
    """The canonical hook name given by ``--hook`` (or its old spelling ``--func``)."""
    from imaguard.errors import UsageError
    from imaguard.policy import hook_name

    given = pick_alias(hook, old_func, "--hook", "--func")
    if given is None:
        raise click.UsageError("give --hook NAME (BPRM_CHECK, FILE_CHECK, ...)")
    try:
        return hook_name(str(given), policy_mode)  # type: ignore[arg-type]
    except UsageError as e:
        raise click.BadParameter(str(e), param_hint="--hook") from None


def signing_key_options(
    *, required: bool = True, help: str = "Private key: a PEM or DER file, or a pkcs11: URI."
) -> Callable[[F], F]:
    """``-k/--key KEY`` (a key file or an RFC 7512 ``pkcs11:`` URI) and ``--pkcs11-module``."""

    def decorate(f: F) -> F:
        f = click.option(
            "--pkcs11-module",
            default=None,
            metavar="PATH",
            help="PKCS#11 module for a pkcs11: key [default: $IMAGUARD_PKCS11_MODULE, else "
            "p11-kit's proxy].",
        )(f)
        return click.option(
            "-k",
            "--key",
            "key_path",
            required=required,
            default=None,
            metavar="KEY",
            help=help,
        )(f)

    return decorate


def _prompt_pin(token: str) -> str:
    return str(click.prompt(f"PIN for token {token}", hide_input=True, err=True))


def load_signing_key(
    key: str, password: str | None, pkcs11_module: str | None, cert: str | None = None
) -> Any:
    """The :class:`imaguard.PrivateKey` ``--key`` names: a file, or a key on a token.

    A token's PIN comes from the URI's pin-value, ``IMAGUARD_PKCS11_PIN``, or a prompt
    when standard input is a terminal.
    """
    import sys

    from imaguard.crypto import load_signing_key as load

    prompt = _prompt_pin if sys.stdin is not None and sys.stdin.isatty() else None
    return load(key, password, pkcs11_module=pkcs11_module, pin_prompt=prompt, certificate=cert)
