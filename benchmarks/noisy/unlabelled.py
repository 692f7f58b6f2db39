"""The pure half of the unlabelled scenario (issue 16 part 3): ``web``
labelled latency-critical beside three neighbours nobody labelled, one of
which hogs the CPU at a time, in turn, while the others run light steady
work.  From recorded samples, the agent's judged steps and the neighbours'
throughput per turn: the time until the SLO is met again after each change
of culprit, which cgroups the actions log names, each innocent neighbour's
throughput against a run with no agent and one with every neighbour
demoted; the bars and the report.  No kernel, no processes: tested in
tests/test_noisy_neighbor.py."""

from __future__ import annotations

import math

from . import report as rp

#: The run modes, in the order they run: the two static choices a user has
#: instead of tagger, then tagger.
MODES = ("no agent", "every neighbour demoted", "tagger")
#: An innocent neighbour keeps at least this share of its no-agent throughput.
INNOCENT_BAR = 0.90


def turn_figures(times, web_p99, turn: dict, slo: float, hold: int, steps=()) -> dict:
    """One turn (``turn``: name, culprit, t0, t1) of a run: seconds from the
    change of culprit to ``hold`` ticks in a row within the SLO (None: not
    within the turn), and the cgroups the policy stepped on (``steps``: its
    judged steps, each with ``t``, ``culprit`` path and ``lever``) whose step
    was asked for during the turn; ``wrong``: those that are not the turn's
    culprit."""
    rec = rp.recovery_time(times, web_p99, turn["t0"], slo, hold)
    if rec is not None and rec > turn["t1"] - turn["t0"]:
        rec = None
    # A step's record carries the tick it was judged at; it was asked for
    # ``judge`` ticks before, so a step counts in the turn its judgment ends in.
    # A kept demotion given back and "released" acts for the cgroup, not on
    # it (the release the scenario asks for): it names no one; "needed" puts
    # the demotion back, and names it.  A "boost" raises web's own weight:
    # it names no neighbour (tagger.policies.boost).
    named = sorted({s["culprit"] for s in steps
                    if turn["t0"] <= s["t"] < turn["t1"] and s.get("outcome") != "released"
                    and s.get("lever") != "boost"})
    # The lead-in (culprit_path None) has no culprit: whoever it names is wrong.
    return {"recovery": rec, "named": named, "wrong": [c for c in named if c != turn.get("culprit_path")]}


def innocent_ratios(bogo: dict, culprits: dict) -> list[dict]:
    """Per turn and innocent neighbour (not the turn's culprit): its light
    work's throughput under tagger and under every neighbour demoted, as a
    share of the no-agent run's.  ``bogo``: mode -> turn -> neighbour ->
    bogo-ops/s; ``culprits``: turn -> culprit neighbour."""
    out = []
    base = bogo.get("no agent", {})
    for turn, culprit in culprits.items():
        for name, ref in sorted(base.get(turn, {}).items()):
            if name == culprit:
                continue
            mine = bogo.get("tagger", {}).get(turn, {}).get(name, math.nan)
            demoted = bogo.get("every neighbour demoted", {}).get(turn, {}).get(name, math.nan)
            ok = ref and not math.isnan(ref)
            out.append({"turn": turn, "neighbour": name, "no_agent": ref, "tagger": mine, "demoted": demoted,
                        "tagger_share": mine / ref if ok else math.nan,
                        "demoted_share": demoted / ref if ok else math.nan})
    return out


def _recoveries(turns: list[dict]) -> str:
    return "; ".join(f"{t['name']} ({t['culprit']}): " + ("never" if t["recovery"] is None else
                                                          f"{t['recovery']:.1f} s") for t in turns)


def bars(turns: list[dict], ratios: list[dict], precondition: dict, restored: bool | None, slo: float,
         lead: dict | None = None, yardstick: list[dict] = ()) -> list:
    """The unlabelled scenario's bars (issue 16): ``turns`` are tagger's
    :func:`turn_figures` with the turn's name and culprit (and ``held``: the
    culprit was already demoted as its turn began); ``lead`` the same for
    the lead-in, where every neighbour is light and any name is wrong;
    ``yardstick`` the turns with every neighbour demoted (their "met again"
    shown beside tagger's); ``precondition`` the no-agent run's runq p99
    over the hog turns."""
    out = []
    hurts = bool(precondition["p99"] > slo)
    out.append(rp.Bar("precondition: web misses the SLO beside the hog with no agent",
                      f"runq p99 > {slo * 1e3:.1f} ms", f"{precondition['p99'] * 1e3:.2f} ms over the hog turns; "
                      f"{precondition['within'] * 100:.0f}% of ticks ≤ SLO", hurts))
    recs = [t["recovery"] for t in turns]
    out.append(rp.Bar("unlabelled: SLO met again after each change of culprit", "≤ 5 s after every change",
                      _recoveries(turns) + (f" (every neighbour demoted: {_recoveries(yardstick)})" if yardstick
                                            else ""),
                      all(r is not None and r <= 5.0 for r in recs) if hurts and turns else None))
    # A turn that names no one passes only if its culprit was held demoted
    # from before (a wrong demotion is counted in the turn that made it).
    named = ([lead] if lead else []) + turns
    out.append(rp.Bar("unlabelled: the actions log names only the current culprit",
                      "no other neighbour, every turn and the lead-in",
                      "; ".join(f"{t['name']}: " + (", ".join(n.rsplit('/', 1)[-1] for n in t["named"])
                                                    or ("none (held from before)" if t.get("held") else "none"))
                                for t in named),
                      bool(turns) and not any(t["wrong"] for t in named)
                      and all(t["named"] or t.get("held") for t in turns)))
    shares = [r["tagger_share"] for r in ratios]
    worst = min(ratios, key=lambda r: r["tagger_share"], default=None)
    if worst is None or any(math.isnan(x) for x in shares):
        out.append(rp.Bar("unlabelled: innocent neighbours keep their throughput",
                          f"≥ {INNOCENT_BAR * 100:.0f}% of no agent, more than every neighbour demoted",
                          "not measured (a light worker wrote no metrics)", None))
    else:
        s = rp.spread(shares)
        d = rp.spread(r["demoted_share"] for r in ratios)
        better = all(r["tagger_share"] > r["demoted_share"] for r in ratios)
        out.append(rp.Bar("unlabelled: innocent neighbours keep their throughput",
                          f"≥ {INNOCENT_BAR * 100:.0f}% of no agent, more than every neighbour demoted",
                          f"tagger {rp.fmt_spread(s, 100, '{:.0f}%')} of no agent (lowest: {worst['neighbour']} in "
                          f"{worst['turn']}), every neighbour demoted {rp.fmt_spread(d, 100, '{:.0f}%')}; tagger "
                          f"above it for {sum(r['tagger_share'] > r['demoted_share'] for r in ratios)} of "
                          f"{len(ratios)}", bool(s["min"] >= INNOCENT_BAR and better)))
    out.append(rp.Bar("unlabelled: every neighbour's knobs restored when tagger run stops (SIGTERM)",
                      "cpu.idle 0, its own weight, no quota, its parent's CPUs", "yes" if restored else "no",
                      restored))
    return out


def build_markdown(res: dict) -> str:
    """benchmarks/results/noisy_neighbor_unlabelled.md from a run's results."""
    m, slo = res["meta"], res["slo"]
    out = ["# Noisy neighbour without labels: only the current culprit", "",
           f"Generated by `{m['command']}` on {m['date']} — kernel {m['kernel']}, {m['cpus']} CPUs, load average "
           f"before the run {m['load_before']}. Every figure below is from that one run.", "",
           "`web` (tagged `latency=critical`): the labelled scenario's cyclictest and request/response probe. "
           f"Three neighbours with no tag, {', '.join(m['neighbours'])}: each runs light steady work "
           f"(`{m['light']}`) except the one whose turn it is, which runs a CPU hog (`{m['hog']}`), "
           f"{m['turn_s']:.0f} s per turn, in turn. The policy protects `latency=critical` and may act on any "
           "neighbour (a path glob, no tags): it must act only on the cgroup charged with web's foreign run-queue "
           "wait (`runq.wait.by`) and give it back when it stops. The same rotation runs three times: with no "
           "agent, with every neighbour demoted (`cpu.idle 1` on all three: what a user could set instead), and "
           "with `tagger run`.", "",
           f"**SLO: web's run-queue p99 ≤ {slo['target'] * 1e3:.1f} ms.** {slo['why']}", "",
           "## Bars", "", "| bar | wanted | measured | met |", "|---|---|---|---|"]
    for b in res["bars"]:
        met = "n/a" if b.met is None else ("yes" if b.met else "**no**")
        out.append(f"| {b.name} | {b.wanted} | {b.measured} | {met} |")
    out += ["", "## Per turn", "",
            "*charged*: web's run-queue wait charged to each neighbour (`runq.wait.by`, the median of the turn's "
            "ticks, ms/s): who held the CPU while web waited.", "",
            "| mode | turn | culprit | runq p99 (ms) | ticks ≤ SLO | SLO met again after the change | cgroups the "
            "actions log names | neighbours demoted (seconds) | charged (ms/s) |", "|---|---|---|---|---|---|---|---|---|"]
    for t in res["turns"]:
        down = ", ".join(f"{k} {v}" for k, v in sorted(t.get("demoted_s", {}).items()) if v) or "none"
        charged = ", ".join(f"{k} {rp._num(v * 1e3)}" for k, v in sorted(t.get("charged", {}).items())) or "–"
        out.append(f"| {t['mode']} | {t['name']} | {t['culprit']} | {rp._ms(t['runq']['p99'])} "
                   f"| {rp._num(t['within'] * 100, '{:.0f}%')} | {rp._num(t.get('recovery'), '{:.1f} s')} "
                   f"| {', '.join(n.rsplit('/', 1)[-1] for n in t.get('named', ())) or '–'} | {down} | {charged} |")
    out += ["", "## Innocent neighbours' light work (stress-ng bogo-ops/s)", "",
            "| turn | neighbour | no agent | every neighbour demoted | tagger | tagger / no agent "
            "| demoted / no agent |", "|---|---|---|---|---|---|---|"]
    for r in res["ratios"]:
        out.append(f"| {r['turn']} | {r['neighbour']} | {rp._num(r['no_agent'])} | {rp._num(r['demoted'])} "
                   f"| {rp._num(r['tagger'])} | {rp._num(r['tagger_share'] * 100, '{:.0f}%')} "
                   f"| {rp._num(r['demoted_share'] * 100, '{:.0f}%')} |")
    if res.get("steps"):
        out += ["", "## The policy's judged steps (tagger mode)", "", "| t (s from the first turn) | culprit | lever | outcome |",
                "|---|---|---|---|"]
        for s in res["steps"]:
            out.append(f"| {s['t']:.0f} | {s['culprit']} | {s['lever']} | {s['outcome']} |")
    if res.get("notes"):
        out += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(out) + "\n"
