package xen

import (
	"testing"

	"github.com/bobuhiro11/gokvm/kvm"
)

// Xen's load_segments: a data selector that would fault is loaded as null
// and the vCPU enters its failsafe callback on a frame of %rcx, %r11, the
// four selectors, %rip, CS with the saved mask, RFLAGS, %rsp and SS, 16
// bytes below the (aligned) kernel stack; selectors that load are loaded.
func TestPVFailsafe(t *testing.T) {
	const (
		gdtPFN   = 0x60
		failsafe = 0x2100
	)
	descs := map[uint16]uint64{
		0x10: 0x12cff3345000ffff, // DPL-3 data, base 0x12345000
		0x18: 0x00aff8000000ffff, // DPL-3 execute-only code
		0x20: 0x00affa000000ffff, // DPL-3 readable code
		0x28: 0x00cf73000000ffff, // DPL-3 data, not present
		0x30: 0x00cf93000000ffff, // DPL-0 data
		0x38: 0x0000e20000000000, // an LDT descriptor (system)
	}
	for _, tc := range []struct {
		name     string
		sels     [4]uint16
		user     bool // the vCPU is in guest user mode
		rsp      uint64
		mask     bool // VGCF_failsafe_disables_events
		failsafe bool // the callback is entered
		crash    bool
	}{
		{"all null", [4]uint16{0, 0, 0, 3}, false, 0x9008, false, false, false},
		{"Xen's flat selectors", [4]uint16{FlatKernelSS, FlatKernelSS, FlatKernelCS, FlatUserCS32}, false, 0x9008, false, false, false},
		{"GDT data and readable code", [4]uint16{0x13, 0x23, 0x13, 0x13}, false, 0x9008, false, false, false},
		{"DPL 0 with RPL 0 (Xen loads in ring 0)", [4]uint16{0x30, 0, 0, 0}, false, 0x9008, false, false, false},
		{"past the GDT", [4]uint16{0x2003, 0, 0, 0}, false, 0x9008, false, true, false},
		{"an LDT selector", [4]uint16{0, 0x0f, 0, 0}, false, 0x9008, false, true, false},
		{"execute-only code", [4]uint16{0, 0, 0x1b, 0}, false, 0x9008, false, true, false},
		{"not present", [4]uint16{0, 0, 0, 0x2b}, false, 0x9008, false, true, false},
		{"DPL below RPL", [4]uint16{0x33, 0, 0, 0}, false, 0x9008, false, true, false},
		{"a system descriptor", [4]uint16{0x3b, 0, 0, 0}, false, 0x9008, false, true, false},
		{"from user mode", [4]uint16{0x0f, 0, 0, 0}, true, 0x5555, false, true, false},
		{"events masked", [4]uint16{0x0f, 0, 0, 0}, false, 0x9008, true, true, false},
		{"frame on a page table", [4]uint16{0x0f, 0, 0, 0}, false, pvL3<<12 + 0x10, false, true, true},
		{"frame in Xen's range", [4]uint16{0x0f, 0, 0, 0}, false, MachToPhysVirt + 0x1000, false, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newPVEnv(t)
			p, c := e.d.pv, e.d.pv.cpus[0]
			for sel, d := range descs {
				e.put64(gdtPFN*4096+uint64(sel), d)
			}
			c.gdtFrames = []uint64{e.mfn(gdtPFN)}
			wantRet(t, "set_callbacks", e.call(4, 0x2000, failsafe, 0), 0)
			c.failsafeMask = tc.mask
			p.setMask(c, 0)
			c.kernelSP = 0xa000
			r := kvm.Regs{RIP: 0x1234, RSP: tc.rsp, RCX: 0x11, R11: 0x22, RFLAGS: 0x202}
			s := c.sregs(c.kL4)
			s.GS.Base, c.gsInactive = 0x7100, 0x7200
			if tc.user {
				c.uL4 = c.kL4
				p.toggle(c, &s)
			}
			err := p.loadDataSegments(c, &r, &s, tc.sels)
			if tc.crash {
				if err == nil {
					t.Fatal("an unwritable failsafe frame did not crash the domain")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.failsafe {
				if r.RIP != 0x1234 || r.RSP != tc.rsp {
					t.Fatalf("no failsafe wanted, but rip %#x rsp %#x", r.RIP, r.RSP)
				}
				for i, seg := range []kvm.Segment{s.DS, s.ES, s.FS, s.GS} {
					if seg.Selector != tc.sels[i] || (tc.sels[i]&^3 != 0) == (seg.Unusable != 0) {
						t.Errorf("segment %d: %#x unusable %d, want %#x", i, seg.Selector, seg.Unusable, tc.sels[i])
					}
				}
				if tc.sels[3] == 0x13 && (c.gsInactive != 0x12345000 || s.GS.Base != 0x7100) {
					t.Errorf("GS bases %#x (active), %#x: the selector's base is the user's", s.GS.Base, c.gsInactive)
				}
				return
			}
			sp := (tc.rsp &^ 15) - 88
			wantCS := uint64(FlatKernelCS &^ 3)
			if tc.user {
				sp, wantCS = 0xa000-88, FlatKernelCS // user CS keeps its RPL
			}
			want := []uint64{0x11, 0x22, uint64(tc.sels[0]), uint64(tc.sels[1]), uint64(tc.sels[2]), uint64(tc.sels[3]),
				0x1234, wantCS, 0x202, tc.rsp, FlatKernelSS}
			for i, w := range want {
				if got := e.get64(sp + 8*uint64(i)); got != w {
					t.Errorf("frame word %d = %#x, want %#x", i, got, w)
				}
			}
			if r.RIP != failsafe || r.RSP != sp || s.CS.Selector != FlatKernelCS || s.SS.Selector != FlatKernelSS || !c.kernel {
				t.Errorf("entered %#x:%#x rsp %#x ss %#x kernel %v", s.CS.Selector, r.RIP, r.RSP, s.SS.Selector, c.kernel)
			}
			for i, seg := range []kvm.Segment{s.DS, s.ES, s.FS, s.GS} {
				if _, ok := p.dataSegment(c, tc.sels[i]); !ok && (seg.Unusable == 0 || seg.Selector != 0) {
					t.Errorf("segment %d: the failing selector %#x was loaded as %#x", i, tc.sels[i], seg.Selector)
				}
			}
			if m := *p.vcpuInfo(c) >> 8 & 0xff; (m == 1) != tc.mask {
				t.Errorf("upcall mask %d after the failsafe entry, VGCF_failsafe_disables_events %v", m, tc.mask)
			}
		})
	}
}

// A restored context's data selectors are loaded as load_segments loads
// them when Xen first schedules the vCPU: one that no longer loads (here
// an LDT selector, the model having no LDT) enters the failsafe callback;
// a good one is loaded and the vCPU resumes where it was saved.
func TestPVRestoreFailsafe(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ds       uint16
		failsafe bool
	}{
		{"good selector", FlatKernelSS, false},
		{"bad selector", 0x0f, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newPVEnv(t)
			wantRet(t, "set_callbacks", a.call(4, 0x2000, 0x2100, 0), 0)
			cpu := a.d.pv.cpus[0]
			regs := kvm.Regs{RIP: 0x1234, RSP: 0x8000, RFLAGS: 0x202}
			s := cpu.sregs(cpu.kL4)
			s.DS.Selector = tc.ds
			sv := savePV(t, a, &regs, &s)
			if sv.ctx.User_regs.Ds != tc.ds {
				t.Fatalf("saved ds %#x", sv.ctx.User_regs.Ds)
			}
			b := newBarePVEnv(t, 7)
			r, bs, err := restorePV(b, sv)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.failsafe {
				if r.RIP != 0x1234 || r.RSP != 0x8000 || bs.DS.Selector != tc.ds || bs.DS.Unusable != 0 {
					t.Errorf("restored at %#x rsp %#x, ds %#x", r.RIP, r.RSP, bs.DS.Selector)
				}
				return
			}
			if r.RIP != 0x2100 || r.RSP != 0x8000-88 || bs.DS.Selector != 0 || b.get64(0x8000-88+16) != uint64(tc.ds) || b.get64(0x8000-88+48) != 0x1234 {
				t.Errorf("restored at %#x rsp %#x ds %#x; frame ds %#x rip %#x", r.RIP, r.RSP, bs.DS.Selector, b.get64(0x8000-88+16), b.get64(0x8000-88+48))
			}
		})
	}
}
