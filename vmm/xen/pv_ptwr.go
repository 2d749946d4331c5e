package xen

import (
	"math/bits"

	"github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/arch/x86/x86asm"
)

// Writable page tables (VMASST_TYPE_writable_pagetables; Xen's
// pv_ro_page_fault and ptwr_emulated_update): a guest kernel that writes
// an entry of one of its L1 tables through a read-only mapping takes a
// write #PF on a present page; when the page written is an L1 table of
// the domain, the VMM decodes the write, merges it into the entry and
// applies it as mmu_update would (modEntry: validation, references,
// Xen's adjustments), then steps over the instruction. A write it cannot
// decode, one that is not naturally aligned, or an entry validation
// refuses, leaves the #PF for the guest, as Xen does when its emulation
// fails.
//
// Decoded writes, each 1, 2, 4 or 8 bytes (a narrower one is merged into
// the entry as Xen merges it, the other bytes read from the entry):
// mov of a register or an immediate; xchg with a register; cmpxchg; and
// cmpxchg8b. A cmpxchg compares the whole merged entry: on a mismatch
// nothing is written and the accumulator gets the entry's bytes, ZF clear,
// as the instruction does (Xen's X86EMUL_CMPXCHG_FAILED); the new value is
// validated first either way (get_page_from_l1e before the compare).
// cmpxchg16b, wider than an entry, is not emulated (Xen's "bad cmpxchg
// size").

// ptStore is one decoded write to a page-table entry.
type ptStore struct {
	op    x86asm.Op
	bytes int    // width of the memory operand
	val   uint64 // the value written (cmpxchg: if the compare succeeds)
	old   uint64 // cmpxchg, cmpxchg8b: the value compared
	reg   *uint64
	hi    bool // reg is an 8-bit high register (%ah, %ch, %dh, %bh)
}

// regVal reads x86asm register x from r: its value, its width in bytes,
// a pointer to the 64-bit register holding it and whether it is one of
// the high byte registers.
func regVal(r *kvm.Regs, x x86asm.Reg) (uint64, int, *uint64, bool) {
	if x >= x86asm.AH && x <= x86asm.BH {
		p, _ := reg(r, x86asm.Reg(x86asm.AL+(x-x86asm.AH)))
		return *p >> 8 & 0xff, 1, p, true
	}
	if x >= x86asm.SPB && x <= x86asm.R15B {
		all := []*uint64{&r.RSP, &r.RBP, &r.RSI, &r.RDI, &r.R8, &r.R9, &r.R10, &r.R11, &r.R12, &r.R13, &r.R14, &r.R15}
		p := all[x-x86asm.SPB]
		return *p & 0xff, 1, p, false
	}
	p, size := reg(r, x)
	if p == nil {
		return 0, 0, nil, false
	}
	return *p & widthMask(size), size, p, false
}

// widthMask has the low n bytes set.
func widthMask(n int) uint64 {
	if n >= 8 {
		return ^uint64(0)
	}
	return 1<<(8*n) - 1
}

// decodePTWrite decodes in as a write to memory the model emulates.
func decodePTWrite(in *x86asm.Inst, r *kvm.Regs) (ptStore, bool) {
	w := ptStore{op: in.Op, bytes: in.MemBytes}
	if _, ok := in.Args[0].(x86asm.Mem); !ok {
		// xchg may name the memory operand second.
		if in.Op != x86asm.XCHG {
			return w, false
		}
		if _, ok := in.Args[1].(x86asm.Mem); !ok {
			return w, false
		}
		in.Args[0], in.Args[1] = in.Args[1], in.Args[0]
	}
	switch w.bytes {
	case 1, 2, 4, 8:
	default:
		return w, false
	}
	switch in.Op {
	case x86asm.MOV, x86asm.XCHG, x86asm.CMPXCHG:
		switch a := in.Args[1].(type) {
		case x86asm.Reg:
			v, size, p, hi := regVal(r, a)
			if p == nil || size != w.bytes {
				return w, false
			}
			w.val, w.reg, w.hi = v, p, hi
		case x86asm.Imm:
			if in.Op != x86asm.MOV {
				return w, false
			}
			w.val = uint64(int64(a)) & widthMask(w.bytes) // sign-extended to the store's width
		default:
			return w, false
		}
		if in.Op == x86asm.CMPXCHG {
			w.old = r.RAX & widthMask(w.bytes)
		}
		return w, true
	case x86asm.CMPXCHG8B:
		if w.bytes != 8 {
			return w, false
		}
		w.old = r.RDX<<32 | r.RAX&0xffffffff
		w.val = r.RCX<<32 | r.RBX&0xffffffff
		return w, true
	}
	return w, false
}

// subFlags are the arithmetic flags of a - b at width n bytes, as cmp
// sets them: CF, PF, AF, ZF, SF, OF.
func subFlags(a, b uint64, n int) uint64 {
	m := widthMask(n)
	a, b = a&m, b&m
	d := (a - b) & m
	sign := uint64(1) << (8*n - 1)
	var f uint64
	if a < b {
		f |= flagCF
	}
	if bits.OnesCount8(uint8(d))%2 == 0 {
		f |= flagPF
	}
	if (a^b^d)&0x10 != 0 {
		f |= flagAF
	}
	if d == 0 {
		f |= flagZF
	}
	if d&sign != 0 {
		f |= flagSF
	}
	if (a^b)&(a^d)&sign != 0 {
		f |= flagOF
	}
	return f
}

// Arithmetic flags in RFLAGS.
const (
	flagCF     = 1 << 0
	flagPF     = 1 << 2
	flagAF     = 1 << 4
	flagZF     = 1 << 6
	flagSF     = 1 << 7
	flagOF     = 1 << 11
	flagsArith = flagCF | flagPF | flagAF | flagZF | flagSF | flagOF
)

// setReg writes the low bytes of v into the register w names, as
// the instruction writes it (a 4-byte write clears the upper half).
func (w *ptStore) setReg(v uint64) {
	if w.hi {
		*w.reg = *w.reg&^0xff00 | (v&0xff)<<8
		return
	}
	setReg(w.reg, w.bytes, v)
}

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
	if err != nil {
		return false
	}
	w, ok := decodePTWrite(&inst, r)
	if !ok || va&uint64(w.bytes-1) != 0 {
		return false // Xen: only naturally aligned accesses
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
	cur := load64(tt[8*slot:])
	shift := 8 * (va & 7)
	mask := widthMask(w.bytes) << shift
	merge := func(v uint64) uint64 { return cur&^mask | v<<shift&mask }
	nv := merge(w.val)
	curBytes := cur & mask >> shift
	switch w.op {
	case x86asm.CMPXCHG, x86asm.CMPXCHG8B:
		if merge(w.old) != cur {
			// The new entry is validated before the compare.
			if !p.validL1e(c, nv) {
				return false
			}
			if w.op == x86asm.CMPXCHG {
				r.RFLAGS = r.RFLAGS&^flagsArith | subFlags(w.old, curBytes, w.bytes)
				setReg(&r.RAX, w.bytes, curBytes)
			} else {
				r.RFLAGS &^= flagZF
				r.RAX, r.RDX = cur&0xffffffff, cur>>32
			}
			break
		}
		if p.modEntry(c, target, slot, 1, nv) != 0 {
			return false
		}
		if w.op == x86asm.CMPXCHG {
			r.RFLAGS = r.RFLAGS&^flagsArith | subFlags(w.old, curBytes, w.bytes)
		} else {
			r.RFLAGS |= flagZF
		}
	default:
		if p.modEntry(c, target, slot, 1, nv) != 0 {
			return false
		}
		if w.op == x86asm.XCHG {
			w.setReg(curBytes)
		}
	}
	r.RIP += uint64(inst.Len)
	return true
}

// validL1e reports whether L1 entry e would be accepted (get_page_from_l1e,
// then put_page_from_l1e), without writing it. p.mu held.
func (p *pvDomain) validL1e(c *pvCPU, e uint64) bool {
	if e&pteP == 0 {
		return true
	}
	if e&disallowed(1) != 0 {
		return false
	}
	e = adjust(e, 1)
	if p.entryRef(c, e, 1) != 0 {
		return false
	}
	p.entryUnref(c, e, 1)
	return true
}
