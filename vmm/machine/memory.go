package machine

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// PageSize is the x86 base page size.
const PageSize = 4096

// ErrFault is wrapped by every failed guest-memory access: an address that is
// not backed, not mapped, not canonical, or a range that runs off the end of
// what is backed. Hypercall handlers turn it into -EFAULT.
var ErrFault = errors.New("bad guest address")

// Region is one range of guest-physical memory backed by host memory.
type Region struct {
	Name string
	GPA  uint64
	Mem  []byte
	Slot uint32
	// Alias: Mem belongs to another region (Machine.AddAlias).
	Alias bool

	trk    *vmmTrack // the VMM's dirty set of the memory behind Mem (vmmdirty.go)
	trkOff uint64    // Mem's first page in it
}

// Memory is a guest's physical address space: a few regions, every access
// bounds-checked. It never panics on guest-supplied addresses.
type Memory struct {
	regions []Region
}

func (m *Memory) find(gpa uint64) *Region {
	for i := range m.regions {
		r := &m.regions[i]
		if gpa >= r.GPA && gpa-r.GPA < uint64(len(r.Mem)) {
			return r
		}
	}
	return nil
}

// slice returns the n bytes of guest-physical memory at gpa and the region
// they are in, marking nothing.
func (m *Memory) slice(gpa, n uint64) (*Region, []byte, error) {
	r := m.find(gpa)
	if r == nil {
		return nil, nil, fmt.Errorf("%w: guest-physical %#x is not backed", ErrFault, gpa)
	}
	off := gpa - r.GPA
	if n > uint64(len(r.Mem))-off {
		return nil, nil, fmt.Errorf("%w: guest-physical %#x+%#x runs past the end of %s", ErrFault, gpa, n, r.Name)
	}
	return r, r.Mem[off : off+n : off+n], nil
}

// view is slice for a read: the bytes only.
func (m *Memory) view(gpa, n uint64) ([]byte, error) {
	_, s, err := m.slice(gpa, n)
	return s, err
}

// Slice returns the n bytes of guest-physical memory at gpa, aliasing guest
// memory, for the VMM to write now: it marks their pages as the VMM's
// dirty pages (vmmdirty.go). A slice kept past the call comes from Keep.
// The range must lie within one region.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	r, s, err := m.slice(gpa, n)
	if err != nil {
		return nil, err
	}
	r.markRange(gpa, n)
	return s, nil
}

// Page returns the 4 KiB page holding gpa, as Slice.
func (m *Memory) Page(gpa uint64) ([]byte, error) {
	return m.Slice(gpa&^(PageSize-1), PageSize)
}

// Regions lists the backed regions. Their Mem is for reading: a write
// through it is not in the VMM's dirty set (vmmdirty.go).
func (m *Memory) Regions() []Region { return m.regions }

// Read copies guest-physical memory at gpa into buf.
func (m *Memory) Read(gpa uint64, buf []byte) error {
	s, err := m.view(gpa, uint64(len(buf)))
	if err != nil {
		return err
	}
	copy(buf, s)
	return nil
}

// Write copies buf into guest-physical memory at gpa.
func (m *Memory) Write(gpa uint64, buf []byte) error {
	s, err := m.Slice(gpa, uint64(len(buf)))
	if err != nil {
		return err
	}
	copy(s, buf)
	return nil
}

// Paging state the walker needs, from the vCPU's control registers.
type Paging struct {
	CR0, CR3, CR4, EFER uint64
}

const (
	cr0PG      = 1 << 31
	cr4PAE     = 1 << 5
	eferLMA    = 1 << 10
	ptePresent = 1 << 0
	pteWrite   = 1 << 1
	ptePS      = 1 << 7
	pteAddr    = 0x000f_ffff_ffff_f000
)

// Translate walks the guest's 4-level page tables from p.CR3 and returns the
// guest-physical address of the virtual address va. With paging off it
// returns va. Only long-mode paging is supported; anything else, a
// non-canonical address, a table outside guest memory or a non-present entry
// is an ErrFault.
func (m *Memory) Translate(p Paging, va uint64) (uint64, error) {
	if p.CR0&cr0PG == 0 {
		return va, nil
	}
	if p.CR4&cr4PAE == 0 || p.EFER&eferLMA == 0 {
		return 0, fmt.Errorf("%w: only long-mode paging is supported", ErrFault)
	}
	if top := int64(va) >> 47; top != 0 && top != -1 {
		return 0, fmt.Errorf("%w: %#x is not canonical", ErrFault, va)
	}
	table := p.CR3 & pteAddr
	for level := 4; level >= 1; level-- {
		shift := 12 + 9*uint(level-1)
		idx := (va >> shift) & 511
		s, err := m.view(table+idx*8, 8)
		if err != nil {
			return 0, fmt.Errorf("%w: level-%d page table at %#x for %#x is not in guest memory", ErrFault, level, table, va)
		}
		pte := binary.LittleEndian.Uint64(s)
		if pte&ptePresent == 0 {
			return 0, fmt.Errorf("%w: %#x is not mapped (level %d)", ErrFault, va, level)
		}
		if level > 1 && level < 4 && pte&ptePS != 0 {
			mask := uint64(1)<<shift - 1
			return (pte & pteAddr &^ mask) | (va & mask), nil
		}
		table = pte & pteAddr
	}
	return table | (va & (PageSize - 1)), nil
}

// TranslateWrite is Translate for a write: every level must also allow
// writes (RW set), as for a write the hypervisor makes on a guest's behalf
// with CR0.WP set. Large pages are followed as Translate does.
func (m *Memory) TranslateWrite(p Paging, va uint64) (uint64, error) {
	if p.CR0&cr0PG == 0 {
		return va, nil
	}
	if top := int64(va) >> 47; top != 0 && top != -1 {
		return 0, fmt.Errorf("%w: %#x is not canonical", ErrFault, va)
	}
	table := p.CR3 & pteAddr
	for level := 4; level >= 1; level-- {
		shift := 12 + 9*uint(level-1)
		s, err := m.view(table+((va>>shift)&511)*8, 8)
		if err != nil {
			return 0, fmt.Errorf("%w: level-%d page table at %#x for %#x is not in guest memory", ErrFault, level, table, va)
		}
		pte := binary.LittleEndian.Uint64(s)
		if pte&ptePresent == 0 {
			return 0, fmt.Errorf("%w: %#x is not mapped (level %d)", ErrFault, va, level)
		}
		if pte&pteWrite == 0 {
			return 0, fmt.Errorf("%w: %#x is mapped read-only (level %d)", ErrFault, va, level)
		}
		if level > 1 && level < 4 && pte&ptePS != 0 {
			mask := uint64(1)<<shift - 1
			return (pte & pteAddr &^ mask) | (va & mask), nil
		}
		table = pte & pteAddr
	}
	return table | (va & (PageSize - 1)), nil
}

// WriteVirtChecked copies buf to guest virtual address va, as WriteVirt,
// but only where every byte is mapped writable (TranslateWrite); nothing
// is written otherwise.
func (m *Memory) WriteVirtChecked(p Paging, va uint64, buf []byte) error {
	n := uint64(len(buf))
	if n == 0 {
		return nil
	}
	if va+n < va {
		return fmt.Errorf("%w: %#x+%#x wraps", ErrFault, va, n)
	}
	var dst [][]byte
	for done := uint64(0); done < n; {
		cur := va + done
		chunk := min(PageSize-cur%PageSize, n-done)
		gpa, err := m.TranslateWrite(p, cur)
		if err != nil {
			return err
		}
		s, err := m.Slice(gpa, chunk)
		if err != nil {
			return err
		}
		dst = append(dst, s)
		done += chunk
	}
	off := 0
	for _, s := range dst {
		off += copy(s, buf[off:])
	}
	return nil
}

// L1Entry returns the guest-physical address of the level-1 (4 KiB) page
// table entry that maps va, for a hypervisor that updates it on the guest's
// behalf. Every upper level must be present and not a large page.
func (m *Memory) L1Entry(p Paging, va uint64) (uint64, error) {
	if top := int64(va) >> 47; top != 0 && top != -1 {
		return 0, fmt.Errorf("%w: %#x is not canonical", ErrFault, va)
	}
	table := p.CR3 & pteAddr
	for level := 4; level >= 2; level-- {
		shift := 12 + 9*uint(level-1)
		s, err := m.view(table+((va>>shift)&511)*8, 8)
		if err != nil {
			return 0, fmt.Errorf("%w: level-%d table at %#x is not in guest memory", ErrFault, level, table)
		}
		pte := binary.LittleEndian.Uint64(s)
		if pte&ptePresent == 0 || (level < 4 && pte&ptePS != 0) {
			return 0, fmt.Errorf("%w: no level-1 table maps %#x (level %d)", ErrFault, va, level)
		}
		table = pte & pteAddr
	}
	gpa := table + ((va>>12)&511)*8
	if _, err := m.view(gpa, 8); err != nil {
		return 0, err
	}
	return gpa, nil
}

// VirtRange calls fn for each guest-physical piece of the n bytes at virtual
// address va, in order, after checking that the whole range translates: a
// range with any unmapped byte fails before fn sees any of it. fn gets
// slices aliasing guest memory, for writing: VirtRange marks every piece
// as Slice does.
func (m *Memory) VirtRange(p Paging, va, n uint64, fn func([]byte) error) error {
	return m.virtRange(p, va, n, true, fn)
}

// virtRange is VirtRange, marking the pieces only for a write.
func (m *Memory) virtRange(p Paging, va, n uint64, write bool, fn func([]byte) error) error {
	if n == 0 {
		return nil
	}
	if va+n < va {
		return fmt.Errorf("%w: %#x+%#x wraps", ErrFault, va, n)
	}
	type piece struct{ gpa, n uint64 }
	var pieces []piece
	for done := uint64(0); done < n; {
		cur := va + done
		chunk := PageSize - cur%PageSize
		if chunk > n-done {
			chunk = n - done
		}
		gpa, err := m.Translate(p, cur)
		if err != nil {
			return err
		}
		if _, err := m.view(gpa, chunk); err != nil {
			return err
		}
		if k := len(pieces); k > 0 && pieces[k-1].gpa+pieces[k-1].n == gpa {
			pieces[k-1].n += chunk
		} else {
			pieces = append(pieces, piece{gpa, chunk})
		}
		done += chunk
	}
	for _, pc := range pieces {
		s, _ := m.view(pc.gpa, pc.n)
		if write {
			_, _ = m.Slice(pc.gpa, pc.n)
		}
		if err := fn(s); err != nil {
			return err
		}
	}
	return nil
}

// ReadVirt copies len(buf) bytes from guest virtual address va.
func (m *Memory) ReadVirt(p Paging, va uint64, buf []byte) error {
	off := 0
	return m.virtRange(p, va, uint64(len(buf)), false, func(s []byte) error {
		off += copy(buf[off:], s)
		return nil
	})
}

// WriteVirt copies buf to guest virtual address va; nothing is written
// unless the whole range is mapped.
func (m *Memory) WriteVirt(p Paging, va uint64, buf []byte) error {
	off := 0
	return m.VirtRange(p, va, uint64(len(buf)), func(s []byte) error {
		off += copy(s, buf[off:])
		return nil
	})
}

// NewMemory returns an address space over plain host memory: regions not
// registered with any VM. The domain builder and the page walker work on it
// as on a VM's memory; tests and offline tools use it.
func NewMemory(regions ...Region) *Memory {
	m := &Memory{regions: append([]Region(nil), regions...)}
	for i := range m.regions {
		m.regions[i].trk = nil
	}
	m.link()
	return m
}
