"""cffi build script (API mode) for `gateway._native`: the register codec and the MQTT topic router in C.

setup.py emits the C source with `emit_c_code` and compiles it as an optional extension; running this file
directly builds the module in place for development.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cffi import FFI

NATIVE_DIR = Path(__file__).resolve().parent
SOURCES = ["codec.c", "router.c"]
HEADER = NATIVE_DIR / "fieldgate_native.h"
COMPILE_ARGS = ["-O2", "-Wall", "-Wextra", "-ffp-contract=off", "-fno-strict-aliasing"]


def cdef_text() -> str:
    """The part of the header between the CDEF markers: declarations only, which is what cffi parses."""
    text = HEADER.read_text()
    return text.split("/* CDEF-BEGIN */", 1)[1].split("/* CDEF-END */", 1)[0]


def make_builder(
    *,
    relative_to: Path | None = None,
    extra_compile_args: list[str] | None = None,
    extra_link_args: list[str] | None = None,
) -> FFI:
    """A builder for `gateway._native`; paths are made relative to `relative_to` when given (setup.py)."""
    base = NATIVE_DIR if relative_to is None else NATIVE_DIR.relative_to(relative_to)
    builder = FFI()
    builder.cdef(cdef_text())
    builder.set_source(
        "gateway._native",
        '#include "fieldgate_native.h"',
        sources=[str(base / name) for name in SOURCES],
        include_dirs=[str(base)],
        extra_compile_args=COMPILE_ARGS + (extra_compile_args or []),
        extra_link_args=extra_link_args or [],
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    root = NATIVE_DIR.parent
    os.chdir(root)  # relative sources keep the object files under build/
    builder = make_builder(relative_to=root)
    sys.exit(0 if builder.compile(tmpdir=str(root), verbose=True) else 1)
