#!/usr/bin/env bash
# The README's runvm walkthrough as a test: it runs every command of the
# block between <!-- walkthrough --> and <!-- /walkthrough --> in README.md,
# in order, in one shell, against a fresh runtime directory and working
# directory, and checks that each command prints exactly the lines the
# README shows under it (a command with no lines under it is not checked
# for output). Any command that fails fails the walkthrough.
#
#   scripts/walkthrough.sh [RUNVM]     (default: bin/runvm, which make builds)
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
runvm=$(cd "$(dirname "${1:-$top/bin/runvm}")" && pwd)/$(basename "${1:-bin/runvm}")
[ -x "$runvm" ] || { echo "walkthrough: $runvm is not built (make bin/runvm)"; exit 1; }
xen="${XENRESUME_XEN_ROOT:-$top/.cache/xen/root}"
[ -x "$xen/usr/bin/xenstore-write" ] || { echo "walkthrough: Xen's clients are missing (make deps)"; exit 1; }

work=$(mktemp -d)
export XENRESUME_RUNTIME_DIR="$work/run"
# What the README's setup block exports.
bindir="$work/bin"
mkdir -p "$bindir" && ln -s "$runvm" "$bindir/runvm"
export PATH="$bindir:$xen/usr/bin:$PATH" LD_LIBRARY_PATH="$xen/usr/lib/x86_64-linux-gnu"
cleanup() {
  # Anything the walkthrough left running is a failure already reported;
  # do not leave it behind.
  pkill -KILL -f "$bindir/runvm" 2>/dev/null
  jobs -p | xargs -r kill -KILL 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work" || exit 1

# The block: "$ command" lines, each followed by the lines it prints.
# A comment after two spaces and '#' is the README's, not the command's.
block=$(sed -n '/^<!-- walkthrough -->$/,/^<!-- \/walkthrough -->$/p' "$top/README.md" | sed '/^<!--/d; /^```/d')
[ -n "$block" ] || { echo "walkthrough: no walkthrough block in README.md"; exit 1; }

pass=0 fail=0
cmd="" expected=()
check() {
  [ -n "$cmd" ] || return 0
  local out rc
  # In this shell, not a subshell: its jobs and exports carry on.
  eval "$cmd" >"$work/stdout" 2>"$work/stderr"; rc=$?
  out=$(cat "$work/stdout")
  if [ $rc -ne 0 ]; then
    echo "FAIL: \$ $cmd"; echo "  exit $rc; stderr:"; sed 's/^/    /' "$work/stderr"
    fail=$((fail + 1)); return
  fi
  if [ ${#expected[@]} -gt 0 ]; then
    local want
    want=$(printf '%s\n' "${expected[@]}")
    if [ "$out" != "$want" ]; then
      echo "FAIL: \$ $cmd"
      diff <(echo "$want") <(echo "$out") | sed 's/^/  /'
      fail=$((fail + 1)); return
    fi
  fi
  echo "ok:   \$ $cmd"
  pass=$((pass + 1))
}
while IFS= read -r line; do
  if [[ "$line" == '$ '* ]]; then
    check
    cmd=${line#'$ '}
    cmd=$(sed -E 's/[[:space:]]{2,}#.*$//' <<<"$cmd")
    expected=()
  elif [ -n "$line" ]; then
    expected+=("$line")
  fi
done <<<"$block"
check
# A background job still running is a walkthrough that does not finish.
if [ -n "$(jobs -rp)" ]; then
  echo "FAIL: the walkthrough left runvm running"; fail=$((fail + 1))
fi
echo "walkthrough: $pass passed, $fail failed"
[ $fail -eq 0 ]
