"""Boot each kernel of the matrix under qemu (virtme-ng, TCG) and run the bpf
and root tests inside it (tests/kernels/guest.sh); exit non-zero if any kernel
fails or its guest dies without a result.  A guest whose kernel panics is
booted once more (TCG's code-patching races can kill a healthy run; see
guest.sh); both attempts are reported.

    python tests/kernels/run.py [--kernels DIR] [--timeout S] [VERSION-PREFIX ...]

Each kernel gets a scratch directory shared with the guest (vng --rwdir) and a
sparse scratch disk; both are removed afterwards, and qemu never outlives its
kernel's time limit.  The guest's pytest log and junit xml are kept in
<kernels>/results/<version>/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUEST = REPO / "tests" / "kernels" / "guest.sh"
# Environment the guest's tests see as on the host (vng does not pass it).
PASSED_THROUGH = ("CI", "TAGGER_CHECK_BPF_LEAKS", "TAGGER_KERNEL_PYTEST_ARGS")
DISK_BYTES = 4 << 30     # sparse: only what the tests write takes host space


def kernels(root: Path, prefixes: list[str]) -> list[Path]:
    found = sorted(p for p in root.glob("*/boot/vmlinuz-*"))
    if prefixes:
        found = [p for p in found if any(_matches(p.name.removeprefix("vmlinuz-"), x) for x in prefixes)]
    return found


def _matches(version: str, prefix: str) -> bool:
    """"6.1" picks 6.1.0-54-amd64, not 6.12.95."""
    return version.startswith(prefix) and version[len(prefix):len(prefix) + 1] in ("", ".", "-", "+")


def vng_command(vmlinuz: Path, out: Path, disk: Path) -> list[str]:
    # KVM does not work on these machines: TCG, two vCPU threads.  --force-9p:
    # Debian 12's virtiofsd does not speak virtme-ng's command line.
    qemu = f"-accel tcg,thread=multi -drive file={disk},if=virtio,format=raw"
    return ["vng", "--run", str(vmlinuz), "--disable-kvm", "--force-9p",
            "--cpus", "2", "--memory", "3G", "--verbose", f"--rwdir={out}",
            f"--qemu-opts={qemu}", "--", str(GUEST), str(out)]


class Tail:
    """Prints the lines a file gains, as it gains them."""

    def __init__(self, path: Path, prefix: str):
        self.path, self.prefix, self.pos, self.partial = path, prefix, 0, ""

    def poll(self):
        try:
            with open(self.path) as f:
                f.seek(self.pos)
                chunk = f.read()
                self.pos = f.tell()
        except FileNotFoundError:
            return
        lines = (self.partial + chunk).split("\n")
        self.partial = lines.pop()
        for line in lines:
            print(self.prefix + line, flush=True)


def run_kernel(vmlinuz: Path, results: Path, timeout: float) -> tuple[bool, str, bool]:
    """Boot one kernel, run the tests; (passed, one-line verdict, kernel panicked)."""
    ver = vmlinuz.name.removeprefix("vmlinuz-")
    scratch = Path(tempfile.mkdtemp(prefix=f"run-{ver}-", dir=results.parent))
    out = scratch / "out"
    out.mkdir()
    disk = scratch / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(DISK_BYTES)
    with open(out / "env", "w") as f:
        for name in PASSED_THROUGH:
            f.write(f"export {name}='{os.environ.get(name, '')}'\n")
    env = dict(os.environ, PATH=f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}")
    console = scratch / "console.log"
    started = time.monotonic()
    tails = [Tail(out / "guest.log", f"  [{ver}] "), Tail(out / "pytest.log", f"  [{ver}] ")]
    try:
        with open(console, "w") as con:
            # Its own session, so the whole tree (vng, qemu) is killed by its id.
            vm = subprocess.Popen(vng_command(vmlinuz, out, disk), cwd=REPO, env=env,
                                  stdin=subprocess.DEVNULL, stdout=con, stderr=subprocess.STDOUT,
                                  start_new_session=True)
            booted = False
            try:
                while vm.poll() is None:
                    if not booted and (out / "guest.log").exists():
                        booted = True
                        print(f"== {ver}: guest up after {time.monotonic() - started:.0f}s", flush=True)
                    if time.monotonic() - started > timeout:
                        print(f"== {ver}: still running after {timeout:.0f}s: killing qemu", flush=True)
                        break
                    for t in tails:
                        t.poll()
                    time.sleep(1)
            finally:
                if vm.poll() is None:
                    os.killpg(vm.pid, signal.SIGKILL)
                vm.wait()
        for t in tails:
            t.poll()
        wall = time.monotonic() - started
        shutil.rmtree(results / ver, ignore_errors=True)
        (results / ver).mkdir(parents=True)
        for name in ("guest.log", "pytest.log", "junit.xml"):
            if (out / name).exists():
                shutil.copy(out / name, results / ver / name)
        shutil.copy(console, results / ver / "console.log")
        rc = (out / "rc").read_text().strip() if (out / "rc").exists() else None
        if rc is None:
            text = console.read_text(errors="replace")
            print(f"== {ver}: the guest left no exit code; last console lines:")
            print("\n".join(text.splitlines()[-30:]))
            panicked = "Kernel panic" in text
            why = "kernel panic" if panicked else "guest died or timed out"
            return False, f"{ver}: no result ({why}) after {wall:.0f}s", panicked
        return rc == "0", f"{ver}: pytest exit code {rc}, {wall:.0f}s", False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", type=Path, default=REPO / ".kernels")
    ap.add_argument("--timeout", type=float, default=30 * 60, help="seconds per kernel (default 1800)")
    ap.add_argument("versions", nargs="*", help="version prefixes, e.g. 6.1 (default: all)")
    args = ap.parse_args(argv)
    # A stopped run (CI's cancel, make's ^C) still kills its VM: SIGTERM
    # unwinds through run_kernel's cleanup like KeyboardInterrupt does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    chosen = kernels(args.kernels, args.versions)
    if not chosen:
        print(f"no kernel matching {args.versions or 'anything'} under {args.kernels}", file=sys.stderr)
        return 2
    verdicts = []
    for vmlinuz in chosen:
        ver = vmlinuz.name.removeprefix("vmlinuz-")
        print(f"== {ver}: booting", flush=True)
        ok, line, panicked = run_kernel(vmlinuz, args.kernels / "results", args.timeout)
        print(f"== {line}", flush=True)
        if panicked:
            # The first console is kept: the second attempt's logs replace it.
            results = args.kernels / "results"
            shutil.copy(results / ver / "console.log", results / f"{ver}.panic-console.log")
            print(f"== {ver}: the guest kernel panicked; booting it once more", flush=True)
            first = line
            ok, line, _ = run_kernel(vmlinuz, results, args.timeout)
            print(f"== {line}", flush=True)
            line = f"{line} (second boot; the first: {first})"
        verdicts.append((ok, line))
    print("\nkernel matrix:")
    for ok, line in verdicts:
        print(f"  {'PASS' if ok else 'FAIL'}  {line}")
    return 0 if all(ok for ok, _ in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
