package stream

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/internal/xentools"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

func TestHVMParamsRecord(t *testing.T) {
	ps := []HVMParam{{1, 0xfeffc}, {17, 0xfefff}, {12, 0xfeffe000}}
	got, err := DecodeHVMParams(EncodeHVMParams(ps))
	if err != nil || len(got) != 3 || got[2] != ps[2] {
		t.Fatalf("round trip: %v %v", got, err)
	}
	if got, err := DecodeHVMParams(EncodeHVMParams(nil)); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("no params: %v %v", got, err)
	}
	good := EncodeHVMParams(ps)
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"short", good[:6], "at least 8"},
		{"reserved", append(append([]byte{}, good[:4]...), append([]byte{1, 0, 0, 0}, good[8:]...)...), "reserved word"},
		{"count", good[:len(good)-16], "3 entries in 32 bytes"},
		{"index", EncodeHVMParams([]HVMParam{{39, 1}}), "beyond HVM_NR_PARAMS"},
	} {
		if _, err := DecodeHVMParams(tc.b); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// sampleHVM is an HVM save of 3 frames (0, 1 and 0xfeffc) with vCPU 0 at
// rip 0x100000.
func sampleHVM(t *testing.T) []byte {
	t.Helper()
	b, err := sampleHVMFile()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sampleHVMFile() ([]byte, error) {
	var cpu xenabi.HVMHWCPU
	cpu.Rip, cpu.Cr0, cpu.Cs_arbytes = 0x100000, 0x11, 0xc9b
	// The platform's records, as an HVM domain's save carries them.
	rtc := xenabi.HVMHWRTC{Cmos_index: 0x0b, Rtc_offset: -3600}
	rtc.Cmos_data[0x0a], rtc.Cmos_data[0x0b] = 0x26, 0x02
	hpet := xenabi.HVMHWHPET{Capability: 0x00f42400_8086a201, Config: 1, Mc64: 12345}
	hpet.Period[1] = 62500
	pmt := xenabi.HVMHWPMTimer{Tmr_val: 3579545, Pm1a_en: 1}
	var buf bytes.Buffer
	pages := func(page func(pfn uint64, data []byte) error) error {
		for _, pfn := range []uint64{0, 1, 0xfeffc} {
			if err := page(pfn, bytes.Repeat([]byte{byte(pfn)}, 4096)); err != nil {
				return err
			}
		}
		return nil
	}
	_, err := WriteHVMSave(&buf, &HVMSaveFile{Config: "name = \"h\"\ntype = \"hvm\"\nmemory = 4\n", XenMajor: 4, XenMinor: 17,
		Pages: pages, TSC: TSCInfo{KHz: 1000000}, Context: &HVMContext{CPUs: []HVMCPU{{CPU: cpu}}, RTC: &rtc, HPET: &hpet, PMTimer: &pmt},
		Params: []HVMParam{{1, 0xfeffc}, {17, 0xfefff}}})
	return buf.Bytes(), err
}

// What WriteHVMSave writes reads back whole, and Xen's verifier takes it
// at every layer (xl, libxl, libxc).
func TestHVMSaveRoundTrip(t *testing.T) {
	b := sampleHVM(t)
	var pfns []uint64
	hs, err := ReadHVMSave(bytes.NewReader(b), &HVMReadOptions{Page: func(pfn uint64, data []byte) error {
		if data[0] != byte(pfn) {
			t.Errorf("frame %#x holds %#x", pfn, data[0])
		}
		pfns = append(pfns, pfn)
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if c := hs.Context; c.RTC == nil || c.RTC.Rtc_offset != -3600 || c.RTC.Cmos_data[0x0a] != 0x26 || c.HPET == nil || c.HPET.Mc64 != 12345 ||
		c.HPET.Period[1] != 62500 || c.PMTimer == nil || c.PMTimer.Tmr_val != 3579545 || len(c.Other) != 0 {
		t.Fatalf("platform records read back: %+v", c)
	}
	if len(pfns) != 3 || hs.Pages != 3 || hs.Context.CPU(0).Rip != 0x100000 || len(hs.Params) != 2 || hs.TSC.KHz != 1000000 ||
		hs.Domain.Type != DomainX86HVM || !strings.Contains(hs.XL.Config, `type = "hvm"`) || hs.Size != int64(len(b)) {
		t.Fatalf("read back %+v, frames %v", hs, pfns)
	}

	// The layers, for verify-stream-v2 -f xl, libxl and libxc.
	r := NewReader(bytes.NewReader(b))
	if _, err := r.ReadXLHeader(); err != nil {
		t.Fatal(err)
	}
	xlHdr := int(r.Offset)
	libxc := b[xlHdr+16+8 : len(b)-8] // after the libxl header and LIBXC_CONTEXT; before the libxl END
	dir := t.TempDir()
	for format, data := range map[string][]byte{"xl": b, "libxl": b[xlHdr:], "libxc": libxc} {
		path := filepath.Join(dir, format)
		os.WriteFile(path, data, 0o644)
		if out, err := xentools.Command(t, "usr/lib/xen-4.17/bin/verify-stream-v2", "-v", "-f", format, "-i", path).CombinedOutput(); err != nil {
			t.Errorf("verify-stream-v2 -f %s: %v\n%s", format, err, out)
		}
	}
}

// ReadHVMSave refuses what libxc's HVM restore could not take, and what
// the restorer's Page callback refuses.
func TestReadHVMSaveRefuses(t *testing.T) {
	good := sampleHVM(t)
	replace := func(old, new []byte) []byte { return bytes.Replace(append([]byte{}, good...), old, new, 1) }
	ctxRec := []byte{RecHVMContext, 0, 0, 0}
	for _, tc := range []struct {
		name string
		b    []byte
		page func(uint64, []byte) error
		want string
	}{
		{"PV domain", replace([]byte{DomainX86HVM, 0, 0, 0, PageShift, 0}, []byte{DomainX86PV, 0, 0, 0, PageShift, 0}), nil, "not an x86 HVM stream"},
		{"no context", replace(ctxRec, []byte{RecVerify | 0x80, 0, 0, 0}), nil, "unknown record type"},
		{"frame refused", good, func(pfn uint64, _ []byte) error {
			if pfn == 0xfeffc {
				return errors.New("not the domain's")
			}
			return nil
		}, "not the domain's"},
		{"truncated", good[:len(good)-8], nil, "no libxl END"},
		{"trailing", append(append([]byte{}, good...), 0), nil, "data after the libxl END"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadHVMSave(bytes.NewReader(tc.b), &HVMReadOptions{Page: tc.page})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "at offset") {
				t.Fatalf("%v, want %q", err, tc.want)
			}
		})
	}
}

// FuzzReadHVMSave: no input makes ReadHVMSave panic, and whatever it
// accepts holds vCPU 0's CPU record and the params.
func FuzzReadHVMSave(f *testing.F) {
	good, err := sampleHVMFile()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add(bytes.Replace(append([]byte{}, good...), []byte{RecHVMParams, 0, 0, 0}, []byte{RecHVMParams, 0, 0, 0xff}, 1))
	f.Fuzz(func(t *testing.T, b []byte) {
		hs, err := ReadHVMSave(bytes.NewReader(b), &HVMReadOptions{MaxRecord: 1 << 20, Page: func(uint64, []byte) error { return nil }})
		if err == nil && (hs.Context == nil || hs.Context.CPU(0) == nil || hs.Params == nil) {
			t.Fatalf("accepted without the vCPU state: %+v", hs)
		}
	})
}

// A migration's stream goes on after its END (the handshake): with
// AllowTrailing the read stops at the libxl END record and leaves what
// follows unread; without it, the same input is refused.
func TestReadHVMSaveAllowTrailing(t *testing.T) {
	good := sampleHVM(t)
	in := append(append([]byte{}, good...), "domain received"...)
	r := bytes.NewReader(in)
	hs, err := ReadHVMSave(r, &HVMReadOptions{AllowTrailing: true})
	if err != nil {
		t.Fatal(err)
	}
	if hs.Size != int64(len(good)) || r.Len() != len("domain received") {
		t.Errorf("read to %d of %d, %d bytes left", hs.Size, len(good), r.Len())
	}
	if _, err := ReadHVMSave(bytes.NewReader(in), nil); err == nil {
		t.Error("trailing bytes taken without AllowTrailing")
	}
}
