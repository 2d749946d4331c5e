package toolstack

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/stream/streamtest"
	"github.com/xenresume/xenresume/vmm/xenstore"
)

// Restore refuses every file of the broken-save corpus (truncations at
// every record boundary, flipped headers, bogus lengths, a short vCPU
// record, no libxl END, trailing bytes, ...) with one line that wraps
// stream.ErrFormat, the same reader inspect uses, and leaves nothing
// behind. The corpus's good file is a synthetic stream, not a suspended
// guest: restore refuses it too, at the first thing a guest needs.
func TestRestoreRejectsBrokenCorpus(t *testing.T) {
	kvmtest.Require(t)
	ts := New(nil)
	pv := filepath.Join(t.TempDir(), "pv.save")
	if err := os.WriteFile(pv, streamtest.GoodPV(), 0o644); err != nil {
		t.Fatal(err)
	}
	files := append(streamtest.BrokenSaveFiles(t), streamtest.GoodSaveFile(t), pv)
	for _, path := range files {
		_, err := ts.Restore(t.Context(), path, DomainConfig{Name: "x"})
		name := filepath.Base(path)
		switch {
		case err == nil:
			t.Errorf("%s: restored", name)
		case !errors.Is(err, stream.ErrFormat):
			t.Errorf("%s: %v does not wrap ErrFormat", name, err)
		case strings.Contains(err.Error(), "\n"):
			t.Errorf("%s: error of several lines: %q", name, err)
		}
	}
	ts.mu.Lock()
	n, r := len(ts.domains), len(ts.reserved)
	ts.mu.Unlock()
	if n != 0 || r != 0 {
		t.Errorf("%d domains and %d reserved names left", n, r)
	}
	for id := uint32(1); id <= uint32(len(files)); id++ {
		if _, err := ts.store.Read(xenstore.DomainPath(id)); err == nil {
			t.Errorf("xenstore nodes of domain %d left", id)
		}
	}
	// The name is free.
	if d, err := ts.Create(DomainConfig{Name: "x", MemSize: 16 << 20}); err != nil {
		t.Errorf("create after the refusals: %v", err)
	} else {
		d.Destroy()
	}
}
