"""The cgroups tagger never touches, whatever a rule or policy asks."""

from __future__ import annotations

from tagger.cgroups import normalize
from tagger.kernelfs import HOST, KernelFS


def own_cgroups(fs: KernelFS = HOST) -> set[str]:
    """tagger's own cgroups in every hierarchy (/proc/self/cgroup), and their ancestors."""
    out = set()
    text = fs.read_optional("/proc/self/cgroup") or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = normalize(parts[2].strip() or "/")
        while True:
            out.add(path)
            if path == "/":
                break
            path = path.rsplit("/", 1)[0] or "/"
    return out


class Protection:
    """The root, ``/init.scope``, tagger's own cgroups and their ancestors:
    throttling an ancestor throttles tagger, which then cannot undo it."""

    ALWAYS = ("/", "/init.scope")

    def __init__(self, fs: KernelFS = HOST):
        self.exact = set(self.ALWAYS) | own_cgroups(fs)

    def protects(self, path: str) -> bool:
        return path in self.exact
