package hvm

import (
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/xenresume/xenresume/vmm/acpi"
	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/platform"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// offlinePlatform is an offline HVM domain with its platform devices; pio
// does port I/O as the machine's bus would (all-ones where nothing is).
func offlinePlatform(t *testing.T) (*Domain, *call, func(port uint16, write bool, data []byte)) {
	t.Helper()
	d, c, _ := offline(t)
	ports := map[uint16]machine.PIODevice{}
	d.newDevices(func(port uint16, n int, dev machine.PIODevice) {
		for i := 0; i < n; i++ {
			ports[port+uint16(i)] = dev
		}
	})
	t.Cleanup(d.Close)
	pio := func(port uint16, write bool, data []byte) {
		dev := ports[port]
		if dev == nil {
			unclaimed(write, data)
			return
		}
		if err := dev.PIO(nil, port, write, data); err != nil {
			t.Fatal(err)
		}
	}
	return d, c, pio
}

func allOnes(b []byte) bool {
	for _, x := range b {
		if x != 0xff {
			return false
		}
	}
	return true
}

// An HVM domain has the RTC, the PM block at V1 (where its FADT says) and
// the HPET with HPET_ENABLED set; the guest's move of the PM block to V0
// moves it (pmtimer_change_ioport).
func TestPlatformDevicesHVM(t *testing.T) {
	d, c, pio := offlinePlatform(t)
	b := []byte{platform.RTCRegA}
	pio(0x70, true, b)
	pio(0x71, false, b)
	if b[0] != 0x26 {
		t.Errorf("RTC register A %#x", b[0])
	}
	if v, _ := d.Param(ParamHPETEnabled); v != 1 {
		t.Errorf("HPET_ENABLED %d", v)
	}
	tmr := func(port uint16) []byte {
		b := make([]byte, 4)
		pio(port, false, b)
		return b
	}
	if allOnes(tmr(platform.PMTmrV1)) || !allOnes(tmr(platform.PMTmrV0)) {
		t.Errorf("PM timer: V1 % x, V0 % x; want V1 only", tmr(platform.PMTmrV1), tmr(platform.PMTmrV0))
	}
	if ret, _ := param(t, c, hvmopSetParam, DomIDSelf, ParamACPIIOPortsLoc, 0); ret != 0 {
		t.Fatalf("set ACPI_IOPORTS_LOCATION 0: %d", ret)
	}
	if !allOnes(tmr(platform.PMTmrV1)) || allOnes(tmr(platform.PMTmrV0)) {
		t.Errorf("after the move: V1 % x, V0 % x; want V0 only", tmr(platform.PMTmrV1), tmr(platform.PMTmrV0))
	}
	e := make([]byte, 4)
	pio(platform.PM1aEvtV0, false, e)
	if binary.LittleEndian.Uint32(e) != 0 {
		t.Errorf("PM1a STS|EN at V0: % x", e)
	}
	id := make([]byte, 8)
	d.mmio(nil, platform.HPETBase, false, id)
	if got := binary.LittleEndian.Uint64(id); got != platform.HPETCapabilities {
		t.Errorf("HPET ID %#x", got)
	}
	d.mmio(nil, platform.HPETBase+platform.HPETSize, false, id)
	if !allOnes(id) {
		t.Errorf("past the HPET: % x", id)
	}
	d.mu.Lock()
	d.params[ParamHPETEnabled] = 0
	d.mu.Unlock()
	d.mmio(nil, platform.HPETBase, false, id)
	if !allOnes(id) {
		t.Errorf("HPET with HPET_ENABLED 0: % x", id)
	}
}

// The devices' interrupts reach the line SetIRQLine connects: an HPET
// timer on pin 20 fires on the host's clock.
func TestPlatformIRQLine(t *testing.T) {
	d, _, _ := offlinePlatform(t)
	var mu sync.Mutex
	got := map[uint32]int{}
	d.SetIRQLine(func(irq uint32, high bool) {
		mu.Lock()
		defer mu.Unlock()
		if high {
			got[irq]++
		}
	})
	w := func(off, v uint64) {
		b := make([]byte, 8)
		binary.LittleEndian.PutUint64(b, v)
		d.mmio(nil, platform.HPETBase+off, true, b)
	}
	w(platform.HPETTnCfg(0), platform.HPETTnEnable|20<<platform.HPETTnRouteShift)
	w(platform.HPETTnCmp(0), 625) // 10 µs
	w(platform.HPETCfg, platform.HPETCfgEnable)
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := got[20]
		mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no interrupt on pin 20")
		}
		time.Sleep(time.Millisecond)
	}
}

// PVH has none of these devices: the HPET reads all-ones, no records are
// saved, and a stream's records are refused.
func TestPlatformDevicesPVH(t *testing.T) {
	d, _, _ := offline(t)
	d.kind = builder.KindPVH
	id := make([]byte, 8)
	d.mmio(nil, platform.HPETBase, false, id)
	if !allOnes(id) {
		t.Errorf("PVH HPET: % x", id)
	}
	if r, h, p := d.PlatformRecords(); r != nil || h != nil || p != nil {
		t.Error("PVH saved platform records")
	}
	if err := d.LoadPlatformRecords(&xenabi.HVMHWRTC{}, nil, nil); err == nil {
		t.Error("PVH took an RTC record")
	}
	if err := d.LoadPlatformRecords(nil, nil, nil); err != nil {
		t.Error(err)
	}
	if err := d.Button(true); err == nil {
		t.Error("PVH pressed a power button")
	}
	d.SetIRQLine(func(uint32, bool) {})
	d.Close()
}

// The devices' records round-trip into another domain; bad ones are
// refused with the device named.
func TestPlatformRecords(t *testing.T) {
	d, _, pio := offlinePlatform(t)
	pio(0x70, true, []byte{platform.RTCHours})
	pio(0x71, true, []byte{0x01})
	pio(0x70, true, []byte{0x0d})
	d.Button(true)
	rtc, hpet, pm := d.PlatformRecords()
	if rtc.Cmos_index != 0x0d || rtc.Rtc_offset == 0 || hpet.Capability != platform.HPETCapabilities || pm.Pm1a_sts != platform.PMPwrBtnSts {
		t.Fatalf("records %+v %+v %+v", rtc, hpet, pm)
	}
	n, _, _ := offlinePlatform(t)
	if err := n.LoadPlatformRecords(rtc, hpet, pm); err != nil {
		t.Fatal(err)
	}
	if r2, h2, p2 := n.PlatformRecords(); r2.Rtc_offset != rtc.Rtc_offset || r2.Cmos_index != 0x0d || h2.Capability != hpet.Capability || p2.Pm1a_sts != pm.Pm1a_sts {
		t.Fatalf("restored %+v %+v %+v", r2, h2, p2)
	}
	badRTC := *rtc
	badRTC.Cmos_index = 0x80
	badHPET := *hpet
	badHPET.Capability = 0
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"RTC", n.LoadPlatformRecords(&badRTC, nil, nil)},
		{"HPET", n.LoadPlatformRecords(nil, &badHPET, nil)},
	} {
		if tc.err == nil {
			t.Errorf("a bad %s record loaded", tc.name)
		}
	}
}

// The devices sit where the FADT vmm/acpi builds says, and the PM timer's
// width is the one its flags give (TMR_VAL_EXT: 32 bits).
func TestPlatformMatchesFADT(t *testing.T) {
	tb, err := acpi.Build(0xfc001000, 0xe0000)
	if err != nil {
		t.Fatal(err)
	}
	f := tb.Blob[tb.FADT-tb.Base:]
	le := binary.LittleEndian
	if sci := le.Uint16(f[46:]); sci != platform.IRQSCI {
		t.Errorf("FADT SCI_INT %d, SCI raised on %d", sci, platform.IRQSCI)
	}
	if evt, tmr := le.Uint32(f[56:]), le.Uint32(f[76:]); evt != platform.PM1aEvtV1 || tmr != platform.PMTmrV1 {
		t.Errorf("FADT PM1a_EVT %#x PM_TMR %#x, devices at %#x, %#x", evt, tmr, platform.PM1aEvtV1, platform.PMTmrV1)
	}
	if f[88] != platform.PM1aEvtLen || f[91] != platform.PMTmrLen {
		t.Errorf("FADT PM1_EVT_LEN %d PM_TMR_LEN %d", f[88], f[91])
	}
	const tmrValExt = 1 << 8
	if le.Uint32(f[112:])&tmrValExt == 0 {
		t.Error("FADT without TMR_VAL_EXT: the PM timer here is 32-bit")
	}
	// And the timer really is 32-bit: it reads values above 2^24.
	d, _, pio := offlinePlatform(t)
	d.dev.pm.Load(platform.PMTimerState{TmrVal: 1 << 30})
	b := make([]byte, 4)
	pio(platform.PMTmrV1, false, b)
	if le.Uint32(b) < 1<<30 {
		t.Errorf("PM timer reads %#x after a load of 1<<30", le.Uint32(b))
	}
}

// The CMOS memory sizes hvmloader writes (cmos_write_memory_size).
func TestSetCMOSMemory(t *testing.T) {
	for _, c := range []struct {
		lowEnd         uint64
		base, ext, alt uint16
	}{
		{4 << 20, 640, 3 << 10, 0},
		{16 << 20, 640, 15 << 10, 0},
		{128 << 20, 640, 0xffff, (112 << 20) >> 16},
		{0xfc000000, 640, 0xffff, 0xfb00},
		{512 << 10, 640, 0, 0},
	} {
		d, _, _ := offlinePlatform(t)
		d.SetCMOSMemory(c.lowEnd)
		w := func(i uint8) uint16 {
			lo, _ := d.CMOS(i)
			hi, _ := d.CMOS(i + 1)
			return uint16(lo) | uint16(hi)<<8
		}
		if w(0x15) != c.base || w(0x17) != c.ext || w(0x30) != c.ext || w(0x34) != c.alt {
			t.Errorf("%#x: base %d ext %#x/%#x alt %#x; want %d %#x %#x", c.lowEnd, w(0x15), w(0x17), w(0x30), w(0x34), c.base, c.ext, c.alt)
		}
	}
	p, _, _ := offline(t) // PVH-like: no devices
	p.SetCMOSMemory(4 << 20)
	if _, ok := p.CMOS(0x15); ok {
		t.Error("a domain without an RTC has CMOS")
	}
}
