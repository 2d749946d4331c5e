// Package console is the PV console backend (xenconsoled's role): it drains
// a guest's console ring (struct xencons_interface, io/console.h) to a
// writer and feeds it input, signalling over the console event channel.
// The page is guest memory: indices are checked, and a guest that corrupts
// them loses its console, nothing else.
package console

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"unsafe"
)

// xencons_interface layout.
const (
	inOff     = 0
	inSize    = 1024
	outOff    = 1024
	outSize   = 2048
	inCons    = 3072
	inProd    = 3076
	outCons   = 3080
	outProd   = 3084
	pageBytes = 3092
)

// Backend serves one console ring.
type Backend struct {
	page   []byte
	out    io.Writer
	notify func()

	mu  sync.Mutex
	err error
	buf [outSize]byte
}

// New serves page (the guest's console ring page), writing output to out.
// notify signals the guest's console event channel.
func New(page []byte, out io.Writer, notify func()) (*Backend, error) {
	if len(page) < pageBytes {
		return nil, fmt.Errorf("console page of %d bytes", len(page))
	}
	return &Backend{page: page, out: out, notify: notify}, nil
}

func (b *Backend) idx(off int) *uint32 { return (*uint32)(unsafe.Pointer(&b.page[off])) }

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
	cons := atomic.LoadUint32(b.idx(outCons))
	prod := atomic.LoadUint32(b.idx(outProd))
	if prod-cons > outSize {
		b.err = fmt.Errorf("console out indices prod %d cons %d are more than a ring apart", prod, cons)
		return
	}
	n := 0
	for ; cons != prod; cons++ {
		b.buf[n] = b.page[outOff+int(cons%outSize)]
		n++
	}
	atomic.StoreUint32(b.idx(outCons), cons)
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
	cons := atomic.LoadUint32(b.idx(inCons))
	prod := atomic.LoadUint32(b.idx(inProd))
	if prod-cons > inSize {
		b.err = fmt.Errorf("console in indices prod %d cons %d are more than a ring apart", prod, cons)
		return 0
	}
	n := 0
	for n < len(p) && prod-cons < inSize {
		b.page[inOff+int(prod%inSize)] = p[n]
		prod++
		n++
	}
	atomic.StoreUint32(b.idx(inProd), prod)
	if n > 0 {
		b.notify()
	}
	return n
}
