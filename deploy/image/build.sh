#!/usr/bin/env bash
# Build the OCI image of tagger without a registry base image (none is
# reachable from these machines): a Debian bookworm root from debootstrap
# (minbase) with python3 and the libraries the native extension links, the
# project's wheel and its dependencies in a venv at /opt/tagger, imported by
# podman.  See docs/image.md.
#
#   deploy/image/build.sh CACHE_DIR IMAGE PYTHON
#   e.g.  deploy/image/build.sh .image localhost/tagger:0.1.0 .venv/bin/python
#
# PYTHON is the checkout's venv (tagger installed in it, native module built):
# it builds the wheel.  Three caches under CACHE_DIR, each rebuilt only when
# its key changes, so a rebuild after a code change only reinstalls the wheel:
#   base/     the debootstrap root, trimmed     key: suite, mirror, packages
#   wheels/   the dependencies' wheels          key: base, pyproject.toml
#   root/     base/ + /opt/tagger with the dependencies; tagger's wheel is
#             (re)installed into it and the tree imported
# Each is made in a temp directory and moved into place when complete: an
# interrupted build never leaves a half-made cache behind.
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 CACHE_DIR IMAGE PYTHON" >&2
  exit 2
fi
cache=$1 image=$2 python=$3
[ "$(id -u)" = 0 ] || { echo "image: needs root (debootstrap, chroot, podman)" >&2; exit 1; }
for tool in debootstrap podman; do
  command -v $tool >/dev/null || { echo "image: $tool is missing (make image installs it)" >&2; exit 1; }
done
repo=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
start=$SECONDS
step() { echo "image: $* ($((SECONDS - start)) s)"; }

# One build at a time per cache.
exec 9>"$cache/lock"
flock -n 9 || { step "waiting for another build in $cache"; flock 9; }

# Temp trees are removed on every exit path; a failed step leaves the caches
# that were complete before it.
tmps=()
cleanup() { local t; for t in "${tmps[@]}"; do rm -rf "$t"; done; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
newtmp() { tmp=$(mktemp -d "$cache/$1.XXXXXX"); tmps+=("$tmp"); }

# pip, setuptools and debootstrap are chatty (index warnings, packaging notes):
# their output goes to a log, shown when they fail.
log=$cache/build.log
: > "$log"
logged() {
  echo "+ $*" >> "$log"
  "$@" >> "$log" 2>&1 || { echo "image: failed: $*; the end of $log:" >&2; tail -25 "$log" >&2; exit 1; }
}

# --- what goes into the root -----------------------------------------------------
SUITE=bookworm          # the host's release: python3 3.11, the wheel's ABI
mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

# The Debian packages of the libraries the built extension links (libbpf1,
# libelf1, zlib1g, libc6), found with ldd and dpkg on this Debian host, so a
# new link dependency reaches the image without a list to keep in step.
native=$("$python" -c 'import tagger.native._native as m; print(m.__file__)')
packages="python3"
for lib in $(ldd "$native" | awk '$2 == "=>" && $3 ~ /^\// {print $3}'); do
  real=$(readlink -f "$lib")
  pkg=""
  for path in "$lib" "$real" "${real#/usr}" "/usr$lib"; do
    pkg=$(dpkg-query -S "$path" 2>/dev/null | head -1 | cut -d: -f1) && [ -n "$pkg" ] && break
  done
  [ -n "$pkg" ] || { echo "image: no Debian package holds $lib (linked by $native)" >&2; exit 1; }
  case " $packages " in *" $pkg "*) ;; *) packages="$packages $pkg" ;; esac
done

# --- 1. the Debian root ------------------------------------------------------------
base_key="$SUITE minbase $mirror $packages"
if [ "$(cat "$cache/base.key" 2>/dev/null)" != "$base_key" ] || [ ! -d "$cache/base" ]; then
  step "debootstrap $SUITE (minbase) + $packages from $mirror"
  rm -rf "$cache/base" "$cache/base.key"
  newtmp base
  logged debootstrap --variant=minbase --include="${packages// /,}" "$SUITE" "$tmp" "$mirror"
  # Small: no apt lists or downloaded .debs, no docs, man pages or locales
  # (dpkg's path-exclude keeps them out of anything installed later).  The
  # host's name and resolver, which debootstrap copies in, are the runtime's.
  rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/*.bin "$tmp"/var/cache/apt/archives/*.deb \
         "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/* "$tmp"/usr/share/info/* \
         "$tmp"/usr/share/locale/* "$tmp"/usr/share/lintian "$tmp"/var/log/*.log "$tmp"/debootstrap
  cat > "$tmp/etc/dpkg/dpkg.cfg.d/01-tagger-image-small" <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
  rm -f "$tmp/etc/resolv.conf" "$tmp/etc/hostname"
  mv "$tmp" "$cache/base"
  echo "$base_key" > "$cache/base.key"
else
  step "Debian root: cached ($cache/base)"
fi

# --- 2. tagger's wheel, and its dependencies' --------------------------------------
step "wheel of tagger from $repo"
newtmp tagger-wheel
logged "$python" -m pip wheel --disable-pip-version-check --no-deps --no-build-isolation -w "$tmp" "$repo"
wheel=$(ls "$tmp"/tagger-*.whl)
"$python" - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
if not any(n.startswith("tagger/native/_native.") and n.endswith(".so") for n in names):
    sys.exit(f"image: {sys.argv[1]} has no compiled tagger/native/_native*.so")
EOF

# The dependencies are resolved by the root's own python3 (run from here, with
# this machine's pip configuration), not the venv's: markers such as redis's
# python_full_version < "3.11.3" must see Debian's 3.11.2.  pip itself comes as
# a wheel and runs from it, so the root holds neither pip nor a compiler.
wheels_key="$base_key $(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$cache/wheels.key" 2>/dev/null)" != "$wheels_key" ] || [ ! -d "$cache/wheels" ]; then
  step "wheels of tagger's dependencies for the root's $("$cache/base/usr/bin/python3" -V)"
  rm -rf "$cache/wheels" "$cache/wheels.key"
  newtmp wheels
  logged "$python" -m pip download --disable-pip-version-check --no-deps --only-binary :all: -d "$tmp/pip" pip
  pipwhl=$(ls "$tmp"/pip/pip-*.whl)
  logged "$cache/base/usr/bin/python3" -B "$pipwhl/pip" wheel --disable-pip-version-check -w "$tmp/deps" "$wheel"
  rm -f "$tmp"/deps/tagger-*.whl
  mv "$tmp" "$cache/wheels"
  echo "$wheels_key" > "$cache/wheels.key"
else
  step "dependency wheels: cached ($cache/wheels)"
fi

# Commands in the root see none of this machine's environment (PIP_*, PYTHON*).
inroot() { env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin chroot "$@"; }

# pip from its wheel, inside the root, from the wheels copied into its /tmp
# (removed before the import); no index.
pip_in() {
  local root=$1; shift
  local pipwhl; pipwhl=$(cd "$cache/wheels/pip" && ls pip-*.whl)
  logged inroot "$root" /opt/tagger/bin/python \
    "/tmp/wheels/pip/$pipwhl/pip" install --disable-pip-version-check --no-cache-dir --no-index \
    --root-user-action=ignore "$@"
}
stage_wheels() {
  tmps+=("$1/tmp/wheels")
  rm -rf "$1/tmp/wheels"
  cp -r "$cache/wheels" "$1/tmp/wheels"
  cp "$wheel" "$1/tmp/wheels/"
}

# --- 3. the venv with the dependencies ------------------------------------------
root_key=$wheels_key
if [ "$(cat "$cache/root.key" 2>/dev/null)" != "$root_key" ] || [ ! -d "$cache/root" ]; then
  step "venv /opt/tagger with the dependencies"
  rm -rf "$cache/root" "$cache/root.key"
  newtmp root
  cp -a "$cache/base/." "$tmp/"
  logged inroot "$tmp" python3 -m venv --without-pip /opt/tagger
  stage_wheels "$tmp"
  pip_in "$tmp" $(cd "$tmp/tmp/wheels/deps" && printf '/tmp/wheels/deps/%s ' *.whl)
  rm -rf "$tmp/tmp/wheels"
  # The dependencies' own test suites (numpy's: 17 MB) are never imported.
  find "$tmp/opt/tagger/lib" -path '*/site-packages/*' -type d -name tests -prune -exec rm -rf {} +
  mv "$tmp" "$cache/root"
  echo "$root_key" > "$cache/root.key"
else
  step "venv with the dependencies: cached ($cache/root)"
fi

# --- 4. tagger itself --------------------------------------------------------------
root=$cache/root
step "installing ${wheel##*/} into /opt/tagger"
stage_wheels "$root"
# --no-index with the wheels at hand: a dependency added since the venv was
# made fails here rather than being fetched behind the cache's back.
pip_in "$root" --force-reinstall --no-deps "/tmp/wheels/${wheel##*/}"
pip_in "$root" --find-links /tmp/wheels/deps "/tmp/wheels/${wheel##*/}"
rm -rf "$root/tmp/wheels"
ln -sfn /opt/tagger/bin/tagger "$root/usr/local/bin/tagger"
# The extension loads against the root's own libbpf, libelf and zlib.
inroot "$root" /opt/tagger/bin/python -c 'import tagger.native._native' || {
  echo "image: tagger's native module does not load in the root" >&2; exit 1; }
version=$(inroot "$root" /opt/tagger/bin/python -c 'import tagger; print(tagger.__version__)')

# --- 5. import ---------------------------------------------------------------------
step "podman import as $image"
old=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
new=$(tar --numeric-owner --xattrs -C "$root" -cf - . | podman import -q \
  --change 'ENTRYPOINT ["/opt/tagger/bin/tagger"]' \
  --change 'CMD ["run"]' \
  --change 'ENV PATH=/opt/tagger/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'WORKDIR /' \
  --change 'EXPOSE 9473/tcp' \
  --change 'STOPSIGNAL SIGTERM' \
  --change "LABEL org.opencontainers.image.title=tagger" \
  --change "LABEL org.opencontainers.image.version=$version" \
  --message "tagger $version: Debian $SUITE minbase ($packages), ${wheel##*/}" \
  - "$image")
new=${new#sha256:}
# The previous build, now untagged, would only take space.
if [ -n "$old" ] && [ "$old" != "$new" ]; then
  podman rmi -f "$old" >/dev/null 2>&1 || true
fi
size=$(podman image inspect --format '{{.Size}}' "$image")
step "built $image (${new:0:12}, $((size / 1000000)) MB)"
