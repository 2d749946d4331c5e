// Package asm holds the x86-64 machine code the VMM writes into guests (the
// hypercall page) and the decoding it uses to show guest code in crash
// reports and traces.
package asm

import (
	"fmt"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// Hypercall page geometry, as Xen lays it out (init_hypercall_page).
const (
	PageSize      = 4096
	StubSize      = 32
	NumStubs      = PageSize / StubSize
	IretHypercall = 23 // __HYPERVISOR_iret: a PV guest jumps to it, never calls it
)

// Inst is one decoded instruction.
type Inst struct {
	Addr  uint64
	Bytes []byte
	Text  string // GNU syntax; "(bad)" when undecodable
}

// Disassemble decodes up to max instructions of code located at addr, in
// 16-, 32- or 64-bit mode. Undecodable bytes become one-byte "(bad)".
func Disassemble(code []byte, addr uint64, mode int, max int) []Inst {
	var out []Inst
	for len(code) > 0 && len(out) < max {
		inst, err := x86asm.Decode(code, mode)
		if err != nil || inst.Len == 0 {
			out = append(out, Inst{Addr: addr, Bytes: code[:1], Text: "(bad)"})
			code, addr = code[1:], addr+1
			continue
		}
		pc := addr
		text := x86asm.GNUSyntax(inst, pc, nil)
		out = append(out, Inst{Addr: addr, Bytes: code[:inst.Len], Text: text})
		code, addr = code[inst.Len:], addr+uint64(inst.Len)
	}
	return out
}

// String formats an instruction as "addr: bytes  text".
func (i Inst) String() string {
	var hex strings.Builder
	for _, b := range i.Bytes {
		fmt.Fprintf(&hex, "%02x ", b)
	}
	return fmt.Sprintf("%#016x: %-24s %s", i.Addr, hex.String(), i.Text)
}

// Ring3HypercallPage returns the hypercall page of a PV kernel that runs
// in ring 3 (Xen's 64-bit PV model), with stubs shaped as Xen's
// (pv_ring3_init_hypercall_page: push %rcx; push %r11; mov $n, %eax;
// syscall; pop %r11; pop %rcx; ret) but trapping by port I/O, which the
// VMM's TSS I/O bitmap lets ring 3 reach, instead of syscall:
//
//	+0:  51               push %rcx
//	+1:  41 53            push %r11
//	+3:  B8 nn nn nn nn   mov  $n, %eax
//	+8:  E5 pp            in   $port, %eax
//	+10: 48 98            cltq
//	+12: 41 5B            pop  %r11
//	+14: 59               pop  %rcx
//	+15: C3               ret
//
// Stub 23 (iret), which a guest jumps to with its iret frame on the stack,
// is Xen's (push %rcx; push %r11; push %rax; mov $23, %eax) with the same
// IN as its trap; it never returns. The rest of the page is int3.
func Ring3HypercallPage(port uint8) []byte {
	page := make([]byte, PageSize)
	for i := range page {
		page[i] = 0xCC
	}
	for n := 0; n < NumStubs; n++ {
		s := page[n*StubSize : (n+1)*StubSize]
		if n == IretHypercall {
			copy(s, []byte{0x51, 0x41, 0x53, 0x50, 0xB8, byte(n), 0, 0, 0, 0xE5, port})
			continue
		}
		copy(s, []byte{0x51, 0x41, 0x53, 0xB8, byte(n), byte(n >> 8), byte(n >> 16), byte(n >> 24),
			0xE5, port, 0x48, 0x98, 0x41, 0x5B, 0x59, 0xC3})
	}
	return page
}

// Ring3ReturnPath is the offset in a Ring3HypercallPage stub of the
// instruction after the trapping IN.
const Ring3ReturnPath = 10

// Trampoline is one entry of the VMM's trampoline page for a PV guest in
// ring 3, TrampolineSize bytes per interrupt vector: the vector's IDT gate
// points at it, and it halts (a KVM_EXIT_HLT the VMM identifies by RIP)
// and loops back to the hlt if ever resumed there:
//
//	+0: F4      hlt
//	+1: EB FD   jmp  +0
func Trampoline() []byte {
	return []byte{0xF4, 0xEB, 0xFD, 0xCC, 0xCC, 0xCC, 0xCC, 0xCC}
}

// TrampolineSize is the stride of Trampoline entries.
const TrampolineSize = 8
