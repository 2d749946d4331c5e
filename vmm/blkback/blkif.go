package blkback

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync/atomic"
	"unsafe"
)

// Request operations (BLKIF_OP_*, io/blkif.h).
const (
	OpRead           = 0
	OpWrite          = 1
	OpWriteBarrier   = 2
	OpFlushDiskcache = 3
	OpDiscard        = 5
	OpIndirect       = 6
)

// Response statuses (BLKIF_RSP_*).
const (
	RspOkay       = 0
	RspError      = -1
	RspEOPNOTSUPP = -2
)

// Protocol limits and VDISK_* info bits.
const (
	// MaxSegmentsPerRequest is BLKIF_MAX_SEGMENTS_PER_REQUEST: the
	// segments a direct request carries.
	MaxSegmentsPerRequest = 11
	// MaxIndirectPagesPerRequest is BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST.
	MaxIndirectPagesPerRequest = 8
	// SegmentsPerIndirectPage is how many 8-byte blkif_request_segment
	// entries one indirect page holds.
	SegmentsPerIndirectPage = PageSize / 8

	VDiskCDROM     = 0x1
	VDiskRemovable = 0x2
	VDiskReadonly  = 0x4

	// PageSize is a grant's (and a ring page's) size.
	PageSize = 4096
	// SectorSize is the unit of every sector quantity on the ring
	// (sector_number, first_sect, last_sect, nr_sectors): 512 bytes,
	// since the backend never advertises a larger sector-size.
	SectorSize = 512
	// sectorsPerPage bounds last_sect.
	sectorsPerPage = PageSize / SectorSize

	// ringHeader is the shared ring's index block (io/ring.h).
	ringHeader = 64
)

// Protocol is the request and response layout the frontend announced in
// its "protocol" node.
type Protocol int

// The layouts: x86_64 (native here) and 32-bit x86. They differ in where
// id and what follows it sit: 8-byte aligned on x86_64, packed after 4
// bytes on i386.
const (
	ProtoX86_64 Protocol = iota
	ProtoX86_32
)

// Protocol names (XEN_IO_PROTO_ABI_*).
const (
	ProtoNameX86_64 = "x86_64-abi"
	ProtoNameX86_32 = "x86_32-abi"
)

// String returns the protocol's xenstore name.
func (p Protocol) String() string {
	if p == ProtoX86_32 {
		return ProtoNameX86_32
	}
	return ProtoNameX86_64
}

// entrySize is sizeof(union blkif_sring_entry): the request's size, which
// is larger than the response's (16 on x86_64, 12 on i386).
func (p Protocol) entrySize() uint32 {
	if p == ProtoX86_32 {
		return 108
	}
	return 112
}

// RingSize returns the number of entries of a ring of pages pages
// (__CONST_RING_SIZE: the space after the header divided by the entry
// size, rounded down to a power of two).
func RingSize(p Protocol, pages int) uint32 {
	n := (uint32(pages)*PageSize - ringHeader) / p.entrySize()
	if n == 0 {
		return 0
	}
	return 1 << (bits.Len32(n) - 1)
}

// segment is one blkif_request_segment.
type segment struct {
	gref        uint32
	first, last uint8
}

// request is the backend's private copy of one ring entry: every field is
// read once from shared memory, and every check applies to this copy.
type request struct {
	op     uint8
	nseg   int // nr_segments: u8 for direct requests, u16 for indirect
	handle uint16
	id     uint64
	sector uint64

	seg [MaxSegmentsPerRequest]segment // direct requests

	indirectOp   uint8
	indirectRefs [MaxIndirectPagesPerRequest]uint32

	discardFlag    uint8
	discardSectors uint64
}

// parseRequest decodes entry b (entrySize bytes, already copied out of
// the ring) in protocol p's layout.
func parseRequest(p Protocol, b []byte, r *request) {
	le := binary.LittleEndian
	*r = request{op: b[0]}
	// Offsets of id, sector_number and what follows: the x86_64 layout
	// aligns id to 8, i386 packs it at 4.
	id, sec, rest := 8, 16, 24
	if p == ProtoX86_32 {
		id, sec, rest = 4, 12, 20
	}
	r.id = le.Uint64(b[id:])
	switch r.op {
	case OpDiscard:
		r.discardFlag = b[1]
		r.handle = le.Uint16(b[2:])
		r.sector = le.Uint64(b[sec:])
		r.discardSectors = le.Uint64(b[rest:])
	case OpIndirect:
		r.indirectOp = b[1]
		r.nseg = int(le.Uint16(b[2:]))
		r.sector = le.Uint64(b[sec:])
		r.handle = le.Uint16(b[rest:])
		refs := rest + 4 // x86_64: 28, i386: 24
		for i := range r.indirectRefs {
			r.indirectRefs[i] = le.Uint32(b[refs+4*i:])
		}
	default:
		r.nseg = int(b[1])
		r.handle = le.Uint16(b[2:])
		r.sector = le.Uint64(b[sec:])
		for i := range r.seg {
			r.seg[i] = parseSegment(b[rest+8*i:])
		}
	}
}

// parseSegment decodes one 8-byte blkif_request_segment.
func parseSegment(b []byte) segment {
	return segment{gref: binary.LittleEndian.Uint32(b), first: b[4], last: b[5]}
}

// backRing is the backend's view of a shared blkif ring that may span
// several pages, each mapped on its own: entries can straddle pages.
type backRing struct {
	pages      [][]byte
	proto      Protocol
	size       uint32 // entries, a power of two
	esz        uint32
	reqCons    uint32 // private: next request to consume
	rspProdPvt uint32 // private: next response slot
}

// newBackRing lays a ring over pages (the frontend's ring-ref pages in
// order). Each page must be PageSize bytes and 4-byte aligned, so that
// the header's indices can be accessed atomically.
func newBackRing(p Protocol, pages [][]byte) (*backRing, error) {
	for i, pg := range pages {
		if len(pg) < PageSize {
			return nil, fmt.Errorf("ring page %d has %d bytes, want %d", i, len(pg), PageSize)
		}
		if uintptr(unsafe.Pointer(&pg[0]))%4 != 0 {
			return nil, fmt.Errorf("ring page %d is not 4-byte aligned", i)
		}
	}
	if len(pages) == 0 {
		return nil, fmt.Errorf("ring without pages")
	}
	r := &backRing{pages: pages, proto: p, size: RingSize(p, len(pages)), esz: p.entrySize()}
	// BACK_RING_INIT: the private indices start at the shared producers'
	// initial value, 0, whatever the page holds now (SHARED_RING_INIT is
	// the frontend's).
	return r, nil
}

// idx returns a pointer to the 32-bit ring index at byte off of the
// header (req_prod 0, req_event 4, rsp_prod 8, rsp_event 12).
func (r *backRing) idx(off int) *uint32 { return (*uint32)(unsafe.Pointer(&r.pages[0][off])) }

func (r *backRing) reqProd() uint32         { return atomic.LoadUint32(r.idx(0)) }
func (r *backRing) setReqEvent(v uint32)    { atomic.StoreUint32(r.idx(4), v) }
func (r *backRing) rspProd() uint32         { return atomic.LoadUint32(r.idx(8)) }
func (r *backRing) setRspProd(v uint32)     { atomic.StoreUint32(r.idx(8), v) }
func (r *backRing) rspEvent() uint32        { return atomic.LoadUint32(r.idx(12)) }
func (r *backRing) slotOffset(i uint32) int { return ringHeader + int(i&(r.size-1)*r.esz) }

// copyOut copies len(dst) bytes at ring byte offset off into dst.
func (r *backRing) copyOut(off int, dst []byte) {
	for len(dst) > 0 {
		pg, in := off/PageSize, off%PageSize
		n := copy(dst, r.pages[pg][in:PageSize])
		dst, off = dst[n:], off+n
	}
}

// copyIn copies src to ring byte offset off.
func (r *backRing) copyIn(off int, src []byte) {
	for len(src) > 0 {
		pg, in := off/PageSize, off%PageSize
		n := copy(r.pages[pg][in:PageSize], src)
		src, off = src[n:], off+n
	}
}

// overflow reports whether producer index prod is more than a ring ahead
// of the responses (RING_REQUEST_PROD_OVERFLOW): a frontend that did
// that is broken or hostile.
func (r *backRing) overflow(prod uint32) bool { return prod-r.rspProdPvt > r.size }

// unconsumed returns how many requests up to prod may be consumed now
// (RING_HAS_UNCONSUMED_REQUESTS).
func (r *backRing) unconsumed(prod uint32) uint32 {
	return min(prod-r.reqCons, r.size-(r.reqCons-r.rspProdPvt))
}

// nextRequest copies the next request into buf and advances reqCons.
func (r *backRing) nextRequest(buf []byte) {
	r.copyOut(r.slotOffset(r.reqCons), buf[:r.esz])
	r.reqCons++
}

// putResponse writes a response in the next slot and publishes it
// (RING_PUSH_RESPONSES_AND_CHECK_NOTIFY), reporting whether the frontend
// asked to be notified of it.
func (r *backRing) putResponse(id uint64, op uint8, status int16) bool {
	var b [12]byte
	binary.LittleEndian.PutUint64(b[0:], id)
	b[8] = op
	binary.LittleEndian.PutUint16(b[10:], uint16(status))
	off := r.slotOffset(r.rspProdPvt)
	r.copyIn(off, b[:9])
	r.copyIn(off+10, b[10:12])
	r.rspProdPvt++
	old, next := r.rspProd(), r.rspProdPvt
	r.setRspProd(next) // an atomic store: the write barrier before, the full barrier after
	return next-r.rspEvent() < next-old
}

// finalCheck is RING_FINAL_CHECK_FOR_REQUESTS: with nothing left, it asks
// the frontend for an event on its next request and looks again.
func (r *backRing) finalCheck() bool {
	if r.unconsumed(r.reqProd()) > 0 {
		return true
	}
	r.setReqEvent(r.reqCons + 1)
	return r.unconsumed(r.reqProd()) > 0
}
