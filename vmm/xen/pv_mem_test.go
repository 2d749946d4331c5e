package xen

import (
	"testing"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

const (
	resArg = 0x8000 // a struct xen_memory_reservation / xen_memory_exchange
	resArr = 0x9000 // its extent array
)

// reserve writes a reservation at resArg over the given extents and calls
// memory_op op with it.
func (e *pvEnv) reserve(op uint64, order, flags uint32, dom uint16, extents ...uint64) int64 {
	e.t.Helper()
	for i, x := range extents {
		e.put64(resArr+8*uint64(i), x)
	}
	e.putReservation(resArg, resArr, uint64(len(extents)), order, flags, dom)
	return e.call(xenabi.HypervisorMemoryOp, op, resArg)
}

func (e *pvEnv) putReservation(va, arr, nr uint64, order, flags uint32, dom uint16) {
	e.put64(va, arr)
	e.put64(va+8, nr)
	e.put64(va+16, uint64(order)|uint64(flags)<<32)
	e.put64(va+24, uint64(dom))
}

func (e *pvEnv) curReservation() int64 {
	e.put64(resArg+0x100, domidSelf)
	return e.call(xenabi.HypervisorMemoryOp, xenmemCurrentReservation, resArg+0x100)
}

func (e *pvEnv) m2p(pfn uint64) uint64 { return load64(e.d.pv.m2p[8*pfn:]) }

// decrease_reservation gives frames back: the count done is returned,
// the reservation drops, the M2P entry is invalid and nothing can map,
// type or M2P-update the frame any more. A request that names a frame the
// domain does not own stops there with the count done (guest_remove_page).
func TestPVDecreaseReservation(t *testing.T) {
	e := newPVEnv(t)
	nr := int64(e.frames.NrPages)
	wantRet(t, "decrease 3", e.reserve(xenmemDecreaseReservation, 0, 0, domidSelf, e.mfn(0x40), e.mfn(0x41), e.mfn(0x42)), 3)
	wantRet(t, "current_reservation", e.curReservation(), nr-3)
	if got := e.m2p(0x40); got != invalidM2P {
		t.Errorf("M2P of a given-back frame %#x, want INVALID_M2P_ENTRY", got)
	}
	// Negative controls: the frame is no longer the domain's.
	wantRet(t, "map a given-back frame", e.call(xenabi.HypervisorUpdateVaMapping, 0x30<<12, e.mfn(0x40)<<12|0x63, 2), errno(xenabi.EPERM))
	copy(e.ram[pvBuf:], le64(e.mfn(0x41)<<12|mmuMachphysUpdate, 0x41))
	wantRet(t, "machphys_update of a given-back frame", e.call(xenabi.HypervisorMmuUpdate, pvBuf, 1, 0, domidSelf), errno(xenabi.EINVAL))
	copy(e.ram[pvBuf:], le64(mmuextPinL1, e.mfn(0x42), 0))
	wantRet(t, "pin a given-back frame", e.call(hcMMUExtOp, pvBuf, 1, 0, domidSelf), errno(xenabi.EINVAL))

	cases := []struct {
		name    string
		order   uint32
		dom     uint16
		extents []uint64
		want    int64
	}{
		{"already given back", 0, domidSelf, []uint64{e.mfn(0x43), e.mfn(0x40), e.mfn(0x44)}, 1},
		{"a Xen frame", 0, domidSelf, []uint64{e.frames.XenFrame(0)}, 0},
		{"a PFN, not an MFN", 0, domidSelf, []uint64{0x45}, 0},
		{"beyond RAM", 0, domidSelf, []uint64{e.mfn(0) + e.frames.NrPages}, 0},
		{"another domain", 0, 7, []uint64{e.mfn(0x46)}, 0},
		{"order 1", 1, domidSelf, []uint64{e.mfn(0x46)}, 0},
		{"own domain id", 0, 1, []uint64{e.mfn(0x47)}, 1},
	}
	for _, tc := range cases {
		wantRet(t, tc.name, e.reserve(xenmemDecreaseReservation, tc.order, 0, tc.dom, tc.extents...), tc.want)
	}
	wantRet(t, "current_reservation after the cases", e.curReservation(), nr-5)
	// A count too large to encode a continuation does nothing.
	e.putReservation(resArg, resArr, 1<<32, 0, 0, domidSelf)
	wantRet(t, "nr_extents > UINT_MAX>>6", e.call(xenabi.HypervisorMemoryOp, xenmemDecreaseReservation, resArg), 0)
	// An unreadable array stops at once.
	e.putReservation(resArg, 0x7fff_ffff_0000, 1, 0, 0, domidSelf)
	wantRet(t, "unreadable extent array", e.call(xenabi.HypervisorMemoryOp, xenmemDecreaseReservation, resArg), 0)
}

// A frame still referenced when given back (here the pinned L4 in use)
// leaves the reservation at once but is not handed out again while its
// type references last (XSA-252: no implicit unpin); increase and
// populate bring back only unreferenced frames, zeroed, up to the
// domain's RAM.
func TestPVIncreaseReservation(t *testing.T) {
	e := newPVEnv(t)
	nr := int64(e.frames.NrPages)
	e.ram[0x50*4096+8] = 0xaa
	e.unmap(0x50)
	e.unmap(0x51)
	wantRet(t, "decrease L4 and a data frame", e.reserve(xenmemDecreaseReservation, 0, 0, domidSelf, e.mfn(pvL4), e.mfn(0x50)), 2)
	if typ, n, _ := e.d.TypeOf(e.mfn(pvL4)); typ != "L4" || n == 0 {
		t.Fatalf("the L4 in use lost its type when given back: %s/%d", typ, n)
	}
	wantRet(t, "current_reservation", e.curReservation(), nr-2)
	// Only the data frame comes back; the L4 is still referenced.
	wantRet(t, "increase 2", e.reserve(xenmemIncreaseReservation, 0, 0, domidSelf, 0, 0), 1)
	if got := e.get64(resArr); got != e.mfn(0x50) {
		t.Fatalf("increase wrote MFN %#x, want %#x", got, e.mfn(0x50))
	}
	if e.ram[0x50*4096+8] != 0 {
		t.Error("a frame handed back was not scrubbed")
	}
	if got := e.m2p(0x50); got != invalidM2P {
		t.Errorf("increase_reservation set the M2P (%#x); Xen leaves it", got)
	}
	wantRet(t, "current_reservation after increase", e.curReservation(), nr-1)
	// Beyond the maximum: nothing to hand out.
	wantRet(t, "increase beyond maximum", e.reserve(xenmemIncreaseReservation, 0, 0, domidSelf, 0), 0)
	// populate_physmap: PFN in, MFN out, M2P set.
	wantRet(t, "decrease for populate", e.reserve(xenmemDecreaseReservation, 0, 0, domidSelf, e.mfn(0x51)), 1)
	wantRet(t, "populate with PoD", e.reserve(xenmemPopulatePhysmap, 0, xenmemfPoD, domidSelf, 0x123), 0)
	wantRet(t, "populate order 9", e.reserve(xenmemPopulatePhysmap, 9, 0, domidSelf, 0x123), 0)
	wantRet(t, "populate, address bits below a page", e.reserve(xenmemPopulatePhysmap, 0, 8, domidSelf, 0x123), 0)
	wantRet(t, "populate, address bits too few for the frame", e.reserve(xenmemPopulatePhysmap, 0, 20, domidSelf, 0x123), 0)
	wantRet(t, "populate", e.reserve(xenmemPopulatePhysmap, 0, 0, domidSelf, 0x123), 1)
	if got := e.get64(resArr); got != e.mfn(0x51) {
		t.Fatalf("populate wrote %#x, want MFN %#x", got, e.mfn(0x51))
	}
	if got := e.m2p(0x51); got != 0x123 {
		t.Errorf("populate set M2P %#x, want 0x123", got)
	}
	// The frame is the domain's again: it can be mapped.
	wantRet(t, "map a repopulated frame", e.call(xenabi.HypervisorUpdateVaMapping, 0x30<<12, e.mfn(0x51)<<12|0x63, 2), 0)
	// The L4 becomes reusable once its last reference goes.
	l4 := e.copyL4(0x60)
	wantRet(t, "new baseptr", e.call(hcMMUExtOp, e.putOp(mmuextNewBaseptr, l4), 1, 0, domidSelf), 0)
	e.cpu.paging.CR3 = l4 << 12 // as the vCPU loads it before the guest runs again
	wantRet(t, "unpin the old L4", e.call(hcMMUExtOp, e.putOp(mmuextUnpin, e.mfn(pvL4)), 1, 0, domidSelf), 0)
	if typ, n, _ := e.d.TypeOf(e.mfn(pvL4)); n != 0 {
		t.Fatalf("old L4 still %s/%d", typ, n)
	}
	wantRet(t, "increase after the L4's release", e.reserve(xenmemIncreaseReservation, 0, 0, domidSelf, 0), 1)
	if got := e.get64(resArr); got != e.mfn(pvL4) {
		t.Errorf("increase handed out %#x, want the released L4 %#x", got, e.mfn(pvL4))
	}
}

// unmap clears the boot L1's entry for frame pfn, dropping the writable
// reference the frame would otherwise keep.
func (e *pvEnv) unmap(pfn uint64) {
	e.t.Helper()
	wantRet(e.t, "unmap", e.call(xenabi.HypervisorUpdateVaMapping, pfn<<12, 0, 2), 0)
}

// putOp writes one mmuext_op at pvBuf and returns its address.
func (e *pvEnv) putOp(cmd, arg1 uint64) uint64 {
	copy(e.ram[pvBuf:], le64(cmd, arg1, 0))
	return pvBuf
}

// copyL4 makes frame pfn a read-only copy of the boot L4, pinned, and
// returns its MFN.
func (e *pvEnv) copyL4(pfn uint64) uint64 {
	e.t.Helper()
	copy(e.ram[pfn*4096:(pfn+1)*4096], e.ram[pvL4*4096:])
	wantRet(e.t, "L4 copy read-only", e.call(xenabi.HypervisorUpdateVaMapping, pfn<<12, e.mfn(pfn)<<12|0x61, 2), 0)
	wantRet(e.t, "pin the L4 copy", e.call(hcMMUExtOp, e.putOp(mmuextPinL4, e.mfn(pfn)), 1, 0, domidSelf), 0)
	return e.mfn(pfn)
}

// A reservation call over more than a batch of extents continues itself,
// as do_memory_op does: the done count in cmd's upper bits, the argument
// unchanged, and the count done so far returned.
func TestPVReservationPreemption(t *testing.T) {
	e := newPVEnv(t)
	nr := e.frames.NrPages // 512: one batch
	ext := make([]uint64, nr+3)
	for i := range ext {
		ext[i] = e.mfn(uint64(i) % nr)
	}
	e.cpu.regs.RIP = 0x5000
	wantRet(t, "first batch", e.reserve(xenmemDecreaseReservation, 0, 0, domidSelf, ext...), memopBatch)
	cpu := e.d.pv.cpus[0]
	if len(cpu.pending) != 1 {
		t.Fatalf("%d register changes queued, want the continuation", len(cpu.pending))
	}
	e.runLater()
	r := e.cpu.regs
	if r.RIP != 0x5000-2 || r.RAX != xenabi.HypervisorMemoryOp || r.RDI != xenmemDecreaseReservation|memopBatch<<memopExtentShift || r.RSI != resArg {
		t.Fatalf("continuation rip %#x rax %d rdi %#x rsi %#x", r.RIP, r.RAX, r.RDI, r.RSI)
	}
	// The rest names frames already given back: it stops at once.
	wantRet(t, "continued", e.call(r.RAX, r.RDI, r.RSI), memopBatch)
	wantRet(t, "current_reservation", e.curReservation(), 0)
	// A start extent at or past nr_extents does nothing.
	wantRet(t, "start past the end", e.call(xenabi.HypervisorMemoryOp, xenmemIncreaseReservation|uint64(len(ext))<<memopExtentShift, resArg), int64(len(ext)))
}

// XENMEM_exchange: Xen's sanity checks and errnos (memory_exchange),
// XTF xsa-212's request refused with EFAULT, and a valid single-page
// exchange done with nr_exchanged written back.
func TestPVExchange(t *testing.T) {
	e := newPVEnv(t)
	const outArr = resArr + 0x800
	put := func(inArr, inNr uint64, inOrder uint32, outA, outNr uint64, outOrder uint32, done uint64) {
		e.putReservation(resArg, inArr, inNr, inOrder, 0, domidSelf)
		e.putReservation(resArg+32, outA, outNr, outOrder, 0, domidSelf)
		e.put64(resArg+64, done)
	}
	xenVA := uint64(0xffff_8300_0000_0000)
	cases := []struct {
		name string
		set  func()
		want int64
	}{
		{"order above 9", func() { put(resArr, 1, 10, outArr, 1, 10, 0) }, errno(xenabi.EPERM)},
		{"sizes differ", func() { put(resArr, 2, 0, outArr, 1, 0, 0) }, errno(xenabi.EINVAL)},
		{"nr_exchanged past in", func() { put(resArr, 1, 0, outArr, 1, 0, 2) }, errno(xenabi.EINVAL)},
		{"domids differ", func() { put(resArr, 1, 0, outArr, 1, 0, 0); e.put64(resArg+56, 0) }, errno(xenabi.EINVAL)},
		{"already done", func() { put(resArr, 1, 0, outArr, 1, 0, 1) }, 0},
		// xsa-212: nr_exchanged scaled onto Xen's addresses.
		{"xsa-212", func() { put(0x9000-xenVA, xenVA/8+1, 0, 0, xenVA/8+1, 0, xenVA/8) }, errno(xenabi.EFAULT)},
		{"in array in Xen's range", func() { put(xenVA, 1, 0, outArr, 1, 0, 0) }, errno(xenabi.EFAULT)},
		{"orders differ", func() { put(resArr, 1, 1, outArr, 2, 0, 0) }, errno(xenabi.EPERM)},
		{"a page table", func() { put(resArr, 1, 0, outArr, 1, 0, 0); e.put64(resArr, e.mfn(pvL1)) }, errno(xenabi.EINVAL)},
		{"not the domain's", func() { put(resArr, 1, 0, outArr, 1, 0, 0); e.put64(resArr, 0x45) }, errno(xenabi.EINVAL)},
	}
	for _, tc := range cases {
		tc.set()
		wantRet(t, tc.name, e.call(xenabi.HypervisorMemoryOp, xenmemExchange, resArg), tc.want)
	}
	// A valid exchange of two pages, unmapped first (steal_page).
	e.unmap(0x70)
	e.unmap(0x71)
	put(resArr, 2, 0, outArr, 2, 0, 0)
	e.put64(resArr, e.mfn(0x70))
	e.put64(resArr+8, e.mfn(0x71))
	e.put64(outArr, 0x200)
	e.put64(outArr+8, 0x201)
	e.ram[0x70*4096] = 1
	wantRet(t, "exchange", e.call(xenabi.HypervisorMemoryOp, xenmemExchange, resArg), 0)
	if e.get64(resArg+64) != 2 || e.get64(outArr) != e.mfn(0x70) || e.get64(outArr+8) != e.mfn(0x71) {
		t.Errorf("exchange: nr_exchanged %d, out %#x %#x", e.get64(resArg+64), e.get64(outArr), e.get64(outArr+8))
	}
	if e.m2p(0x70) != 0x200 || e.m2p(0x71) != 0x201 || e.ram[0x70*4096] != 0 {
		t.Errorf("exchange: M2P %#x %#x, old contents kept %v", e.m2p(0x70), e.m2p(0x71), e.ram[0x70*4096] != 0)
	}
}
