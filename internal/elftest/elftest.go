// Package elftest reads what tests need from an ELF image: the address of
// a symbol in the stub guest or another test kernel.
package elftest

import (
	"bytes"
	"debug/elf"
	"testing"
)

// Symbol returns the value (the address) of the symbol name in the ELF
// image img. It fails tb if img is not an ELF file with a symbol table
// holding name.
func Symbol(tb testing.TB, img []byte, name string) uint64 {
	tb.Helper()
	f, err := elf.NewFile(bytes.NewReader(img))
	if err != nil {
		tb.Fatal(err)
	}
	syms, err := f.Symbols()
	if err != nil {
		tb.Fatal(err)
	}
	for _, s := range syms {
		if s.Name == name {
			return s.Value
		}
	}
	tb.Fatalf("no symbol %s", name)
	return 0
}
