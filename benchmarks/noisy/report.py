"""The pure half of the scenario: reading the workloads' records, the figures
per phase, the SLO choice, time to recover and to release, the bars, the
markdown report and the plots.  No kernel, no processes: tested on recorded
samples (tests/test_noisy_neighbor.py)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

NAN = math.nan


# --- records --------------------------------------------------------------------------
def read_probe(path: str) -> np.ndarray:
    """The probe client's record: (n, 2) array of send time (monotonic s), latency (s)."""
    rows = []
    try:
        with open(path) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) == 2:
                    try:
                        rows.append((float(parts[0]), float(parts[1])))
                    except ValueError:        # a line cut short by a kill
                        pass
    except FileNotFoundError:
        pass
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


_CYC_SAMPLE = re.compile(r"^\s*(\d+):\s*(\d+):\s*(-?\d+)\s*$")
_CYC_INTERVAL = re.compile(r"Thread\s+(\d+)\s+Interval:\s*(\d+)")


def parse_cyclictest(text: str, start: float) -> np.ndarray:
    """cyclictest ``-v`` output (``thread:cycle:latency_us`` per wake-up) as an
    (n, 2) array of wake-up time (monotonic s) and latency (s).  Wake-up k of a
    thread is due at ``start + (k + 1) * interval`` (cyclictest's absolute timer)."""
    intervals = {int(t): int(i) * 1e-6 for t, i in _CYC_INTERVAL.findall(text)}
    rows = []
    for line in text.splitlines():
        m = _CYC_SAMPLE.match(line)
        if m:
            thread, cycle, lat = int(m.group(1)), int(m.group(2)), int(m.group(3))
            interval = intervals.get(thread, intervals.get(0, 1e-3))
            rows.append((start + (cycle + 1) * interval, lat * 1e-6))
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def parse_stress_ng_yaml(text: str) -> dict[str, float]:
    """bogo-ops/s (real time) per stressor from ``stress-ng --yaml``."""
    out, stressor = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*-\s*stressor:\s*(\S+)", line)
        if m:
            stressor = m.group(1)
            continue
        m = re.match(r"\s*bogo-ops-per-second-real-time:\s*([0-9.eE+-]+)", line)
        if m and stressor is not None:
            out[stressor] = float(m.group(1))
    return out


def fio_write_bps(report: dict) -> float:
    """Write bandwidth (bytes/s) summed over a fio JSON report's jobs."""
    total = 0.0
    for job in report.get("jobs", ()):
        w = job.get("write", {})
        total += float(w.get("bw_bytes", w.get("bw", 0) * 1024))
    return total


# --- figures ---------------------------------------------------------------------------
def summary(values) -> dict[str, float]:
    """p50, p99 and max of ``values`` (NaN when empty), and how many."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"p50": NAN, "p99": NAN, "max": NAN, "n": 0}
    return {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)),
            "max": float(v.max()), "n": int(v.size)}


def in_window(rows: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """The rows of a (time, value) array with t0 <= time < t1."""
    if rows.size == 0:
        return rows
    return rows[(rows[:, 0] >= t0) & (rows[:, 0] < t1)]


def hist_summary(hists, edges, maxima=()) -> dict[str, float]:
    """p50/p99 of run-queue latency from per-tick log2 histograms summed over a
    window (tagger's own percentile code), and the largest per-tick max."""
    from tagger.snapshot import hist_percentiles
    hists = [h for h in hists if h is not None]
    mx = [m for m in maxima if not math.isnan(m)]
    if not hists or edges is None:
        return {"p50": NAN, "p99": NAN, "max": NAN}
    total = np.sum(hists, axis=0)[None, :]
    p50, p99 = hist_percentiles(total, np.asarray(edges), (0.5, 0.99))[0]
    top = max(mx) if mx else NAN
    return {"p50": float(min(p50, top) if mx else p50), "p99": float(min(p99, top) if mx else p99),
            "max": float(top)}


def per_second(rows: np.ndarray, t0: float, t1: float, q: float = 99.0) -> tuple[np.ndarray, np.ndarray]:
    """The q-th percentile of a (time, value) record per whole second of [t0, t1):
    (bin starts relative to t0, values; NaN for empty seconds)."""
    n = max(0, int(math.ceil(t1 - t0)))
    xs = np.arange(n, dtype=np.float64)
    ys = np.full(n, NAN)
    if rows.size and n:
        idx = np.floor(rows[:, 0] - t0).astype(np.int64)
        keep = (idx >= 0) & (idx < n)
        idx, vals = idx[keep], rows[keep, 1]
        order = np.argsort(idx, kind="stable")
        idx, vals = idx[order], vals[order]
        bounds = np.searchsorted(idx, np.arange(n + 1))
        for i in range(n):
            if bounds[i + 1] > bounds[i]:
                ys[i] = np.percentile(vals[bounds[i]:bounds[i + 1]], q)
    return xs, ys


def recovery_time(times, values, start: float, slo: float, hold: int = 3) -> float | None:
    """Seconds from ``start`` to the end of the first sample window (at or after
    ``start``) from which ``hold`` samples in a row meet ``value <= slo``; None if
    it never does.  A sample with no value (NaN: no run-queue events) is neither
    a miss nor a hit and does not break a run."""
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    run_start, run = None, 0
    for ti, vi in zip(t, v):
        if ti < start:
            continue
        if math.isnan(vi):
            continue
        if vi <= slo:
            if run == 0:
                run_start = ti
            run += 1
            if run >= hold:
                return max(0.0, run_start - start)
        else:
            run, run_start = 0, None
    return None


def release_time(times, quotas, start: float) -> float | None:
    """Seconds from ``start`` to the first sample with no quota (None: the
    limit is back at its original, unlimited); None if that never happens."""
    for ti, q in zip(times, quotas):
        if ti >= start and q is None:
            return max(0.0, ti - start)
    return None


def choose_slo(alone_p99: float, floor: float = 1e-3, factor: float = 2.0, step: float = 0.5e-3) -> float:
    """The SLO on web's run-queue p99: ``factor`` times its p99 when alone (one
    log2 bucket of the histogram up), rounded to ``step``, at least ``floor``
    (the histogram's sub-millisecond buckets are too coarse to judge finer)."""
    if alone_p99 is None or math.isnan(alone_p99):
        return floor
    return max(floor, round(factor * alone_p99 / step) * step)


def longest_miss(values, slo: float) -> int:
    """The longest run of samples in a row above ``slo`` (NaN ends no run)."""
    best = run = 0
    for v in values:
        if math.isnan(v):
            continue
        run = run + 1 if v > slo else 0
        best = max(best, run)
    return best


def within(values, slo: float) -> float:
    """Share of samples (NaN ignored) with value <= slo."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float((v <= slo).mean()) if v.size else NAN


def spread(values) -> dict[str, float]:
    """Median, min and max of repeated figures (NaN ignored), and how many."""
    v = np.asarray(list(values), dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"median": NAN, "min": NAN, "max": NAN, "n": 0}
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def fmt_spread(s: dict, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    """A :func:`spread` as "median (min–max)", each value times ``scale``."""
    if not s or not s.get("n"):
        return "–"
    med = fmt.format(s["median"] * scale)
    if s["n"] == 1:
        return med
    return f"{med} ({fmt.format(s['min'] * scale)}–{fmt.format(s['max'] * scale)})"


def meets(p99: float, within_share: float, slo: float, min_within: float) -> bool:
    """The one SLO judgment of tagger and of every static setting: the p99 of
    web's run-queue latency over the phase (or trial) within the SLO, and at
    least ``min_within`` of its ticks within it.  Unknown figures never meet."""
    if p99 is None or within_share is None or math.isnan(p99) or math.isnan(within_share):
        return False
    return bool(p99 <= slo and within_share >= min_within)


def judge_runs(runs, slo: float, min_within: float) -> dict:
    """Repeated runs of one setting (each with ``runq`` p99, ``within`` and
    ``bogo_ops``) judged as one: the spreads of the figures and the judgment
    on the medians; ``met_runs`` counts the runs that met it on their own."""
    runs = list(runs)
    p99 = spread(r["runq"]["p99"] for r in runs)
    share = spread(r["within"] for r in runs)
    return {"p99": p99, "within": share, "bogo_ops": spread(r["bogo_ops"] for r in runs),
            "bogo_runs": [r["bogo_ops"] for r in runs],
            "batch_cpu": spread(r.get("batch_cpu", NAN) for r in runs),
            "fio_mibs": spread(r.get("fio_mibs", NAN) for r in runs),
            "meets": meets(p99["median"], share["median"], slo, min_within),
            "met_runs": sum(meets(r["runq"]["p99"], r["within"], slo, min_within) for r in runs),
            "n": len(runs)}


def best_static(statics: dict):
    """(label, judged) of the static setting (label -> :func:`judge_runs`) with
    the most batch throughput (median bogo-ops/s) among those that meet the
    judgment; None if none does."""
    ok = [(k, v) for k, v in statics.items() if v["meets"] and not math.isnan(v["bogo_ops"]["median"])]
    return max(ok, key=lambda kv: kv[1]["bogo_ops"]["median"], default=None)


def throughput_bar(tagger: dict, statics: dict, ratio: float = 0.95, phase: dict | None = None) -> "Bar":
    """Issue 16's bar: tagger's batch throughput while web is protected is at
    least ``ratio`` of the best static setting that meets the same judgment
    (medians of the repeated runs), and tagger meets the judgment itself.
    ``tagger``: its trials in the static sweep, measured as every setting is;
    ``phase``: its protected phase (another time of the round), shown beside."""
    name = "tagger's batch throughput vs the best static setting that meets the same judgment"
    wanted = f"≥ {ratio * 100:.0f}% of it, tagger meeting the judgment too"
    mine = tagger["bogo_ops"]["median"]
    verdict = "meets" if tagger["meets"] else "does not meet"
    best = best_static(statics)
    if best is None:
        return Bar(name, wanted, f"no static setting met the judgment; tagger {mine:.0f} bogo-ops/s, "
                                 f"{verdict} it", None)
    label, b = best
    share = mine / b["bogo_ops"]["median"] if b["bogo_ops"]["median"] else NAN
    measured = (f"{share * 100:.0f}%: tagger {fmt_spread(tagger['bogo_ops'], fmt='{:.0f}')} vs {label} "
                f"{fmt_spread(b['bogo_ops'], fmt='{:.0f}')} bogo-ops/s, median (min–max); tagger {verdict} "
                "the judgment" + paired_share(tagger, b) + cpu_share(tagger, b))
    if phase is not None:
        measured = "tagger's trials in the sweep: " + measured + phase_share(phase, b)
    return Bar(name, wanted, measured, bool(tagger["meets"] and share >= ratio))


def phase_share(phase: dict, best: dict) -> str:
    """Tagger's protected phase against the same best static setting: the
    same policy minutes away from the sweep, so the host's speed apart too.
    Shown beside the bar, not counted."""
    mine, theirs = phase["bogo_ops"]["median"], best["bogo_ops"]["median"]
    if not (mine > 0 and theirs > 0):
        return ""
    return (f". Its protected phase (minutes from the sweep; not counted): {mine / theirs * 100:.0f}% "
            f"({fmt_spread(phase['bogo_ops'], fmt='{:.0f}')} bogo-ops/s)" + cpu_share(phase, best))


def paired_share(tagger: dict, best: dict) -> str:
    """Tagger's throughput against the best static setting's in the same
    round, median (min-max) over the rounds: the host's speed drifts between
    rounds (no limit moved 1,444-1,860 bogo-ops/s within one run), and a
    round's phases run minutes apart at most.  Shown beside the bar, which is
    judged on the medians as issue 16 states it."""
    mine, theirs = tagger.get("bogo_runs", ()), best.get("bogo_runs", ())
    if len(mine) < 2 or len(mine) != len(theirs):
        return ""
    s = spread(m / t if t else NAN for m, t in zip(mine, theirs))
    return f"; against the same round's: {fmt_spread(s, 100, '{:.0f}%')}"


def cpu_share(tagger: dict, best: dict) -> str:
    """The same comparison in CPU time (batch's CPU usage, in CPUs): what the
    policy leaves batch, which the host's speed moves less than bogo-ops per
    CPU-second (docs/noisy_neighbor.md, "Bogo-ops or CPU time").  Shown beside
    the bar, which is judged on bogo-ops as issue 16 states it."""
    mine, theirs = tagger.get("batch_cpu", {}).get("median", NAN), best.get("batch_cpu", {}).get("median", NAN)
    if not (mine > 0 and theirs > 0):
        return ""
    return (f"; in CPU time: {mine / theirs * 100:.0f}% ({mine:.2f} vs {theirs:.2f} CPUs)")


@dataclass
class Bar:
    name: str
    wanted: str
    measured: str
    met: bool | None          # None: could not be measured


# --- the report ------------------------------------------------------------------------
def _ms(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 1e3:.2f}"


def _num(x, fmt="{:.0f}") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def static_label(tr) -> str:
    """A static baseline trial's setting, in the field's words."""
    if tr["lever"] == "shares":
        return f"cpu.shares {tr['value']:.0f} (WCA's cpu_shares)"
    if tr["lever"] == "idle":
        return "cpu.idle 1 (no quota; not a WCA setting)"
    if tr["lever"] == "cpuset":
        return f"cpuset.cpus: the last {tr['value']:.0f} CPU(s) (WCA's cpuset_cpus, koordlet's CPU suppress)"
    return "no limit (the collocated phase)" if tr["quota"] is None else f"quota {tr['quota']:.2f} CPU"


LEVERS = {
    "idle": "`cpu.idle` (SCHED_IDLE; work-conserving: batch keeps what web leaves idle)",
    "weight": "the lowest `cpu.weight` (1; v1 `cpu.shares` 10; work-conserving)",
    "quota": "a CPU quota, cut step by step (batch loses cycles whether or not web wants them)",
    "cpuset": "`cpuset.cpus` confined to the CPUs web does not need (koordlet's CPU suppress: web keeps "
              "⌈1.5 × its CPU use⌉ CPUs, at least one; here batch keeps 1 of 2; not work-conserving)",
}


def _ladder_text(rungs) -> str:
    return "; then ".join(" with ".join(LEVERS.get(x, x) for x in r) for r in rungs) or "none"


def _quota(q) -> str:
    return "none" if q is None else f"{q:.2f}"


def _shares_text(shares) -> str:
    web, batch = (1024 if x is None else x for x in shares)
    return (f"CPU weights (v1 cpu.shares) web {web}, batch {batch}, as a Kubernetes node sets them from CPU "
            f"requests (shares = millicores × 1024 / 1000: web asks for {web * 1000 / 1024:.0f}m, batch for "
            f"{batch * 1000 / 1024:.0f}m).")


def build_markdown(res: dict) -> str:
    """The report (``benchmarks/results/noisy_neighbor.md``) from a run's results."""
    m, slo = res["meta"], res["slo"]
    n = m.get("repeat", 1)
    mw = m.get("min_within", 0.8)
    out = [
        "# Noisy neighbour: tagger's latency-slo policy on this machine",
        "",
        f"Generated by `{m['command']}` on {m['date']} — kernel {m['kernel']}, {m['cpus']} CPUs, "
        f"load average before the run {m['load_before']}. Every figure below is from that one run ({n} round(s) "
        "of every phase and static setting; spreads are median (min–max) over the rounds); run the command again "
        "to regenerate this file and the plots.",
        "",
        "`web` (latency-critical): cyclictest (SCHED_OTHER, one wake-up every "
        f"{m['cyclictest_interval_us']} µs) and a Unix-socket request/response probe "
        f"({m['probe_work_us']:.0f} µs of CPU per request) whose rate follows a sine between "
        f"{m['rate_quiet']:.0f} and {m['rate_busy']:.0f} requests/s (period {m['rate_period']:.0f} s). "
        f"`batch` (best effort): `stress-ng --cpu {m['stress_cpus']} --cpu-method {m['stress_method']}` and a direct-I/O fio writer "
        f"({m['fio']}). {_shares_text(m.get('shares', (None, None)))} Phases of {m['phase_s']:.0f} s; tagger ticks every {m['interval']:g} s.",
        "",
        f"**SLO judgment: web's run-queue p99 ≤ {slo['target'] * 1e3:.1f} ms over the phase or trial, and at least "
        f"{mw * 100:.0f}% of its 1 s ticks within it** — the same judgment for tagger's protected phase and for every "
        f"static setting. {slo['why']}",
        "",
        f"The policy (`latency-slo`, rules written by the benchmark: the shipped `rules/*.yaml` plus `web` "
        f"tagged `priority=high, latency=critical` and `batch` `priority=low`): α 0.5, β {m.get('beta', 0.1):g}, "
        f"floor 0.1 CPU, the p99 judged over the last {m.get('window', 1)} tick(s), release after 3 ticks within "
        f"the SLO. Its lever ladder, cheapest for batch first: {_ladder_text(m.get('ladder') or [])}. Each step "
        "is judged over the 3 ticks after it: kept if web's p99 there is within the SLO or 20% below the misses "
        "that asked for it, else undone and the lever not tried again on batch for 60 s; the next rung needs 2 "
        "misses in a row. Once web ran nothing for 3 ticks every limit goes at once.",
        "",
        "![victim latency](noisy_neighbor_latency.png)",
        "",
        "![batch quota and throughput](noisy_neighbor_batch.png)",
        "",
        "The plots show the first round.",
        "",
        "## Bars",
        "",
        "| bar | wanted | measured | met |",
        "|---|---|---|---|",
    ]
    for b in res["bars"]:
        met = "n/a" if b.met is None else ("yes" if b.met else "**no**")
        out.append(f"| {b.name} | {b.wanted} | {b.measured} | {met} |")
    sp = res.get("spreads") or {}
    if sp:
        out += ["", f"## Per phase, over the {n} round(s)", "",
                "median (min–max). *runq p99* is the p99 of all of `web`'s run-queue waits in the phase (tagger's "
                "BPF collector, the code `tagger run` uses); *ticks ≤ SLO* the share of 1 s ticks whose p99 met "
                "the SLO.", "",
                "| phase | runq p99 (ms) | ticks ≤ SLO | cyclictest p99 (ms) | batch stress-ng bogo-ops/s |",
                "|---|---|---|---|---|"]
        for name, s in sp.items():
            out.append(f"| {name} | {fmt_spread(s['p99'], 1e3)} | {fmt_spread(s['within'], 100, '{:.0f}%')} "
                       f"| {fmt_spread(s['cyclictest'], 1e3)} | {fmt_spread(s['bogo_ops'], fmt='{:.0f}')} |")
    out += ["", "## Every phase", "",
            "Latencies in ms. *runq* is tagger's run-queue latency of `web` (p50/p99 over the phase's events, max "
            "of the ticks); *steal* is the CPU time the hypervisor gave to other guests while our vCPUs wanted to "
            "run (/proc/stat), which no limit on batch can give back.", "",
            "| round | phase | cyclictest p50 / p99 / max | probe p50 / p99 / max (requests) | runq p50 / p99 / max "
            "| ticks ≤ SLO | longest miss | batch stress-ng bogo-ops/s | batch fio MiB/s | batch CPUs "
            "| batch quota, mean (min–max) CPUs | steal ms/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in res["phases"]:
        c, pr, r = p["cyclictest"], p["probe"], p["runq"]
        out.append(
            f"| {p.get('round', 1)} | {p['name']} | {_ms(c['p50'])} / {_ms(c['p99'])} / {_ms(c['max'])} "
            f"| {_ms(pr['p50'])} / {_ms(pr['p99'])} / {_ms(pr['max'])} ({pr['n']}) "
            f"| {_ms(r['p50'])} / {_ms(r['p99'])} / {_ms(r['max'])} | {_num(p['within'] * 100, '{:.0f}%')} "
            f"| {p.get('longest_miss', 0)} ticks | {_num(p['bogo_ops'])} | {_num(p['fio_mibs'], '{:.1f}')} | {_num(p['batch_cpu'], '{:.2f}')} "
            f"| {p['quota_text']} | {_num(p.get('steal', NAN) * 1e3, '{:.1f}')} |")
    rounds = res.get("rounds") or []
    if rounds:
        out += ["", "## tagger per round", "",
                "| round | SLO met again (from batch's start) | first miss / met again after it | first action on batch "
                "| the policy's judged steps | release after web stops | tagger's CPU | knobs after SIGTERM |",
                "|---|---|---|---|---|---|---|---|"]
        for r in rounds:
            steps = ", ".join(f"{lever} {outcome}" for lever, outcome in r.get("steps") or ()) or "none"
            out.append(f"| {r['round']} | {_num(r['recovery'], '{:.1f} s')} "
                       f"| {_num(r['first_miss'], '{:.1f} s')} / {_num(r['after_miss'], '{:.1f} s')} "
                       f"| {_num(r['first_limit'], '{:.1f} s')} | {steps} "
                       f"| {_num(r['release'], '{:.1f} s')}" + (f" (from {r['release_from']})" if r.get("release_from") else "")
                       + f" | {_num(r.get('agent_cpu_share', NAN) * 100, '{:.2f}% of a core')} | `{r['quota_after']}` |")
    st = res.get("static") or {}
    if st.get("judged"):
        out += ["", "## Static settings on batch, judged as tagger is", "",
                f"Each setting fixed on `batch` for {st['trial_s']:.0f} s per round (its first second not judged, as "
                "for tagger's phase), web and batch as in the collocated phase; \"no limit\" is the collocated "
                "phases. A setting meets the judgment when the medians over the rounds do."
                + (" tagger's trial is one more in the sweep, in its middle: `tagger run` started before batch, "
                   "as in the protected phase, and stopped (SIGTERM) at the trial's end; its figures are the "
                   "throughput bar's." if res.get("tagger_sweep") else ""), "",
                "| static setting | runq p99 (ms) | ticks ≤ SLO | bogo-ops/s | batch CPUs | fio MiB/s "
                "| meets (rounds that met) |",
                "|---|---|---|---|---|---|---|"]
        rows = list(st["judged"].items())
        if res.get("tagger_sweep"):
            rows.append(("**tagger** (its trial in the sweep)", res["tagger_sweep"]))
        if res.get("tagger"):
            rows.append(("**tagger** (protected phase)", res["tagger"]))
        for label, j in rows:
            out.append(f"| {label} | {fmt_spread(j['p99'], 1e3)} | {fmt_spread(j['within'], 100, '{:.0f}%')} "
                       f"| {fmt_spread(j['bogo_ops'], fmt='{:.0f}')} "
                       f"| {fmt_spread(j.get('batch_cpu', {}), fmt='{:.2f}')} "
                       f"| {fmt_spread(j['fio_mibs'], fmt='{:.1f}')} "
                       f"| {'yes' if j['meets'] else 'no'} ({j['met_runs']} of {j['n']}) |")
        out += ["", ("The best static setting that meets the judgment: **" + st["best"] + "**.") if st.get("best")
                else "No static setting met the judgment.", ""]
    ov = res.get("overhead") or {}
    if ov.get("runs"):
        out += ["## Overhead of `tagger run` on context switches", "",
                "Interleaved A (no agent, no BPF) / B (`tagger run` with the same rules, BPF attached) / E (no "
                "agent, an empty BPF program on sched_switch: the floor of tracing the hook tagger uses) runs, "
                f"all pinned to CPU {ov.get('cpu', '1')}; ratio = median B (or E) throughput / median A throughput."
                + (f" tagger's collector reported {ov['bpf_ns_per_event']:.0f} ns of BPF per event."
                   if ov.get("bpf_ns_per_event") and ov["bpf_ns_per_event"] == ov["bpf_ns_per_event"] else ""), "",
                "| benchmark | A runs | B runs | E runs | B / A | E / A |", "|---|---|---|---|---|---|"]
        runs = lambda xs: ", ".join(f"{x:.0f}" for x in xs) or "–"    # noqa: E731
        for name, r in ov["runs"].items():
            out.append(f"| {name} | {runs(r['A'])} | {runs(r['B'])} | {runs(r.get('E', []))} "
                       f"| {r['ratio']:.4f} | {_num(r.get('floor'), '{:.4f}')} |")
        out.append("")
    if res.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(out)


# --- plots -----------------------------------------------------------------------------
PHASE_COLOURS = {"alone": "#e8f4e8", "collocated": "#fbe3e3", "protected": "#e3ecfb", "release": "#f4f0e0"}


def _shade(ax, phases, t0):
    for p in phases:
        ax.axvspan(p["t0"] - t0, p["t1"] - t0, color=PHASE_COLOURS.get(p["name"], "#eeeeee"), zorder=0)
        ax.text((p["t0"] + p["t1"]) / 2 - t0, 1.0, p["name"], transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=9)


def plot_latency(res: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s, phases, t0 = res["series"], res.get("plot_phases") or res["phases"], res["series"]["t0"]
    fig, ax = plt.subplots(figsize=(11, 4.8))
    _shade(ax, phases, t0)
    ax.plot(s["probe_x"], np.asarray(s["probe_p99"]) * 1e3, lw=1, color="#2a7", label="probe request p99 (per s)")
    ax.plot(s["cyc_x"], np.asarray(s["cyc_p99"]) * 1e3, lw=1, color="#c80", label="cyclictest wake-up p99 (per s)")
    ax.plot(s["t"], np.asarray(s["web_p99"]) * 1e3, lw=1.6, color="#24c", label="tagger runq p99 of web (per tick)")
    ax.axhline(res["slo"]["target"] * 1e3, color="red", ls="--", lw=1.2,
               label=f"SLO: runq p99 ≤ {res['slo']['target'] * 1e3:.1f} ms")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the start")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_xlim(0, max(p["t1"] for p in phases) - t0)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    ax.set_title("web's latency: alone, beside batch, protected by tagger, batch released", pad=16)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_batch(res: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s, phases, t0 = res["series"], res.get("plot_phases") or res["phases"], res["series"]["t0"]
    cpus = res["meta"]["cpus"]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    _shade(ax, phases, t0)
    quota = [cpus if q is None else q for q in s["quota"]]
    ax.step(s["t"], quota, where="post", color="black", lw=1.4, label=f"batch CPU quota (none drawn at {cpus})")
    if any(s.get("idle") or ()):
        ax.fill_between(s["t"], 0, cpus * 1.1, where=s["idle"], step="post", color="#888", alpha=0.18,
                        label="batch demoted (cpu.idle, the lowest weight or a cpuset)",
                        zorder=1)
    allowed = [cpus if c is None else c for c in s.get("batch_cpus") or ()]
    if any(c < cpus for c in allowed):
        ax.step(s["t"], allowed, where="post", color="#393", lw=1.2, ls="--", label="CPUs batch's cpuset allows")
    ax.plot(s["t"], s["batch_cpu"], color="#d52", lw=1, label="batch CPU used (CPUs)")
    ax.set_ylabel("CPUs")
    ax.set_ylim(0, cpus * 1.1)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    ax.set_title("batch: the demotion and quota tagger sets, and what batch gets done", pad=16)
    _shade(ax2, phases, t0)
    ax2.plot(s["t"], np.asarray(s["batch_write"]) / 2**20, color="#57a", lw=1, label="batch fio writes (MiB/s)")
    ax2.set_ylabel("MiB/s")
    ax2.set_xlabel("seconds since the start")
    ax2.legend(loc="upper left", fontsize=8, framealpha=0.9)
    ax2.set_xlim(0, max(p["t1"] for p in phases) - t0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
