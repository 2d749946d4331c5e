package platform

import (
	"fmt"
	"sync"
	"time"
)

// RTC ports and registers (asm/mc146818rtc.h).
const (
	RTCIndexPort = 0x70 // CMOS index; bit 7 is the NMI mask, not kept
	RTCDataPort  = 0x71

	RTCSeconds      = 0x00
	RTCSecondsAlarm = 0x01
	RTCMinutes      = 0x02
	RTCMinutesAlarm = 0x03
	RTCHours        = 0x04
	RTCHoursAlarm   = 0x05
	RTCDayOfWeek    = 0x06
	RTCDayOfMonth   = 0x07
	RTCMonth        = 0x08
	RTCYear         = 0x09
	RTCRegA         = 0x0a
	RTCRegB         = 0x0b
	RTCRegC         = 0x0c
	RTCRegD         = 0x0d
	// RTCXenBytes is RTC_CMOS_SIZE: the bytes Xen's RTC owns and its
	// HVM_CONTEXT record carries. The rest of the CMOS is QEMU's RAM on
	// Xen, not in Xen's stream.
	RTCXenBytes = 14
	// CMOSShutdownStatus is the byte the BIOS reads at its reset vector:
	// CMOSShutdownS3 there sends POST to the S3 resume path (QEMU's
	// suspend notifier stores it; ROMBIOS's CMOS_SHUTDOWN_S3).
	CMOSShutdownStatus = 0x0f
	CMOSShutdownS3     = 0xfe
	// CMOSSize is the MC146818's 128 bytes.
	CMOSSize = 128
)

// Register A, B, C and D bits.
const (
	RTCRateSelect = 0x0f
	RTCDivCtl     = 0x70
	// Register A's divider: the 4.194304 MHz, 1.048576 MHz and 32.768 kHz
	// time bases; any other value holds the divider in reset.
	RTCRefClk4MHz  = 0x00
	RTCRefClk1MHz  = 0x10
	RTCRefClk32KHz = 0x20
	RTCUIP         = 0x80

	RTCDSTEn    = 0x01
	RTC24H      = 0x02
	RTCDMBinary = 0x04
	RTCSQWE     = 0x08
	RTCUIE      = 0x10
	RTCAIE      = 0x20
	RTCPIE      = 0x40
	RTCSet      = 0x80

	RTCUF   = 0x10
	RTCAF   = 0x20
	RTCPF   = 0x40
	RTCIRQF = 0x80

	RTCVRT = 0x80
)

// rtcUIPWindow is how long before each second's update UIP reads 1 (the
// last 244 µs, as Xen's update_in_progress).
const rtcUIPWindow = 244 * time.Microsecond

// RTCState is the RTC's saved state: Xen's struct hvm_hw_rtc (CMOS bytes
// 0-13 as they read now, the index, and the guest's offset in seconds from
// host time) plus the CMOS RAM bytes 14-127, which on Xen live in QEMU.
type RTCState struct {
	CMOS   [CMOSSize]byte
	Index  uint8
	Offset int64 // seconds: guest time is host wall-clock time plus this
}

// RTC is the MC146818 RTC and CMOS at ports 0x70 and 0x71 (Xen's rtc.c in
// its "no ack" mode, which Xen always uses): the time registers in BCD or
// binary and 12- or 24-hour form per register B, computed from the host's
// wall clock plus the guest's offset (set by writing them); register A's
// rate and divider for the periodic interrupt; the update-ended and alarm
// interrupts; register C's flags, cleared by reading it; UIP in the last
// 244 µs of every second. IRQ 8 is pulsed when a flag that register B
// enables is raised, and lowered when register C is read.
type RTC struct {
	mu     sync.Mutex
	clock  Clock
	irq    IRQFunc
	closed bool

	cmos   [CMOSSize]byte
	index  uint8
	offset int64 // seconds
	// cur is the guest time, in seconds, of the last copy into the time
	// registers (Xen's current_tm): writes shift offset by the registers'
	// time minus cur (rtc_set_time).
	cur int64

	period     time.Duration // the periodic rate (0: off), unclamped
	start      time.Duration // Xen's start_time: the periodic grid's origin
	checkSince time.Duration // check_for_pf_ticks' last look
	lastSec    int64         // the guest second of the last UF/AF look

	ptimer, utimer, atimer oneTimer
}

// NewRTC returns the RTC as rtc_init leaves it: register A 0x26 (32 kHz,
// rate 6), B 24-hour BCD, C clear, D valid RAM and time; the time
// registers from the host clock (offset 0).
func NewRTC(c Clock, irq IRQFunc) *RTC {
	r := &RTC{clock: c, irq: irq}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cmos[RTCRegA] = RTCRefClk32KHz | 6
	r.cmos[RTCRegB] = RTC24H
	r.cmos[RTCRegD] = RTCVRT
	r.start = c.Now()
	r.copyDate()
	r.lastSec = r.guestNow().Unix()
	return r
}

// Close stops the RTC's timers; it raises no interrupt afterwards.
func (r *RTC) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	r.ptimer.stop()
	r.utimer.stop()
	r.atimer.stop()
}

// Reset is rtc_reset (hvm_s3_suspend): the periodic timer stops; the CMOS
// and the time are kept.
func (r *RTC) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ptimer.stop()
	r.period = 0
}

// guestNow is the guest's wall-clock time.
func (r *RTC) guestNow() time.Time {
	w := r.clock.Wall()
	return time.Unix(w.Unix()+r.offset, int64(w.Nanosecond())).UTC()
}

func (r *RTC) binary() bool { return r.cmos[RTCRegB]&RTCDMBinary != 0 }

func (r *RTC) toBCD(v int) byte {
	if r.binary() {
		return byte(v)
	}
	return byte(v/10<<4 | v%10)
}

func (r *RTC) fromBCD(b byte) int {
	if r.binary() {
		return int(b)
	}
	return int(b>>4)*10 + int(b&0xf)
}

// hour is convert_hour: a raw hours byte as 0-23 (12-hour form: bit 7 PM).
func (r *RTC) hour(raw byte) int {
	h := r.fromBCD(raw & 0x7f)
	if r.cmos[RTCRegB]&RTC24H == 0 {
		h %= 12
		if raw&0x80 != 0 {
			h += 12
		}
	}
	return h
}

// copyDate is gmtime(get_localtime) then rtc_copy_date.
func (r *RTC) copyDate() {
	t := r.guestNow()
	r.cur = t.Unix()
	r.cmos[RTCSeconds] = r.toBCD(t.Second())
	r.cmos[RTCMinutes] = r.toBCD(t.Minute())
	if r.cmos[RTCRegB]&RTC24H != 0 {
		r.cmos[RTCHours] = r.toBCD(t.Hour())
	} else {
		h := t.Hour() % 12
		if h == 0 {
			h = 12
		}
		r.cmos[RTCHours] = r.toBCD(h)
		if t.Hour() >= 12 {
			r.cmos[RTCHours] |= 0x80
		}
	}
	r.cmos[RTCDayOfWeek] = r.toBCD(int(t.Weekday()))
	r.cmos[RTCDayOfMonth] = r.toBCD(t.Day())
	r.cmos[RTCMonth] = r.toBCD(int(t.Month()))
	r.cmos[RTCYear] = r.toBCD(t.Year() % 100)
}

// setTime is rtc_set_time: the offset moves by the registers' time minus
// the time last copied into them. Out-of-range fields normalise as mktime
// does (a day 0 is the last of the previous month).
func (r *RTC) setTime() {
	yr := 2000 + r.fromBCD(r.cmos[RTCYear])
	t := time.Date(yr, time.Month(r.fromBCD(r.cmos[RTCMonth])), r.fromBCD(r.cmos[RTCDayOfMonth]),
		r.hour(r.cmos[RTCHours]), r.fromBCD(r.cmos[RTCMinutes]), r.fromBCD(r.cmos[RTCSeconds]), 0, time.UTC)
	r.offset += t.Unix() - r.cur
	r.cur = t.Unix()
}

// refresh raises the flags nobody armed a timer for: PF from the periodic
// grid when PIE is clear (check_for_pf_ticks), UF for a second boundary
// crossed, AF for an alarm second passed (Xen's update and alarm timers,
// evaluated when looked at). In SET mode the clock does not update.
func (r *RTC) refresh() {
	now := r.clock.Now()
	if r.period != 0 && r.cmos[RTCRegB]&RTCPIE == 0 {
		if (now-r.start)/r.period != (r.checkSince-r.start)/r.period {
			r.cmos[RTCRegC] |= RTCPF
		}
		r.checkSince = now
	}
	sec := r.guestNow().Unix()
	if r.cmos[RTCRegB]&RTCSet != 0 {
		r.lastSec = sec
		return
	}
	if sec > r.lastSec {
		r.cmos[RTCRegC] |= RTCUF
		if a, ok := r.nextAlarm(r.lastSec); ok && a <= sec {
			r.cmos[RTCRegC] |= RTCAF
		}
	}
	r.lastSec = sec
}

// nextAlarm is the first guest second after `after` whose time of day
// matches the alarm registers (a register with bits 7:6 set matches every
// value); ok is false when no time matches (a register out of range).
func (r *RTC) nextAlarm(after int64) (int64, bool) {
	dontCare := func(b byte) bool { return b&0xc0 == 0xc0 }
	as, am, ah := r.cmos[RTCSecondsAlarm], r.cmos[RTCMinutesAlarm], r.cmos[RTCHoursAlarm]
	sec, min, hr := r.fromBCD(as), r.fromBCD(am), r.hour(ah)
	if (!dontCare(as) && sec > 59) || (!dontCare(am) && min > 59) || (!dontCare(ah) && hr > 23) {
		return 0, false
	}
	day := after - ((after%86400)+86400)%86400 // floor to the day
	first := after + 1 - day                   // second of day to start from, 1..86400
	for m := first / 60; m < 2*1440; m++ {
		h, mm := (m/60)%24, m%60
		if (!dontCare(ah) && int(h) != hr) || (!dontCare(am) && int(mm) != min) {
			continue
		}
		base := m * 60
		if dontCare(as) {
			s := base
			if s < first {
				s = first
			}
			if s < base+60 {
				return day + s, true
			}
			continue
		}
		if s := base + int64(sec); s >= first {
			return day + s, true
		}
	}
	return 0, false
}

// updateIRQ is rtc_update_irq in no-ack mode: a raised flag that register
// B enables sets IRQF and pulses IRQ 8.
func (r *RTC) updateIRQ() {
	if r.cmos[RTCRegB]&r.cmos[RTCRegC]&(RTCPF|RTCAF|RTCUF) == 0 {
		return
	}
	r.cmos[RTCRegC] |= RTCIRQF
	r.irq.pulseISA(IRQRTC)
}

// timerUpdate is rtc_timer_update: register A's divider and rate select
// the periodic rate (32 kHz: rates 1 and 2 act as 8 and 9; the 1 and 4 MHz
// settings as 32 kHz without that; any other divider stops it); with PIE
// a timer raises PF and the interrupt, without it PF is computed when read.
func (r *RTC) timerUpdate() {
	code := int(r.cmos[RTCRegA] & RTCRateSelect)
	var period time.Duration
	switch r.cmos[RTCRegA] & RTCDivCtl {
	case RTCRefClk32KHz:
		if code != 0 && code <= 2 {
			code += 7
		}
		fallthrough
	case RTCRefClk1MHz, RTCRefClk4MHz:
		if code != 0 {
			period = time.Duration((uint64(1)<<(code-1)*1e9 + 16384) / 32768)
		}
	}
	if period == 0 {
		r.ptimer.stop()
		r.period = 0
		return
	}
	if period == r.period {
		return
	}
	r.period = period
	now := r.clock.Now()
	if r.cmos[RTCRegB]&RTCPIE == 0 {
		r.checkSince = now
		return
	}
	r.armPeriodic(period - (now-r.start)%period)
}

func (r *RTC) armPeriodic(d time.Duration) {
	r.ptimer.arm(r.clock, &r.mu, &r.closed, d, func() {
		r.cmos[RTCRegC] |= RTCPF | RTCIRQF
		r.irq.pulseISA(IRQRTC)
		p := max(r.period, MinPeriod)
		now := r.clock.Now()
		r.armPeriodic(p - (now-r.start)%p)
	})
}

// armEvents arms the update and alarm timers when their interrupts are
// enabled and their flags clear (check_update_timer, alarm_timer_update);
// otherwise the flags are computed when register C is read.
func (r *RTC) armEvents() {
	r.utimer.stop()
	r.atimer.stop()
	b, c := r.cmos[RTCRegB], r.cmos[RTCRegC]
	if b&RTCSet != 0 {
		return
	}
	now := r.guestNow()
	toNext := time.Second - time.Duration(now.Nanosecond())
	if b&RTCUIE != 0 && c&RTCUF == 0 {
		r.utimer.arm(r.clock, &r.mu, &r.closed, toNext, r.fire)
	}
	if b&RTCAIE != 0 && c&RTCAF == 0 {
		if a, ok := r.nextAlarm(now.Unix()); ok {
			r.atimer.arm(r.clock, &r.mu, &r.closed, toNext+time.Duration(a-now.Unix()-1)*time.Second, r.fire)
		}
	}
}

// fire is the update or alarm timer: the flags as of now, the interrupt,
// the timers again.
func (r *RTC) fire() {
	r.refresh()
	r.updateIRQ()
	r.armEvents()
}

// PIO is an access to port 0x70 or 0x71 as handle_rtc_io: a multi-byte
// access reads all-ones and writes nothing; the index port reads 0xFF.
func (r *RTC) PIO(port uint16, write bool, data []byte) {
	if len(data) != 1 || (port != RTCIndexPort && port != RTCDataPort) {
		if !write {
			fill(data, 0xff)
		}
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if write {
		r.write(port, data[0])
		return
	}
	data[0] = r.read(port)
}

func (r *RTC) read(port uint16) byte {
	if port == RTCIndexPort {
		return 0xff
	}
	i := r.index
	switch i {
	case RTCSeconds, RTCMinutes, RTCHours, RTCDayOfWeek, RTCDayOfMonth, RTCMonth, RTCYear:
		if r.cmos[RTCRegB]&RTCSet == 0 {
			r.copyDate()
		}
		return r.cmos[i]
	case RTCRegA:
		v := r.cmos[i] &^ RTCUIP
		if r.cmos[RTCRegB]&RTCSet == 0 && time.Second-time.Duration(r.guestNow().Nanosecond()) <= rtcUIPWindow {
			v |= RTCUIP
		}
		return v
	case RTCRegC:
		r.refresh()
		v := r.cmos[i]
		if r.cmos[RTCRegB]&v&(RTCPF|RTCAF|RTCUF) != 0 {
			v |= RTCIRQF
		}
		r.cmos[i] = 0
		if v&RTCIRQF != 0 {
			r.irq.set(IRQRTC, false)
		}
		r.armEvents()
		return v
	}
	return r.cmos[i]
}

func (r *RTC) write(port uint16, v byte) {
	if port == RTCIndexPort {
		r.index = v & 0x7f
		return
	}
	i := r.index
	orig := r.cmos[i]
	switch i {
	case RTCSecondsAlarm, RTCMinutesAlarm, RTCHoursAlarm:
		r.refresh()
		r.cmos[i] = v
		r.armEvents()
	case RTCSeconds, RTCMinutes, RTCHours, RTCDayOfWeek, RTCDayOfMonth, RTCMonth, RTCYear:
		if r.cmos[RTCRegB]&RTCSet != 0 {
			r.cmos[i] = v
		} else {
			r.refresh()
			r.copyDate()
			r.cmos[i] = v
			r.setTime()
			r.lastSec = r.guestNow().Unix()
		}
		r.armEvents()
	case RTCRegA:
		r.cmos[i] = v&^RTCUIP | orig&RTCUIP
		if (v^orig)&^RTCUIP != 0 {
			r.timerUpdate()
		}
	case RTCRegB:
		r.refresh()
		if v&RTCSet != 0 {
			if orig&RTCSet == 0 {
				r.copyDate()
			}
		} else if orig&RTCSet != 0 {
			r.setTime()
			r.lastSec = r.guestNow().Unix()
		}
		r.cmos[i] = v
		r.updateIRQ()
		if (v^orig)&RTCPIE != 0 {
			r.ptimer.stop()
			r.period = 0
			r.timerUpdate()
		}
		r.armEvents()
	case RTCRegC, RTCRegD:
		// read-only
	default:
		r.cmos[i] = v // CMOS RAM
	}
}

// CMOS returns CMOS byte i (the time registers as they read now) without
// side effects, for the VMM's firmware; i is masked to 0-127.
func (r *RTC) CMOS(i uint8) byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	i &= 0x7f
	if i <= RTCYear && i != RTCSecondsAlarm && i != RTCMinutesAlarm && i != RTCHoursAlarm && r.cmos[RTCRegB]&RTCSet == 0 {
		r.copyDate()
	}
	return r.cmos[i]
}

// SetCMOS writes a CMOS RAM byte (index 14-127) for the VMM's firmware or
// device model (QEMU's suspend notifier writes the shutdown status).
func (r *RTC) SetCMOS(i uint8, v byte) error {
	if i < RTCXenBytes || i >= CMOSSize {
		return fmt.Errorf("rtc: CMOS byte %#x is not RAM", i)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cmos[i] = v
	return nil
}

// Save returns the RTC's state (rtc_save), the time registers as they
// read now unless the guest holds them in SET mode.
func (r *RTC) Save() RTCState {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refresh()
	if r.cmos[RTCRegB]&RTCSet == 0 {
		r.copyDate()
	}
	return RTCState{CMOS: r.cmos, Index: r.index, Offset: r.offset}
}

// Load replaces the RTC's state (rtc_load): the time registers from the
// host clock plus the saved offset, the periodic, update and alarm timers
// from the registers. An index beyond the CMOS or an offset beyond what
// the registers can express (years 1999 to 2276, from a host time within a
// few centuries) is refused.
func (r *RTC) Load(s RTCState) error {
	const limit = 1000 * 366 * 86400
	if s.Index >= CMOSSize {
		return fmt.Errorf("rtc: saved CMOS index %#x is beyond its %d bytes", s.Index, CMOSSize)
	}
	if s.Offset > limit || s.Offset < -limit {
		return fmt.Errorf("rtc: saved offset of %d s from host time", s.Offset)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cmos, r.index, r.offset = s.CMOS, s.Index, s.Offset
	r.cmos[RTCRegA] &^= RTCUIP
	if r.cmos[RTCRegB]&RTCSet == 0 {
		r.copyDate()
	} else {
		r.cur = r.guestNow().Unix()
	}
	r.lastSec = r.guestNow().Unix()
	r.ptimer.stop()
	r.period = 0
	r.timerUpdate()
	r.armEvents()
	return nil
}

func fill(b []byte, v byte) {
	for i := range b {
		b[i] = v
	}
}
