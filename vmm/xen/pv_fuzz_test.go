package xen

import (
	"fmt"
	"testing"

	"github.com/xenresume/xenresume/vmm/physmap"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// fuzzPFNs are the frames a FuzzPVMMU input names: the boot tables and a
// few free pages (mapped writable by the boot L1 until the input unmaps
// them).
var fuzzPFNs = []uint64{pvL4, pvL3, pvL2, pvL1, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47}

// fuzzTarget is the frame an entry of a FuzzPVMMU input points at: one
// of fuzzPFNs, or one a guest may not map (shared_info, an unlisted
// Xen-window frame, the VMM's area, a frame beyond every domain).
func (e *pvEnv) fuzzTarget(b byte) uint64 {
	n := uint64(len(fuzzPFNs))
	if i := uint64(b) % (n + 4); i < n {
		return e.mfn(fuzzPFNs[i])
	}
	i := uint64(b)%(n+4) - n
	return [...]uint64{e.frames.XenFrame(0), e.frames.XenFrame(7), physmap.VMMArea >> 12, 1 << 38}[i]
}

// fuzzOp runs one 8-byte FuzzPVMMU operation: op[0] picks the
// hypercall, the rest its arguments.
func (e *pvEnv) fuzzOp(op []byte) {
	pfn := func(b byte) uint64 { return fuzzPFNs[int(b)%len(fuzzPFNs)] }
	entry := func(target, flags byte, hi byte) uint64 {
		return e.fuzzTarget(target)<<12 | uint64(flags) | uint64(hi&0x80)<<56 // NX from hi
	}
	const req = pvBuf + 0x800
	switch op[0] % 6 {
	case 0: // mmu_update of one entry of a frame
		idx := uint64(op[2]) | uint64(op[3]&1)<<8
		e.put64(req, e.mfn(pfn(op[1]))<<12|idx*8|uint64(op[3]>>1&1)) // normal or preserve-AD
		e.put64(req+8, entry(op[4], op[5], op[6]))
		e.call(xenabi.HypervisorMmuUpdate, req, 1, 0, domidSelf)
	case 1: // pin as L1..L4
		e.put64(req, mmuextPinL1+uint64(op[2]%4))
		e.put64(req+8, e.mfn(pfn(op[1])))
		e.call(hcMMUExtOp, req, 1, 0, domidSelf)
	case 2: // unpin
		e.put64(req, mmuextUnpin)
		e.put64(req+8, e.mfn(pfn(op[1])))
		e.call(hcMMUExtOp, req, 1, 0, domidSelf)
	case 3: // new_baseptr or new_user_baseptr (0: none)
		cmd, m := uint64(mmuextNewBaseptr), e.mfn(pfn(op[1]))
		if op[2]&1 != 0 {
			cmd = mmuextNewUserBase
			if op[2]&2 != 0 {
				m = 0
			}
		}
		e.put64(req, cmd)
		e.put64(req+8, m)
		e.call(hcMMUExtOp, req, 1, 0, domidSelf)
	case 4: // update_va_mapping of a page's boot mapping
		va := pfn(op[1]) << 12
		if op[2]&1 != 0 {
			va = uint64(op[3]) << 12
		}
		e.call(xenabi.HypervisorUpdateVaMapping, va, entry(op[4], op[5], op[6]), 0)
	case 5: // copy a table's entries into a free frame (a table to pin)
		// Only into a frame the guest can write: not a table or
		// descriptor page (those it maps read-only).
		src, dst := pfn(op[1]), pfn(op[2])
		if pi := e.d.pv.pages.get(e.mfn(dst)); src != dst && (pi == nil || pi.count == 0 || pi.typ == ptWritable) {
			copy(e.ram[dst*4096:(dst+1)*4096], e.ram[src*4096:(src+1)*4096])
		}
	}
	c := e.d.pv.cpus[0]
	c.ptq, c.ptqIdx = nil, nil // the guest would have made them
}

// fuzzRef is a frame's recomputed type and count.
type fuzzRef struct {
	typ pageType
	n   int
}

// checkMMU recomputes every frame's type references from the validated
// tables, the pins, the vCPUs' base pointers and GDTs, and compares them
// with the model's counts: no frame is both mapped writable and a page
// table (or descriptor page), and no validated entry maps the VMM's
// frames, another domain's or an unlisted Xen-window frame.
func checkMMU(p *pvDomain) error {
	want := map[uint64]fuzzRef{}
	xen := map[uint64]int{}
	var err error
	add := func(mfn uint64, t pageType, why string) {
		r := want[mfn]
		if r.n > 0 && r.typ != t {
			if err == nil {
				err = fmt.Errorf("frame %#x is both %s and %s (%s)", mfn, r.typ, t, why)
			}
			return
		}
		want[mfn] = fuzzRef{t, r.n + 1}
	}
	for mfn, pi := range p.pages.all {
		if pi.pinned {
			add(mfn, pi.typ, "pin")
		}
		if pi.count == 0 || pi.typ < ptL1 || pi.typ > ptL4 {
			continue
		}
		l := level(pi.typ)
		t := p.table(mfn)
		if l == 4 {
			var slots [4096]byte
			copy(slots[:], t)
			p.installSlots(slots[:])
			for i := firstXenSlot; i <= lastXenSlot; i++ {
				if got := load64(t[8*i:]); i == 256 && (got == 0 || got == p.l4M2P) {
					continue // the read-only M2P: filled or zapped by use (m2p_strict)
				}
				if got, w := load64(t[8*i:]), load64(slots[8*i:]); got != w {
					return fmt.Errorf("L4 %#x slot %d = %#x, want the VMM's %#x", mfn, i, got, w)
				}
			}
		}
		for i := range 512 {
			v := load64(t[8*i:])
			if v&pteP == 0 || xenSlot(l, i) {
				continue
			}
			if v&disallowed(l) != 0 || v&pteU == 0 {
				return fmt.Errorf("%s %#x entry %d = %#x: flags Xen never accepts", pi.typ, mfn, i, v)
			}
			tgt := (v & pteAddr) >> 12
			if l == 1 && p.frames.IsXenFrame(tgt) {
				if p.xenFrameAccess(tgt, v&pteRW != 0) != 0 {
					return fmt.Errorf("L1 %#x entry %d = %#x maps an unlisted Xen frame", mfn, i, v)
				}
				xen[tgt]++
				continue
			}
			if _, ok := p.ram(tgt); !ok {
				return fmt.Errorf("%s %#x entry %d = %#x maps a frame not the domain's", pi.typ, mfn, i, v)
			}
			switch {
			case l > 1:
				add(tgt, ptL1+pageType(l-2), fmt.Sprintf("%s %#x entry %d", pi.typ, mfn, i))
			case v&pteRW != 0:
				add(tgt, ptWritable, fmt.Sprintf("L1 %#x entry %d", mfn, i))
			}
		}
	}
	for _, c := range p.cpus {
		if c.kL4 != 0 {
			add(c.kL4, ptL4, "kernel base pointer")
		}
		if c.uL4 != 0 {
			add(c.uL4, ptL4, "user base pointer")
		}
		for _, f := range c.gdtFrames {
			add(f, ptSegDesc, "GDT")
		}
	}
	if err != nil {
		return err
	}
	for mfn, pi := range p.pages.all {
		w := want[mfn]
		if int(pi.count) != w.n || pi.count > 0 && pi.typ != w.typ {
			return fmt.Errorf("frame %#x: type %s count %d, recomputed %s count %d", mfn, pi.typ, pi.count, w.typ, w.n)
		}
	}
	for mfn, w := range want {
		if pi := p.pages.get(mfn); pi == nil || int(pi.count) != w.n {
			return fmt.Errorf("frame %#x: no type, recomputed %s count %d", mfn, w.typ, w.n)
		}
	}
	for mfn, n := range p.gnt.xenRefs {
		if n != xen[mfn] {
			return fmt.Errorf("Xen frame %#x: %d references, recomputed %d", mfn, n, xen[mfn])
		}
	}
	return nil
}

// FuzzPVMMU runs random sequences of mmu_update, mmuext_op (pin and
// unpin L1-L4, new_baseptr, new_user_baseptr) and update_va_mapping, with
// plain copies between frames to build tables, against checkMMU after
// every operation.
func FuzzPVMMU(f *testing.F) {
	op := func(b ...byte) []byte { return append(b, make([]byte, 8-len(b))...) }
	cat := func(ops ...[]byte) []byte {
		var s []byte
		for _, o := range ops {
			s = append(s, o...)
		}
		return s
	}
	// Indices into fuzzPFNs: 0-3 the boot L4..L1, 4.. PFNs 0x40...
	f.Add(cat(op(2, 0), op(1, 0, 3)))                // unpin and repin the boot L4
	f.Add(cat(op(4, 4, 0, 0, 4, 0x21), op(1, 4, 0))) // 0x40 read-only, pin as L1
	f.Add(cat(op(4, 4, 0, 0, 4, 0x21), op(5, 3, 4),  // 0x40 a read-only copy of the boot L1
		op(1, 4, 0), op(0, 2, 1, 0, 4, 0x67))) // pinned, then put in the boot L2
	f.Add(cat(op(4, 4, 0, 0, 4, 0x21), op(5, 0, 4), // 0x40 a copy of the boot L4
		op(1, 4, 3), op(3, 4), op(3, 0), op(2, 4))) // pinned, the base pointer, back, unpinned
	f.Add(cat(op(4, 4, 0, 0, 12, 0x63), op(4, 4, 0, 0, 13, 0x63), op(4, 4, 0, 0, 14, 0x63)))
	f.Add(cat(op(0, 3, 0x40, 0, 0, 0x23), op(0, 3, 0x40, 0, 4, 0x23))) // a writable mapping of a table
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 8*64 {
			data = data[:8*64]
		}
		e := newPVEnv(t)
		if err := checkMMU(e.d.pv); err != nil {
			t.Fatalf("boot: %v", err)
		}
		for i := 0; i+8 <= len(data); i += 8 {
			e.fuzzOp(data[i : i+8])
			if err := checkMMU(e.d.pv); err != nil {
				t.Fatalf("op %d % x: %v", i/8, data[i:i+8], err)
			}
		}
	})
}

// The checker's negative controls: each corruption of a consistent state
// is reported.
func TestPVCheckMMU(t *testing.T) {
	for _, tc := range []struct {
		name    string
		corrupt func(e *pvEnv)
	}{
		{"a count one too high", func(e *pvEnv) { e.d.pv.pages.get(e.mfn(pvL3)).count++ }},
		{"a lost pin", func(e *pvEnv) { e.d.pv.pages.get(e.mfn(pvL4)).pinned = false }},
		{"a table mapped writable", func(e *pvEnv) { e.put64(pvL1*4096+8*pvL2, e.mfn(pvL2)<<12|0x67) }},
		{"a VMM frame mapped", func(e *pvEnv) { e.put64(pvL1*4096+8*0x50, physmap.VMMArea|0x65) }},
		{"an unlisted Xen frame mapped", func(e *pvEnv) { e.put64(pvL1*4096+8*0x50, e.frames.XenFrame(7)<<12|0x65) }},
		{"a VMM slot changed", func(e *pvEnv) { e.put64(pvL4*4096+8*260, 0) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newPVEnv(t)
			if err := checkMMU(e.d.pv); err != nil {
				t.Fatalf("before: %v", err)
			}
			tc.corrupt(e)
			if err := checkMMU(e.d.pv); err == nil {
				t.Error("checkMMU found nothing")
			} else {
				t.Log(err)
			}
		})
	}
}
