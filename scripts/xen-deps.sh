#!/usr/bin/env bash
# xen-deps.sh: fetch the Debian packages xenresume builds and tests against
# (Xen's public headers, readnotes, verify-stream-v2, the xenstore clients,
# ACPICA's iasl)
# and unpack them into a cache with `apt-get download` + `dpkg -x`, so nothing
# is installed system-wide and no Xen service is started.
#
# Usage: scripts/xen-deps.sh [CACHE_DIR]   (default: .cache/xen)
# Prints nothing on success when the cache is already complete.
set -euo pipefail
. "$(dirname "$0")/debs.sh"

cache=${1:-.cache/xen}
stamp="$cache/.complete"
pkgs=(
  libxen-dev xen-utils-4.17 xenstore-utils
  # runtime libraries of readnotes and the xenstore clients
  libxenmisc4.17 libxenstore4 libxencall1 libxentoollog1 libxenevtchn1
  libxenforeignmemory1 libxengnttab1 libxentoolcore1 libxendevicemodel1
  libxenhypfs1 libyajl2
  # iasl, which vmm/acpi's tests disassemble the HVM ACPI tables with
  acpica-tools
)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${pkgs[*]}" ]; then
  exit 0
fi

root="$cache/root"
unpack_debs xen-deps "$cache" "${pkgs[@]}"
test -f "$root/usr/include/xen/xen.h" || { echo "xen-deps: no xen/xen.h in libxen-dev" >&2; exit 1; }
echo "${pkgs[*]}" > "$stamp"
echo "xen-deps: unpacked ${#pkgs[@]} packages into $root" >&2
