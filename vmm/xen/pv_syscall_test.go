package xen

import "testing"

// A syscall's saved flags come back as sysret loads them, with no
// reserved bit, RF, VM or IOPL a forged %r11 could carry into the entry.
func TestPVSysretFlags(t *testing.T) {
	for _, tc := range []struct{ r11, want uint64 }{
		{0x202, 0x202},
		{0, 0x2},
		{0xffffffffffffffff, 0x3c4fd7},
		{flagVM | flagRF | flagIOPL | flagIF, flagIF | 2},
		{1<<3 | 1<<5 | 1<<15 | 1<<22 | 1<<40, 2},
		{flagAC | flagNT | flagDF | flagTF | 1, flagAC | flagNT | flagDF | flagTF | 3},
	} {
		if got := sysretFlags(tc.r11); got != tc.want {
			t.Errorf("sysretFlags(%#x) = %#x, want %#x", tc.r11, got, tc.want)
		}
	}
}

// A #PF at LSTAR is a syscall only on a host where syscall stays at CPL 3
// and only as the instruction fetch at CPL 3 it makes there: anywhere
// else it is a jump to LSTAR, the guest's own page fault.
func TestPVLstarFetch(t *testing.T) {
	e := newPVEnv(t)
	p, c := e.d.pv, e.d.pv.cpus[0]
	const fetch = pfUser | pfFetch | 1
	for _, tc := range []struct {
		name   string
		faults bool
		rip    uint64
		cr2    uint64
		ec     uint64
		want   bool
	}{
		{"PVM syscall", true, c.lstar, c.lstar, fetch, true},
		{"VMX/SVM: a jump to LSTAR", false, c.lstar, c.lstar, fetch, false},
		{"a data read of LSTAR", true, c.lstar, c.lstar, pfUser | 1, false},
		{"a supervisor fetch", true, c.lstar, c.lstar, pfFetch | 1, false},
		{"another address", true, c.lstar, c.lstar + 8, fetch, false},
	} {
		p.syscallFaults = tc.faults
		if got := p.lstarFetch(c, tc.rip, tc.cr2, tc.ec); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
