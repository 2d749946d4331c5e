# debs.sh: sourced by xen-deps.sh and qemu-deps.sh, which unpack Debian
# packages into a cache without installing anything.

# unpack_debs NAME DIR PKG...: empties DIR/debs and DIR/root, downloads
# the PKGs into DIR/debs with `apt-get download` (running `apt-get update`
# once if that fails) and unpacks each with `dpkg -x` into DIR/root. On
# failure it says so, as NAME, and exits.
unpack_debs() {
  local name=$1 dir=$2
  shift 2
  local debs="$dir/debs" root="$dir/root" deb
  rm -rf "$root" "$debs"
  mkdir -p "$debs" "$root"
  if ! (cd "$debs" && apt-get download "$@" >/dev/null 2>&1); then
    echo "$name: apt-get download failed; running apt-get update once" >&2
    apt-get update >/dev/null
    (cd "$debs" && apt-get download "$@" >/dev/null 2>&1) || { echo "$name: cannot download $*" >&2; exit 1; }
  fi
  for deb in "$debs"/*.deb; do
    dpkg -x "$deb" "$root"
  done
}
