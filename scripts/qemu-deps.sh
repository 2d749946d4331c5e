#!/usr/bin/env bash
# qemu-deps.sh: fetch Debian's qemu-system-x86 (the peer `make bench-peers`
# measures against) with the libraries and firmware it needs that are not
# part of a minimal system, and unpack them into a cache with
# `apt-get download` + `dpkg -x`, as xen-deps.sh does: nothing is installed
# system-wide. A qemu-system-x86_64 already on PATH is used as it is.
#
# Usage: scripts/qemu-deps.sh [CACHE_DIR]   (default: .cache/qemu)
# Prints, on stdout, the variables cmd/benchpeers reads (for `env`): QEMU,
# the qemu-system-x86_64 to run, and for an unpacked one
# QEMU_LD_LIBRARY_PATH (its libraries, set for QEMU alone) and
# QEMU_DATADIR (its firmware directories, passed as -L) and
# QEMU_MODULE_DIR (its loadable modules, TCG's among them, which QEMU
# reads from the environment).
set -euo pipefail
. "$(dirname "$0")/debs.sh"

cache=${1:-.cache/qemu}
if command -v qemu-system-x86_64 >/dev/null 2>&1; then
  echo "QEMU=$(command -v qemu-system-x86_64)"
  exit 0
fi
stamp="$cache/.complete"
# qemu-system-x86's Depends (apt-cache depends qemu-system-x86, Debian 12),
# and theirs where a minimal system lacks them; all are unpacked, so what
# the system already has is simply shadowed by the same version.
pkgs=(
  qemu-system-x86 qemu-system-common qemu-system-data seabios
  libaio1 libcapstone4 libfdt1 libfuse3-3 libibverbs1 libpmem1 librdmacm1
  libslirp0 liburing2 libvdeplug2 libnl-3-200 libnl-route-3-200
  libndctl6 libdaxctl1 libkmod2
)

root="$cache/root"
if ! [ -f "$stamp" ] || [ "$(cat "$stamp")" != "${pkgs[*]}" ]; then
  unpack_debs qemu-deps "$cache" "${pkgs[@]}"
  test -x "$root/usr/bin/qemu-system-x86_64" || { echo "qemu-deps: no qemu-system-x86_64 in qemu-system-x86" >&2; exit 1; }
  echo "${pkgs[*]}" > "$stamp"
  echo "qemu-deps: unpacked ${#pkgs[@]} packages into $root" >&2
fi
root=$(cd "$root" && pwd)
echo "QEMU=$root/usr/bin/qemu-system-x86_64 QEMU_LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu QEMU_DATADIR=$root/usr/share/qemu:$root/usr/share/seabios QEMU_MODULE_DIR=$root/usr/lib/x86_64-linux-gnu/qemu"
