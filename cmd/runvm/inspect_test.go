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

// inspect's flags: --help and -h print its usage on stdout and exit 0; a
// wrong argument count or an unknown flag is one usage line on stderr, and
// the file is never opened.
func TestInspectUsage(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		code int
		out  string // stdout's prefix
		errs string // in stderr
	}{
		{"--help", []string{"--help"}, 0, "usage: runvm inspect [flags] FILE\n", ""},
		{"-h", []string{"-h"}, 0, "usage: runvm inspect [flags] FILE\n", ""},
		{"no file", nil, exitUsage, "", "want FILE, got 0 argument(s)"},
		{"two files", []string{"a", "b"}, exitUsage, "", "want FILE, got 2 argument(s)"},
		{"bad flag", []string{"--bogus", "x"}, exitUsage, "", "not defined: -bogus"},
		{"missing file", []string{"/nonexistent/x.ck"}, exitError, "", "runvm inspect: open /nonexistent/x.ck: no such file or directory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out, errs := runvm(t, append([]string{"inspect"}, c.args...)...)
			if code != c.code || !strings.HasPrefix(out, c.out) || !strings.Contains(errs, c.errs) {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d, stdout %q..., stderr with %q", code, out, errs, c.code, c.out, c.errs)
			}
			if c.errs == "" && errs != "" || c.errs != "" && strings.Count(errs, "\n") != 1 {
				t.Errorf("stderr %q", errs)
			}
		})
	}
}
