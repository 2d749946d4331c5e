package platform

import (
	"testing"
	"time"
)

// FuzzPlatformAccess drives the three devices' register decode with
// guest-chosen sequences of port and MMIO accesses (any offset, size and
// value) and time steps: nothing panics, no timer is armed shorter than a
// periodic timer may run too often, and save/load round-trips.
func FuzzPlatformAccess(f *testing.F) {
	f.Add([]byte{0, 0x70, 0x0b, 0, 0x71, 0x42, 3, 10, 1, 0x0a, 0x21})
	f.Add([]byte{2, 0x10, 1, 2, 0x00, 0x01, 2, 0x08, 0x01, 3, 200})
	f.Add([]byte{1, 2, 0xff, 1, 8, 0, 3, 50})
	f.Fuzz(func(t *testing.T, ops []byte) {
		c := newFakeClock(rtcWall)
		l := newIRQLog()
		r, p, h := NewRTC(c, l.fn()), NewPMTimer(c, l.fn()), NewHPET(c, l.fn())
		defer r.Close()
		defer p.Close()
		defer h.Close()
		for n := 0; len(ops) >= 3 && n < 64; n++ {
			op, a, v := ops[0], ops[1], ops[2]
			ops = ops[3:]
			size := 1 << (v & 3) // 1, 2, 4, 8
			if v&4 != 0 {
				size = int(v>>3) % 17 // odd sizes too
			}
			data := make([]byte, size)
			for i := range data {
				data[i] = v ^ byte(i*37)
			}
			write := a&0x80 != 0
			switch op % 5 {
			case 0:
				r.PIO(RTCIndexPort+uint16(a&1), write, data[:min(len(data), 1+int(v>>7))])
				r.PIO(RTCIndexPort+uint16(a&1), write, data)
			case 1:
				p.EvtPIO(int(a&7), write, data)
				p.TmrPIO(write, data)
			case 2:
				off := uint64(a)<<3 | uint64(v&7)
				h.MMIO(off, write, data)
				h.MMIO(off&^7, true, []byte{v, v, v, v, v, v, v, v})
			case 3:
				c.Advance(time.Duration(v) * time.Duration(v) * time.Microsecond)
			case 4:
				if err := r.Load(r.Save()); err != nil {
					t.Fatalf("RTC round trip: %v", err)
				}
				p.Load(p.Save())
				if err := h.Load(h.Save()); err != nil {
					t.Fatalf("HPET round trip: %v", err)
				}
			}
			// With no more than MinPeriod passing per timer run, a periodic
			// timer set this way fires at most window/MinPeriod times.
			before := l.Rises(IRQRTC) + l.Rises(20) + l.Rises(21) + l.Rises(22) + l.Rises(23) + l.Rises(IRQPIT)
			c.Advance(time.Millisecond)
			after := l.Rises(IRQRTC) + l.Rises(20) + l.Rises(21) + l.Rises(22) + l.Rises(23) + l.Rises(IRQPIT)
			if n := after - before; n > 4*int(time.Millisecond/MinPeriod)+8 {
				t.Fatalf("%d interrupts in 1 ms: a timer runs faster than %v", n, MinPeriod)
			}
		}
	})
}
