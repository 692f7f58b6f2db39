"""cffi build script (API mode) for benchmarks.baseline._empty: the empty BPF
programs the benchmarks divide by, kept out of tagger's production extension.

`make bench-native` runs it (and `make bench` first); EmptyPrograms also
builds it on first use when it is missing.  Needs bpf/empty.skel.h (`make
bpf/empty.skel.h`) and what tagger's own extension needs (libbpf, libelf).
"""

import os
import subprocess

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BPF = os.path.join(ROOT, "bpf")
NATIVE = os.path.join(ROOT, "tagger", "native")

ffibuilder = FFI()
ffibuilder.cdef("""
typedef uint64_t __u64;
struct tg_prog_stat { char name[64]; uint64_t run_time_ns; uint64_t run_cnt; ...; };
""" + open(os.path.join(HERE, "empty.h")).read())
ffibuilder.set_source(
    "benchmarks.baseline._empty",
    '#include "empty.c"\n',
    include_dirs=[HERE, BPF, NATIVE],
    libraries=["bpf", "elf", "z"],
    extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
)


def build():
    """Make the skeleton if missing, then compile the extension beside this file."""
    if not os.path.exists(os.path.join(BPF, "empty.skel.h")):
        subprocess.run(["make", "-C", ROOT, "bpf/empty.skel.h"], check=True)
    ffibuilder.compile(tmpdir=os.path.join(ROOT, "build", "bench"), target=None, verbose=False)
    # compile() writes to tmpdir/benchmarks/baseline/; move it here atomically
    # (a rename: a process that has the old one loaded keeps its copy).
    built = os.path.join(ROOT, "build", "bench", "benchmarks", "baseline")
    for name in os.listdir(built):
        if name.startswith("_empty") and name.endswith(".so"):
            os.replace(os.path.join(built, name), os.path.join(HERE, name))


if __name__ == "__main__":
    build()
