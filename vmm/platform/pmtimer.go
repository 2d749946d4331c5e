package platform

import (
	"math/bits"
	"sync"
	"time"
)

// ACPI PM block locations (public/hvm/ioreq.h): hvmloader moves the block
// from V0 to V1 (HVM_PARAM_ACPI_IOPORTS_LOCATION 1) and its FADT names
// V1; vmm/acpi builds that FADT.
const (
	PM1aEvtV0 = 0x1f40
	PMTmrV0   = 0x1f48
	PM1aEvtV1 = 0xb000
	PMTmrV1   = 0xb008
	// PM1aEvtLen and PMTmrLen are the blocks Xen's pmtimer.c claims:
	// PM1a_STS and PM1a_EN, and TMR_VAL.
	PM1aEvtLen = 4
	PMTmrLen   = 4
)

// PMTimerHz is the ACPI PM timer's rate (FREQUENCE_PMTIMER).
const PMTimerHz = 3579545

// PM1a_STS and PM1a_EN bits Xen models.
const (
	PMTmrSts    = 1 << 0
	PMGblSts    = 1 << 5
	PMPwrBtnSts = 1 << 8
	PMSlpBtnSts = 1 << 9
	// pmSCIMask are the status bits that raise SCI when enabled.
	pmSCIMask = PMTmrSts | PMGblSts | PMPwrBtnSts | PMSlpBtnSts
)

// pmTmrMSB is TMR_VAL's top bit: the FADT sets TMR_VAL_EXT (32 bits).
const pmTmrMSB = 1 << 31

// PMTimerState is Xen's struct hvm_hw_pmtimer.
type PMTimerState struct {
	TmrVal  uint32
	PM1aSts uint16
	PM1aEn  uint16
}

// PMTimer is the ACPI PM1a event block (PM1a_STS and PM1a_EN) and the
// 32-bit PM timer at 3.579545 MHz from the host's monotonic clock, as
// Xen's pmtimer.c: TMR_STS is set whenever the counter's top bit flips,
// and SCI (IRQ 9) is high while PM1a_EN & PM1a_STS has a TMR, GBL, PWRBTN
// or SLPBTN bit. PM1a_CNT, between the two blocks, is not here (QEMU's on
// Xen; vmm/hvm's here).
type PMTimer struct {
	mu     sync.Mutex
	clock  Clock
	irq    IRQFunc
	closed bool

	base    uint32        // TMR_VAL at since
	since   time.Duration // when the counter was base
	lastTck uint64        // ticks since `since` at the last update
	sts, en uint16
	sci     bool
	timer   oneTimer // the next MSB flip, while TMR_EN is set
}

// NewPMTimer returns the PM block with the counter at 0 and SCI low.
func NewPMTimer(c Clock, irq IRQFunc) *PMTimer {
	return &PMTimer{clock: c, irq: irq, since: c.Now()}
}

// Close stops the PM timer's timer.
func (p *PMTimer) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	p.timer.stop()
}

// ticks is the PM timer ticks since p.since.
func (p *PMTimer) ticks() uint64 {
	d := p.clock.Now() - p.since
	if d < 0 {
		d = 0
	}
	hi, lo := bits.Mul64(uint64(d), PMTimerHz)
	q, _ := bits.Div64(hi, lo, 1e9) // hi < 2^22 < 1e9: no overflow
	return q
}

// update is pmt_update_time: the counter now, and TMR_STS if its top bit
// flipped (or a whole half period passed) since the last update.
func (p *PMTimer) update() uint32 {
	t := p.ticks()
	old := p.base + uint32(p.lastTck)
	val := p.base + uint32(t)
	if t-p.lastTck >= pmTmrMSB || (old^val)&pmTmrMSB != 0 {
		p.sts |= PMTmrSts
	}
	p.lastTck = t
	p.updateSCI()
	return val
}

// updateSCI is pmt_update_sci: SCI follows PM1a_EN & PM1a_STS.
func (p *PMTimer) updateSCI() {
	on := p.en&p.sts&pmSCIMask != 0
	if on != p.sci {
		p.sci = on
		p.irq.set(IRQSCI, on)
	}
}

// armFlip arms the timer for the next top-bit flip while TMR_EN is set
// (pmt_timer_callback's, 1 ms after it).
func (p *PMTimer) armFlip() {
	if p.en&PMTmrSts == 0 {
		p.timer.stop()
		return
	}
	val := p.base + uint32(p.lastTck)
	left := uint64(pmTmrMSB - val&(pmTmrMSB-1))
	d := time.Duration(left*1e9/PMTimerHz) + time.Millisecond
	p.timer.arm(p.clock, &p.mu, &p.closed, d, func() {
		p.update()
		p.armFlip()
	})
}

// EvtPIO is an access to the PM1a event block at off (0-3) from its start
// (handle_evt_io): byte by byte, PM1a_STS bits written as 1 clear, PM1a_EN
// bytes are stored; a read returns STS | EN<<16 shifted to off.
func (p *PMTimer) EvtPIO(off int, write bool, data []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.update()
	if !write {
		v := uint64(p.sts) | uint64(p.en)<<16
		for i := range data {
			data[i] = 0
			if sh := 8 * (off + i); off+i >= 0 && sh < 32 {
				data[i] = byte(v >> sh)
			}
		}
		return
	}
	for i, b := range data {
		switch off + i {
		case 0:
			p.sts &^= uint16(b)
		case 1:
			p.sts &^= uint16(b) << 8
		case 2:
			p.en = p.en&0xff00 | uint16(b)
		case 3:
			p.en = p.en&0xff | uint16(b)<<8
		}
	}
	p.updateSCI()
	p.armFlip()
}

// TmrPIO is an access to TMR_VAL (handle_pmt_io): a 4-byte read returns
// the counter; any other size reads all-ones; writes are dropped.
func (p *PMTimer) TmrPIO(write bool, data []byte) {
	if write {
		return
	}
	if len(data) != 4 {
		fill(data, 0xff)
		return
	}
	p.mu.Lock()
	v := p.update()
	p.mu.Unlock()
	data[0], data[1], data[2], data[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

// Button raises PM1a_STS's PWRBTN (power) or SLPBTN bit, as
// hvm_acpi_power_button and hvm_acpi_sleep_button (xl trigger power and
// sleep), with SCI if it is enabled.
func (p *PMTimer) Button(power bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if power {
		p.sts |= PMPwrBtnSts
	} else {
		p.sts |= PMSlpBtnSts
	}
	p.updateSCI()
}

// Reset is pmtimer_reset (hvm_s3_suspend): the counter restarts from 0.
func (p *PMTimer) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.update()
	p.base, p.since, p.lastTck = 0, p.clock.Now(), 0
	p.armFlip()
}

// Save returns the PM block's state (pmtimer_save): the counter now, and
// TMR_STS if it flipped since the last look.
func (p *PMTimer) Save() PMTimerState {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.update()
	return PMTimerState{TmrVal: v, PM1aSts: p.sts, PM1aEn: p.en}
}

// Load replaces the PM block's state (pmtimer_load): the counter runs on
// from the saved value, and SCI follows the saved registers.
func (p *PMTimer) Load(s PMTimerState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.base, p.since, p.lastTck = s.TmrVal, p.clock.Now(), 0
	p.sts, p.en = s.PM1aSts, s.PM1aEn
	p.updateSCI()
	p.armFlip()
}
