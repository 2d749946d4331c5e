package blkback

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"unsafe"
)

// plainDisk hides the image's vectorDisk methods: a run is then done one
// WriteAt or ReadAt per buffer.
type plainDisk struct{ disk }

// mergeOp is one request of a batch in TestMerge.
type mergeOp struct {
	op     uint8
	sector uint64
	segs   int   // whole-page segments
	first  uint8 // first_sect of each segment (last is 7), or bad
	bad    bool  // last_sect 8: refused before any I/O
}

// TestMerge queues each case's requests and publishes them at once, so
// that the backend takes them in one batch: adjacent reads or writes in
// ring order become one run (one preadv/pwritev: Stats.IOs), anything
// else splits the run, and every request's effect and response is as if
// served alone, in ring order. Each case runs on the image file (preadv,
// pwritev) and on an image without vectorDisk.
func TestMerge(t *testing.T) {
	R, W, F := uint8(OpRead), uint8(OpWrite), uint8(OpFlushDiskcache)
	for _, tc := range []struct {
		name string
		ops  []mergeOp
		ios  uint64 // runs done
	}{
		{"adjacent writes", []mergeOp{{W, 0, 1, 0, false}, {W, 8, 1, 0, false}, {W, 16, 1, 0, false}, {W, 24, 1, 0, false}}, 1},
		{"adjacent reads", []mergeOp{{R, 8, 1, 0, false}, {R, 16, 1, 0, false}, {R, 24, 2, 0, false}, {R, 40, 1, 0, false}}, 1},
		{"multi-segment and partial pages", []mergeOp{{W, 0, 3, 0, false}, {W, 24, 2, 4, false}, {W, 32, 1, 0, false}}, 1},
		{"gaps", []mergeOp{{W, 0, 1, 0, false}, {W, 16, 1, 0, false}, {W, 24, 1, 0, false}, {W, 8, 1, 0, false}}, 3},
		{"direction changes", []mergeOp{{W, 0, 1, 0, false}, {R, 8, 1, 0, false}, {W, 16, 1, 0, false}}, 3},
		{"read after write of the same sectors", []mergeOp{{W, 0, 2, 0, false}, {R, 0, 2, 0, false}, {R, 16, 1, 0, false}}, 2},
		{"a flush splits", []mergeOp{{W, 0, 1, 0, false}, {W, 8, 1, 0, false}, {F, 0, 0, 0, false}, {W, 16, 1, 0, false}}, 2},
		{"a refused request splits", []mergeOp{{W, 0, 1, 0, false}, {W, 8, 1, 0, true}, {W, 8, 1, 0, false}}, 2},
	} {
		for _, vector := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/vector=%v", tc.name, vector), func(t *testing.T) {
				var wrap func(disk) disk
				if !vector {
					wrap = func(d disk) disk { return plainDisk{d} }
				}
				r := newRig(t, 128, Config{}, true, wrap)
				r.connect(ringOpts{proto: ProtoX86_64, order: -1})
				f := r.fe
				rng := rand.New(rand.NewPCG(7, 8))
				want := bytes.Clone(r.data)
				type check struct {
					pages  [][]byte
					sector uint64
					first  uint8
					expect []byte // a read's data
				}
				var checks []check
				for i, o := range tc.ops {
					segs, pages := f.grantData(o.segs, rng, o.op == W)
					for j := range segs {
						segs[j].first = o.first
						if o.bad {
							segs[j].last = sectorsPerPage
						}
					}
					c := check{pages: pages, sector: o.sector, first: o.first}
					off := int(o.sector) * SectorSize
					for _, pg := range pages {
						n := (sectorsPerPage - int(o.first)) * SectorSize
						switch {
						case o.bad:
						case o.op == W:
							copy(want[off:], pg[int(o.first)*SectorSize:])
						case o.op == R:
							c.expect = append(c.expect, want[off:off+n]...)
						}
						off += n
					}
					checks = append(checks, c)
					f.queue(rwReq(ProtoX86_64, o.op, uint64(i), o.sector, segs))
				}
				f.push()
				rsps := f.wait(len(tc.ops))
				for i, rsp := range rsps {
					wantStatus := int16(RspOkay)
					if tc.ops[i].bad {
						wantStatus = RspError
					}
					if rsp.id != uint64(i) || rsp.status != wantStatus || rsp.op != tc.ops[i].op {
						t.Errorf("response %d: %+v, want id %d op %d status %d (ring order)", i, rsp, i, tc.ops[i].op, wantStatus)
					}
				}
				for i, c := range checks {
					if tc.ops[i].op != R {
						continue
					}
					var got []byte
					for _, pg := range c.pages {
						got = append(got, pg[int(c.first)*SectorSize:]...)
					}
					if !bytes.Equal(got, c.expect) {
						t.Errorf("read %d (sector %d) did not see the image as the requests before it left it", i, c.sector)
					}
				}
				if !bytes.Equal(r.fileBytes(), want) {
					t.Error("the image is not what the writes in ring order make it")
				}
				if s := r.b.Stats(); s.IOs != tc.ios {
					t.Errorf("%d runs, want %d", s.IOs, tc.ios)
				}
			})
		}
	}
}

// failDisk fails the write at one offset.
type failDisk struct {
	disk
	at int64
}

func (d failDisk) WriteAt(p []byte, off int64) (int, error) {
	if off == d.at {
		return 0, syscall.EIO
	}
	return d.disk.WriteAt(p, off)
}

// An I/O error in a run fails every request of the run (as the block
// layer fails a merged request's bios), and only those: the request
// after it, not adjacent, is OK.
func TestMergeIOError(t *testing.T) {
	r := newRig(t, 128, Config{}, true, func(d disk) disk { return failDisk{d, 8 * SectorSize} })
	r.connect(ringOpts{proto: ProtoX86_64, order: -1})
	f := r.fe
	rng := rand.New(rand.NewPCG(9, 10))
	for i, sector := range []uint64{0, 8, 16, 64} {
		segs, _ := f.grantData(1, rng, true)
		f.queue(rwReq(ProtoX86_64, OpWrite, uint64(i), sector, segs))
	}
	f.push()
	want := []int16{RspError, RspError, RspError, RspOkay}
	for i, rsp := range f.wait(4) {
		if rsp.id != uint64(i) || rsp.status != want[i] {
			t.Errorf("response %d: %+v, want status %d", i, rsp, want[i])
		}
	}
	if s := r.b.Stats(); s.Errors != 3 || s.IOs != 2 {
		t.Errorf("stats %+v, want 3 errors in 2 runs", s)
	}
}

// mappedDisk checks that every buffer the backend reads into or writes
// from is a page of a grant that is mapped at that moment.
type mappedDisk struct {
	disk
	g   *fakeGrants
	mu  sync.Mutex
	bad int
}

func (d *mappedDisk) check(p []byte) {
	d.g.mu.Lock()
	defer d.g.mu.Unlock()
	for _, gr := range d.g.grants {
		if unsafe.Pointer(&gr.page[0]) == unsafe.Pointer(&p[0]) {
			if gr.mapped == 0 {
				d.mu.Lock()
				d.bad++
				d.mu.Unlock()
			}
			return
		}
	}
	d.mu.Lock()
	d.bad++
	d.mu.Unlock()
}

func (d *mappedDisk) WriteAt(p []byte, off int64) (int, error) {
	d.check(p)
	return d.disk.WriteAt(p, off)
}

// With persistent grants and a cache smaller than a run, the grants of
// the run's requests are not evicted before its I/O: the requests past
// the cache's room map for themselves, every buffer is mapped when it is
// written, and afterwards only the cached grants stay mapped.
func TestMergePersistentEviction(t *testing.T) {
	md := &mappedDisk{}
	cfg := Config{MaxIndirectSegments: MaxSegmentsPerRequest, MaxPersistentGrants: MaxSegmentsPerRequest + MaxIndirectPagesPerRequest}
	r := newRig(t, 512, cfg, true, func(d disk) disk { md.disk = plainDisk{d}; return md })
	md.g = r.g // before the ring connects: no I/O yet
	r.connect(ringOpts{proto: ProtoX86_64, order: 1, persistent: true})
	f := r.fe
	rng := rand.New(rand.NewPCG(11, 12))
	want := bytes.Clone(r.data)
	const k = 40
	for i := range k {
		segs, pages := f.grantData(1, rng, true)
		copy(want[8*i*SectorSize:], pages[0])
		f.queue(rwReq(ProtoX86_64, OpWrite, uint64(i), uint64(8*i), segs))
	}
	f.push()
	for _, rsp := range f.wait(k) {
		if rsp.status != RspOkay {
			t.Fatalf("response %+v", rsp)
		}
	}
	if md.bad != 0 {
		t.Errorf("%d writes from a page that was not a mapped grant", md.bad)
	}
	if !bytes.Equal(r.fileBytes(), want) {
		t.Error("image differs")
	}
	s := r.b.Stats()
	if s.IOs != 1 || s.PersistentGrants != cfg.MaxPersistentGrants {
		t.Errorf("stats %+v: want 1 run, %d grants cached", s, cfg.MaxPersistentGrants)
	}
	if n := r.g.mapped.Load(); n != int64(s.PersistentGrants)+int64(len(f.ringRefs)) {
		t.Errorf("%d mappings, want the %d cached and the ring's %d", n, s.PersistentGrants, len(f.ringRefs))
	}
}

// vectorIO carries on after short transfers and EINTR, and fails on a
// transfer of nothing (the end of the file).
func TestVectorIO(t *testing.T) {
	src := make([]byte, 3*PageSize+512)
	for i := range src {
		src[i] = byte(i * 7)
	}
	for _, tc := range []struct {
		name  string
		chunk int // bytes per call
		eintr bool
		eof   int // calls before 0 bytes, 0: never
		err   error
	}{
		{"one call", len(src), false, 0, nil},
		{"short transfers", 1000, false, 0, nil},
		{"EINTR", 700, true, 0, nil},
		{"end of file", 1000, false, 2, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := make([]byte, len(src))
			iovs := [][]byte{dst[:100], dst[100:PageSize], dst[PageSize : 3*PageSize], dst[3*PageSize:]}
			calls := 0
			err := vectorIO(iovs, 0, func(v [][]byte, off int64) (int, error) {
				calls++
				if tc.eintr && calls%2 == 1 {
					return 0, syscall.EINTR
				}
				if tc.eof > 0 && calls > tc.eof {
					return 0, nil
				}
				n := 0
				for _, b := range v {
					k := copy(b, src[off+int64(n):min(len(src), int(off)+tc.chunk)])
					n += k
					if k < len(b) {
						break
					}
				}
				return n, nil
			})
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if tc.err == nil && !bytes.Equal(dst, src) {
				t.Error("data differs")
			}
		})
	}
}

// With persistent grants the request path allocates nothing: ring
// parsing, the grant cache, the run, preadv/pwritev on the image file
// (x/sys's would allocate its iovec array each call) and the responses;
// for merged and for scattered requests, reads and writes.
func TestServeNoAllocs(t *testing.T) {
	const sectors, n = 512, 32
	path := t.TempDir() + "/disk.img"
	if err := os.WriteFile(path, make([]byte, sectors*SectorSize), 0o600); err != nil {
		t.Fatal(err)
	}
	img, err := openFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for _, tc := range []struct {
		name   string
		op     uint8
		stride uint64 // sectors between requests: 8 adjacent
	}{{"read-merged", OpRead, 8}, {"read-scattered", OpRead, 16}, {"write-merged", OpWrite, 8}, {"write-scattered", OpWrite, 16}} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGrants(testDomid)
			reqs := make([][]byte, n)
			for i := range reqs {
				ref, _ := g.grant(false)
				reqs[i] = rwReq(ProtoX86_64, tc.op, uint64(i), uint64(i)*tc.stride, []seg{{ref, 0, 7}})
			}
			b := &Backend{
				cfg:     Config{Grants: g, Domid: testDomid, MaxIndirectSegments: DefaultMaxIndirectSegments, MaxPersistentGrants: DefaultMaxPersistentGrants},
				log:     slog.New(slog.DiscardHandler),
				img:     img,
				sectors: sectors,
			}
			pg := alignedPage()
			r, err := newBackRing(ProtoX86_64, [][]byte{pg})
			if err != nil {
				t.Fatal(err)
			}
			c := &conn{ring: r, maxSegs: DefaultMaxIndirectSegments, notify: func() {}, pgrants: newGrantCache(DefaultMaxPersistentGrants)}
			c.init()
			prod := uint32(0)
			round := func() {
				for i, req := range reqs {
					copy(pg[ringHeader+i*int(ProtoX86_64.entrySize()):], req)
				}
				prod += n
				atomic.StoreUint32((*uint32)(unsafe.Pointer(&pg[0])), prod)
				if _, halt := b.batch(c); halt != nil || r.rspProdPvt != prod {
					t.Fatalf("batch: %v, %d responses of %d", halt, r.rspProdPvt, prod)
				}
			}
			round() // maps the grants into the cache
			if a := testing.AllocsPerRun(20, round); a != 0 {
				t.Errorf("%v allocations per batch of %d requests", a, n)
			}
			if s := b.Stats(); s.Errors != 0 {
				t.Errorf("stats %+v", s)
			}
		})
	}
}

// The image file's ReadvAt and WritevAt, on one buffer (pread64 and
// pwrite64) and on several (preadv and pwritev): the bytes land where
// asked; a read past the end of the file and a write on a read-only
// image fail (negative controls).
func TestFileDiskRW(t *testing.T) {
	const size = 8 * PageSize
	path := t.TempDir() + "/disk.img"
	orig := make([]byte, size)
	for i := range orig {
		orig[i] = byte(i * 13)
	}
	if err := os.WriteFile(path, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := openFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	fd := d.(*fileDisk)
	for _, tc := range []struct {
		name string
		lens []int // the buffers, in order
		off  int64
	}{
		{"one page", []int{PageSize}, 3 * PageSize},
		{"one sector", []int{SectorSize}, 5*PageSize + SectorSize},
		{"three buffers", []int{100, PageSize - 100, 2 * PageSize}, PageSize},
		{"empty buffers skipped", []int{0, PageSize, 0}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bufs := func(fill byte) ([][]byte, []byte) {
				var all []byte
				var v [][]byte
				for _, n := range tc.lens {
					b := bytes.Repeat([]byte{fill}, n)
					v = append(v, b)
					all = append(all, b...)
				}
				return v, all
			}
			v, _ := bufs(0)
			if err := fd.ReadvAt(v, tc.off); err != nil {
				t.Fatalf("ReadvAt: %v", err)
			}
			if got := bytes.Join(v, nil); !bytes.Equal(got, orig[tc.off:tc.off+int64(len(got))]) {
				t.Error("read data differs from the file's")
			}
			w, wrote := bufs(0xc3)
			if err := fd.WritevAt(w, tc.off); err != nil {
				t.Fatalf("WritevAt: %v", err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			want := bytes.Clone(orig)
			copy(want[tc.off:], wrote)
			if !bytes.Equal(got, want) {
				t.Error("the file after the write is not the original with the buffers at the offset")
			}
			if err := os.WriteFile(path, orig, 0o600); err != nil {
				t.Fatal(err)
			}
		})
	}
	if err := fd.ReadvAt([][]byte{make([]byte, PageSize)}, size-SectorSize); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("a one-buffer read past the end: %v, want io.ErrUnexpectedEOF", err)
	}
	if err := fd.ReadvAt([][]byte{make([]byte, SectorSize), make([]byte, PageSize)}, size-SectorSize); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("a two-buffer read past the end: %v, want io.ErrUnexpectedEOF", err)
	}
	ro, err := openFile(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	for _, v := range [][][]byte{{make([]byte, PageSize)}, {make([]byte, PageSize), make([]byte, PageSize)}} {
		if err := ro.(*fileDisk).WritevAt(v, 0); !errors.Is(err, syscall.EBADF) {
			t.Errorf("a %d-buffer write on a read-only image: %v, want EBADF", len(v), err)
		}
	}
}
