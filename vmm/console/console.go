// Package console is the PV console backend (xenconsoled's role): it drains
// a guest's console ring (struct xencons_interface, io/console.h, as
// vmm/xenabi generates it) to a writer and feeds it input, signalling over
// the console event channel. The page is guest memory: indices are
// checked, and a guest that corrupts them loses its console, nothing else.
package console

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// ring is the shared page's layout.
type ring = xenabi.XenconsInterface

// The ring sizes, from the layout.
const (
	inSize  = uint32(len(ring{}.In))
	outSize = uint32(len(ring{}.Out))
)

// Backend serves one console ring.
type Backend struct {
	r      *ring // aliases guest memory
	out    io.Writer
	notify func()

	kicks atomic.Uint64 // events from the guest (Kick calls)

	mu  sync.Mutex
	err error
	buf [outSize]byte
}

// Status is a snapshot of the output ring's indices and of how many
// events the guest has sent on the console's event channel.
type Status struct {
	OutProd, OutCons uint32
	Kicks            uint64
}

// Pending returns how many bytes of output wait in the ring.
func (s Status) Pending() uint32 { return s.OutProd - s.OutCons }

// Status reads the ring's output indices (guest memory: the guest may be
// changing them) and the count of events received.
func (b *Backend) Status() Status {
	k := b.kicks.Load()
	return Status{OutProd: atomic.LoadUint32(&b.r.Out_prod), OutCons: atomic.LoadUint32(&b.r.Out_cons), Kicks: k}
}

// New serves page (the guest's console ring page), writing output to out.
// notify signals the guest's console event channel.
func New(page []byte, out io.Writer, notify func()) (*Backend, error) {
	r := xenabi.View[ring](page)
	if r == nil {
		return nil, fmt.Errorf("console page of %d bytes: want %d, 4-byte aligned", len(page), unsafe.Sizeof(ring{}))
	}
	return &Backend{r: r, out: out, notify: notify}, nil
}

// Err returns why the backend stopped, or nil.
func (b *Backend) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// Kick drains the guest's output; it is called on every event from the
// guest.
func (b *Backend) Kick() {
	b.kicks.Add(1)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return
	}
	cons := atomic.LoadUint32(&b.r.Out_cons)
	prod := atomic.LoadUint32(&b.r.Out_prod)
	if prod-cons > outSize {
		b.err = fmt.Errorf("console out indices prod %d cons %d are more than a ring apart", prod, cons)
		return
	}
	n := 0
	for ; cons != prod; cons++ {
		b.buf[n] = byte(b.r.Out[cons%outSize])
		n++
	}
	atomic.StoreUint32(&b.r.Out_cons, cons)
	if n > 0 {
		if _, err := b.out.Write(b.buf[:n]); err != nil {
			b.err = fmt.Errorf("console output: %w", err)
		}
		b.notify()
	}
}

// Input queues keyboard input for the guest; it returns how much fitted.
func (b *Backend) Input(p []byte) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0
	}
	cons := atomic.LoadUint32(&b.r.In_cons)
	prod := atomic.LoadUint32(&b.r.In_prod)
	if prod-cons > inSize {
		b.err = fmt.Errorf("console in indices prod %d cons %d are more than a ring apart", prod, cons)
		return 0
	}
	n := 0
	for n < len(p) && prod-cons < inSize {
		b.r.In[prod%inSize] = int8(p[n])
		prod++
		n++
	}
	atomic.StoreUint32(&b.r.In_prod, prod)
	if n > 0 {
		b.notify()
	}
	return n
}

// Stall tells a guest that writes console output without signalling the
// console's event channel (one still using a port of its old domain after
// a resume in a new one, say) from one that is merely busy. Feed it a
// Status at a fixed period while the guest runs; xenconsoled drains only
// on events, so such output would otherwise wait unseen for ever.
type Stall struct {
	prev  Status
	valid bool
}

// Check reports whether output waited in the ring at both this check and
// the previous one, with no event from the guest in between. A check
// while the guest could not run should be skipped with Reset.
func (s *Stall) Check(now Status) bool {
	stalled := s.valid && now.Kicks == s.prev.Kicks && now.Pending() != 0 && s.prev.Pending() != 0
	s.prev, s.valid = now, true
	return stalled
}

// Reset forgets the previous check (the guest was paused in between).
func (s *Stall) Reset() { s.valid = false }
