package xen

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync/atomic"
	"unsafe"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/physmap"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// The PV MMU (xen/arch/x86/mm.c, as far as the ring-3 model needs it):
// every frame of the domain has a type with a count; a frame is a page
// table (L1-L4), a descriptor page, writable (mapped read-write by some
// L1 entry), or none, and changes type only when its count is zero, so a
// page table can never be mapped writable nor a writable page become a
// page table. Taking a page-table type validates the page (every present
// entry is checked and takes its own reference); dropping the last
// reference releases them.

type pageType uint8

const (
	ptNone pageType = iota
	ptWritable
	ptL1
	ptL2
	ptL3
	ptL4
	ptSegDesc
)

func (t pageType) String() string {
	return [...]string{"none", "writable", "L1", "L2", "L3", "L4", "seg_desc"}[t]
}

// pageInfo is one frame's type state, 8 bytes: the table holds one per
// configured frame, so its size is per-configured-page work at creation.
type pageInfo struct {
	count  uint32 // type references; getType refuses the one past the max
	typ    pageType
	pinned bool
}

// pageInfos holds the type state of each of the domain's RAM frames, by
// MFN, in one dense table: the frames are the contiguous range
// [Base, Base+NrPages). (A map of pointers cost a heap object and a hash
// insert per frame, which dominated restoring a domain whose kernel maps
// all its RAM, as the stub's map_ram and a PV Linux do.) A frame with no
// type, count or pin is all zero, as if absent.
type pageInfos struct {
	base  uint64
	infos []pageInfo
}

func newPageInfos(f physmap.Map) pageInfos {
	return pageInfos{base: f.Base, infos: make([]pageInfo, f.NrPages)}
}

// get returns mfn's state; nil for a frame that is not the domain's RAM.
func (t *pageInfos) get(mfn uint64) *pageInfo {
	if mfn < t.base || mfn-t.base >= uint64(len(t.infos)) {
		return nil
	}
	return &t.infos[mfn-t.base]
}

// all yields every frame with a type, a count or a pin, by ascending MFN.
func (t *pageInfos) all(yield func(uint64, *pageInfo) bool) {
	for i := range t.infos {
		if pi := &t.infos[i]; *pi != (pageInfo{}) && !yield(t.base+uint64(i), pi) {
			return
		}
	}
}

// vm_assist types (xen.h).
const (
	vmassistWritablePT = 2
	vmassistArchIOPL   = 4
	vmassistM2PStrict  = 32
	// vmassistPV64 is the mask of types a 64-bit PV guest may set.
	vmassistPV64 = 1<<0 | 1<<1 | 1<<2 | 1<<3 | 1<<4 | 1<<5 | 1<<32
)

// info returns RAM frame mfn's state (the caller has checked p.ram).
func (p *pvDomain) info(mfn uint64) *pageInfo { return p.pages.get(mfn) }

// TypeOf returns machine frame mfn's type and type count (for tests and
// traces).
func (d *Domain) TypeOf(mfn uint64) (string, int, bool) {
	d.pv.mu.Lock()
	defer d.pv.mu.Unlock()
	pi := d.pv.pages.get(mfn)
	if pi == nil {
		return ptNone.String(), 0, false
	}
	return pi.typ.String(), int(pi.count), pi.pinned
}

func level(t pageType) int { return int(t-ptL1) + 1 }

// getType takes a reference of type t on frame mfn (get_page_type).
// p.mu held.
func (p *pvDomain) getType(c *pvCPU, mfn uint64, t pageType) int64 {
	if _, ok := p.ram(mfn); !ok {
		if t == ptWritable && p.frames.IsXenFrame(mfn) {
			// Xen's own pages never become tables; only the listed
			// ones may be written at all.
			return p.xenFrameAccess(mfn, true)
		}
		return errno(xenabi.EINVAL)
	}
	return p.getRAMType(c, mfn, p.info(mfn), t)
}

// getRAMType is getType for a RAM frame mfn the caller has checked, whose
// state is pi. p.mu held.
func (p *pvDomain) getRAMType(c *pvCPU, mfn uint64, pi *pageInfo, t pageType) int64 {
	if pi.count > 0 {
		if pi.typ != t {
			return errno(xenabi.EINVAL) // _get_page_type: "Bad type"
		}
		if pi.count == math.MaxUint32 {
			return errno(xenabi.EINVAL) // _get_page_type: "Type count overflow"
		}
		pi.count++
		return 0
	}
	pi.typ, pi.count = t, 1
	var e int64
	switch {
	case t >= ptL1 && t <= ptL4:
		e = p.validate(c, mfn, level(t))
	case t == ptSegDesc:
		e = p.validateDescPage(mfn)
	}
	if e != 0 {
		pi.typ, pi.count = ptNone, 0
	}
	return e
}

// putType drops a reference taken by getType (put_page_type).
func (p *pvDomain) putType(c *pvCPU, mfn uint64) {
	pi := p.pages.get(mfn)
	if pi == nil || pi.count == 0 {
		return
	}
	pi.count--
	if pi.count > 0 {
		return
	}
	if pi.typ >= ptL1 && pi.typ <= ptL4 {
		p.devalidate(c, mfn, level(pi.typ))
	}
	pi.typ = ptNone
	p.released(mfn)
}

// disallowed are the flags an entry at level l may not carry for an
// unprivileged domain (base_disallow_mask and the per-level masks).
func disallowed(l int) uint64 {
	if l == 1 {
		return ptePWT | ptePCD | ptePS // cache attributes need I/O resources
	}
	return ptePWT | ptePCD | ptePS | pteG // no superpages for PV
}

// adjust makes Xen's changes to an entry it accepts (adjust_guest_l*e):
// every present entry is user-accessible, since the guest kernel runs at
// CPL 3; former supervisor L1 mappings are marked _PAGE_GUEST_KERNEL.
func adjust(e uint64, l int) uint64 {
	if e&pteP == 0 {
		return e
	}
	switch l {
	case 1:
		if e&pteU == 0 {
			e |= pteU | pteGuest
		}
		if e&pteGuest == 0 {
			e |= pteU | pteG
		}
	case 4:
		e |= pteU | pteA
	default:
		e |= pteU
	}
	return e
}

// entryRef takes the reference present entry e at level l holds.
func (p *pvDomain) entryRef(c *pvCPU, e uint64, l int) int64 {
	mfn := (e & pteAddr) >> 12
	if l == 1 {
		if _, ok := p.ram(mfn); ok {
			// The common case, taken once per entry of every L1 table
			// validated: the frame's own state, looked up once.
			if e&pteRW != 0 && p.getRAMType(c, mfn, p.info(mfn), ptWritable) != 0 {
				// get_page_from_l1e: a page of another type mapped writable
				return errno(xenabi.EBUSY)
			}
			return 0
		}
		if !p.frames.IsXenFrame(mfn) {
			return errno(xenabi.EPERM) // not the domain's frame
		}
		if r := p.xenFrameAccess(mfn, e&pteRW != 0); r != 0 {
			return r
		}
		if p.gnt.xenRefs == nil {
			p.gnt.xenRefs = map[uint64]int{}
		}
		p.gnt.xenRefs[mfn]++
		return 0
	}
	if _, ok := p.ram(mfn); !ok {
		return errno(xenabi.EINVAL)
	}
	return p.getType(c, mfn, ptL1+pageType(l-2))
}

func (p *pvDomain) entryUnref(c *pvCPU, e uint64, l int) {
	mfn := (e & pteAddr) >> 12
	if l == 1 && p.frames.IsXenFrame(mfn) {
		if p.gnt.xenRefs[mfn] > 0 {
			p.gnt.xenRefs[mfn]--
		}
		return
	}
	if l == 1 && e&pteRW == 0 {
		return
	}
	if _, ok := p.frames.PFN(mfn); ok {
		p.putType(c, mfn)
	}
}

// xenFrameAccess is the allowlist of the Xen-window frames a guest may
// map, as Xen shares them with the domain (share_xen_page_with_guest):
// shared_info and the grant-table frames set up so far read-write, the
// v2 status frame read-only (SHARE_ro: EBUSY for a writable mapping)
// and only while the table is v2. Any other frame of the window is not
// the guest's (EPERM, as for a frame of another domain). p.mu held.
func (p *pvDomain) xenFrameAccess(mfn uint64, rw bool) int64 {
	switch i := mfn - p.frames.XenFrame(0); {
	case i == 0:
		return 0
	case i >= gntFirstFrame && i < gntFirstFrame+uint64(min(p.gnt.frames, gntMaxFrames)):
		return 0
	case i == gntStatusFrame && p.gnt.ver() == 2:
		if rw {
			return errno(xenabi.EBUSY)
		}
		return 0
	}
	return errno(xenabi.EPERM)
}

func xenSlot(l, i int) bool { return l == 4 && i >= firstXenSlot && i <= lastXenSlot }

// table returns the host view of page-table frame mfn.
func (p *pvDomain) table(mfn uint64) []byte {
	b, err := p.d.mem.Slice(mfn<<12, machine.PageSize)
	if err != nil {
		return nil
	}
	return b
}

// validate checks every present entry of the level-l table at mfn and
// takes its reference, writing Xen's adjustments back; an L4 also gets the
// VMM's slots (which the guest's own entries there never reach).
func (p *pvDomain) validate(c *pvCPU, mfn uint64, l int) int64 {
	t := p.table(mfn)
	if t == nil {
		return errno(xenabi.EINVAL)
	}
	for i := 0; i < 512; i++ {
		e := binary.LittleEndian.Uint64(t[8*i:])
		if e&pteP == 0 || xenSlot(l, i) {
			continue
		}
		r := int64(0)
		if e&disallowed(l) != 0 {
			r = errno(xenabi.EINVAL)
		} else {
			r = p.entryRef(c, e, l)
		}
		if r != 0 {
			for j := 0; j < i; j++ {
				if e := binary.LittleEndian.Uint64(t[8*j:]); e&pteP != 0 && !xenSlot(l, j) {
					p.entryUnref(c, e, l)
				}
			}
			return r
		}
		if ne := adjust(e, l); ne != e {
			p.writePTE(c, mfn<<12+uint64(8*i), ne)
		}
	}
	if l == 4 {
		var slots [512 * 8]byte
		copy(slots[:], t)
		p.installSlots(slots[:])
		for i := firstXenSlot; i <= lastXenSlot; i++ {
			if w := binary.LittleEndian.Uint64(slots[8*i:]); w != binary.LittleEndian.Uint64(t[8*i:]) {
				p.writePTE(c, mfn<<12+uint64(8*i), w)
			}
		}
	}
	return 0
}

func (p *pvDomain) devalidate(c *pvCPU, mfn uint64, l int) {
	t := p.table(mfn)
	if t == nil {
		return
	}
	for i := 0; i < 512; i++ {
		if e := binary.LittleEndian.Uint64(t[8*i:]); e&pteP != 0 && !xenSlot(l, i) {
			p.entryUnref(c, e, l)
		}
	}
}

// word64 returns the 8-byte-aligned little-endian word at b[0:8] as a
// *uint64 (amd64), or nil if b is short or misaligned.
func word64(b []byte) *uint64 {
	if len(b) < 8 || uintptr(unsafe.Pointer(&b[0]))&7 != 0 {
		return nil
	}
	return (*uint64)(unsafe.Pointer(&b[0]))
}

// store64 stores v at b[0:8] in one atomic 64-bit write: page tables,
// descriptor pages and the M2P are memory the hardware (or another vCPU)
// reads concurrently, and must never see half an entry.
func store64(b []byte, v uint64) {
	if w := word64(b); w != nil {
		atomic.StoreUint64(w, v)
		return
	}
	binary.LittleEndian.PutUint64(b, v)
}

// load64 is the atomic read that goes with store64.
func load64(b []byte) uint64 {
	if w := word64(b); w != nil {
		return atomic.LoadUint64(w)
	}
	return binary.LittleEndian.Uint64(b)
}

// storeAD stores v at b[0:8] keeping the Accessed and Dirty bits of the
// entry there, with a compare-and-swap loop, so that bits the hardware
// sets meanwhile are not lost (MMU_PT_UPDATE_PRESERVE_AD, Xen's
// update_intpte). It returns the value written.
func storeAD(b []byte, v uint64) uint64 {
	w := word64(b)
	if w == nil {
		v |= binary.LittleEndian.Uint64(b) & (pteA | pteD)
		binary.LittleEndian.PutUint64(b, v)
		return v
	}
	for {
		old := atomic.LoadUint64(w)
		nv := v | old&(pteA|pteD)
		if atomic.CompareAndSwapUint64(w, old, nv) {
			return nv
		}
	}
}

// writePTE writes a page-table entry: in host memory now, and queued for
// the guest to write again itself before it next runs guest code, so that
// the MMU (or KVM's shadow of it) sees it and the TLB is flushed.
func (p *pvDomain) writePTE(c *pvCPU, gpa, val uint64) {
	p.storePTE(c, gpa, val, false)
}

// storePTE is writePTE; with ad, the entry's Accessed and Dirty bits are
// kept (storeAD) and the queued write carries them.
func (p *pvDomain) storePTE(c *pvCPU, gpa, val uint64, ad bool) {
	b, err := p.d.mem.Slice(gpa, 8)
	if err != nil {
		return
	}
	if ad {
		val = storeAD(b, val)
	} else {
		store64(b, val)
	}
	if c == nil {
		return
	}
	va, err := p.directVA(gpa)
	if err != nil {
		return
	}
	// One queued write per entry: a later write replaces the value of an
	// earlier one still queued, so the queue is bounded by the entries
	// written, not by the requests.
	if i, ok := c.ptqIdx[va]; ok && i < len(c.ptq) && c.ptq[i].va == va {
		c.ptq[i].val = val
		return
	}
	if c.ptqIdx == nil {
		c.ptqIdx = map[uint64]int{}
	}
	c.ptqIdx[va] = len(c.ptq)
	c.ptq = append(c.ptq, ptWrite{va: va, val: val})
}

// fastFlags may change in an entry without revalidating it
// (FASTPATH_FLAG_WHITELIST).
const fastFlags = pteNX | 0x7ff0_0000_0000_0000 | 0xe00 | pteG | pteD | pteA | pteU

// modEntry is mod_lN_entry: entry idx of the level-l table at mfn becomes
// nv, validated; the old entry's reference is dropped after the new one's
// is taken.
func (p *pvDomain) modEntry(c *pvCPU, mfn uint64, idx, l int, nv uint64) int64 {
	return p.modEntryAD(c, mfn, idx, l, nv, false)
}

// modEntryAD is modEntry; with ad (MMU_PT_UPDATE_PRESERVE_AD) the new
// entry keeps the Accessed and Dirty bits the old one has as it is
// written. Those bits are fastFlags, so validation does not depend on
// them.
func (p *pvDomain) modEntryAD(c *pvCPU, mfn uint64, idx, l int, nv uint64, ad bool) int64 {
	t := p.table(mfn)
	if t == nil {
		return errno(xenabi.EINVAL)
	}
	if xenSlot(l, idx) {
		return errno(xenabi.EINVAL) // "L4 update in Xen-private area"
	}
	old := load64(t[8*idx:])
	if nv&pteP != 0 {
		if nv&disallowed(l) != 0 {
			return errno(xenabi.EINVAL)
		}
		nv = adjust(nv, l)
		if old&pteP != 0 && (old^nv)&^fastFlags == 0 {
			p.storePTE(c, mfn<<12+uint64(8*idx), nv, ad)
			return 0
		}
		if r := p.entryRef(c, nv, l); r != 0 {
			return r
		}
	}
	p.storePTE(c, mfn<<12+uint64(8*idx), nv, ad)
	if old&pteP != 0 {
		p.entryUnref(c, old, l)
	}
	return 0
}

// pin is MMUEXT_PIN_Ln_TABLE. p.mu held.
func (p *pvDomain) pin(c *pvCPU, mfn uint64, t pageType) int64 {
	if _, ok := p.ram(mfn); !ok {
		return errno(xenabi.EINVAL)
	}
	if p.info(mfn).pinned {
		return errno(xenabi.EINVAL)
	}
	if e := p.getType(c, mfn, t); e != 0 {
		return e
	}
	p.info(mfn).pinned = true
	return 0
}

// l1For finds the L1 table and index mapping va through the kernel page
// tables (map_guest_l1e): every level present, no superpage, the L1 frame
// the domain's and of type L1.
func (p *pvDomain) l1For(c *pvCPU, va uint64) (uint64, int, bool) {
	if !addrOK(va) {
		return 0, 0, false
	}
	mfn := c.kL4
	for l := 4; l >= 2; l-- {
		t := p.table(mfn)
		if t == nil {
			return 0, 0, false
		}
		e := binary.LittleEndian.Uint64(t[8*((va>>(12+9*(l-1)))&511):])
		if e&pteP == 0 || (l < 4 && e&ptePS != 0) {
			return 0, 0, false
		}
		mfn = (e & pteAddr) >> 12
	}
	if pi := p.pages.get(mfn); pi == nil || pi.typ != ptL1 || pi.count == 0 {
		return 0, 0, false
	}
	return mfn, int(va >> 12 & 511), true
}

// addrOK is Xen's __addr_ok: below the canonical hole or above Xen's range.
func addrOK(va uint64) bool { return va < 1<<47 || va >= hypervisorVirtEnd }

// ---- hypercalls -------------------------------------------------------------

func (c *call) pvCPU() *pvCPU { return c.d.pv.cpus[c.id] }

func pvUpdateVAMapping(c *call) int64 {
	va, val := c.args[0], c.args[1]
	p, cpu := c.d.pv, c.pvCPU()
	p.mu.Lock()
	defer p.mu.Unlock()
	l1, idx, ok := p.l1For(cpu, va)
	rc := errno(xenabi.EINVAL)
	if ok {
		rc = p.modEntry(cpu, l1, idx, 1, val)
	}
	if c.d.trace != nil {
		c.d.trace.Info("update_va_mapping", "dom", c.d.id, "vcpu", c.id, "va", hex(va), "pte", formatPTE(val),
			"flags", hex(c.args[2]), "l1_mfn", hex(l1), "ret", formatRet(rc))
	}
	return rc
}

// formatPTE decodes a page-table entry for traces: frame and flags.
func formatPTE(e uint64) string {
	if e&pteP == 0 {
		return fmt.Sprintf("%#x (not present)", e)
	}
	f := ""
	for _, b := range []struct {
		bit  uint64
		name string
	}{{pteRW, "RW"}, {pteU, "U"}, {ptePWT, "PWT"}, {ptePCD, "PCD"}, {pteA, "A"}, {pteD, "D"}, {ptePS, "PS"}, {pteG, "G"}, {pteNX, "NX"}} {
		if e&b.bit != 0 {
			f += "|" + b.name
		}
	}
	return fmt.Sprintf("mfn %#x P%s", (e&pteAddr)>>12, f)
}

var mmuextNames = map[uint32]string{
	mmuextPinL1: "pin_l1_table", mmuextPinL1 + 1: "pin_l2_table", mmuextPinL1 + 2: "pin_l3_table", mmuextPinL4: "pin_l4_table",
	mmuextUnpin: "unpin_table", mmuextNewBaseptr: "new_baseptr", mmuextTLBFlushLocal: "tlb_flush_local",
	mmuextInvlpgLocal: "invlpg_local", mmuextTLBFlushMulti: "tlb_flush_multi", mmuextInvlpgMulti: "invlpg_multi",
	mmuextTLBFlushAll: "tlb_flush_all", mmuextInvlpgAll: "invlpg_all", mmuextFlushCache: "flush_cache",
	mmuextSetLDT: "set_ldt", mmuextNewUserBase: "new_user_baseptr", mmuextClearPage: "clear_page",
	mmuextCopyPage: "copy_page", mmuextFlushCacheGl: "flush_cache_global", mmuextMarkSuper: "mark_super",
	mmuextUnmarkSuper: "unmark_super",
}

// MMU_* commands of mmu_update.
const (
	mmuNormalPTUpdate      = 0
	mmuMachphysUpdate      = 1
	mmuPTUpdatePreserveAD  = 2
	mmuPTUpdateNoTranslate = 3
	domidSelf              = 0x7ff0
)

// Preemption of mmu_update and mmuext_op, as Xen's: a call stops after a
// batch (Xen: hypercall_preempt_check) and re-issues itself with the
// request pointer advanced and the rest of the count, flagged
// MMU_UPDATE_PREEMPTED so that the done count it reports is cumulative.
// A batch also ends once the page-table writes it queued fill the write
// list, so that they are made (and the queue emptied) before the next.
const (
	mmuUpdatePreempted = 0x80000000 // MMU_UPDATE_PREEMPTED
	mmuBatch           = 512
	ptqHigh            = listPages*machine.PageSize/16 - 1 // the write list's capacity
)

// mmuBatchStart returns the count of a mmu_update or mmuext_op call and
// the done count of its earlier batches (read from pdone when the call is
// a continuation, as Xen reads it).
func (c *call) mmuBatchStart(pdone uint64) (count uint64, done uint32) {
	count = uint64(uint32(c.args[1]))
	if count&mmuUpdatePreempted != 0 {
		count &^= mmuUpdatePreempted
		if pdone != 0 {
			done, _ = c.u32(pdone)
		}
	}
	return count, done
}

// mmuPreempt reports whether a batch that has made i requests ends
// before the next.
func mmuPreempt(cpu *pvCPU, i uint64) bool {
	return i > 0 && (i >= mmuBatch || len(cpu.ptq) >= ptqHigh)
}

// mmuBatchEnd writes the cumulative done count to pdone (when given) and,
// for a preempted call, makes the continuation: hypercall nr at the
// i-th request of size bytes, with the rest of the count.
func (c *call) mmuBatchEnd(nr, size, i, count uint64, done uint32, preempted bool, rc int64) int64 {
	reqs, pdone, fd := c.args[0], c.args[2], c.args[3]
	if preempted {
		c.continuation(nr, reqs+i*size, (count-i)|mmuUpdatePreempted, pdone, fd)
	}
	if pdone != 0 {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], done+uint32(i))
		if !c.write(pdone, b[:]) && rc == 0 {
			rc = errno(xenabi.EFAULT)
		}
	}
	return rc
}

func pvMMUUpdate(c *call) int64 {
	reqs, pdone, fd := c.args[0], c.args[2], c.args[3]
	if fd&0xffff != domidSelf || fd>>16 != 0 {
		return errno(xenabi.ESRCH)
	}
	count, prev := c.mmuBatchStart(pdone)
	p, cpu := c.d.pv, c.pvCPU()
	p.mu.Lock()
	defer p.mu.Unlock()
	var done uint64
	rc := int64(0)
	preempted := false
	for ; done < count; done++ {
		if mmuPreempt(cpu, done) {
			preempted = true
			break
		}
		b, ok := c.arg(reqs+done*16, 16)
		if !ok {
			rc = errno(xenabi.EFAULT)
			break
		}
		ptr, val := u64(b), u64(b[8:])
		switch ptr & 7 {
		case mmuNormalPTUpdate, mmuPTUpdatePreserveAD, mmuPTUpdateNoTranslate:
			mfn, off := ptr>>12, int(ptr&0xff8)
			if _, ok := p.ram(mfn); !ok {
				rc = errno(xenabi.EINVAL)
				break
			}
			pi := p.info(mfn)
			switch {
			case pi.count > 0 && pi.typ >= ptL1 && pi.typ <= ptL4:
				rc = p.modEntryAD(cpu, mfn, off/8, level(pi.typ), val, ptr&7 == mmuPTUpdatePreserveAD)
			case pi.count > 0 && pi.typ == ptSegDesc:
				rc = errno(xenabi.EINVAL)
			default:
				if t := p.table(mfn); t != nil {
					store64(t[off:], val)
				}
			}
		case mmuMachphysUpdate:
			pfn, ok := p.ram(ptr >> 12)
			if !ok {
				rc = errno(xenabi.EINVAL)
				break
			}
			store64(p.m2p[8*pfn:], val)
		default:
			rc = errno(xenabi.ENOSYS)
		}
		if c.d.trace != nil {
			what, lvl := "", ""
			switch ptr & 7 {
			case mmuMachphysUpdate:
				what = fmt.Sprintf("machphys_update mfn %#x -> pfn %#x", ptr>>12, val)
			default:
				if pi := p.pages.get(ptr >> 12); pi != nil && pi.count > 0 {
					lvl = pi.typ.String()
				}
				what = fmt.Sprintf("pt_update %#x (%s entry %d) = %s", ptr&^7, lvl, ptr&0xfff/8, formatPTE(val))
			}
			c.d.trace.Info("mmu_update", "dom", c.d.id, "vcpu", c.id, "req", done, "op", what, "ret", formatRet(rc))
		}
		if rc != 0 {
			break
		}
	}
	return c.mmuBatchEnd(xenabi.HypervisorMmuUpdate, 16, done, count, prev, preempted, rc)
}

// MMUEXT_* commands.
const (
	mmuextPinL1         = 0
	mmuextPinL4         = 3
	mmuextUnpin         = 4
	mmuextNewBaseptr    = 5
	mmuextTLBFlushLocal = 6
	mmuextInvlpgLocal   = 7
	mmuextTLBFlushMulti = 8
	mmuextInvlpgMulti   = 9
	mmuextTLBFlushAll   = 10
	mmuextInvlpgAll     = 11
	mmuextFlushCache    = 12
	mmuextSetLDT        = 13
	mmuextNewUserBase   = 15
	mmuextClearPage     = 16
	mmuextCopyPage      = 17
	mmuextFlushCacheGl  = 18
	mmuextMarkSuper     = 19
	mmuextUnmarkSuper   = 20
	hcMMUExtOp          = 26
)

func pvMMUExtOp(c *call) int64 {
	ops, pdone, fd := c.args[0], c.args[2], c.args[3]
	if fd&0xffff != domidSelf {
		return errno(xenabi.ESRCH)
	}
	count, prev := c.mmuBatchStart(pdone)
	p, cpu := c.d.pv, c.pvCPU()
	p.mu.Lock()
	defer p.mu.Unlock()
	var done uint64
	rc := int64(0)
	preempted := false
	for ; done < count && rc == 0; done++ {
		if mmuPreempt(cpu, done) {
			preempted = true
			break
		}
		b, ok := c.arg(ops+done*24, 24)
		if !ok {
			rc = errno(xenabi.EFAULT)
			break
		}
		cmd, arg1, arg2 := u32(b), u64(b[8:]), u64(b[16:])
		switch cmd {
		case mmuextPinL1, mmuextPinL1 + 1, mmuextPinL1 + 2, mmuextPinL4:
			rc = p.pin(cpu, arg1, ptL1+pageType(cmd))
		case mmuextUnpin:
			pi := p.pages.get(arg1)
			if pi == nil || !pi.pinned {
				rc = errno(xenabi.EINVAL)
				break
			}
			pi.pinned = false
			p.putType(cpu, arg1)
		case mmuextNewBaseptr:
			rc = p.newBaseptr(c, cpu, arg1)
		case mmuextNewUserBase:
			rc = p.newUserBaseptr(cpu, arg1)
		case mmuextTLBFlushLocal, mmuextInvlpgLocal, mmuextTLBFlushMulti, mmuextInvlpgMulti,
			mmuextTLBFlushAll, mmuextInvlpgAll:
			p.flushTLB(cpu)
			if cmd != mmuextTLBFlushLocal && cmd != mmuextInvlpgLocal {
				p.flushOthers(cpu) // pv_vcpu.go
			}
		case mmuextFlushCache, mmuextFlushCacheGl:
			rc = errno(xenabi.EACCES)
		case mmuextSetLDT:
			if arg2 > 8192 || (arg2 != 0 && (arg1&0xfff != 0 || !addrOK(arg1))) {
				rc = errno(xenabi.EINVAL)
			} else if arg2 != 0 {
				// Loading an LDT into the hardware (the per-vCPU shadow
				// of validated seg_desc pages) is not modelled yet.
				rc = errno(xenabi.ENOSYS)
			} else {
				cpu.ldtBase, cpu.ldtEnts = 0, 0
			}
		case mmuextClearPage, mmuextCopyPage:
			rc = p.clearCopy(cpu, cmd, arg1, arg2)
		case mmuextMarkSuper, mmuextUnmarkSuper:
			rc = errno(xenabi.EOPNOTSUPP)
		default:
			rc = errno(xenabi.ENOSYS)
		}
		if c.d.trace != nil {
			name, ok := mmuextNames[cmd]
			if !ok {
				name = fmt.Sprint(cmd)
			}
			c.d.trace.Info("mmuext_op", "dom", c.d.id, "vcpu", c.id, "op", done, "cmd", name,
				"arg1", hex(arg1), "arg2", hex(arg2), "ret", formatRet(rc))
		}
		if rc != 0 {
			break
		}
	}
	return c.mmuBatchEnd(hcMMUExtOp, 24, done, count, prev, preempted, rc)
}

// flushTLB has the guest reload its CR3 before it next runs.
func (p *pvDomain) flushTLB(c *pvCPU) {
	if len(c.ptq) == 0 {
		// A write of an entry's own value: the write loop's CR3
		// reload does the flush.
		t := p.table(c.kL4)
		if t != nil {
			p.writePTE(c, c.kL4<<12+256*8, binary.LittleEndian.Uint64(t[256*8:]))
		}
	}
}

// newBaseptr is MMUEXT_NEW_BASEPTR (new_guest_cr3): the kernel L4.
func (p *pvDomain) newBaseptr(c *call, cpu *pvCPU, mfn uint64) int64 {
	if mfn == cpu.kL4 {
		p.flushTLB(cpu)
		return 0
	}
	if e := p.getType(cpu, mfn, ptL4); e != 0 {
		return e
	}
	p.kernelL4(cpu, mfn)
	old := cpu.kL4
	cpu.kL4 = mfn
	cpu.syncCR3 = true
	if old != 0 {
		p.putType(cpu, old)
	}
	return 0
}

// newUserBaseptr is MMUEXT_NEW_USER_BASEPTR: the user L4, 0 for none.
func (p *pvDomain) newUserBaseptr(cpu *pvCPU, mfn uint64) int64 {
	if mfn != 0 {
		if e := p.getType(cpu, mfn, ptL4); e != 0 {
			return e
		}
		p.userL4(cpu, mfn)
	}
	old := cpu.uL4
	cpu.uL4 = mfn
	if old != 0 {
		p.putType(cpu, old)
	}
	return 0
}

func (p *pvDomain) clearCopy(cpu *pvCPU, cmd uint32, dst, src uint64) int64 {
	if e := p.getType(cpu, dst, ptWritable); e != 0 {
		return errno(xenabi.EINVAL)
	}
	defer p.putType(cpu, dst)
	d := p.table(dst)
	if d == nil {
		return errno(xenabi.EINVAL)
	}
	if cmd == mmuextClearPage {
		clear(d)
		return 0
	}
	if _, ok := p.machineAddr(src); !ok || p.frames.IsXenFrame(src) && p.xenFrameAccess(src, false) != 0 {
		return errno(xenabi.EINVAL)
	}
	s := p.table(src)
	if s == nil {
		return errno(xenabi.EINVAL)
	}
	copy(d, s)
	return 0
}
