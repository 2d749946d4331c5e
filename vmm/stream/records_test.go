package stream

import (
	"bytes"
	"errors"
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
