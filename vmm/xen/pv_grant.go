package xen

import (
	"encoding/binary"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// Grant tables in the ring-3 model (xen/common/grant_table.c, with the
// PV page-table side of xen/arch/x86/pv/grant_table.c): the table's frames
// are Xen's pages in the domain's Xen window after shared_info, which the
// guest maps itself by MFN; v1 and v2 entries; map_grant_ref,
// unmap_grant_ref and unmap_and_replace with host mappings made in the
// guest's L1 tables (by virtual address, or by the PTE's machine address
// with GNTMAP_contains_pte) and device mappings that only hold a
// reference; copy; cache_flush; setup_table, query_size, set_version,
// get_version and get_status_frames. A host mapping's PTE holds the
// references any L1 entry with its flags holds (a writable one a writable
// type reference on the frame), so that moving or clearing it keeps the
// counts right whatever the order (XSA-224, XSA-234); a writable device
// mapping holds one more. A domain maps what it granted to itself, as XTF
// does; a guest mapping another domain's grant is not modelled
// (GNTST_general_error), dom0's backends map guests' grants through
// BackendGrants (pv_grant_backend.go). Nothing here is saved yet: the grant frames are
// part of the Xen window, and GrantState is what a restore needs besides.

// Grant table frames: v1/v2 entries in Xen-window frames 1..4, the v2
// status frame in frame 5.
const (
	gntFirstFrame  = 1
	gntMaxFrames   = 4
	gntStatusFrame = gntFirstFrame + gntMaxFrames
	gntReserved    = 8 // GNTTAB_NR_RESERVED_ENTRIES
)

// GNTTABOP_* commands.
const (
	gnttabMapGrantRef      = 0
	gnttabUnmapGrantRef    = 1
	gnttabSetupTable       = 2
	gnttabCopy             = 5
	gnttabQuerySize        = 6
	gnttabUnmapAndReplace  = 7
	gnttabSetVersion       = 8
	gnttabGetStatusFrames  = 9
	gnttabGetVersion       = 10
	gnttabCacheFlush       = 12
	gnttabMaxOpsPerCall    = 512 // ops handled before a continuation
	gntstOkay              = 0
	gntstGeneralError      = -1
	gntstBadDomain         = -2
	gntstBadGntref         = -3
	gntstBadHandle         = -4
	gntstBadPage           = -9
	gntstBadCopyArg        = -10
	gnttabCacheOps         = 1 | 2 | 4 // INVAL, CLEAN, SOURCE_GREF
	gnttabCacheSourceGref  = 4
	gnttabCopySourceGref   = 1
	gnttabCopyDestGref     = 2
	gtfTypeMask            = 3
	gtfPermitAccess        = 1
	gtfReadonly            = 1 << 2
	gtfReading             = 1 << 3
	gtfWriting             = 1 << 4
	gntmapDeviceMap        = 1 << 0
	gntmapHostMap          = 1 << 1
	gntmapReadonly         = 1 << 2
	gntmapApplicationMap   = 1 << 3
	gntmapContainsPTE      = 1 << 4
	gntOpMapSize           = 32
	gntOpUnmapSize         = 24
	gntOpUnmapReplaceSize  = 24
	gntOpCopySize          = 40
	gntOpCacheFlushSize    = 16
	gntOpSetupSize         = 24
	gntOpGetStatusFramesSz = 16
)

type grantTable struct {
	frames  uint32 // set up so far (GNTTABOP_setup_table)
	version uint32 // 1 or 2; 0 means 1, never set
	maps    map[uint32]*grantMap
	next    uint32
	// xenRefs counts the L1 entries that map each Xen-window frame: a
	// status frame still mapped keeps v2 (XSA-255).
	xenRefs map[uint64]int
	// foreign counts dom0's mappings of each entry (pv_grant_backend.go).
	foreign map[uint32]*foreignPin
}

// grantMap is one maptrack entry: a mapping made by map_grant_ref.
type grantMap struct {
	ref       uint32
	flags     uint32
	mfn       uint64
	host, dev bool
	pte       uint64 // GPA of the host mapping's PTE
}

// GrantState is what a restore needs of a ring-3 domain's grant table
// besides its frames' contents (which live in the Xen window): how many
// frames the guest set up and the table's version.
type GrantState struct {
	Frames, Version uint32
}

// GrantState returns the grant table's frame count and version.
func (d *Domain) GrantState() GrantState {
	d.pv.mu.Lock()
	defer d.pv.mu.Unlock()
	return GrantState{Frames: d.pv.gnt.frames, Version: d.pv.gnt.ver()}
}

// RestoreGrantState sets the grant table's frame count and version, for a
// domain restored before it runs.
func (d *Domain) RestoreGrantState(s GrantState) error {
	if s.Frames > gntMaxFrames || s.Version > 2 {
		return errInval
	}
	d.pv.mu.Lock()
	defer d.pv.mu.Unlock()
	d.pv.gnt.frames, d.pv.gnt.version = s.Frames, s.Version
	return nil
}

func (g *grantTable) ver() uint32 {
	if g.version == 0 {
		return 1
	}
	return g.version
}

// entries returns the number of grant entries the table holds now.
func (g *grantTable) entries() uint32 {
	n := max(g.frames, 1) * machine.PageSize
	if g.ver() == 2 {
		return n / 16
	}
	return n / 8
}

// gntEntries returns the host view of the grant frames.
func (p *pvDomain) gntEntries() []byte {
	b, err := p.d.mem.Slice(p.frames.XenFrame(gntFirstFrame)<<12, gntMaxFrames*machine.PageSize)
	if err != nil {
		return nil
	}
	return b
}

// grantEntry reads entry ref: flags, domid, frame, and the host view of
// its flags (v1) or the status word (v2) Xen sets GTF_reading/writing in.
func (p *pvDomain) grantEntry(ref uint32) (flags, domid uint16, frame uint64, status []byte, ok bool) {
	t := p.gntEntries()
	if t == nil || ref >= p.gnt.entries() {
		return 0, 0, 0, nil, false
	}
	if p.gnt.ver() == 2 {
		e := t[16*ref:]
		st, err := p.d.mem.Slice(p.frames.XenFrame(gntStatusFrame)<<12+2*uint64(ref), 2)
		if err != nil {
			return 0, 0, 0, nil, false
		}
		return u16(e), u16(e[2:]), u64(e[8:]), st, true
	}
	e := t[8*ref:]
	return u16(e), u16(e[2:]), uint64(u32(e[4:])), e[:2], true
}

func pvGrantTableOp(c *call) int64 {
	cmd, uop, count := c.args[0], c.args[1], uint64(uint32(c.args[2]))
	switch cmd {
	case gnttabSetupTable:
		if count != 1 {
			return errno(xenabi.EINVAL)
		}
		return gntSetupTable(c, uop)
	case gnttabQuerySize:
		if count != 1 {
			return errno(xenabi.EINVAL)
		}
		return gntQuerySize(c, uop)
	case gnttabSetVersion:
		return gntSetVersion(c, uop)
	case gnttabGetVersion:
		return gntGetVersion(c, uop)
	case gnttabGetStatusFrames:
		if count != 1 {
			return errno(xenabi.EINVAL)
		}
		return gntGetStatusFrames(c, uop)
	}
	var size uint64
	var op func(c *call, b []byte) bool
	switch cmd {
	case gnttabMapGrantRef:
		size, op = gntOpMapSize, gntMap
	case gnttabUnmapGrantRef:
		size, op = gntOpUnmapSize, gntUnmap
	case gnttabUnmapAndReplace:
		size, op = gntOpUnmapReplaceSize, gntUnmapAndReplace
	case gnttabCopy:
		size, op = gntOpCopySize, gntCopy
	case gnttabCacheFlush:
		return gntCacheFlush(c, uop, count)
	default:
		return errno(xenabi.ENOSYS)
	}
	for i := uint64(0); i < count; i++ {
		if i == gnttabMaxOpsPerCall {
			// Preempted, as Xen's do_grant_table_op: the rest later.
			c.continuation(20, cmd, uop+i*size, count-i)
			return 0
		}
		b, ok := c.arg(uop+i*size, int(size))
		if !ok {
			return errno(xenabi.EFAULT)
		}
		if op(c, b) && !c.write(uop+i*size, b) {
			return errno(xenabi.EFAULT)
		}
	}
	return 0
}

func setStatus(b []byte, off int, st int16) { binary.LittleEndian.PutUint16(b[off:], uint16(st)) }

// gntSelf reports whether dom names the calling domain by its ID, and
// otherwise the GNTST_ status Xen gives: no such domain, or a domain whose
// grants the model does not map.
func gntSelf(c *call, dom uint16, selfOK bool) (bool, int16) {
	if dom == c.d.id || (selfOK && dom == domidSelf) {
		return true, 0
	}
	c.d.x.mu.Lock()
	_, exists := c.d.x.doms[dom]
	c.d.x.mu.Unlock()
	if exists {
		return false, gntstGeneralError
	}
	return false, gntstBadDomain
}

// gntMap is map_grant_ref (map_grant_ref, create_grant_pv_mapping).
func gntMap(c *call, b []byte) bool {
	p, cpu := c.d.pv, c.pvCPU()
	host, flags, ref, dom := u64(b), u32(b[8:]), u32(b[12:]), u16(b[16:])
	st := func(s int16) bool { setStatus(b, 18, s); return true }
	if flags&(gntmapHostMap|gntmapDeviceMap) == 0 {
		return st(gntstBadGntref)
	}
	if ok, s := gntSelf(c, dom, false); !ok {
		return st(s)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	eflags, edom, frame, status, ok := p.grantEntry(ref)
	if !ok {
		return st(gntstBadGntref)
	}
	ro := flags&gntmapReadonly != 0
	if eflags&gtfTypeMask != gtfPermitAccess || edom != c.d.id || (!ro && eflags&gtfReadonly != 0) {
		return st(gntstGeneralError)
	}
	if _, ok := p.ram(frame); !ok {
		return st(gntstBadPage)
	}
	m := &grantMap{ref: ref, flags: flags, mfn: frame}
	if flags&gntmapDeviceMap != 0 {
		if !ro && p.getType(cpu, frame, ptWritable) != 0 {
			return st(gntstGeneralError)
		}
		m.dev = true
	}
	if flags&gntmapHostMap != 0 {
		pte, ok := p.grantPTE(cpu, host, flags)
		if !ok {
			if m.dev && !ro {
				p.putType(cpu, frame)
			}
			return st(gntstGeneralError)
		}
		e := frame<<12 | pteP | pteA | pteD | pteNX | uint64(flags>>16&7)<<9
		if !ro {
			e |= pteRW
		}
		if flags&gntmapApplicationMap != 0 {
			e |= pteU
		}
		if r := p.modEntry(cpu, pte>>12, int(pte&0xfff)/8, 1, e); r != 0 {
			if m.dev && !ro {
				p.putType(cpu, frame)
			}
			return st(gntstGeneralError)
		}
		m.host, m.pte = true, pte
	}
	if p.gnt.maps == nil {
		p.gnt.maps = map[uint32]*grantMap{}
	}
	if len(p.gnt.maps) >= 1<<16 {
		return st(-7) // GNTST_no_device_space: the maptrack is full
	}
	for p.gnt.maps[p.gnt.next] != nil {
		p.gnt.next++
	}
	h := p.gnt.next
	p.gnt.maps[h] = m
	p.gnt.next++
	sf := u16(status) | gtfReading
	if !ro {
		sf |= gtfWriting
	}
	binary.LittleEndian.PutUint16(status, sf)
	binary.LittleEndian.PutUint32(b[20:], h)
	if m.dev {
		binary.LittleEndian.PutUint64(b[24:], frame<<12)
	}
	return st(gntstOkay)
}

// grantPTE finds the PTE a host mapping goes into: host_addr's L1 entry
// through the kernel page tables, or with GNTMAP_contains_pte host_addr
// itself, the 8-byte-aligned machine address of an entry of an L1 table
// of the domain. It returns the entry's GPA.
func (p *pvDomain) grantPTE(cpu *pvCPU, addr uint64, flags uint32) (uint64, bool) {
	if flags&gntmapContainsPTE != 0 {
		if addr&7 != 0 {
			return 0, false
		}
		mfn := addr >> 12
		if _, ok := p.ram(mfn); !ok {
			return 0, false
		}
		if pi := p.pages.get(mfn); pi == nil || pi.typ != ptL1 || pi.count == 0 {
			return 0, false
		}
		return addr, true
	}
	l1, idx, ok := p.l1For(cpu, addr)
	if !ok {
		return 0, false
	}
	return l1<<12 | uint64(idx)*8, true
}

// readPTE reads the entry at GPA pte.
func (p *pvDomain) readPTE(pte uint64) uint64 {
	t := p.table(pte >> 12)
	if t == nil {
		return 0
	}
	return binary.LittleEndian.Uint64(t[pte&0xff8:])
}

// release drops a grant mapping whose halves are both gone, clearing
// GTF_reading/writing when no other mapping of the entry is left.
func (p *pvDomain) release(h uint32, m *grantMap) {
	delete(p.gnt.maps, h)
	for _, o := range p.gnt.maps {
		if o.ref == m.ref {
			return
		}
	}
	if _, _, _, status, ok := p.grantEntry(m.ref); ok {
		binary.LittleEndian.PutUint16(status, u16(status)&^(gtfReading|gtfWriting))
	}
}

// gntUnmap is unmap_grant_ref: host_addr and dev_bus_addr 0 skip their
// half; the host PTE must still map the granted frame present with the
// mapping's write permission, or the unmap fails (XSA-234).
func gntUnmap(c *call, b []byte) bool {
	p, cpu := c.d.pv, c.pvCPU()
	host, dev, h := u64(b), u64(b[8:]), u32(b[16:])
	st := func(s int16) bool { setStatus(b, 20, s); return true }
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.gnt.maps[h]
	if m == nil {
		return st(gntstBadHandle)
	}
	ro := m.flags&gntmapReadonly != 0
	if dev != 0 && m.dev && dev>>12 != m.mfn {
		return st(gntstGeneralError)
	}
	if host != 0 && m.host {
		pte, ok := p.grantPTE(cpu, host, m.flags)
		if !ok || !p.grantPTEMatches(p.readPTE(pte), m) {
			return st(gntstGeneralError)
		}
		p.modEntry(cpu, pte>>12, int(pte&0xfff)/8, 1, 0)
		m.host = false
	}
	if dev != 0 && m.dev {
		if !ro {
			p.putType(cpu, m.mfn)
		}
		m.dev = false
	}
	if !m.host && !m.dev {
		p.release(h, m)
	}
	return st(gntstOkay)
}

// grantPTEMatches is Xen's check that a PTE is still the grant mapping:
// the frame, present, and read-write exactly when the map was.
func (p *pvDomain) grantPTEMatches(e uint64, m *grantMap) bool {
	rw := m.flags&gntmapReadonly == 0
	return e&pteP != 0 && (e&pteAddr)>>12 == m.mfn && (e&pteRW != 0) == rw
}

// gntUnmapAndReplace is unmap_and_replace (replace_grant_pv_mapping): the
// host mapping at host_addr is replaced by the entry at new_addr, which is
// cleared; with new_addr 0 the mapping is just cleared. The moved entry
// keeps the references it holds.
func gntUnmapAndReplace(c *call, b []byte) bool {
	p, cpu := c.d.pv, c.pvCPU()
	host, newAddr, h := u64(b), u64(b[8:]), u32(b[16:])
	st := func(s int16) bool { setStatus(b, 20, s); return true }
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.gnt.maps[h]
	if m == nil {
		return st(gntstBadHandle)
	}
	if !m.host || host == 0 {
		return st(gntstGeneralError)
	}
	pte, ok := p.grantPTE(cpu, host, m.flags)
	if !ok || !p.grantPTEMatches(p.readPTE(pte), m) {
		return st(gntstGeneralError)
	}
	var moved uint64
	if newAddr != 0 {
		nl1, idx, ok := p.l1For(cpu, newAddr)
		if !ok {
			return st(gntstGeneralError)
		}
		npte := nl1<<12 | uint64(idx)*8
		moved = p.readPTE(npte)
		p.writePTE(cpu, npte, 0)
	}
	old := p.readPTE(pte)
	p.writePTE(cpu, pte, moved)
	p.entryUnref(cpu, old, 1)
	m.host = false
	if !m.dev {
		p.release(h, m)
	}
	return st(gntstOkay)
}

// gntCopy is one GNTTABOP_copy: each side a grant reference of the
// calling domain's table or one of its own frames, offset and length
// within a page, the destination writable.
func gntCopy(c *call, b []byte) bool {
	p, cpu := c.d.pv, c.pvCPU()
	st := func(s int16) bool { setStatus(b, 36, s); return true }
	length, flags := uint64(u16(b[32:])), u16(b[34:])
	p.mu.Lock()
	defer p.mu.Unlock()
	side := func(o []byte, gref, dest bool) ([]byte, int16) {
		dom, off := u16(o[8:]), uint64(u16(o[10:]))
		if off+length > machine.PageSize {
			return nil, gntstBadCopyArg
		}
		if ok, s := gntSelf(c, dom, true); !ok {
			return nil, s
		}
		mfn := u64(o)
		if gref {
			fl, edom, frame, _, ok := p.grantEntry(u32(o))
			if !ok {
				return nil, gntstBadGntref
			}
			if fl&gtfTypeMask != gtfPermitAccess || edom != c.d.id || (dest && fl&gtfReadonly != 0) {
				return nil, gntstGeneralError
			}
			mfn = frame
		}
		if _, ok := p.ram(mfn); !ok {
			return nil, gntstBadPage
		}
		if dest {
			if p.getType(cpu, mfn, ptWritable) != 0 {
				return nil, gntstGeneralError
			}
			p.putType(cpu, mfn)
		}
		t := p.table(mfn)
		if t == nil {
			return nil, gntstBadPage
		}
		return t[off : off+length], 0
	}
	src, s := side(b[0:16], flags&gnttabCopySourceGref != 0, false)
	if s != 0 {
		return st(s)
	}
	dst, s := side(b[16:32], flags&gnttabCopyDestGref != 0, true)
	if s != 0 {
		return st(s)
	}
	copy(dst, src)
	return st(gntstOkay)
}

// gntCacheFlush is GNTTABOP_cache_flush: each op checked as Xen checks it
// (known flags, a range within a page, a frame the domain owns or a grant
// reference); x86's caches are coherent, so nothing more happens.
func gntCacheFlush(c *call, uop, count uint64) int64 {
	p := c.d.pv
	for i := uint64(0); i < count; i++ {
		if i == gnttabMaxOpsPerCall {
			c.continuation(20, gnttabCacheFlush, uop+i*gntOpCacheFlushSize, count-i)
			return 0
		}
		b, ok := c.arg(uop+i*gntOpCacheFlushSize, gntOpCacheFlushSize)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		off, length, op := uint64(u16(b[8:])), uint64(u16(b[10:])), u32(b[12:])
		if op&^gnttabCacheOps != 0 || off+length > machine.PageSize {
			return errno(xenabi.EINVAL)
		}
		if op&gnttabCacheSourceGref != 0 {
			p.mu.Lock()
			_, _, _, _, ok := p.grantEntry(u32(b))
			p.mu.Unlock()
			if !ok {
				return errno(xenabi.EINVAL)
			}
			continue
		}
		if _, ok := p.ram(u64(b) >> 12); !ok {
			return errno(xenabi.EPERM)
		}
	}
	return 0
}

// writeXenFrames writes the machine frames of n Xen-window frames from
// first to the guest's list (xen_pfn_t each); false means -EFAULT.
func writeXenFrames(c *call, list, first uint64, n uint32) bool {
	for i := uint64(0); i < uint64(n); i++ {
		var f [8]byte
		binary.LittleEndian.PutUint64(f[:], c.d.pv.frames.XenFrame(first+i))
		if !c.write(list+8*i, f[:]) {
			return false
		}
	}
	return true
}

func gntSetupTable(c *call, uop uint64) int64 {
	p := c.d.pv
	b, ok := c.arg(uop, gntOpSetupSize)
	if !ok {
		return errno(xenabi.EFAULT)
	}
	dom, n, list := u16(b), u32(b[4:]), u64(b[16:])
	status := int16(gntstOkay)
	if ok, s := gntSelf(c, dom, true); !ok {
		status = s
	} else if n > gntMaxFrames {
		status = gntstGeneralError
	} else {
		p.mu.Lock()
		p.gnt.frames = max(p.gnt.frames, n)
		p.mu.Unlock()
		if !writeXenFrames(c, list, gntFirstFrame, n) {
			return errno(xenabi.EFAULT)
		}
	}
	setStatus(b, 8, status)
	if !c.write(uop+8, b[8:10]) {
		return errno(xenabi.EFAULT)
	}
	return 0
}

func gntQuerySize(c *call, uop uint64) int64 {
	p := c.d.pv
	b, ok := c.arg(uop, 16)
	if !ok {
		return errno(xenabi.EFAULT)
	}
	if ok, s := gntSelf(c, u16(b), true); !ok {
		setStatus(b, 12, s)
	} else {
		p.mu.Lock()
		binary.LittleEndian.PutUint32(b[4:], p.gnt.frames)
		p.mu.Unlock()
		binary.LittleEndian.PutUint32(b[8:], gntMaxFrames)
		setStatus(b, 12, gntstOkay)
	}
	if !c.write(uop, b) {
		return errno(xenabi.EFAULT)
	}
	return 0
}

// gntSetVersion is set_version: 1 or 2; a change is -EBUSY while a
// non-reserved entry is mapped, or (v2 to v1) while the guest still maps
// a status frame (gnttab_unpopulate_status_frames, XSA-255). The reserved
// entries are converted; the rest of the table is cleared.
func gntSetVersion(c *call, uop uint64) int64 {
	p := c.d.pv
	b, ok := c.arg(uop, 4)
	if !ok {
		return errno(xenabi.EFAULT)
	}
	v := u32(b)
	if v != 1 && v != 2 {
		return errno(xenabi.EINVAL)
	}
	p.mu.Lock()
	rc := int64(0)
	if cur := p.gnt.ver(); v != cur {
		for _, m := range p.gnt.maps {
			if m.ref >= gntReserved {
				rc = errno(xenabi.EBUSY)
			}
		}
		for ref := range p.gnt.foreign {
			if ref >= gntReserved {
				rc = errno(xenabi.EBUSY)
			}
		}
		if cur == 2 && p.gnt.xenRefs[p.frames.XenFrame(gntStatusFrame)] > 0 {
			rc = errno(xenabi.EBUSY)
		}
		if rc == 0 {
			p.convertGrants(cur, v)
			p.gnt.version = v
		}
	}
	binary.LittleEndian.PutUint32(b, p.gnt.ver())
	p.mu.Unlock()
	if !c.write(uop, b) {
		return errno(xenabi.EFAULT)
	}
	return rc
}

// convertGrants rewrites the reserved entries in the other format and
// clears the rest (gnttab_set_version).
func (p *pvDomain) convertGrants(from, to uint32) {
	t := p.gntEntries()
	st, err := p.d.mem.Slice(p.frames.XenFrame(gntStatusFrame)<<12, machine.PageSize)
	if t == nil || err != nil {
		return
	}
	type ent struct {
		flags, dom uint16
		frame      uint64
	}
	var keep [gntReserved]ent
	for i := range keep {
		if from == 2 {
			e := t[16*i:]
			keep[i] = ent{u16(e) | u16(st[2*i:]), u16(e[2:]), u64(e[8:])}
		} else {
			e := t[8*i:]
			keep[i] = ent{u16(e), u16(e[2:]), uint64(u32(e[4:]))}
		}
	}
	clear(t)
	clear(st)
	for i, k := range keep {
		if to == 2 {
			e := t[16*i:]
			binary.LittleEndian.PutUint16(e, k.flags&^(gtfReading|gtfWriting))
			binary.LittleEndian.PutUint16(e[2:], k.dom)
			binary.LittleEndian.PutUint64(e[8:], k.frame)
			binary.LittleEndian.PutUint16(st[2*i:], k.flags&(gtfReading|gtfWriting))
		} else {
			e := t[8*i:]
			binary.LittleEndian.PutUint16(e, k.flags)
			binary.LittleEndian.PutUint16(e[2:], k.dom)
			binary.LittleEndian.PutUint32(e[4:], uint32(k.frame))
		}
	}
}

func gntGetVersion(c *call, uop uint64) int64 {
	p := c.d.pv
	b, ok := c.arg(uop, 8)
	if !ok {
		return errno(xenabi.EFAULT)
	}
	if ok, _ := gntSelf(c, u16(b), true); !ok {
		return errno(xenabi.EPERM) // another domain's: needs privilege
	}
	p.mu.Lock()
	binary.LittleEndian.PutUint32(b[4:], p.gnt.ver())
	p.mu.Unlock()
	if !c.write(uop, b) {
		return errno(xenabi.EFAULT)
	}
	return 0
}

// gntGetStatusFrames is get_status_frames: v2 only, one status frame.
func gntGetStatusFrames(c *call, uop uint64) int64 {
	p := c.d.pv
	b, ok := c.arg(uop, gntOpGetStatusFramesSz)
	if !ok {
		return errno(xenabi.EFAULT)
	}
	n, dom, list := u32(b), u16(b[4:]), u64(b[8:])
	status := int16(gntstOkay)
	p.mu.Lock()
	v := p.gnt.ver()
	p.mu.Unlock()
	if ok, s := gntSelf(c, dom, true); !ok {
		status = s
	} else if v != 2 || n > 1 {
		status = gntstGeneralError
	} else if !writeXenFrames(c, list, gntStatusFrame, n) {
		return errno(xenabi.EFAULT)
	}
	setStatus(b, 6, status)
	if !c.write(uop+6, b[6:8]) {
		return errno(xenabi.EFAULT)
	}
	return 0
}
