package stream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// Every typed body survives encode and decode.
func TestRecordRoundTrip(t *testing.T) {
	pv := PVInfo{GuestWidth: 8, PTLevels: 4}
	if got, err := DecodePVInfo(EncodePVInfo(pv)); err != nil || got != pv {
		t.Errorf("PV info: %+v %v", got, err)
	}
	for _, p := range []P2MFrames{
		{EndPFN: 0, Frames: []uint64{7}},
		{EndPFN: 511, Frames: []uint64{7}},
		{EndPFN: 512, Frames: []uint64{7, 8}},
		{StartPFN: 600, EndPFN: 2000, Frames: []uint64{1, 2, 3}},
	} {
		got, err := DecodeP2MFrames(EncodeP2MFrames(p))
		if err != nil || got.StartPFN != p.StartPFN || got.EndPFN != p.EndPFN || !equalU64(got.Frames, p.Frames) {
			t.Errorf("P2M %+v: %+v %v", p, got, err)
		}
	}
	if n := (P2MFrames{EndPFN: 15}).NrPages(); n != 16 {
		t.Errorf("NrPages %d", n)
	}
	v := &VCPUBasic{ID: 3}
	v.Context.User_regs.Rdx, v.Context.Ctrlreg[3], v.Context.Gs_base_user = 2, 5<<12, 0xdead
	v.Context.Trap_ctxt[14] = xenabi.TrapInfo{Vector: 14, Cs: 0x10, Address: 0xffffffff81000000}
	b := EncodeVCPUBasic(v)
	if len(b) != VCPUBasicSize || VCPUBasicSize != 5176 {
		t.Fatalf("vCPU body %d bytes, VCPUBasicSize %d", len(b), VCPUBasicSize)
	}
	// The context's fields land at the offsets of the C layout.
	if b[8+616] != 2 || b[8+4984+3*8+1] != 0x50 || b[8+720+14*16] != 14 {
		t.Errorf("vCPU body layout: rdx %d cr3 %#x trap 14 vector %d", b[8+616], b[8+4984+3*8+1], b[8+720+14*16])
	}
	if got, err := DecodeVCPUBasic(b); err != nil || *got != *v {
		t.Errorf("vCPU: %v", err)
	}
	tsc := TSCInfo{Mode: 1, KHz: 2400000, Nsec: 1 << 40, Incarnation: 2}
	if got, err := DecodeTSCInfo(EncodeTSCInfo(tsc)); err != nil || got != tsc {
		t.Errorf("TSC: %+v %v", got, err)
	}
	var si xenabi.SharedInfo
	si.Evtchn_pending[3], si.Arch.Max_pfn = 9, 77
	sb := EncodeSharedInfo(&si)
	if got, err := DecodeSharedInfo(sb); err != nil || len(sb) != 4096 || *got != si {
		t.Errorf("shared_info: %v", err)
	}
	c := &HVMContext{Header: xenabi.HVMSaveHeader{Khz: 1000, Cpuid: 0x806e9}}
	c.CPUs = []HVMCPU{{Instance: 0}, {Instance: 1}}
	c.CPUs[1].CPU.Rip, c.CPUs[1].CPU.Tsc = 0x1234, 99
	c.Other = []HVMSaveRecord{{Typecode: 19, Instance: 1, Body: []byte{1, 2, 3, 4, 5, 6, 7, 8}}}
	got, err := DecodeHVMContext(EncodeHVMContext(c))
	if err != nil || got.Header.Magic != xenabi.HVMFileMagic || got.Header.Khz != 1000 || len(got.CPUs) != 2 ||
		got.CPU(1) == nil || got.CPU(1).Rip != 0x1234 || got.CPU(2) != nil || len(got.Other) != 1 || !bytes.Equal(got.Other[0].Body, c.Other[0].Body) {
		t.Errorf("HVM context: %+v %v", got, err)
	}
}

// The platform's records (RTC 11, HPET 12, PMTIMER 13) are written after
// the CPU records in typecode order among the others, as hvm_save writes
// them, and decoded typed; a wrong length, a second instance or a repeat
// is refused.
func TestHVMContextPlatformRecords(t *testing.T) {
	rtc := xenabi.HVMHWRTC{Cmos_index: 0x8f & 0x7f, Rtc_offset: 42}
	hpet := xenabi.HVMHWHPET{Capability: 0x00f42400_8086a201, Mc64: 7}
	pmt := xenabi.HVMHWPMTimer{Tmr_val: 99, Pm1a_sts: 1}
	c := &HVMContext{CPUs: []HVMCPU{{}}, RTC: &rtc, HPET: &hpet, PMTimer: &pmt,
		Other: []HVMSaveRecord{{Typecode: 14, Body: make([]byte, 8)}, {Typecode: 3, Body: make([]byte, 8)}, {Typecode: 3, Instance: 1, Body: make([]byte, 8)}}}
	b := EncodeHVMContext(c)
	var order []uint16
	for off := 0; off < len(b); {
		code := binary.LittleEndian.Uint16(b[off:])
		order = append(order, code)
		off += 8 + int(binary.LittleEndian.Uint32(b[off+4:]))
	}
	if want := []uint16{1, 2, 3, 3, 11, 12, 13, 14, 0}; !slices.Equal(order, want) {
		t.Fatalf("typecodes %v, want %v", order, want)
	}
	got, err := DecodeHVMContext(b)
	// The two PIC records among the others are decoded typed too.
	if err != nil || *got.RTC != rtc || *got.HPET != hpet || *got.PMTimer != pmt || len(got.PICs) != 2 || len(got.Other) != 1 {
		t.Fatalf("decoded %+v %v", got, err)
	}
	// Offsets of the records' descriptors in b: HEADER 0, CPU 32, PIC 32+8+1032, ...
	rtcAt := 32 + 8 + xenabi.SizeofHVMHWCPU + 2*16
	if binary.LittleEndian.Uint16(b[rtcAt:]) != xenabi.HVMSaveCodeRTC {
		t.Fatalf("no RTC record at %#x", rtcAt)
	}
	set := func(off int, v ...byte) []byte { x := bytes.Clone(b); copy(x[off:], v); return x }
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"RTC short", set(rtcAt+4, 16), "RTC record of 16 bytes, want 24"},
		{"RTC instance 1", set(rtcAt+2, 1), "RTC record for instance 1"},
		{"two RTCs", set(rtcAt+8+xenabi.SizeofHVMHWRTC, xenabi.HVMSaveCodeRTC), "record of 1048 bytes, want 24"},
		{"HPET as PMTIMER", set(rtcAt+8+xenabi.SizeofHVMHWRTC, xenabi.HVMSaveCodePMTimer), "PMTIMER record of 1048 bytes"},
	} {
		if _, err := DecodeHVMContext(tc.b); err == nil || !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	two := append(bytes.Clone(b[:len(b)-8]), b[rtcAt:rtcAt+8+xenabi.SizeofHVMHWRTC]...)
	two = append(two, b[len(b)-8:]...)
	if _, err := DecodeHVMContext(two); err == nil || !strings.Contains(err.Error(), "two RTC records") {
		t.Errorf("a repeated RTC record: %v", err)
	}
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Every decoder refuses what libxc's restorer or verify-stream-v2 refuses,
// with ErrFormat and the record's name, and never panics.
func TestRecordDecodeErrors(t *testing.T) {
	vcpu := EncodeVCPUBasic(&VCPUBasic{})
	hvm := EncodeHVMContext(&HVMContext{CPUs: []HVMCPU{{}}})
	set := func(b []byte, off int, v ...byte) []byte { b = bytes.Clone(b); copy(b[off:], v); return b }
	for _, c := range []struct {
		name, want string
		decode     func() error
	}{
		{"pv info short", "X86_PV_INFO: 7 bytes", func() error { _, err := DecodePVInfo(make([]byte, 7)); return err }},
		{"pv info 8/3", "width 8 with 3", func() error { _, err := DecodePVInfo([]byte{8, 3, 0, 0, 0, 0, 0, 0}); return err }},
		{"pv info reserved", "reserved", func() error { _, err := DecodePVInfo([]byte{8, 4, 0, 0, 0, 0, 0, 1}); return err }},
		{"p2m short", "at least 8", func() error { _, err := DecodeP2MFrames(make([]byte, 4)); return err }},
		{"p2m backwards", "after end pfn", func() error {
			_, err := DecodeP2MFrames(EncodeP2MFrames(P2MFrames{StartPFN: 2, EndPFN: 1}))
			return err
		}},
		{"p2m no frames", "want 16", func() error { _, err := DecodeP2MFrames(EncodeP2MFrames(P2MFrames{EndPFN: 1})); return err }},
		{"p2m huge range", "want 67108872", func() error {
			_, err := DecodeP2MFrames(EncodeP2MFrames(P2MFrames{EndPFN: 0xffffffff, Frames: []uint64{1}}))
			return err
		}},
		{"vcpu short", "X86_PV_VCPU_BASIC: 108 bytes, want 5176", func() error { _, err := DecodeVCPUBasic(vcpu[:108]); return err }},
		{"vcpu long", "5184 bytes, want 5176", func() error { _, err := DecodeVCPUBasic(append(bytes.Clone(vcpu), make([]byte, 8)...)); return err }},
		{"vcpu empty", "8 bytes, want 5176", func() error { _, err := DecodeVCPUBasic(vcpu[:8]); return err }},
		{"vcpu header", "at least 8", func() error { _, err := DecodeVCPUBasic(vcpu[:7]); return err }},
		{"vcpu reserved", "reserved", func() error { _, err := DecodeVCPUBasic(set(vcpu, 4, 1)); return err }},
		{"extended long", "at most 136", func() error { _, _, err := decodeVCPUHeader(RecX86PVVCPUExtended, make([]byte, 8+129)); return err }},
		{"xsave short", "at least 24", func() error { _, _, err := decodeVCPUHeader(RecX86PVVCPUXSave, make([]byte, 8+8)); return err }},
		{"msrs odd", "multiple of 16", func() error { _, _, err := decodeVCPUHeader(RecX86PVVCPUMSRs, make([]byte, 8+24)); return err }},
		{"tsc short", "X86_TSC_INFO: 16 bytes", func() error { _, err := DecodeTSCInfo(make([]byte, 16)); return err }},
		{"tsc reserved", "reserved", func() error { _, err := DecodeTSCInfo(set(EncodeTSCInfo(TSCInfo{}), 20, 1)); return err }},
		{"shared info", "SHARED_INFO: 3136 bytes", func() error { _, err := DecodeSharedInfo(make([]byte, 3136)); return err }},
		{"hvm empty", "no HEADER", func() error { _, err := DecodeHVMContext(nil); return err }},
		{"hvm cpu first", "not HEADER", func() error { _, err := DecodeHVMContext(hvm[32:]); return err }},
		{"hvm magic", "HEADER magic", func() error { _, err := DecodeHVMContext(set(hvm, 8, 0)); return err }},
		{"hvm header length", "HEADER of 16 bytes", func() error { _, err := DecodeHVMContext(set(hvm, 4, 16)); return err }},
		{"hvm second header", "a second HEADER", func() error { _, err := DecodeHVMContext(append(bytes.Clone(hvm[:32]), hvm...)); return err }},
		{"hvm cpu length", "claims", func() error { _, err := DecodeHVMContext(set(hvm, 32+4, 0xff, 0xff, 0xff, 0xff)); return err }},
		{"hvm unknown type", "unknown typecode 21", func() error { _, err := DecodeHVMContext(set(hvm, 32, 21)); return err }},
		{"hvm end length", "END of 8 bytes", func() error {
			_, err := DecodeHVMContext(append(set(hvm, len(hvm)-4, 8), make([]byte, 8)...))
			return err
		}},
		{"hvm no end", "without an END", func() error { _, err := DecodeHVMContext(hvm[:len(hvm)-8]); return err }},
		{"hvm after end", "after its END", func() error { _, err := DecodeHVMContext(append(bytes.Clone(hvm), 0)); return err }},
	} {
		err := c.decode()
		if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want ErrFormat with %q", c.name, err, c.want)
		}
	}
}

// FuzzDecodeRecords: no body panics a decoder.
func FuzzDecodeRecords(f *testing.F) {
	f.Add(EncodeHVMContext(&HVMContext{CPUs: []HVMCPU{{}}}))
	f.Add(EncodeHVMContext(&HVMContext{PICs: []HVMPIC{{}, {Instance: 1}}, IOAPIC: &xenabi.HVMHWVIOAPIC{},
		LAPICs: []HVMLAPIC{{}}, LAPICRegs: []HVMLAPICRegs{{}}, PIT: &xenabi.HVMHWPIT{}}))
	f.Add(EncodeP2MFrames(P2MFrames{EndPFN: 1000, Frames: []uint64{1, 2}}))
	f.Add(EncodeVCPUBasic(&VCPUBasic{}))
	f.Fuzz(func(t *testing.T, b []byte) {
		DecodePVInfo(b)
		DecodeP2MFrames(b)
		DecodeVCPUBasic(b)
		DecodeTSCInfo(b)
		DecodeSharedInfo(b)
		DecodeHVMContext(b)
		DecodePageData(b)
		for _, typ := range []uint32{RecX86PVVCPUExtended, RecX86PVVCPUXSave, RecX86PVVCPUMSRs} {
			decodeVCPUHeader(typ, b)
		}
	})
}
