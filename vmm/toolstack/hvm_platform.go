package toolstack

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/kvmext"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// The platform's interrupt controllers and PIT live in KVM
// (machine.IRQChip); a save carries them in Xen's HVM_CONTEXT records
// (public/arch-x86/hvm/save.h), translated here between KVM's state and
// Xen's: PIC (3) for the master and the slave, IOAPIC (4), LAPIC (5) and
// LAPIC_REGS (6) per vCPU, PIT (10). What only one side has:
//
//   - KVM's PIC keeps last_irr (edge detection) and elcr_mask, Xen's
//     int_output: a save writes int_output as "an unmasked request is
//     pending"; a restore keeps the new PIC's elcr_mask and starts with
//     last_irr 0 (sources assert their lines again).
//   - KVM's IO-APIC keeps the lines' levels (irr), Xen's does not; KVM's
//     has 24 pins, Xen's 48: a save writes pins 24 to 47 masked, as
//     Xen's reset leaves them, and a restore refuses a stream with any of
//     them unmasked (a guest there would wait on a pin that cannot fire).
//   - KVM's PIT keeps each channel's load time: a restore loads the
//     counts, and KVM starts them counting from the restore.

// Register offsets of the LAPIC page and MSRs the LAPIC record names.
const (
	lapicSVR           = 0xf0
	lapicTDCR          = 0x3e0
	apicBaseEnable     = 1 << 11
	msrTSCDeadline     = 0x6e0
	pitFlagsSpeakerOn  = 2 // KVM_PIT_FLAGS_SPEAKER_DATA_ON
	ioapicRedirMasked  = 1 << 16
	kvmPICInitStateMax = 3
	pitModeUnset       = 0xff // a channel never programmed (pit_reset, Xen's and KVM's)
)

// hvmPlatformRecords adds the platform's records to hc from KVM's state,
// for a machine whose vCPUs are parked.
func hvmPlatformRecords(m *machine.Machine, hc *stream.HVMContext) error {
	if !m.HasLAPIC() {
		return nil
	}
	for _, v := range m.VCPUs() {
		s, err := v.GetSregs()
		if err != nil {
			return err
		}
		l, err := v.GetLAPIC()
		if err != nil {
			return err
		}
		rec := xenabi.HVMHWLAPIC{Apic_base_msr: s.ApicBase}
		if binary.LittleEndian.Uint32(l.Regs[lapicSVR:])&(1<<8) == 0 {
			rec.Disabled |= xenabi.VLAPICSWDisabled
		}
		if s.ApicBase&apicBaseEnable == 0 {
			rec.Disabled |= xenabi.VLAPICHWDisabled
		}
		tdcr := binary.LittleEndian.Uint32(l.Regs[lapicTDCR:])
		rec.Timer_divisor = 1 << ((tdcr&3 | (tdcr&8)>>1) + 1&7) // vlapic_set_tdcr
		rec.Tdt_msr, _ = v.MSRValue(msrTSCDeadline)             // 0 where KVM has none
		hc.LAPICs = append(hc.LAPICs, stream.HVMLAPIC{Instance: uint16(v.ID), LAPIC: rec})
		hc.LAPICRegs = append(hc.LAPICRegs, stream.HVMLAPICRegs{Instance: uint16(v.ID), Regs: xenabi.HVMHWLAPICRegs{Data: l.Regs}})
	}
	if m.IRQChip() != machine.IRQChipFull {
		return nil
	}
	chip, err := m.GetIRQChip()
	if err != nil {
		return err
	}
	for i, p := range chip.PIC {
		x := stream.HVMPIC{Instance: uint16(i), IRR: p.IRR, IMR: p.IMR, ISR: p.ISR, IRQBase: p.IRQBase,
			InitState: p.InitState&3 | (p.Init4&1)<<2, PriorityAdd: p.PriorityAdd & 7, ELCR: p.ELCR}
		for _, f := range []struct {
			on  uint8
			bit uint8
		}{
			{p.ReadRegSelect, xenabi.VPICReadselISR}, {p.Poll, xenabi.VPICPoll}, {p.AutoEOI, xenabi.VPICAutoEOI},
			{p.RotateOnAutoEOI, xenabi.VPICRotateOnAutoEOI}, {p.SpecialFullyNestedMode, xenabi.VPICSpecialFullyNested},
			{p.SpecialMask, xenabi.VPICSpecialMaskMode},
		} {
			if f.on != 0 {
				x.Flags |= f.bit
			}
		}
		if i == 0 {
			x.Flags |= xenabi.VPICIsMaster
		}
		if p.IRR&^p.IMR != 0 {
			x.IntOutput = 1
		}
		hc.PICs = append(hc.PICs, x)
	}
	io := &xenabi.HVMHWVIOAPIC{Address: chip.IOAPIC.BaseAddress, Ioregsel: chip.IOAPIC.IOREGSEL, Id: chip.IOAPIC.ID}
	for pin := range io.Redirtbl {
		e := uint64(ioapicRedirMasked)
		if pin < len(chip.IOAPIC.Redirtbl) {
			e = uint64(chip.IOAPIC.Redirtbl[pin])
		}
		binary.LittleEndian.PutUint64(io.Redirtbl[pin][:], e)
	}
	hc.IOAPIC = io
	pit, err := m.GetPIT()
	if err != nil {
		return err
	}
	x := &xenabi.HVMHWPIT{}
	for i, c := range pit.Channels {
		x.Channels[i] = xenabi.HVMHWPITChannel{Count: c.Count, Latched_count: c.LatchedCount, Count_latched: c.CountLatched,
			Status_latched: c.StatusLatched, Status: c.Status, Read_state: c.ReadState, Write_state: c.WriteState,
			Write_latch: c.WriteLatch, Rw_mode: c.RWMode, Mode: c.Mode, Bcd: c.BCD, Gate: c.Gate}
	}
	if pit.Flags&pitFlagsSpeakerOn != 0 {
		x.Data_on = 1
	}
	hc.PIT = x
	return nil
}

// loadHVMPlatform loads the platform's records of a restored stream into
// the new machine before its vCPUs run, as hvm_load does: each record
// found is checked and loaded; a device with no record keeps its reset
// state. A record for a device the container lacks (PIC, IOAPIC or PIT
// in a PVH domain, a LAPIC for a vCPU it does not have) is refused, as
// Xen's load handlers refuse it.
func loadHVMPlatform(m *machine.Machine, kind builder.ContainerKind, hc *stream.HVMContext) error {
	full := m.IRQChip() == machine.IRQChipFull
	if !full && (len(hc.PICs) > 0 || hc.IOAPIC != nil || hc.PIT != nil) {
		return fmt.Errorf("the stream has PIC, IOAPIC or PIT records, and a %v domain has none of those", kind)
	}
	for _, l := range hc.LAPICs {
		if int(l.Instance) >= len(m.VCPUs()) {
			return fmt.Errorf("LAPIC record for vCPU %d: the domain has %d", l.Instance, len(m.VCPUs()))
		}
	}
	for _, l := range hc.LAPICRegs {
		if int(l.Instance) >= len(m.VCPUs()) {
			return fmt.Errorf("LAPIC_REGS record for vCPU %d: the domain has %d", l.Instance, len(m.VCPUs()))
		}
	}
	for _, v := range m.VCPUs() {
		rec, regs := hc.LAPIC(uint16(v.ID))
		if rec == nil && regs == nil {
			continue
		}
		if !m.HasLAPIC() {
			return errors.New("LAPIC records for a machine without LAPICs")
		}
		if rec != nil {
			if b := rec.Apic_base_msr; b&^(0xfffff000|apicBaseEnable|1<<10|1<<8) != 0 || b&0xfffff000 != 0xfee00000 {
				return fmt.Errorf("LAPIC record for vCPU %d: APIC base %#x (Xen keeps the LAPIC at 0xfee00000)", v.ID, b)
			}
			s, err := v.GetSregs()
			if err != nil {
				return err
			}
			s.ApicBase = rec.Apic_base_msr
			if err := v.SetSregs(s); err != nil {
				return fmt.Errorf("LAPIC record for vCPU %d: APIC base %#x: %w", v.ID, rec.Apic_base_msr, err)
			}
		}
		if regs != nil {
			l := machine.LAPICState{Regs: regs.Data}
			if err := v.SetLAPIC(&l); err != nil {
				return fmt.Errorf("LAPIC_REGS record for vCPU %d: %w", v.ID, err)
			}
		}
		if rec != nil && rec.Tdt_msr != 0 {
			if err := v.SetMSR(msrTSCDeadline, rec.Tdt_msr); err != nil {
				return fmt.Errorf("LAPIC record for vCPU %d: TSC deadline: %w", v.ID, err)
			}
		}
	}
	if !full {
		return nil
	}
	chip, err := m.GetIRQChip()
	if err != nil {
		return err
	}
	for _, p := range hc.PICs {
		if int(p.Instance) >= len(chip.PIC) {
			return fmt.Errorf("PIC record %d: a domain has two", p.Instance)
		}
		k := &chip.PIC[p.Instance]
		if (p.Flags&xenabi.VPICIsMaster != 0) != (p.Instance == 0) {
			return fmt.Errorf("PIC record %d: is_master is %v", p.Instance, p.Flags&xenabi.VPICIsMaster != 0)
		}
		k.LastIRR, k.IRR, k.IMR, k.ISR, k.IRQBase = 0, p.IRR, p.IMR, p.ISR, p.IRQBase
		k.InitState, k.Init4 = p.InitState&kvmPICInitStateMax, p.InitState>>2&1
		k.PriorityAdd, k.ELCR = p.PriorityAdd&7, p.ELCR&k.ELCRMask
		flag := func(bit uint8) uint8 {
			if p.Flags&bit != 0 {
				return 1
			}
			return 0
		}
		k.ReadRegSelect, k.Poll, k.AutoEOI = flag(xenabi.VPICReadselISR), flag(xenabi.VPICPoll), flag(xenabi.VPICAutoEOI)
		k.RotateOnAutoEOI, k.SpecialFullyNestedMode = flag(xenabi.VPICRotateOnAutoEOI), flag(xenabi.VPICSpecialFullyNested)
		k.SpecialMask = flag(xenabi.VPICSpecialMaskMode)
	}
	if io := hc.IOAPIC; io != nil {
		if io.Address != chip.IOAPIC.BaseAddress {
			return fmt.Errorf("IOAPIC record at %#x: this platform's IO-APIC is at %#x", io.Address, chip.IOAPIC.BaseAddress)
		}
		chip.IOAPIC.IOREGSEL, chip.IOAPIC.ID, chip.IOAPIC.IRR = io.Ioregsel, io.Id&0xf, 0
		for pin := range io.Redirtbl {
			e := binary.LittleEndian.Uint64(io.Redirtbl[pin][:])
			if pin < len(chip.IOAPIC.Redirtbl) {
				chip.IOAPIC.Redirtbl[pin] = kvmext.IOAPICRedirEntry(e)
			} else if e&ioapicRedirMasked == 0 {
				return fmt.Errorf("IOAPIC record: pin %d is unmasked; KVM's IO-APIC has %d pins", pin, len(chip.IOAPIC.Redirtbl))
			}
		}
	}
	if len(hc.PICs) > 0 || hc.IOAPIC != nil {
		if err := m.SetIRQChip(chip); err != nil {
			return err
		}
	}
	if x := hc.PIT; x != nil {
		pit, err := m.GetPIT()
		if err != nil {
			return err
		}
		for i, c := range x.Channels {
			if c.Count > 0x10000 || (c.Mode > 5 && c.Mode != pitModeUnset) || c.Rw_mode > 3 || c.Read_state > 4 || c.Write_state > 4 || c.Bcd > 1 || c.Gate > 1 {
				return fmt.Errorf("PIT record: channel %d %+v is not a state an i8254 has", i, c)
			}
			pit.Channels[i] = kvm.PITChannelState{Count: c.Count, LatchedCount: c.Latched_count, CountLatched: c.Count_latched,
				StatusLatched: c.Status_latched, Status: c.Status, ReadState: c.Read_state, WriteState: c.Write_state,
				WriteLatch: c.Write_latch, RWMode: c.Rw_mode, Mode: c.Mode, BCD: c.Bcd, Gate: c.Gate}
		}
		pit.Flags &^= pitFlagsSpeakerOn
		if x.Data_on != 0 {
			pit.Flags |= pitFlagsSpeakerOn
		}
		if err := m.SetPIT(pit); err != nil {
			return err
		}
	}
	return nil
}
