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

// PortIOHypercallPage returns a hypercall page whose stubs trap by port I/O:
//
//	+0: B8 nn nn nn nn   mov  $n, %eax
//	+5: E5 pp            in   $port, %eax
//	+7: 48 98            cltq
//	+9: C3               ret
//
// padded with int3 (0xCC) as Xen pads its own. The layout follows Xen's HVM
// stubs (mov; vmcall; ret) with vmcall replaced by an IN from port, which
// exits to the VMM on every host. The number arrives in %eax; the VMM
// answers the IN with the 32-bit result, which KVM itself loads into %eax
// when it completes the instruction (no register write-back, so a
// hypercall costs one plain exit), and cltq sign-extends it to the 64-bit
// %rax Xen's ABI returns. Every Xen hypercall result fits in 32 bits (Xen's
// own 32-bit guests receive no more). Entry 23 (iret) is ud2, as in Xen's
// HVM page.
func PortIOHypercallPage(port uint8) []byte {
	page := make([]byte, PageSize)
	for i := range page {
		page[i] = 0xCC
	}
	for n := 0; n < NumStubs; n++ {
		s := page[n*StubSize : (n+1)*StubSize]
		if n == IretHypercall {
			s[0], s[1] = 0x0F, 0x0B
			continue
		}
		s[0] = 0xB8
		s[1], s[2], s[3], s[4] = byte(n), byte(n>>8), byte(n>>16), byte(n>>24)
		s[5], s[6] = 0xE5, port
		s[7], s[8] = 0x48, 0x98
		s[9] = 0xC3
	}
	return page
}

// PortIOReturnPath is the offset in a port-I/O stub of the instruction after
// the trapping IN: where a vCPU's RIP points once its hypercall exit has
// completed, the hypercall's return path.
const PortIOReturnPath = 7

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
