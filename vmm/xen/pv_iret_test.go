package xen

import (
	"testing"
)

// The iret hypercall's target passes the checks of the hardware's iretq
// to CPL 3, and a bad one is the guest's fault at the target (§4.7):
// #GP(selector) for a CS that is not DPL-3 code or is both L and D, or an
// SS that is not writable data; #NP or #SS for a segment not present;
// #GP(0) for a null CS or a non-canonical RIP. A good GDT selector loads
// with its accessed bit set.
func TestPVIretTarget(t *testing.T) {
	const gdtPFN = 0x60
	descs := map[uint16]uint64{
		0x10: 0x00cff3000000ffff, // DPL-3 data (read-write)
		0x18: 0x00effa000000ffff, // DPL-3 code, L and D
		0x20: 0x00af7a000000ffff, // DPL-3 64-bit code, not present
		0x28: 0x00cff1000000ffff, // DPL-3 data, read-only
		0x30: 0x00cf73000000ffff, // DPL-3 data, not present
		0x38: 0x00affa000000ffff, // DPL-3 64-bit code, not accessed
		0x40: 0x00cff2000000ffff, // DPL-3 data, not accessed
		0x48: 0x00af9a000000ffff, // DPL-0 64-bit code
	}
	const nonCanonical = 0x0000800000000000
	cases := []struct {
		name    string
		rip     uint64
		cs, ss  uint16
		vec, ec uint64 // 0: no fault
	}{
		{"flat selectors", 0x2000, FlatKernelCS, FlatKernelSS, 0, 0},
		{"GDT code and data", 0x2000, 0x3b, 0x43, 0, 0},
		{"CS a data descriptor", 0x2000, 0x13, FlatKernelSS, 13, 0x10},
		{"CS L and D", 0x2000, 0x1b, FlatKernelSS, 13, 0x18},
		{"CS DPL 0", 0x2000, 0x4b, FlatKernelSS, 13, 0x48},
		{"CS not present", 0x2000, 0x23, FlatKernelSS, 11, 0x20},
		{"CS null", 0x2000, 0, FlatKernelSS, 13, 0},
		{"CS past the GDT", 0x2000, 0x1003, FlatKernelSS, 13, 0x1000},
		{"SS code", 0x2000, FlatKernelCS, FlatKernelCS, 13, FlatKernelCS &^ 3},
		{"SS read-only", 0x2000, FlatKernelCS, 0x2b, 13, 0x28},
		{"SS not present", 0x2000, FlatKernelCS, 0x33, 12, 0x30},
		{"RIP non-canonical", nonCanonical, FlatKernelCS, FlatKernelSS, 13, 0},
		{"32-bit RIP past the limit", 1 << 32, FlatUserCS32, FlatKernelSS, 13, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newPVEnv(t)
			cpu := e.d.pv.cpus[0]
			for sel, d := range descs {
				e.put64(gdtPFN*4096+uint64(sel), d)
			}
			cpu.gdtFrames = []uint64{e.mfn(gdtPFN)}
			for _, v := range []int{11, 12, 13} {
				cpu.traps[v] = trapInfo{cs: FlatKernelCS, addr: 0x7000 + uint64(v)}
			}
			frame := uint64(pvBuf + 0x800)
			for i, w := range []uint64{0xdead, 0, 0, 0, tc.rip, uint64(tc.cs &^ 3), 0x202, 0x3000, uint64(tc.ss)} {
				e.put64(frame+8*uint64(i), w)
			}
			e.cpu.regs.RSP = frame
			var s kvmSregs
			wantRet(t, "iret", e.call(hcIret), 0xdead)
			for _, f := range cpu.pending {
				if err := f(&e.cpu.regs, &s); err != nil {
					t.Fatalf("iret crashed the domain: %v", err)
				}
			}
			cpu.pending = nil
			r := e.cpu.regs
			if tc.vec == 0 {
				if r.RIP != tc.rip || s.CS.Selector != tc.cs|3 || s.SS.Selector != tc.ss|3 {
					t.Fatalf("iret to %#x:%#x ss %#x, want %#x:%#x ss %#x", s.CS.Selector, r.RIP, s.SS.Selector, tc.cs|3, tc.rip, tc.ss|3)
				}
				if s.CS.Typ&1 == 0 || s.SS.Typ&1 == 0 {
					t.Errorf("loaded CS type %#x SS type %#x without the accessed bit", s.CS.Typ, s.SS.Typ)
				}
				if tc.cs&^7 == 0x38 && (e.get64(gdtPFN*4096+0x38)>>40&1 == 0 || e.get64(gdtPFN*4096+0x40)>>40&1 == 0) {
					t.Error("accessed bits not set in the GDT")
				}
				return
			}
			if r.RIP != 0x7000+tc.vec {
				t.Fatalf("rip %#x, want vector %d's handler (cs %#x ss %#x)", r.RIP, tc.vec, s.CS.Selector, s.SS.Selector)
			}
			// The bounce frame: rcx, r11, error code, rip, ...
			if ec, rip := e.get64(r.RSP+16), e.get64(r.RSP+24); ec != tc.ec || rip != tc.rip {
				t.Errorf("bounce frame error code %#x rip %#x, want %#x %#x", ec, rip, tc.ec, tc.rip)
			}
			if s.CS.Selector != FlatKernelCS || s.CS.L != 1 {
				t.Errorf("handler runs on CS %#x", s.CS.Selector)
			}
		})
	}
}
