package xen

import (
	"encoding/binary"

	"github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/arch/x86/x86asm"
)

// Writable page tables (VMASST_TYPE_writable_pagetables; Xen's
// pv_ro_page_fault and ptwr_emulated_update): a guest kernel that writes
// an entry of one of its L1 tables through a read-only mapping takes a
// write #PF on a present page; when the page written is an L1 table of
// the domain, the VMM decodes the store, merges it into the entry and
// applies it as mmu_update would (modEntry: validation, references,
// Xen's adjustments), then steps over the instruction. A store it cannot
// decode, or an entry validation refuses, leaves the #PF for the guest,
// as Xen does when its emulation fails.
//
// Decoded stores: mov of a register or an immediate to memory, 4 or 8
// bytes, within one entry (Xen also emulates cmpxchg and 1- and 2-byte
// stores; this model does not).

// ptwr emulates the page-table write behind #PF error code ec at s.CR2,
// and reports whether it did. Page-fault error-code bits: P 1, W 2,
// RSVD 8, I/D 16.
func (p *pvDomain) ptwr(c *pvCPU, r *kvm.Regs, s *kvm.Sregs, ec uint64) bool {
	if !c.kernel || ec&(1|2|8|16) != 1|2 {
		return false
	}
	va := s.CR2
	var code [15]byte
	n := 0
	for n < len(code) && p.readGuest(s, r.RIP+uint64(n), code[n:n+1]) == nil {
		n++
	}
	inst, err := x86asm.Decode(code[:n], 64)
	if err != nil || inst.Op != x86asm.MOV || (inst.MemBytes != 4 && inst.MemBytes != 8) {
		return false
	}
	if _, ok := inst.Args[0].(x86asm.Mem); !ok {
		return false
	}
	var val uint64
	switch a := inst.Args[1].(type) {
	case x86asm.Reg:
		rp, size := reg(r, a)
		if rp == nil || size != inst.MemBytes {
			return false
		}
		val = *rp
	case x86asm.Imm:
		val = uint64(int64(a)) // sign-extended to the store's width
	default:
		return false
	}
	off := va & 7
	if off+uint64(inst.MemBytes) > 8 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.vmassist&(1<<vmassistWritablePT) == 0 {
		return false
	}
	l1, idx, ok := p.l1For(c, va)
	if !ok {
		return false
	}
	t := p.table(l1)
	if t == nil {
		return false
	}
	pte := load64(t[8*idx:])
	if pte&(pteP|pteRW) != pteP {
		return false // only read-only mappings
	}
	target := (pte & pteAddr) >> 12
	pi := p.pages.get(target)
	if _, own := p.ram(target); !own || pi == nil || pi.typ != ptL1 || pi.count == 0 {
		return false
	}
	tt := p.table(target)
	if tt == nil {
		return false
	}
	slot := int(va&0xfff) / 8
	var w [8]byte
	binary.LittleEndian.PutUint64(w[:], load64(tt[8*slot:]))
	if inst.MemBytes == 8 {
		binary.LittleEndian.PutUint64(w[:], val)
	} else {
		binary.LittleEndian.PutUint32(w[off:], uint32(val))
	}
	if p.modEntry(c, target, slot, 1, binary.LittleEndian.Uint64(w[:])) != 0 {
		return false
	}
	r.RIP += uint64(inst.Len)
	return true
}
