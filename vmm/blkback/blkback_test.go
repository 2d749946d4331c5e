package blkback

import (
	"bytes"
	"math/rand/v2"
	"strconv"
	"testing"
)

// transports are the ring layouts every data test runs over.
var transports = []struct {
	name string
	o    ringOpts
}{
	{"x86_64", ringOpts{proto: ProtoX86_64, order: -1}},
	{"x86_32", ringOpts{proto: ProtoX86_32, order: -1}},
	{"x86_64-order0", ringOpts{proto: ProtoX86_64, order: 0}},
	{"x86_64-order2", ringOpts{proto: ProtoX86_64, order: 2}},
	{"x86_64-order4-persistent", ringOpts{proto: ProtoX86_64, order: 4, persistent: true}},
	{"x86_32-order1-persistent", ringOpts{proto: ProtoX86_32, order: 1, persistent: true}},
}

// TestNodes checks what the backend publishes at InitWait and Connected.
func TestNodes(t *testing.T) {
	r := newRig(t, 2048, Config{}, true, nil)
	be := r.dev.BackendPath()
	read := func(k string) string { v, _ := r.st.Read(be + "/" + k); return v }
	for k, want := range map[string]string{"feature-max-indirect-segments": "256", "max-ring-page-order": "4", "sectors": ""} {
		if got := read(k); got != want {
			t.Errorf("at InitWait %s = %q, want %q", k, got, want)
		}
	}
	r.connect(ringOpts{proto: ProtoX86_64, order: -1})
	for k, want := range map[string]string{
		"sectors": "2048", "sector-size": "512", "physical-sector-size": "512", "info": "0",
		"feature-flush-cache": "1", "feature-barrier": "1", "feature-discard": "1", "discard-granularity": "4096",
		"discard-alignment": "0", "discard-secure": "0", "feature-persistent": "1", "state": "4",
	} {
		if got := read(k); got != want {
			t.Errorf("at Connected %s = %q, want %q", k, got, want)
		}
	}
}

// TestReadOnlyNodes: mode "r" and a cdrom show in info; discard-enable 0
// hides feature-discard.
func TestReadOnlyNodes(t *testing.T) {
	r := newRig(t, 64, Config{}, false, nil)
	be := r.dev.BackendPath()
	r.st.Write(be+"/device-type", "cdrom")
	r.st.Write(be+"/discard-enable", "0")
	// device-type is read at probe: restart the device's backend.
	r.stop()
	<-r.done
	r.done = make(chan error, 1)
	b, err := New(r.b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.b = b
	go func() { r.done <- b.Run(t.Context()) }()
	r.connect(ringOpts{proto: ProtoX86_64, order: -1})
	if v, _ := r.st.Read(be + "/info"); v != strconv.Itoa(VDiskCDROM|VDiskReadonly) {
		t.Errorf("info = %q", v)
	}
	if _, err := r.st.Read(be + "/feature-discard"); err == nil {
		t.Error("feature-discard written with discard-enable 0")
	}
	// A write to a read-only device fails; a read works.
	segs, _ := r.fe.grantData(1, rand.New(rand.NewPCG(3, 4)), true)
	if rsp := r.fe.do(rwReq(ProtoX86_64, OpWrite, 1, 0, segs)); rsp.status != RspError {
		t.Errorf("write to read-only device: %+v", rsp)
	}
	if rsp := r.fe.do(rwReq(ProtoX86_64, OpRead, 2, 0, segs)); rsp.status != RspOkay {
		t.Errorf("read of read-only device: %+v", rsp)
	}
	if !bytes.Equal(r.fileBytes(), r.data) {
		t.Error("read-only image changed")
	}
}

// TestReadWrite writes through the ring with partial-page segments,
// checks the file byte for byte, and reads it back through the ring.
func TestReadWrite(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			r := newRig(t, 4096, Config{}, true, nil)
			r.connect(tr.o)
			f, p := r.fe, tr.o.proto
			rng := rand.New(rand.NewPCG(5, 6))
			want := bytes.Clone(r.data)
			for i := range 20 {
				n := 1 + rng.IntN(MaxSegmentsPerRequest)
				segs, pages := f.grantData(n, rng, true)
				var data []byte
				for j := range segs {
					first := uint8(rng.IntN(sectorsPerPage))
					last := first + uint8(rng.IntN(sectorsPerPage-int(first)))
					segs[j].first, segs[j].last = first, last
					data = append(data, pages[j][int(first)*SectorSize:(int(last)+1)*SectorSize]...)
				}
				sector := uint64(rng.IntN(4096 - len(data)/SectorSize))
				id := uint64(1000 + i)
				rsp := f.do(rwReq(p, OpWrite, id, sector, segs))
				if rsp != (response{id, OpWrite, RspOkay}) {
					t.Fatalf("write %d: %+v", i, rsp)
				}
				copy(want[sector*SectorSize:], data)
				// Read it back into fresh pages.
				rsegs, rpages := f.grantData(n, rng, false)
				for j := range rsegs {
					rsegs[j].first, rsegs[j].last = segs[j].first, segs[j].last
				}
				if rsp := f.do(rwReq(p, OpRead, id+1, sector, rsegs)); rsp != (response{id + 1, OpRead, RspOkay}) {
					t.Fatalf("read %d: %+v", i, rsp)
				}
				var got []byte
				for j, s := range rsegs {
					got = append(got, rpages[j][int(s.first)*SectorSize:(int(s.last)+1)*SectorSize]...)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("request %d: read back differs from what was written", i)
				}
			}
			if !bytes.Equal(r.fileBytes(), want) {
				t.Fatal("image differs from the writes")
			}
		})
	}
}

// TestFlushBarrier: an empty flush, a barrier with data, a flush with
// data (a write with a flush before it).
func TestFlushBarrier(t *testing.T) {
	var m *memDisk
	r := newRig(t, 64, Config{}, true, func(d disk) disk {
		m = newMemDisk(64 * SectorSize)
		d.ReadAt(m.b, 0)
		return m
	})
	r.connect(ringOpts{proto: ProtoX86_64, order: -1})
	f := r.fe
	if rsp := f.do(rwReq(ProtoX86_64, OpFlushDiskcache, 1, 0, nil)); rsp != (response{1, OpFlushDiskcache, RspOkay}) {
		t.Fatalf("flush: %+v", rsp)
	}
	segs, pages := f.grantData(1, rand.New(rand.NewPCG(7, 8)), true)
	if rsp := f.do(rwReq(ProtoX86_64, OpWriteBarrier, 2, 8, segs)); rsp != (response{2, OpWriteBarrier, RspOkay}) {
		t.Fatalf("barrier: %+v", rsp)
	}
	if rsp := f.do(rwReq(ProtoX86_64, OpFlushDiskcache, 3, 16, segs)); rsp != (response{3, OpFlushDiskcache, RspOkay}) {
		t.Fatalf("flush with data: %+v", rsp)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.syncs != 3 {
		t.Errorf("%d syncs, want 3", m.syncs)
	}
	if !bytes.Equal(m.b[8*SectorSize:16*SectorSize], pages[0]) || !bytes.Equal(m.b[16*SectorSize:24*SectorSize], pages[0]) {
		t.Error("barrier/flush data not written")
	}
	// Busy: the worker's time serving the batches, some for these.
	if st := r.b.Stats(); st.Flushes != 2 || st.Barriers != 1 || st.Busy <= 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestDiscard punches a hole in the file: it reads as zeros after, the
// file keeps its size, and a range past the end fails.
func TestDiscard(t *testing.T) {
	for _, p := range []Protocol{ProtoX86_64, ProtoX86_32} {
		t.Run(p.String(), func(t *testing.T) {
			r := newRig(t, 256, Config{}, true, nil)
			r.connect(ringOpts{proto: p, order: -1})
			if rsp := r.fe.do(discardReq(p, 7, 16, 32)); rsp != (response{7, OpDiscard, RspOkay}) {
				t.Fatalf("discard: %+v", rsp)
			}
			want := bytes.Clone(r.data)
			clear(want[16*SectorSize : 48*SectorSize])
			if got := r.fileBytes(); !bytes.Equal(got, want) {
				t.Fatalf("after discard: image of %d bytes differs", len(got))
			}
			for _, bad := range [][2]uint64{{250, 7}, {256, 1}, {1 << 63, 1 << 63}} {
				if rsp := r.fe.do(discardReq(p, 8, bad[0], bad[1])); rsp.status != RspError {
					t.Errorf("discard %v: %+v", bad, rsp)
				}
			}
			if rsp := r.fe.do(discardReq(p, 9, 0, 0)); rsp.status != RspOkay {
				t.Errorf("empty discard: %+v", rsp)
			}
			if got := r.fileBytes(); !bytes.Equal(got, want) {
				t.Fatal("bad discards changed the image")
			}
		})
	}
}

// TestIndirect writes and reads through indirect descriptors: one page of
// them, and with a larger limit two pages.
func TestIndirect(t *testing.T) {
	for _, tc := range []struct {
		name string
		max  int
		nseg int
		o    ringOpts
	}{
		{"64seg", 0, 64, ringOpts{proto: ProtoX86_64, order: -1}},
		{"256seg-x86_32", 0, 256, ringOpts{proto: ProtoX86_32, order: -1}},
		{"600seg-persistent", 1024, 600, ringOpts{proto: ProtoX86_64, order: 1, persistent: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, 8192, Config{MaxIndirectSegments: tc.max}, true, nil)
			r.connect(tc.o)
			f, p := r.fe, tc.o.proto
			rng := rand.New(rand.NewPCG(9, 10))
			segs, pages := f.grantData(tc.nseg, rng, true)
			if rsp := f.do(indirectReq(p, OpWrite, 11, 40, tc.nseg, f.indirectPages(segs))); rsp != (response{11, OpWrite, RspOkay}) {
				t.Fatalf("indirect write: %+v", rsp)
			}
			file := r.fileBytes()
			for i, pg := range pages {
				if !bytes.Equal(file[40*SectorSize+i*PageSize:][:PageSize], pg) {
					t.Fatalf("segment %d not in the image", i)
				}
			}
			rsegs, rpages := f.grantData(tc.nseg, rng, false)
			if rsp := f.do(indirectReq(p, OpRead, 12, 40, tc.nseg, f.indirectPages(rsegs))); rsp != (response{12, OpRead, RspOkay}) {
				t.Fatalf("indirect read: %+v", rsp)
			}
			for i := range pages {
				if !bytes.Equal(rpages[i], pages[i]) {
					t.Fatalf("segment %d read back differs", i)
				}
			}
			if st := r.b.Stats(); st.Indirect != 2 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestPersistentGrants: with feature-persistent the backend keeps grants
// mapped across requests, up to its limit, and unmaps all at disconnect.
func TestPersistentGrants(t *testing.T) {
	r := newRig(t, 1024, Config{MaxIndirectSegments: 16, MaxPersistentGrants: 40}, true, nil)
	r.connect(ringOpts{proto: ProtoX86_64, order: -1, persistent: true})
	f := r.fe
	rng := rand.New(rand.NewPCG(11, 12))
	segs, _ := f.grantData(8, rng, true)
	for i := range 10 {
		if rsp := f.do(rwReq(ProtoX86_64, OpWrite, uint64(i), uint64(8*i), segs)); rsp.status != RspOkay {
			t.Fatalf("write %d: %+v", i, rsp)
		}
	}
	// 8 data grants, each mapped once and kept; plus the ring.
	if n := r.g.maps.Load(); n != 1+8 {
		t.Errorf("%d maps for 10 requests over the same 8 grants, want 9", n)
	}
	if n := r.b.Stats().PersistentGrants; n != 8 {
		t.Errorf("%d persistent grants, want 8", n)
	}
	// Past the limit, the least recently used go.
	for i := range 10 {
		more, _ := f.grantData(8, rng, true)
		if rsp := f.do(rwReq(ProtoX86_64, OpRead, uint64(100+i), 0, more)); rsp.status != RspOkay {
			t.Fatalf("read %d: %+v", i, rsp)
		}
	}
	if n := r.b.Stats().PersistentGrants; n != 40 {
		t.Errorf("%d persistent grants, want the limit 40", n)
	}
	if n := r.g.mapped.Load(); n != 41 {
		t.Errorf("%d mappings, want 41", n)
	}
	// A read-only grant cannot be mapped persistently (note 8): error.
	ref, _ := f.g.grant(true)
	if rsp := f.do(rwReq(ProtoX86_64, OpWrite, 200, 0, []seg{{ref, 0, 7}})); rsp.status != RspError {
		t.Errorf("read-only grant with persistent grants: %+v", rsp)
	}
	// Closing unmaps everything.
	f.setState(StateClosing)
	r.waitBackend(StateClosing)
	f.setState(StateClosed)
	r.waitBackend(StateClosed)
	if n := r.g.mapped.Load(); n != 0 {
		t.Errorf("%d mappings after Closed", n)
	}
}

// TestManyInFlight fills a 16-page ring (512 requests) before telling the
// backend, and checks every response and the image.
func TestManyInFlight(t *testing.T) {
	r := newRig(t, 8192, Config{}, true, nil)
	r.connect(ringOpts{proto: ProtoX86_64, order: 4})
	f := r.fe
	if f.size != 512 {
		t.Fatalf("ring of %d", f.size)
	}
	rng := rand.New(rand.NewPCG(13, 14))
	want := bytes.Clone(r.data)
	// Stats takes the ring lock: the worker must come back after it.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
				r.b.Stats()
			}
		}
	}()
	for round := range 3 {
		for i := range f.size {
			segs, pages := f.grantData(1, rng, true)
			sector := uint64(i) * 8 * uint64(round+1) % 8192
			f.queue(rwReq(ProtoX86_64, OpWrite, uint64(i), sector, segs))
			copy(want[sector*SectorSize:], pages[0])
		}
		f.push()
		seen := map[uint64]bool{}
		for _, rsp := range f.wait(int(f.size)) {
			if rsp.status != RspOkay || seen[rsp.id] {
				t.Fatalf("response %+v (seen %v)", rsp, seen[rsp.id])
			}
			seen[rsp.id] = true
		}
	}
	if !bytes.Equal(r.fileBytes(), want) {
		t.Fatal("image differs")
	}
}
