package xen

import (
	"encoding/binary"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// Reservation changes (xen/common/memory.c: increase_reservation,
// decrease_reservation, populate_physmap, memory_exchange) in the ring-3
// model.
//
// A domain's machine frames are a fixed range (physmap.Map), backed by
// the VM's memory for its whole life, so a frame given back is not freed:
// it leaves the domain's reservation (current_reservation drops), its M2P
// entry becomes INVALID_M2P_ENTRY, and from then on no validation accepts
// it (a PTE mapping it, a page-table type, MACHPHYS_UPDATE, a grant of
// it, set_gdt), as a frame the domain no longer owns. As on Xen
// (guest_remove_page, and since XSA-252 without an implicit unpin), a
// frame that still has a type reference (pinned, a page table in use, a
// writable mapping, a descriptor page) is removed all the same but lives
// on until its last type reference goes; only then can increase_reservation
// or populate_physmap hand it out again, zeroed, as Xen hands out
// scrubbed pages. Read-only mappings take no reference in this model and
// keep reading the frame until it is reused (by the same domain).
//
// The domain's maximum reservation is its RAM: a frame can come back only
// after one was given back, so an increase beyond it stops short, as on a
// Xen host without free memory.

// reservation is the set of frames a domain gave back.
type reservation struct {
	removed map[uint64]bool // MFN -> given back
	free    []uint64        // given back and without type references: reusable
}

// ram returns the PFN of machine frame mfn when it is the domain's RAM
// and has not been given back (the frame is populated).
func (p *pvDomain) ram(mfn uint64) (uint64, bool) {
	pfn, ok := p.frames.PFN(mfn)
	// The map is empty unless the guest gave frames back: the length
	// check keeps a hash lookup out of every page-table entry validated.
	if !ok || len(p.res.removed) != 0 && p.res.removed[mfn] {
		return 0, false
	}
	return pfn, true
}

// released is called when frame mfn's last type reference goes: a frame
// given back becomes reusable. p.mu held.
func (p *pvDomain) released(mfn uint64) {
	if p.res.removed[mfn] {
		p.res.free = append(p.res.free, mfn)
	}
}

// XENMEM_* reservation subcommands and their arguments (memory.h).
const (
	xenmemIncreaseReservation = 0
	xenmemDecreaseReservation = 1
	xenmemPopulatePhysmap     = 6
	xenmemExchange            = 11

	memopExtentShift = 6       // MEMOP_EXTENT_SHIFT: cmd bits 6+ are the start extent
	memopCmdMask     = 0x3f    // MEMOP_CMD_MASK
	memopBatch       = 512     // extents per batch before a continuation
	xenmemfPoD       = 1 << 16 // XENMEMF_populate_on_demand
	invalidM2P       = ^uint64(0)
	reservationSize  = 32 // struct xen_memory_reservation
	exchangeSize     = 72 // struct xen_memory_exchange
)

// memReservation is struct xen_memory_reservation.
type memReservation struct {
	extents  uint64 // extent_start: guest array of xen_pfn_t
	nr       uint64
	order    uint32
	memFlags uint32
	domid    uint16
}

func parseReservation(b []byte) memReservation {
	return memReservation{extents: u64(b), nr: u64(b[8:]), order: u32(b[16:]),
		memFlags: u32(b[20:]), domid: u16(b[24:])}
}

// pvReservation is increase_reservation, decrease_reservation and
// populate_physmap (do_memory_op): the return value is the number of
// extents done, never an error; anything wrong with the request stops it
// where it is. Every memopBatch extents the call continues itself with the
// done count in cmd's upper bits, as Xen's hypercall_create_continuation
// does, so a guest-chosen nr_extents cannot hold the vCPU thread.
func pvReservation(c *call) int64 {
	op, start := c.args[0]&memopCmdMask, c.args[0]>>memopExtentShift
	b, ok := c.arg(c.args[1], reservationSize)
	if !ok {
		return int64(start)
	}
	r := parseReservation(b)
	// Too large to encode a continuation, already done, or another
	// domain (a domU has no privilege over others): nothing happens.
	if r.nr > uint64(^uint32(0))>>memopExtentShift || start >= r.nr ||
		(r.domid != domidSelf && r.domid != c.d.id) {
		return int64(start)
	}
	// Only single pages: Xen allows a domU orders up to 9 (max_order),
	// this model none above 0. address bits below a page are invalid
	// (construct_memop_from_reservation).
	if r.order != 0 {
		return int64(start)
	}
	bits := r.memFlags & 0xff
	if bits != 0 && bits < 12 {
		return int64(start)
	}
	p := c.d.pv
	p.mu.Lock()
	defer p.mu.Unlock()
	i := start
	for ; i < r.nr; i++ {
		if i != start && i-start >= memopBatch {
			c.continuation(xenabi.HypervisorMemoryOp, op|i<<memopExtentShift, c.args[1])
			return int64(i)
		}
		var ok bool
		switch op {
		case xenmemDecreaseReservation:
			ok = p.decreaseOne(c, r.extents+8*i)
		case xenmemIncreaseReservation:
			ok = p.increaseOne(c, r.extents, i, bits)
		default:
			ok = r.memFlags&xenmemfPoD == 0 && p.populateOne(c, r.extents+8*i, bits)
		}
		if !ok {
			break
		}
	}
	return int64(i)
}

// decreaseOne gives back the frame named at guest address va
// (guest_remove_page): false when it cannot be read or is not a frame of
// the domain's RAM. p.mu held.
func (p *pvDomain) decreaseOne(c *call, va uint64) bool {
	b, ok := c.arg(va, 8)
	if !ok {
		return false
	}
	mfn := u64(b)
	pfn, ok := p.ram(mfn)
	if !ok {
		return false // "Domain %u page number %lx invalid"
	}
	if p.res.removed == nil {
		p.res.removed = map[uint64]bool{}
	}
	p.res.removed[mfn] = true
	store64(p.m2p[8*pfn:], invalidM2P)
	if pi := p.pages.get(mfn); pi == nil || pi.count == 0 {
		p.res.free = append(p.res.free, mfn)
	}
	return true
}

// allocate takes a reusable frame given back earlier, below 2^bits bytes
// when bits is not 0, zeroes it and puts it back in the reservation. It
// looks at a bounded number of candidates. p.mu held.
func (p *pvDomain) allocate(bits uint32) (uint64, bool) {
	for n := 0; n < 64 && len(p.res.free) > 0; n++ {
		last := len(p.res.free) - 1
		mfn := p.res.free[last]
		p.res.free = p.res.free[:last]
		if !p.res.removed[mfn] {
			continue // a stale entry: already reused
		}
		if pi := p.pages.get(mfn); pi != nil && pi.count > 0 {
			continue // referenced again later: released() re-adds it
		}
		if bits != 0 && bits < 64 && mfn>>(bits-12) != 0 {
			p.res.free = append([]uint64{mfn}, p.res.free...)
			continue
		}
		delete(p.res.removed, mfn)
		if t := p.table(mfn); t != nil {
			clear(t)
		}
		return mfn, true
	}
	return 0, false
}

// increaseOne is one extent of increase_reservation: a frame, its MFN
// written to extents[i] unless the array is null. The M2P is left as it
// is (INVALID_M2P_ENTRY) for the guest to set. p.mu held.
func (p *pvDomain) increaseOne(c *call, extents, i uint64, bits uint32) bool {
	mfn, ok := p.allocate(bits)
	if !ok {
		return false
	}
	if extents == 0 {
		return true
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], mfn)
	return c.write(extents+8*i, b[:]) // on failure the frame stays the domain's, as on Xen
}

// populateOne is one extent of populate_physmap for a PV guest: the PFN
// read at va gets a frame, M2P[mfn] = pfn, and the MFN is written back
// over the PFN. p.mu held.
func (p *pvDomain) populateOne(c *call, va uint64, bits uint32) bool {
	b, ok := c.arg(va, 8)
	if !ok {
		return false
	}
	gpfn := u64(b)
	mfn, ok := p.allocate(bits)
	if !ok {
		return false
	}
	pfn, _ := p.frames.PFN(mfn)
	store64(p.m2p[8*pfn:], gpfn)
	binary.LittleEndian.PutUint64(b, mfn)
	return c.write(va, b)
}

// pvExchange is XENMEM_exchange (memory_exchange) for single pages: each
// input frame (typeless, the domain's) is given up and a frame comes back
// for the PFN read from the output array, its MFN written there. The
// sanity checks are Xen's, in Xen's order; the request's nr_exchanged
// field is written back whatever happens, and a large exchange continues
// itself every memopBatch extents.
func pvExchange(c *call) int64 {
	arg := c.args[1]
	b, ok := c.arg(arg, exchangeSize)
	if !ok {
		return errno(xenabi.EFAULT)
	}
	in, out := parseReservation(b), parseReservation(b[32:])
	done := u64(b[64:])
	writeDone := func(rc int64) int64 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], done)
		if !c.write(arg+64, w[:]) {
			return errno(xenabi.EFAULT)
		}
		return rc
	}
	if max(in.order, out.order) > 9 {
		return writeDone(errno(xenabi.EPERM)) // max_order for a domU
	}
	if done > in.nr || in.domid != out.domid ||
		^uint64(0)>>in.order < in.nr || ^uint64(0)>>out.order < out.nr ||
		in.nr<<in.order != out.nr<<out.order {
		return writeDone(errno(xenabi.EINVAL))
	}
	if done == in.nr {
		return 0
	}
	// guest_handle_subrange_okay: both arrays' remaining ranges must lie
	// in guest addresses and not wrap.
	if !arrayOK(in.extents, done, in.nr) || !arrayOK(out.extents, done<<in.order>>out.order, out.nr) {
		return writeDone(errno(xenabi.EFAULT))
	}
	if in.domid != domidSelf && in.domid != c.d.id {
		return writeDone(errno(xenabi.ESRCH))
	}
	if in.order != 0 || out.order != 0 {
		return writeDone(errno(xenabi.EPERM)) // this model exchanges single pages only
	}
	p := c.d.pv
	p.mu.Lock()
	defer p.mu.Unlock()
	for n := 0; done < in.nr; n++ {
		if n >= memopBatch {
			c.continuation(xenabi.HypervisorMemoryOp, xenmemExchange, arg)
			return writeDone(0)
		}
		ib, ok1 := c.arg(in.extents+8*done, 8)
		ob, ok2 := c.arg(out.extents+8*done, 8)
		if !ok1 || !ok2 {
			return writeDone(errno(xenabi.EFAULT))
		}
		mfn := u64(ib)
		pfn, ok := p.ram(mfn)
		if !ok {
			return writeDone(errno(xenabi.EINVAL))
		}
		if pi := p.pages.get(mfn); pi != nil && pi.count > 0 {
			return writeDone(errno(xenabi.EINVAL)) // steal_page: still referenced
		}
		// The same frame serves as the new one: given up, scrubbed and
		// handed back for the requested PFN.
		if t := p.table(mfn); t != nil {
			clear(t)
		}
		store64(p.m2p[8*pfn:], u64(ob))
		binary.LittleEndian.PutUint64(ob, mfn)
		if !c.write(out.extents+8*done, ob) {
			return writeDone(errno(xenabi.EFAULT))
		}
		done++
	}
	return writeDone(0)
}

// arrayOK is guest_handle_subrange_okay for an array of 8-byte entries
// at va: entries [from, to) lie below the top of the guest's lower half
// or in its upper half, without wrapping.
func arrayOK(va, from, to uint64) bool {
	if to <= from {
		return true
	}
	if to > 1<<61 {
		return false
	}
	lo, n := va+8*from, 8*(to-from)
	hi := lo + n - 1
	if hi < lo {
		return false
	}
	return addrOK(lo) && addrOK(hi) && (lo >= 1<<47) == (hi >= 1<<47)
}
