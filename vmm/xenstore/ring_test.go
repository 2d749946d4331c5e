package xenstore

import (
	"encoding/binary"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// The guest's view of struct xenstore_domain_interface (io/xs_wire.h),
// kept here by hand on purpose: the server uses xenabi's generated layout,
// so these tests cross-check it.
const (
	ringReqOff   = 0
	ringRspOff   = 1024
	ringReqCons  = 2048
	ringReqProd  = 2052
	ringRspCons  = 2056
	ringRspProd  = 2060
	ringFeatures = 2064
	ringConn     = 2068
	ringError    = 2072
)

// guestRing plays the guest's side of a ring page.
type guestRing struct {
	t       *testing.T
	page    []byte
	r       *Ring
	notifs  atomic.Int32
	pending []byte
}

func newGuestRing(t *testing.T, s *Store, domid uint32, start uint32) *guestRing {
	t.Helper()
	g := &guestRing{t: t, page: make([]byte, 4096)}
	for _, off := range []int{ringReqCons, ringReqProd, ringRspCons, ringRspProd} {
		binary.LittleEndian.PutUint32(g.page[off:], start)
	}
	r, err := s.ServeRing(domid, g.page, func() { g.notifs.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	g.r = r
	t.Cleanup(r.Close)
	return g
}

func (g *guestRing) u32(off int) *uint32 { return (*uint32)(unsafe.Pointer(&g.page[off])) }

// put writes bytes into req[] as far as they fit; it returns how many.
func (g *guestRing) put(b []byte) int {
	cons, prod := atomic.LoadUint32(g.u32(ringReqCons)), atomic.LoadUint32(g.u32(ringReqProd))
	n := 0
	for n < len(b) && prod-cons < RingSize {
		g.page[ringReqOff+int(prod%RingSize)] = b[n]
		prod++
		n++
	}
	atomic.StoreUint32(g.u32(ringReqProd), prod)
	return n
}

// recv reads one message from rsp[], waiting up to a second.
func (g *guestRing) recv() (Msg, bool) {
	deadline := time.Now().Add(time.Second)
	for {
		cons, prod := atomic.LoadUint32(g.u32(ringRspCons)), atomic.LoadUint32(g.u32(ringRspProd))
		for cons != prod {
			g.pending = append(g.pending, g.page[ringRspOff+int(cons%RingSize)])
			cons++
		}
		atomic.StoreUint32(g.u32(ringRspCons), cons)
		if m, n, _ := Decode(g.pending); n > 0 {
			g.pending = g.pending[n:]
			return m, true
		}
		if time.Now().After(deadline) {
			return Msg{}, false
		}
		g.r.Kick() // room freed
		time.Sleep(time.Millisecond)
	}
}

func (g *guestRing) request(m Msg) Msg {
	g.t.Helper()
	b := m.Marshal()
	for len(b) > 0 {
		n := g.put(b)
		b = b[n:]
		g.r.Kick()
	}
	for {
		r, ok := g.recv()
		if !ok {
			g.t.Fatalf("no reply to %s", TypeName(m.Type))
		}
		if r.Type != XSWatchEvent {
			return r
		}
	}
}

func TestRingRequests(t *testing.T) {
	s := New(nil)
	setupDomain(t, s, 1)
	// Indices start just below the 32-bit wrap: they are free-running.
	g := newGuestRing(t, s, 1, 0xffffff00)
	if f := atomic.LoadUint32(g.u32(ringFeatures)); f != FeatureReconnection|FeatureError {
		t.Errorf("server features %#x", f)
	}
	for i := 0; i < 40; i++ {
		r := g.request(Msg{Type: XSWrite, ReqID: uint32(i), Payload: []byte("data/k\x00" + strings.Repeat("v", 100))})
		if r.Type != XSWrite || r.ReqID != uint32(i) || string(r.Payload) != "OK\x00" {
			t.Fatalf("write %d: %s %q", i, TypeName(r.Type), r.Payload)
		}
	}
	if atomic.LoadUint32(g.u32(ringReqProd)) > 0xffffff00 {
		t.Fatal("indices did not wrap")
	}
	r := g.request(Msg{Type: XSRead, ReqID: 99, Payload: []byte("control/shutdown\x00")})
	if r.Type != XSRead || string(r.Payload) != "" {
		t.Fatalf("read: %s %q", TypeName(r.Type), r.Payload)
	}
	// A watch event set off by the toolstack reaches the guest.
	g.request(Msg{Type: XSWatch, Payload: []byte("control/shutdown\x00tok\x00")})
	if m, ok := g.recv(); !ok || m.Type != XSWatchEvent {
		t.Fatalf("registration event: %v", m)
	}
	s.Write("/local/domain/1/control/shutdown", "suspend")
	if m, ok := g.recv(); !ok || m.Type != XSWatchEvent || string(m.Payload) != "control/shutdown\x00tok\x00" {
		t.Fatalf("watch event: %s %q", TypeName(m.Type), m.Payload)
	}
	if g.notifs.Load() == 0 {
		t.Error("the guest was never signalled")
	}
	// A zero-length payload is answered, not waited on forever.
	if r := g.request(Msg{Type: XSTransactionEnd, ReqID: 5}); r.Type != XSError {
		t.Errorf("empty TRANSACTION_END: %s", TypeName(r.Type))
	}
}

func TestRingBogusIndices(t *testing.T) {
	s := New(nil)
	setupDomain(t, s, 1)
	g := newGuestRing(t, s, 1, 0)
	atomic.StoreUint32(g.u32(ringReqProd), 5000)
	g.r.Kick()
	if g.r.Err() == nil || atomic.LoadUint32(g.u32(ringError)) != ErrorRingIdx {
		t.Fatalf("bogus req indices: err %v, error field %d", g.r.Err(), atomic.LoadUint32(g.u32(ringError)))
	}
	// The store and other domains are fine.
	setupDomain(t, s, 2)
	g2 := newGuestRing(t, s, 2, 0)
	if r := g2.request(Msg{Type: XSRead, Payload: []byte("control/shutdown\x00")}); r.Type != XSRead {
		t.Fatalf("another domain after the bogus one: %s", TypeName(r.Type))
	}
}

func TestRingOversizedMessage(t *testing.T) {
	s := New(nil)
	setupDomain(t, s, 1)
	g := newGuestRing(t, s, 1, 0)
	hdr := Msg{Type: XSWrite}.Marshal()
	binary.LittleEndian.PutUint32(hdr[12:], PayloadMax+1)
	g.put(hdr)
	g.r.Kick()
	if g.r.Err() == nil || atomic.LoadUint32(g.u32(ringError)) != ErrorProto {
		t.Fatalf("oversized message: %v", g.r.Err())
	}
}

// A guest that floods requests and never reads replies gets its requests
// left in the ring; the host holds a bounded backlog and does not block.
func TestRingFloodWithoutReading(t *testing.T) {
	s := New(nil)
	setupDomain(t, s, 1)
	g := newGuestRing(t, s, 1, 0)
	req := Msg{Type: XSRead, Payload: []byte("control/shutdown\x00")}.Marshal()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 5000; i++ {
			if g.put(req) < len(req) {
				break
			}
			g.r.Kick()
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("kicks blocked")
	}
	g.r.mu.Lock()
	backlog := len(g.r.out)
	g.r.mu.Unlock()
	if backlog > maxOut+HeaderSize+PayloadMax || len(g.r.conn.events) > DefaultQuota.Events {
		t.Fatalf("backlog %d bytes", backlog)
	}
	// Once it reads, service resumes.
	for i := 0; i < 10; i++ {
		if _, ok := g.recv(); !ok {
			t.Fatalf("reply %d never came", i)
		}
	}
}

func TestRingReconnect(t *testing.T) {
	s := New(nil)
	setupDomain(t, s, 1)
	g := newGuestRing(t, s, 1, 0)
	g.request(Msg{Type: XSWatch, Payload: []byte("control/shutdown\x00tok\x00")})
	g.put([]byte{1, 2, 3}) // a partial request
	atomic.StoreUint32(g.u32(ringConn), Reconnect)
	g.r.Kick()
	if atomic.LoadUint32(g.u32(ringConn)) != Connected {
		t.Fatal("reconnection not acknowledged")
	}
	if atomic.LoadUint32(g.u32(ringReqCons)) != atomic.LoadUint32(g.u32(ringReqProd)) {
		t.Error("request queue not emptied")
	}
	g.pending = nil
	// The watch went with the reconnection: UNWATCH finds nothing.
	if r := g.request(Msg{Type: XSUnwatch, Payload: []byte("control/shutdown\x00tok\x00")}); r.Type != XSError || string(r.Payload) != "ENOENT\x00" {
		t.Errorf("unwatch after reconnect: %s %q", TypeName(r.Type), r.Payload)
	}
}

// FuzzRing: arbitrary ring contents never panic the server.
func FuzzRing(f *testing.F) {
	f.Add([]byte{}, uint32(0), uint32(16))
	f.Add(Msg{Type: XSRead, Payload: []byte("x\x00")}.Marshal(), uint32(0), uint32(18))
	f.Fuzz(func(t *testing.T, req []byte, cons, prod uint32) {
		s := New(nil)
		page := make([]byte, 4096)
		copy(page, req)
		r, err := s.ServeRing(1, page, func() {})
		if err != nil {
			t.Fatal(err)
		}
		binary.LittleEndian.PutUint32(page[ringReqCons:], cons)
		binary.LittleEndian.PutUint32(page[ringReqProd:], prod)
		r.Kick()
		r.Kick()
		r.Close()
	})
}

// A guest that sends requests without taking their replies has at most
// Xen's outstanding quota (20) of replies waiting for room in the ring;
// past it its requests wait in the ring (not an error), the stall is
// counted once, and service resumes as soon as it reads.
func TestRingOutstanding(t *testing.T) {
	s := New(nil)
	setupDomain(t, s, 1)
	g := newGuestRing(t, s, 1, 0)
	req := Msg{Type: XSRead, Payload: []byte("control/shutdown\x00")}.Marshal() // reply: 16 bytes
	sent := 0
	for i := 0; i < 200; i++ {
		if g.put(req) < len(req) {
			break
		}
		sent++
		g.r.Kick()
	}
	// The ring's 1024 bytes hold 64 replies; 20 more wait.
	if n := g.r.conn.outstanding.Load(); n != int32(DefaultQuota.Outstanding) {
		t.Fatalf("%d replies outstanding, want %d", n, DefaultQuota.Outstanding)
	}
	if unread := atomic.LoadUint32(g.u32(ringReqProd)) - atomic.LoadUint32(g.u32(ringReqCons)); unread == 0 {
		t.Fatal("every request was taken despite the outstanding replies")
	}
	if hits := s.Stats().QuotaHits[QuotaOutstanding]; hits != 1 {
		t.Errorf("outstanding quota hits %d, want 1", hits)
	}
	for i := 0; i < sent; i++ {
		if r, ok := g.recv(); !ok || r.Type != XSRead {
			t.Fatalf("reply %d of %d: %v %s", i, sent, ok, TypeName(r.Type))
		}
	}
}
