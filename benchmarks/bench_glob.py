"""Cgroup glob matching (tagger.cgroupglob): the pathological glob of issue 13,
linearity in the path, the worst glob the socket API admits, and everyday globs,
each beside a baseline timed in the same run.

  1. bar: 24 "*a" pieces against a 64-character name, <= 10 ms; the baseline is
     fnmatch.fnmatchcase of a simple glob (what the actuator used to run);
  2. linearity: the same glob against names of 64 .. 4096 characters: time per
     character does not grow (a backtracking regex grows as len ** stars);
  3. the socket API's bound: the costliest shapes of MAX_GLOB_CHARS characters
     against a 4096-character path (the most a request costs per cgroup);
  4. everyday globs over 10,000 paths, against the regex translation they
     replaced (the rules' old glob_regex, safe for these shapes).

    .venv/bin/python benchmarks/bench_glob.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import statistics
import time

from tagger.publish.socket import MAX_GLOB_CHARS
from tagger.cgroupglob import CgroupGlob

BAR_SECONDS = 0.010


def per_call(fn, repeat: int) -> float:
    """Median seconds per call over ``repeat`` timed batches."""
    batch = 1
    while True:                                   # batches of >= ~1 ms, so the clock resolves them
        t = time.perf_counter()
        for _ in range(batch):
            fn()
        if time.perf_counter() - t > 1e-3 or batch >= 1 << 16:
            break
        batch *= 2
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(batch):
            fn()
        times.append((time.perf_counter() - t) / batch)
    return statistics.median(times)


def old_glob_regex(glob: str) -> re.Pattern:
    """The rules' translation before tagger.cgroupglob (a backtracking regex)."""
    out = []
    for part in glob[1:].split("/"):
        if part == "**":
            out.append("(?:/[^/]+)*")
        else:
            out.append("/" + "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
                                     for c in part))
    return re.compile("".join(out) + r"\Z")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    rep = args.repeat

    # 1. The bar.
    simple = lambda: fnmatch.fnmatchcase("/system.slice/sshd.service", "/system.slice/*.service")  # noqa: E731
    base = per_call(simple, rep)
    bad = CgroupGlob("/**/" + "*a" * 24)
    miss = "/kubepods/burstable/" + "a" * 63 + "b"         # a 64-character name, no match
    hit = "/kubepods/burstable/" + "a" * 64
    assert not bad.match(miss) and bad.match(hit)
    t_miss, t_hit = per_call(lambda: bad.match(miss), rep), per_call(lambda: bad.match(hit), rep)
    worst = max(t_miss, t_hit)
    print("1. 24 '*a' pieces vs a 64-character name")
    print(f"   baseline fnmatch('/system.slice/*.service')  {base * 1e6:9.2f} us")
    print(f"   /**/(*a)x24 vs 64 chars, no match            {t_miss * 1e6:9.2f} us  ({t_miss / base:.1f}x baseline)")
    print(f"   /**/(*a)x24 vs 64 chars, match               {t_hit * 1e6:9.2f} us  ({t_hit / base:.1f}x baseline)")
    print(f"   bar <= {BAR_SECONDS * 1e3:.0f} ms: {'met' if worst <= BAR_SECONDS else 'NOT MET'} "
          f"({worst * 1e3:.4f} ms, {BAR_SECONDS / worst:.0f}x under)")
    small = old_glob_regex("/**/" + "*a" * 6 + "*b")
    t_old = per_call(lambda: small.match("/k/" + "a" * 44), max(3, rep // 50))
    print(f"   for scale, the old regex with only 6 '*a' + '*b' vs 44 chars: {t_old * 1e3:.1f} ms "
          f"(issue 13: 10 '*a' took 50 s)")

    # 2. Linear in the path.
    print("2. the same glob vs longer names (ns per path character must not grow)")
    for n in (64, 256, 1024, 4096):
        p = "/k/" + "a" * (n - 1) + "b"
        t = per_call(lambda: bad.match(p), max(5, rep // 4))
        print(f"   {n:5d} chars: {t * 1e6:9.1f} us  {t / len(p) * 1e9:7.1f} ns/char")

    # 3. The socket API's bound: MAX_GLOB_CHARS characters, a 4096-character path.
    print(f"3. the costliest globs the socket admits ({MAX_GLOB_CHARS} chars) vs a 4096-char path")
    k = (MAX_GLOB_CHARS - 12) // 2
    shapes = {
        "many ? segments": "/**/" + "/".join(["?"] * k) + "/b/**",
        "many * pieces": "/**/" + "*a" * (k - 2) + "*b",
        "many ? pieces": "/**/*" + "?" * (k * 2 - 4) + "b*",
        "many ** runs": "/**/" + "/**/".join(["a"] * ((MAX_GLOB_CHARS - 6) // 5)) + "/b",
    }
    paths = {"2048 one-char segments": "/" + "/".join(["a"] * 2047) + "/c",
             "one 4095-char segment": "/" + "a" * 4094 + "c"}
    worst3 = 0.0
    for sname, g in shapes.items():
        assert len(g) <= MAX_GLOB_CHARS, (sname, len(g))
        glob = CgroupGlob(g)
        for pname, p in paths.items():
            t = per_call(lambda: glob.match(p), 5)
            worst3 = max(worst3, t)
            print(f"   {sname:16s} ({len(g)} chars) vs {pname:24s} {t * 1e3:8.2f} ms")
    print(f"   worst {worst3 * 1e3:.2f} ms per cgroup and glob")

    # 4. Everyday globs over a node's worth of paths.
    print("4. everyday globs over 10,000 paths (per path), vs the old regex translation")
    paths4 = [f"/kubepods/burstable/pod{i:05d}/{'nginx' if i % 7 == 0 else 'app'}-{i}" for i in range(10000)]
    for g in ("/kubepods/**", "/kubepods/*/pod0*/*", "/**/*nginx*", "/system.slice/sshd.service"):
        new, old = CgroupGlob(g), old_glob_regex(g)
        assert [new.match(p) for p in paths4] == [old.match(p) is not None for p in paths4], g
        t_new = per_call(lambda: [new.match(p) for p in paths4], max(3, rep // 20)) / len(paths4)
        t_re = per_call(lambda: [old.match(p) for p in paths4], max(3, rep // 20)) / len(paths4)
        print(f"   {g:28s} {t_new * 1e9:7.0f} ns   regex {t_re * 1e9:7.0f} ns   ({t_new / t_re:.2f}x)")


if __name__ == "__main__":
    main()
