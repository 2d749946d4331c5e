package main

import (
	"bytes"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/stream/streamtest"
)

// inspect never panics, and a file it accepts it lists to the end.
func FuzzInspect(f *testing.F) {
	// Prefixes of the good file and the broken corpus: whole 15 KiB seeds
	// slow Go's mutator (see FuzzReadSave).
	good := streamtest.Good()
	for _, n := range []int{200, 2000, len(good)} {
		f.Add(good[:n])
	}
	for _, c := range streamtest.Broken() {
		if len(c.Data) < 4096 {
			f.Add(c.Data)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var out bytes.Buffer
		if err := inspect(bytes.NewReader(b), &out); err == nil && !strings.Contains(out.String(), " pages, ") {
			t.Errorf("accepted, but the listing has no totals:\n%s", out.String())
		}
	})
}

// The good corpus file lists; each broken one is one error line.
func TestInspectCorpus(t *testing.T) {
	good, err := os.ReadFile(streamtest.GoodSaveFile(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := inspect(bytes.NewReader(good), io.Discard); err != nil {
		t.Fatalf("good file: %v", err)
	}
	for _, path := range streamtest.BrokenSaveFiles(t) {
		code, _, errs := runvm(t, "inspect", path)
		if code != exitError || strings.Count(errs, "\n") != 1 {
			t.Errorf("%s: exit %d %q", path, code, errs)
		}
	}
}

// A PV stream as Xen writes it lists without HVM_CONTEXT, and its
// page-table pages show their types and pins.
func TestInspectPageTypes(t *testing.T) {
	var out bytes.Buffer
	if err := inspect(bytes.NewReader(streamtest.GoodPV()), &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "; L4+pin 0x5") || strings.Contains(out.String(), "HVM_CONTEXT") {
		t.Errorf("listing:\n%s", out.String())
	}
}
