package toolstack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"unsafe"

	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// savedParts are the records of a minimal well-formed save file, which
// each case of TestReadSavedRejects bends in one place.
type savedParts struct {
	p2m       []byte   // X86_PV_P2M_FRAMES body
	pages     []uint64 // PFNs of one PAGE_DATA record
	vcpus     []uint32 // vCPU ids of the X86_PV_VCPU_BASIC records
	basicSize int
	cpuInst   []uint16 // instances of the HVM_CONTEXT CPU records
}

func goodParts() savedParts {
	p2m := binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, 0), 15), 3)
	return savedParts{p2m: p2m, pages: []uint64{0, 3, 15}, vcpus: []uint32{0}, basicSize: vgcSize, cpuInst: []uint16{0}}
}

func (p savedParts) file() []byte {
	libxc := stream.AppendImageHeader(nil)
	libxc = stream.AppendDomainHeader(libxc, stream.DomainHeader{Type: stream.DomainX86PV, XenMajor: 4, XenMinor: 17})
	libxc = stream.AppendRecord(libxc, stream.RecX86PVInfo, []byte{8, 4, 0, 0, 0, 0, 0, 0})
	libxc = stream.AppendRecord(libxc, stream.RecStaticDataEnd, nil)
	libxc = stream.AppendRecord(libxc, stream.RecX86PVP2MFrames, p.p2m)
	types := make([]uint8, len(p.pages))
	data := make([][]byte, len(p.pages))
	for i := range data {
		data[i] = bytes.Repeat([]byte{byte(i + 1)}, 4096)
	}
	libxc = stream.AppendRecord(libxc, stream.RecPageData, stream.EncodePageData(p.pages, types, data))
	libxc = stream.AppendRecord(libxc, stream.RecX86TSCInfo, make([]byte, 24))
	libxc = stream.AppendRecord(libxc, stream.RecSharedInfo, make([]byte, 4096))
	for _, id := range p.vcpus {
		body := binary.LittleEndian.AppendUint32(nil, id) // vcpu_id, reserved
		body = append(body, make([]byte, 4+p.basicSize)...)
		libxc = stream.AppendRecord(libxc, stream.RecX86PVVCPUBasic, body)
	}
	desc := func(b []byte, code, inst uint16, n int) []byte {
		b = binary.LittleEndian.AppendUint16(b, code)
		b = binary.LittleEndian.AppendUint16(b, inst)
		return binary.LittleEndian.AppendUint32(b, uint32(n))
	}
	ctx := desc(nil, hvmCodeHeader, 0, 24)
	ctx = append(binary.LittleEndian.AppendUint32(ctx, hvmMagic), make([]byte, 20)...)
	cpuSize := int(unsafe.Sizeof(xenabi.HVMHWCPU{}))
	for _, inst := range p.cpuInst {
		ctx = append(desc(ctx, hvmCodeCPU, inst, cpuSize), make([]byte, cpuSize)...)
	}
	ctx = desc(ctx, hvmCodeEnd, 0, 0)
	libxc = stream.AppendRecord(libxc, stream.RecHVMContext, ctx)
	libxc = stream.AppendRecord(libxc, stream.RecEnd, nil)

	libxl := stream.AppendLibxlHeader(nil)
	libxl = stream.AppendRecord(libxl, stream.LibxlLibxcContext, nil)
	libxl = append(libxl, libxc...)
	libxl = stream.AppendRecord(libxl, stream.LibxlEnd, nil)
	return append(stream.AppendXLHeader(nil, "name = \"g\"\nmemory = 64\n"), libxl...)
}

func TestReadSaved(t *testing.T) {
	s, err := readSaved(bytes.NewReader(goodParts().file()))
	if err != nil {
		t.Fatal(err)
	}
	if s.nrPages != 16 || len(s.pages) != 3 || s.pages[15][0] != 3 || len(s.p2mFrames) != 1 || s.cpu == nil || len(s.basic) != vgcSize {
		t.Errorf("parsed %d pages of %d, P2M frames %v, cpu %v, basic %d bytes", len(s.pages), s.nrPages, s.p2mFrames, s.cpu != nil, len(s.basic))
	}
}

// Files that are well framed (the stream reader accepts every record) but
// describe an impossible domain: each a clear ErrFormat.
func TestReadSavedRejects(t *testing.T) {
	for _, c := range []struct {
		name, want string
		bend       func(*savedParts)
	}{
		{"page outside the domain", "page 0x10 outside", func(p *savedParts) { p.pages = []uint64{0, 16} }},
		{"P2M frame outside the domain", "P2M frame 0x40 outside", func(p *savedParts) { p.p2m = binary.LittleEndian.AppendUint64(p.p2m[:8], 64) }},
		{"P2M too large", "P2M range", func(p *savedParts) { binary.LittleEndian.PutUint32(p.p2m[4:], 0xffffffff) }},
		{"P2M frames too few", "cannot hold", func(p *savedParts) {
			binary.LittleEndian.PutUint32(p.p2m[4:], 1023)
		}},
		{"duplicate vCPU", "vCPU 0 appears twice", func(p *savedParts) { p.vcpus = []uint32{0, 0} }},
		{"second vCPU", "one vCPU", func(p *savedParts) { p.vcpus = []uint32{0, 1} }},
		{"no vCPU", "no state for vCPU 0", func(p *savedParts) { p.vcpus = nil }},
		{"short vCPU", "X86_PV_VCPU_BASIC of", func(p *savedParts) { p.basicSize = 100 }},
		{"duplicate CPU context", "HVM_CONTEXT CPU record", func(p *savedParts) { p.cpuInst = []uint16{0, 0} }},
		{"no CPU context", "no CPU record", func(p *savedParts) { p.cpuInst = nil }},
	} {
		p := goodParts()
		c.bend(&p)
		_, err := readSaved(bytes.NewReader(p.file()))
		if !errors.Is(err, stream.ErrFormat) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want ErrFormat with %q", c.name, err, c.want)
		}
	}
}

// The restore parser returns, without panicking, on any input.
func FuzzReadSaved(f *testing.F) {
	// Prefixes of a good file: the whole file (26 KiB) as a seed slows Go's
	// mutator to a few inputs a second; TestReadSaved covers it whole.
	good := goodParts().file()
	for _, n := range []int{300, 2000, 6000} {
		f.Add(good[:n])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		readSaved(bytes.NewReader(b))
	})
}
