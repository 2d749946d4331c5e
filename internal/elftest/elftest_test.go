package elftest_test

import (
	"testing"

	"github.com/xenresume/xenresume/guest"
	"github.com/xenresume/xenresume/internal/elftest"
)

// The stub guest's entry point is its _start symbol.
func TestSymbol(t *testing.T) {
	if got := elftest.Symbol(t, guest.Image, "_start"); got == 0 {
		t.Fatal("_start at 0")
	}
}

// A missing symbol and a non-ELF image fail the test.
func TestSymbolFails(t *testing.T) {
	for _, tc := range []struct {
		name, sym string
		img       []byte
	}{
		{"no such symbol", "no_such_symbol_here", guest.Image},
		{"not ELF", "_start", []byte("not an ELF file")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ft := &fakeTB{TB: t}
			func() {
				defer func() { recover() }()
				elftest.Symbol(ft, tc.img, tc.sym)
			}()
			if !ft.failed {
				t.Errorf("Symbol(%q) did not fail", tc.sym)
			}
		})
	}
}

// fakeTB records a fatal failure instead of failing the test, and stops
// the caller as Fatal does (by a panic recovered above).
type fakeTB struct {
	testing.TB
	failed bool
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatal(args ...any) { f.failed = true; panic("fatal") }

func (f *fakeTB) Fatalf(format string, args ...any) { f.failed = true; panic("fatal") }
