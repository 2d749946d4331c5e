package blkback

import (
	"bytes"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// gateDisk counts writes per offset and can hold one write until the
// test lets it go.
type gateDisk struct {
	disk
	mu      sync.Mutex
	writes  map[int64]int
	n       int
	holdAt  int           // the write (1-based) to hold; 0 for none
	entered chan struct{} // closed when the held write starts
	release chan struct{} // closed by the test to let it go
}

func newGateDisk(d disk, holdAt int) *gateDisk {
	return &gateDisk{disk: d, writes: map[int64]int{}, holdAt: holdAt, entered: make(chan struct{}), release: make(chan struct{})}
}

func (g *gateDisk) WriteAt(p []byte, off int64) (int, error) {
	g.mu.Lock()
	g.n++
	n := g.n
	g.writes[off]++
	g.mu.Unlock()
	if n == g.holdAt {
		close(g.entered)
		<-g.release
	}
	return g.disk.WriteAt(p, off)
}

// TestReconnect models a resume in a new domain: with requests in
// flight, the frontend stops producing and goes back to Initialising; it
// takes the responses the backend left on the old ring, sets up a new
// ring and event channel, and resubmits what has no response. Every
// write is applied exactly once, and the image is what the frontend
// wrote. Writes to sectors apart are served one by one: the backend
// answers the 4 it took before the suspend (the third is held while the
// fourth, taken, flushes it). Writes to adjacent sectors
// are merged into one run, all of the batch: the backend finishes the
// run, so all of them are answered on the old ring and none is
// resubmitted.
func TestReconnect(t *testing.T) {
	for _, tr := range []struct {
		name     string
		o        ringOpts
		adjacent bool
	}{
		{"single-page", ringOpts{proto: ProtoX86_64, order: -1}, false},
		{"multi-page-persistent", ringOpts{proto: ProtoX86_64, order: 2, persistent: true}, false},
		{"single-page-merged", ringOpts{proto: ProtoX86_64, order: -1}, true},
		{"multi-page-persistent-merged", ringOpts{proto: ProtoX86_64, order: 2, persistent: true}, true},
	} {
		t.Run(tr.name, func(t *testing.T) {
			var g *gateDisk
			r := newRig(t, 1024, Config{}, true, func(d disk) disk { g = newGateDisk(d, 3); return g })
			r.connect(tr.o)
			f := r.fe
			rng := rand.New(rand.NewPCG(15, 16))
			const k = 20
			// A page's 8 sectors, then a gap: the held third write's
			// run is flushed when the fourth request, already taken,
			// does not continue it, so 4 are answered.
			step, answered := 16, 4
			if tr.adjacent {
				step, answered = 8, k
			}
			want := bytes.Clone(r.data)
			reqs := map[uint64][]byte{}
			for i := range k {
				segs, pages := f.grantData(1, rng, true)
				req := rwReq(ProtoX86_64, OpWrite, uint64(i), uint64(step*i), segs)
				reqs[uint64(i)] = req
				copy(want[step*i*SectorSize:], pages[0])
				f.queue(req)
			}
			f.push()
			<-g.entered // the third write is being applied
			// The suspend: the producer has stopped; the frontend drops
			// its ring.
			f.setState(StateInitialising)
			deadline := time.Now().Add(testTimeout)
			for r.b.yield.Load() == 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond) // the backend is on its way to disconnect
			}
			close(g.release)
			r.waitBackend(StateInitWait)
			// The backend is done with the old ring: its responses are
			// final, and its grants can be ended.
			old := f.poll()
			if len(old) != answered {
				t.Fatalf("%d responses on the old ring, want the %d taken before the suspend: %v", len(old), answered, old)
			}
			for _, rsp := range old {
				if rsp.status != RspOkay {
					t.Fatalf("old response %+v", rsp)
				}
				delete(reqs, rsp.id)
			}
			for _, ref := range f.ringRefs {
				if err := f.g.end(ref); err != nil {
					t.Fatalf("ending old ring grant %d: %v", ref, err)
				}
			}
			// The new ring, as blkif_recover: resubmit what has no
			// response.
			r.connect(tr.o)
			for i := range uint64(k) {
				if req, ok := reqs[i]; ok {
					f.queue(req)
				}
			}
			f.push()
			for _, rsp := range f.wait(len(reqs)) {
				if rsp.status != RspOkay {
					t.Fatalf("new response %+v", rsp)
				}
				delete(reqs, rsp.id)
			}
			if len(reqs) != 0 {
				t.Fatalf("requests never answered: %d", len(reqs))
			}
			g.mu.Lock()
			for off, n := range g.writes {
				if n != 1 {
					t.Errorf("offset %d written %d times", off, n)
				}
			}
			if len(g.writes) != k {
				t.Errorf("%d offsets written, want %d", len(g.writes), k)
			}
			g.mu.Unlock()
			if !bytes.Equal(r.fileBytes(), want) {
				t.Fatal("image differs")
			}
			if st := r.b.Stats(); st.Connects != 2 || st.Writes != k {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestCloseReopen is Linux's own reconnect path: Closing, Closed with the
// device online, then Initialising again.
func TestCloseReopen(t *testing.T) {
	r := newRig(t, 256, Config{}, true, nil)
	o := ringOpts{proto: ProtoX86_64, order: -1}
	r.connect(o)
	for range 2 {
		f := r.fe
		f.setState(StateClosing)
		r.waitBackend(StateClosing)
		f.setState(StateClosed)
		r.waitBackend(StateClosed)
		if n := r.g.mapped.Load(); n != 0 {
			t.Fatalf("%d mappings after Closed", n)
		}
		f.setState(StateInitialising)
		r.waitBackend(StateInitWait)
		r.connect(o)
		segs, _ := f.grantData(1, rand.New(rand.NewPCG(1, 1)), true)
		if rsp := f.do(rwReq(ProtoX86_64, OpWrite, 1, 0, segs)); rsp.status != RspOkay {
			t.Fatalf("after reopening: %+v", rsp)
		}
	}
}

// TestClosedOffline: Closed with online 0 removes the device: Run returns.
func TestClosedOffline(t *testing.T) {
	r := newRig(t, 64, Config{}, true, nil)
	r.connect(ringOpts{proto: ProtoX86_64, order: -1})
	r.st.Write(r.dev.BackendPath()+"/online", "0")
	r.fe.setState(StateClosed)
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		r.done <- nil
	case <-time.After(testTimeout):
		t.Fatal("Run did not return")
	}
}

// TestPause: a paused backend takes nothing off the ring; Unpause serves
// what was queued meanwhile.
func TestPause(t *testing.T) {
	r := newRig(t, 64, Config{}, true, nil)
	r.connect(ringOpts{proto: ProtoX86_64, order: -1})
	f := r.fe
	r.b.Pause()
	segs, _ := f.grantData(1, rand.New(rand.NewPCG(1, 1)), true)
	for i := range 4 {
		f.queue(rwReq(ProtoX86_64, OpWrite, uint64(i), uint64(8*i), segs))
	}
	f.push()
	time.Sleep(20 * time.Millisecond)
	if got := f.poll(); len(got) != 0 {
		t.Fatalf("paused backend answered %v", got)
	}
	r.b.Unpause()
	if got := f.wait(4); len(got) != 4 {
		t.Fatalf("%v", got)
	}
}
