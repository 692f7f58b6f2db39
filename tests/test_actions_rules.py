"""From a rules file to kernel knobs: the rules engine's desired actions and the
latency-slo policy's, merged and applied by the Actuator (v2 fixture tree), and
undone when the tag stops holding."""

from __future__ import annotations

from tagger.actions.actuator import Actuator
from tagger.actions.control import Safety
from tagger.kernelfs import KernelFS
from tagger.policies.latency_slo import LatencySlo
from tagger.rules import Engine, load_text
from tagger.snapshot import Snapshot
from tests.fixtures.kernel_trees import cgroup_v2_tree

RULES = """
rules:
  - name: web-is-high
    match: {cgroup: "/web"}
    tags: {priority: high}
  - name: batch-is-low
    match: {cgroup: "/batch/**"}
    tags: {priority: low}
  - name: cap-low-priority-hogs
    match: {tags: {priority: low}}
    when: cpu.usage > 0.8
    tags: {resource: cpu-intensive}
    actions:
      cpu: {max: 0.5}
      io: {device: vda, read_bps: 20MiB}
policies:
  - name: web-slo
    kind: latency-slo
    protect: {tags: {priority: high}}
    slo: runq.p99 < 2ms
    throttle: {tags: {priority: low}}
    ladder: [weight, idle, quota, cpuset]     # a rung that does not help, then one that does
"""

PATHS = ["/", "/web", "/batch", "/batch/job"]


def snap(t, job_cpu, web_p99, web_cpu=0.3):
    return Snapshot.synthetic(PATHS, {"cpu.usage": [2.0, web_cpu, job_cpu, job_cpu],
                                      "runq.p99": [0.0, web_p99, 0.0, 0.0],
                                      "runq.slowdown": [1.0, 2.5, 1.0, 1.0]},
                              t=float(t), node={"cpus": 2.0})


def test_rules_and_policy_drive_the_actuator_and_undo(tmp_path):
    layout = cgroup_v2_tree(tmp_path, cgroups=("/web", "/batch", "/batch/job"))
    ruleset = load_text(RULES)
    engine = Engine(ruleset)
    [spec] = ruleset.policies
    slo = LatencySlo(spec)
    act = Actuator(layout, fs=KernelFS(tmp_path), state_dir=tmp_path / "state", durable=False,
                   safety=Safety(max_step=None, cooldown=0))
    job = tmp_path / "sys/fs/cgroup/batch/job"

    def tick(t, job_cpu, web_p99, web_cpu=0.3):
        s = snap(t, job_cpu, web_p99, web_cpu)
        desired = engine.evaluate(s).actions
        for path, a in slo.step(s, engine.store, act.current()).items():
            desired.setdefault(path, []).append(a)
        return act.apply(s, desired)

    applied = tick(0, job_cpu=1.6, web_p99=1 * 1e-3)          # a hog, but the SLO holds
    assert {(a.cgroup, a.knob, a.rule) for a in applied} == {
        ("/batch", "cpu.max", "cap-low-priority-hogs"), ("/batch", "io.max 254:0", "cap-low-priority-hogs"),
        ("/batch/job", "cpu.max", "cap-low-priority-hogs"), ("/batch/job", "io.max 254:0", "cap-low-priority-hogs")}
    assert (job / "cpu.max").read_text() == "50000 100000"
    assert (job / "io.max").read_text() == f"254:0 rbps={20 * 1024 * 1024} wbps=max riops=max wiops=max"

    applied = tick(1, job_cpu=0.5, web_p99=6e-3)                # SLO missed: the ladder's first rung, the weight
    by = {(a.cgroup, a.knob): a for a in applied}
    assert by[("/batch/job", "cpu.weight")].rule == "latency-slo:web-slo"
    assert (job / "cpu.weight").read_text() == "1"
    for t in (2, 3, 4):                                         # judged over 3 ticks: 6 ms stays 6 ms
        applied = tick(t, job_cpu=0.5, web_p99=6e-3)
    # No help: undone at the last tick of its window (the original back), and
    # the next rung, cpu.idle, at the next miss.
    assert (job / "cpu.weight").read_text() == "100" and (job / "cpu.idle").read_text().strip() == "0"
    assert [(o.lever, o.outcome) for o in slo.outcomes] == [("weight", "no_effect")] * 2   # /batch, /batch/job
    applied = tick(5, job_cpu=0.5, web_p99=6e-3)
    by = {(a.cgroup, a.knob): a for a in applied}
    assert by[("/batch/job", "cpu.idle")].rule == "latency-slo:web-slo"
    assert (job / "cpu.idle").read_text() == "1"
    for t in (6, 7, 8):                                         # 6 -> 4 ms: a third less, it helped
        applied = tick(t, job_cpu=0.5, web_p99=4e-3)
    assert slo.counts[("idle", "helped")] == 2
    applied = tick(9, job_cpu=0.5, web_p99=4e-3)                # one miss with it kept: no quota yet
    assert ("/batch/job", "cpu.max") not in {(a.cgroup, a.knob) for a in applied}
    applied = tick(10, job_cpu=0.5, web_p99=4e-3)               # the second in a row: the next rung, a quota
    by = {(a.cgroup, a.knob): a for a in applied}
    assert by[("/batch/job", "cpu.max")].rule == "latency-slo:web-slo"
    assert cpus_of(by[("/batch/job", "cpu.max")].value) < 0.5

    for t in range(11, 50):                                     # the hog is gone, the SLO holds
        applied = tick(t, job_cpu=0.1, web_p99=0.5e-3)
    # Quotas released; cpu.idle given back on trial once the SLO held (web
    # keeps it without it): released, the originals back while web runs.
    assert applied == [] and (job / "cpu.idle").read_text().strip() == "0"
    assert slo.counts[("idle", "released")] == 2
    assert (job / "cpu.max").read_text() == "max 100000"
    for t in range(50, 54):                                     # web stops: nothing to protect
        applied = tick(t, job_cpu=0.1, web_p99=float("nan"), web_cpu=0.0)
    assert applied == []
    assert (job / "cpu.weight").read_text() == "100"
    assert (job / "cpu.max").read_text() == "max 100000"
    assert (job / "io.max").read_text() == "254:0 rbps=max wbps=max riops=max wiops=max"


def cpus_of(text):
    quota, period = text.split()
    return int(quota) / int(period)
