#!/usr/bin/env bash
# Fetch the kernels of the matrix from Debian's own packages into $1
# (default .kernels/): 6.1 from bookworm, 6.12 from bookworm-backports.
# The host's apt configuration is never changed: backports is read through a
# temporary sources list and state directories of our own.
set -euo pipefail
dest=${1:-.kernels}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
tmp=$dest/apt
# The kernels of the matrix; the package names pin the exact ABI tested.
BOOKWORM=linux-image-6.1.0-54-amd64-unsigned
BACKPORTS=linux-image-6.12.95+deb12-amd64-unsigned

mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
# bookworm's kernel updates come through bookworm-security.
sec=${mirror%/debian}/debian-security
{ echo "deb $mirror bookworm main"
  echo "deb $sec bookworm-security main"
  echo "deb $mirror bookworm-backports main"; } > "$tmp/sources.list"
A=(-o Dir::Etc::sourcelist="$tmp/sources.list" -o Dir::Etc::sourceparts=/dev/null
   -o Dir::State::Lists="$tmp/lists" -o Dir::Cache="$tmp/cache")

for pkg in $BOOKWORM $BACKPORTS; do
  ver=${pkg#linux-image-}; ver=${ver%-unsigned}
  # Kept as the package lays it out: virtme-ng finds the modules of
  # <root>/boot/vmlinuz-<ver> in <root>/lib/modules/<ver>.
  if [ -e "$dest/$ver/boot/vmlinuz-$ver" ]; then echo "kernel $ver: cached"; continue; fi
  if [ ! -e "$tmp/updated" ]; then
    echo "apt: reading bookworm and bookworm-backports indexes (temporary lists in $tmp)"
    apt-get "${A[@]}" update -qq
    touch "$tmp/updated"
  fi
  echo "kernel $ver: downloading $pkg"
  (cd "$tmp" && apt-get "${A[@]}" download -qq "$pkg" 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
  rm -rf "$dest/$ver.x" && mkdir -p "$dest/$ver.x"
  dpkg-deb -x "$tmp/${pkg}_"*.deb "$dest/$ver.x"
  rm -rf "$dest/$ver" && mv "$dest/$ver.x" "$dest/$ver"
  rm -f "$tmp"/*.deb
  echo "kernel $ver: $dest/$ver/boot/vmlinuz-$ver"
done
