"""The optional C extension (imaguard._native); everything else is in pyproject.toml.

It needs a C compiler and OpenSSL's headers (Debian: gcc, libssl-dev; scripts/install-deps.sh
installs both). Without them the build of the extension is skipped with a warning and
imaguard runs its pure-Python paths, which give the same answers more slowly.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "imaguard._native",
            ["src/imaguard/_native.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            optional=True,
        )
    ]
)
