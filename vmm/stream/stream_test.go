package stream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/internal/xentools"
)

func page(fill byte) []byte { return bytes.Repeat([]byte{fill}, 4096) }

// sampleLibxc builds a PV libxc stream in the saver's order.
func sampleLibxc() []byte {
	b := AppendImageHeader(nil)
	b = AppendDomainHeader(b, DomainHeader{Type: DomainX86PV, XenMajor: 4, XenMinor: 17})
	b = AppendRecord(b, RecX86PVInfo, []byte{8, 4, 0, 0, 0, 0, 0, 0})
	b = AppendRecord(b, RecStaticDataEnd, nil)
	b = AppendRecord(b, RecX86PVP2MFrames, binary.LittleEndian.AppendUint64(make([]byte, 8), 6))
	b = AppendRecord(b, RecPageData, EncodePageData(
		[]uint64{0, 1, 2, 3, 0x19},
		[]uint8{PageNormal, PageNormal, PageXTab, PageXAlloc, PageL4 | PagePinned},
		[][]byte{page(1), page(2), nil, nil, page(4)}))
	b = AppendRecord(b, RecX86TSCInfo, make([]byte, 24))
	b = AppendRecord(b, RecSharedInfo, page(0))
	vcpu := make([]byte, 8+5168)
	b = AppendRecord(b, RecX86PVVCPUBasic, vcpu)
	b = AppendRecord(b, RecHVMContext, []byte{1, 0, 0, 0, 24, 0, 0, 0})
	return AppendRecord(b, RecEnd, nil)
}

func sampleLibxl() []byte {
	b := AppendLibxlHeader(nil)
	b = AppendRecord(b, LibxlLibxcContext, nil)
	b = append(b, sampleLibxc()...)
	return AppendRecord(b, LibxlEnd, nil)
}

func sampleXL() []byte {
	return append(AppendXLHeader(nil, "name = \"g\"\nmemory = 32\n"), sampleLibxl()...)
}

// readAll reads a libxc stream to its END with our reader.
func readAll(b []byte) ([]Record, error) {
	r := NewReader(bytes.NewReader(b))
	if _, err := r.ReadImageHeader(); err != nil {
		return nil, err
	}
	if _, err := r.ReadDomainHeader(); err != nil {
		return nil, err
	}
	var recs []Record
	for {
		rec, err := r.Next()
		if err != nil {
			return recs, err
		}
		recs = append(recs, rec)
		if rec.Type == RecEnd {
			return recs, nil
		}
	}
}

func TestRoundTrip(t *testing.T) {
	recs, err := readAll(sampleLibxc())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range recs {
		names = append(names, RecordName(r.Type))
	}
	want := "X86_PV_INFO STATIC_DATA_END X86_PV_P2M_FRAMES PAGE_DATA X86_TSC_INFO SHARED_INFO X86_PV_VCPU_BASIC HVM_CONTEXT END"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("records %s", got)
	}
	pb, err := DecodePageData(recs[3].Body)
	if err != nil || len(pb.PFNs) != 5 || pb.PFNs[4] != 0x19 || pb.Types[4] != PageL4|PagePinned ||
		pb.Data[2] != nil || pb.Data[4][0] != 4 || pb.Data[1][4095] != 2 {
		t.Fatalf("page batch %+v %v", pb.Types, err)
	}
	// The xl and libxl layers.
	r := bytes.NewReader(sampleXL())
	cfg, err := ReadXLHeader(r)
	if err != nil || cfg != "name = \"g\"\nmemory = 32\n" {
		t.Fatalf("xl config %q %v", cfg, err)
	}
	sr := NewReader(r)
	if err := ReadLibxlHeader(r); err != nil {
		t.Fatal(err)
	}
	if rec, err := sr.ReadLibxlRecord(); err != nil || rec.Type != LibxlLibxcContext {
		t.Fatalf("LIBXC_CONTEXT: %v %v", rec, err)
	}
}

// Xen's own verifier accepts what we write, at every layer.
func TestVerifyStreamV2(t *testing.T) {
	dir := t.TempDir()
	for format, data := range map[string][]byte{"libxc": sampleLibxc(), "libxl": sampleLibxl(), "xl": sampleXL()} {
		path := filepath.Join(dir, format)
		os.WriteFile(path, data, 0o644)
		cmd := xentools.Command(t, "usr/lib/xen-4.17/bin/verify-stream-v2", "-v", "-f", format, "-i", path)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("verify-stream-v2 -f %s: %v\n%s", format, err, out)
		}
	}
	// Negative control: it rejects a stream we corrupt.
	bad := sampleLibxc()
	bad[12+3] = 9 // image version 9
	path := filepath.Join(dir, "bad")
	os.WriteFile(path, bad, 0o644)
	if out, err := xentools.Command(t, "usr/lib/xen-4.17/bin/verify-stream-v2", "-f", "libxc", "-i", path).CombinedOutput(); err == nil {
		t.Errorf("verify-stream-v2 accepted a corrupt stream:\n%s", out)
	}
}

// Truncation anywhere is a clear error, never a panic or a short read
// taken for a whole stream.
func TestTruncatedEverywhere(t *testing.T) {
	full := sampleLibxc()
	for n := 0; n < len(full); n++ {
		_, err := readAll(full[:n])
		if !errors.Is(err, ErrFormat) {
			t.Fatalf("truncated to %d of %d bytes: %v", n, len(full), err)
		}
	}
}

func TestCorruptStreams(t *testing.T) {
	hdr := imageHeaderSize + domHeaderSize
	set32 := func(off int, v uint32) func([]byte) {
		return func(b []byte) { binary.LittleEndian.PutUint32(b[off:], v) }
	}
	for _, c := range []struct {
		name   string
		mutate func([]byte)
		want   string
	}{
		{"marker", func(b []byte) { b[0] = 0 }, "marker"},
		{"id", func(b []byte) { b[8] = 'Y' }, "image id"},
		{"version 1", func(b []byte) { b[15] = 1 }, "version 1"},
		{"big-endian", func(b []byte) { b[17] = 1 }, "big-endian"},
		{"domain type", set32(imageHeaderSize, 7), "domain type 7"},
		{"page shift", func(b []byte) { b[imageHeaderSize+4] = 13 }, "page shift"},
		{"unknown record", set32(hdr, 0x13), "unknown record"},
		{"optional record", set32(hdr, 0x80000001), "unknown record"},
		{"pv info width", func(b []byte) { b[hdr+8] = 5 }, "guest width"},
		{"4 GiB length", set32(hdr+4, 0xFFFFFFF8), "exceeds"},
		{"bad padding", func(b []byte) {
			// STATIC_DATA_END follows X86_PV_INFO; make PV_INFO 7 bytes so
			// its padding byte (now the 8th body byte) must be zero.
			binary.LittleEndian.PutUint32(b[hdr+4:], 7)
			b[hdr+8+7] = 1
		}, "padding"},
		{"page data before static end", func(b []byte) { set32(hdr+16, RecPageData)(b) }, "PAGE_DATA"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := sampleLibxc()
			c.mutate(b)
			_, err := readAll(b)
			if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error about %q", err, c.want)
			}
		})
	}
}

// A 4 GiB length claim in a short stream allocates nothing like 4 GiB.
func TestHugeLengthDoesNotAllocate(t *testing.T) {
	b := AppendImageHeader(nil)
	b = AppendDomainHeader(b, DomainHeader{Type: DomainX86PV})
	b = binary.LittleEndian.AppendUint32(b, RecSharedInfo)
	b = binary.LittleEndian.AppendUint32(b, 100<<20) // 100 MiB claimed, under the limit
	b = append(b, make([]byte, 4096)...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := readAll(b)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrFormat) {
		t.Fatalf("got %v", err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20 {
		t.Errorf("reading a 4 KiB stream that claims 100 MiB allocated %d bytes", grew)
	}
}

func TestPageData(t *testing.T) {
	for _, c := range []struct {
		name string
		body []byte
	}{
		{"empty", make([]byte, 8)},
		{"count 0", append(make([]byte, 8), make([]byte, 8)...)},
		{"count beyond body", binary.LittleEndian.AppendUint32(nil, 1000)},
		{"reserved type 5", EncodePageData([]uint64{1}, []uint8{5}, nil)},
		{"missing data", EncodePageData([]uint64{1}, []uint8{PageNormal}, [][]byte{page(0)})[:16]},
		{"data for XTAB", append(EncodePageData([]uint64{1}, []uint8{PageXTab}, nil), page(0)...)},
	} {
		if _, err := DecodePageData(c.body); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	w := EncodePageData([]uint64{1}, []uint8{PageNormal}, [][]byte{page(0)})
	binary.LittleEndian.PutUint64(w[8:], 1|1<<55) // a reserved pfn bit
	if _, err := DecodePageData(w); !errors.Is(err, ErrFormat) {
		t.Errorf("reserved pfn bits: %v", err)
	}
}

func TestXLHeaderErrors(t *testing.T) {
	good := AppendXLHeader(nil, "x")
	for name, mutate := range map[string]func([]byte) []byte{
		"magic":      func(b []byte) []byte { b[0] = 'y'; return b },
		"byte order": func(b []byte) []byte { b[32] = 0; return b },
		"no v2":      func(b []byte) []byte { b[36] = 1; return b },
		"huge opt":   func(b []byte) []byte { binary.LittleEndian.PutUint32(b[44:], 1<<30); return b },
		"short":      func(b []byte) []byte { return b[:40] },
		"config len": func(b []byte) []byte { binary.LittleEndian.PutUint32(b[48:], 1000); return b },
	} {
		b := mutate(append([]byte(nil), good...))
		if _, err := ReadXLHeader(bytes.NewReader(b)); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := ReadLibxlHeader(bytes.NewReader(append(AppendLibxlHeader(nil)[:8], 0, 0, 0, 3, 0, 0, 0, 0))); !errors.Is(err, ErrFormat) {
		t.Errorf("libxl version 3: %v", err)
	}
}

// FuzzReader: no stream panics the reader or makes it claim success on
// something that is not a stream.
func FuzzReader(f *testing.F) {
	f.Add(sampleLibxc())
	f.Add(sampleLibxc()[:100])
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b))
		r.MaxRecord = 1 << 20
		if _, err := r.ReadImageHeader(); err != nil {
			return
		}
		if _, err := r.ReadDomainHeader(); err != nil {
			return
		}
		for i := 0; i < 1000; i++ {
			rec, err := r.Next()
			if err != nil || rec.Type == RecEnd {
				return
			}
		}
	})
}
