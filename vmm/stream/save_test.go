package stream_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/stream/streamtest"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// records lists a good file's records as ReadSave reports them.
func records(t *testing.T, b []byte) []stream.RecordInfo {
	t.Helper()
	var rs []stream.RecordInfo
	_, err := stream.ReadSave(bytes.NewReader(b), &stream.ReadOptions{Record: func(_ *stream.Save, r stream.RecordInfo) error {
		r.Decoded = reflect.TypeOf(r.Decoded) // the value is only valid during the call
		rs = append(rs, r)
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// find returns the offset of the first record named name.
func find(t *testing.T, rs []stream.RecordInfo, name string) int {
	t.Helper()
	for _, r := range rs {
		if r.Name() == name {
			return int(r.Offset)
		}
	}
	t.Fatalf("no %s record", name)
	return 0
}

// splice inserts ins at off.
func splice(b []byte, off int, ins ...byte) []byte {
	return append(append(bytes.Clone(b[:off]), ins...), b[off:]...)
}

// Every record, libxl and libxc, in file order, at its offset, with its
// decoded body.
func TestReadSaveRecords(t *testing.T) {
	good := streamtest.Good()
	rs := records(t, good)
	var names []string
	for _, r := range rs {
		names = append(names, r.Name())
	}
	want := "libxl LIBXC_CONTEXT X86_PV_INFO X86_CPUID_POLICY STATIC_DATA_END X86_PV_P2M_FRAMES PAGE_DATA PAGE_DATA " +
		"X86_TSC_INFO SHARED_INFO X86_PV_VCPU_BASIC HVM_CONTEXT END libxl END"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("records\n%s\nwant\n%s", got, want)
	}
	for i, r := range rs {
		hdr := good[r.Offset : r.Offset+8]
		if binary.LittleEndian.Uint32(hdr) != r.Type || binary.LittleEndian.Uint32(hdr[4:]) != r.Length {
			t.Errorf("record %d (%s) is not at offset %#x", i, r.Name(), r.Offset)
		}
	}
	decoded := map[string]any{
		"X86_PV_INFO": stream.PVInfo{}, "X86_PV_P2M_FRAMES": stream.P2MFrames{}, "PAGE_DATA": stream.PageBatch{},
		"X86_TSC_INFO": stream.TSCInfo{}, "SHARED_INFO": &xenabi.SharedInfo{}, "X86_PV_VCPU_BASIC": &stream.VCPUBasic{},
		"HVM_CONTEXT": &stream.HVMContext{}, "END": nil, "libxl END": nil,
	}
	for _, r := range rs {
		if d, ok := decoded[r.Name()]; ok && r.Decoded != reflect.TypeOf(d) {
			t.Errorf("%s decoded as %v", r.Name(), r.Decoded)
		}
	}
}

// Pages arrive once each, in order, and only from before a VERIFY record.
func TestReadSavePages(t *testing.T) {
	good := streamtest.Good()
	rs := records(t, good)
	pages := map[uint64][]byte{}
	var order []uint64
	opts := &stream.ReadOptions{Pages: func(s *stream.Save, b stream.PageBatch) error {
		if s.P2M.NrPages() != streamtest.NrPages {
			t.Errorf("P2M not known before the pages: %+v", s.P2M)
		}
		for i, pfn := range b.PFNs {
			order = append(order, pfn)
			if b.Data[i] != nil {
				pages[pfn] = bytes.Clone(b.Data[i])
			}
		}
		return nil
	}}
	if _, err := stream.ReadSave(bytes.NewReader(good), opts); err != nil {
		t.Fatal(err)
	}
	si := xenabi.View[xenabi.StartInfo](pages[streamtest.StartInfoPFN])
	if len(pages) != 1 || si == nil || xenabi.CString(si.Magic[:]) != "xen-3.0-x86_64" || si.Nr_pages != streamtest.NrPages {
		t.Errorf("pages %v", pages)
	}
	if want := []uint64{1, 3, 4, 2, 9}; !reflect.DeepEqual(order, want) {
		t.Errorf("pfns %v, want %v", order, want)
	}

	// VERIFY and the pages again, before the TSC: checked, counted, not
	// passed on.
	at := find(t, rs, "X86_TSC_INFO")
	again := good[find(t, rs, "PAGE_DATA"):at]
	v := splice(good, at, append(stream.AppendRecord(nil, stream.RecVerify, nil), again...)...)
	order = nil
	s, err := stream.ReadSave(bytes.NewReader(v), opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(order) != 5 || s.VerifyPages != 5 || s.Pages != 10 || s.PageRecords != 4 {
		t.Errorf("with VERIFY: %d pages passed on, %d verify, %d pages in %d records", len(order), s.VerifyPages, s.Pages, s.PageRecords)
	}

	// The callback's error ends the read, at the record's offset.
	boom := errors.New("guest memory is full")
	_, err = stream.ReadSave(bytes.NewReader(good), &stream.ReadOptions{Pages: func(*stream.Save, stream.PageBatch) error { return boom }})
	if !errors.Is(err, boom) || errors.Is(err, stream.ErrFormat) || !strings.HasPrefix(err.Error(), "at offset 0x102: ") {
		t.Errorf("callback error: %v", err)
	}
}

// Errors name the file offset of the record at fault.
func TestReadSaveErrorOffset(t *testing.T) {
	for _, c := range streamtest.Broken() {
		if c.Name != "vcpu-basic-short" {
			continue
		}
		rs := records(t, streamtest.Good())
		want := find(t, rs, "X86_PV_VCPU_BASIC")
		_, err := stream.ReadSave(bytes.NewReader(c.Data), nil)
		var fe *stream.FormatError
		if !errors.As(err, &fe) || fe.Offset != int64(want) || err.Error() != "at offset 0x2172: record X86_PV_VCPU_BASIC: 108 bytes, want 5176" {
			t.Errorf("got %v (offset %d), want the record at %#x", err, fe.Offset, want)
		}
		return
	}
	t.Fatal("no vcpu-basic-short case")
}

// AllowTrailing stops at the libxl END for streams that go on.
func TestReadSaveAllowTrailing(t *testing.T) {
	good := streamtest.Good()
	b := append(bytes.Clone(good), "more stream"...)
	if _, err := stream.ReadSave(bytes.NewReader(b), nil); err == nil {
		t.Fatal("trailing bytes accepted")
	}
	s, err := stream.ReadSave(bytes.NewReader(b), &stream.ReadOptions{AllowTrailing: true})
	if err != nil || s.Size != int64(len(good)) {
		t.Fatalf("AllowTrailing: %v", err)
	}
}

// A version 2 stream has no STATIC_DATA_END or policies: it is implied
// before the P2M.
func TestReadSaveVersion2(t *testing.T) {
	good := streamtest.Good()
	rs := records(t, good)
	img := find(t, rs, "libxl LIBXC_CONTEXT") + 8
	from, to := find(t, rs, "X86_CPUID_POLICY"), find(t, rs, "X86_PV_P2M_FRAMES")
	v2 := append(bytes.Clone(good[:from]), good[to:]...)
	binary.BigEndian.PutUint32(v2[img+12:], 2)
	s, err := stream.ReadSave(bytes.NewReader(v2), nil)
	if err != nil || s.Image.Version != 2 {
		t.Fatalf("v2: %v", err)
	}
	// STATIC_DATA_END itself is a v3 record.
	v2 = splice(v2, from, stream.AppendRecord(nil, stream.RecStaticDataEnd, nil)...)
	if _, err := stream.ReadSave(bytes.NewReader(v2), nil); !errors.Is(err, stream.ErrFormat) || !strings.Contains(err.Error(), "version 2") {
		t.Errorf("STATIC_DATA_END in v2: %v", err)
	}
}

// The last of a repeated record wins, as in libxc; empty vCPU records are
// skipped; other vCPU blobs are kept.
func TestReadSaveRepeats(t *testing.T) {
	good := streamtest.Good()
	rs := records(t, good)
	var si xenabi.SharedInfo
	si.Wc_sec = 42
	vcpu := func(typ uint32, blob []byte) []byte {
		return stream.AppendRecord(nil, typ, append(make([]byte, 8), blob...))
	}
	extra := stream.AppendRecord(nil, stream.RecSharedInfo, stream.EncodeSharedInfo(&si))
	extra = append(extra, vcpu(stream.RecX86PVVCPUBasic, nil)...)
	extra = append(extra, vcpu(stream.RecX86PVVCPUExtended, []byte{1, 2, 3, 4, 5, 6, 7, 8})...)
	extra = append(extra, vcpu(stream.RecX86PVVCPUMSRs, make([]byte, 32))...)
	b := splice(good, find(t, rs, "HVM_CONTEXT"), extra...)
	s, err := stream.ReadSave(bytes.NewReader(b), nil)
	if err != nil {
		t.Fatal(err)
	}
	v := s.VCPU(0)
	if s.SharedInfo.Wc_sec != 42 || v.Context == nil || len(v.Extended) != 8 || len(v.MSRs) != 32 || v.XSave != nil {
		t.Errorf("shared_info wc_sec %d, vCPU %+v", s.SharedInfo.Wc_sec, v)
	}
}

// A record that claims 100 MiB in a short file costs no more than the file.
func TestReadSaveHugeLengthDoesNotAllocate(t *testing.T) {
	good := streamtest.Good()
	rs := records(t, good)
	at := find(t, rs, "SHARED_INFO")
	b := bytes.Clone(good[:at+8+4096])
	binary.LittleEndian.PutUint32(b[at+4:], 100<<20)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := stream.ReadSave(bytes.NewReader(b), nil)
	runtime.ReadMemStats(&after)
	var fe *stream.FormatError
	if !errors.As(err, &fe) || !fe.Truncated {
		t.Fatalf("got %v", err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20 {
		t.Errorf("reading %d bytes that claim 100 MiB allocated %d bytes", len(b), grew)
	}
}

// Too many vCPUs is a refusal, not an allocation.
func TestReadSaveMaxVCPUs(t *testing.T) {
	good := streamtest.Good()
	rs := records(t, good)
	at := find(t, rs, "X86_PV_VCPU_BASIC")
	b := bytes.Clone(good)
	binary.LittleEndian.PutUint32(b[at+8:], 0xffffffff)
	if _, err := stream.ReadSave(bytes.NewReader(b), nil); !errors.Is(err, stream.ErrFormat) || !strings.Contains(err.Error(), "limit of 512 vCPUs") {
		t.Errorf("vCPU 0xffffffff: %v", err)
	}
}
