package toolstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/hvmtest"
	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// suspendedSpinGuest is a spinning guest of kind, started and suspended
// remotely.
func suspendedSpinGuest(t *testing.T, kind builder.ContainerKind) *HVMDomain {
	t.Helper()
	kvmtest.Require(t)
	code, _ := hvmtest.SpinGuest()
	d, err := CreateHVM(HVMConfig{Name: "p", ID: 3, Kind: kind, Image: pvhImage(code, true), MemSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Destroy() })
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	if err := d.Unpause(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.suspendRemotely(ctx); err != nil { // libxc's way: libxl would ask a PVH guest
		t.Fatal(err)
	}
	return d
}

// The platform's state in KVM (LAPIC, and for HVM the IO-APIC, PIC pair
// and PIT) goes into Xen's HVM_CONTEXT records of a save, which Xen's
// verifier takes, and comes back in the restored domain. A PVH save has
// LAPIC records only, as Xen's PVH has a LAPIC only.
func TestHVMSavePlatform(t *testing.T) {
	for _, kind := range []builder.ContainerKind{builder.KindHVM, builder.KindPVH} {
		t.Run(kind.String(), func(t *testing.T) {
			d := suspendedSpinGuest(t, kind)
			v := d.m.VCPUs()[0]
			l, err := v.GetLAPIC()
			if err != nil {
				t.Fatal(err)
			}
			binary.LittleEndian.PutUint32(l.Regs[0xf0:], 0x1ff)  // SVR: enabled
			binary.LittleEndian.PutUint32(l.Regs[0x80:], 0x20)   // TPR
			binary.LittleEndian.PutUint32(l.Regs[0x3e0:], 0x3)   // TDCR: divide by 16
			binary.LittleEndian.PutUint32(l.Regs[0x350:], 0x700) // LINT0: ExtINT, unmasked
			if err := v.SetLAPIC(l); err != nil {
				t.Fatal(err)
			}
			hvm := kind == builder.KindHVM
			if hvm {
				chip, err := d.m.GetIRQChip()
				if err != nil {
					t.Fatal(err)
				}
				chip.IOAPIC.Redirtbl[10] = 0x8033
				chip.IOAPIC.ID = 1
				chip.PIC[0].IMR, chip.PIC[0].IRQBase, chip.PIC[1].IRQBase = 0xfb, 0x20, 0x28
				chip.PIC[0].AutoEOI, chip.PIC[1].ELCR = 1, 0x0c
				if err := d.m.SetIRQChip(chip); err != nil {
					t.Fatal(err)
				}
				pit, err := d.m.GetPIT()
				if err != nil {
					t.Fatal(err)
				}
				pit.Channels[0].Count, pit.Channels[0].Mode, pit.Channels[0].RWMode = 0x1234, 2, 3
				if err := d.m.SetPIT(pit); err != nil {
					t.Fatal(err)
				}
			}
			file := saveHVM(t, d)
			hs, err := stream.ReadHVMSave(bytes.NewReader(file), nil)
			if err != nil {
				t.Fatal(err)
			}
			c := hs.Context
			rec, regs := c.LAPIC(0)
			if rec == nil || regs == nil || rec.Apic_base_msr&^0xfff != 0xfee00000 || rec.Disabled != 0 || rec.Timer_divisor != 16 {
				t.Fatalf("LAPIC records %+v, regs present %v", rec, regs != nil)
			}
			if hvm != (len(c.PICs) == 2 && c.IOAPIC != nil && c.PIT != nil) {
				t.Fatalf("%v save: %d PIC records, IOAPIC %v, PIT %v", kind, len(c.PICs), c.IOAPIC != nil, c.PIT != nil)
			}
			if hvm {
				if pin30 := binary.LittleEndian.Uint64(c.IOAPIC.Redirtbl[30][:]); pin30 != 1<<16 {
					t.Errorf("IOAPIC pin 30 saved as %#x, want masked", pin30)
				}
				if c.PICs[0].Flags&(xenabi.VPICIsMaster|xenabi.VPICAutoEOI) != xenabi.VPICIsMaster|xenabi.VPICAutoEOI || c.PICs[1].Flags&xenabi.VPICIsMaster != 0 {
					t.Errorf("PIC flags %#x %#x", c.PICs[0].Flags, c.PICs[1].Flags)
				}
			}
			d.Destroy()

			n, err := RestoreHVM(bytes.NewReader(file), HVMRestoreConfig{ID: 4})
			if err != nil {
				t.Fatal(err)
			}
			defer n.Destroy()
			nv := n.m.VCPUs()[0]
			nl, err := nv.GetLAPIC()
			if err != nil {
				t.Fatal(err)
			}
			for _, off := range []int{0xf0, 0x80, 0x3e0, 0x350} {
				if got, want := binary.LittleEndian.Uint32(nl.Regs[off:]), binary.LittleEndian.Uint32(l.Regs[off:]); got != want {
					t.Errorf("restored LAPIC register %#x = %#x, want %#x", off, got, want)
				}
			}
			if !hvm {
				return
			}
			chip, err := n.m.GetIRQChip()
			if err != nil {
				t.Fatal(err)
			}
			p0, p1 := chip.PIC[0], chip.PIC[1]
			if chip.IOAPIC.Redirtbl[10] != 0x8033 || chip.IOAPIC.ID != 1 || p0.IMR != 0xfb || p0.IRQBase != 0x20 ||
				p1.IRQBase != 0x28 || p0.AutoEOI != 1 || p1.ELCR != 0x0c {
				t.Errorf("restored irqchip %+v", chip)
			}
			pit, err := n.m.GetPIT()
			if err != nil {
				t.Fatal(err)
			}
			if ch := pit.Channels[0]; ch.Count != 0x1234 || ch.Mode != 2 || ch.RWMode != 3 {
				t.Errorf("restored PIT channel 0 %+v", ch)
			}
		})
	}
}

// Platform records a container cannot take are refused, as Xen's load
// handlers refuse them: PIC, IOAPIC or PIT records in a PVH domain, a
// LAPIC for a vCPU the domain does not have, an unmasked IO-APIC pin past
// KVM's 24, a PIT channel in no i8254 state, a PIC record whose is_master
// contradicts its instance, a LAPIC base Xen would not have.
func TestLoadHVMPlatformRefuses(t *testing.T) {
	kvmtest.Require(t)
	newM := func(c machine.IRQChip) *machine.Machine {
		m, err := machine.New(machine.Config{MemSize: 2 << 20, NumVCPUs: 1, IRQChip: c})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	unmasked := &xenabi.HVMHWVIOAPIC{Address: 0xfec00000}
	for i := range unmasked.Redirtbl {
		unmasked.Redirtbl[i] = [8]byte{0, 0, 1} // masked
	}
	unmasked.Redirtbl[30] = [8]byte{0x40}
	badPIT := &xenabi.HVMHWPIT{}
	badPIT.Channels[1].Mode = 9
	for _, tc := range []struct {
		name, want string
		kind       builder.ContainerKind
		hc         *stream.HVMContext
	}{
		{"PIC in PVH", "has none of those", builder.KindPVH, &stream.HVMContext{PICs: []stream.HVMPIC{{Flags: xenabi.VPICIsMaster}}}},
		{"PIT in PVH", "has none of those", builder.KindPVH, &stream.HVMContext{PIT: &xenabi.HVMHWPIT{}}},
		{"LAPIC of vCPU 1", "vCPU 1: the domain has 1", builder.KindHVM, &stream.HVMContext{LAPICs: []stream.HVMLAPIC{{Instance: 1}}}},
		{"LAPIC base moved", "APIC base 0xfed00900", builder.KindHVM, &stream.HVMContext{LAPICs: []stream.HVMLAPIC{{LAPIC: xenabi.HVMHWLAPIC{Apic_base_msr: 0xfed00900}}}}},
		{"unmasked pin 30", "pin 30 is unmasked", builder.KindHVM, &stream.HVMContext{IOAPIC: unmasked}},
		{"PIT mode 9", "channel 1", builder.KindHVM, &stream.HVMContext{PIT: badPIT}},
		{"slave PIC as master", "PIC record 1: is_master", builder.KindHVM, &stream.HVMContext{PICs: []stream.HVMPIC{{Instance: 1, Flags: xenabi.VPICIsMaster}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newM(hvmIRQChip(tc.kind))
			err := loadHVMPlatform(m, tc.kind, tc.hc)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want an error with %q", err, tc.want)
			}
		})
	}
}
