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

export PATH="$PWD/.venv/bin:$PATH" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis
# -p no:cacheprovider: the checkout is read-only in here; -v: a line per test
# as it ends, for the host to stream.
python -m pytest -p no:cacheprovider -m "bpf or root" -v -ra \
  --junitxml="$out/junit.xml" $TAGGER_KERNEL_PYTEST_ARGS > "$out/pytest.log" 2>&1
rc=$?
echo "pytest exit code $rc"
umount "$data" 2>/dev/null
echo $rc > "$out/rc"
