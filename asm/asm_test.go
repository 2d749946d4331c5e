package asm

import (
	"bytes"
	"strings"
	"testing"
)

// Every stub of the ring-3 hypercall page is Xen's 64-bit PV shape with
// its syscall replaced by the trapping IN, padded with int3; the iret stub
// pushes %rax too and never returns.
func TestRing3HypercallPage(t *testing.T) {
	page := Ring3HypercallPage(0xe2)
	if len(page) != PageSize {
		t.Fatalf("page is %d bytes", len(page))
	}
	for n := 0; n < NumStubs; n++ {
		stub := page[n*StubSize : (n+1)*StubSize]
		want := []byte{0x51, 0x41, 0x53, 0xb8, byte(n), 0, 0, 0, 0xe5, 0xe2, 0x48, 0x98, 0x41, 0x5b, 0x59, 0xc3}
		if n == IretHypercall {
			want = []byte{0x51, 0x41, 0x53, 0x50, 0xb8, byte(n), 0, 0, 0, 0xe5, 0xe2}
		}
		if !bytes.Equal(stub[:len(want)], want) {
			t.Errorf("stub %d = % x, want % x", n, stub[:len(want)], want)
		}
		if !bytes.Equal(stub[len(want):], bytes.Repeat([]byte{0xcc}, StubSize-len(want))) {
			t.Errorf("stub %d is not padded with int3", n)
		}
	}
	// The sched_op stub, decoded; the cltq after the IN is where a vCPU
	// sits once its hypercall exit completes.
	insts := Disassemble(page[29*StubSize:30*StubSize], 0x1000, 64, 8)
	var texts []string
	for _, in := range insts {
		texts = append(texts, in.Text)
	}
	if got := strings.Join(texts, "; "); !strings.HasPrefix(got, "push %rcx; push %r11; mov $0x1d,%eax; in $0xe2,%eax; cdqe; pop %r11; pop %rcx; retq") {
		t.Errorf("sched_op stub decodes as %q", got)
	}
	if insts[4].Addr != 0x1000+Ring3ReturnPath {
		t.Errorf("cltq at %#x, want %#x", insts[4].Addr, 0x1000+Ring3ReturnPath)
	}
}

func TestDisassembleBadBytes(t *testing.T) {
	insts := Disassemble([]byte{0x0f, 0xff, 0xff, 0x90}, 0, 64, 10)
	if len(insts) == 0 || insts[len(insts)-1].Text != "nop" {
		t.Fatalf("got %v", insts)
	}
	if !strings.Contains(insts[0].String(), "0f") {
		t.Errorf("String() lacks the bytes: %q", insts[0].String())
	}
}
