package blkback

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestBadTransport: a frontend whose transport nodes are wrong gets
// Linux's xenbus_dev_fatal: an error node and Closing, no mapping left.
func TestBadTransport(t *testing.T) {
	fe := "/local/domain/5/device/vbd/51712"
	for _, tc := range []struct {
		name  string
		o     ringOpts
		spoil func(r *rig)
		want  string // the error node's value, prefix
	}{
		{"garbage ring-ref", ringOpts{order: -1}, func(r *rig) { r.fe.write("ring-ref", "0x1g") }, "22 reading " + fe + "/ring-ref"},
		{"negative ring-ref", ringOpts{order: -1}, func(r *rig) { r.fe.write("ring-ref", "-1") }, "22 reading " + fe + "/ring-ref"},
		{"ring-ref not granted", ringOpts{order: -1}, func(r *rig) { r.fe.write("ring-ref", "4000000") }, "22 mapping ring-ref port"},
		{"ring-ref read-only", ringOpts{order: -1}, func(r *rig) {
			ref, _ := r.g.grant(true)
			r.fe.write("ring-ref", strconv.Itoa(int(ref)))
		}, "22 mapping ring-ref port"},
		{"missing ring-ref1", ringOpts{order: 1}, func(r *rig) { r.st.Rm(fe + "/ring-ref1") }, "22 reading " + fe + "/ring-ref1"},
		{"ring-ref instead of ring-ref0", ringOpts{order: 0}, func(r *rig) {
			r.st.Rm(fe + "/ring-ref0")
			r.fe.write("ring-ref", strconv.Itoa(int(r.fe.ringRefs[0])))
		}, "22 reading " + fe + "/ring-ref0"},
		{"ring-page-order too big", ringOpts{order: 0}, func(r *rig) { r.fe.write("ring-page-order", "5") }, "22 requested ring page order 5 exceed max:4"},
		{"bogus protocol", ringOpts{order: -1}, func(r *rig) { r.fe.write("protocol", "sparc64-abi") }, "-1 unknown fe protocol sparc64-abi"},
		{"no event-channel", ringOpts{order: -1}, func(r *rig) { r.st.Rm(fe + "/event-channel") }, "22 reading " + fe + "/event-channel"},
		{"event-channel not allocated", ringOpts{order: -1}, func(r *rig) { r.fe.write("event-channel", "999") }, "22 mapping ring-ref port 999"},
		{"two queues", ringOpts{order: -1}, func(r *rig) { r.fe.write("multi-queue-num-queues", "2") }, "-1 guest requested 2 queues"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, 64, Config{}, true, nil)
			r.fe.setupRing(tc.o)
			tc.spoil(r)
			r.fe.setState(StateInitialised)
			r.waitBackend(StateClosing)
			if got := r.errorNode(); !strings.HasPrefix(got, tc.want) {
				t.Errorf("error node %q, want %q...", got, tc.want)
			}
			if n := r.g.mapped.Load(); n != 0 {
				t.Errorf("%d mappings left", n)
			}
			// The frontend gives up; the backend follows to Closed.
			r.fe.setState(StateClosed)
			r.waitBackend(StateClosed)
		})
	}
}

// TestBadStates: states a frontend may not be in are fatal; an unknown
// or unreadable one removes the device; a frontend that goes straight to
// Connected is served.
func TestBadStates(t *testing.T) {
	for _, s := range []string{"7", "8", "9", "-3"} {
		t.Run("state "+s, func(t *testing.T) {
			r := newRig(t, 64, Config{}, true, nil)
			r.connect(ringOpts{order: -1})
			r.fe.write("state", s)
			r.waitBackend(StateClosing)
			if got, want := r.errorNode(), "22 saw state "+s+" at frontend"; got != want {
				t.Errorf("error node %q, want %q", got, want)
			}
		})
	}
	for _, s := range []string{"garbage", "0", ""} {
		t.Run("unknown "+strconv.Quote(s), func(t *testing.T) {
			r := newRig(t, 64, Config{}, true, nil)
			r.connect(ringOpts{order: -1})
			r.fe.write("state", s)
			select {
			case err := <-r.done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
				r.done <- nil
			case <-time.After(testTimeout):
				t.Fatal("Run did not return")
			}
		})
	}
	t.Run("straight to Connected", func(t *testing.T) {
		r := newRig(t, 64, Config{}, true, nil)
		r.fe.setupRing(ringOpts{order: -1})
		r.fe.setState(StateConnected)
		r.waitBackend(StateConnected)
	})
	t.Run("Initialised again while Connected", func(t *testing.T) {
		// Linux ignores it: the ring stays the first one.
		r := newRig(t, 64, Config{}, true, nil)
		r.connect(ringOpts{order: -1})
		r.fe.setState(StateInitialised)
		segs, _ := r.fe.grantData(1, rand.New(rand.NewPCG(1, 1)), true)
		if rsp := r.fe.do(rwReq(ProtoX86_64, OpRead, 1, 0, segs)); rsp.status != RspOkay {
			t.Fatalf("%+v", rsp)
		}
		if st := r.b.Stats(); st.Connects != 1 {
			t.Errorf("%d connects", st.Connects)
		}
	})
	t.Run("missing image", func(t *testing.T) {
		r := newRig(t, 64, Config{}, true, nil)
		r.stop()
		<-r.done
		r.st.Write(r.dev.BackendPath()+"/params", "/nonexistent/disk.img")
		r.st.Write(r.dev.BackendPath()+"/state", "1")
		b, _ := New(r.b.cfg)
		r.b = b
		if err := b.Run(t.Context()); err == nil {
			t.Fatal("Run with a missing image succeeded")
		}
		r.done <- nil
		if got := r.errorNode(); !strings.HasPrefix(got, "2 opening") {
			t.Errorf("error node %q", got)
		}
		if v, _ := r.st.Read(r.dev.BackendPath() + "/state"); v != "5" {
			t.Errorf("state %q", v)
		}
	})
}

// TestBadRequests: each bad request gets Linux's answer, and none of them
// touches the image or leaves a mapping.
func TestBadRequests(t *testing.T) {
	const sectors = 256
	p := ProtoX86_64
	r := newRig(t, sectors, Config{}, true, nil)
	r.connect(ringOpts{proto: p, order: -1})
	f := r.fe
	rng := rand.New(rand.NewPCG(17, 18))
	good, _ := f.grantData(MaxSegmentsPerRequest+1, rng, true)
	roRef, _ := f.g.grant(true)
	seg0 := good[0]
	withSeg := func(s seg) []seg { return []seg{s} }
	badLastInd := f.indirectPages([]seg{seg0, {seg0.ref, 0, 8}})
	badRefInd := f.indirectPages([]seg{seg0, {4000000, 0, 7}})
	fine := f.indirectPages(good[:2])
	for _, tc := range []struct {
		name   string
		req    []byte
		op     uint8
		status int16
	}{
		{"read past the end", rwReq(p, OpRead, 1, sectors-7, withSeg(seg0)), OpRead, RspError},
		{"write past the end", rwReq(p, OpWrite, 2, sectors-1, good[:2]), OpWrite, RspError},
		{"write far past the end", rwReq(p, OpWrite, 3, 1<<40, withSeg(seg0)), OpWrite, RspError},
		{"sector wraps", rwReq(p, OpWrite, 4, ^uint64(0)-3, withSeg(seg0)), OpWrite, RspError},
		{"first after last", rwReq(p, OpWrite, 5, 0, withSeg(seg{seg0.ref, 5, 4})), OpWrite, RspError},
		{"last past the page", rwReq(p, OpWrite, 6, 0, withSeg(seg{seg0.ref, 0, 8})), OpWrite, RspError},
		{"no segments", rwReq(p, OpRead, 7, 0, nil), OpRead, RspError},
		{"12 direct segments", rwReq(p, OpWrite, 8, 0, good[:12]), OpWrite, RspError},
		{"grant not granted", rwReq(p, OpWrite, 9, 0, withSeg(seg{4000000, 0, 7})), OpWrite, RspError},
		{"second grant not granted", rwReq(p, OpWrite, 10, 0, []seg{seg0, {4000001, 0, 7}}), OpWrite, RspError},
		{"read into a read-only grant", rwReq(p, OpRead, 11, 0, withSeg(seg{roRef, 0, 7})), OpRead, RspError},
		{"reserved op", rwReq(p, 4, 12, 0, withSeg(seg0)), 4, RspEOPNOTSUPP},
		{"unknown op", rwReq(p, 200, 13, 0, withSeg(seg0)), 200, RspEOPNOTSUPP},
		{"indirect flush", indirectReq(p, OpFlushDiskcache, 14, 0, 2, fine), OpFlushDiskcache, RspError},
		{"indirect indirect", indirectReq(p, OpIndirect, 15, 0, 2, fine), OpIndirect, RspError},
		{"indirect too many", indirectReq(p, OpWrite, 16, 0, 257, fine), OpWrite, RspError},
		{"indirect none", indirectReq(p, OpWrite, 17, 0, 0, fine), OpWrite, RspError},
		{"indirect page not granted", indirectReq(p, OpWrite, 18, 0, 2, []uint32{4000000}), OpWrite, RspError},
		{"indirect segment bad last", indirectReq(p, OpWrite, 19, 0, 2, badLastInd), OpWrite, RspError},
		{"indirect segment not granted", indirectReq(p, OpWrite, 20, 0, 2, badRefInd), OpWrite, RspError},
		{"indirect past the end", indirectReq(p, OpWrite, 21, sectors-8, 2, fine), OpWrite, RspError},
		{"discard past the end", discardReq(p, 22, sectors-1, 2), OpDiscard, RspError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rsp := f.do(tc.req)
			if want := (response{rsp.id, tc.op, tc.status}); rsp != want || rsp.id == 0 {
				t.Errorf("response %+v, want %+v", rsp, want)
			}
			if n := r.g.mapped.Load(); n != 1 {
				t.Errorf("%d mappings, want the ring's 1", n)
			}
		})
	}
	if !bytes.Equal(r.fileBytes(), r.data) {
		t.Fatal("bad requests changed the image")
	}
	// The ring still works.
	if rsp := f.do(rwReq(p, OpWrite, 99, 0, withSeg(seg0))); rsp.status != RspOkay {
		t.Fatalf("good request after bad ones: %+v", rsp)
	}
}

// TestBogusProducer: a req_prod more than a ring ahead halts the ring,
// writes the error node and goes to Closing; nothing more is served.
func TestBogusProducer(t *testing.T) {
	r := newRig(t, 64, Config{}, true, nil)
	r.connect(ringOpts{proto: ProtoX86_64, order: -1})
	// The watch's events for the connection are done with (its first
	// event, and one per state write after it: 2 or 3), so that none
	// comes late to reconnect after the halt: at least 2, then quiet.
	deadline := time.Now().Add(testTimeout)
	for n := uint64(0); time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		m := r.b.feEvents.Load()
		if m >= 2 && m == n {
			break
		}
		n = m
	}
	f := r.fe
	segs, _ := f.grantData(1, rand.New(rand.NewPCG(1, 1)), true)
	for i := range 2 {
		f.queue(rwReq(ProtoX86_64, OpWrite, uint64(i), 0, segs))
	}
	atomic.StoreUint32(f.idx(0), f.size+5)
	f.ev.send()
	r.waitBackend(StateClosing)
	if got := r.errorNode(); !strings.HasPrefix(got, "13 frontend provided bogus ring requests (37 - 0 = 37)") {
		t.Errorf("error node %q", got)
	}
	// Even with sane indices again, the halted ring serves nothing.
	binary.LittleEndian.PutUint32(f.pages[0], 2)
	f.ev.send()
	time.Sleep(20 * time.Millisecond)
	if got := f.poll(); len(got) != 0 {
		t.Fatalf("halted ring answered %v", got)
	}
	if !bytes.Equal(r.fileBytes(), r.data) {
		t.Fatal("image changed")
	}
	f.setState(StateClosed)
	r.waitBackend(StateClosed)
}
