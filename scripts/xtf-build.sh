#!/bin/sh
# xtf-build.sh SRC DIR: copy the XTF snapshot SRC to DIR when DIR is
# missing or out of date, and build it there (make -C DIR -j2).
#
# SRC stays untouched (CI sees it read-only). The copy is redone when SRC
# or DIR is not the one it was made from, or when a file in SRC is newer
# than the copy. XTF writes each test's .cfg at build time with its kernel
# path as $(xtfdir)/tests/NAME/test-ENV-NAME, and xtfdir defaults to the
# tree it is built in, so the built DIR runs as it is: no `make install`.
# Needs gcc, binutils, make and python3 (XTF's mkcfg.py).
set -eu
src=${1:?usage: xtf-build.sh SRC DIR}
dir=${2:?usage: xtf-build.sh SRC DIR}
if [ ! -f "$src/Makefile" ] || [ ! -d "$src/tests" ]; then
	echo "xtf-build: no XTF snapshot at $src (set XTF_SRC; see docs/XTF.md)" >&2
	exit 1
fi
src=$(cd "$src" && pwd)
mkdir -p "$(dirname "$dir")"
dir=$(cd "$(dirname "$dir")" && pwd)/$(basename "$dir")
case $dir in /|//*|"$src"|"$src"/*) echo "xtf-build: refusing to build in $dir" >&2; exit 1 ;; esac
stamp=$dir/.xenresume-copy
want="src=$src dir=$dir"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] ||
	[ -n "$(find "$src" -newer "$stamp" -print 2>/dev/null | head -n 1)" ]; then
	echo "xtf-build: copying $src to $dir"
	rm -rf "$dir"
	cp -R "$src" "$dir"
	chmod -R u+w "$dir"
	echo "$want" >"$stamp"
fi
log=$dir/.xenresume-build.log
if ! make -C "$dir" -j2 xtfdir="$dir" >"$log" 2>&1; then
	tail -n 30 "$log" >&2
	echo "xtf-build: building XTF in $dir failed (the whole log: $log)" >&2
	exit 1
fi
