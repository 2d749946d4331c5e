package platform

import (
	"encoding/binary"
	"testing"
	"time"
)

func newTestPM(t *testing.T) (*PMTimer, *fakeClock, *irqLog) {
	t.Helper()
	c := newFakeClock(rtcWall)
	l := newIRQLog()
	p := NewPMTimer(c, l.fn())
	t.Cleanup(p.Close)
	return p, c, l
}

func pmRead(p *PMTimer) uint32 {
	b := make([]byte, 4)
	p.TmrPIO(false, b)
	return binary.LittleEndian.Uint32(b)
}

func evtRead(p *PMTimer, off, n int) uint32 {
	b := make([]byte, n)
	p.EvtPIO(off, false, b)
	return uint32(leValue(b))
}

func evtWrite(p *PMTimer, off int, v uint32, n int) { p.EvtPIO(off, true, leBytes(uint64(v), n)) }

func TestPMTimerRate(t *testing.T) {
	p, c, _ := newTestPM(t)
	for _, c2 := range []struct {
		step time.Duration
		want uint32
	}{{0, 0}, {time.Second, PMTimerHz}, {time.Hour, uint32(uint64(PMTimerHz) * 3601 % (1 << 32))}, {10 * time.Hour, uint32(uint64(PMTimerHz) * 39601 % (1 << 32))}} {
		c.Advance(c2.step)
		if got := pmRead(p); got != c2.want {
			t.Errorf("after +%v: %d, want %d", c2.step, got, c2.want)
		}
	}
}

// TMR_VAL takes 4-byte reads only (handle_pmt_io); writes are dropped.
func TestPMTimerBadAccess(t *testing.T) {
	p, c, _ := newTestPM(t)
	c.Advance(time.Second)
	for _, n := range []int{1, 2, 8} {
		b := make([]byte, n)
		p.TmrPIO(false, b)
		for _, x := range b {
			if x != 0xff {
				t.Errorf("%d-byte read: % x", n, b)
			}
		}
	}
	p.TmrPIO(true, []byte{0, 0, 0, 0})
	if got := pmRead(p); got != PMTimerHz {
		t.Fatalf("a write moved the counter to %d", got)
	}
}

// TMR_STS is set when the counter's top bit flips; with TMR_EN that raises
// SCI, at the flip, without the guest looking; writing 1 clears it.
func TestPMTimerOverflowSCI(t *testing.T) {
	p, c, l := newTestPM(t)
	evtWrite(p, 2, PMTmrSts, 2) // TMR_EN
	if got := evtRead(p, 0, 4); got != PMTmrSts<<16 {
		t.Fatalf("STS|EN = %#x", got)
	}
	flip := time.Duration(uint64(pmTmrMSB) * uint64(time.Second) / PMTimerHz)
	c.Advance(flip - time.Second)
	if l.High(IRQSCI) {
		t.Fatal("SCI before the flip")
	}
	c.Advance(time.Second + 2*time.Millisecond)
	if !l.High(IRQSCI) {
		t.Fatal("no SCI at the top bit's flip")
	}
	if got := evtRead(p, 0, 2); got != PMTmrSts {
		t.Fatalf("PM1a_STS %#x", got)
	}
	evtWrite(p, 0, PMTmrSts, 1)
	if l.High(IRQSCI) || evtRead(p, 0, 2) != 0 {
		t.Fatal("writing TMR_STS did not clear it and SCI")
	}
	// Disabled: the flag still appears, SCI stays low, no timer runs.
	evtWrite(p, 2, 0, 2)
	if c.pending() != 0 {
		t.Fatal("a timer without TMR_EN")
	}
	c.Advance(flip)
	if l.High(IRQSCI) || evtRead(p, 0, 2) != PMTmrSts {
		t.Fatal("TMR_STS without TMR_EN")
	}
}

// The event block byte by byte, as handle_evt_io: reads shifted to the
// offset, STS bytes write-1-to-clear, EN bytes stored; offsets past the
// block read 0 and take nothing.
func TestPMEventBlockBytes(t *testing.T) {
	p, _, l := newTestPM(t)
	p.Button(true)
	p.Button(false)
	if l.High(IRQSCI) {
		t.Fatal("SCI with nothing enabled")
	}
	evtWrite(p, 3, PMPwrBtnSts>>8, 1) // PWRBTN_EN via the high byte
	if !l.High(IRQSCI) {
		t.Fatal("no SCI with PWRBTN enabled")
	}
	for _, c := range []struct {
		off, n int
		want   uint32
	}{
		{0, 4, PMPwrBtnSts | PMSlpBtnSts | PMPwrBtnSts<<16},
		{1, 1, (PMPwrBtnSts | PMSlpBtnSts) >> 8},
		{2, 2, PMPwrBtnSts},
		{3, 1, PMPwrBtnSts >> 8},
		{3, 2, PMPwrBtnSts >> 8},
		{4, 1, 0},
	} {
		if got := evtRead(p, c.off, c.n); got != c.want {
			t.Errorf("%d bytes at +%d: %#x, want %#x", c.n, c.off, got, c.want)
		}
	}
	evtWrite(p, 1, PMPwrBtnSts>>8, 1)
	if l.High(IRQSCI) {
		t.Fatal("SCI after PWRBTN_STS was cleared")
	}
	evtWrite(p, 4, 0xffffffff, 4) // beyond the block: nothing
	if got := evtRead(p, 0, 4); got != PMSlpBtnSts|PMPwrBtnSts<<16 {
		t.Fatalf("after a write past the block: %#x", got)
	}
}

func TestPMTimerSaveLoadReset(t *testing.T) {
	p, c, _ := newTestPM(t)
	c.Advance(2 * time.Second)
	evtWrite(p, 2, PMGblSts, 2)
	s := p.Save()
	if s.TmrVal != 2*PMTimerHz || s.PM1aEn != PMGblSts {
		t.Fatalf("saved %+v", s)
	}
	n, c2, l := newTestPM(t)
	c2.Advance(time.Hour)
	n.Load(PMTimerState{TmrVal: s.TmrVal, PM1aSts: PMGblSts, PM1aEn: PMGblSts})
	if !l.High(IRQSCI) {
		t.Fatal("SCI does not follow the loaded registers")
	}
	c2.Advance(time.Second)
	if got := pmRead(n); got != 3*PMTimerHz {
		t.Fatalf("restored counter %d, want %d", got, 3*PMTimerHz)
	}
	n.Reset()
	if got := pmRead(n); got != 0 {
		t.Fatalf("after Reset: %d", got)
	}
}
