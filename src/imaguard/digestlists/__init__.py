"""Signed digest lists: make them (from a directory, dpkg's database, .deb files or a
Keylime runtime policy), sign them, verify them, and the trust database they load into.

A digest list (:class:`DigestList`, the format in :mod:`imaguard.formats.digestlist`)
vouches for file contents by digest: a file whose digest a loaded, verified list holds is
trusted without a signature of its own. The makers hash file contents themselves; they
trust no digest a package manager recorded (dpkg's MD5 sums are never read)::

    from imaguard import digestlists, load_private_key

    dl = digestlists.make_from_dpkg(["coreutils"])
    signed = digestlists.sign_list(dl, load_private_key("key.pem"))
    dl, verdict = digestlists.verify_list(signed, keyring)

Every maker accepts ``report=MakeReport()`` to learn what it hashed and passed over.
"""

from imaguard.appraise._trustdb import ListInfo, TrustDB, verify_list
from imaguard.digestlists._common import MakeReport
from imaguard.digestlists._deb import make_from_deb
from imaguard.digestlists._dpkg import make_from_dpkg
from imaguard.digestlists._keylime import make_from_runtime_policy
from imaguard.digestlists._sign import list_name, read_list, sign_list
from imaguard.digestlists._tree import make_from_tree
from imaguard.formats.digestlist import DigestList

__all__ = [
    "DigestList",
    "ListInfo",
    "MakeReport",
    "TrustDB",
    "list_name",
    "make_from_deb",
    "make_from_dpkg",
    "make_from_runtime_policy",
    "make_from_tree",
    "read_list",
    "sign_list",
    "verify_list",
]
