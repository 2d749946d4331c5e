package xenstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// Ring serves one domain's xenstore ring page (struct
// xenstore_domain_interface): requests from the guest on req[], replies and
// watch events to it on rsp[], an event channel each way. The page is guest
// memory, so every index is checked: a guest that writes bogus indices or a
// malformed message loses its connection (with the reason in the page's
// error field) and nothing else is hurt.
type Ring struct {
	s      *Store
	conn   *Conn
	iface  *xenabi.XenstoreDomainInterface // the shared page (io/xs_wire.h)
	notify func()

	mu      sync.Mutex
	cond    *sync.Cond
	in      []byte // a partial request
	out     []byte // reply and event bytes not yet in the ring
	dead    bool
	stopped bool
	err     error
	done    chan struct{}

	// Replies not yet wholly in the ring, Xen's outstanding requests:
	// the end of each in the output stream (bytes ever queued), and
	// the bytes ever written to the ring. At the Outstanding quota
	// the ring's requests wait.
	replyEnds []uint64
	queuedPos uint64
	flushPos  uint64
	stalled   bool
}

// maxOut bounds the reply bytes waiting for room in the ring.
const maxOut = 2 * (HeaderSize + PayloadMax)

// ServeRing connects domain domid's ring page (which must be the whole
// 4 KiB page) to the store. notify signals the guest's event channel; call
// Kick whenever the guest signals the store's.
func (s *Store) ServeRing(domid uint32, page []byte, notify func()) (*Ring, error) {
	iface := xenabi.View[xenabi.XenstoreDomainInterface](page)
	if iface == nil {
		return nil, fmt.Errorf("xenstore ring page of %d bytes", len(page))
	}
	r := &Ring{s: s, conn: s.NewConn(domid, fmt.Sprintf("ring-%d", domid)), iface: iface, notify: notify, done: make(chan struct{})}
	r.cond = sync.NewCond(&r.mu)
	// Features first, before the queues are touched; then connected.
	atomic.StoreUint32(&r.iface.Server_features, FeatureReconnection|FeatureError)
	atomic.StoreUint32(&r.iface.Error, ErrorNone)
	atomic.StoreUint32(&r.iface.Connection, Connected)
	go r.pump()
	return r, nil
}

// Err returns why the ring was closed, or nil.
func (r *Ring) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Close disconnects the ring (the domain is going away).
func (r *Ring) Close() {
	r.mu.Lock()
	r.stopped = true
	r.cond.Broadcast()
	r.mu.Unlock()
	r.conn.Close()
	<-r.done
}

// fail closes the connection for a guest's protocol error. r.mu held.
func (r *Ring) fail(code uint32, format string, args ...any) {
	if r.dead {
		return
	}
	r.dead = true
	r.err = fmt.Errorf("domain %d: "+format, append([]any{r.conn.Domid}, args...)...)
	atomic.StoreUint32(&r.iface.Error, code)
	r.s.log.Warn("xenstore: closing ring connection", "err", r.err)
	r.cond.Broadcast()
}

// pump moves watch events from the connection into the ring.
func (r *Ring) pump() {
	defer close(r.done)
	for {
		m, err := r.conn.NextEvent(context.Background())
		if err != nil {
			return
		}
		b := m.Marshal()
		r.mu.Lock()
		for len(r.out)+len(b) > maxOut && !r.dead && !r.stopped {
			r.cond.Wait() // the guest is not reading: stop taking more
		}
		if !r.dead && !r.stopped {
			r.queue(b, false)
			r.flush()
		}
		r.mu.Unlock()
	}
}

// queue appends a message to the output; a reply is outstanding until it
// is wholly in the ring. r.mu held.
func (r *Ring) queue(b []byte, isReply bool) {
	r.out = append(r.out, b...)
	r.queuedPos += uint64(len(b))
	if isReply {
		r.replyEnds = append(r.replyEnds, r.queuedPos)
	}
}

// outstanding counts the replies not yet wholly in the ring. r.mu held.
func (r *Ring) outstanding() int {
	for len(r.replyEnds) > 0 && r.replyEnds[0] <= r.flushPos {
		r.replyEnds = r.replyEnds[1:]
	}
	r.conn.outstanding.Store(int32(len(r.replyEnds)))
	return len(r.replyEnds)
}

// flush writes waiting bytes into rsp[] and signals. r.mu held.
func (r *Ring) flush() {
	if len(r.out) == 0 || r.dead {
		return
	}
	cons := atomic.LoadUint32(&r.iface.Rsp_cons)
	prod := atomic.LoadUint32(&r.iface.Rsp_prod)
	if prod-cons > RingSize {
		r.fail(ErrorRingIdx, "rsp indices prod %d cons %d are more than a ring apart", prod, cons)
		return
	}
	n := 0
	for n < len(r.out) && prod-cons < RingSize {
		r.iface.Rsp[prod%RingSize] = int8(r.out[n])
		prod++
		n++
	}
	if n == 0 {
		return
	}
	r.out = r.out[n:]
	r.flushPos += uint64(n)
	atomic.StoreUint32(&r.iface.Rsp_prod, prod)
	r.cond.Broadcast()
	r.notify()
}

// atOutstanding reports whether the guest has as many replies waiting for
// room as its Outstanding quota allows; the first time in a row it does
// counts (and logs) a quota hit. r.mu held.
func (r *Ring) atOutstanding() bool {
	n := r.outstanding()
	hard, _ := r.conn.limit(QuotaOutstanding)
	if hard == 0 || n < hard {
		r.stalled = false
		return false
	}
	if !r.stalled {
		r.stalled = true
		r.s.mu.Lock()
		r.conn.hit(QuotaOutstanding, n+1, hard)
		r.s.mu.Unlock()
	}
	return true
}

// Kick processes what the guest put in the ring: a reconnection request,
// complete requests (as long as their replies have room), and the room it
// made by consuming replies. It is called on every event from the guest.
func (r *Ring) Kick() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dead || r.stopped {
		return
	}
	if atomic.LoadUint32(&r.iface.Connection) == Reconnect {
		r.conn.Reset()
		r.in, r.out = nil, nil
		r.replyEnds, r.flushPos = nil, r.queuedPos
		atomic.StoreUint32(&r.iface.Req_cons, atomic.LoadUint32(&r.iface.Req_prod))
		atomic.StoreUint32(&r.iface.Rsp_prod, atomic.LoadUint32(&r.iface.Rsp_cons))
		atomic.StoreUint32(&r.iface.Connection, Connected)
		r.notify()
		return
	}
	r.flush()
	consumed := false
	for !r.dead {
		cons := atomic.LoadUint32(&r.iface.Req_cons)
		prod := atomic.LoadUint32(&r.iface.Req_prod)
		if prod-cons > RingSize {
			r.fail(ErrorRingIdx, "req indices prod %d cons %d are more than a ring apart", prod, cons)
			return
		}
		// Take bytes up to one whole message: the header, then as much
		// payload as it announces.
		for len(r.in) < HeaderSize && cons != prod {
			r.in = append(r.in, byte(r.iface.Req[cons%RingSize]))
			cons++
		}
		total := HeaderSize
		if len(r.in) >= HeaderSize {
			n := binary.LittleEndian.Uint32(r.in[12:])
			if n > PayloadMax {
				r.fail(ErrorProto, "request payload of %d bytes exceeds %d", n, PayloadMax)
				return
			}
			total += int(n)
			for len(r.in) < total && cons != prod {
				r.in = append(r.in, byte(r.iface.Req[cons%RingSize]))
				cons++
			}
		}
		if cons != atomic.LoadUint32(&r.iface.Req_cons) {
			atomic.StoreUint32(&r.iface.Req_cons, cons)
			consumed = true
		}
		if len(r.in) < total || len(r.in) < HeaderSize {
			break // the rest is not written yet
		}
		// The reply must fit the backlog, and the guest may have only
		// so many replies waiting for room (Xen's outstanding quota);
		// if it is not reading replies, the request waits for the
		// next kick.
		if len(r.out) > maxOut-(HeaderSize+PayloadMax) {
			break
		}
		if r.atOutstanding() {
			break
		}
		m, _, err := Decode(r.in)
		r.in = r.in[:0]
		if err != nil {
			r.fail(ErrorProto, "%v", err)
			return
		}
		r.mu.Unlock()
		// The reply goes into the ring now, on this thread: the guest
		// finds it as soon as its signal returns.
		r.conn.Handle(m, func(rep Msg) {
			r.mu.Lock()
			r.queue(rep.Marshal(), true)
			r.flush()
			r.mu.Unlock()
		})
		r.mu.Lock()
	}
	if consumed {
		r.notify() // the guest may wait for room in req[]
	}
}
