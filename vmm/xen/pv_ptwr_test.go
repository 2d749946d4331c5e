package xen

import (
	"testing"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// Writable page tables: a kernel-mode store to a read-only mapping of one
// of its L1 tables is applied as a validated mmu_update once the guest
// enabled VMASST_TYPE_writable_pagetables; everything else is left as the
// guest's #PF, with nothing written.
func TestPVWritablePageTables(t *testing.T) {
	const code = 0x20000 // mov %rax,(%rbx) ; mov $0,(%rbx) (4 bytes)
	l1va := uint64(pvL1<<12 + 0x30*8)
	cases := []struct {
		name   string
		assist bool
		user   bool
		va     uint64
		insn   []byte
		val    uint64
		ec     uint64
		want   bool
	}{
		{"map a data frame writable", true, false, l1va, []byte{0x48, 0x89, 0x03}, 0x31<<12 | 0x67, 3, true},
		{"clear the entry, 4-byte immediate", true, false, l1va, []byte{0xc7, 0x03, 0, 0, 0, 0}, 0, 3, true},
		{"without the assist", false, false, l1va, []byte{0x48, 0x89, 0x03}, 0x31<<12 | 0x67, 3, false},
		{"from user mode", true, true, l1va, []byte{0x48, 0x89, 0x03}, 0x31<<12 | 0x67, 3, false},
		{"a page table mapped writable", true, false, l1va, []byte{0x48, 0x89, 0x03}, pvL2<<12 | 0x67, 3, false},
		{"a read fault", true, false, l1va, []byte{0x48, 0x89, 0x03}, 0x31<<12 | 0x67, 1, false},
		{"not an L1 (the L2)", true, false, pvL2 << 12, []byte{0x48, 0x89, 0x03}, 0x31<<12 | 0x67, 3, false},
		{"not a mov", true, false, l1va, []byte{0x48, 0x01, 0x03}, 0x31<<12 | 0x67, 3, false},
		{"crossing an entry", true, false, l1va + 4, []byte{0x48, 0x89, 0x03}, 0x31<<12 | 0x67, 3, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newPVEnv(t)
			if tc.assist {
				wantRet(t, "vm_assist", e.call(xenabi.HypervisorVMAssist, 0, vmassistWritablePT), 0)
			}
			copy(e.ram[code:], tc.insn)
			val := tc.val
			if val != 0 {
				val = e.mfn(val>>12)<<12 | val&0xfff
			}
			pg := e.cpu.paging
			r := kvm.Regs{RIP: code, RAX: val, RBX: tc.va}
			s := kvm.Sregs{CR0: pg.CR0, CR3: pg.CR3, CR4: pg.CR4, EFER: pg.EFER, CR2: tc.va}
			cpu := e.d.pv.cpus[0]
			cpu.kernel = !tc.user
			before := e.entry(pvL1, 0x30)
			got := e.d.pv.ptwr(cpu, &r, &s, tc.ec)
			if got != tc.want {
				t.Fatalf("emulated %v, want %v", got, tc.want)
			}
			after := e.entry(pvL1, 0x30)
			if !tc.want {
				if r.RIP != code || after != before {
					t.Fatalf("refused store changed state: rip %#x entry %#x -> %#x", r.RIP, before, after)
				}
				return
			}
			if r.RIP != code+uint64(len(tc.insn)) {
				t.Errorf("rip %#x, want past the store", r.RIP)
			}
			if val == 0 && after&pteP != 0 || val != 0 && (after&pteAddr != val&pteAddr || after&pteU == 0) {
				t.Errorf("entry %#x, want %#x adjusted", after, val)
			}
			if typ := e.typeOf(0x31); val != 0 && typ != "writable/2" && typ != "writable/1" {
				t.Errorf("frame 0x31 is %s after a writable mapping", typ)
			}
		})
	}
}
