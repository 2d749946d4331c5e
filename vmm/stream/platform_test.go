package stream

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// The platform's records (PIC, IOAPIC, LAPIC, LAPIC_REGS, PIT) round-trip
// through an HVM_CONTEXT blob, written in typecode order among the other
// records, the PIC's bitfields where hvm_hw_vpic has them.
func TestHVMPlatformRecords(t *testing.T) {
	c := &HVMContext{CPUs: []HVMCPU{{Instance: 0}}}
	c.PICs = []HVMPIC{
		{Instance: 0, IRR: 1, IMR: 0xfb, ISR: 4, IRQBase: 0x20, InitState: 0xa, PriorityAdd: 7, Flags: xenabi.VPICIsMaster | xenabi.VPICAutoEOI, ELCR: 0x08, IntOutput: 1},
		{Instance: 1, IMR: 0xff, IRQBase: 0x28, PriorityAdd: 3, Flags: xenabi.VPICPoll},
	}
	c.IOAPIC = &xenabi.HVMHWVIOAPIC{Address: 0xfec00000, Ioregsel: 0x12, Id: 1}
	c.IOAPIC.Redirtbl[47] = [8]byte{0x31, 0x80, 0, 0, 0, 0, 0, 2}
	c.LAPICs = []HVMLAPIC{{Instance: 0, LAPIC: xenabi.HVMHWLAPIC{Apic_base_msr: 0xfee00900, Timer_divisor: 2, Tdt_msr: 5}}}
	c.LAPICRegs = []HVMLAPICRegs{{Instance: 0}}
	c.LAPICRegs[0].Regs.Data[0xf0] = 0xff
	c.PIT = &xenabi.HVMHWPIT{Data_on: 1}
	c.PIT.Channels[0] = xenabi.HVMHWPITChannel{Count: 65536, Mode: 2, Rw_mode: 3, Gate: 1}
	c.Other = []HVMSaveRecord{{Typecode: 19, Body: make([]byte, 8)}, {Typecode: 8, Body: make([]byte, 8)}}
	b := EncodeHVMContext(c)
	got, err := DecodeHVMContext(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.PICs, c.PICs) || *got.IOAPIC != *c.IOAPIC || !reflect.DeepEqual(got.LAPICs, c.LAPICs) ||
		!reflect.DeepEqual(got.LAPICRegs, c.LAPICRegs) || *got.PIT != *c.PIT || len(got.Other) != 2 {
		t.Fatalf("decoded %+v", got)
	}
	if l, r := got.LAPIC(0); l == nil || r == nil || l.Tdt_msr != 5 || r.Data[0xf0] != 0xff {
		t.Errorf("LAPIC(0) = %v, %v", l, r)
	}
	if l, r := got.LAPIC(1); l != nil || r != nil {
		t.Error("LAPIC(1) of a one-vCPU blob")
	}
	// Typecode order: CPU, PIC, PIC, IOAPIC, LAPIC, LAPIC_REGS, ISA_IRQ (8), PIT, 19.
	var codes []uint16
	for off := 0; off < len(b); {
		d := decode[xenabi.HVMSaveDescriptor](b[off : off+xenabi.SizeofHVMSaveDescriptor])
		codes = append(codes, d.Typecode)
		off += xenabi.SizeofHVMSaveDescriptor + int(d.Length)
	}
	if want := []uint16{1, 2, 3, 3, 4, 5, 6, 8, 10, 19, 0}; !reflect.DeepEqual(codes, want) {
		t.Errorf("record order %v, want %v", codes, want)
	}
	// The master PIC's bitfield bytes as the C compiler lays them out:
	// init_state in the low nibble, priority_add in the high one; the
	// flags from bit 0.
	pic := b[2*xenabi.SizeofHVMSaveDescriptor+xenabi.SizeofHVMSaveHeader+xenabi.SizeofHVMHWCPU+xenabi.SizeofHVMSaveDescriptor:]
	if pic[4] != 0x7a || pic[5] != 0x44 {
		t.Errorf("hvm_hw_vpic bitfield bytes %#x %#x, want 0x7a 0x44", pic[4], pic[5])
	}
}

// Platform records with Xen's sizes and instances only: a wrong size, an
// instance a domain cannot have, or a record twice is a format error.
func TestHVMPlatformRecordErrors(t *testing.T) {
	rec := func(code, inst uint16, n int) []byte {
		c := &HVMContext{Other: []HVMSaveRecord{{Typecode: code, Instance: inst, Body: make([]byte, n)}}}
		return EncodeHVMContext(c)
	}
	twice := func(code uint16, n int) []byte {
		c := &HVMContext{Other: []HVMSaveRecord{{Typecode: code, Body: make([]byte, n)}, {Typecode: code, Body: make([]byte, n)}}}
		return EncodeHVMContext(c)
	}
	for _, tc := range []struct {
		name, want string
		blob       []byte
	}{
		{"PIC short", "PIC record 0: 7 bytes, want 8", rec(xenabi.HVMSaveCodePIC, 0, 7)},
		{"third PIC", "PIC instance 2", rec(xenabi.HVMSaveCodePIC, 2, 8)},
		{"second IO-APIC", "IOAPIC instance 1", rec(xenabi.HVMSaveCodeIOAPIC, 1, xenabi.SizeofHVMHWVIOAPIC)},
		{"IO-APIC of 24 pins", "want 400", rec(xenabi.HVMSaveCodeIOAPIC, 0, 16+24*8)},
		{"LAPIC long", "LAPIC record 3: 32 bytes", rec(xenabi.HVMSaveCodeLAPIC, 3, 32)},
		{"LAPIC_REGS short", "LAPIC_REGS record 0: 1023", rec(xenabi.HVMSaveCodeLAPICRegs, 0, 1023)},
		{"PIT short", "PIT record 0: 48 bytes", rec(xenabi.HVMSaveCodePIT, 0, 48)},
		{"PIT twice", "two PIT records", twice(xenabi.HVMSaveCodePIT, xenabi.SizeofHVMHWPIT)},
		{"LAPIC twice", "two LAPIC records", twice(xenabi.HVMSaveCodeLAPIC, xenabi.SizeofHVMHWLAPIC)},
		{"PIC twice", "two PIC records", twice(xenabi.HVMSaveCodePIC, xenabi.SizeofHVMHWVPIC)},
	} {
		_, err := DecodeHVMContext(tc.blob)
		if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrFormat with %q", tc.name, err, tc.want)
		}
	}
}
