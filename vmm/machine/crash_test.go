package machine

import (
	"strings"
	"testing"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/asm"
)

// With a guest context, the report is the guest's registers and code, and
// the VMM's registers are one line; without, it is the vCPU's registers.
func TestCrashReportGuestContext(t *testing.T) {
	vmm := &kvm.Regs{RIP: 0xffff820040001031, RSP: 0xffff820040005fd8, RAX: 0x1111}
	sregs := &kvm.Sregs{CS: kvm.Segment{Selector: 0xe008}}
	e := &CrashError{VCPU: 0, Reason: "unhandled", Regs: vmm, Sregs: sregs,
		Code: asm.Disassemble([]byte{0xeb, 0xfe}, vmm.RIP, 64, 1)}
	if rep := e.Report(); !strings.Contains(rep, "  rip 0xffff820040001031") || !strings.Contains(rep, "rax 0x0000000000001111") {
		t.Errorf("report without a guest context:\n%s", rep)
	}
	e.Guest = &GuestContext{Regs: kvm.Regs{RIP: 0x40002fa7, RSP: 0x4000ef20, RFLAGS: 0x246, RAX: 0x2222},
		CS: 0xe033, SS: 0xe02b, Code: asm.Disassemble([]byte{0x0f, 0x0b}, 0x40002fa7, 64, 1)}
	rep := e.Report()
	for _, want := range []string{
		"guest rip 0x0000000040002fa7  rflags 0x246  cs 0xe033 ss 0xe02b",
		"rax 0x0000000000002222",
		"rsp 0x000000004000ef20",
		"code at guest rip:\n  => 0x0000000040002fa7: 0f 0b",
		"ud2",
		"  VMM: rip 0xffff820040001031 rsp 0xffff820040005fd8",
	} {
		if !strings.Contains(rep, want) {
			t.Errorf("report lacks %q:\n%s", want, rep)
		}
	}
	if strings.Contains(rep, "rax 0x0000000000001111") || strings.Contains(rep, "jmp") {
		t.Errorf("the VMM's registers or code beyond one line:\n%s", rep)
	}
}
