package machine

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// The VMM's own writes to guest memory. KVM's dirty log (CollectDirty)
// sees only the writes the guest makes; the emulated Xen, the toolstack and
// the backends write guest memory from the host, which KVM cannot see. So
// Memory accounts for them itself, and the rule is: every way Memory hands
// out guest memory for writing records it.
//
//   - Write, WriteVirt, WriteVirtChecked, VirtRange, Slice and Page mark
//     the pages they cover as the VMM's dirty pages when they are called.
//     Their writes are expected to land before the next-but-one
//     CollectVMMDirty: a collection reports the pages marked since the
//     collection before the last one, so a write made shortly after its
//     slice was handed out (and the collection that reported it) is
//     reported again by the next one.
//   - A slice the VMM keeps past the call (a ring, vcpu_info, a mapped
//     grant) comes from Keep: its pages are reported by every collection
//     while it is kept, and once more after it is released.
//   - Reads (Read, ReadVirt, Translate, the walkers) mark nothing.
//
// Region.Mem, from Regions, is for reading (a save's pages) and for code
// that runs before a domain is started; a write through it is not seen.

// vmmTrack is the VMM's dirty set of one region (not an alias): one bit per
// page marked since the last collection (cur, set atomically from any
// goroutine), the set reported by the last collection (prev), and the
// ranges kept (Keep).
type vmmTrack struct {
	cur  []uint64
	mu   sync.Mutex
	prev []uint64
	kept map[*keptRange]struct{}
}

type keptRange struct{ first, n uint64 } // pages of the backing region

func newVMMTrack(pages uint64) *vmmTrack {
	w := (pages + 63) / 64
	return &vmmTrack{cur: make([]uint64, w), prev: make([]uint64, w), kept: map[*keptRange]struct{}{}}
}

// mark sets pages [first, first+n) of the region.
func (t *vmmTrack) mark(first, n uint64) {
	limit := uint64(len(t.cur)) * 64
	for i := first; i < first+n && i < limit; i++ {
		w := &t.cur[i/64]
		bit := uint64(1) << (i % 64)
		if atomic.LoadUint64(w)&bit == 0 {
			atomic.OrUint64(w, bit)
		}
	}
}

// link points each region at the dirty set of the memory behind it: its
// own for a region, that of the region it aliases for an alias (found by
// host address), with the page offset of its first page there.
func (m *Memory) link() {
	for i := range m.regions {
		r := &m.regions[i]
		if !r.Alias && r.trk == nil {
			r.trk = newVMMTrack(uint64(len(r.Mem)) / PageSize)
		}
	}
	for i := range m.regions {
		r := &m.regions[i]
		if !r.Alias || len(r.Mem) == 0 {
			continue
		}
		addr := sliceAddr(r.Mem)
		for _, src := range m.regions {
			base := sliceAddr(src.Mem)
			if !src.Alias && len(src.Mem) > 0 && addr >= base && addr-base < uintptr(len(src.Mem)) {
				r.trk, r.trkOff = src.trk, uint64(addr-base)/PageSize
			}
		}
	}
}

// markRange records the VMM's write to [gpa, gpa+n) of region r.
func (r *Region) markRange(gpa, n uint64) {
	if r.trk == nil || n == 0 {
		return
	}
	first := (gpa - r.GPA) / PageSize
	last := (gpa - r.GPA + n - 1) / PageSize
	r.trk.mark(r.trkOff+first, last-first+1)
}

// Keep returns the n bytes of guest-physical memory at gpa, as Slice, for
// the VMM to keep and write while the guest runs (a shared ring, a
// vcpu_info, a mapped grant): its pages are in every CollectVMMDirty until
// release is called, and in the next one after. release is idempotent.
func (m *Memory) Keep(gpa, n uint64) (b []byte, release func(), err error) {
	r, s, err := m.slice(gpa, n)
	if err != nil {
		return nil, nil, err
	}
	if r.trk == nil || n == 0 {
		return s, func() {}, nil
	}
	first := (gpa - r.GPA) / PageSize
	k := &keptRange{first: r.trkOff + first, n: (gpa-r.GPA+n-1)/PageSize - first + 1}
	t := r.trk
	t.mu.Lock()
	t.kept[k] = struct{}{}
	t.mu.Unlock()
	var once sync.Once
	return s, func() {
		once.Do(func() {
			t.mu.Lock()
			delete(t.kept, k)
			t.mu.Unlock()
			t.mark(k.first, k.n)
		})
	}, nil
}

// CollectVMMDirty returns the pages of the region named name that the VMM
// marked (see Keep and the rule above) since the collection before the
// last one, and every page kept now, and starts a new interval. Writes
// through an alias count for the region's page behind it.
func (m *Memory) CollectVMMDirty(name string) (DirtyBitmap, error) {
	var t *vmmTrack
	for _, r := range m.regions {
		if r.Name == name && !r.Alias {
			t = r.trk
		}
	}
	if t == nil {
		return nil, fmt.Errorf("VMM dirty set: no region %s", name)
	}
	out := make(DirtyBitmap, len(t.cur))
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.cur {
		w := atomic.SwapUint64(&t.cur[i], 0)
		out[i] = w | t.prev[i]
		t.prev[i] = w
	}
	for k := range t.kept {
		for i := k.first; i < k.first+k.n; i++ {
			out.Set(i)
		}
	}
	return out, nil
}
