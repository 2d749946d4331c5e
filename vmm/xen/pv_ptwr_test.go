package xen

import (
	"bytes"
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

// Writes other than a full mov, as Xen's ptwr emulation takes them:
// narrower stores merged into the entry, xchg, cmpxchg (the compare over
// the whole merged entry; a mismatch writes nothing and hands the entry
// back in the accumulator with ZF clear) and cmpxchg8b; cmpxchg16b and
// misaligned writes are left as the guest's #PF, as are new entries that
// fail validation, even when the compare would fail.
func TestPVWritablePageTableOps(t *testing.T) {
	const code = 0x20000
	l1va := uint64(pvL1<<12 + 0x30*8)
	type regs struct{ rax, rcx, rdx, rbx uint64 }
	cases := []struct {
		name string
		insn []byte
		off  uint64 // from the entry's address
		// in builds the registers from the entry now (cur) and a valid
		// other entry (other: frame 0x31 writable) and a refused one.
		in    func(cur, other, bad uint64) regs
		ok    bool                                      // emulated
		entry func(cur, other uint64) uint64            // the entry after
		out   func(cur, other uint64) (rax, rdx uint64) // after
		zf    int                                       // -1 untouched, 0 clear, 1 set
	}{
		{"mov 2 bytes", []byte{0x66, 0x89, 0x03}, 0,
			func(cur, _, _ uint64) regs { return regs{rax: cur & 0xffff &^ pteRW} }, true,
			func(cur, _ uint64) uint64 { return cur &^ pteRW }, nil, -1},
		{"mov 1 byte", []byte{0x88, 0x03}, 0,
			func(cur, _, _ uint64) regs { return regs{rax: cur & 0xff &^ pteRW} }, true,
			func(cur, _ uint64) uint64 { return cur &^ pteRW }, nil, -1},
		{"mov %ah to the second byte", []byte{0x88, 0x23}, 1,
			func(cur, _, _ uint64) regs { return regs{rax: cur & 0xff00} }, true,
			func(cur, _ uint64) uint64 { return cur }, nil, -1},
		{"mov 2 bytes, misaligned", []byte{0x66, 0x89, 0x03}, 1,
			func(cur, _, _ uint64) regs { return regs{rax: cur >> 8 & 0xffff} }, false, nil, nil, -1},
		{"xchg", []byte{0x48, 0x87, 0x03}, 0,
			func(_, other, _ uint64) regs { return regs{rax: other} }, true,
			func(_, other uint64) uint64 { return other },
			func(cur, _ uint64) (uint64, uint64) { return cur, 0 }, -1},
		{"xchg 1 byte", []byte{0x86, 0x03}, 0,
			func(cur, _, _ uint64) regs { return regs{rax: 0xab00 | cur&0xff&^pteRW} }, true,
			func(cur, _ uint64) uint64 { return cur &^ pteRW },
			func(cur, _ uint64) (uint64, uint64) { return 0xab00 | cur&0xff, 0 }, -1},
		{"xchg with a page table writable", []byte{0x48, 0x87, 0x03}, 0,
			func(_, _, bad uint64) regs { return regs{rax: bad} }, false, nil, nil, -1},
		{"cmpxchg, equal", []byte{0x48, 0x0f, 0xb1, 0x0b}, 0,
			func(cur, other, _ uint64) regs { return regs{rax: cur, rcx: other} }, true,
			func(_, other uint64) uint64 { return other },
			func(cur, _ uint64) (uint64, uint64) { return cur, 0 }, 1},
		{"lock cmpxchg, equal", []byte{0xf0, 0x48, 0x0f, 0xb1, 0x0b}, 0,
			func(cur, other, _ uint64) regs { return regs{rax: cur, rcx: other} }, true,
			func(_, other uint64) uint64 { return other },
			func(cur, _ uint64) (uint64, uint64) { return cur, 0 }, 1},
		{"cmpxchg, different", []byte{0x48, 0x0f, 0xb1, 0x0b}, 0,
			func(cur, other, _ uint64) regs { return regs{rax: cur ^ 0x1000, rcx: other} }, true,
			func(cur, _ uint64) uint64 { return cur },
			func(cur, _ uint64) (uint64, uint64) { return cur, 0 }, 0},
		{"cmpxchg, equal, refused entry", []byte{0x48, 0x0f, 0xb1, 0x0b}, 0,
			func(cur, _, bad uint64) regs { return regs{rax: cur, rcx: bad} }, false, nil, nil, -1},
		{"cmpxchg, different, refused entry", []byte{0x48, 0x0f, 0xb1, 0x0b}, 0,
			func(cur, _, bad uint64) regs { return regs{rax: cur ^ 0x1000, rcx: bad} }, false, nil, nil, -1},
		{"cmpxchg 4 bytes, equal", []byte{0x0f, 0xb1, 0x0b}, 0,
			func(cur, other, _ uint64) regs { return regs{rax: cur & 0xffffffff, rcx: other & 0xffffffff} }, true,
			func(cur, other uint64) uint64 { return cur&^0xffffffff | other&0xffffffff },
			func(cur, _ uint64) (uint64, uint64) { return cur & 0xffffffff, 0 }, 1},
		{"cmpxchg 4 bytes of the high half, different", []byte{0x0f, 0xb1, 0x0b}, 4,
			func(cur, _, _ uint64) regs { return regs{rax: 0xffffffff_00000000 | (cur>>32 ^ 1), rcx: cur >> 32} }, true,
			func(cur, _ uint64) uint64 { return cur },
			func(cur, _ uint64) (uint64, uint64) { return cur >> 32, 0 }, 0}, // %eax written: upper half cleared
		{"cmpxchg8b, equal", []byte{0x0f, 0xc7, 0x0e}, 0,
			func(cur, other, _ uint64) regs {
				return regs{rax: cur & 0xffffffff, rdx: cur >> 32, rbx: other & 0xffffffff, rcx: other >> 32}
			}, true,
			func(_, other uint64) uint64 { return other },
			func(cur, _ uint64) (uint64, uint64) { return cur & 0xffffffff, cur >> 32 }, 1},
		{"cmpxchg8b, different", []byte{0x0f, 0xc7, 0x0e}, 0,
			func(cur, other, _ uint64) regs {
				return regs{rax: 7, rdx: cur >> 32, rbx: other & 0xffffffff, rcx: other >> 32}
			}, true,
			func(cur, _ uint64) uint64 { return cur },
			func(cur, _ uint64) (uint64, uint64) { return cur & 0xffffffff, cur >> 32 }, 0},
		{"cmpxchg16b", []byte{0x48, 0x0f, 0xc7, 0x0e}, 0,
			func(cur, other, _ uint64) regs { return regs{rax: cur, rbx: other} }, false, nil, nil, -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newPVEnv(t)
			wantRet(t, "vm_assist", e.call(xenabi.HypervisorVMAssist, 0, vmassistWritablePT), 0)
			copy(e.ram[code:], tc.insn)
			cur := e.entry(pvL1, 0x30)
			other := e.mfn(0x31)<<12 | 0x67
			bad := e.mfn(pvL2)<<12 | 0x67 // a page table, writable
			in := tc.in(cur, other, bad)
			va := l1va + tc.off
			const flags = 0x202 | flagZF | flagCF
			r := kvm.Regs{RIP: code, RAX: in.rax, RCX: in.rcx, RDX: in.rdx, RBX: va, RFLAGS: flags}
			if bytes.Contains(tc.insn, []byte{0x0f, 0xc7}) {
				// cmpxchg8b/16b (%rsi): %rbx is half of the new value.
				r.RSI, r.RBX = va, in.rbx
			}
			pg := e.cpu.paging
			s := kvm.Sregs{CR0: pg.CR0, CR3: pg.CR3, CR4: pg.CR4, EFER: pg.EFER, CR2: va}
			cpu := e.d.pv.cpus[0]
			got := e.d.pv.ptwr(cpu, &r, &s, 3)
			after := e.entry(pvL1, 0x30)
			if got != tc.ok {
				t.Fatalf("emulated %v, want %v (entry %#x -> %#x)", got, tc.ok, cur, after)
			}
			if !tc.ok {
				if r.RIP != code || after != cur || r.RAX != in.rax {
					t.Fatalf("refused write changed state: rip %#x entry %#x -> %#x rax %#x", r.RIP, cur, after, r.RAX)
				}
				return
			}
			if want := adjust(tc.entry(cur, other), 1); after != want {
				t.Errorf("entry %#x, want %#x", after, want)
			}
			if r.RIP == code {
				t.Error("rip not advanced")
			}
			if tc.out != nil {
				rax, rdx := tc.out(cur, other)
				if r.RAX != rax || r.RDX != rdx {
					t.Errorf("rax %#x rdx %#x, want %#x %#x", r.RAX, r.RDX, rax, rdx)
				}
			}
			switch zf := r.RFLAGS&flagZF != 0; tc.zf {
			case -1:
				if r.RFLAGS != flags {
					t.Errorf("flags %#x changed", r.RFLAGS)
				}
			case 0, 1:
				if zf != (tc.zf == 1) {
					t.Errorf("ZF %v, want %d", zf, tc.zf)
				}
			}
		})
	}
}
