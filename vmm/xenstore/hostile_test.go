package xenstore

import (
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// Bounds the hostile-client suite holds the daemon to while an attack
// runs: a normal client's READ is answered within replyBound, and the
// Go heap grows by at most heapBound (the attacks below hold at most a
// few hundred connections, each bounded by its quotas).
const (
	replyBound = 2 * time.Second
	heapBound  = 64 << 20
)

// attacker is one hostile connection's raw wire access.
type attacker struct {
	t  *testing.T
	nc net.Conn
}

// attackers are the hostile connections of one attack.
var attackers struct {
	sync.Mutex
	conns []net.Conn
}

func attack(t *testing.T, sock string) *attacker {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("attacker dial: %v", err)
	}
	attackers.Lock()
	attackers.conns = append(attackers.conns, nc)
	attackers.Unlock()
	return &attacker{t, nc}
}

// endAttack closes every attacker connection.
func endAttack() {
	attackers.Lock()
	defer attackers.Unlock()
	for _, nc := range attackers.conns {
		nc.Close()
	}
	attackers.conns = nil
}

// send writes raw bytes, giving up after a while if the daemon does not
// read them (which is allowed).
func (a *attacker) send(b []byte) error {
	a.nc.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	_, err := a.nc.Write(b)
	return err
}

// recv reads one message within replyBound.
func (a *attacker) recv() (Msg, error) {
	a.nc.SetReadDeadline(time.Now().Add(replyBound))
	return ReadMsg(a.nc)
}

// expect sends a request and checks its error reply.
func (a *attacker) expect(m Msg, want Error) {
	a.t.Helper()
	if err := a.send(m.Marshal()); err != nil {
		a.t.Fatalf("send %s: %v", TypeName(m.Type), err)
	}
	for {
		r, err := a.recv()
		if err != nil {
			a.t.Fatalf("%s %q: no reply: %v", TypeName(m.Type), m.Payload, err)
		}
		if r.Type == XSWatchEvent {
			continue
		}
		if got := Error(strings.TrimSuffix(string(r.Payload), "\x00")); r.Type != XSError || got != want {
			a.t.Fatalf("%s %q: %s %q, want %v", TypeName(m.Type), m.Payload, TypeName(r.Type), r.Payload, want)
		}
		return
	}
}

func heap() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestHostileClients runs attacks over raw wire messages on the Unix
// socket. During each, a normal client must get each READ answered
// within replyBound and the heap must grow by less than heapBound; the
// daemon keeps serving after it.
func TestHostileClients(t *testing.T) {
	attacks := []struct {
		name string
		// setup mounts the attack; work, if set, keeps it going
		// until stop closes.
		setup func(t *testing.T, s *Store, sock string)
		work  func(t *testing.T, s *Store, sock string, stop <-chan struct{})
		check func(t *testing.T, s *Store)
	}{
		{name: "oversize lengths", setup: func(t *testing.T, s *Store, sock string) {
			for _, n := range []uint32{PayloadMax + 1, 1 << 20, 0xffffffff} {
				for i := 0; i < 20; i++ {
					a := attack(t, sock)
					hdr := Msg{Type: XSWrite}.Marshal()
					binary.LittleEndian.PutUint32(hdr[12:], n)
					a.send(hdr)
					// The daemon closes such a connection, as Xen does.
					if _, err := a.recv(); !errors.Is(err, io.EOF) {
						t.Fatalf("length %d: %v, want the connection closed", n, err)
					}
				}
			}
		}},
		{name: "unknown types", work: func(t *testing.T, s *Store, sock string, stop <-chan struct{}) {
			a := attack(t, sock)
			types := []uint32{XSWatchEvent, XSError, 20, 23, 26, 27, 99, 0xffff, 0xffffffff}
			for i := 0; i < 3000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				a.expect(Msg{Type: types[i%len(types)], ReqID: uint32(i), Payload: []byte("x\x00")}, ENOSYS)
			}
		}},
		{name: "missing NULs", work: func(t *testing.T, s *Store, sock string, stop <-chan struct{}) {
			a := attack(t, sock)
			for i := 0; i < 1000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				for _, typ := range []uint32{XSRead, XSMkdir, XSRm, XSDirectory, XSGetPerms, XSWrite, XSWatch, XSSetPerms} {
					a.expect(Msg{Type: typ, Payload: []byte("/local/domain/nonul")}, EINVAL)
				}
			}
		}},
		{name: "watch flood", setup: func(t *testing.T, s *Store, sock string) {
			// Watchers that never read their events.
			for c := 0; c < 4; c++ {
				a := attack(t, sock)
				for i := 0; ; i++ {
					m := Msg{Type: XSWatch, ReqID: uint32(i), Payload: []byte("/flood\x00tok" + itoa(i) + strings.Repeat("t", 200) + "\x00")}
					if err := a.send(m.Marshal()); err != nil {
						t.Fatal(err)
					}
					r, err := a.recv()
					for err == nil && r.Type == XSWatchEvent {
						r, err = a.recv()
					}
					if err != nil {
						t.Fatal(err)
					}
					if r.Type == XSError {
						if string(r.Payload) != "E2BIG\x00" || i != s.Limits().Privileged.Watches {
							t.Fatalf("watch %d: %q", i, r.Payload)
						}
						break
					}
				}
			}
		}, work: func(t *testing.T, s *Store, sock string, stop <-chan struct{}) {
			// Every write fires 2,000 events; all 100 are written,
			// stop or not.
			a := attack(t, sock)
			for i := 0; i < 100; i++ {
				a.send(Msg{Type: XSWrite, Payload: []byte("/flood/n" + itoa(i) + "\x00v")}.Marshal())
				if _, err := a.recv(); err != nil {
					t.Error(err)
					return
				}
			}
		}, check: func(t *testing.T, s *Store) {
			st := s.Stats()
			if st.EventsDropped == 0 {
				t.Error("no events dropped: the flood did not reach the quota")
			}
			for _, c := range st.Conns {
				if c.QueuedEvents > s.Limits().Privileged.Events || c.QueuedBytes > s.Limits().Privileged.OutputBytes {
					t.Errorf("queue past its bound: %+v", c)
				}
			}
		}},
		{name: "transaction flood", setup: func(t *testing.T, s *Store, sock string) {
			for c := 0; c < 50; c++ {
				a := attack(t, sock)
				for i := 0; ; i++ {
					a.send(Msg{Type: XSTransactionStart, ReqID: uint32(i), Payload: []byte{0}}.Marshal())
					r, err := a.recv()
					if err != nil {
						t.Fatal(err)
					}
					if r.Type == XSError {
						if string(r.Payload) != "ENOSPC\x00" || i != 10 {
							t.Fatalf("transaction %d: %q", i, r.Payload)
						}
						break
					}
					// Each touches a node and writes one.
					tx := uint32(atoiOr(strings.TrimSuffix(string(r.Payload), "\x00")))
					a.send(Msg{Type: XSRead, TxID: tx, Payload: []byte("/local\x00")}.Marshal())
					a.recv()
					a.send(Msg{Type: XSWrite, TxID: tx, Payload: []byte("/local/t" + itoa(c) + "\x00" + strings.Repeat("v", 1000))}.Marshal())
					a.recv()
				}
			}
			if st := s.Stats(); st.Transactions != 500 {
				t.Fatalf("%d open transactions", st.Transactions)
			}
		}},
		{name: "half-written messages", setup: func(t *testing.T, s *Store, sock string) {
			m := Msg{Type: XSWrite, Payload: []byte("/local/x\x00" + strings.Repeat("v", 4000))}.Marshal()
			for i := 0; i < 100; i++ {
				a := attack(t, sock)
				a.send(m[:i%(len(m)-1)+1]) // some of the header, or of the payload
			}
		}},
		{name: "never reading replies", setup: func(t *testing.T, s *Store, sock string) {
			s.Write("/big", strings.Repeat("b", 4000))
			req := Msg{Type: XSRead, Payload: []byte("/big\x00")}.Marshal()
			var wg sync.WaitGroup
			for c := 0; c < 8; c++ {
				a := attack(t, sock)
				wg.Add(1)
				go func() {
					defer wg.Done()
					a.send(Msg{Type: XSWatch, Payload: []byte("/big\x00t\x00")}.Marshal())
					for i := 0; i < 20000; i++ {
						if a.send(req) != nil {
							break // the daemon stopped reading us: fine
						}
					}
				}()
			}
			wg.Wait()
		}},
		{name: "connection flood", setup: func(t *testing.T, s *Store, sock string) {
			l := s.Limits()
			for i := 0; i < l.MaxClientConnections+50; i++ {
				attack(t, sock)
			}
			waitFor(t, "the refusals", func() bool { return s.Stats().QuotaHits[QuotaClientConnections] >= 49 })
		}},
	}
	for _, at := range attacks {
		t.Run(at.name, func(t *testing.T) {
			defer endAttack()
			s := New(slog.New(slog.DiscardHandler))
			l := s.Limits()
			l.Privileged.Watches = 500
			l.MaxClientConnections = 200 // the normal client shares this process's pid
			s.SetLimits(l)
			sock, _ := serve(t, s)
			normal := dial(t, sock)
			if err := roundTrip(normal, replyBound); err != nil {
				t.Fatal(err)
			}
			h0 := heap()
			if at.setup != nil {
				at.setup(t, s, sock)
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			if at.work != nil {
				wg.Add(1)
				go func() {
					defer wg.Done()
					at.work(t, s, sock, stop)
				}()
			}
			for i := 0; i < 20; i++ {
				t0 := time.Now()
				if err := roundTrip(normal, replyBound); err != nil {
					t.Fatalf("normal client during the attack: %v after %v", err, time.Since(t0))
				}
			}
			if grew := int64(heap()) - int64(h0); grew > heapBound {
				t.Errorf("heap grew %d MiB during the attack, bound %d MiB", grew>>20, heapBound>>20)
			} else {
				t.Logf("heap grew %d KiB", grew>>10)
			}
			close(stop)
			wg.Wait()
			if at.check != nil {
				at.check(t, s)
			}
			endAttack()
			waitFor(t, "the attackers' connections to close", func() bool { return s.Stats().Connections == 1 })
			if err := roundTrip(dial(t, sock), replyBound); err != nil {
				t.Fatalf("a new client after the attack: %v", err)
			}
			if grew := int64(heap()) - int64(h0); grew > 4<<20 {
				t.Errorf("heap still %d KiB above its start after the attack", grew>>10)
			}
		})
	}
}

func atoiOr(s string) int {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int(c-'0')
	}
	return n
}
