"""deploy/daemonset.yaml as Kubernetes would run it: its args parse as `tagger
run` options, its mounts are where those options point, its rules ConfigMap
passes `tagger rules check` and tags the pods and containers of both kubelet
cgroup drivers (every runtime), and the export policy carries them all."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml

from tagger.publish.export import ExportPolicy
from tagger.cgroupglob import GlobSet
from tests.kubelet_fixture import DRIVERS, RUNTIMES, node_cgroups

REPO = Path(__file__).resolve().parent.parent
DAEMONSET = REPO / "deploy/daemonset.yaml"
PRIORITY = {"guaranteed": "high", "burstable": "normal", "besteffort": "low"}


@pytest.fixture(scope="module")
def manifests():
    docs = [d for d in yaml.safe_load_all(DAEMONSET.read_text()) if d]
    return {d["kind"]: d for d in docs}


@pytest.fixture(scope="module")
def agent(manifests):
    [container] = manifests["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    return container


def _run_options(agent) -> dict:
    """The container's args parsed by `tagger run`'s own click parser (as the
    kubelet passes them: $(VAR) expanded from the container's env)."""
    from tagger.cli.run import run

    env = {e["name"]: "10.0.0.7" for e in agent.get("env", [])}
    args = agent["args"]
    assert args[0] == "run"

    def expand(arg):
        for var in re.findall(r"\$\((\w+)\)", arg):
            assert var in env, f"{arg}: ${var} is not in the container's env"
            arg = arg.replace(f"$({var})", env[var])
        return arg

    ctx = run.make_context("run", [expand(a) for a in args[1:]])
    return ctx.params


def _mounts(manifests, agent) -> dict:
    """mountPath -> (host path or None, read-only)."""
    volumes = {v["name"]: v for v in manifests["DaemonSet"]["spec"]["template"]["spec"]["volumes"]}
    out = {}
    for m in agent["volumeMounts"]:
        host = volumes[m["name"]].get("hostPath", {}).get("path")
        out[m["mountPath"]] = (host, bool(m.get("readOnly")))
    return out


def test_args_are_tagger_run_options(manifests, agent):
    opts = _run_options(agent)
    mounts = _mounts(manifests, agent)
    assert opts["metrics"] == "10.0.0.7:9473"
    # Every directory an option names is mounted; the kubelet's logs read-only, from the host's same paths.
    assert opts["rules"] in mounts and opts["state_dir"] in mounts
    assert str(Path(opts["socket_path"]).parent) in mounts
    for sub in ("pods", "containers"):
        path = f"{opts['kubelet_logs']}/{sub}"
        assert mounts.get(path) == (path, True), path
    assert mounts["/sys"][0] == "/sys" and mounts["/sys/fs/cgroup"][0] == "/sys/fs/cgroup"
    # No export glob of one kubelet driver only: the default covers both.
    assert not opts["export"] or GlobSet(opts["export"]).match("/kubepods.slice/x") == \
        GlobSet(opts["export"]).match("/kubepods/x")


def test_bad_args_would_be_refused(agent):
    """The parser the test above relies on does refuse what `tagger run` would."""
    import click

    from tagger.cli.run import run
    with pytest.raises(click.UsageError):
        run.make_context("run", ["--no-such-option"])


def test_probe_and_image(manifests, agent):
    port = int(_run_options(agent)["metrics"].rsplit(":", 1)[1])
    for probe in ("livenessProbe", "startupProbe"):
        p = agent[probe]
        assert p["httpGet"] == {"path": "/healthz", "port": port}, probe
        assert 1 <= p["timeoutSeconds"] <= 5, probe
    assert agent["ports"][0]["containerPort"] == port
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    name, tag = agent["image"].rsplit(":", 1)
    assert name.rsplit("/", 1)[-1] == "tagger" and tag == version     # what `make image` builds


@pytest.fixture
def configmap_rules(manifests, tmp_path):
    d = tmp_path / "rules"
    d.mkdir(mode=0o755)
    for name, text in manifests["ConfigMap"]["data"].items():
        (d / name).write_text(text)
        (d / name).chmod(0o444)              # defaultMode, as the DaemonSet mounts it
    return d


def test_configmap_passes_rules_check(configmap_rules, manifests):
    res = subprocess.run([sys.executable, "-m", "tagger.cli.main", "rules", "check", "--no-ownership",
                          "--no-node", str(configmap_rules)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ok:" in res.stdout
    # The packaged QoS rules, verbatim: a change there must be made here too.
    assert manifests["ConfigMap"]["data"]["10-priority.yaml"] == (REPO / "rules/10-priority.yaml").read_text()


def test_configmap_tags_pods_and_containers_of_both_drivers(configmap_rules, tmp_path):
    """A `tagger rules test` file over a fixture node of each driver and
    runtime: after 11 s busy, every pod and container has its QoS tags and
    the ConfigMap's cpu-intensive tag."""
    cgroups, expect = {}, {}
    for driver in DRIVERS:
        for runtime in RUNTIMES:
            for e in node_cgroups(driver, runtime)[1]:
                cgroups[e.path] = {"cpu.usage": "0.95x13"}
                expect[e.path] = {"priority": PRIORITY[e.qos], "qos": e.qos, "resource": "cpu-intensive"}
    test_file = tmp_path / "daemonset-test.yaml"
    test_file.write_text(yaml.safe_dump({
        "rules": "rules", "interval": "1s",
        "tests": [{"name": "pods and containers of both drivers", "cgroups": cgroups,
                   "expect": [{"at": "11s", "tags": expect}]}],
    }))
    res = subprocess.run([sys.executable, "-m", "tagger.cli.main", "rules", "test", str(test_file)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed, 0 failed" in res.stdout


def test_export_policy_carries_every_pod_and_container(agent):
    """With the DaemonSet's --export (if any) and no CPU used, the default
    policy still exports every pod and container cgroup of both drivers."""
    from tagger.names import parse

    opts = _run_options(agent)
    for driver in DRIVERS:
        for runtime in RUNTIMES:
            paths, expected = node_cgroups(driver, runtime)
            noise = [f"/system.slice/s{i}.scope/x" for i in range(50)]
            policy = ExportPolicy(GlobSet(parse(g) for g in opts["export"]), top=opts["export_top"],
                                  cap=opts["export_cap"])
            all_paths = noise + paths
            rows, _ = policy.select(all_paths, {}, np.zeros(len(all_paths)))
            exported = {all_paths[i] for i in rows}
            missing = [e.path for e in expected if e.path not in exported]
            assert not missing, (driver, runtime, missing[:3])
