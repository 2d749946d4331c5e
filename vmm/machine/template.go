package machine

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// A Template is read-only content that many guests start from, built once
// per process and mapped copy-on-write into each guest memory region that
// starts with it (Machine.MapTemplate): a guest's first read of a template
// page maps the one shared copy, with no zeroing and no copy, and only a
// page someone writes (the guest or the VMM) becomes the guest's own. The
// content lives in a memfd (anonymous shared memory, released with the
// last mapping). The ring-3 PV model's M2P is one: entry k of every
// domain's M2P starts as k.
//
// A template grows: Grow extends it to a size, writing only the new
// bytes, so content must be a function of the offset alone. It is safe
// for concurrent use.
type Template struct {
	name string
	fill func(b []byte, off uint64) // writes the content of [off, off+len(b))

	mu   sync.Mutex
	fd   int
	size uint64
}

// NewTemplate returns an empty template whose content fill writes: fill(b,
// off) sets b to the bytes at offsets [off, off+len(b)). Nothing is
// allocated until Grow.
func NewTemplate(name string, fill func(b []byte, off uint64)) *Template {
	return &Template{name: name, fill: fill, fd: -1}
}

// Grow makes the template at least size bytes (a multiple of PageSize),
// writing the new part; it returns the memfd holding the content (valid
// for as long as the template) and the template's size.
func (t *Template) Grow(size uint64) (int, uint64, error) {
	if size%PageSize != 0 {
		return -1, 0, fmt.Errorf("template %s: size %#x is not a multiple of 4 KiB", t.name, size)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fd < 0 {
		fd, err := unix.MemfdCreate("xenresume-"+t.name, unix.MFD_CLOEXEC)
		if err != nil {
			return -1, 0, fmt.Errorf("template %s: memfd_create: %w", t.name, err)
		}
		t.fd = fd
	}
	if size <= t.size {
		return t.fd, t.size, nil
	}
	if err := unix.Ftruncate(t.fd, int64(size)); err != nil {
		return -1, 0, fmt.Errorf("template %s: ftruncate to %#x: %w", t.name, size, err)
	}
	// The new part, written through a shared mapping of it alone (the
	// bytes already there are never rewritten: guests map them).
	b, err := unix.Mmap(t.fd, int64(t.size), int(size-t.size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		_ = unix.Ftruncate(t.fd, int64(t.size))
		return -1, 0, fmt.Errorf("template %s: mmap: %w", t.name, err)
	}
	t.fill(b, t.size)
	if err := unix.Munmap(b); err != nil {
		return -1, 0, fmt.Errorf("template %s: munmap: %w", t.name, err)
	}
	t.size = size
	return t.fd, t.size, nil
}

// MapTemplate makes size bytes of region name's memory, from offset off,
// a copy-on-write mapping of template t's content from its start: the
// region reads as the template there, and writes (the guest's or the
// VMM's) go to private copies of the pages written, which neither the
// template nor any other machine sees. The region's previous content
// there is discarded. Like AddRegion, it is done before Start.
func (m *Machine) MapTemplate(name string, off, size uint64, t *Template) error {
	m.mu.Lock()
	started := m.started || m.closed
	m.mu.Unlock()
	if started {
		return fmt.Errorf("template %s over %s: the machine has started", t.name, name)
	}
	if size == 0 || size%PageSize != 0 || off%PageSize != 0 {
		return fmt.Errorf("template %s over %s at %#x size %#x is not page-aligned", t.name, name, off, size)
	}
	var r *Region
	for i := range m.mem.regions {
		if m.mem.regions[i].Name == name && !m.mem.regions[i].Alias {
			r = &m.mem.regions[i]
		}
	}
	if r == nil {
		return fmt.Errorf("template %s: no region %s", t.name, name)
	}
	if off > uint64(len(r.Mem)) || size > uint64(len(r.Mem))-off {
		return fmt.Errorf("template %s: %#x+%#x runs past the end of %s", t.name, off, size, name)
	}
	fd, _, err := t.Grow(size)
	if err != nil {
		return err
	}
	// MAP_FIXED over the region's own anonymous mapping, which the
	// memory slot keeps pointing at (KVM follows the host mapping
	// through its MMU notifier); Close unmaps the region as a whole.
	addr := sliceAddr(r.Mem) + uintptr(off)
	got, _, errno := unix.Syscall6(unix.SYS_MMAP, addr, uintptr(size), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_FIXED, uintptr(fd), 0)
	if errno != 0 {
		return fmt.Errorf("template %s over %s: mmap: %w", t.name, name, errno)
	}
	if got != addr {
		return fmt.Errorf("template %s over %s: mapped at %#x, not %#x", t.name, name, got, addr)
	}
	return nil
}
