package platform

import (
	"math"
	"testing"
	"time"
)

func newTestHPET(t *testing.T) (*HPET, *fakeClock, *irqLog) {
	t.Helper()
	c := newFakeClock(rtcWall)
	l := newIRQLog()
	h := NewHPET(c, l.fn())
	t.Cleanup(h.Close)
	return h, c, l
}

func hpetRead(h *HPET, off uint64, n int) uint64 {
	b := make([]byte, n)
	h.MMIO(off, false, b)
	return leValue(b)
}

func hpetWrite(h *HPET, off uint64, v uint64, n int) { h.MMIO(off, true, leBytes(v, n)) }

// leValue and leBytes are an access's bytes as the value they carry
// (little-endian, any width up to 8) and back.
func leValue(b []byte) uint64 {
	var v uint64
	for i, x := range b {
		v |= uint64(x) << (8 * i)
	}
	return v
}

func leBytes(v uint64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	return b
}

// XTF's hpet_init reads the ID at 0xFED00000 as 64 bits and wants a
// period of at most 100 ns; Linux reads the halves.
func TestHPETID(t *testing.T) {
	h, _, _ := newTestHPET(t)
	for _, c := range []struct {
		off  uint64
		n    int
		want uint64
	}{
		{HPETID, 8, 0x00f42400_8086a201},
		{HPETID, 4, 0x8086a201},
		{HPETID + 4, 4, 16_000_000},
		{HPETID + 2, 2, 0x8086},
		{HPETID + 1, 1, 0xa2},
		{HPETID + HPETSize, 8, 0x00f42400_8086a201}, // wraps at 1 KiB
		{HPETTnCfg(1), 8, HPETTnRouteCap | HPETTn64BitCap | HPETTnPeriodCap},
		{HPETTnCmp(2), 8, math.MaxUint64},
		{0x3f8, 8, 0}, // reserved
	} {
		if got := hpetRead(h, c.off, c.n); got != c.want {
			t.Errorf("%d bytes at %#x: %#x, want %#x", c.n, c.off, got, c.want)
		}
	}
	hpetWrite(h, HPETID, 0, 8)
	if hpetRead(h, HPETID, 8) != HPETCapabilities {
		t.Fatal("the ID register took a write")
	}
}

// Misaligned and odd-sized accesses read all-ones and write nothing
// (hpet_check_access_length), never crash.
func TestHPETBadAccess(t *testing.T) {
	h, _, _ := newTestHPET(t)
	for _, c := range []struct {
		off uint64
		n   int
	}{{1, 2}, {2, 4}, {4, 8}, {HPETCfg + 3, 2}, {0, 3}, {0, 16}, {0, 0}, {HPETSize - 1, 8}} {
		b := make([]byte, c.n)
		h.MMIO(c.off, false, b)
		for _, x := range b {
			if x != 0xff {
				t.Errorf("%d bytes at %#x: % x", c.n, c.off, b)
				break
			}
		}
		w := make([]byte, c.n)
		fill(w, 0xff)
		h.MMIO(c.off, true, w)
	}
	if got := hpetRead(h, HPETCfg, 8); got != 0 {
		t.Fatalf("a bad write reached the config: %#x", got)
	}
}

// The main counter runs at 62.5 MHz while enabled and holds otherwise;
// it may be set while halted.
func TestHPETCounter(t *testing.T) {
	h, c, _ := newTestHPET(t)
	c.Advance(time.Second)
	if got := hpetRead(h, HPETCounter, 8); got != 0 {
		t.Fatalf("disabled counter %d", got)
	}
	hpetWrite(h, HPETCounter, 1000, 8)
	hpetWrite(h, HPETCfg, HPETCfgEnable, 4)
	c.Advance(time.Millisecond)
	if got := hpetRead(h, HPETCounter, 8); got != 1000+62500 {
		t.Fatalf("counter %d after 1 ms, want %d", got, 1000+62500)
	}
	if got := hpetRead(h, HPETCounter+4, 4); got != 0 {
		t.Fatalf("high half %#x", got)
	}
	hpetWrite(h, HPETCfg, 0, 4)
	c.Advance(time.Second)
	if got := hpetRead(h, HPETCounter, 8); got != 1000+62500 {
		t.Fatalf("halted counter moved to %d", got)
	}
	hpetWrite(h, HPETCfg, 0xfffffffc, 4) // only ENABLE and LEGACY are writable
	if got := hpetRead(h, HPETCfg, 8); got != 0 {
		t.Fatalf("config %#x", got)
	}
}

// Timers: one-shot and periodic, routes, legacy replacement, level.
func TestHPETTimers(t *testing.T) {
	for _, c := range []struct {
		name    string
		timer   int
		cfg     uint64 // timer config written
		legacy  bool
		cmp     uint64 // comparator (periodic: first, then the period)
		period  uint64
		window  time.Duration
		irq     uint32
		want    int
		wantCfg uint64 // the route bits as they read back
	}{
		{"one-shot to pin 20", 0, HPETTnEnable | 20<<9, false, 625, 0, time.Second, 20, 1, 20 << 9},
		{"one-shot, pin 23", 2, HPETTnEnable | 23<<9, false, 625, 0, time.Second, 23, 1, 23 << 9},
		{"periodic 1 ms", 0, HPETTnEnable | HPETTnPeriodic | HPETTnSetVal | 21<<9, false, 62500, 62500, 10 * time.Millisecond, 21, 10, 21 << 9},
		{"periodic 16 ns clamped to 100 µs", 1, HPETTnEnable | HPETTnPeriodic | HPETTnSetVal | 22<<9, false, 1, 1, 10 * time.Millisecond, 22, 100, 22 << 9},
		{"bad route 5 becomes 20", 0, HPETTnEnable | 5<<9, false, 625, 0, time.Second, 20, 1, 20 << 9},
		{"legacy: timer 0 on IRQ 0", 0, HPETTnEnable | 20<<9, true, 625, 0, time.Second, IRQPIT, 1, 20 << 9},
		{"legacy: timer 1 on IRQ 8", 1, HPETTnEnable | 20<<9, true, 625, 0, time.Second, IRQRTC, 1, 20 << 9},
		{"legacy: timer 2 keeps its route", 2, HPETTnEnable | 20<<9, true, 625, 0, time.Second, 20, 1, 20 << 9},
		{"32-bit comparator", 0, HPETTnEnable | HPETTn32Bit | 20<<9, false, 1<<32 | 625, 0, time.Second, 20, 1, 20 << 9},
		{"disabled timer", 0, 20 << 9, false, 625, 0, time.Second, 20, 0, 20 << 9},
	} {
		t.Run(c.name, func(t *testing.T) {
			h, clk, l := newTestHPET(t)
			hpetWrite(h, HPETTnCfg(c.timer), c.cfg, 8)
			hpetWrite(h, HPETTnCmp(c.timer), c.cmp, 8)
			if c.period != 0 {
				hpetWrite(h, HPETTnCmp(c.timer), c.period, 8)
			}
			cfg := uint64(HPETCfgEnable)
			if c.legacy {
				cfg |= HPETCfgLegacy
			}
			hpetWrite(h, HPETCfg, cfg, 8)
			clk.Advance(c.window)
			if got := l.Rises(c.irq); got < c.want-1 || got > c.want+1 || (c.want <= 1 && got != c.want) {
				t.Errorf("%d interrupts on %d in %v, want %d", got, c.irq, c.window, c.want)
			}
			if got := hpetRead(h, HPETTnCfg(c.timer), 8) & HPETTnRouteMask; got != c.wantCfg {
				t.Errorf("route bits %#x, want %#x", got, c.wantCfg)
			}
			if c.irq >= 16 && l.High(c.irq) {
				t.Errorf("edge-triggered pin %d left high", c.irq)
			}
		})
	}
}

// A disabled timer with a bad route reads route 0 (timer_sanitize_int_route).
func TestHPETRouteSanitizeDisabled(t *testing.T) {
	h, _, _ := newTestHPET(t)
	hpetWrite(h, HPETTnCfg(0), 3<<9, 8)
	if got := hpetRead(h, HPETTnCfg(0), 8) & HPETTnRouteMask; got != 0 {
		t.Fatalf("route %#x", got)
	}
}

// A periodic comparator moves on by periods as it is passed.
func TestHPETPeriodicComparator(t *testing.T) {
	h, c, _ := newTestHPET(t)
	hpetWrite(h, HPETTnCfg(0), HPETTnEnable|HPETTnPeriodic|HPETTnSetVal|20<<9, 8)
	hpetWrite(h, HPETTnCmp(0), 62500, 8) // first at 1 ms (SETVAL)
	hpetWrite(h, HPETTnCmp(0), 62500, 8) // then every 1 ms
	hpetWrite(h, HPETCfg, HPETCfgEnable, 8)
	c.Advance(2500 * time.Microsecond)
	if got := hpetRead(h, HPETTnCmp(0), 8); got != 3*62500 {
		t.Fatalf("comparator %d at 2.5 ms, want %d", got, 3*62500)
	}
}

// A level-triggered timer holds its line and ISR bit until the guest
// writes the bit back.
func TestHPETLevel(t *testing.T) {
	h, c, l := newTestHPET(t)
	hpetWrite(h, HPETTnCfg(0), HPETTnEnable|HPETTnLevel|HPETTnPeriodic|HPETTnSetVal|20<<9, 8)
	hpetWrite(h, HPETTnCmp(0), 625, 8)
	hpetWrite(h, HPETTnCmp(0), 6250, 8)
	hpetWrite(h, HPETCfg, HPETCfgEnable, 8)
	c.Advance(time.Millisecond)
	if !l.High(20) || hpetRead(h, HPETStatus, 8) != 1 || l.Rises(20) != 1 {
		t.Fatalf("level: line %v, ISR %#x, %d rises", l.High(20), hpetRead(h, HPETStatus, 8), l.Rises(20))
	}
	hpetWrite(h, HPETStatus, 1, 8)
	if l.High(20) || hpetRead(h, HPETStatus, 8) != 0 {
		t.Fatal("ISR write did not lower the line")
	}
	c.Advance(200 * time.Microsecond)
	if l.Rises(20) != 2 {
		t.Fatalf("periodic level timer after the ack: %d rises", l.Rises(20))
	}
}

func TestHPETSaveLoad(t *testing.T) {
	h, c, _ := newTestHPET(t)
	hpetWrite(h, HPETTnCfg(1), HPETTnEnable|HPETTnPeriodic|HPETTnSetVal|22<<9, 8)
	hpetWrite(h, HPETTnCmp(1), 62500, 8)
	hpetWrite(h, HPETTnCmp(1), 62500, 8)
	hpetWrite(h, HPETCfg, HPETCfgEnable, 8)
	c.Advance(1500 * time.Microsecond)
	s := h.Save()
	if s.MC64 != 93750 || s.Timers[1].Cmp != 2*62500 || s.Period[1] != 62500 || s.Config != HPETCfgEnable {
		t.Fatalf("saved %+v", s)
	}
	n, c2, l := newTestHPET(t)
	c2.Advance(time.Hour)
	if err := n.Load(s); err != nil {
		t.Fatal(err)
	}
	if got := hpetRead(n, HPETCounter, 8); got != 93750 {
		t.Fatalf("restored counter %d", got)
	}
	c2.Advance(10 * time.Millisecond)
	if got := l.Rises(22); got < 9 || got > 11 {
		t.Fatalf("restored periodic timer: %d interrupts in 10 ms", got)
	}
	bad := s
	bad.Capability = 0x8086a201
	if err := n.Load(bad); err == nil {
		t.Fatal("a foreign capability loaded")
	}
	n.Reset()
	if hpetRead(n, HPETCfg, 8) != 0 || hpetRead(n, HPETTnCmp(1), 8) != math.MaxUint64 {
		t.Fatal("Reset kept state")
	}
}
