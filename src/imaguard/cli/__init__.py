"""The ``imaguard`` command line (private: use the library API from Python).

Layout: :mod:`._root` (the root group, logging, the exit funnel and the lazy verb table),
:mod:`._common` and :mod:`._options` (what verbs share), :mod:`._runner` (the batch runner),
and one module per verb group, imported only when that verb runs.
"""

from imaguard.cli._root import cli, main

__all__ = ["cli", "main"]
