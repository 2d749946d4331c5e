package machine

import (
	"fmt"
	"math/bits"
	"runtime"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"
)

// kvmMemLogDirtyPages is KVM_MEM_LOG_DIRTY_PAGES, a memory slot's flag.
const kvmMemLogDirtyPages = 1 << 0

// kvmDirtyLog is struct kvm_dirty_log.
type kvmDirtyLog struct {
	Slot   uint32
	_      uint32
	Bitmap uint64 // a user pointer to one bit per page of the slot
}

// KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, struct kvm_dirty_log).
var kvmGetDirtyLog = kvm.IIOW(0x42, unsafe.Sizeof(kvmDirtyLog{}))

// DirtyBitmap has one bit per 4 KiB page of a region, bit i of word i/64
// for the page at offset i*PageSize.
type DirtyBitmap []uint64

// Test reports whether page i is set; pages past the end are not.
func (b DirtyBitmap) Test(i uint64) bool {
	return i/64 < uint64(len(b)) && b[i/64]&(1<<(i%64)) != 0
}

// Set sets page i (which must be within the bitmap).
func (b DirtyBitmap) Set(i uint64) { b[i/64] |= 1 << (i % 64) }

// Count returns the number of pages set.
func (b DirtyBitmap) Count() int {
	n := 0
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return n
}

// Pages calls fn with each set page in ascending order until fn returns
// false.
func (b DirtyBitmap) Pages(fn func(i uint64) bool) {
	for wi, w := range b {
		for w != 0 {
			bit := bits.TrailingZeros64(w)
			if !fn(uint64(wi)*64 + uint64(bit)) {
				return
			}
			w &^= 1 << bit
		}
	}
}

// NewDirtyBitmap returns an empty bitmap for pages pages.
func NewDirtyBitmap(pages uint64) DirtyBitmap { return make(DirtyBitmap, (pages+63)/64) }

// SetDirtyLog turns KVM's dirty-page logging (KVM_MEM_LOG_DIRTY_PAGES) on
// or off for every memory slot, regions and aliases alike. It may be called
// while the vCPUs run. Only writes the guest makes are logged: the VMM's
// own writes to guest memory (through Memory) are not, and whoever needs
// them tracks them another way.
func (m *Machine) SetDirtyLog(on bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("dirty log: the machine is closed")
	}
	var flags uint32
	if on {
		flags = kvmMemLogDirtyPages
	}
	for _, r := range m.mem.regions {
		region := kvm.UserspaceMemoryRegion{
			Slot: r.Slot, Flags: flags, GuestPhysAddr: r.GPA, MemorySize: uint64(len(r.Mem)),
			UserspaceAddr: uint64(sliceAddr(r.Mem)),
		}
		if _, err := retryEINTR(func() (uintptr, error) { return 0, kvm.SetUserMemoryRegion(m.vmFd, &region) }); err != nil {
			return fmt.Errorf("KVM_SET_USER_MEMORY_REGION %s (dirty log %v): %w", r.Name, on, err)
		}
	}
	m.dirtyLog = on
	return nil
}

// CollectDirty returns the pages of the region named name that the guest
// wrote since dirty logging was turned on or since the last CollectDirty,
// and clears them (KVM_GET_DIRTY_LOG, which write-protects them again).
// Writes through an alias of the region (AddAlias) count as writes to the
// region's page behind it. It fails unless logging is on (SetDirtyLog).
func (m *Machine) CollectDirty(name string) (DirtyBitmap, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || !m.dirtyLog {
		return nil, fmt.Errorf("dirty log of %s: logging is off", name)
	}
	var src *Region
	for i := range m.mem.regions {
		if r := &m.mem.regions[i]; r.Name == name && !r.Alias {
			src = r
		}
	}
	if src == nil {
		return nil, fmt.Errorf("dirty log: no region %s", name)
	}
	out := NewDirtyBitmap(uint64(len(src.Mem)) / PageSize)
	base := sliceAddr(src.Mem)
	for _, r := range m.mem.regions {
		addr := sliceAddr(r.Mem)
		if addr < base || addr-base >= uintptr(len(src.Mem)) {
			continue // another region, or an alias of one
		}
		first := uint64(addr-base) / PageSize // the region's page behind the slot's first
		slot := NewDirtyBitmap(uint64(len(r.Mem)) / PageSize)
		log := kvmDirtyLog{Slot: r.Slot, Bitmap: uint64(uintptr(unsafe.Pointer(&slot[0])))}
		if _, err := kvm.Ioctl(m.vmFd, kvmGetDirtyLog, uintptr(unsafe.Pointer(&log))); err != nil {
			return nil, fmt.Errorf("KVM_GET_DIRTY_LOG %s: %w", r.Name, err)
		}
		runtime.KeepAlive(slot)
		slot.Pages(func(i uint64) bool { out.Set(first + i); return true })
	}
	return out, nil
}
