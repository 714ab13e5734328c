"""Hook names: which ones a grammar knows, and their canonical spelling."""

from __future__ import annotations

import re

from imaguard.errors import UsageError
from imaguard.policy._ast import FUNC_ALIASES, KERNEL_FUNCS
from imaguard.policy._parser import Mode

_APP_HOOK = re.compile(r"[A-Z][A-Z0-9_]*\Z")


def hook_name(name: str, mode: Mode = "imaguard") -> str:
    """The canonical name of hook NAME (``PATH_CHECK`` → ``FILE_CHECK``).

    Kernel mode knows the kernel's ``func=`` values (security/integrity/ima/ima_policy.c);
    imaguard mode also accepts an application hook: any upper-case name. Anything else is a
    :class:`~imaguard.errors.UsageError` naming the hook.
    """
    hook = FUNC_ALIASES.get(name, name)
    if hook in KERNEL_FUNCS:
        return hook
    if _APP_HOOK.match(hook):
        if mode == "imaguard":
            return hook
        raise UsageError(f"unknown hook {name!r} (application hooks need imaguard policy mode)")
    raise UsageError(f"unknown hook {name!r}: use a kernel func= name or an upper-case name")
