package blkback

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/xenresume/xenresume/vmm/xenstore"
)

// testTimeout bounds every wait of the fake frontend.
const testTimeout = 10 * time.Second

// fakeGrants is a grant table: the frontend grants pages, the backend
// maps them. It counts live mappings, to find leaks.
type fakeGrants struct {
	mu     sync.Mutex
	next   uint32
	grants map[uint32]*fakeGrant // by ref, all owned by one frontend domain
	owner  uint16
	mapped atomic.Int64
	maps   atomic.Int64 // Map calls that succeeded
}

type fakeGrant struct {
	page     []byte
	readonly bool
	mapped   int
}

func newFakeGrants(owner uint16) *fakeGrants {
	return &fakeGrants{next: 8, grants: map[uint32]*fakeGrant{}, owner: owner}
}

// grant grants a new zeroed page and returns its ref.
func (g *fakeGrants) grant(readonly bool) (uint32, []byte) {
	page := alignedPage()
	g.mu.Lock()
	defer g.mu.Unlock()
	ref := g.next
	g.next++
	g.grants[ref] = &fakeGrant{page: page, readonly: readonly}
	return ref, page
}

// end ends a grant; a mapped one cannot end (Xen's gnttab_end_foreign_access
// fails while GTF_reading/writing are set).
func (g *fakeGrants) end(ref uint32) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	gr := g.grants[ref]
	if gr == nil {
		return errors.New("no such grant")
	}
	if gr.mapped > 0 {
		return errors.New("grant in use")
	}
	delete(g.grants, ref)
	return nil
}

func (g *fakeGrants) Map(domid uint16, ref uint32, writable bool) ([]byte, func(), error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	gr := g.grants[ref]
	switch {
	case domid != g.owner:
		return nil, nil, fmt.Errorf("domain %d: no such domain", domid)
	case gr == nil:
		return nil, nil, fmt.Errorf("grant %d: bad gntref", ref)
	case gr.readonly && writable:
		return nil, nil, fmt.Errorf("grant %d: read-only", ref)
	}
	gr.mapped++
	g.mapped.Add(1)
	g.maps.Add(1)
	var once sync.Once
	return gr.page, func() {
		once.Do(func() {
			g.mu.Lock()
			gr.mapped--
			g.mu.Unlock()
			g.mapped.Add(-1)
		})
	}, nil
}

// alignedPage returns a zeroed, page-aligned 4 KiB slice.
func alignedPage() []byte {
	b := make([]byte, 2*PageSize)
	off := (PageSize - int(uintptr(unsafe.Pointer(&b[0]))%PageSize)) % PageSize
	return b[off : off+PageSize : off+PageSize]
}

// fakeEvents is the event channel between one frontend and the backend.
type fakeEvents struct {
	mu      sync.Mutex
	unbound map[uint32]bool // ports the frontend allocated for the backend
	next    uint32
	kick    func() // the backend's handler, once bound
	bound   uint32
	notify  chan struct{}
	binds   atomic.Int32
}

func newFakeEvents() *fakeEvents {
	return &fakeEvents{unbound: map[uint32]bool{}, next: 3, notify: make(chan struct{}, 1)}
}

// alloc is the frontend's EVTCHNOP_alloc_unbound.
func (e *fakeEvents) alloc() uint32 {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.next
	e.next++
	e.unbound[p] = true
	return p
}

func (e *fakeEvents) Bind(domid uint16, port uint32, kick func()) (func(), func(), error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.unbound[port] {
		return nil, nil, fmt.Errorf("port %d: EINVAL", port)
	}
	delete(e.unbound, port)
	e.kick, e.bound = kick, port
	e.binds.Add(1)
	closed := false
	notify := func() {
		e.mu.Lock()
		c := closed
		e.mu.Unlock()
		if c {
			panic("notify after unbind")
		}
		select {
		case e.notify <- struct{}{}:
		default:
		}
	}
	return notify, func() {
		e.mu.Lock()
		closed = true
		if e.bound == port {
			e.kick = nil
		}
		e.mu.Unlock()
	}, nil
}

// send is the frontend's notify: it runs the backend's handler.
func (e *fakeEvents) send() {
	e.mu.Lock()
	k := e.kick
	e.mu.Unlock()
	if k != nil {
		k()
	}
}

// frontend plays a guest's blkfront.
type frontend struct {
	t      testing.TB
	st     *xenstore.Store
	g      *fakeGrants
	ev     *fakeEvents
	domid  uint16
	path   string // device/vbd/<devid>
	bePath string

	proto      Protocol
	persistent bool
	pages      [][]byte
	ringRefs   []uint32
	size       uint32
	reqProdPvt uint32
	rspCons    uint32
}

// ringOpts are the frontend's transport choices.
type ringOpts struct {
	proto      Protocol
	order      int // -1: single "ring-ref"; else ring-page-order and ring-ref%d
	persistent bool
}

// rig is a device: image, store, backend, frontend.
type rig struct {
	t    testing.TB
	img  string
	data []byte // the image's initial contents
	st   *xenstore.Store
	g    *fakeGrants
	ev   *fakeEvents
	b    *Backend
	fe   *frontend
	dev  Device
	done chan error
	stop context.CancelFunc
	wrap func(disk) disk // optional: wraps the image
}

const testDomid = 5

// newRig makes an image of sectors sectors of random bytes and a backend
// for it, running, in InitWait.
func newRig(t testing.TB, sectors int, cfg Config, writable bool, wrap func(disk) disk) *rig {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	data := make([]byte, sectors*SectorSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, img: img, data: data, st: xenstore.New(slog.New(slog.DiscardHandler)),
		g: newFakeGrants(testDomid), ev: newFakeEvents(), done: make(chan error, 1), wrap: wrap}
	r.dev = Device{Domid: testDomid, Devid: 51712, Vdev: "xvda", Target: img, Writable: writable, Protocol: ProtoNameX86_64}
	if err := AddDevice(r.st, r.dev); err != nil {
		t.Fatal(err)
	}
	cfg.Store, cfg.Grants, cfg.Events = r.st, r.g, r.ev
	cfg.Domid, cfg.Devid = testDomid, 51712
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		b.openDisk = func(path string, ro bool) (disk, error) {
			d, err := openFile(path, ro)
			if err != nil {
				return nil, err
			}
			return wrap(d), nil
		}
	}
	r.b = b
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	go func() { r.done <- b.Run(ctx) }()
	t.Cleanup(r.close)
	r.fe = &frontend{t: t, st: r.st, g: r.g, ev: r.ev, domid: testDomid, path: r.dev.FrontendPath(), bePath: r.dev.BackendPath()}
	r.waitBackend(StateInitWait)
	return r
}

// close stops the backend and checks it let go of every grant.
func (r *rig) close() {
	r.stop()
	select {
	case <-r.done:
	case <-time.After(testTimeout):
		r.t.Error("backend did not stop")
		return
	}
	if n := r.g.mapped.Load(); n != 0 {
		r.t.Errorf("%d grant mappings left after the backend stopped", n)
	}
}

// waitBackend waits for the backend's state node to read want.
func (r *rig) waitBackend(want State) {
	r.t.Helper()
	r.waitNode(r.fe.bePath+"/state", strconv.Itoa(int(want)))
}

func (r *rig) waitNode(path, want string) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var got string
	r.st.Watch(ctx, path, func() bool {
		got, _ = r.st.Read(path)
		return got != want
	})
	if got != want {
		e, _ := r.st.Read(xenstore.DomainPath(0) + "/error/" + r.b.nodename + "/error")
		r.t.Fatalf("%s is %q, want %q (error node %q)", path, got, want, e)
	}
}

// errorNode returns the backend's error node.
func (r *rig) errorNode() string {
	v, _ := r.st.Read(xenstore.DomainPath(0) + "/error/" + r.b.nodename + "/error")
	return v
}

// connect sets up a ring as blkfront's talk_to_blkback does, goes to
// Initialised and waits for the backend to connect.
func (r *rig) connect(o ringOpts) {
	r.t.Helper()
	r.fe.setupRing(o)
	r.fe.setState(StateInitialised)
	r.waitBackend(StateConnected)
	r.fe.setState(StateConnected)
}

// fileBytes returns the image file's contents now.
func (r *rig) fileBytes() []byte {
	b, err := os.ReadFile(r.img)
	if err != nil {
		r.t.Fatal(err)
	}
	return b
}

func (f *frontend) write(node, value string) {
	f.t.Helper()
	if err := f.st.Write(f.path+"/"+node, value); err != nil {
		f.t.Fatal(err)
	}
}

func (f *frontend) setState(s State) { f.write("state", strconv.Itoa(int(s))) }

// setupRing allocates and grants the ring pages, initialises the shared
// ring and publishes the transport nodes.
func (f *frontend) setupRing(o ringOpts) {
	n := 1
	if o.order > 0 {
		n = 1 << o.order
	}
	f.proto, f.persistent, f.pages, f.ringRefs = o.proto, o.persistent, nil, nil
	for range n {
		ref, pg := f.g.grant(false)
		f.pages = append(f.pages, pg)
		f.ringRefs = append(f.ringRefs, ref)
	}
	f.size = RingSize(o.proto, n)
	f.reqProdPvt, f.rspCons = 0, 0
	// SHARED_RING_INIT
	binary.LittleEndian.PutUint32(f.pages[0][4:], 1)
	binary.LittleEndian.PutUint32(f.pages[0][12:], 1)
	if o.order < 0 {
		f.write("ring-ref", strconv.Itoa(int(f.ringRefs[0])))
	} else {
		f.write("ring-page-order", strconv.Itoa(o.order))
		for i, ref := range f.ringRefs {
			f.write("ring-ref"+strconv.Itoa(i), strconv.Itoa(int(ref)))
		}
	}
	f.write("event-channel", strconv.Itoa(int(f.ev.alloc())))
	f.write("protocol", o.proto.String())
	p := "0"
	if o.persistent {
		p = "1"
	}
	f.write("feature-persistent", p)
}

func (f *frontend) idx(off int) *uint32 { return (*uint32)(unsafe.Pointer(&f.pages[0][off])) }

// ringCopyIn writes b at ring byte offset off, across pages.
func (f *frontend) ringCopyIn(off int, b []byte) {
	for len(b) > 0 {
		n := copy(f.pages[off/PageSize][off%PageSize:], b)
		b, off = b[n:], off+n
	}
}

func (f *frontend) ringCopyOut(off int, b []byte) {
	for len(b) > 0 {
		n := copy(b, f.pages[off/PageSize][off%PageSize:])
		b, off = b[n:], off+n
	}
}

// free returns how many requests fit in the ring now.
func (f *frontend) free() uint32 { return f.size - (f.reqProdPvt - f.rspCons) }

// queue writes a request in the next slot (not yet published).
func (f *frontend) queue(req []byte) {
	if f.free() == 0 {
		f.t.Fatal("ring full")
	}
	slot := ringHeader + int(f.reqProdPvt&(f.size-1))*int(f.proto.entrySize())
	entry := make([]byte, f.proto.entrySize())
	copy(entry, req)
	f.ringCopyIn(slot, entry)
	f.reqProdPvt++
}

// push publishes queued requests, notifying the backend if it asked
// (RING_PUSH_REQUESTS_AND_CHECK_NOTIFY).
func (f *frontend) push() {
	old := atomic.LoadUint32(f.idx(0))
	next := f.reqProdPvt
	atomic.StoreUint32(f.idx(0), next)
	if next-atomic.LoadUint32(f.idx(4)) < next-old {
		f.ev.send()
	}
}

// response is one blkif_response.
type response struct {
	id     uint64
	op     uint8
	status int16
}

// poll takes the responses the backend published.
func (f *frontend) poll() []response {
	var out []response
	for {
		prod := atomic.LoadUint32(f.idx(8))
		for ; f.rspCons != prod; f.rspCons++ {
			var b [12]byte
			f.ringCopyOut(ringHeader+int(f.rspCons&(f.size-1))*int(f.proto.entrySize()), b[:])
			out = append(out, response{binary.LittleEndian.Uint64(b[:]), b[8], int16(binary.LittleEndian.Uint16(b[10:]))})
		}
		// RING_FINAL_CHECK_FOR_RESPONSES
		atomic.StoreUint32(f.idx(12), f.rspCons+1)
		if atomic.LoadUint32(f.idx(8)) == f.rspCons {
			return out
		}
	}
}

// wait collects n responses, waiting for the backend's notifications.
func (f *frontend) wait(n int) []response {
	f.t.Helper()
	var out []response
	deadline := time.After(testTimeout)
	for {
		out = append(out, f.poll()...)
		if len(out) >= n {
			if len(out) > n {
				f.t.Fatalf("%d responses, want %d: %v", len(out), n, out)
			}
			return out
		}
		select {
		case <-f.ev.notify:
		case <-deadline:
			f.t.Fatalf("%d responses after %v, want %d", len(out), testTimeout, n)
		}
	}
}

// do submits one request and returns its response.
func (f *frontend) do(req []byte) response {
	f.t.Helper()
	f.queue(req)
	f.push()
	return f.wait(1)[0]
}

// seg is a segment as the frontend builds it.
type seg struct {
	ref         uint32
	first, last uint8
}

// rwReq encodes a read or write request (or flush, barrier, any op with
// direct segments) in protocol p.
func rwReq(p Protocol, op uint8, id, sector uint64, segs []seg) []byte {
	b := make([]byte, p.entrySize())
	b[0], b[1] = op, byte(len(segs))
	binary.LittleEndian.PutUint16(b[2:], 51712)
	idOff, secOff, segOff := 8, 16, 24
	if p == ProtoX86_32 {
		idOff, secOff, segOff = 4, 12, 20
	}
	binary.LittleEndian.PutUint64(b[idOff:], id)
	binary.LittleEndian.PutUint64(b[secOff:], sector)
	for i, s := range segs {
		if i == MaxSegmentsPerRequest {
			break
		}
		putSeg(b[segOff+8*i:], s)
	}
	return b
}

func putSeg(b []byte, s seg) {
	binary.LittleEndian.PutUint32(b, s.ref)
	b[4], b[5] = s.first, s.last
}

// indirectReq encodes an indirect request whose segments are in pages.
func indirectReq(p Protocol, op uint8, id, sector uint64, nseg int, pages []uint32) []byte {
	b := make([]byte, p.entrySize())
	b[0], b[1] = OpIndirect, op
	binary.LittleEndian.PutUint16(b[2:], uint16(nseg))
	idOff, secOff, hOff := 8, 16, 24
	if p == ProtoX86_32 {
		idOff, secOff, hOff = 4, 12, 20
	}
	binary.LittleEndian.PutUint64(b[idOff:], id)
	binary.LittleEndian.PutUint64(b[secOff:], sector)
	binary.LittleEndian.PutUint16(b[hOff:], 51712)
	for i, ref := range pages {
		binary.LittleEndian.PutUint32(b[hOff+4+4*i:], ref)
	}
	return b
}

// discardReq encodes a discard.
func discardReq(p Protocol, id, sector, n uint64) []byte {
	b := make([]byte, p.entrySize())
	b[0] = OpDiscard
	idOff, secOff, nOff := 8, 16, 24
	if p == ProtoX86_32 {
		idOff, secOff, nOff = 4, 12, 20
	}
	binary.LittleEndian.PutUint64(b[idOff:], id)
	binary.LittleEndian.PutUint64(b[secOff:], sector)
	binary.LittleEndian.PutUint64(b[nOff:], n)
	return b
}

// grantData grants n pages (writable by the backend), filled from rng
// when fill is set, and returns whole-page segments over them.
func (f *frontend) grantData(n int, rng *rand.Rand, fill bool) ([]seg, [][]byte) {
	segs := make([]seg, n)
	pages := make([][]byte, n)
	for i := range n {
		ref, pg := f.g.grant(false)
		if fill {
			for j := range pg {
				pg[j] = byte(rng.Uint32())
			}
		}
		segs[i], pages[i] = seg{ref, 0, sectorsPerPage - 1}, pg
	}
	return segs, pages
}

// indirectPages grants pages holding segs: read-only, unless the
// frontend uses persistent grants (which the backend maps writable).
func (f *frontend) indirectPages(segs []seg) []uint32 {
	var refs []uint32
	for i := 0; i < len(segs); i += SegmentsPerIndirectPage {
		ref, pg := f.g.grant(!f.persistent)
		for j := i; j < len(segs) && j < i+SegmentsPerIndirectPage; j++ {
			putSeg(pg[8*(j-i):], segs[j])
		}
		refs = append(refs, ref)
	}
	return refs
}

// memDisk is an image in memory that records any access out of it.
type memDisk struct {
	mu     sync.Mutex
	b      []byte
	bad    []string
	syncs  int
	writes map[int64]int // writes per offset
}

func newMemDisk(size int) *memDisk { return &memDisk{b: make([]byte, size), writes: map[int64]int{}} }

func (m *memDisk) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		m.bad = append(m.bad, fmt.Sprintf("read %d@%d", len(p), off))
		return 0, io.EOF
	}
	return copy(p, m.b[off:]), nil
}

func (m *memDisk) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		m.bad = append(m.bad, fmt.Sprintf("write %d@%d", len(p), off))
		return 0, io.ErrShortWrite
	}
	m.writes[off]++
	return copy(m.b[off:], p), nil
}

func (m *memDisk) Size() (int64, error) { return int64(len(m.b)), nil }
func (m *memDisk) Sync() error          { m.mu.Lock(); m.syncs++; m.mu.Unlock(); return nil }
func (m *memDisk) Close() error         { return nil }
func (m *memDisk) Discard(off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+n > int64(len(m.b)) {
		m.bad = append(m.bad, fmt.Sprintf("discard %d@%d", n, off))
		return errors.New("out of range")
	}
	clear(m.b[off : off+n])
	return nil
}
