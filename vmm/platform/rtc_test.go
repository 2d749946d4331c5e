package platform

import (
	"testing"
	"time"
)

// A Sunday afternoon: 2026-11-29 13:05:09.25 UTC.
var rtcWall = time.Date(2026, 11, 29, 13, 5, 9, 250_000_000, time.UTC)

func newTestRTC(t *testing.T) (*RTC, *fakeClock, *irqLog) {
	t.Helper()
	c := newFakeClock(rtcWall)
	l := newIRQLog()
	r := NewRTC(c, l.fn())
	t.Cleanup(r.Close)
	return r, c, l
}

func cmosWrite(r *RTC, i, v byte) {
	r.PIO(RTCIndexPort, true, []byte{i})
	r.PIO(RTCDataPort, true, []byte{v})
}

func cmosRead(r *RTC, i byte) byte {
	r.PIO(RTCIndexPort, true, []byte{i})
	b := []byte{0}
	r.PIO(RTCDataPort, false, b)
	return b[0]
}

func TestRTCResetValues(t *testing.T) {
	r, _, _ := newTestRTC(t)
	for _, c := range []struct {
		reg  byte
		want byte
	}{{RTCRegA, 0x26}, {RTCRegB, RTC24H}, {RTCRegC, 0}, {RTCRegD, RTCVRT}} {
		if got := cmosRead(r, c.reg); got != c.want {
			t.Errorf("register %#x = %#x, want %#x", c.reg, got, c.want)
		}
	}
	b := []byte{0}
	r.PIO(RTCIndexPort, false, b)
	if b[0] != 0xff {
		t.Errorf("index port reads %#x, want 0xff", b[0])
	}
}

// Wrong-size accesses read all-ones and write nothing (handle_rtc_io).
func TestRTCBadAccess(t *testing.T) {
	r, _, _ := newTestRTC(t)
	cmosWrite(r, 0x20, 0x5a)
	for _, n := range []int{0, 2, 4} {
		b := make([]byte, n)
		r.PIO(RTCDataPort, false, b)
		for _, x := range b {
			if x != 0xff {
				t.Errorf("%d-byte read: % x", n, b)
			}
		}
		r.PIO(RTCIndexPort, true, append(make([]byte, 0, n), make([]byte, n)...))
	}
	r.PIO(RTCIndexPort, true, []byte{0x21, 0x00})
	if got := cmosRead(r, 0x20); got != 0x5a {
		t.Errorf("a 2-byte index write changed things: byte 0x20 = %#x", got)
	}
	b := []byte{0}
	r.PIO(0x72, false, b)
	if b[0] != 0xff {
		t.Errorf("port 0x72 read %#x", b[0])
	}
}

// The time registers in each of register B's forms.
func TestRTCTimeFormats(t *testing.T) {
	for _, c := range []struct {
		name string
		b    byte
		want [7]byte // sec, min, hour, wday, mday, month, year
	}{
		{"24h BCD", RTC24H, [7]byte{0x09, 0x05, 0x13, 0x00, 0x29, 0x11, 0x26}},
		{"24h binary", RTC24H | RTCDMBinary, [7]byte{9, 5, 13, 0, 29, 11, 26}},
		{"12h BCD (PM)", 0, [7]byte{0x09, 0x05, 0x81, 0x00, 0x29, 0x11, 0x26}},
		{"12h binary (PM)", RTCDMBinary, [7]byte{9, 5, 0x81, 0, 29, 11, 26}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, _, _ := newTestRTC(t)
			cmosWrite(r, RTCRegB, c.b)
			regs := []byte{RTCSeconds, RTCMinutes, RTCHours, RTCDayOfWeek, RTCDayOfMonth, RTCMonth, RTCYear}
			for i, reg := range regs {
				if got := cmosRead(r, reg); got != c.want[i] {
					t.Errorf("register %#x = %#x, want %#x", reg, got, c.want[i])
				}
			}
		})
	}
}

// Writing a time register moves the guest's offset; the clock runs on
// from there. 12-hour 12 AM is midnight.
func TestRTCSetTime(t *testing.T) {
	r, c, _ := newTestRTC(t)
	cmosWrite(r, RTCHours, 0x02) // 02:05:09
	if got := r.Save().Offset; got != -11*3600 {
		t.Fatalf("offset %d, want %d", got, -11*3600)
	}
	c.Advance(60 * time.Second)
	if h, m := cmosRead(r, RTCHours), cmosRead(r, RTCMinutes); h != 0x02 || m != 0x06 {
		t.Fatalf("a minute later: %#x:%#x", h, m)
	}
	cmosWrite(r, RTCRegB, 0) // 12-hour BCD
	cmosWrite(r, RTCHours, 0x12)
	if got := cmosRead(r, RTCHours); got != 0x12 {
		t.Fatalf("12 AM reads %#x", got)
	}
	if got := r.Save().Offset; got != -13*3600 {
		t.Fatalf("12 AM: offset %d, want %d", got, -13*3600)
	}
}

// In SET mode the registers hold what the guest writes; leaving it sets
// the clock from them.
func TestRTCSetMode(t *testing.T) {
	r, c, _ := newTestRTC(t)
	cmosWrite(r, RTCRegB, RTC24H|RTCSet)
	cmosWrite(r, RTCYear, 0x30)
	c.Advance(5 * time.Second)
	if got := cmosRead(r, RTCSeconds); got != 0x09 {
		t.Fatalf("seconds moved in SET mode: %#x", got)
	}
	if got := cmosRead(r, RTCYear); got != 0x30 {
		t.Fatalf("year %#x", got)
	}
	cmosWrite(r, RTCRegB, RTC24H)
	if got := cmosRead(r, RTCYear); got != 0x30 {
		t.Fatalf("after SET: year %#x, want 0x30", got)
	}
}

func TestRTCUpdateInProgress(t *testing.T) {
	r, c, _ := newTestRTC(t)
	if cmosRead(r, RTCRegA)&RTCUIP != 0 {
		t.Fatal("UIP at .25 s")
	}
	c.Advance(750*time.Millisecond - 100*time.Microsecond) // 100 µs before the update
	if cmosRead(r, RTCRegA)&RTCUIP == 0 {
		t.Fatal("no UIP 100 µs before the update")
	}
	cmosWrite(r, RTCRegA, 0xa6) // UIP is read-only
	cmosWrite(r, RTCRegB, RTC24H|RTCSet)
	if got := cmosRead(r, RTCRegA); got != 0x26 {
		t.Fatalf("register A in SET mode near the update: %#x, want 0x26", got)
	}
}

// Register A's rate and divider give the periodic interrupt's rate; a
// rate above what Xen's vpt allows runs at 100 µs; a divider in reset
// stops it.
func TestRTCPeriodicRates(t *testing.T) {
	for _, c := range []struct {
		a      byte
		window time.Duration
		want   int
	}{
		{0x26, 100 * time.Millisecond, 102}, // 1024 Hz: 976.5625 µs
		{0x2f, time.Second, 2},              // 2 Hz
		{0x21, time.Second, 256},            // rate 1 at 32 kHz acts as 8: 256 Hz
		{0x23, 10 * time.Millisecond, 81},   // 8192 Hz: 122 µs
		{0x01, 10 * time.Millisecond, 100},  // 32768 Hz asked, clamped to 100 µs
		{0x11, 10 * time.Millisecond, 100},  // the same with the 1 MHz divider
		{0x20, time.Second, 0},              // rate 0: off
		{0x66, time.Second, 0},              // divider in reset: off
		{0x76, time.Second, 0},              // divider in reset: off
	} {
		r, clk, l := newTestRTC(t)
		cmosWrite(r, RTCRegA, c.a)
		cmosWrite(r, RTCRegB, RTC24H|RTCPIE)
		clk.Advance(c.window)
		// Each tick pulses IRQ 8 (deassert, assert), counted as a rise.
		if got := l.Rises(IRQRTC); got < c.want-1 || got > c.want+1 {
			t.Errorf("A=%#x: %d interrupts in %v, want %d", c.a, got, c.window, c.want)
		}
		if c.want > 0 && cmosRead(r, RTCRegC)&(RTCPF|RTCIRQF) != RTCPF|RTCIRQF {
			t.Errorf("A=%#x: register C lacks PF|IRQF", c.a)
		}
		if l.High(IRQRTC) {
			t.Errorf("A=%#x: IRQ 8 high after register C was read", c.a)
		}
	}
}

// Without PIE no timer runs, and PF still reads as set once a period
// passed (check_for_pf_ticks); register C reads clear.
func TestRTCPeriodicFlagWithoutInterrupt(t *testing.T) {
	r, c, l := newTestRTC(t)
	cmosWrite(r, RTCRegA, 0x2f) // 500 ms
	cmosRead(r, RTCRegC)
	if n := c.pending(); n != 0 {
		t.Fatalf("%d timers without an enabled interrupt", n)
	}
	c.Advance(600 * time.Millisecond)
	if got := cmosRead(r, RTCRegC); got&RTCPF == 0 || got&RTCIRQF != 0 {
		t.Fatalf("register C %#x, want PF without IRQF", got)
	}
	if got := cmosRead(r, RTCRegC); got != 0 {
		t.Fatalf("register C not cleared by a read: %#x", got)
	}
	if l.Rises(IRQRTC) != 0 {
		t.Fatal("an interrupt without PIE")
	}
	// Enabling PIE with PF pending raises the interrupt at once.
	c.Advance(time.Second)
	cmosWrite(r, RTCRegB, RTC24H|RTCPIE)
	if l.Rises(IRQRTC) != 1 || !l.High(IRQRTC) {
		t.Fatalf("PIE with PF pending: %d interrupts", l.Rises(IRQRTC))
	}
}

// UIE: an interrupt at the next second, the next only once register C was
// read (Xen's update timer stops while UF is set).
func TestRTCUpdateInterrupt(t *testing.T) {
	r, c, l := newTestRTC(t)
	cmosRead(r, RTCRegC)
	cmosWrite(r, RTCRegB, RTC24H|RTCUIE)
	c.Advance(700 * time.Millisecond)
	if l.Rises(IRQRTC) != 0 {
		t.Fatal("an update interrupt before the second ended")
	}
	c.Advance(100 * time.Millisecond)
	if l.Rises(IRQRTC) != 1 {
		t.Fatalf("%d update interrupts at the second", l.Rises(IRQRTC))
	}
	c.Advance(3 * time.Second)
	if l.Rises(IRQRTC) != 1 {
		t.Fatalf("%d interrupts with UF unread", l.Rises(IRQRTC))
	}
	if got := cmosRead(r, RTCRegC); got != RTCUF|RTCIRQF {
		t.Fatalf("register C %#x", got)
	}
	c.Advance(time.Second)
	if l.Rises(IRQRTC) != 2 {
		t.Fatalf("%d interrupts after register C was read", l.Rises(IRQRTC))
	}
}

func TestRTCAlarm(t *testing.T) {
	for _, c := range []struct {
		name            string
		sec, min, hour  byte
		advance         time.Duration
		wantAfter       int
		wantBefore      time.Duration // no interrupt this long in
		unmatchableNone bool
	}{
		{"in 3 s", 0x12, 0x05, 0x13, 4 * time.Second, 1, 2 * time.Second, false},
		{"every second", 0xc0, 0xc0, 0xc0, 1 * time.Second, 1, 700 * time.Millisecond, false},
		{"next hour", 0x00, 0x00, 0xc0, 56 * time.Minute, 1, 54 * time.Minute, false},
		{"tomorrow", 0x00, 0x00, 0x13, 24 * time.Hour, 1, 23 * time.Hour, false},
		{"hour 0x25 never", 0x00, 0x00, 0x25, 48 * time.Hour, 0, 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, clk, l := newTestRTC(t)
			cmosRead(r, RTCRegC)
			cmosWrite(r, RTCSecondsAlarm, c.sec)
			cmosWrite(r, RTCMinutesAlarm, c.min)
			cmosWrite(r, RTCHoursAlarm, c.hour)
			cmosWrite(r, RTCRegB, RTC24H|RTCAIE)
			clk.Advance(c.wantBefore)
			if l.Rises(IRQRTC) != 0 {
				t.Fatalf("an alarm %v in", c.wantBefore)
			}
			clk.Advance(c.advance - c.wantBefore)
			if got := l.Rises(IRQRTC); got != c.wantAfter {
				t.Fatalf("%d alarms, want %d", got, c.wantAfter)
			}
			if c.wantAfter > 0 && cmosRead(r, RTCRegC)&(RTCAF|RTCIRQF) != RTCAF|RTCIRQF {
				t.Fatal("register C lacks AF|IRQF")
			}
		})
	}
}

// CMOS RAM beyond Xen's 14 bytes is plain storage; the index drops the NMI
// mask bit.
func TestRTCCMOSRAM(t *testing.T) {
	r, _, _ := newTestRTC(t)
	cmosWrite(r, 0x80|CMOSShutdownStatus, CMOSShutdownS3)
	if got := cmosRead(r, CMOSShutdownStatus); got != CMOSShutdownS3 {
		t.Fatalf("byte 0x0f = %#x", got)
	}
	if got := r.CMOS(CMOSShutdownStatus); got != CMOSShutdownS3 {
		t.Fatalf("CMOS(0x0f) = %#x", got)
	}
	cmosWrite(r, 0x7f, 0x11)
	if got := cmosRead(r, 0xff); got != 0x11 {
		t.Fatalf("byte 0x7f via index 0xff = %#x", got)
	}
	if err := r.SetCMOS(0x0f, 0); err != nil || r.CMOS(0x0f) != 0 {
		t.Fatalf("SetCMOS: %v", err)
	}
	for _, i := range []uint8{RTCRegB, 0x80} {
		if err := r.SetCMOS(i, 1); err == nil {
			t.Errorf("SetCMOS(%#x) accepted", i)
		}
	}
	cmosWrite(r, RTCRegC, 0xff)
	cmosWrite(r, RTCRegD, 0)
	if cmosRead(r, RTCRegC) != 0 || cmosRead(r, RTCRegD) != RTCVRT {
		t.Fatal("registers C and D took a write")
	}
}

func TestRTCSaveLoad(t *testing.T) {
	r, c, _ := newTestRTC(t)
	cmosWrite(r, RTCHours, 0x02)
	cmosWrite(r, 0x40, 0x99)
	cmosWrite(r, RTCRegA, 0x2f)
	cmosWrite(r, RTCRegB, RTC24H|RTCPIE)
	r.PIO(RTCIndexPort, true, []byte{0x41})
	s := r.Save()
	if s.Index != 0x41 || s.CMOS[0x40] != 0x99 || s.CMOS[RTCHours] != 0x02 || s.Offset != -11*3600 {
		t.Fatalf("saved %+v", s)
	}
	n, _, l := newTestRTC(t)
	n.clock = c
	if err := n.Load(s); err != nil {
		t.Fatal(err)
	}
	c.Advance(time.Second)
	if got := cmosRead(n, RTCHours); got != 0x02 {
		t.Fatalf("restored hours %#x", got)
	}
	if l.Rises(IRQRTC) < 1 {
		t.Fatal("the restored periodic interrupt does not run")
	}
	for _, bad := range []RTCState{{Index: 0x80}, {Offset: 1 << 40}, {Offset: -(1 << 40)}} {
		if err := n.Load(bad); err == nil {
			t.Errorf("Load(%+v) accepted", bad)
		}
	}
}

// Reset (S3) stops the periodic interrupt and keeps the CMOS; Close stops
// everything.
func TestRTCResetClose(t *testing.T) {
	r, c, l := newTestRTC(t)
	cmosWrite(r, 0x0f, 0xfe)
	cmosWrite(r, RTCRegB, RTC24H|RTCPIE|RTCUIE)
	c.Advance(10 * time.Millisecond)
	r.Reset()
	cmosRead(r, RTCRegC)
	n := l.Rises(IRQRTC)
	c.Advance(10 * time.Millisecond)
	if l.Rises(IRQRTC) != n {
		t.Fatal("the periodic interrupt runs after Reset")
	}
	if r.CMOS(0x0f) != 0xfe {
		t.Fatal("Reset lost the CMOS")
	}
	r.Close()
	c.Advance(5 * time.Second)
	if l.Rises(IRQRTC) != n || c.pending() != 0 {
		t.Fatalf("interrupts or timers after Close: %d pending", c.pending())
	}
}

// On the host's clock, timers and guest accesses run concurrently (run
// with -race); after Close nothing fires.
func TestDevicesHostClock(t *testing.T) {
	l := newIRQLog()
	c := HostClock()
	r, p, h := NewRTC(c, l.fn()), NewPMTimer(c, l.fn()), NewHPET(c, l.fn())
	cmosWrite(r, RTCRegA, 0x23)
	cmosWrite(r, RTCRegB, RTC24H|RTCPIE|RTCUIE)
	evtWrite(p, 2, PMTmrSts, 2)
	hpetWrite(h, HPETTnCfg(0), HPETTnEnable|HPETTnPeriodic|HPETTnSetVal|20<<9, 8)
	hpetWrite(h, HPETTnCmp(0), 6250, 8)
	hpetWrite(h, HPETTnCmp(0), 6250, 8)
	hpetWrite(h, HPETCfg, HPETCfgEnable, 8)
	// Until both have fired a few times (no time limit but the test's:
	// how soon the timers run depends on the host's load).
	last := pmRead(p)
	for l.Rises(IRQRTC) < 3 || l.Rises(20) < 3 {
		cmosRead(r, RTCRegC)
		hpetRead(h, HPETCounter, 8)
		if v := pmRead(p); v < last {
			t.Fatalf("PM timer went back: %d after %d", v, last)
		} else {
			last = v
		}
		time.Sleep(10 * time.Microsecond)
	}
	r.Close()
	p.Close()
	h.Close()
	n8, n20 := l.Rises(IRQRTC), l.Rises(20)
	time.Sleep(5 * time.Millisecond)
	if l.Rises(IRQRTC) != n8 || l.Rises(20) != n20 {
		t.Fatal("interrupts after Close")
	}
}
