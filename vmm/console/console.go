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

	mu  sync.Mutex
	err error
	buf [outSize]byte
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
