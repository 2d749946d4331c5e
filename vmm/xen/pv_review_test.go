package xen

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// PHYSDEVOP_set_iobitmap takes only a guest address (Xen's
// guest_handle_okay: -EINVAL otherwise), and the I/O permission check
// reads the bitmap only at guest addresses: a pointer into the VMM's
// slots (the slot-262 window onto the domain's frames and the VMM area)
// never answers, so the check cannot be an oracle on what lies there.
func TestPVIOBitmapGuestAddress(t *testing.T) {
	const physdevOp = 33
	for _, tc := range []struct {
		name string
		va   uint64
		want int64
	}{
		{"guest address", 0x10000, 0},
		{"top of the lower half", 1<<47 - 8192, 0},
		{"the M2P slot", MachToPhysVirt, errno(xenabi.EINVAL)},
		{"the slot-262 window", directMapVirt, errno(xenabi.EINVAL)},
		{"non-canonical", 1 << 47, errno(xenabi.EINVAL)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newPVEnv(t)
			copy(e.ram[pvBuf:], append(le64(tc.va), le32(65536)...))
			wantRet(t, "set_iobitmap", e.call(physdevOp, 7, pvBuf), tc.want)
		})
	}
	// A pointer that got past the hypercall (as a saved state could
	// carry one) is still not read: the slot-262 window maps the
	// domain's frames, all zero bits here, which would allow every port.
	e := newPVEnv(t)
	cpu := e.d.pv.cpus[0]
	s := cpu.sregs(cpu.kL4)
	s.CR0, s.CR4, s.EFER = 0x80050033, 0x620, 0xd01
	cpu.ioBitmapPorts = 65536
	for _, va := range []uint64{directMapVirt + 0x10000, MachToPhysVirt, 1<<47 - 1} {
		cpu.ioBitmap = va
		if e.d.pv.ioAllowed(cpu, &s, 0x80, 1) {
			t.Errorf("bitmap at %#x: port 0x80 allowed", va)
		}
	}
	cpu.ioBitmap = pvBuf + 0x1000 // zero RAM: every port allowed
	if !e.d.pv.ioAllowed(cpu, &s, 0x80, 1) {
		t.Error("bitmap in RAM: port 0x80 refused")
	}
}

// countHandler counts the records logged at each level.
type countHandler struct{ n map[slog.Level]int }

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	h.n[r.Level]++
	return nil
}
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countHandler) WithGroup(string) slog.Handler      { return h }

// A hypercall result that does not fit the trap's 32 bits is -EOVERFLOW
// every time, but logged once: a guest repeating the call must not fill
// the VMM's log.
func TestOverflowLoggedOnce(t *testing.T) {
	const nr = 127
	if hypercalls[nr] != nil {
		t.Fatalf("hypercall %d is in use", nr)
	}
	hypercalls[nr] = &hypercallDef{name: "big", fn: func(*call) int64 { return 1 << 40 }}
	t.Cleanup(func() { hypercalls[nr] = nil })
	e := newEnv(t)
	h := &countHandler{n: map[slog.Level]int{}}
	e.d.log = slog.New(h)
	for range 100 {
		wantRet(t, "big", e.call(nr), errno(xenabi.EOVERFLOW))
	}
	if h.n[slog.LevelError] != 1 {
		t.Errorf("%d errors logged for 100 overflowing calls, want 1", h.n[slog.LevelError])
	}
}

// setMask and markVCPU share the first word of vcpu_info (mask in byte 1,
// pending in byte 0) and run on different goroutines: both are atomic on
// the word, so -race sees no race and neither loses the other's write.
func TestSetMaskConcurrentWithMark(t *testing.T) {
	e := newPVEnv(t)
	cpu := e.d.pv.cpus[0]
	w := e.d.pv.vcpuInfo(cpu)
	vi := &e.d.SharedInfo().Vcpu_info[0]
	const rounds = 2000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range rounds {
			atomic.StoreUint64(&vi.Pending_sel, 0)
			atomic.AndUint32(w, ^uint32(0xff))
			e.d.markVCPU(0, 0)
		}
	}()
	for i := range rounds {
		e.d.pv.setMask(cpu, uint8(i&1))
	}
	<-done
	e.d.pv.setMask(cpu, 1)
	if got := atomic.LoadUint32(w); got&0xff != 1 || got>>8&0xff != 1 {
		t.Errorf("vcpu_info word %#x, want pending 1 and mask 1", got)
	}
}

// Page-table entries are memory the hardware walks and updates (Accessed
// and Dirty) concurrently: the VMM reads and writes them atomically, and
// MMU_PT_UPDATE_PRESERVE_AD keeps A and D set by the hardware as the
// entry is written, with a compare-and-swap loop. A goroutine stands in
// for the hardware; -race sees every access.
func TestPVPTEAtomic(t *testing.T) {
	e := newPVEnv(t)
	gpa := pvL1*4096 + 0x30*8 // the boot L1's entry for PFN 0x30
	w := (*uint64)(unsafe.Pointer(&e.ram[gpa]))
	ptr := e.mfn(pvL1)<<12 + 0x30*8
	mmu := func(kind, val uint64) int64 {
		copy(e.ram[pvBuf:], le64(ptr|kind, val))
		return e.call(xenabi.HypervisorMmuUpdate, pvBuf, 1, 0, domidSelf)
	}
	val := e.mfn(0x30)<<12 | 0x03
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				atomic.OrUint64(w, pteA|pteD)
			}
		}
	}()
	for range 500 {
		wantRet(t, "preserve_ad", mmu(mmuPTUpdatePreserveAD, val), 0)
		wantRet(t, "normal", mmu(mmuNormalPTUpdate, val), 0)
	}
	close(stop)
	<-done
	atomic.OrUint64(w, pteA|pteD)
	wantRet(t, "preserve_ad", mmu(mmuPTUpdatePreserveAD, val), 0)
	if got := atomic.LoadUint64(w); got&(pteA|pteD) != pteA|pteD || got&pteAddr != val&pteAddr {
		t.Errorf("entry %#x after MMU_PT_UPDATE_PRESERVE_AD: want %#x with A and D kept", got, val)
	}
	wantRet(t, "normal", mmu(mmuNormalPTUpdate, val), 0)
	if got := atomic.LoadUint64(w); got&(pteA|pteD) != 0 {
		t.Errorf("entry %#x after MMU_NORMAL_PT_UPDATE: want A and D as written (clear)", got)
	}
}
