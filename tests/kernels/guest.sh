#!/bin/sh
# Runs inside a kernel VM (tests/kernels/run.py boots it): the bpf and root
# tests of this checkout, on this kernel, with pure cgroup v2.
#   guest.sh OUT    OUT is shared with the host (vng --rwdir): env in, results out
# The root filesystem is the host's, read-only (/tmp, /var, ... are overlaid),
# so the checkout and .venv built on the host run unchanged.
set -u
out=$1
cd "$(dirname "$0")/../.."
exec > "$out/guest.log" 2>&1
. "$out/env"             # CI, TAGGER_*: what the host passes through
# The matrix exists to test the BPF side: a skipped bpf/root test fails here.
export TAGGER_REQUIRE_BPF=1
echo "kernel $(uname -r), $(nproc) CPUs"

# Pure v2: a controller acts on a cgroup only if every ancestor delegates it.
for c in cpu io cpuset memory pids; do
  echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control || echo "cannot delegate $c"
done
echo "delegated: $(cat /sys/fs/cgroup/cgroup.subtree_control)"

# O_DIRECT needs a real block device (tmpfs and overlayfs refuse or cache it):
# the host attached a scratch virtio disk for the tests' data files.
modprobe virtio_blk
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
data=/tmp/tagger-data
mkdir -p "$data"
if mkfs.ext4 -q -F /dev/vda && mount /dev/vda "$data"; then
  export TAGGER_TEST_DATA_DIR=$data
  echo "scratch disk: /dev/vda on $data"
else
  echo "scratch disk: unusable, data files go to /var/tmp"
fi

# TCG and live code patching: the first probe on a tracepoint flips its static
# key, rewriting a 5-byte NOP (in __schedule, for sched_switch) while the other
# vCPU may be running it.  Under multi-threaded TCG a vCPU can still execute the
# patch's int3 after the patch is done, and the guest panics (6.12 in CI:
# "RIP: __schedule+0x34e", "Code: ... 0f <1f> 44 00 00").  The tests attach and
# detach tagger's programs hundreds of times; an ftrace event on each hook,
# with tracing off, holds every key on for the whole run, so no attach patches
# kernel text.  The events record nothing (tracing_on 0).
tr=/sys/kernel/tracing
[ -e $tr/tracing_on ] || mount -t tracefs nodev $tr 2>/dev/null
if [ -w $tr/tracing_on ]; then
  echo 0 > $tr/tracing_on
  held=""
  for e in sched/sched_switch sched/sched_wakeup sched/sched_wakeup_new \
           block/block_rq_insert block/block_rq_issue block/block_rq_complete block/block_io_done \
           cgroup/cgroup_mkdir cgroup/cgroup_rmdir cgroup/cgroup_attach_task; do
    [ -e $tr/events/$e/enable ] && echo 1 > $tr/events/$e/enable && held="$held ${e#*/}"
  done
  echo "tracepoint keys held on:$held"
else
  echo "tracefs not writable: tracepoint keys not held (TCG text-patching panics possible)"
fi

export PATH="$PWD/.venv/bin:$PATH" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis
# -p no:cacheprovider: the checkout is read-only in here; -v: a line per test
# as it ends, for the host to stream.
python -m pytest -p no:cacheprovider -m "bpf or root" -v -ra \
  --junitxml="$out/junit.xml" $TAGGER_KERNEL_PYTEST_ARGS > "$out/pytest.log" 2>&1
rc=$?
echo "pytest exit code $rc"
umount "$data" 2>/dev/null
echo $rc > "$out/rc"
