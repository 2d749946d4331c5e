package toolstack

import (
	"fmt"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// A fault with no trap-table entry crashes a ring-3 PV domain, as Xen
// crashes one whose bounce fails: a VMM crash report (runvm exit 8).
func TestUnhandledFaultCrashes(t *testing.T) {
	for _, name := range []string{"unhandled-fault", "triple-fault"} {
		r := boot(t, "test="+name)
		if r.exit.State != xen.Crashed {
			t.Fatalf("%s: exit %v, want crashed", name, r.exit)
		}
		c := r.exit.Crash
		if !strings.Contains(c.Reason, "unhandled exception 6") || !strings.Contains(c.Reason, "no trap-table entry") {
			t.Errorf("%s: reason %q", name, c.Reason)
		}
		if rep := c.Report(); !strings.Contains(rep, "vector 6: no handler") {
			t.Errorf("%s: report lacks the trap table:\n%s", name, rep)
		}
		// The report is the guest's: its RIP, the ud2 there, and the
		// VMM's trampoline registers only as a line.
		g := c.Guest
		if g == nil {
			t.Fatalf("%s: no guest context in the crash:\n%s", name, c.Report())
		}
		if want := fmt.Sprintf("at rip %#x ", g.Regs.RIP); !strings.Contains(c.Reason, want) {
			t.Errorf("%s: guest rip %#x, reason %q", name, g.Regs.RIP, c.Reason)
		}
		if g.CS != xen.FlatKernelCS || g.SS != xen.FlatKernelSS {
			t.Errorf("%s: guest cs %#x ss %#x, want the flat kernel selectors", name, g.CS, g.SS)
		}
		if len(g.Code) == 0 || g.Code[0].Addr != g.Regs.RIP || g.Code[0].Text != "ud2" {
			t.Errorf("%s: code at the guest's rip %v (%v)", name, g.Code, g.CodeErr)
		}
		rep := c.Report()
		for _, want := range []string{fmt.Sprintf("guest rip %#016x ", g.Regs.RIP), "ud2", "\n  VMM: rip "} {
			if !strings.Contains(rep, want) {
				t.Errorf("%s: report lacks %q:\n%s", name, want, rep)
			}
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

// hlt in ring 3 is #GP(0), bounced through the trap table; the handler
// skips it and the scenario succeeds.
func TestHaltInRing3IsGP(t *testing.T) {
	r := boot(t, "test=hlt")
	requireSuccess(t, r)
	if f := fields(r.console); f["hlt.trap"] != "1" || f["hlt.error"] != "0x0" {
		t.Errorf("fields %v\n%s", f, r.console)
	}
}

// Negative control: a PTE naming a frame outside the domain is -EPERM.
func TestForeignFrameMappingRefused(t *testing.T) {
	r := boot(t, "test=mmio")
	requireSuccess(t, r)
	if f := fields(r.console); f["mmio.rc"] != "-1" {
		t.Errorf("fields %v\n%s", f, r.console)
	}
}
