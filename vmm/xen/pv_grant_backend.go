package xen

import (
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/xenresume/xenresume/vmm/machine"
)

// Grant mappings for dom0's backends: what map_grant_ref and
// unmap_grant_ref do in Xen when dom0 maps a grant of another domain
// (__gnttab_map_grant_ref with a foreign rd, _set_status_v1/v2,
// __gnttab_unmap_common's status clearing). The backend is Go code in the
// VMM, so a "mapping" is the frame's bytes in the guest memory's own host
// mapping; what Xen's checks and status bits protect is kept: only an
// entry that grants access to dom0 maps, a read-only grant never maps
// writable, GTF_reading (and GTF_writing) stay set while the entry is
// mapped, so that the guest cannot end the grant (gnttab_end_foreign_access
// fails while they are set), and a frame mapped writable holds a writable
// type reference, so that it cannot become a page table under the
// backend.

// grantRetries is how often a grant entry the guest keeps changing under
// the mapping is retried before the map fails (Xen's "Shared grant entry
// is unstable").
const grantRetries = 4

// foreignPin counts dom0's mappings of one grant entry (Xen's act->pin
// for a foreign mapping).
type foreignPin struct {
	readers, writers int
	frame            uint64
}

// BackendGrants maps other domains' grant references for dom0's backends
// (blkback.Grants). Its Map and the release funcs it returns may be called
// from any goroutine while the granting domain's vCPUs run.
type BackendGrants struct {
	x *Xen
}

// BackendGrants returns the grant mapper of dom0's backends.
func (x *Xen) BackendGrants() *BackendGrants { return &BackendGrants{x: x} }

// Map maps entry ref of domid's grant table (v1 or v2) for dom0, writable
// or read-only, and returns the granted frame's 4096 bytes and release,
// which drops the mapping: GTF_writing is cleared when the entry's last
// writable mapping goes, GTF_reading with its last mapping. release may be
// called once; later calls do nothing. The page is guest memory: it stays
// valid while the domain's memory does, so the caller releases every
// mapping before the domain is destroyed.
//
// Map fails when the domain does not exist or has no grant table, ref is
// past the table, the entry is not GTF_permit_access for domid 0, it is
// GTF_readonly and writable is asked, its frame is not the domain's RAM,
// or (writable) the frame is a page table or descriptor page.
func (g *BackendGrants) Map(domid uint16, ref uint32, writable bool) ([]byte, func(), error) {
	fail := func(e xenErr, why string) ([]byte, func(), error) {
		return nil, nil, fmt.Errorf("xen: mapping grant %d of domain %d: %s: %w", ref, domid, why, e)
	}
	if domid == 0 {
		return fail(errInval, "dom0's own grant")
	}
	g.x.mu.Lock()
	d := g.x.doms[domid]
	g.x.mu.Unlock()
	if d == nil {
		return fail(errSrch, "no such domain")
	}
	p := d.pv
	if p == nil {
		return fail(errInval, "the domain has no grant table")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if ref >= p.gnt.entries() {
		return fail(errInval, "past the grant table")
	}
	pin := p.gnt.foreign[ref]
	frame := uint64(0)
	setBits := pin == nil || (writable && pin.writers == 0)
	if setBits {
		f, why := p.foreignSetStatus(ref, writable)
		if why != "" {
			return fail(errInval, why)
		}
		frame = f
	}
	if pin != nil {
		frame = pin.frame
	}
	undo := func() {
		if setBits {
			p.foreignClearStatus(ref, pin)
		}
	}
	if _, ok := p.ram(frame); !ok {
		undo()
		return fail(errInval, "the granted frame is not the domain's RAM")
	}
	// Kept while mapped: the backend writes it whenever its I/O lands,
	// so every migration round and checkpoint sends it until the unmap,
	// and the one after (machine's vmmdirty.go).
	page, keep, kerr := p.d.mem.Keep(frame<<12, machine.PageSize)
	if kerr != nil {
		undo()
		return fail(errInval, "the granted frame has no host mapping")
	}
	if writable && p.getType(nil, frame, ptWritable) != 0 {
		keep()
		undo()
		return fail(errInval, "the granted frame cannot be written")
	}
	if pin == nil {
		pin = &foreignPin{frame: frame}
		if p.gnt.foreign == nil {
			p.gnt.foreign = map[uint32]*foreignPin{}
		}
		p.gnt.foreign[ref] = pin
	}
	if writable {
		pin.writers++
	} else {
		pin.readers++
	}
	var once sync.Once
	release := func() {
		once.Do(func() {
			defer keep()
			p.mu.Lock()
			defer p.mu.Unlock()
			if writable {
				pin.writers--
				p.putType(nil, pin.frame)
			} else {
				pin.readers--
			}
			if pin.readers+pin.writers == 0 {
				delete(p.gnt.foreign, ref)
			}
			p.foreignClearStatus(ref, pin)
		})
	}
	return page, release, nil
}

// foreignWord returns the aligned 32-bit word of the grant table that
// holds entry ref's v1 flags and domid (v1) or its status (v2), and the
// shift of the 16 bits Xen sets GTF_reading/writing in. p.mu held.
func (p *pvDomain) foreignWord(ref uint32) (*uint32, uint, bool) {
	var b []byte
	shift := uint(0)
	if p.gnt.ver() == 2 {
		st, err := p.d.mem.Slice(p.frames.XenFrame(gntStatusFrame)<<12+4*uint64(ref/2), 4)
		if err != nil {
			return nil, 0, false
		}
		b, shift = st, 16*uint(ref&1)
	} else {
		t := p.gntEntries()
		if t == nil {
			return nil, 0, false
		}
		b = t[8*ref : 8*ref+4]
	}
	if uintptr(unsafe.Pointer(&b[0]))%4 != 0 {
		return nil, 0, false
	}
	return (*uint32)(unsafe.Pointer(&b[0])), shift, true
}

// foreignCheck is the test Xen's _set_status makes of an entry's flags
// and domid for a mapping by dom0; it returns why the entry does not map.
func foreignCheck(flags, domid uint16, writable bool) string {
	switch {
	case flags&gtfTypeMask != gtfPermitAccess:
		return "the entry is not GTF_permit_access"
	case domid != 0:
		return "the entry is not granted to dom0"
	case writable && flags&gtfReadonly != 0:
		return "a read-only grant mapped writable"
	}
	return ""
}

// foreignSetStatus checks entry ref and sets GTF_reading (and GTF_writing
// when writable) as _set_status_v1/_set_status_v2 do: v1 in one cmpxchg
// of the entry's flags and domid, v2 in the status word with the entry
// read again afterwards. It returns the entry's frame, or why it does not
// map. p.mu held.
func (p *pvDomain) foreignSetStatus(ref uint32, writable bool) (uint64, string) {
	w, shift, ok := p.foreignWord(ref)
	if !ok {
		return 0, "the grant table is not mapped"
	}
	bits := uint32(gtfReading)
	if writable {
		bits |= gtfWriting
	}
	t := p.gntEntries()
	if p.gnt.ver() == 1 {
		for range grantRetries {
			old := atomic.LoadUint32(w)
			if why := foreignCheck(uint16(old), uint16(old>>16), writable); why != "" {
				return 0, why
			}
			if atomic.CompareAndSwapUint32(w, old, old|bits) {
				return uint64(u32(t[8*ref+4:])), ""
			}
		}
		return 0, "the grant entry is unstable"
	}
	if t == nil {
		return 0, "the grant table is not mapped"
	}
	e := (*uint32)(unsafe.Pointer(&t[16*ref]))
	combo := atomic.LoadUint32(e)
	if why := foreignCheck(uint16(combo), uint16(combo>>16), writable); why != "" {
		return 0, why
	}
	atomic.OrUint32(w, bits<<shift)
	if atomic.LoadUint32(e) != combo {
		p.foreignClearStatus(ref, p.gnt.foreign[ref])
		return 0, "the grant entry is unstable"
	}
	return u64(t[16*ref+8:]), ""
}

// foreignClearStatus clears the status bits dom0's mappings of ref no
// longer need: GTF_writing without a writable one, GTF_reading without
// any, unless the domain still maps the entry itself. p.mu held.
func (p *pvDomain) foreignClearStatus(ref uint32, pin *foreignPin) {
	for _, m := range p.gnt.maps {
		if m.ref == ref {
			return
		}
	}
	w, shift, ok := p.foreignWord(ref)
	if !ok {
		return
	}
	clearBits := uint32(gtfReading | gtfWriting)
	if pin != nil && pin.writers > 0 {
		clearBits = 0
	} else if pin != nil && pin.readers > 0 {
		clearBits = gtfWriting
	}
	atomic.AndUint32(w, ^(clearBits << shift))
}
