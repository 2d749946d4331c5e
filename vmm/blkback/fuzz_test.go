package blkback

import (
	"encoding/binary"
	"log/slog"
	"testing"
)

// fuzzRing builds a ring page holding reqs, with req_prod = prod.
func fuzzRing(p Protocol, prod uint32, reqs ...[]byte) []byte {
	pg := make([]byte, PageSize)
	binary.LittleEndian.PutUint32(pg, prod)
	binary.LittleEndian.PutUint32(pg[4:], 1)
	binary.LittleEndian.PutUint32(pg[12:], 1)
	for i, r := range reqs {
		copy(pg[ringHeader+i*int(p.entrySize()):], r)
	}
	return pg
}

// FuzzRing feeds the ring parser and request dispatch whatever a hostile
// frontend can put in its shared page: indices, requests, and the
// contents of the pages it grants (indirect segments). The backend must
// neither panic nor touch the image outside it, must answer every
// request it takes, and must let go of every mapping.
func FuzzRing(f *testing.F) {
	p64, p32 := ProtoX86_64, ProtoX86_32
	ind := make([]byte, PageSize)
	for i := range 3 {
		putSeg(ind[8*i:], seg{uint32(8 + i), 0, 7})
	}
	putSeg(ind[24:], seg{8, 3, 2})
	f.Add(byte(0), false, fuzzRing(p64, 1, rwReq(p64, OpWrite, 1, 0, []seg{{8, 0, 7}})), ind)
	f.Add(byte(1), false, fuzzRing(p32, 2, rwReq(p32, OpRead, 1, 8, []seg{{8, 0, 7}, {9, 1, 3}}), rwReq(p32, OpWrite, 2, 60, []seg{{10, 0, 7}})), ind)
	f.Add(byte(0), true, fuzzRing(p64, 3, indirectReq(p64, OpWrite, 1, 0, 3, []uint32{12}), indirectReq(p64, OpRead, 2, 0, 4, []uint32{12}), discardReq(p64, 3, 8, 8)), ind)
	f.Add(byte(0), false, fuzzRing(p64, 40), ind)
	f.Add(byte(0), false, fuzzRing(p64, 4, rwReq(p64, OpFlushDiskcache, 1, 0, nil), rwReq(p64, OpWriteBarrier, 2, 0, []seg{{11, 0, 7}}), rwReq(p64, 77, 3, 0, nil), discardReq(p64, 4, 63, 2)), ind)
	f.Add(byte(1), true, fuzzRing(p32, 2, indirectReq(p32, OpWrite, 1, 62, 3, []uint32{12}), rwReq(p32, OpWrite, 2, ^uint64(0), []seg{{8, 0, 7}})), ind)
	// Adjacent writes, a read, adjacent again: runs merged and split.
	f.Add(byte(0), false, fuzzRing(p64, 5, rwReq(p64, OpWrite, 1, 0, []seg{{8, 0, 7}}), rwReq(p64, OpWrite, 2, 8, []seg{{9, 0, 7}, {10, 0, 3}}),
		rwReq(p64, OpRead, 3, 20, []seg{{11, 4, 7}}), indirectReq(p64, OpRead, 4, 20, 3, []uint32{12}), rwReq(p64, OpWrite, 5, 60, []seg{{8, 0, 3}})), ind)
	f.Add(byte(1), true, fuzzRing(p32, 3, rwReq(p32, OpRead, 1, 0, []seg{{8, 0, 7}}), rwReq(p32, OpRead, 2, 8, []seg{{8, 0, 8}}), rwReq(p32, OpRead, 3, 8, []seg{{9, 0, 7}})), ind)
	f.Fuzz(func(t *testing.T, proto byte, persistent bool, ring, indirect []byte) {
		const sectors = 64
		g := newFakeGrants(testDomid)
		for range 4 {
			g.grant(false) // refs 8..11: data pages
		}
		_, ip := g.grant(true) // ref 12: indirect segments
		copy(ip, indirect)
		m := newMemDisk(sectors * SectorSize)
		b := &Backend{
			cfg:     Config{Grants: g, Domid: testDomid, MaxIndirectSegments: DefaultMaxIndirectSegments, MaxPersistentGrants: 300},
			log:     slog.New(slog.DiscardHandler),
			img:     m,
			sectors: sectors,
		}
		p := Protocol(proto & 1)
		pg := alignedPage()
		copy(pg, ring)
		r, err := newBackRing(p, [][]byte{pg})
		if err != nil {
			t.Fatal(err)
		}
		notified := 0
		c := &conn{ring: r, maxSegs: b.cfg.MaxIndirectSegments, notify: func() { notified++ }}
		if persistent {
			c.pgrants = newGrantCache(b.cfg.MaxPersistentGrants)
		}
		c.init()
		for range 4 {
			_, halt := b.batch(c)
			if r.reqCons != r.rspProdPvt || (r.rspProdPvt > 0 && r.rspProd() != r.rspProdPvt) {
				t.Fatalf("took %d requests, answered %d, published %d", r.reqCons, r.rspProdPvt, r.rspProd())
			}
			if r.rspProdPvt > 4*r.size {
				t.Fatalf("%d responses from a ring of %d", r.rspProdPvt, r.size)
			}
			if halt != nil {
				if !c.halted {
					t.Fatal("overflow without halting")
				}
				break
			}
			if n, cached := g.mapped.Load(), int64(0); c.pgrants != nil {
				cached = int64(c.pgrants.len())
				if n != cached {
					t.Fatalf("%d mappings, %d cached", n, cached)
				}
			} else if n != 0 {
				t.Fatalf("%d mappings left after a batch", n)
			}
		}
		c.close()
		if n := g.mapped.Load(); n != 0 {
			t.Fatalf("%d mappings left after close", n)
		}
		if len(m.bad) > 0 {
			t.Fatalf("image accessed outside it: %v", m.bad)
		}
	})
}

// TestRingSize checks __CONST_RING_SIZE for blkif.
func TestRingSize(t *testing.T) {
	for _, tc := range []struct {
		p     Protocol
		pages int
		want  uint32
	}{
		{ProtoX86_64, 1, 32}, {ProtoX86_32, 1, 32}, {ProtoX86_64, 2, 64}, {ProtoX86_64, 4, 128},
		{ProtoX86_64, 16, 512}, {ProtoX86_32, 16, 512},
	} {
		if got := RingSize(tc.p, tc.pages); got != tc.want {
			t.Errorf("RingSize(%v, %d) = %d, want %d", tc.p, tc.pages, got, tc.want)
		}
	}
}

// TestParseRequest checks both layouts' field offsets against requests
// built by hand.
func TestParseRequest(t *testing.T) {
	for _, p := range []Protocol{ProtoX86_64, ProtoX86_32} {
		var r request
		parseRequest(p, rwReq(p, OpWrite, 0x1122334455667788, 0x99aabbccddeeff00, []seg{{7, 1, 6}, {9, 0, 7}}), &r)
		if r.op != OpWrite || r.nseg != 2 || r.handle != 51712 || r.id != 0x1122334455667788 || r.sector != 0x99aabbccddeeff00 ||
			r.seg[0] != (segment{7, 1, 6}) || r.seg[1] != (segment{9, 0, 7}) {
			t.Errorf("%v rw: %+v", p, r)
		}
		parseRequest(p, indirectReq(p, OpRead, 42, 1000, 300, []uint32{5, 6, 7}), &r)
		if r.op != OpIndirect || r.indirectOp != OpRead || r.nseg != 300 || r.id != 42 || r.sector != 1000 || r.handle != 51712 ||
			r.indirectRefs[0] != 5 || r.indirectRefs[2] != 7 || r.indirectRefs[3] != 0 {
			t.Errorf("%v indirect: %+v", p, r)
		}
		parseRequest(p, discardReq(p, 43, 1<<40, 1<<33), &r)
		if r.op != OpDiscard || r.id != 43 || r.sector != 1<<40 || r.discardSectors != 1<<33 {
			t.Errorf("%v discard: %+v", p, r)
		}
	}
}
