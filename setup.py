"""Build hook: compiles the native module when a C compiler is present (see native/build_native.py).

When cffi or the compiler is missing, or the build fails, the install still succeeds: one warning is printed
and gateway.codec / gateway.router run on their pure-Python twins.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
GENERATED_SOURCE = "gateway/_native.c"
NATIVE_SOURCES = ["native/codec.c", "native/router.c"]
COMPILE_ARGS = ["-O2", "-Wall", "-Wextra", "-ffp-contract=off", "-fno-strict-aliasing"]


class OptionalBuildExt(build_ext):
    """build_ext for the optional native module: failures become a single warning."""

    warned = False

    def run(self) -> None:
        try:
            sys.path.insert(0, str(ROOT / "native"))
            try:
                from build_native import make_builder
            finally:
                sys.path.pop(0)
            make_builder(relative_to=ROOT).emit_c_code(str(ROOT / GENERATED_SOURCE))
            super().run()
        except Exception as exc:  # any failure means "no native module", never a failed install
            self.warn_once(exc)

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self.warn_once(exc)

    @classmethod
    def warn_once(cls, exc: BaseException) -> None:
        if cls.warned:
            return
        cls.warned = True
        reason = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
        print(
            f"WARNING: fieldgate: the native module gateway._native was not built ({reason[0]}); "
            "the pure-Python codec and router will be used",
            file=sys.stderr,
        )


setup(
    ext_modules=[
        Extension(
            "gateway._native",
            sources=[GENERATED_SOURCE, *NATIVE_SOURCES],
            include_dirs=["native"],
            extra_compile_args=COMPILE_ARGS,
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
