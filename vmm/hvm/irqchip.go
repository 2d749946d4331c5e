package hvm

import (
	"encoding/binary"
	"fmt"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/machine"
)

// The interrupt controllers of the platform are KVM's in-kernel ones
// (machine.IRQChip): an HVM domain's machine has the LAPICs, the IO-APIC,
// the PIC pair and the PIT; a PVH domain's the LAPICs only, as Xen gives
// PVH. This file sets them to Xen's reset state and resets them when the
// guest enters S3.

// LAPIC register offsets (the xAPIC page's).
const (
	lapicLVTFirst = 0x320 // LVT timer; then thermal, PMC, LINT0, LINT1, error
	lapicLVTLast  = 0x370
	lvtMasked     = 1 << 16
)

// platformReset is the platform's state as Xen's reset leaves it, taken
// before the domain first runs, to be loaded again on S3.
type platformReset struct {
	lapic []machine.LAPICState
	chip  *machine.IRQChipState
	pit   *kvm.PITState2
}

// initPlatform sets each in-kernel LAPIC to vlapic_reset's state: every
// LVT masked (KVM leaves LINT0 unmasked in ExtINT mode on the BSP, for a
// BIOS; Xen's vLAPIC, with no BIOS behind it for firmware_override,
// masks it), and records the reset state of the LAPICs, the IO-APIC, the
// PIC pair and the PIT for S3. Before the machine starts.
func (d *Domain) initPlatform() error {
	m := d.m
	if !m.HasLAPIC() {
		return nil
	}
	r := &platformReset{}
	for _, v := range m.VCPUs() {
		l, err := v.GetLAPIC()
		if err != nil {
			return err
		}
		for off := lapicLVTFirst; off <= lapicLVTLast; off += 0x10 {
			lvt := binary.LittleEndian.Uint32(l.Regs[off:])
			binary.LittleEndian.PutUint32(l.Regs[off:], lvt|lvtMasked)
		}
		if err := v.SetLAPIC(l); err != nil {
			return err
		}
		r.lapic = append(r.lapic, *l)
	}
	if m.IRQChip() == machine.IRQChipFull {
		var err error
		if r.chip, err = m.GetIRQChip(); err != nil {
			return err
		}
		if r.pit, err = m.GetPIT(); err != nil {
			return err
		}
	}
	d.reset = r
	return nil
}

// resetPlatform loads the reset state initPlatform recorded: what
// hvm_s3_suspend does with vlapic_reset, vioapic_reset, vpic_reset and
// pit_reset. vCPU 0's thread or a parked machine; the other vCPUs must
// not be running.
func (d *Domain) resetPlatform() error {
	r := d.reset
	if r == nil {
		return nil
	}
	for i, v := range d.m.VCPUs() {
		l := r.lapic[i]
		if err := v.SetLAPIC(&l); err != nil {
			return fmt.Errorf("reset the LAPIC: %w", err)
		}
		if err := v.SetMPState(0); err != nil { // KVM_MP_STATE_RUNNABLE
			return fmt.Errorf("reset the vCPU: %w", err)
		}
	}
	if r.chip != nil {
		if err := d.m.SetIRQChip(r.chip); err != nil {
			return fmt.Errorf("reset the IO-APIC and PIC: %w", err)
		}
	}
	if r.pit != nil {
		p := *r.pit
		if err := d.m.SetPIT(&p); err != nil {
			return fmt.Errorf("reset the PIT: %w", err)
		}
	}
	return nil
}
