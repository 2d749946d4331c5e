package machine

import (
	"fmt"
	"strings"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/asm"
)

// CrashError ends a vCPU whose guest did something the VMM cannot continue
// from: a triple fault, a failed entry, an access to unbacked memory, or a
// device error. It carries what a developer needs to see why.
type CrashError struct {
	VCPU   int
	Reason string
	Regs   *kvm.Regs  // nil if they could not be read
	Sregs  *kvm.Sregs // nil if they could not be read
	Code   []asm.Inst // the instructions at RIP, if readable
	// CodeErr says why Code is empty.
	CodeErr error
	// Guest, when set, is the guest's own context at the crash, for a
	// vCPU whose registers were the VMM's (a trampoline of vmm/xen's
	// ring-3 PV model): Report shows it first, and the VMM's registers
	// only as a short line.
	Guest *GuestContext
}

// GuestContext is the guest's state at a crash the VMM took on the
// guest's behalf, as a model saved it from its trap frame: RIP, RSP,
// RFLAGS, CS and SS from the frame, the general registers as the guest
// left them, and the code at the guest's RIP.
type GuestContext struct {
	Regs   kvm.Regs
	CS, SS uint16
	Code   []asm.Inst // the instructions at Regs.RIP, if readable
	// CodeErr says why Code is empty.
	CodeErr error
}

func (e *CrashError) Error() string {
	return fmt.Sprintf("vCPU %d crashed: %s", e.VCPU, e.Reason)
}

// Report formats the whole crash report: reason, registers and the
// disassembly at RIP. With a guest context (Guest), the registers and code
// are the guest's, and the VMM's registers follow as one line.
func (e *CrashError) Report() string {
	var b strings.Builder
	fmt.Fprintf(&b, "vCPU %d crashed: %s\n", e.VCPU, e.Reason)
	if g := e.Guest; g != nil {
		r := &g.Regs
		fmt.Fprintf(&b, "  guest rip %#016x  rflags %#x  cs %#04x ss %#04x\n", r.RIP, r.RFLAGS, g.CS, g.SS)
		writeGPRs(&b, r)
		writeCode(&b, "guest rip", g.Code, g.CodeErr)
		if r, s := e.Regs, e.Sregs; r != nil && s != nil {
			fmt.Fprintf(&b, "  VMM: rip %#x rsp %#x rflags %#x cs %#04x ss %#04x cr2 %#x cr3 %#x\n",
				r.RIP, r.RSP, r.RFLAGS, s.CS.Selector, s.SS.Selector, s.CR2, s.CR3)
		}
		return b.String()
	}
	if r := e.Regs; r != nil {
		fmt.Fprintf(&b, "  rip %#016x  rflags %#x\n", r.RIP, r.RFLAGS)
		writeGPRs(&b, r)
	}
	if s := e.Sregs; s != nil {
		fmt.Fprintf(&b, "  cs %#04x ss %#04x  cr0 %#x cr2 %#x cr3 %#x cr4 %#x efer %#x\n",
			s.CS.Selector, s.SS.Selector, s.CR0, s.CR2, s.CR3, s.CR4, s.EFER)
		fmt.Fprintf(&b, "  gdt %#x/%#x  idt %#x/%#x\n", s.GDT.Base, s.GDT.Limit, s.IDT.Base, s.IDT.Limit)
	}
	writeCode(&b, "rip", e.Code, e.CodeErr)
	return b.String()
}

// writeGPRs writes the general registers, four a line.
func writeGPRs(b *strings.Builder, r *kvm.Regs) {
	fmt.Fprintf(b, "  rax %#016x  rbx %#016x  rcx %#016x  rdx %#016x\n", r.RAX, r.RBX, r.RCX, r.RDX)
	fmt.Fprintf(b, "  rsi %#016x  rdi %#016x  rbp %#016x  rsp %#016x\n", r.RSI, r.RDI, r.RBP, r.RSP)
	fmt.Fprintf(b, "  r8  %#016x  r9  %#016x  r10 %#016x  r11 %#016x\n", r.R8, r.R9, r.R10, r.R11)
	fmt.Fprintf(b, "  r12 %#016x  r13 %#016x  r14 %#016x  r15 %#016x\n", r.R12, r.R13, r.R14, r.R15)
}

// writeCode writes the disassembly at where, the first instruction
// marked, or why it is missing.
func writeCode(b *strings.Builder, where string, code []asm.Inst, err error) {
	if len(code) > 0 {
		fmt.Fprintf(b, "  code at %s:\n", where)
		for i, in := range code {
			mark := "   "
			if i == 0 {
				mark = "=> "
			}
			fmt.Fprintf(b, "  %s%s\n", mark, in)
		}
	} else if err != nil {
		fmt.Fprintf(b, "  code at %s unreadable: %v\n", where, err)
	}
}

// crash builds the report for the vCPU's current state.
func (v *VCPU) crash(reason string) *CrashError {
	e := &CrashError{VCPU: v.ID, Reason: reason}
	regs, err := kvm.GetRegs(v.fd)
	if err == nil {
		e.Regs = regs
	}
	sregs, err := kvm.GetSregs(v.fd)
	if err == nil {
		e.Sregs = sregs
	}
	if e.Regs == nil || e.Sregs == nil {
		e.CodeErr = fmt.Errorf("registers unreadable")
		return e
	}
	e.Code, e.CodeErr = v.m.mem.CodeAt(Paging{CR0: sregs.CR0, CR3: sregs.CR3, CR4: sregs.CR4, EFER: sregs.EFER}, sregs.CS, regs.RIP)
	return e
}

// CodeAt disassembles the first instructions at rip in code segment cs
// (64-bit, 32-bit or 16-bit by its L and D bits; outside 64-bit mode, rip
// is an offset from the segment's base), reading through the page tables
// of p as much as is mapped, from 32 bytes down to one.
func (m *Memory) CodeAt(p Paging, cs kvm.Segment, rip uint64) ([]asm.Inst, error) {
	mode := 16
	switch {
	case cs.L != 0:
		mode = 64
	case cs.DB != 0:
		mode = 32
	}
	addr := rip
	if mode != 64 {
		addr += cs.Base
	}
	code := make([]byte, 32)
	var err error
	for n := len(code); n > 0; n /= 2 {
		if err = m.ReadVirt(p, addr, code[:n]); err == nil {
			return asm.Disassemble(code[:n], rip, mode, 4), nil
		}
	}
	return nil, err
}
