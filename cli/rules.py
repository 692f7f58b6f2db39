"""``tagger rules check`` and ``tagger rules test``: validate and unit-test rules."""

from __future__ import annotations

import os
import sys

import click

from tagger.errors import RulesError


def _default_dir() -> str:
    from tagger.default_rules import DIRECTORY
    return str(DIRECTORY)


@click.group()
def rules():
    """Validate and unit-test a rules directory.

    \b
    A rules directory holds *.yaml files, loaded in name order, with
    `macros`, `rules` and `policies` (see docs/rules.md):
      rules:
        - name: cpu-intensive
          match: {cgroup: "/**", exclude: ["/system.slice/**"]}
          when: cpu.usage > 0.8
          for: 10s
          tags: {resource: cpu-intensive}

    \b
    `when` reads metrics (cpu.usage, runq.wait.foreign, ...), node.<metric>,
    macros and functions: min max abs, tag("key") == "value", and over the
    run-queue wait charged to whoever held the CPU:
      culprit_of_tagged("runq", "starved")   s/s of starved cgroups' wait it caused
      culprit_most("runq", "starved")        the top culprit of some starved cgroup
    (preempts_tagged / preempts_most: deprecated, by preemption count).
    """


@rules.command()
@click.argument("directory", required=False, metavar="[DIR]")
@click.option("-q", "--quiet", is_flag=True, help="Print errors only, no warnings or summary.")
@click.option("--ownership/--no-ownership", default=None,
              help="Check that root owns the rules and nobody else can write them, as `tagger "
                   "run` does as root [default: as root; otherwise the modes only].  "
                   "--no-ownership skips it (a checkout not yet installed).")
@click.option("--no-node", is_flag=True,
              help="Skip the checks against this node's CPUs and block devices "
                   "(rules meant for other machines).")
def check(directory, quiet, ownership, no_node):
    """Check every rule file in DIR (default: the packaged rules).

    \b
    Runs every check `tagger run` does: the rules themselves, the kernel's
    ranges (cpu quota >= 1ms, weight 1..10000, ...), the size limits, that
    root owns the files and nobody else can write them, and that the CPUs
    and devices the actions name exist on this node.
    Prints every problem as  path:line:col: rule "name": message
    Exit status: 0 clean (warnings allowed), 1 with errors.
    \b
    Examples:
      tagger rules check /etc/tagger/rules
      tagger rules check && sudo systemctl reload tagger
      tagger rules check --no-ownership --no-node ./rules    # a checkout, in CI
    """
    from tagger.rules import load_directory
    from tagger.rules.model import Problem, RulesLoadError
    from tagger.rules.node import NodeFacts
    from tagger.rules.ownership import ownership_problems

    directory = directory or _default_dir()
    problems = []
    if ownership is not False:
        # As root, what `tagger run` as root checks; otherwise the owner is the
        # invoker's checkout, and only the modes say whether others can write it.
        uid = 0 if ownership or os.geteuid() == 0 else None
        for p in ownership_problems(directory, uid):
            # a file's problem points at its first line, so editors jump to it
            line = 1 if p.path.endswith((".yaml", ".yml")) else 0
            problems.append(Problem(p.path, line, line, f"{p.message}: tagger run refuses rules "
                                    f"someone other than root could change" + (f" (fix: {p.fix})" if p.fix else "")))
    ruleset = None
    try:
        ruleset = load_directory(directory, node=None if no_node else NodeFacts())
        problems += ruleset.warnings
    except RulesLoadError as err:
        problems += err.problems
    problems.sort(key=lambda p: p.sort_key)
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        if not quiet or p.severity == "error":
            click.echo(str(p))
    if errors:
        n = len(errors)
        click.echo(f"{directory}: {n} error{'s' if n != 1 else ''}", err=True)
        sys.exit(1)
    if not quiet:
        n = len(ruleset.rules)
        w = len(ruleset.warnings)
        click.echo(f"{directory}: ok: {n} rule{'s' if n != 1 else ''}, {len(ruleset.macros)} "
                   f"macro{'s' if len(ruleset.macros) != 1 else ''}, {len(ruleset.policies)} "
                   f"polic{'ies' if len(ruleset.policies) != 1 else 'y'} in {len(ruleset.files)} "
                   f"file{'s' if len(ruleset.files) != 1 else ''}"
                   + (f" ({w} warning{'s' if w != 1 else ''})" if w else ""))


@rules.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False), metavar="FILE...")
@click.option("--rules", "rules_dir", metavar="DIR",
              help="Test these rules instead of the directory each file names.")
def test(files, rules_dir):
    """Run rule unit tests, like `promtool test rules`.

    \b
    A test file names a rules directory, a tick interval, input series per
    cgroup and the tags expected at given times:
      rules: ..                # relative to the test file
      interval: 1s
      tests:
        - name: busy for 10s is cpu-intensive
          cgroups:
            /kubepods/burstable/pod1/web:
              cpu.usage: 0.2 0.9x12 0.3     # VxN repeats V N times; _ is missing
          expect:
            - at: 11s
              tags:
                /kubepods/burstable/pod1/web: {resource: cpu-intensive}
    \b
    Prints each difference; exit status 1 if any test fails, 2 if a file cannot run.
    Example:  tagger rules test rules/tests/*.yaml
    """
    from tagger.rules import load_directory
    from tagger.rules.ruletest import RuleTestError, run_file

    ruleset = None
    if rules_dir:
        try:
            ruleset = load_directory(rules_dir)
        except RulesError as err:
            click.echo(str(err), err=True)
            sys.exit(2)
    passed = failed = 0
    broken = False
    for f in files:
        try:
            results = run_file(f, ruleset)
        except RuleTestError as err:
            click.echo(f"ERROR {err}", err=True)
            broken = True
            continue
        for r in results:
            if r.ok:
                passed += 1
            else:
                failed += 1
                click.echo(f'FAIL {r.file}: test "{r.name}"')
                for line in r.failures:
                    click.echo(f"  {line}")
    click.echo(f"{passed} passed, {failed} failed" + (", some files could not run" if broken else ""))
    if broken:
        sys.exit(2)
    if failed:
        sys.exit(1)
