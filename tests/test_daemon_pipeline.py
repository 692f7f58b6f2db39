"""The agent's Pipeline on its own: what each tick hands its publishers and in
which order, a failing tick or publisher, and the dry-run actuator `tagger top`
runs it with (the daemon's wiring around it is in test_daemon.py)."""

from __future__ import annotations

import pytest

from tagger.agent.dryrun import DryRunActuator
from tagger.agent.pipeline import Pipeline
from tagger.publish.report import Health
from tagger.rules import Engine, load_text
from tagger.tags import TagStore
from tests.test_daemon import RULES, FakeCollector, RecordingActuator


class Recording:
    """A Publisher that keeps every report (and, if asked, fails each time)."""

    def __init__(self, name="recording", fail=False):
        self.name, self.fail, self.reports = name, fail, []

    def publish(self, report):
        self.reports.append(report)
        if self.fail:
            raise OSError("the far end went away")

    def close(self):
        pass


def _pipeline(collector, actuator, *publishers, **kw):
    store = TagStore(history=100)
    return Pipeline(collector, Engine(load_text(RULES), store), store, actuator, publishers=publishers, **kw)


def test_a_tick_hands_out_tags_first_then_actions_and_health():
    pub = Recording()
    actuator = RecordingActuator()
    pipeline = _pipeline(FakeCollector({"/hog": 1.5, "/calm": 0.1}), actuator, pub, interval=1.0)
    report = pipeline.tick()
    early, late = pub.reports
    # Tags and events go out before the actuator is called ...
    assert early.snapshot is report.snapshot and early.health is None and early.actions is None
    assert early.tags["/hog"]["resource"].value == "cpu-intensive"
    assert [(e.cgroup, e.kind) for e in early.events] == [("/hog", "added")]
    # ... then what the actuator holds and the health, once.
    assert late.snapshot is None and late.tags is None and late.events == []
    assert [(a.cgroup, a.knob, a.value) for a in late.actions] == [("/hog", "cpu.max", "50000 100000")]
    assert isinstance(late.health, Health) and late.health.ticks == 1 and late.health.cgroups == 2
    assert late.health.collector.bpf_ns_per_event == 75.0 and late.health.collector.ringbuf_drops == 3
    assert set(late.health.tick_stage_seconds) == {"collect", "rules", "publish", "actions"}
    assert report.events == early.events and report.actions == late.actions
    assert pipeline.last_error is None


def test_a_tick_cedes_its_cpu_between_stages(monkeypatch):
    """A task waiting for the CPU runs between the tick's stages, not after
    all of them (tagger.clock.cede; benchmarks/bench_cede.py measures it)."""
    import tagger.agent.pipeline as pipeline_module
    class Counting(RecordingActuator):
        applied = 0

        def apply(self, snapshot, desired):
            self.applied += 1
            return super().apply(snapshot, desired)

    calls = []
    actuator = Counting()
    monkeypatch.setattr(pipeline_module, "cede", lambda: calls.append(actuator.applied))
    pipeline = _pipeline(FakeCollector({"/hog": 1.5}), actuator, Recording(), interval=1.0)
    pipeline.tick()
    # after the rules, after collect and each later stage; the last after the actuator wrote
    assert len(calls) >= 4 and calls[0] == 0 and calls[-1] == 1
    # A replay (share_cpu=False) runs flat out.
    calls.clear()
    _pipeline(FakeCollector({"/hog": 1.5}), Counting(), share_cpu=False).tick()
    assert calls == []


def test_a_failing_tick_is_counted_and_its_health_still_published():
    class Failing(FakeCollector):
        def tick(self):
            raise ValueError("embedded null byte")

    pub = Recording()
    pipeline = _pipeline(Failing({}), RecordingActuator(), pub)
    report = pipeline.tick()
    assert isinstance(pipeline.last_error, ValueError)
    assert [r.health.tick_errors for r in pub.reports] == [1] and report.health.ticks == 0
    assert report.snapshot is None and pub.reports[0].snapshot is None


def test_a_failing_publisher_costs_neither_the_tick_nor_the_others():
    bad, good = Recording("bad", fail=True), Recording("good")
    pipeline = _pipeline(FakeCollector({"/hog": 1.5}), RecordingActuator(), bad, good)
    for _ in range(3):
        pipeline.tick()
    assert len(good.reports) == 6 and pipeline.cost.ticks == 3 and pipeline.cost.errors == 0


def test_replay_shape_decides_without_acting():
    """No actuator (``tagger replay``): tags and events, no actions."""
    report = _pipeline(FakeCollector({"/hog": 1.5}), None).tick()
    assert report.actions is None and report.tags["/hog"]["resource"].value == "cpu-intensive"


def test_dry_run_actuator_holds_since_while_asked_and_resets_after():
    collector = FakeCollector({"/hog": 1.5})
    pipeline = _pipeline(collector, DryRunActuator(), dry_run=True)
    first = pipeline.tick()
    (cap,) = first.actions
    assert (cap.knob, cap.value, cap.rule, cap.dry_run) == ("cpu.max", "50000 100000", "cap-hogs", True)
    assert cap.since == first.snapshot.t
    assert pipeline.tick().actions[0].since == first.snapshot.t       # held, not reset
    collector.usage["/hog"] = 0.1
    assert pipeline.tick().actions == []                              # no longer asked
    collector.usage["/hog"] = 1.5
    again = pipeline.tick()
    assert again.actions[0].since == again.snapshot.t                 # asked anew
    assert first.health.dry_run is True and first.health.journal_write_failures is None


@pytest.mark.parametrize("aset_yaml, knob, value", [
    ("cpu: {max: 0.25, period: 50ms}", "cpu.max", "12500 50000"),
    ("cpu: {weight: 20}", "cpu.weight", "20"),
    ("io: {device: '8:0', read_bps: 1048576}", "io.max 8:0", "rbps=1048576 wbps=max riops=max wiops=max"),
])
def test_dry_run_knob_text_is_the_kernels(aset_yaml, knob, value):
    rules = f"rules:\n  - name: r\n    match: {{cgroup: '/**'}}\n    actions:\n      {aset_yaml}\n"
    store = TagStore(history=10)
    pipeline = Pipeline(FakeCollector({"/a": 0.1}), Engine(load_text(rules), store), store, DryRunActuator())
    assert [(a.knob, a.value) for a in pipeline.tick().actions] == [(knob, value)]


def test_the_cgroups_whose_knobs_changed_are_read_again_at_the_next_tick():
    """The actuator changed /hog's cpu.max: the collector is told, so that a
    figure it reads only every few ticks (cpu.weight) is not seen at the
    value before the change; a tick that changes nothing tells it nothing."""
    collector = FakeCollector({"/hog": 1.5, "/calm": 0.1})
    pipeline = _pipeline(collector, RecordingActuator(), interval=1.0)
    pipeline.tick()
    assert collector.refreshed == [{"/hog"}]
    pipeline.tick()                                     # the same limit again
    assert collector.refreshed == [{"/hog"}]
    collector.usage["/hog"] = 0.0                       # the rule lets go: the knob goes back
    for _ in range(30):
        pipeline.tick()
        if len(collector.refreshed) > 1:
            break
    assert collector.refreshed[1:] == [{"/hog"}]
