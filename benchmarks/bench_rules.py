"""How long one tick of rule evaluation takes: 100 rules over 10,000 cgroups.

Prints the vectorised engine's time per tick beside a plain-Python loop that
evaluates the same rules cgroup by cgroup (the reference evaluator in
tagger.rules.expr, plus the same for/keep_for state machine), and the ratio.
Both run in this process on the same snapshots.  The bar is <= 20 ms per tick.

    .venv/bin/python benchmarks/bench_rules.py [--rules 100] [--cgroups 10000] [--ticks 50]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from tagger.rules import Engine, load_text
from tagger.rules import expr as ex
from tagger.snapshot import PREEMPTION_DTYPE, CgroupTable, Snapshot
from tagger.tags import TagStore

METRICS = ["cpu.usage", "runq.p99", "runq.wait", "runq.events", "io.ops", "io.lat.p99",
           "mem.current", "psi.io.some", "cpu.throttled", "io.read_bytes"]

#: Rule shapes, cycled to make N rules: thresholds vary so different rows fire.
SHAPES = [
    "cpu.usage > {a}",
    "runq.p99 > {ms}ms and runq.wait > 50ms",
    "io.ops > {n} and (psi.io.some > 10% or io.lat.p99 > {ms}ms)",
    "mem.current > {gib}GiB or psi.io.some > 20%",
    "max(cpu.usage, io.ops / 1000) > {a} and not cpu.throttled > 20%",
    "abs(cpu.usage - 1) < {a} and node.cpu.usage / node.cpus > 50%",
    'tag("priority") == "low" and cpu.usage > {a}',
    "runq.events > {n} and runq.p99 * 2 > {ms}ms",
    "busy and slow",
    'preempts_tagged("runq", "starved") > {n}',
]


def make_rules(n: int) -> str:
    lines = ["macros:", "  busy: cpu.usage > 0.7", "  slow: runq.p99 > 4ms", "rules:",
             "  - name: low", '    match: {cgroup: "/kubepods/besteffort/**"}',
             "    tags: {priority: low}",
             "  - name: starved", "    when: runq.p99 > 8ms and runq.wait > 100ms", "    for: 3s",
             "    tags: {runq: starved}"]
    rng = np.random.default_rng(7)
    for i in range(n - 2):
        shape = SHAPES[i % len(SHAPES)]
        when = shape.format(a=round(rng.uniform(0.3, 1.5), 2), ms=int(rng.integers(1, 20)),
                            n=int(rng.integers(10, 500)), gib=int(rng.integers(1, 8)))
        lines += [f"  - name: r{i}",
                  '    match: {cgroup: "/**", exclude: ["/system.slice/**"]}' if i % 3 else
                  '    match: {cgroup: "/kubepods/**"}',
                  f"    when: '{when}'"]
        if i % 2:
            lines += [f"    for: {1 + i % 5}s", f"    keep_for: {i % 4}s"]
        lines += [f"    tags: {{t{i}: 'on'}}"]
    return "\n".join(lines) + "\n"


def make_table(n: int) -> CgroupTable:
    qos = ["besteffort", "burstable", "guaranteed"]
    paths = []
    for i in range(n):
        if i % 10 == 0:
            paths.append(f"/system.slice/svc{i}.service")
        else:
            paths.append(f"/kubepods/{qos[i % 3]}/pod{i // 4}/c{i}")
    return CgroupTable.from_paths(paths)


def make_snapshots(table: CgroupTable, ticks: int, seed=1) -> list[Snapshot]:
    """Telemetry that behaves like telemetry: each cgroup's figures drift from
    tick to tick (noise around its own level) and 0.2% of cgroups change
    behaviour abruptly each tick (so tags change now and then, as on a real host,
    not on every tick)."""
    rng = np.random.default_rng(seed)
    n = len(table)
    scale = {"cpu.usage": 1.2, "runq.p99": 0.012, "runq.wait": 0.2, "runq.events": 600,
             "io.ops": 600, "io.lat.p99": 0.03, "mem.current": 6 * 2**30, "psi.io.some": 0.3,
             "cpu.throttled": 0.4, "io.read_bytes": 5e7}
    level = {m: rng.uniform(0, scale[m], n) for m in METRICS}
    unknown = rng.random(n) < 0.3              # some figures unknown, as on real hosts
    out = []
    for k in range(ticks):
        jump = rng.random(n) < 0.002
        cols = {}
        for m in METRICS:
            level[m] = np.where(jump, rng.uniform(0, scale[m], n), level[m])
            cols[m] = level[m] * rng.uniform(0.99, 1.01, n)
        cols["psi.io.some"][unknown] = np.nan
        pre = np.zeros(n, PREEMPTION_DTYPE)
        pre["victim"] = rng.integers(0, n, n)
        pre["preemptor"] = rng.integers(0, n, n)
        pre["count"] = rng.uniform(0, 100, n)
        out.append(Snapshot(t=float(k), dt=1.0, cgroups=table, columns=cols,
                            node={"cpus": 64.0, "cpu.usage": 40.0}, preemptions=pre))
    return out


class PythonLoop:
    """The baseline: the same rules, one cgroup at a time, in plain Python."""

    def __init__(self, ruleset):
        self.rules = ruleset.active
        self.macros = {name: ex.parse(src) for name, src in ruleset.macros.items()}
        self.trees = {r.name: ex.parse(r.when_src) if r.when_src else None for r in self.rules}
        self.state: dict[tuple[str, str], list] = {}
        self.tags: dict[str, dict[str, str]] = {}

    def tick(self, snap: Snapshot):
        paths = snap.cgroups.paths
        cols = {m: snap.columns[m].tolist() for m in snap.columns}
        pre_by_preemptor: dict[int, list] = {}
        for v, p, c in snap.preemptions.tolist():
            pre_by_preemptor.setdefault(p, []).append((v, c))
        new_tags: dict[str, dict[str, str]] = {}
        for i, path in enumerate(paths):
            row = {"metrics": {m: cols[m][i] for m in cols}, "node": snap.node,
                   "tags": self.tags.get(path, {}), "preempts_most": set()}
            rate = 0.0
            for v, c in pre_by_preemptor.get(i, ()):
                if v != i and self.tags.get(paths[v], {}).get("runq") == "starved":
                    rate += c
            row["preempts"] = {("runq", "starved"): rate / snap.dt}
            mine = {}
            for r in self.rules:
                if not _glob_ok(r, path):
                    continue
                tree = self.trees[r.name]
                w = True if tree is None else bool(ex.evaluate_row(tree, row, self.macros))
                st = self.state.setdefault((r.name, path), [math.nan, False, math.nan])
                if w:
                    if math.isnan(st[0]):
                        st[0] = snap.t
                    if snap.t - st[0] >= r.for_:
                        st[1] = True
                    st[2] = math.nan
                elif st[1]:
                    if math.isnan(st[2]):
                        st[2] = snap.t
                    if snap.t - st[2] >= r.keep_for:
                        st[:] = [math.nan, False, math.nan]
                else:
                    st[0] = math.nan
                if st[1]:
                    mine.update(r.tags)
            new_tags[path] = mine
        self.tags = new_tags


_GLOB_CACHE: dict = {}


def _glob_ok(rule, path):
    # Cached per (rule, path), as any sane per-cgroup loop would.
    key = (rule.name, path)
    hit = _GLOB_CACHE.get(key)
    if hit is None:
        from tagger.rules.selectors import PathSelector
        sel = _GLOB_CACHE.setdefault(rule.name, PathSelector(rule.match))
        hit = _GLOB_CACHE[key] = sel.match_one(path, path.rsplit("/", 1)[-1])
    return hit


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rules", type=int, default=100)
    ap.add_argument("--cgroups", type=int, default=10_000)
    ap.add_argument("--ticks", type=int, default=50)
    ap.add_argument("--baseline-ticks", type=int, default=2)
    args = ap.parse_args()

    ruleset = load_text(make_rules(args.rules))
    assert len(ruleset.active) == args.rules
    table = make_table(args.cgroups)
    snaps = make_snapshots(table, args.ticks + 15)

    def timed(engine, snapshots):
        wall, cpu, events = [], [], 0
        for s in snapshots:
            w0, c0 = time.perf_counter(), time.process_time()
            r = engine.evaluate(s)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
            events += len(r.events)
        return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3, events / len(snapshots)

    engine = Engine(ruleset, TagStore())
    for s in snaps[:5]:                       # warm-up: first tick matches globs for every row
        engine.evaluate(s)
    # 1. the same telemetry again: pure evaluation, no tag changes
    same = [Snapshot(t=s.t + 1000 + i, dt=1.0, cgroups=table, columns=snaps[4].columns,
                     node=snaps[4].node, preemptions=snaps[4].preemptions)
            for i, s in enumerate(snaps[5:])]
    fresh = Engine(ruleset, TagStore())
    for s in [snaps[4]] + same[:10]:          # until every `for` timer has run out
        fresh.evaluate(s)
    steady = timed(fresh, same[10:])
    # 2. drifting telemetry: figures wander, some cgroups change behaviour, tags follow
    drift = timed(engine, snaps[5:])
    # 3. churn: 1% of cgroups replaced each tick (new paths to match, state carried by path)
    churn_snaps = []
    paths = list(table.paths)
    for k, s in enumerate(snaps[5:15]):
        for j in range(k, len(paths), 100):
            paths[j] = f"/kubepods/burstable/podnew{k}/c{j}"
        churn_snaps.append(Snapshot(t=100.0 + k, dt=1.0, cgroups=CgroupTable.from_paths(list(paths)),
                                    columns=s.columns, node=s.node, preemptions=s.preemptions))
    churn = timed(engine, churn_snaps)

    loop = PythonLoop(ruleset)
    loop.tick(snaps[0])
    base = []
    for s in snaps[1:1 + args.baseline_ticks]:
        t0 = time.perf_counter()
        loop.tick(s)
        base.append(time.perf_counter() - t0)
    base_ms = statistics.median(base) * 1e3

    med = drift[0]
    print(f"rules={args.rules} cgroups={args.cgroups} ticks={len(snaps) - 5} "
          f"(wall = elapsed; cpu = this process's CPU time, fairer on a shared machine)")
    for label, (wall, cpu, ev) in (("steady (no tag changes)", steady), ("drifting telemetry", drift),
                                   ("1% cgroup churn/tick", churn)):
        print(f"  engine, {label:<24} median wall {wall:7.2f} ms  cpu {cpu:7.2f} ms/tick"
              f"   tag events/tick {ev:7.0f}")
    print(f"  plain-Python per-cgroup loop  median wall {base_ms:7.0f} ms/tick ({len(base)} ticks)")
    print(f"bar (drifting, cpu): {drift[1]:.2f} ms <= 20 ms: {'OK' if drift[1] <= 20 else 'OVER'};"
          f" ratio: the engine is {base_ms / med:.0f}x faster than the per-cgroup loop")


if __name__ == "__main__":
    main()
