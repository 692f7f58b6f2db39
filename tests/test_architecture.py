"""The architecture's bars, checked over the source (no module is imported):

* imports point down the rooms' ranks (README's layout, docs/interfaces.md),
  rules and telemetry never import each other, no cycle between rooms or
  between modules at import time, tagger/__init__ imports no room;
* only tagger/kernelfs.py and tagger/native/ open kernel files (/proc, /sys);
* the CPU count comes from KernelFS.online_cpus();
* no class over 300 lines (the expression compiler excepted), the daemon
  module at most 250;
* no scaffolding left from moving modules (SHIM-14 marks, old paths).

Each failure lists the offenders by room.  The side-door check follows kernel
paths through names, f-strings, KernelFS.path/root, Path arithmetic, self
attributes and calls within a module; tests at the end show what it catches.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

# --- the rooms, lowest first (docs/interfaces.md) -----------------------------
RANKS = {
    "errors": 0, "units": 0, "clock": 0, "names": 0, "kernelfs": 0, "knobs": 0,
    "snapshot": 0, "cgroupglob": 0, "slots": 0, "sdnotify": 0, "native": 0,
    "cgroups": 1, "kubelet": 1, "procstat": 1, "taskstats": 1, "blockdev": 1, "tags": 1,
    "rules": 2, "telemetry": 2,
    "actions": 3,
    "policies": 4,
    "publish": 5,
    "agent": 6, "doctor": 6, "client": 6,
    "cli": 7,
}
#: Modules that move in issue 14, counted in the room they move to meanwhile.
OLD_HOMES = {"fallback": "telemetry", "cgroupfs": "telemetry", "api": "publish",
             "trace": "publish", "daemon": "agent"}
#: Old paths that must be gone at the end (a SHIM-14 may stand there meanwhile).
OLD_MODULES = ["tagger/api.py", "tagger/daemon.py", "tagger/trace.py",
               "tagger/telemetry.py", "tagger/fallback.py", "tagger/cgroupfs.py",
               "tagger/policies/spec.py", "tagger/actions/spec.py"]
#: Pairs the ranks alone allow but the contracts forbid: rules and telemetry
#: never import each other; the policies read the Snapshot, not the collectors.
FORBIDDEN = {("rules", "telemetry"), ("telemetry", "rules"), ("policies", "telemetry")}
#: Where kernel files may be opened.
DOORS = ("tagger/kernelfs.py", "tagger/native/")
MAX_CLASS_LINES = 300
CLASS_EXEMPT = ("tagger/rules/expr.py",)
MAX_DAEMON_LINES = 250
DAEMON_MODULE = "tagger/agent/daemon.py"
SHIM_MARK = "# SHIM-14"
SHIM_DIRS = ("tagger", "cli", "tests", "benchmarks", "tools")


# --- the source ---------------------------------------------------------------
class Source:
    """The modules under tagger/ and cli/ (cli is installed as tagger.cli)."""

    def __init__(self, repo):
        self.repo = Path(repo)
        self.files: dict[str, Path] = {}       # module name -> file
        self.rel: dict[str, str] = {}          # module name -> repo-relative path
        for top, prefix in (("tagger", "tagger"), ("cli", "tagger.cli")):
            for path in sorted((self.repo / top).rglob("*.py")):
                parts = path.relative_to(self.repo / top).with_suffix("").parts
                if any(p.startswith(".") or p == "__pycache__" for p in parts):
                    continue
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                name = ".".join((prefix, *parts))
                self.files[name] = path
                self.rel[name] = str(path.relative_to(self.repo))
        self._trees: dict[str, ast.Module] = {}

    def tree(self, name) -> ast.Module:
        if name not in self._trees:
            self._trees[name] = ast.parse(self.files[name].read_text(), str(self.files[name]))
        return self._trees[name]

    def is_package(self, name) -> bool:
        return self.files[name].name == "__init__.py"


def room_of(name: str) -> str | None:
    """The room of module ``name``; None outside tagger; "tagger" for the package itself."""
    parts = name.split(".")
    if parts[0] != "tagger":
        return None
    if len(parts) == 1:
        return "tagger"
    head = parts[1]
    if head in RANKS:
        return head
    if head in OLD_HOMES:
        return OLD_HOMES[head]
    return "unassigned:" + head


def rank_of(room: str) -> int | None:
    return RANKS.get(room)


# --- (a) the import graph -----------------------------------------------------
def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(src: Source, name: str):
    """(target module, line, top_level) for every import in module ``name``."""
    package = name if src.is_package(name) else name.rpartition(".")[0]
    out = []

    def resolve(base: str, alias: str) -> str:
        sub = f"{base}.{alias}" if base else alias
        return sub if sub in src.files else base

    def visit(node, top_level):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), top_level)
            elif isinstance(child, ast.Import):
                for a in child.names:
                    target = a.name
                    while target not in src.files and "." in target:
                        target = target.rpartition(".")[0]
                    out.append((target if target in src.files else a.name, child.lineno, top_level))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base_parts = package.split(".")
                    if child.level > 1:
                        base_parts = base_parts[: len(base_parts) - (child.level - 1)]
                    base = ".".join(base_parts)
                    if child.module:
                        base = f"{base}.{child.module}"
                else:
                    base = child.module or ""
                for a in child.names:
                    out.append((resolve(base, a.name), child.lineno, top_level))
            else:
                visit(child, top_level)

    visit(src.tree(name), True)
    return out


def _sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]; counter[0] += 1
                    stack.append(nxt); on.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def check_imports(src: Source) -> dict[str, list[str]]:
    """Upward imports, forbidden pairs, modules in no room, room cycles, module cycles."""
    found = defaultdict(list)
    room_edges: dict[str, set[str]] = defaultdict(set)
    room_witness: dict[tuple, str] = {}
    module_graph: dict[str, set[str]] = defaultdict(set)
    for name in sorted(src.files):
        here = room_of(name)
        rel = src.rel[name]
        if here.startswith("unassigned:"):
            found[here].append(f"{rel}: module in no room of contracts.md")
        for target, line, top_level in imports(src, name):
            there = room_of(target)
            if there is None:
                continue
            if top_level and target != name:
                module_graph[name].add(target)
            if name == "tagger":
                if target != "tagger":
                    found["tagger"].append(f"{rel}:{line}: tagger/__init__ imports {target} (only __version__ may live there)")
                continue
            if there == here or there == "tagger":
                continue
            room_edges[here].add(there)
            room_witness.setdefault((here, there), f"{rel}:{line} imports {target}")
            lo, hi = rank_of(here), rank_of(there)
            if (here, there) in FORBIDDEN:
                found[here].append(f"{rel}:{line}: {here} imports {target} (forbidden by the contracts: {here} -> {there})")
            elif lo is not None and hi is not None and hi > lo:
                found[here].append(f"{rel}:{line}: upward import of {target} ({here} rank {lo} -> {there} rank {hi})")
    for room in found:
        found[room] = list(dict.fromkeys(found[room]))
    for comp in _sccs(room_edges):
        edges = [room_witness[(a, b)] for a in comp for b in comp if (a, b) in room_witness]
        found[comp[0]].append(f"room cycle {' <-> '.join(comp)}: " + "; ".join(edges))
    for comp in _sccs(module_graph):
        found[room_of(comp[0])].append("module import cycle (top-level imports): " + " <-> ".join(comp))
    return found


# --- (b) side doors to the kernel ------------------------------------------------
KERNEL_PREFIX = re.compile(r"^/(proc|sys)(/|$)")
#: Calls that open, list or stat a path given as the first argument.
PATH_CALLS = {
    "open", "io.open", "builtins.open", "codecs.open", "os.open", "os.scandir", "os.listdir",
    "os.walk", "os.fwalk", "os.stat", "os.lstat", "os.readlink", "os.access", "os.rmdir",
    "os.mkdir", "os.makedirs", "os.remove", "os.unlink", "os.rename", "os.chmod", "os.chown",
    "os.path.exists", "os.path.lexists", "os.path.isdir", "os.path.isfile", "os.path.islink",
    "os.path.getsize", "os.path.getmtime", "os.path.realpath", "glob.glob", "glob.iglob",
    "shutil.rmtree", "shutil.copy", "shutil.copyfile", "shutil.copytree", "shutil.move",
    "pathlib.Path.read_text",
}
#: pathlib methods that touch the file a (kernel) Path names.
PATH_METHODS = {
    "open", "read_text", "read_bytes", "write_text", "write_bytes", "iterdir", "glob", "rglob",
    "exists", "is_dir", "is_file", "is_symlink", "stat", "lstat", "mkdir", "rmdir", "unlink",
    "touch", "readlink", "owner", "group", "chmod", "samefile", "resolve", "walk",
}
#: Calls that build a path from their arguments (a kernel argument gives a kernel path).
PATH_BUILDERS = {"Path", "PurePath", "PosixPath", "pathlib.Path", "os.path.join",
                 "os.fspath", "str", "os.path.dirname", "os.path.abspath",
                 "os.path.normpath", "posixpath.join"}
FS_RECEIVER = re.compile(r"(^|[._])(fs|kfs|kernelfs|HOST)$")


def _dotted(node) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def kernel_constants(src: Source) -> dict[str, set[str]]:
    """Module-level names bound to a kernel path, per module (for imports of them)."""
    out = {}
    for name in src.files:
        consts = set()
        for stmt in src.tree(name).body:
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                if _Taint(set(), set()).kernel(stmt.value):
                    consts |= {t.id for t in targets if isinstance(t, ast.Name)}
        out[name] = consts
    return out


class _Taint:
    """Which expressions name a kernel path, within one scope."""

    def __init__(self, names: set[str], attrs: set[str], aliases: dict | None = None):
        self.names = names        # local and module names bound to kernel paths
        self.attrs = attrs        # "self.x" attributes bound to kernel paths
        self.aliases = aliases or {}

    def call_name(self, func) -> str | None:
        d = _dotted(func)
        if d is None:
            return None
        head, _, rest = d.partition(".")
        head = self.aliases.get(head, head)
        return f"{head}.{rest}" if rest else head

    def kernel(self, e) -> bool:
        if e is None:
            return False
        if isinstance(e, ast.Constant):
            return isinstance(e.value, str) and bool(KERNEL_PREFIX.match(e.value))
        if isinstance(e, ast.JoinedStr):
            return bool(e.values) and self.kernel(e.values[0])
        if isinstance(e, ast.FormattedValue):
            return self.kernel(e.value)
        if isinstance(e, ast.Name):
            return e.id in self.names
        if isinstance(e, ast.Attribute):
            d = _dotted(e)
            if d in self.attrs:
                return True
            if e.attr == "root" and FS_RECEIVER.search(_dotted(e.value) or ""):
                return True          # KernelFS.root: the tree the kernel files live in
            return self.kernel(e.value)
        if isinstance(e, ast.BinOp):
            return self.kernel(e.left) or self.kernel(e.right)
        if isinstance(e, ast.Subscript):
            return self.kernel(e.value)
        if isinstance(e, ast.IfExp):
            return self.kernel(e.body) or self.kernel(e.orelse)
        if isinstance(e, ast.BoolOp):
            return any(self.kernel(v) for v in e.values)
        if isinstance(e, (ast.Tuple, ast.List, ast.Set)):
            return any(self.kernel(v) for v in e.elts)
        if isinstance(e, ast.Starred):
            return self.kernel(e.value)
        if isinstance(e, ast.Call):
            func = e.func
            if isinstance(func, ast.Attribute) and func.attr == "path" and \
                    FS_RECEIVER.search(_dotted(func.value) or ""):
                return True          # KernelFS.path(p): the real file behind a kernel path
            if self.call_name(func) in PATH_BUILDERS:
                return any(self.kernel(a) for a in e.args)
            if isinstance(func, ast.Attribute) and func.attr not in PATH_METHODS:
                return self.kernel(func.value)   # p.joinpath(...), p.parent, "...".format()
        return False

    def bind(self, target, value_is_kernel: bool):
        if isinstance(target, ast.Name):
            (self.names.add if value_is_kernel else self.names.discard)(target.id)
        elif isinstance(target, ast.Attribute) and value_is_kernel:
            d = _dotted(target)
            if d:
                self.attrs.add(d)
        elif isinstance(target, (ast.Tuple, ast.List)) and value_is_kernel:
            for t in target.elts:
                self.bind(t, True)


def _kernel_params(fn, taint: "_Taint") -> set[str]:
    """Parameters of ``fn`` whose default is a kernel path."""
    args = fn.args
    params = args.posonlyargs + args.args
    pairs = list(zip(params[len(params) - len(args.defaults):], args.defaults)) + \
        list(zip(args.kwonlyargs, args.kw_defaults))
    return {p.arg for p, d in pairs if d is not None and taint.kernel(d)}


def _scope_nodes(body):
    """Nodes of a scope in order, not descending into nested functions and classes."""
    todo = list(body)
    while todo:
        node = todo.pop(0)
        yield node
        kids = [c for c in ast.iter_child_nodes(node)
                if not isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))]
        todo[0:0] = kids


def side_doors(src: Source, name: str, consts: dict[str, set[str]]) -> list[str]:
    """Kernel paths opened in module ``name``; a kernel path handed to a function
    of the same module taints that parameter (to a fixed point)."""
    tainted_params: set[tuple[str, object]] = set()
    while True:
        out, calls = _side_doors(src, name, consts, tainted_params)
        if calls <= tainted_params:
            return out
        tainted_params |= calls


def _side_doors(src: Source, name: str, consts, tainted_params):
    tree = src.tree(name)
    calls = set()           # (function name, parameter index or keyword) given a kernel path
    aliases = {}            # local name -> dotted module or function it stands for
    imported = set()        # names imported from another module that bind a kernel path
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                local = a.asname or a.name
                if node.module in ("os", "os.path", "io", "glob", "shutil", "pathlib", "builtins", "codecs"):
                    aliases[local] = f"{node.module}.{a.name}"
                for mod, names in consts.items():
                    if mod.endswith(node.module.lstrip(".")) and a.name in names:
                        imported.add(local)
    allconsts = set().union(*consts.values()) if consts else set()
    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    out = []

    def scan(body, taint: _Taint):
        # Two passes so a name bound later in a loop taints uses before it.
        for pass_ in (0, 1):
            for node in _scope_nodes(body):
                if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value is not None:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    k = taint.kernel(node.value) or (isinstance(node, ast.AugAssign) and taint.kernel(node.target))
                    for t in targets:
                        taint.bind(t, k)
                elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                    if taint.kernel(node.iter):
                        taint.bind(node.target, True)
                elif isinstance(node, ast.NamedExpr):
                    taint.bind(node.target, taint.kernel(node.value))
                elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                    taint.bind(node.optional_vars, taint.kernel(node.context_expr))
                elif isinstance(node, ast.Attribute) and node.attr in allconsts and \
                        isinstance(node.value, ast.Name):
                    taint.attrs.add(_dotted(node))     # cgroups.CGROUP_ROOT and the like
                if pass_ == 0 or not isinstance(node, ast.Call):
                    continue
                callee = taint.call_name(node.func)
                local = None
                if isinstance(node.func, ast.Name):
                    local, offset = node.func.id, 0
                elif isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) \
                        and node.func.value.id in ("self", "cls"):
                    local, offset = node.func.attr, 1
                if local is not None and local in defined:
                    for i, a in enumerate(node.args):
                        if taint.kernel(a):
                            calls.add((local, i + offset))
                    for kw in node.keywords:
                        if kw.arg and taint.kernel(kw.value):
                            calls.add((local, kw.arg))
                first = node.args[0] if node.args else None
                if first is None:
                    for kw in node.keywords:
                        if kw.arg in ("file", "path", "top", "pathname", "name"):
                            first = kw.value
                if callee in PATH_CALLS and taint.kernel(first):
                    out.append(f"{src.rel[name]}:{node.lineno}: {callee}() of a kernel path: "
                               f"{ast.unparse(node)[:100]}")
                elif isinstance(node.func, ast.Attribute) and node.func.attr in PATH_METHODS \
                        and taint.kernel(node.func.value) \
                        and not FS_RECEIVER.search(_dotted(node.func.value) or ""):
                    out.append(f"{src.rel[name]}:{node.lineno}: .{node.func.attr}() of a kernel path: "
                               f"{ast.unparse(node)[:100]}")

    module_taint = _Taint(set(consts.get(name, ())) | imported, set(), aliases)
    scan(tree.body, module_taint)

    def functions(node, class_attrs):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                attrs = set()
                # Class-level constants, seen as self.X, cls.X and Class.X.
                for stmt in child.body:
                    if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None \
                            and module_taint.kernel(stmt.value):
                        for tg in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]):
                            if isinstance(tg, ast.Name):
                                attrs |= {f"self.{tg.id}", f"cls.{tg.id}", f"{child.name}.{tg.id}"}
                # Attributes bound to kernel paths anywhere in the class count in every method.
                for fn in ast.walk(child):
                    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        t = _Taint(set(module_taint.names) | _kernel_params(fn, module_taint), attrs, aliases)
                        for n in _scope_nodes(fn.body):
                            if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None:
                                for tg in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                                    if isinstance(tg, ast.Attribute) and t.kernel(n.value):
                                        t.bind(tg, True)
                functions(child, attrs)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                names = set(module_taint.names)
                args = child.args
                params = args.posonlyargs + args.args
                defaults = [None] * (len(params) - len(args.defaults)) + list(args.defaults)
                pairs = list(zip(params, defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
                for i, (p, d) in enumerate(pairs):
                    if (d is not None and module_taint.kernel(d)) or \
                            (getattr(child, "name", None), i) in tainted_params or \
                            (getattr(child, "name", None), p.arg) in tainted_params:
                        names.add(p.arg)
                body = child.body if isinstance(child.body, list) else [ast.Expr(child.body)]
                scan(body, _Taint(names, set(class_attrs) | set(module_taint.attrs), aliases))
                functions(child, class_attrs)
            else:
                functions(child, class_attrs)

    functions(tree, set())
    return sorted(set(out), key=lambda s: (s.split(":")[0], int(s.split(":")[1]))), calls


def check_side_doors(src: Source) -> dict[str, list[str]]:
    consts = kernel_constants(src)
    found = defaultdict(list)
    for name in sorted(src.files):
        rel = src.rel[name]
        if rel.startswith(DOORS):
            continue
        for line in side_doors(src, name, consts):
            found[room_of(name)].append(line)
    return found


def check_cpu_count(src: Source) -> dict[str, list[str]]:
    """The CPU count is taken once, through KernelFS.online_cpus()."""
    found = defaultdict(list)
    for name in sorted(src.files):
        rel = src.rel[name]
        if rel.startswith(DOORS):
            continue
        for node in ast.walk(src.tree(name)):
            if isinstance(node, ast.Call) and _dotted(node.func) in (
                    "os.cpu_count", "multiprocessing.cpu_count", "os.process_cpu_count",
                    "os.sched_getaffinity"):
                found[room_of(name)].append(
                    f"{rel}:{node.lineno}: {_dotted(node.func)}() - take KernelFS.online_cpus()")
    return found


# --- (c), (d) sizes ------------------------------------------------------------------
def check_class_sizes(src: Source) -> dict[str, list[str]]:
    found = defaultdict(list)
    for name in sorted(src.files):
        rel = src.rel[name]
        if rel in CLASS_EXEMPT:
            continue
        for node in ast.walk(src.tree(name)):
            if isinstance(node, ast.ClassDef):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                lines = node.end_lineno - first + 1
                if lines > MAX_CLASS_LINES:
                    found[room_of(name)].append(f"{rel}:{node.lineno}: class {node.name} is {lines} lines (max {MAX_CLASS_LINES})")
    return found


def check_daemon_size(src: Source) -> dict[str, list[str]]:
    found = defaultdict(list)
    path = src.repo / DAEMON_MODULE
    if not path.exists():
        found["agent"].append(f"{DAEMON_MODULE} does not exist yet")
    else:
        lines = len(path.read_text().splitlines())
        if lines > MAX_DAEMON_LINES:
            found["agent"].append(f"{DAEMON_MODULE} is {lines} lines (max {MAX_DAEMON_LINES})")
    for name in sorted(src.files):
        for node in ast.walk(src.tree(name)):
            if isinstance(node, ast.ClassDef) and node.name == "Daemon":
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_DAEMON_LINES:
                    found[room_of(name)].append(f"{src.rel[name]}:{node.lineno}: class Daemon is {lines} lines (max {MAX_DAEMON_LINES})")
    return found


# --- (e) scaffolding left ----------------------------------------------------------------
def check_shims(src: Source) -> dict[str, list[str]]:
    found = defaultdict(list)
    for top in SHIM_DIRS:
        for path in sorted((src.repo / top).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            rel = str(path.relative_to(src.repo))
            if rel == "tests/test_architecture.py":
                continue
            for no, text in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if SHIM_MARK in text:
                    found[_room_of_path(rel)].append(f"{rel}:{no}: {text.strip()[:100]}")
    for rel in OLD_MODULES:
        if (src.repo / rel).exists():
            found[_room_of_path(rel)].append(f"{rel}: old module still present (must be gone)")
    return found


def _room_of_path(rel: str) -> str:
    parts = Path(rel).with_suffix("").parts
    if parts[0] == "tagger":
        return room_of(".".join(p for p in parts if p != "__init__"))
    if parts[0] == "cli":
        return "cli"
    return parts[0]


CHECKS = [
    ("a. imports: ranks, rules<->telemetry, policies->telemetry, cycles, tagger/__init__", check_imports),
    ("b. side doors: kernel paths opened outside kernelfs/native", check_side_doors),
    ("b2. CPU count not through KernelFS.online_cpus()", check_cpu_count),
    (f"c. classes over {MAX_CLASS_LINES} lines (rules/expr.py exempt)", check_class_sizes),
    (f"d. the daemon module <= {MAX_DAEMON_LINES} lines", check_daemon_size),
    ("e. scaffolding: SHIM-14 marks and old modules left", check_shims),
]


# --- the tests ------------------------------------------------------------------------
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def src():
    return Source(REPO)


def _offenders(found) -> str:
    return "\n".join(f"  [{room}] {line}" for room in sorted(found, key=lambda r: (RANKS.get(r, 99), r))
                     for line in found[room])


def test_imports_point_down_without_cycles(src):
    found = check_imports(src)
    assert not found, ("imports that break the rooms' ranks (contracts: a module imports only its "
                       "own room or a lower rank; rules and telemetry never each other, policies "
                       "not telemetry; no cycles; "
                       "tagger/__init__ imports no room):\n" + _offenders(found))


def test_only_kernelfs_and_native_open_kernel_files(src):
    found = check_side_doors(src)
    assert not found, ("kernel files opened outside tagger/kernelfs.py and tagger/native/ "
                       "(go through KernelFS):\n" + _offenders(found))


def test_the_cpu_count_comes_from_kernelfs(src):
    found = check_cpu_count(src)
    assert not found, "CPU counts taken outside KernelFS.online_cpus():\n" + _offenders(found)


def test_no_class_over_300_lines(src):
    found = check_class_sizes(src)
    assert not found, f"classes over {MAX_CLASS_LINES} lines:\n" + _offenders(found)


def test_the_daemon_module_is_wiring_only(src):
    found = check_daemon_size(src)
    assert not found, f"the daemon over {MAX_DAEMON_LINES} lines:\n" + _offenders(found)


def test_no_scaffolding_left(src):
    found = check_shims(src)
    assert not found, "SHIM-14 marks or old modules left:\n" + _offenders(found)


# --- the checks themselves catch what they are for ----------------------------------------
_SIDE_DOORS = '''
import os
from pathlib import Path
from tagger.kernelfs import HOST

PROC = "/proc"
CGROUP = Path("/sys/fs/cgroup")

def literal():
    return open("/proc/stat").read()                       # a literal

def joined(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:            # an f-string
        return f.read()

def through_fs_path(fs):
    base = str(fs.path("/sys/fs/cgroup")).rstrip("/")
    return os.listdir(f"{base}/a")                         # KernelFS.path leaked

def constant():
    return os.scandir(PROC)                                # a module constant

def pathlib_method():
    return (CGROUP / "a" / "cpu.max").read_text()          # a Path method

def _read(real):
    return os.open(real, os.O_RDONLY)                      # handed in by a caller

def caller(fs):
    return _read(str(fs.path("/sys/fs/cgroup/a/cpu.stat")))

class Reader:
    def __init__(self):
        self.root = "/sys/fs/cgroup"

    def walk(self):
        return list(os.walk(self.root))                    # an attribute set elsewhere

class Resctrl:
    ROOT = "/sys/fs/resctrl"

    def __init__(self, info="/sys/fs/resctrl/info"):
        self.info = info

    def groups(self):
        return os.listdir(self.ROOT), os.listdir(self.info)   # a class constant, a default

def fine(fs, rules_dir):
    fs.read_text("/proc/stat")                             # the door
    HOST.listdir("/sys/fs/cgroup")
    open(rules_dir).close()                                # not a kernel path
    return "/proc/PID/stat is where it lives"              # only words
'''


def _tree(tmp_path, files):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "cli").mkdir(exist_ok=True)
    return Source(tmp_path)


def test_side_door_check_finds_each_kind_and_only_those(tmp_path):
    src = _tree(tmp_path, {"tagger/__init__.py": "", "tagger/cgroups.py": _SIDE_DOORS,
                           "tagger/kernelfs.py": "import os\nos.listdir('/sys')\n"})
    found = check_side_doors(src)
    lines = sorted(int(x.split(":")[1]) for x in found["cgroups"])
    assert lines == [10, 13, 18, 21, 24, 27, 37, 46, 46], found
    assert list(found) == ["cgroups"]                      # kernelfs itself is the door


def test_import_check_finds_upward_forbidden_and_cycles(tmp_path):
    src = _tree(tmp_path, {
        "tagger/__init__.py": "from tagger import errors\n",
        "tagger/errors.py": "",
        "tagger/rules/__init__.py": "from tagger.actions import cpu\n",
        "tagger/rules/spec.py": "def f():\n    from tagger.telemetry import bpf\n",
        "tagger/telemetry/__init__.py": "from . import bpf\n",
        "tagger/telemetry/bpf.py": "from tagger.telemetry import open_collector\n",
        "tagger/actions/__init__.py": "", "tagger/actions/cpu.py": "",
        "tagger/names.py": "from tagger import slots\n", "tagger/slots.py": "import tagger.names\n",
        "tagger/oddity.py": "",
    })
    found = check_imports(src)
    text = _offenders(found)
    assert "upward import of tagger.actions.cpu (rules rank 2 -> actions rank 3)" in text
    assert "rules imports tagger.telemetry.bpf (forbidden" in text   # a lazy import counts too
    assert "tagger/__init__ imports tagger.errors" in text
    assert "room cycle names <-> slots" in text
    assert "module import cycle (top-level imports): tagger.telemetry <-> tagger.telemetry.bpf" in text
    assert "tagger/oddity.py: module in no room" in text


def test_size_and_shim_checks(tmp_path):
    body = "class Big:\n" + "    x = 1\n" * 300
    src = _tree(tmp_path, {"tagger/__init__.py": "", "tagger/units.py": body,
                           "tagger/rules/expr.py": body,
                           "tagger/agent/daemon.py": "class Daemon:\n    pass\n" + "#\n" * 249,
                           "tagger/api.py": "from tagger.publish.socket import *  # SHIM-14\n"})
    assert _offenders(check_class_sizes(src)).count("class Big is 301 lines") == 1   # expr.py exempt
    assert "tagger/agent/daemon.py is 251 lines" in _offenders(check_daemon_size(src))
    shims = _offenders(check_shims(src))
    assert "tagger/api.py:1:" in shims and "tagger/api.py: old module still present" in shims


# --- and at run time: what a tick really opens ------------------------------------------
_AUDIT = r'''
import os, sys, sysconfig
stdlib = sysconfig.get_paths()["stdlib"] + os.sep
repo = os.path.realpath(sys.argv[1])
tagger_dir = os.path.realpath(os.path.join(repo, "tagger")) + os.sep
cli_dir = os.path.realpath(os.path.join(repo, "cli")) + os.sep
doors = (os.path.join(tagger_dir, "kernelfs.py"), os.path.join(tagger_dir, "native") + os.sep)
events = {"open", "os.scandir", "os.listdir", "os.walk", "os.rmdir", "os.mkdir", "os.remove",
          "os.rename", "glob.glob", "pathlib.Path.glob", "pathlib.Path.rglob"}
doors_used, side_doors = set(), {}      # caller's file:line -> one example

def hook(event, args):
    if event not in events or not args:
        return
    path = args[0]
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str) or not (path == "/proc" or path.startswith(("/proc/", "/sys/"))):
        return
    f = sys._getframe(1)
    while f is not None:          # the innermost frame outside the standard library decides
        name = os.path.realpath(f.f_code.co_filename)
        if name.startswith((tagger_dir, cli_dir)):
            if name.startswith(doors):
                doors_used.add(event)
            else:
                side_doors.setdefault(f"{os.path.relpath(name, repo)}:{f.f_lineno}", f"{event} {path}")
            return
        if not name.startswith(stdlib) or "-packages" in name:
            return                # a library's own business (pyroute2 reads /proc/net/psched)
        f = f.f_back

sys.addaudithook(hook)
from tagger.doctor import run_checks
from tagger.telemetry import open_collector
from tagger.taskstats import SchedstatSource
run_checks()
SchedstatSource().read([os.getpid()])      # the fallback's run delay where taskstats is refused
for prefer_bpf in (False, True):
    with open_collector(prefer_bpf=prefer_bpf) as coll:
        coll.tick()
        coll.tick()
        coll.health()
print("doors:", sorted(doors_used))
for where, what in sorted(side_doors.items()):
    print("SIDE DOOR", where + ":", what)
'''


@pytest.mark.bpf
def test_a_tick_opens_kernel_files_only_through_kernelfs(tmp_path):
    """The static check's claim, seen at run time: doctor, the schedstat run
    delay and two ticks of each collector (fallback, BPF) open /proc and /sys
    only from kernelfs and native
    (Python's audit hooks report every open, listing and walk with its caller)."""
    if os.geteuid() != 0:
        pytest.skip("the collectors need root")
    import subprocess
    script = tmp_path / "audit.py"
    script.write_text(_AUDIT)
    out = subprocess.run([sys.executable, str(script), str(REPO)], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    side = [line for line in out.stdout.splitlines() if line.startswith("SIDE DOOR")]
    assert not side, "kernel files opened outside kernelfs/native at run time:\n" + "\n".join(side)
    assert "doors: [" in out.stdout and "'open'" in out.stdout.split("doors:")[1], out.stdout
