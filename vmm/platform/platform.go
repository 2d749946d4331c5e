// Package platform holds the timer and CMOS devices Xen emulates for an
// HVM guest, as device models in pure Go (no KVM): the MC146818 RTC and
// its CMOS (rtc.go, Xen's xen/arch/x86/hvm/rtc.c plus the CMOS RAM QEMU
// keeps for indices 14 and up), the ACPI PM1a event block and PM timer
// (pmtimer.go, Xen's pmtimer.c) and the HPET (hpet.go, Xen's hpet.c).
// A PVH guest gets none of them (xen-hvm-pvh.md §2.5, §9).
//
// Each device decodes its own port I/O or MMIO (PIO, MMIO methods that take
// the access's address and bytes, so that the owner's bus needs no device
// knowledge), raises its interrupts through an IRQFunc, keeps its
// guest-visible state in a plain struct (RTCState, PMTimerState, HPETState)
// for save and restore in Xen's HVM_CONTEXT records, and is reset as
// hvm_s3_suspend resets it (Reset).
//
// Time comes from a Clock: the host's monotonic clock for counters and
// timers, its wall clock for the RTC's date. Interrupts that fire with
// nobody touching a register (the RTC's periodic, update and alarm
// interrupts, the PM timer's overflow SCI, the HPET's comparators) are
// timers from Clock.AfterFunc: at most one pending per interrupt source,
// re-armed when it fires or when the guest reprograms it, never a goroutine
// per guest write; status bits nobody asked an interrupt for are computed
// from the clock when the guest reads them. Periodic timers run no faster
// than Xen's vpt allows (MinPeriod), so a guest cannot make the host spin.
// Close stops every timer.
package platform

import (
	"sync"
	"time"
)

// IRQFunc sets the level of a platform interrupt line: irq is an ISA IRQ
// (0-15) or an IO-APIC GSI, numbered as KVM_IRQ_LINE numbers them, and
// high asserts it. Devices call it with their own lock held, so it must
// not call back into the device. A nil IRQFunc drops the interrupts (the
// devices' status bits still change).
type IRQFunc func(irq uint32, high bool)

func (f IRQFunc) set(irq uint32, high bool) {
	if f != nil {
		f(irq, high)
	}
}

// pulseISA is hvm_isa_irq_deassert then hvm_isa_irq_assert: an edge on an
// ISA line, which stays asserted until the device lowers it.
func (f IRQFunc) pulseISA(irq uint32) {
	f.set(irq, false)
	f.set(irq, true)
}

// pulse is an edge on a line that is left low (an edge-triggered IO-APIC
// pin: vioapic_irq_positive_edge).
func (f IRQFunc) pulse(irq uint32) {
	f.set(irq, true)
	f.set(irq, false)
}

// Interrupt lines the devices use.
const (
	IRQPIT = 0 // the HPET's timer 0 in legacy replacement mode
	IRQRTC = 8 // RTC_IRQ; the HPET's timer 1 in legacy replacement mode
	IRQSCI = 9 // SCI_IRQ, the FADT's SCI_INT
)

// MinPeriod is the shortest period of a periodic timer: Xen's vpt
// (create_periodic_time) and the HPET's comparator write clamp a period
// below 100 µs to 100 µs.
const MinPeriod = 100 * time.Microsecond

// Timer is a pending Clock.AfterFunc.
type Timer interface {
	// Stop cancels the call if it has not started.
	Stop() bool
}

// Clock is the devices' time source.
type Clock interface {
	// Now is monotonic time since an arbitrary start.
	Now() time.Duration
	// Wall is the host's wall-clock time (the RTC's date).
	Wall() time.Time
	// AfterFunc calls f on its own goroutine once d has passed.
	AfterFunc(d time.Duration, f func()) Timer
}

// HostClock is the host's clocks: Now from the monotonic clock.
func HostClock() Clock { return hostClock{start: time.Now()} }

type hostClock struct{ start time.Time }

func (c hostClock) Now() time.Duration { return time.Since(c.start) }
func (c hostClock) Wall() time.Time    { return time.Now() }
func (c hostClock) AfterFunc(d time.Duration, f func()) Timer {
	return time.AfterFunc(d, f)
}

// oneTimer is a device's single pending timer for one interrupt source.
// A callback that lost a race with stop or a re-arm sees a stale
// generation and does nothing.
type oneTimer struct {
	t   Timer
	gen uint64
}

// arm replaces the pending call with fn after d; fn runs with mu held
// and only if the timer was not re-armed or stopped meanwhile (closed
// reports a closed device).
func (o *oneTimer) arm(c Clock, mu *sync.Mutex, closed *bool, d time.Duration, fn func()) {
	o.stop()
	gen := o.gen
	if d < 0 {
		d = 0
	}
	o.t = c.AfterFunc(d, func() {
		mu.Lock()
		defer mu.Unlock()
		if *closed || o.gen != gen {
			return
		}
		o.t = nil
		fn()
	})
}

func (o *oneTimer) stop() {
	o.gen++
	if o.t != nil {
		o.t.Stop()
		o.t = nil
	}
}
