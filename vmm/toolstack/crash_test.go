package toolstack

import (
	"fmt"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

func TestTripleFaultReport(t *testing.T) {
	r := boot(t, "test=triple-fault")
	if r.exit.State != xen.Crashed {
		t.Fatalf("exit %v, want crashed", r.exit)
	}
	c := r.exit.Crash
	if !strings.Contains(c.Reason, "triple fault") || c.Regs == nil || len(c.Code) == 0 {
		t.Fatalf("crash %+v", c)
	}
	if c.Code[0].Text != "ud2" || c.Code[0].Addr != c.Regs.RIP {
		t.Errorf("faulting instruction %v at RIP %#x, want ud2", c.Code[0], c.Regs.RIP)
	}
	if !r.dom.Kernel.Contains(c.Regs.RIP) {
		t.Errorf("RIP %#x is outside the kernel", c.Regs.RIP)
	}
	rep := c.Report()
	for _, want := range []string{"triple fault", fmt.Sprintf("rip %#016x", c.Regs.RIP), "=> ", "ud2", "idt 0x0/0x0"} {
		if !strings.Contains(rep, want) {
			t.Errorf("report lacks %q:\n%s", want, rep)
		}
	}
}

// A guest exception the guest itself handles ends as SHUTDOWN_crash with
// its own report, not a VMM crash.
func TestGuestException(t *testing.T) {
	r := boot(t, "test=exception")
	if !strings.Contains(r.console, "Guest exception 0 at rip") {
		t.Errorf("console:\n%s", r.console)
	}
	if l := resultLine(t, r.console); !strings.HasPrefix(l, "Test result: ERROR") {
		t.Errorf("result %q", l)
	}
	if r.exit.State != xen.Shutdown || r.exit.Reason != xenabi.ShutdownCrash {
		t.Errorf("exit %v", r.exit)
	}
}

func TestHaltWithInterruptsDisabledCrashes(t *testing.T) {
	r := boot(t, "test=hlt")
	if r.exit.State != xen.Crashed || !strings.Contains(r.exit.Crash.Reason, "HLT with interrupts disabled") {
		t.Fatalf("exit %v", r.exit)
	}
}

func TestUnbackedMemoryAccessCrashes(t *testing.T) {
	r := boot(t, "test=mmio")
	if r.exit.State != xen.Crashed {
		t.Fatalf("exit %v\n%s", r.exit, r.console)
	}
	c := r.exit.Crash
	if !strings.Contains(c.Reason, "read from unbacked guest-physical address 0xf0000000") {
		t.Errorf("reason %q", c.Reason)
	}
	if len(c.Code) == 0 || !strings.HasPrefix(c.Code[0].Text, "mov") {
		t.Errorf("faulting instruction %v", c.Code)
	}
}
