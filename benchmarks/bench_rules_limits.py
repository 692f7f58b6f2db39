#!/usr/bin/env python3
"""Cost of `tagger rules check` on big inputs, as ratios against the packaged
rules checked in the same run (issue 13, item 10).

Each case is a fresh `tagger rules check --no-ownership` process (interpreter
start-up included, as an operator runs it); figures are its wall time and peak
RSS (the child's VmHWM), median of --rounds:

  baseline   the packaged rules (4 KiB, 12 rules)
  huge       one 18 MB file of 200,000 rules (the issue's case: 3 min, 2.4 GB
             before the limits; now refused before it is read)
  at-limit   four 256 KiB files (1 MiB together, ~16,000 rules written): the
             worst a directory within the limits costs (1,000 rules read)
  1000-rules one file with 1,000 rules with expressions: the rule-count limit

Usage: benchmarks/bench_rules_limits.py [--rounds N].  Temp files are removed on
every exit path.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tagger.rules import loader  # noqa: E402

RULE = ('  - {{name: r{i}, match: {{cgroup: "/kubepods/pod{i}/**"}}, '
        'when: "cpu.usage > 0.8 and runq.p99 > 5ms", for: 10s, tags: {{k{k}: v{i}}}}}\n')


def write_rules(path: Path, n: int, start: int = 0, limit_bytes: int | None = None) -> int:
    out, size = ["rules:\n"], 8
    for i in range(start, start + n):
        line = RULE.format(i=i, k=i % 50)
        if limit_bytes is not None and size + len(line) > limit_bytes:
            break
        out.append(line)
        size += len(line)
    path.write_text("".join(out))
    os.chmod(path, 0o644)
    return len(out) - 1


# The child reports its own peak RSS (VmHWM: per address space, so neither the
# interpreter that forked it nor an earlier case counts).
_CHILD = ("import atexit, sys\n"
          "atexit.register(lambda: sys.stderr.write('VmHWM ' + open('/proc/self/status').read()"
          ".split('VmHWM:')[1].split()[0] + '\\n'))\n"
          "from cli.main import cli\ncli()\n")


def run_check(directory: str) -> tuple[float, float, int]:
    """(seconds, peak RSS MiB, exit status) of one `tagger rules check` process."""
    cmd = [sys.executable, "-c", _CHILD, "rules", "check", "--no-ownership", "-q", directory]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    kib = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("VmHWM ")]
    return seconds, int(kib[-1]) / 1024, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tagger-bench-rules-") as tmp:
        tmp = Path(tmp)
        cases = {"baseline": str(ROOT / "rules")}
        huge = tmp / "huge"
        huge.mkdir()
        write_rules(huge / "10-huge.yaml", 200_000)
        at_limit = tmp / "at-limit"
        at_limit.mkdir()
        written = 0
        for f in range(loader.MAX_DIRECTORY_BYTES // loader.MAX_FILE_BYTES):
            written += write_rules(at_limit / f"{f:02d}.yaml", 100_000, start=written,
                                   limit_bytes=loader.MAX_FILE_BYTES)
        many = tmp / "1000-rules"
        many.mkdir()
        write_rules(many / "10-many.yaml", loader.MAX_RULES)
        cases.update({"huge": str(huge), "at-limit": str(at_limit), "1000-rules": str(many)})
        sizes = {k: sum(p.stat().st_size for p in Path(v).glob("*.yaml")) for k, v in cases.items()}
        print(f"at-limit: {written} rules written in "
              f"{len(list(at_limit.glob('*.yaml')))} files; huge: {sizes['huge'] / 1e6:.1f} MB")
        results = {}
        for name, d in cases.items():
            runs = [run_check(d) for _ in range(args.rounds)]
            results[name] = (statistics.median(r[0] for r in runs),
                             statistics.median(r[1] for r in runs), runs[0][2])
        base_t, base_m, _ = results["baseline"]
        print(f"{'case':<11} {'bytes':>10} {'exit':>4} {'seconds':>8} {'x base':>7} {'MiB':>7} {'x base':>7}")
        for name, (t, m, rc) in results.items():
            print(f"{name:<11} {sizes[name]:>10} {rc:>4} {t:>8.2f} {t / base_t:>7.2f} {m:>7.1f} "
                  f"{m / base_m:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
