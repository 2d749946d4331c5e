package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/stream/streamtest"
)

// inspect and restore read save files with the same validating reader:
// every broken file of the corpus is refused by both, each with one line
// on stderr and exit status 1, never a panic.
func TestBrokenSaveFilesCLI(t *testing.T) {
	kvmtest.Require(t) // restore creates a machine once the P2M is read
	dir := t.TempDir()
	for _, path := range streamtest.BrokenSaveFiles(t) {
		name := filepath.Base(path)
		for _, args := range [][]string{
			{"inspect", path},
			{"restore", "--runtime-dir", dir, "--name", "x", path},
		} {
			code, _, errs := runvm(t, args...)
			if code != exitError || strings.Count(errs, "\n") != 1 || strings.Contains(errs, "panic") {
				t.Errorf("%s %s: exit %d, stderr %q", args[0], name, code, errs)
			}
		}
	}
}
