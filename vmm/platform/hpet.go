package platform

import (
	"fmt"
	"math"
	"sync"
	"time"
)

// HPET location and registers (hpet.c, asm/hpet.h).
const (
	HPETBase = 0xfed00000
	HPETSize = 1024

	HPETID      = 0x000
	HPETCfg     = 0x010
	HPETStatus  = 0x020
	HPETCounter = 0x0f0
	// HPETTimers is HPET_TIMER_NUM.
	HPETTimers = 3
)

// HPETTnCfg is timer n's configuration and capabilities register.
func HPETTnCfg(n int) uint64 { return 0x100 + 0x20*uint64(n) }

// HPETTnCmp is timer n's comparator register.
func HPETTnCmp(n int) uint64 { return 0x108 + 0x20*uint64(n) }

// HPETTnRoute is timer n's FSB route register (stored, never used).
func HPETTnRoute(n int) uint64 { return 0x110 + 0x20*uint64(n) }

// HPET bits.
const (
	HPETCfgEnable = 1 << 0
	HPETCfgLegacy = 1 << 1

	HPETTnLevel      = 1 << 1
	HPETTnEnable     = 1 << 2
	HPETTnPeriodic   = 1 << 3
	HPETTnPeriodCap  = 1 << 4
	HPETTn64BitCap   = 1 << 5
	HPETTnSetVal     = 1 << 6
	HPETTn32Bit      = 1 << 8
	HPETTnRouteMask  = 0x1f << 9
	HPETTnRouteShift = 9
	// HPETTnRouteCap is the routes a timer may take: IO-APIC pins 20-23.
	HPETTnRouteCap = uint64(0x00f00000) << 32
	// hpetTnWritable are the config bits a guest may change.
	hpetTnWritable = HPETTnLevel | HPETTnEnable | HPETTnPeriodic | HPETTnSetVal | HPETTn32Bit | HPETTnRouteMask

	// HPETCapabilities is the ID register Xen's hpet_set builds: vendor
	// 0x8086, revision 1, 3 timers, 64-bit counter, legacy replacement
	// capable, a tick of 16 000 000 fs (62.5 MHz: 16 ns of Xen's system
	// time).
	HPETCapabilities = 0x00f42400_8086a201
	// hpetTickNs is STIME_PER_HPET_TICK.
	hpetTickNs = 16
)

// HPETState is Xen's struct hvm_hw_hpet, the fields it saves: the
// registers, each timer's 64-bit comparator (Xen saves comparator64 in
// timers[n].cmp, whatever the timer's width) and period.
type HPETState struct {
	Capability, Config, ISR, MC64 uint64
	Timers                        [HPETTimers]HPETTimerState
	Period                        [HPETTimers]uint64
}

// HPETTimerState is one timer's registers in HPETState.
type HPETTimerState struct{ Config, Cmp, FSB uint64 }

// HPET is the HPET at 0xFED00000 as Xen's hpet.c: a 62.5 MHz main counter
// from the host's monotonic clock while enabled, three timers with 32- or
// 64-bit comparators, one-shot or periodic (the period clamped to at least
// 100 µs), edge or level triggered, routed to IO-APIC pins 20-23 or, with
// legacy replacement, timer 0 to IRQ 0 and timer 1 to IRQ 8. Each timer
// that is due to fire has one pending Clock timer. A misaligned or
// oversized access reads all-ones and writes nothing.
//
// Legacy replacement does not stop the PIT's channel 0 here as Xen does
// (pit_stop_channel0_irq): the PIT is KVM's.
type HPET struct {
	mu     sync.Mutex
	clock  Clock
	irq    IRQFunc
	closed bool

	s        HPETState
	cmp64    [HPETTimers]uint64 // comparator64
	mcOffset uint64             // main counter = guest ticks + mcOffset while enabled
	timers   [HPETTimers]oneTimer
}

// NewHPET returns the HPET as hpet_set leaves it: disabled, counter 0,
// comparators all-ones, each timer periodic- and 64-bit-capable.
func NewHPET(c Clock, irq IRQFunc) *HPET {
	h := &HPET{clock: c, irq: irq}
	h.reset()
	return h
}

func (h *HPET) reset() {
	for i := range h.timers {
		h.timers[i].stop()
	}
	h.s = HPETState{Capability: HPETCapabilities}
	for i := range h.s.Timers {
		h.s.Timers[i] = HPETTimerState{Config: HPETTnRouteCap | HPETTn64BitCap | HPETTnPeriodCap, Cmp: math.MaxUint64}
		h.cmp64[i] = math.MaxUint64
	}
	h.mcOffset = 0
}

// Close stops the HPET's timers.
func (h *HPET) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for i := range h.timers {
		h.timers[i].stop()
	}
}

// Reset is hpet_reset (hvm_s3_suspend): timers stopped, registers as at
// creation.
func (h *HPET) Reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reset()
}

func (h *HPET) guestTicks() uint64 {
	n := h.clock.Now()
	if n < 0 {
		n = 0
	}
	return uint64(n) / hpetTickNs
}

func (h *HPET) enabled() bool         { return h.s.Config&HPETCfgEnable != 0 }
func (h *HPET) cfg(n int) uint64      { return h.s.Timers[n].Config }
func (h *HPET) route(n int) uint32    { return uint32(h.cfg(n) & HPETTnRouteMask >> HPETTnRouteShift) }
func (h *HPET) routeValid(n int) bool { return h.cfg(n)>>32&(1<<h.route(n)) != 0 }

// counter is hpet_read_maincounter: running while enabled, else held.
func (h *HPET) counter(guest uint64) uint64 {
	if h.enabled() {
		return guest + h.mcOffset
	}
	return h.s.MC64
}

// comparator is hpet_get_comparator: a periodic timer's comparator moves
// on by whole periods as the counter passes it.
func (h *HPET) comparator(n int, guest uint64) uint64 {
	c := h.cmp64[n]
	if h.enabled() && h.cfg(n)&HPETTnPeriodic != 0 {
		if p := h.s.Period[n]; p != 0 {
			if el := h.counter(guest) - c; int64(el) >= 0 {
				c += (el + p) / p * p
				h.cmp64[n] = c
			}
		}
	}
	if h.cfg(n)&HPETTn32Bit != 0 {
		c = uint64(uint32(c))
	}
	h.s.Timers[n].Cmp = c
	return c
}

func (h *HPET) read64(addr uint64, guest uint64) uint64 {
	switch a := addr &^ 7; {
	case a == HPETID:
		return h.s.Capability
	case a == HPETCfg:
		return h.s.Config
	case a == HPETStatus:
		return h.s.ISR
	case a == HPETCounter:
		return h.counter(guest)
	case a >= 0x100 && a < 0x100+0x20*HPETTimers:
		n := int(a-0x100) / 0x20
		switch a - HPETTnCfg(n) {
		case 0:
			return h.cfg(n)
		case 8:
			return h.comparator(n, guest)
		case 0x10:
			return h.s.Timers[n].FSB
		}
	}
	return 0
}

// accessOK is hpet_check_access_length, also refusing sizes that are not
// a power of two.
func accessOK(addr uint64, n int) bool {
	return n > 0 && n <= 8 && n&(n-1) == 0 && addr&uint64(n-1) == 0
}

// MMIO is an access at off bytes into the HPET's 1 KiB (hpet_read,
// hpet_write); off is reduced modulo 1 KiB as Xen does.
func (h *HPET) MMIO(off uint64, write bool, data []byte) {
	off &= HPETSize - 1
	if !accessOK(off, len(data)) {
		if !write {
			fill(data, 0xff)
		}
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	guest := h.guestTicks()
	old := h.read64(off, guest)
	sh := 8 * (off & 7)
	if !write {
		v := old >> sh
		for i := range data {
			data[i] = byte(v >> (8 * i))
		}
		return
	}
	var v uint64
	for i, b := range data {
		v |= uint64(b) << (8 * i)
	}
	nv := v
	if len(data) != 8 {
		mask := (uint64(1)<<(8*len(data)) - 1) << sh
		nv = v<<sh&mask | old&^mask
	}
	h.write(off&^7, old, nv, guest)
}

func fixup(nv, old, mask uint64) uint64 { return nv&mask | old&^mask }

func (h *HPET) write(a, old, nv, guest uint64) {
	var start, stop uint
	switch {
	case a == HPETCfg:
		h.s.Config = fixup(nv, old, HPETCfgEnable|HPETCfgLegacy)
		switch {
		case old&HPETCfgEnable == 0 && nv&HPETCfgEnable != 0:
			h.mcOffset = h.s.MC64 - guest
			for i := range h.s.Timers {
				h.cmp64[i] = h.s.Timers[i].Cmp
				if h.cfg(i)&HPETTn32Bit != 0 {
					h.cmp64[i] = uint64(uint32(h.cmp64[i]))
				}
				if h.cfg(i)&HPETTnEnable != 0 {
					start |= 1 << i
				}
			}
		case old&HPETCfgEnable != 0 && nv&HPETCfgEnable == 0:
			h.s.MC64 = h.mcOffset + guest
			for i := range h.s.Timers {
				if h.cfg(i)&HPETTnEnable != 0 {
					stop |= 1 << i
				}
			}
		}
	case a == HPETStatus:
		for i := range h.s.Timers {
			if nv&(1<<i) != 0 && h.s.ISR&(1<<i) != 0 {
				h.s.ISR &^= 1 << i
				h.irq.set(h.irqOf(i), false)
				if h.enabled() && h.cfg(i)&(HPETTnEnable|HPETTnLevel|HPETTnPeriodic) == HPETTnEnable|HPETTnLevel|HPETTnPeriodic {
					start |= 1 << i
				}
			}
		}
	case a == HPETCounter:
		h.s.MC64 = nv
		if h.enabled() {
			// Xen warns that the counter is not halted, and restarts the
			// timers from the new value; the counter itself runs on.
			for i := range h.s.Timers {
				if h.cfg(i)&HPETTnEnable != 0 {
					start |= 1 << i
					stop |= 1 << i
				}
			}
		}
	case a >= 0x100 && a < 0x100+0x20*HPETTimers:
		n := int(a-0x100) / 0x20
		switch a - HPETTnCfg(n) {
		case 0:
			h.s.Timers[n].Config = fixup(nv, old, hpetTnWritable)
			h.sanitizeRoute(n)
			if nv&HPETTn32Bit != 0 {
				h.s.Timers[n].Cmp = uint64(uint32(h.s.Timers[n].Cmp))
				h.s.Period[n] = uint64(uint32(h.s.Period[n]))
			}
			if h.enabled() {
				switch {
				case nv&HPETTnEnable != 0 && ((nv^old)&HPETTnPeriodic != 0 || (nv&HPETTn32Bit != 0 && old&HPETTn32Bit == 0)):
					start |= 1 << n
					stop |= 1 << n
				case nv&HPETTnEnable != 0 && old&HPETTnEnable == 0:
					start |= 1 << n
				case nv&HPETTnEnable == 0 && old&HPETTnEnable != 0:
					stop |= 1 << n
				}
			}
		case 8:
			if h.cfg(n)&HPETTnPeriodic != 0 && h.cfg(n)&HPETTnSetVal == 0 {
				maxP := uint64(math.MaxUint64) >> 1
				if h.cfg(n)&HPETTn32Bit != 0 {
					maxP = math.MaxUint32 >> 1
				}
				if nv < uint64(MinPeriod/hpetTickNs) {
					nv = uint64(MinPeriod / hpetTickNs)
				}
				h.s.Period[n] = min(nv, maxP)
			} else {
				h.s.Timers[n].Config &^= HPETTnSetVal
				h.cmp64[n] = nv
				if h.cfg(n)&HPETTn32Bit != 0 {
					nv = uint64(uint32(nv))
				}
				h.s.Timers[n].Cmp = nv
			}
			if h.enabled() && h.cfg(n)&HPETTnEnable != 0 {
				start |= 1 << n
				stop |= 1 << n
			}
		case 0x10:
			h.s.Timers[n].FSB = nv
		}
	}
	for i := range h.s.Timers {
		if stop&(1<<i) != 0 {
			h.timers[i].stop()
			h.comparator(i, guest)
		}
	}
	for i := range h.s.Timers {
		if start&(1<<i) != 0 {
			h.setTimer(i, guest)
		}
	}
}

// sanitizeRoute is timer_sanitize_int_route: a route outside the
// capability becomes 0, or the first allowed pin if the timer is enabled.
func (h *HPET) sanitizeRoute(n int) {
	if h.routeValid(n) {
		return
	}
	c := &h.s.Timers[n].Config
	*c &^= HPETTnRouteMask
	if *c&HPETTnEnable == 0 {
		return
	}
	capb := *c >> 32
	first := uint64(0)
	for capb&(1<<first) == 0 && first < 31 {
		first++
	}
	*c |= first << HPETTnRouteShift
}

// irqOf is the line timer n raises.
func (h *HPET) irqOf(n int) uint32 {
	if n <= 1 && h.s.Config&HPETCfgLegacy != 0 {
		if n == 0 {
			return IRQPIT
		}
		return IRQRTC
	}
	return h.route(n)
}

func ticksToDuration(t uint64) time.Duration {
	if t > math.MaxInt64/hpetTickNs {
		return math.MaxInt64
	}
	return time.Duration(t * hpetTickNs)
}

// setTimer is hpet_set_timer: timer n fires when the counter reaches its
// comparator (a 32-bit comparator a little behind the counter counts as
// passed; further behind, as wrapped), then every period if periodic and
// edge-triggered.
func (h *HPET) setTimer(n int, guest uint64) {
	h.timers[n].stop()
	if h.cfg(n)&HPETTnEnable == 0 || (h.cfg(n)&HPETTnLevel != 0 && h.s.ISR&(1<<n) != 0) || !h.routeValid(n) {
		return
	}
	cmp := h.comparator(n, guest)
	cur := h.counter(guest)
	if h.cfg(n)&HPETTn32Bit != 0 {
		cmp, cur = uint64(uint32(cmp)), uint64(uint32(cur))
	}
	diff := cmp - cur
	if int64(diff) < 0 {
		const tiny = (1e9 >> 10) / hpetTickNs // HPET_TINY_TIME_SPAN: ~1 ms
		if h.cfg(n)&HPETTn32Bit != 0 && -diff > tiny {
			diff = uint64(uint32(diff))
		} else {
			diff = 0
		}
	}
	periodic := h.cfg(n)&HPETTnPeriodic != 0 && h.cfg(n)&HPETTnLevel == 0
	var period time.Duration
	if periodic && h.s.Period[n] != 0 { // no period: one shot, as create_periodic_time
		period = max(ticksToDuration(h.s.Period[n]), MinPeriod)
	}
	h.armTimer(n, ticksToDuration(diff), period)
}

func (h *HPET) armTimer(n int, d, period time.Duration) {
	h.timers[n].arm(h.clock, &h.mu, &h.closed, d, func() {
		h.fire(n)
		if period != 0 {
			h.armTimer(n, period, period)
		}
	})
}

// fire delivers timer n's interrupt: an edge, or for a level-triggered
// timer the line held with its ISR bit until the guest clears it.
func (h *HPET) fire(n int) {
	irq := h.irqOf(n)
	if h.cfg(n)&HPETTnLevel != 0 {
		h.s.ISR |= 1 << n
		h.irq.set(irq, true)
		return
	}
	if irq < 16 {
		h.irq.pulseISA(irq)
	} else {
		h.irq.pulse(irq)
	}
}

// Save returns the HPET's state as hpet_save writes it: the counter and
// the comparators as of now.
func (h *HPET) Save() HPETState {
	h.mu.Lock()
	defer h.mu.Unlock()
	guest := h.guestTicks()
	if h.enabled() {
		h.s.MC64 = h.mcOffset + guest
	}
	s := h.s
	for i := range h.s.Timers {
		h.comparator(i, guest)
		s.Timers[i].Cmp = h.cmp64[i]
	}
	return s
}

// Load replaces the HPET's state (hpet_load): a capability other than
// this HPET's is refused (the timers and tick rate would differ); routes
// are sanitised, and enabled timers restart from the saved counter.
func (h *HPET) Load(s HPETState) error {
	if s.Capability != HPETCapabilities {
		return fmt.Errorf("hpet: saved capabilities %#x, this HPET's are %#x", s.Capability, uint64(HPETCapabilities))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range h.timers {
		h.timers[i].stop()
	}
	h.s = s
	h.s.Config &= HPETCfgEnable | HPETCfgLegacy
	for i := range h.s.Timers {
		h.s.Timers[i].Config = h.s.Timers[i].Config&hpetTnWritable | HPETTnRouteCap | HPETTn64BitCap | HPETTnPeriodCap
		h.cmp64[i] = s.Timers[i].Cmp
		if h.cfg(i)&HPETTn32Bit != 0 {
			h.s.Timers[i].Cmp = uint64(uint32(s.Timers[i].Cmp))
		}
		h.sanitizeRoute(i)
	}
	guest := h.guestTicks()
	h.mcOffset = h.s.MC64 - guest
	if h.enabled() {
		for i := range h.s.Timers {
			h.setTimer(i, guest)
		}
	}
	return nil
}
