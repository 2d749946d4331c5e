package asm

import (
	"bytes"
	"strings"
	"testing"
)

func TestPortIOHypercallPage(t *testing.T) {
	page := PortIOHypercallPage(0xe2)
	if len(page) != PageSize {
		t.Fatalf("page is %d bytes", len(page))
	}
	for n := 0; n < NumStubs; n++ {
		stub := page[n*StubSize : (n+1)*StubSize]
		if n == IretHypercall {
			if !bytes.Equal(stub[:2], []byte{0x0f, 0x0b}) || stub[2] != 0xcc {
				t.Errorf("iret stub % x, want ud2 then int3", stub[:3])
			}
			continue
		}
		want := []byte{0xb8, byte(n), 0, 0, 0, 0xe5, 0xe2, 0x48, 0x98, 0xc3}
		if !bytes.Equal(stub[:10], want) {
			t.Errorf("stub %d = % x, want % x", n, stub[:10], want)
		}
		if !bytes.Equal(stub[10:], bytes.Repeat([]byte{0xcc}, StubSize-10)) {
			t.Errorf("stub %d is not padded with int3", n)
		}
	}
	// The sched_op stub, decoded: mov, in, cltq, ret; the cltq is where a
	// vCPU sits after its hypercall exit completes.
	insts := Disassemble(page[29*StubSize:30*StubSize], 0x1000, 64, 4)
	var texts []string
	for _, in := range insts {
		texts = append(texts, in.Text)
	}
	if got := strings.Join(texts, "; "); got != "mov $0x1d,%eax; in $0xe2,%eax; cdqe; retq" {
		t.Errorf("sched_op stub decodes as %q", got)
	}
	if insts[2].Addr != 0x1000+PortIOReturnPath {
		t.Errorf("cltq at %#x, want %#x", insts[2].Addr, 0x1000+PortIOReturnPath)
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
