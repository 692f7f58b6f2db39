"""cffi build script (API mode) for tagger.native._native.

Run by `pip install` through setup.py's cffi_modules, never at import time.
The structs Python sees come from bpf/tagger.h itself (preprocessed), and its
integer #defines become lib constants read from C, so nothing is retyped.
"""

import os
import re
import subprocess

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BPF = os.path.join(ROOT, "bpf")
SHARED_HEADER = os.path.join(BPF, "tagger.h")


def _version():
    text = open(os.path.join(ROOT, "tagger", "__init__.py")).read()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def _ensure_skeletons():
    # A plain `pip install .` on a fresh checkout has no skeletons yet.
    # (The benchmarks' empty programs are not built in: benchmarks/baseline.)
    if not os.path.exists(os.path.join(BPF, "tagger.skel.h")):
        subprocess.run(["make", "-C", ROOT, "bpf"], check=True)


def _shared_cdef():
    """tagger.h as cffi's cdef: macros expanded by the C preprocessor, plus
    each integer #define declared so cffi reads its value from C."""
    pre = subprocess.run(["cc", "-E", "-P", "-D__TAGGER_CDEF", "-include", "stdint.h", SHARED_HEADER],
                         check=True, capture_output=True, text=True).stdout
    # Keep only what follows the include of stdint.h: the header's own declarations.
    own = pre[pre.index("enum tg_cause"):]
    defines = re.findall(r"^#define\s+(TG_[A-Z0-9_]+)\s+\d+", open(SHARED_HEADER).read(), re.M)
    return "\n".join(f"#define {name} ..." for name in defines) + "\n" + own


ffibuilder = FFI()
ffibuilder.cdef("""
typedef uint8_t __u8; typedef uint16_t __u16; typedef uint32_t __u32; typedef uint64_t __u64;
""" + _shared_cdef() + open(os.path.join(HERE, "native.h")).read())

_ensure_skeletons()
ffibuilder.set_source(
    "tagger.native._native",
    '#include <stdint.h>\n#include <linux/types.h>\n#include "tagger.h"\n#include "native.h"\n',
    sources=[os.path.relpath(os.path.join(HERE, "native.c"), ROOT)],
    include_dirs=[BPF, HERE],
    libraries=["bpf", "elf", "z"],
    define_macros=[("TG_VERSION", f'"{_version()}"')],
    extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
