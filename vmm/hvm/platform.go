package hvm

import (
	"fmt"
	"sync/atomic"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/platform"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// devices are an HVM domain's emulated timers and CMOS (vmm/platform):
// the RTC at ports 0x70-0x71, the ACPI PM1a event block and PM timer at
// the location HVM_PARAM_ACPI_IOPORTS_LOCATION selects, the HPET's MMIO
// at 0xFED00000 while HVM_PARAM_HPET_ENABLED is set. A PVH domain has
// none of them (its accesses there read all-ones).
type devices struct {
	rtc  *platform.RTC
	pm   *platform.PMTimer
	hpet *platform.HPET
	// irq is where their interrupts go (SetIRQLine); nil drops them.
	irq atomic.Pointer[platform.IRQFunc]
}

// newDevices creates the devices on the host's clocks and claims their
// ports with register (the machine's bus's Register).
func (d *Domain) newDevices(register func(port uint16, n int, dev machine.PIODevice)) {
	p := &devices{}
	line := platform.IRQFunc(func(irq uint32, high bool) {
		if f := p.irq.Load(); f != nil && *f != nil {
			(*f)(irq, high)
		}
	})
	clock := platform.HostClock()
	p.rtc = platform.NewRTC(clock, line)
	p.pm = platform.NewPMTimer(clock, line)
	p.hpet = platform.NewHPET(clock, line)
	d.dev = p
	d.params[ParamHPETEnabled] = 1 // hpet_init
	// hvmloader moves the PM block to the V1 ports its FADT names.
	d.params[ParamACPIIOPortsLoc] = 1
	register(platform.RTCIndexPort, 2, machine.PIOFunc(func(_ *machine.VCPU, port uint16, write bool, data []byte) error {
		p.rtc.PIO(port, write, data)
		return nil
	}))
	for _, loc := range []struct {
		evt, tmr uint16
		v1       bool
	}{{platform.PM1aEvtV0, platform.PMTmrV0, false}, {platform.PM1aEvtV1, platform.PMTmrV1, true}} {
		register(loc.evt, platform.PM1aEvtLen, machine.PIOFunc(func(_ *machine.VCPU, port uint16, write bool, data []byte) error {
			if !d.pmAt(loc.v1) {
				unclaimed(write, data)
				return nil
			}
			p.pm.EvtPIO(int(port-loc.evt), write, data)
			return nil
		}))
		register(loc.tmr, platform.PMTmrLen, machine.PIOFunc(func(_ *machine.VCPU, port uint16, write bool, data []byte) error {
			if !d.pmAt(loc.v1) {
				unclaimed(write, data)
				return nil
			}
			p.pm.TmrPIO(write, data)
			return nil
		}))
	}
}

// pmAt reports whether the PM block answers at V1 (v1) or V0 now, as
// pmtimer_change_ioport moves its handlers.
func (d *Domain) pmAt(v1 bool) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return (d.params[ParamACPIIOPortsLoc] == 1) == v1
}

// unclaimed completes an access nothing claims: reads are all-ones.
func unclaimed(write bool, data []byte) {
	if !write {
		for i := range data {
			data[i] = 0xff
		}
	}
}

// hpetMMIO handles an access in the HPET's 1 KiB, reporting whether it
// was one (an HVM domain with HVM_PARAM_HPET_ENABLED set).
func (d *Domain) hpetMMIO(gpa uint64, write bool, data []byte) bool {
	if d.dev == nil || gpa < platform.HPETBase || gpa >= platform.HPETBase+platform.HPETSize {
		return false
	}
	d.mu.Lock()
	on := d.params[ParamHPETEnabled] != 0
	d.mu.Unlock()
	if !on {
		return false
	}
	d.dev.hpet.MMIO(gpa-platform.HPETBase, write, data)
	return true
}

// SetIRQLine connects the platform devices' interrupt outputs (the RTC's
// IRQ 8, the SCI on IRQ 9, the HPET's IRQ 0, 8 and pins 20-23) to line,
// which sets an ISA IRQ's or IO-APIC GSI's level (the machine's irqchip).
// Until it is called, or with nil, they are dropped. A PVH domain has no
// such devices; the call does nothing there.
func (d *Domain) SetIRQLine(line func(irq uint32, high bool)) {
	if d.dev == nil {
		return
	}
	f := platform.IRQFunc(line)
	d.dev.irq.Store(&f)
}

// Close stops the platform devices' timers: no interrupt is raised
// afterwards. The toolstack calls it when it releases the domain.
func (d *Domain) Close() {
	if d.dev == nil {
		return
	}
	d.dev.rtc.Close()
	d.dev.pm.Close()
	d.dev.hpet.Close()
}

// resetDevices is what hvm_s3_suspend does to these devices: the RTC's
// periodic timer stops (the CMOS is kept), the PM timer restarts from 0,
// the HPET is as at creation. QEMU's suspend notifier stores the S3
// shutdown status in CMOS 0x0F for the firmware.
func (d *Domain) resetDevices() {
	if d.dev == nil {
		return
	}
	d.dev.rtc.Reset()
	d.dev.pm.Reset()
	d.dev.hpet.Reset()
	_ = d.dev.rtc.SetCMOS(platform.CMOSShutdownStatus, platform.CMOSShutdownS3) // a RAM byte: cannot fail
}

// CMOS returns CMOS byte i of an HVM domain (ok false for PVH).
func (d *Domain) CMOS(i uint8) (v byte, ok bool) {
	if d.dev == nil {
		return 0, false
	}
	return d.dev.rtc.CMOS(i), true
}

// Button presses the ACPI power (power) or sleep button, as `xl trigger
// power` and `xl trigger sleep`: PM1a_STS's PWRBTN or SLPBTN, and SCI if
// the guest enabled it. PVH has no ACPI PM block.
func (d *Domain) Button(power bool) error {
	if d.dev == nil {
		return fmt.Errorf("domain %d has no ACPI PM block (PVH)", d.id)
	}
	d.dev.pm.Button(power)
	return nil
}

// PlatformRecords returns the devices' HVM_CONTEXT records as Xen's
// rtc_save, hpet_save and pmtimer_save write them; all nil for PVH, which
// has none. The CMOS bytes beyond Xen's 14 are not in them (QEMU's on Xen,
// whose device-model record this stream does not carry).
func (d *Domain) PlatformRecords() (*xenabi.HVMHWRTC, *xenabi.HVMHWHPET, *xenabi.HVMHWPMTimer) {
	if d.dev == nil {
		return nil, nil, nil
	}
	r := d.dev.rtc.Save()
	rtc := &xenabi.HVMHWRTC{Cmos_index: r.Index, Rtc_offset: r.Offset}
	copy(rtc.Cmos_data[:], r.CMOS[:xenabi.HVMRTCCMOSSize])
	h := d.dev.hpet.Save()
	hpet := &xenabi.HVMHWHPET{Capability: h.Capability, Config: h.Config, Isr: h.ISR, Mc64: h.MC64, Period: h.Period}
	for i, t := range h.Timers {
		hpet.Timers[i] = xenabi.HVMHWHPETTimer{Config: t.Config, Cmp: t.Cmp, Fsb: t.FSB}
	}
	p := d.dev.pm.Save()
	return rtc, hpet, &xenabi.HVMHWPMTimer{Tmr_val: p.TmrVal, Pm1a_sts: p.PM1aSts, Pm1a_en: p.PM1aEn}
}

// LoadPlatformRecords loads the records a restore found (nil: not in the
// stream, the device keeps its state), as rtc_load, hpet_load and
// pmtimer_load. A PVH domain refuses any of them, as Xen's loaders do for
// a domain without the device; a record the device cannot take (an index
// beyond the CMOS, a foreign HPET) is refused.
func (d *Domain) LoadPlatformRecords(rtc *xenabi.HVMHWRTC, hpet *xenabi.HVMHWHPET, pm *xenabi.HVMHWPMTimer) error {
	if d.dev == nil {
		if rtc != nil || hpet != nil || pm != nil {
			return fmt.Errorf("hvm: the stream has RTC, HPET or PMTIMER records; a PVH domain has no such devices")
		}
		return nil
	}
	if rtc != nil {
		s := d.dev.rtc.Save() // keeps the CMOS RAM beyond Xen's bytes
		copy(s.CMOS[:], rtc.Cmos_data[:])
		s.Index, s.Offset = rtc.Cmos_index, rtc.Rtc_offset
		if err := d.dev.rtc.Load(s); err != nil {
			return fmt.Errorf("hvm: RTC record: %w", err)
		}
	}
	if hpet != nil {
		s := platform.HPETState{Capability: hpet.Capability, Config: hpet.Config, ISR: hpet.Isr, MC64: hpet.Mc64, Period: hpet.Period}
		for i, t := range hpet.Timers {
			s.Timers[i] = platform.HPETTimerState{Config: t.Config, Cmp: t.Cmp, FSB: t.Fsb}
		}
		if err := d.dev.hpet.Load(s); err != nil {
			return fmt.Errorf("hvm: HPET record: %w", err)
		}
	}
	if pm != nil {
		d.dev.pm.Load(platform.PMTimerState{TmrVal: pm.Tmr_val, PM1aSts: pm.Pm1a_sts, PM1aEn: pm.Pm1a_en})
	}
	return nil
}

// SetCMOSMemory writes the CMOS memory-size bytes as hvmloader's
// cmos_write_memory_size does for RAM ending at lowEnd below 4 GiB:
// 640 KiB of conventional memory at 0x15-0x16; the KiB above 1 MiB
// (at most 0xFFFF) at 0x17-0x18 and 0x30-0x31; the 64 KiB chunks above
// 16 MiB at 0x34-0x35. The VMM is this guest's hvmloader. PVH has no CMOS.
func (d *Domain) SetCMOSMemory(lowEnd uint64) {
	if d.dev == nil {
		return
	}
	base, ext, alt := uint64(640), uint64(0), uint64(0)
	if lowEnd > 1<<20 {
		ext = min((lowEnd-1<<20)>>10, 0xffff)
	}
	if lowEnd > 16<<20 {
		alt = min((lowEnd-16<<20)>>16, 0xffff)
	}
	for _, b := range []struct {
		at uint8
		v  uint64
	}{{0x15, base}, {0x17, ext}, {0x30, ext}, {0x34, alt}} {
		_ = d.dev.rtc.SetCMOS(b.at, byte(b.v))      // RAM bytes: cannot fail
		_ = d.dev.rtc.SetCMOS(b.at+1, byte(b.v>>8)) //
	}
}
