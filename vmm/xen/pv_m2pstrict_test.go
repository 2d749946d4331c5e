package xen

import (
	"testing"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// VMASST_TYPE_m2p_strict, as Xen's public header describes it and
// init_xen_l4_slots, fill_ro_mpt and zap_ro_mpt do it: without it a new
// L4 has the read-only M2P slot (256) blank until it is used as a kernel
// L4; with it a new L4 has the slot and loses it when used as a user L4,
// so guest user mode cannot read the M2P through it.
func TestPVM2PStrict(t *testing.T) {
	for _, strict := range []bool{false, true} {
		name := map[bool]string{false: "default", true: "m2p_strict"}[strict]
		t.Run(name, func(t *testing.T) {
			e := newPVEnv(t)
			p := e.d.pv
			if strict {
				wantRet(t, "vm_assist", e.call(xenabi.HypervisorVMAssist, 0, vmassistM2PStrict), 0)
			}
			slot := func(pfn uint64) uint64 { return e.entry(pfn, 256) }
			readM2P := func(pfn uint64) error {
				var b [8]byte
				pg := e.cpu.paging
				pg.CR3 = e.mfn(pfn) << 12
				return e.d.mem.ReadVirt(pg, MachToPhysVirt+8*e.mfn(0x20), b[:])
			}
			if got := slot(pvL4); got != p.l4M2P {
				t.Fatalf("the boot kernel L4's slot 256 = %#x, want the M2P", got)
			}
			kern, user := e.copyL4(0x60), e.copyL4(0x61)
			created := map[bool]uint64{false: 0, true: p.l4M2P}[strict]
			if slot(0x60) != created || slot(0x61) != created {
				t.Errorf("new L4s' slot 256 = %#x, %#x; want %#x", slot(0x60), slot(0x61), created)
			}
			wantRet(t, "new_baseptr", e.call(hcMMUExtOp, e.putOp(mmuextNewBaseptr, kern), 1, 0, domidSelf), 0)
			wantRet(t, "new_user_baseptr", e.call(hcMMUExtOp, e.putOp(mmuextNewUserBase, user), 1, 0, domidSelf), 0)
			if slot(0x60) != p.l4M2P {
				t.Errorf("kernel L4 slot 256 = %#x, want the M2P", slot(0x60))
			}
			if err := readM2P(0x60); err != nil {
				t.Errorf("the kernel L4 cannot read the M2P: %v", err)
			}
			// The user L4: blank either way (never filled without
			// m2p_strict, zapped with it); the M2P unreadable through it.
			if slot(0x61) != 0 {
				t.Errorf("user L4 slot 256 = %#x, want none", slot(0x61))
			}
			if err := readM2P(0x61); err == nil {
				t.Error("the M2P is readable through the user L4")
			}
			if err := checkMMU(p); err != nil {
				t.Error(err)
			}
		})
	}
}
