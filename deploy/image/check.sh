#!/usr/bin/env bash
# Run a tagger command from the image's root filesystem with the host's /sys
# and /proc, as deploy/daemonset.yaml gives them to the container (/sys with
# cgroupfs, BTF, bpffs and debugfs under it; hostPID's /proc; privileged's
# /dev).  Containers cannot be run on these machines (crun's setrlimit is
# refused by the sandbox), so the image is mounted (podman image mount) and
# entered with chroot instead.  See docs/image.md.
#
#   deploy/image/check.sh IMAGE [TAGGER_ARGS...]     (default: doctor)
#   deploy/image/check.sh --exec IMAGE COMMAND...    any command in the root
#
# The exit status is the command's (doctor: 0 BPF, 1 fallback, 2 cannot run).
set -euo pipefail

entry=(/opt/tagger/bin/tagger)
if [ "${1:-}" = --exec ]; then entry=(); shift; fi
if [ $# -lt 1 ]; then
  echo "usage: $0 IMAGE [TAGGER_ARGS...]   or   $0 --exec IMAGE COMMAND..." >&2
  exit 2
fi
image=$1; shift
args=("$@")
[ ${#entry[@]} -eq 0 ] || [ ${#args[@]} -gt 0 ] || args=(doctor)
[ ${#entry[@]} -gt 0 ] || [ ${#args[@]} -gt 0 ] || { echo "$0: --exec needs a command" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "image-check: needs root (podman image mount, chroot)" >&2; exit 1; }
podman image exists "$image" || { echo "image-check: no image $image (make image builds it)" >&2; exit 1; }

trap 'exit 130' INT
trap 'exit 143' TERM
root=$(podman image mount "$image")
trap 'podman image unmount "$image" >/dev/null' EXIT

# The bind mounts live in a mount namespace of their own, which dies with the
# command: however it ends, they go with it, and none is ever visible outside.  Slave propagation: unmounting the copies
# could otherwise propagate to the host's own /sys/fs/cgroup where /sys is
# shared.  --rbind brings what is mounted under them: cgroupfs, BTF, bpffs and
# debugfs under /sys (the DaemonSet's sys, bpffs and debugfs volumes), the
# host's /dev (privileged).
unshare --mount --propagation slave -- /bin/sh -ec '
  root=$1; shift
  for m in sys proc dev; do
    mount --rbind "/$m" "$root/$m"
    mount --make-rslave "$root/$m"
  done
  exec chroot "$root" "$@"
' sh "$root" "${entry[@]}" "${args[@]}" <&0 &
child=$!
# In the background so that a signal to this script is handled at once: it is
# passed on, and the image is unmounted once the command has gone.
trap 'kill -TERM "$child" 2>/dev/null || true' INT TERM
rc=0
while :; do
  wait "$child" && rc=0 || rc=$?
  kill -0 "$child" 2>/dev/null || break
done
exit $rc
