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
}

func (e *CrashError) Error() string {
	return fmt.Sprintf("vCPU %d crashed: %s", e.VCPU, e.Reason)
}

// Report formats the whole crash report: reason, registers and the
// disassembly at RIP.
func (e *CrashError) Report() string {
	var b strings.Builder
	fmt.Fprintf(&b, "vCPU %d crashed: %s\n", e.VCPU, e.Reason)
	if r := e.Regs; r != nil {
		fmt.Fprintf(&b, "  rip %#016x  rflags %#x\n", r.RIP, r.RFLAGS)
		fmt.Fprintf(&b, "  rax %#016x  rbx %#016x  rcx %#016x  rdx %#016x\n", r.RAX, r.RBX, r.RCX, r.RDX)
		fmt.Fprintf(&b, "  rsi %#016x  rdi %#016x  rbp %#016x  rsp %#016x\n", r.RSI, r.RDI, r.RBP, r.RSP)
		fmt.Fprintf(&b, "  r8  %#016x  r9  %#016x  r10 %#016x  r11 %#016x\n", r.R8, r.R9, r.R10, r.R11)
		fmt.Fprintf(&b, "  r12 %#016x  r13 %#016x  r14 %#016x  r15 %#016x\n", r.R12, r.R13, r.R14, r.R15)
	}
	if s := e.Sregs; s != nil {
		fmt.Fprintf(&b, "  cs %#04x ss %#04x  cr0 %#x cr2 %#x cr3 %#x cr4 %#x efer %#x\n",
			s.CS.Selector, s.SS.Selector, s.CR0, s.CR2, s.CR3, s.CR4, s.EFER)
		fmt.Fprintf(&b, "  gdt %#x/%#x  idt %#x/%#x\n", s.GDT.Base, s.GDT.Limit, s.IDT.Base, s.IDT.Limit)
	}
	if len(e.Code) > 0 {
		b.WriteString("  code at rip:\n")
		for i, in := range e.Code {
			mark := "   "
			if i == 0 {
				mark = "=> "
			}
			fmt.Fprintf(&b, "  %s%s\n", mark, in)
		}
	} else if e.CodeErr != nil {
		fmt.Fprintf(&b, "  code at rip unreadable: %v\n", e.CodeErr)
	}
	return b.String()
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
	mode := 16
	switch {
	case sregs.CS.L != 0:
		mode = 64
	case sregs.CS.DB != 0:
		mode = 32
	}
	p := Paging{CR0: sregs.CR0, CR3: sregs.CR3, CR4: sregs.CR4, EFER: sregs.EFER}
	code := make([]byte, 32)
	rip := regs.RIP
	if mode != 64 {
		rip += sregs.CS.Base
	}
	// Read as much as is mapped, from a whole 32 down to one byte.
	for n := len(code); n > 0; n /= 2 {
		if err = v.m.mem.ReadVirt(p, rip, code[:n]); err == nil {
			e.Code = asm.Disassemble(code[:n], regs.RIP, mode, 4)
			return e
		}
	}
	e.CodeErr = err
	return e
}
