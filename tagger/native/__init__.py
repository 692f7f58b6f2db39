"""The C hot path (cffi, API mode): load/attach BPF, read counters, drain ring buffers.

``ffi`` and ``lib`` come from the compiled module ``tagger.native._native``
(built by ``pip install``); :func:`check` turns its negative-errno returns
into exceptions.  Importing this package never compiles anything.
"""

from __future__ import annotations

import numpy as np

from tagger import __version__
from tagger.errors import BpfError, BpfUnavailable

try:
    from tagger.native._native import ffi, lib
except ImportError as err:          # built with TAGGER_NATIVE=0, or not built
    ffi = lib = None
    IMPORT_ERROR: Exception | None = err
else:
    IMPORT_ERROR = None
    _built = ffi.string(lib.tg_version()).decode()
    if _built != __version__:
        raise ImportError(f"tagger.native was built for tagger {_built}, this is {__version__}: "
                          "rebuild with `make install`")


def require():
    """Raise BpfUnavailable when the native module is missing."""
    if lib is None:
        raise BpfUnavailable(0, f"native module not built ({IMPORT_ERROR}); run `make install`")


def check(ret: int, what: str) -> int:
    """Return ``ret`` if it is a count; raise BpfError for a negative errno."""
    if ret < 0:
        raise BpfError(-ret, what)
    return ret


_NP_PRIMITIVES = {
    "uint8_t": np.uint8, "uint16_t": np.uint16, "uint32_t": np.uint32, "uint64_t": np.uint64,
    "__u8": np.uint8, "__u16": np.uint16, "__u32": np.uint32, "__u64": np.uint64,
    "int32_t": np.int32, "int64_t": np.int64, "int": np.int32, "char": "S1",
}


def dtype_of(ctype) -> np.dtype:
    """A numpy dtype with the exact layout of a cffi struct type, so numpy
    arrays can be handed to C (``ffi.from_buffer``) without retyping fields."""
    if isinstance(ctype, str):
        ctype = ffi.typeof(ctype)
    names, formats, offsets = [], [], []
    for name, field in ctype.fields:
        names.append(name)
        offsets.append(field.offset)
        formats.append(_field_dtype(field.type))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": ffi.sizeof(ctype)})


def _field_dtype(t):
    if t.kind == "primitive":
        return _NP_PRIMITIVES[t.cname]
    if t.kind == "array":
        if t.item.cname == "char":
            return f"S{t.length}"
        return (_field_dtype(t.item), (t.length,))
    if t.kind == "struct":
        return dtype_of(t)
    raise TypeError(f"no numpy dtype for {t.cname}")
