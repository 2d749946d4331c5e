package stream_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/stream/streamtest"
)

// readBoth reads b as a restore does, once copying each batch's pages out
// (Pages alone) and once through PageDest, and returns both results and
// both memories (PFN to page).
func readBoth(t *testing.T, b []byte, maxRecord uint32) (copied, direct map[uint64][]byte, errCopied, errDirect error) {
	t.Helper()
	copied, direct = map[uint64][]byte{}, map[uint64][]byte{}
	_, errCopied = stream.ReadSave(bytes.NewReader(b), &stream.ReadOptions{MaxRecord: maxRecord,
		Pages: func(s *stream.Save, pb stream.PageBatch) error {
			for i, pfn := range pb.PFNs {
				if pb.Data[i] != nil {
					copied[pfn] = bytes.Clone(pb.Data[i])
				}
			}
			return nil
		}})
	// The direct memory is one buffer, as guest memory is, so that pages
	// of consecutive PFNs are read in one run (up to 1024 pages; beyond,
	// pages of their own).
	var ram []byte
	_, errDirect = stream.ReadSave(bytes.NewReader(b), &stream.ReadOptions{MaxRecord: maxRecord,
		PageDest: func(s *stream.Save, pfn uint64, typ uint8) ([]byte, error) {
			n := s.P2M.NrPages()
			if pfn >= n {
				t.Fatalf("PageDest asked for pfn %#x of %d", pfn, n)
			}
			if ram == nil && n <= 1024 {
				ram = make([]byte, n*4096)
			}
			if direct[pfn] == nil {
				if ram != nil {
					direct[pfn] = ram[pfn*4096 : (pfn+1)*4096] // capacity to the end
				} else {
					direct[pfn] = make([]byte, 4096)
				}
			}
			return direct[pfn], nil
		},
		Pages: func(s *stream.Save, pb stream.PageBatch) error {
			for i, pfn := range pb.PFNs {
				if pb.Data[i] != nil && &pb.Data[i][0] != &direct[pfn][0] {
					t.Fatalf("batch data of pfn %#x is not the page PageDest gave", pfn)
				}
			}
			return nil
		}})
	return copied, direct, errCopied, errDirect
}

// sameMemory reports whether two restores wrote the same pages.
func sameMemory(a, b map[uint64][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for pfn, p := range a {
		if !bytes.Equal(p, b[pfn]) {
			return false
		}
	}
	return true
}

// PageDest reads the good saves into the same memory as copying the
// batches does, and refuses every broken file of the corpus with the
// corpus's error.
func TestPageDest(t *testing.T) {
	for name, b := range map[string][]byte{"good": streamtest.Good(), "goodPV": streamtest.GoodPV()} {
		copied, direct, e1, e2 := readBoth(t, b, 0)
		if e1 != nil || e2 != nil {
			t.Fatalf("%s: %v / %v", name, e1, e2)
		}
		if len(direct) == 0 || !sameMemory(copied, direct) {
			t.Fatalf("%s: PageDest wrote %d pages, unlike the %d copied", name, len(direct), len(copied))
		}
	}
	dir := streamtest.Dir()
	for _, c := range streamtest.Broken() {
		t.Run(c.Name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(dir, "broken", c.Name+".save"))
			if err != nil {
				t.Fatal(err)
			}
			s, err := stream.ReadSave(bytes.NewReader(b), &stream.ReadOptions{
				PageDest: func(*stream.Save, uint64, uint8) ([]byte, error) { return make([]byte, 4096), nil }})
			checkRefusal(t, s, err, c)
		})
	}
}

// pageRecord returns the offset of the good save's first PAGE_DATA record
// with data, and its length.
func pageRecord(t *testing.T, b []byte) (int, int) {
	for _, r := range records(t, b) {
		if r.Type == stream.RecPageData && r.Length > 8+8*5 {
			return int(r.Offset), int(r.Length)
		}
	}
	t.Fatal("no PAGE_DATA with data")
	return 0, 0
}

// The ways a PAGE_DATA record read through PageDest can be wrong, each
// refused with one line at the record's offset.
func TestPageDestRefusals(t *testing.T) {
	good := streamtest.Good()
	off, n := pageRecord(t, good)
	body := off + 8
	count := int(binary.LittleEndian.Uint32(good[body:]))
	tests := []struct {
		name string
		edit func(b []byte) []byte
		dest func(pfn uint64) ([]byte, error)
		want string
	}{
		{"truncated in a page", func(b []byte) []byte { return b[:body+8+8*count+100] }, nil, "truncated: "},
		{"truncated in the pfn words", func(b []byte) []byte { return b[:body+12] }, nil, "truncated: "},
		{"reserved word", func(b []byte) []byte { b[body+4] = 1; return b }, nil, "reserved field set"},
		{"reserved pfn bits", func(b []byte) []byte { b[body+8+6] = 0x10; return b }, nil, "reserved bits set"},
		{"pfn past the end", func(b []byte) []byte { b[body+8] = 0xff; b[body+9] = 0xff; return b }, nil, "beyond the domain's last pfn"},
		{"bad type", func(b []byte) []byte { b[body+8+7] = 0x50; return b }, nil, "page type"},
		{"length for fewer pages", func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[off+4:], uint32(n-4096))
			return append(b[:body+n-4096], b[body+n:]...)
		}, nil, "want"},
		{"short destination", nil, func(uint64) ([]byte, error) { return make([]byte, 100), nil }, "PageDest gave 100 bytes"},
		{"destination error", nil, func(uint64) ([]byte, error) { return nil, errors.New("no such page") }, "no such page"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := bytes.Clone(good)
			if tt.edit != nil {
				b = tt.edit(b)
			}
			dest := tt.dest
			if dest == nil {
				dest = func(uint64) ([]byte, error) { return make([]byte, 4096), nil }
			}
			_, err := stream.ReadSave(bytes.NewReader(b), &stream.ReadOptions{
				PageDest: func(_ *stream.Save, pfn uint64, _ uint8) ([]byte, error) { return dest(pfn) }})
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "at offset 0x") {
				t.Fatalf("%v, want an error at an offset about %q", err, tt.want)
			}
		})
	}
}

// Pages of consecutive PFNs land in one buffer in one read each run, and
// a run stops at a page of another buffer or a discarded one.
func TestPageDestRuns(t *testing.T) {
	b := streamtest.WithRun(20)
	copied, direct, e1, e2 := readBoth(t, b, 0)
	if e1 != nil || e2 != nil {
		t.Fatalf("%v / %v", e1, e2)
	}
	if !sameMemory(copied, direct) || len(direct) < 20 {
		t.Fatalf("a run of 20 pages read into other memory (%d pages)", len(direct))
	}
	// One read for the run's 20 pages.
	ram := make([]byte, (0x10+20)*4096)
	cr := &countingReader{r: bytes.NewReader(b)}
	if _, err := stream.ReadSave(cr, &stream.ReadOptions{
		PageDest: func(_ *stream.Save, pfn uint64, _ uint8) ([]byte, error) { return ram[pfn*4096 : (pfn+1)*4096], nil }}); err != nil {
		t.Fatal(err)
	}
	if cr.largest != 20*4096 {
		t.Fatalf("the largest read was %d bytes, want the run's %d", cr.largest, 20*4096)
	}
	// Discarding every other page of the run, and giving the others
	// pages of their own: the pages kept still hold their own data.
	got := map[uint64][]byte{}
	_, err := stream.ReadSave(bytes.NewReader(b), &stream.ReadOptions{
		PageDest: func(_ *stream.Save, pfn uint64, _ uint8) ([]byte, error) {
			if pfn%2 == 1 {
				return nil, nil
			}
			got[pfn] = make([]byte, 4096)
			return got[pfn], nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	for pfn, p := range got {
		if !bytes.Equal(p, copied[pfn]) {
			t.Fatalf("pfn %#x: not its own data", pfn)
		}
	}
}

// A nil destination discards the page; the rest of the stream still reads.
func TestPageDestDiscard(t *testing.T) {
	s, err := stream.ReadSave(bytes.NewReader(streamtest.GoodPV()), &stream.ReadOptions{
		PageDest: func(*stream.Save, uint64, uint8) ([]byte, error) { return nil, nil },
		Pages: func(s *stream.Save, pb stream.PageBatch) error {
			for _, d := range pb.Data {
				if d != nil {
					t.Fatal("a discarded page has data in the batch")
				}
			}
			return nil
		}})
	if err != nil || s.PagesWithData == 0 {
		t.Fatalf("%v (%d pages with data)", err, s.PagesWithData)
	}
}

// TestReadSavePageDestAllocs: reading pages through PageDest allocates
// nothing of a record's size: 64 more records of 64 pages (256 KiB each)
// cost under 1 KiB of allocations per record (a few small headers),
// where reading them whole allocates each record's body.
func TestReadSavePageDestAllocs(t *testing.T) {
	mem := make([]byte, 4096)
	allocated := func(b []byte, dest bool) uint64 {
		opts := &stream.ReadOptions{}
		if dest {
			opts.PageDest = func(*stream.Save, uint64, uint8) ([]byte, error) { return mem, nil }
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		if _, err := stream.ReadSave(bytes.NewReader(b), opts); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	base, more := streamtest.GoodPV(), streamtest.WithPages(64, 64)
	perRecord := (int64(allocated(more, true)) - int64(allocated(base, true))) / 64
	if perRecord > 1024 {
		t.Fatalf("%d bytes allocated per PAGE_DATA record through PageDest", perRecord)
	}
	// The negative control: without PageDest each body is allocated.
	if whole := (int64(allocated(more, false)) - int64(allocated(base, false))) / 64; whole < 64*4096 {
		t.Fatalf("reading whole records allocated only %d bytes per record: the measure is broken", whole)
	}
}

// FuzzPageDest: whatever the input, reading through PageDest and copying
// the batches agree on refusing it and, when they accept it, on every
// page written.
func FuzzPageDest(f *testing.F) {
	f.Add(streamtest.Good())
	f.Add(streamtest.GoodPV())
	for _, c := range streamtest.Broken() {
		f.Add(c.Data)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		copied, direct, e1, e2 := readBoth(t, b, 1<<20)
		if (e1 == nil) != (e2 == nil) {
			t.Fatalf("copying: %v; PageDest: %v", e1, e2)
		}
		if e1 == nil && !sameMemory(copied, direct) {
			t.Fatal("PageDest wrote other pages than the batches hold")
		}
	})
}

// countingReader notes the largest read asked of it.
type countingReader struct {
	r       *bytes.Reader
	largest int
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.largest = max(c.largest, len(p))
	return c.r.Read(p)
}

// AppendPageDataHeader followed by the pages is the record AppendRecord
// and EncodePageData write, byte for byte, whatever the mix of types.
func TestAppendPageDataHeader(t *testing.T) {
	pg := func(b byte) []byte { return bytes.Repeat([]byte{b}, 4096) }
	tests := []struct {
		name  string
		pfns  []uint64
		types []uint8
		data  [][]byte
	}{
		{"one page", []uint64{7}, []uint8{stream.PageNormal}, [][]byte{pg(1)}},
		{"tables and holes", []uint64{1, 2, 3, 4}, []uint8{stream.PageL1, stream.PageXTab, stream.PageL4 | stream.PagePinned, stream.PageBroken},
			[][]byte{pg(2), nil, pg(3), nil}},
		{"no data", []uint64{9, 10}, []uint8{stream.PageXTab, stream.PageXAlloc}, [][]byte{nil, nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := stream.AppendRecord(nil, stream.RecPageData, stream.EncodePageData(tt.pfns, tt.types, tt.data))
			got := stream.AppendPageDataHeader(nil, tt.pfns, tt.types)
			for i, d := range tt.data {
				if stream.PageHasData(tt.types[i]) {
					got = append(got, d...)
				}
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%d bytes, want %d (or different bytes)", len(got), len(want))
			}
		})
	}
	// The negative control: the same header with a page left out is not a
	// record the reader takes.
	b := stream.AppendPageDataHeader(nil, []uint64{7}, []uint8{stream.PageNormal})
	if _, err := stream.DecodePageData(b[8:]); err == nil {
		t.Fatal("a PAGE_DATA record without its page decoded")
	}
}
