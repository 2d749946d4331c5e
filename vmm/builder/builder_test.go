package builder

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/guest"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/physmap"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

func image() []byte { return bytes.Clone(guest.Image) }

// noteDesc returns the file offset and length of the descriptor of the
// image's Xen note of the given type.
func noteDesc(t *testing.T, img []byte, typ uint32) (int, int) {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		for off := int(p.Off); off < int(p.Off+p.Filesz); {
			namesz := int(binary.LittleEndian.Uint32(img[off:]))
			descsz := int(binary.LittleEndian.Uint32(img[off+4:]))
			ty := binary.LittleEndian.Uint32(img[off+8:])
			desc := off + 12 + (namesz+3)&^3
			if ty == typ {
				return desc, descsz
			}
			off = desc + (descsz+3)&^3
		}
	}
	t.Fatalf("no note %d", typ)
	return 0, 0
}

func progHeader(t *testing.T, img []byte, typ elf.ProgType) int {
	t.Helper()
	phoff := int(binary.LittleEndian.Uint64(img[32:]))
	phnum := int(binary.LittleEndian.Uint16(img[56:]))
	for i := 0; i < phnum; i++ {
		ph := phoff + i*56
		if elf.ProgType(binary.LittleEndian.Uint32(img[ph:])) == typ {
			return ph
		}
	}
	t.Fatalf("no program header of type %v", typ)
	return 0
}

func TestParseGuestStub(t *testing.T) {
	k, err := Parse(guest.Image)
	if err != nil {
		t.Fatal(err)
	}
	n := k.Notes
	if n.GuestOS != "xenresume-stub" || n.XenVersion != "xen-3.0" || n.Loader != "generic" {
		t.Errorf("string notes: %+v", n)
	}
	if n.VirtBase != 0x40000000 || n.PaddrOffset != n.VirtBase || !n.SuspendCancel {
		t.Errorf("numeric notes: %+v", n)
	}
	if n.Entry != k.VirtStart || n.HypercallPage%4096 != 0 {
		t.Errorf("entry %#x hypercall page %#x", n.Entry, n.HypercallPage)
	}
}

func TestParseBadImages(t *testing.T) {
	putNote := func(typ uint32, v uint64) func(*testing.T, []byte) []byte {
		return func(t *testing.T, img []byte) []byte {
			off, n := noteDesc(t, img, typ)
			if n != 8 {
				t.Fatalf("note %d is %d bytes", typ, n)
			}
			binary.LittleEndian.PutUint64(img[off:], v)
			return img
		}
	}
	for _, c := range []struct {
		name   string
		mutate func(*testing.T, []byte) []byte
		want   string
	}{
		{"not ELF", func(*testing.T, []byte) []byte { return []byte("#!/bin/sh\necho hi\n") }, "not an ELF file"},
		{"empty", func(*testing.T, []byte) []byte { return nil }, "not an ELF file"},
		{"truncated header", func(_ *testing.T, b []byte) []byte { return b[:40] }, "malformed ELF"},
		{"32-bit", func(_ *testing.T, b []byte) []byte { b[elf.EI_CLASS] = byte(elf.ELFCLASS32); return b }, "ELFCLASS32"},
		{"big-endian", func(_ *testing.T, b []byte) []byte { b[elf.EI_DATA] = byte(elf.ELFDATA2MSB); return b }, ""},
		{"wrong machine", func(_ *testing.T, b []byte) []byte {
			binary.LittleEndian.PutUint16(b[18:], uint16(elf.EM_AARCH64))
			return b
		}, "EM_AARCH64"},
		{"no notes", func(*testing.T, []byte) []byte {
			e := xtfLike()
			e.notes = nil
			return e.bytes()
		}, "no Xen ELF notes and no __xen_guest section"},
		{"note runs past segment", func(t *testing.T, b []byte) []byte {
			off, _ := noteDesc(t, b, xenabi.ElfnoteGuestOS)
			binary.LittleEndian.PutUint32(b[off-16:], 0xfffffff0) // its namesz
			return b
		}, "runs past its end"},
		{"wrong XEN_VERSION", func(t *testing.T, b []byte) []byte {
			off, _ := noteDesc(t, b, xenabi.ElfnoteXenVersion)
			copy(b[off:], "xen-2.0")
			return b
		}, `XEN_VERSION "xen-2.0": Xen loads only images built for xen-3.0`},
		{"wrong LOADER", func(t *testing.T, b []byte) []byte {
			off, _ := noteDesc(t, b, xenabi.ElfnoteLoader)
			copy(b[off:], "generix")
			return b
		}, "generic loader"},
		{"required unsupported feature", func(t *testing.T, b []byte) []byte {
			off, _ := noteDesc(t, b, xenabi.ElfnoteFeatures)
			copy(b[off:], "!auto_translated_physmap\x00")
			return b
		}, `kernel requires feature 'auto_translated_physmap'`},
		{"entry outside image", putNote(xenabi.ElfnoteEntry, 0xffffffff90000000), "entry point 0xffffffff90000000 is outside"},
		{"entry past the image", putNote(xenabi.ElfnoteEntry, 0x40000000+16<<20), "is outside"}, // the stub ends below 16 MiB
		{"hypercall page below VIRT_BASE", putNote(xenabi.ElfnoteHypercallPage, 0x3ff00000), "HYPERCALL_PAGE"},
		{"segment below VIRT_BASE", putNote(xenabi.ElfnotePaddrOffset, 0x40100000), "below VIRT_BASE"},
		{"segment file range outside file", func(t *testing.T, b []byte) []byte {
			ph := progHeader(t, b, elf.PT_LOAD)
			binary.LittleEndian.PutUint64(b[ph+32:], 1<<40) // p_filesz
			binary.LittleEndian.PutUint64(b[ph+40:], 1<<41) // p_memsz
			return b
		}, "outside the"},
		{"filesz > memsz", func(t *testing.T, b []byte) []byte {
			ph := progHeader(t, b, elf.PT_LOAD)
			binary.LittleEndian.PutUint64(b[ph+40:], 16)
			return b
		}, "exceeds memory size"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(c.mutate(t, image()))
			if !errors.Is(err, ErrBadImage) {
				t.Fatalf("got %v, want ErrBadImage", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

func build(t *testing.T, memSize uint64, cmdline string) (*Kernel, *Layout, *machine.Memory, physmap.Map, error) {
	t.Helper()
	k, err := Parse(guest.Image)
	if err != nil {
		t.Fatal(err)
	}
	mem := machine.NewMemory(machine.Region{Name: "ram", Mem: make([]byte, memSize)})
	frames, err := physmap.ForDomain(3, memSize/4096)
	if err != nil {
		t.Fatal(err)
	}
	l, err := k.Build(mem, Params{
		Cmdline: cmdline, Frames: frames, SharedInfoMFN: frames.XenFrame(0),
		StoreEvtchn: 1, ConsoleEvtchn: 2,
	})
	return k, l, mem, frames, err
}

func TestBuildStartInfo(t *testing.T) {
	k, l, mem, frames, err := build(t, 8<<20, "test=hello x=1")
	if err != nil {
		t.Fatal(err)
	}
	pg, _ := mem.Page(l.GPA(l.StartInfo))
	si := xenabi.View[xenabi.StartInfo](pg)
	mfn := func(va uint64) uint64 { m, _ := frames.MFN(l.PFN(va)); return m }
	if got := xenabi.CString(si.Magic[:]); got != "xen-3.0-x86_64" {
		t.Errorf("magic %q", got)
	}
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"nr_pages", si.Nr_pages, 2048},
		{"shared_info", si.Shared_info, frames.XenFrame(0) << 12},
		{"flags", uint64(si.Flags), 0},
		{"store_mfn", si.Store_mfn, mfn(l.Store)},
		{"store_evtchn", uint64(si.Store_evtchn), 1},
		{"console.mfn", binary.LittleEndian.Uint64(si.Console[:]), mfn(l.Console)},
		{"console.evtchn", uint64(binary.LittleEndian.Uint32(si.Console[8:])), 2},
		{"pt_base", si.Pt_base, l.PageTables},
		{"nr_pt_frames", si.Nr_pt_frames, l.PTFrames},
		{"mfn_list", si.Mfn_list, l.P2M},
		{"first_p2m_pfn", si.First_p2m_pfn, l.PFN(l.P2M)},
		{"nr_p2m_frames", si.Nr_p2m_frames, 4},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("start_info.%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	if got := xenabi.CString(si.Cmd_line[:]); got != "test=hello x=1" {
		t.Errorf("cmd_line %q", got)
	}
	// The start-of-day order and alignment xc_dom uses.
	order := []uint64{k.VirtEnd, l.P2M, l.StartInfo, l.Store, l.Console, l.PageTables, l.StackTop, l.End}
	for i := 1; i < len(order); i++ {
		if order[i] < order[i-1] || (i < len(order)-1 && order[i]%4096 != 0) {
			t.Errorf("layout out of order or unaligned at %d: %#x", i, order)
		}
	}
	if l.End%(4<<20) != 0 || l.End-l.StackTop < 512<<10 {
		t.Errorf("region end %#x, stack top %#x", l.End, l.StackTop)
	}
	// Every machine frame the builder handed out translates back through
	// the P2M it wrote, and no MFN equals its PFN.
	p2m, _ := mem.Slice(l.GPA(l.P2M), si.Nr_pages*8)
	for pfn := uint64(0); pfn < si.Nr_pages; pfn++ {
		m := binary.LittleEndian.Uint64(p2m[pfn*8:])
		if back, ok := frames.PFN(m); !ok || back != pfn || m == pfn {
			t.Fatalf("P2M[%#x] = %#x (back %#x, %v)", pfn, m, back, ok)
		}
	}
	for _, m := range []uint64{si.Store_mfn, binary.LittleEndian.Uint64(si.Console[:])} {
		if _, ok := frames.PFN(m); !ok {
			t.Errorf("MFN %#x is not in the P2M", m)
		}
	}
	if _, ok := frames.PFN(si.Shared_info >> 12); ok {
		t.Error("shared_info is a Xen page and must not be in the P2M")
	}
	// The segments are loaded where the image says.
	for _, s := range k.Segments {
		got, _ := mem.Slice(l.GPA(s.Virt), uint64(len(s.Data)))
		if !bytes.Equal(got, s.Data) {
			t.Errorf("segment at %#x not loaded", s.Virt)
		}
	}
}

// The bootstrap page tables are xc_dom's: they hold machine frames and map
// the start-of-day region at VIRT_BASE, and nothing past it, with 4 KiB
// pages, the tables' own frames read-only. The test walks them as the
// hardware does, through a machine-address alias of RAM.
func TestBuildPageTables(t *testing.T) {
	for _, size := range []uint64{4 << 20, 64 << 20, 1<<30 + 2<<20} {
		k, err := Parse(guest.Image)
		if err != nil {
			t.Fatal(err)
		}
		ram := make([]byte, size)
		frames, err := physmap.ForDomain(3, size/4096)
		if err != nil {
			t.Fatal(err)
		}
		ma := frames.MachineAddress()
		mem := machine.NewMemory(machine.Region{Name: "ram", Mem: ram},
			machine.Region{Name: "machine-ram", GPA: ma, Mem: ram, Alias: true})
		l, err := k.Build(mem, Params{Frames: frames, SharedInfoMFN: frames.XenFrame(0)})
		if err != nil {
			t.Fatal(err)
		}
		if m, _ := frames.MFN(l.PFN(l.PageTables)); l.L4MFN != m {
			t.Fatalf("size %d: L4 MFN %#x, want %#x", size, l.L4MFN, m)
		}
		p := machine.Paging{CR0: 0x80050033, CR3: l.L4MFN << 12, CR4: 0x620, EFER: 0xd00}
		ptEnd := l.PageTables + l.PTFrames*4096
		for va := l.VirtBase; va < l.End; va += 4096 {
			got, err := mem.Translate(p, va+0x123)
			if err != nil || got != ma+l.GPA(va)+0x123 {
				t.Fatalf("size %d: VA %#x -> %#x, %v", size, va, got, err)
			}
			_, err = mem.TranslateWrite(p, va)
			if wantRO := va >= l.PageTables && va < ptEnd; wantRO != errors.Is(err, machine.ErrFault) {
				t.Errorf("size %d: VA %#x: write %v, page-table frame %v", size, va, err, wantRO)
			}
		}
		if _, err := mem.Translate(p, l.End); !errors.Is(err, machine.ErrFault) {
			t.Errorf("size %d: the byte after the start-of-day region is mapped", size)
		}
		if _, err := mem.Translate(p, 0x1000); !errors.Is(err, machine.ErrFault) {
			t.Errorf("low memory is mapped")
		}
	}
}

// A kernel that declares supervisor_mode_kernel, required or not, expects
// ring 0: Xen never runs it as a 64-bit PV guest, and neither does
// xenresume (Parse refuses it required, as not offered; Build refuses it
// merely supported).
func TestBuildRefusesSupervisorMode(t *testing.T) {
	for _, features := range []string{"!supervisor_mode_kernel", "writable_page_tables|supervisor_mode_kernel"} {
		t.Run(features, func(t *testing.T) {
			k, err := Parse(withNote(xtfLike(), strNote(xenabi.ElfnoteFeatures, features)).bytes())
			if features[0] == '!' {
				// Required: refused as soon as the image is parsed, since
				// it is not offered.
				var fe *FeatureError
				if !errors.As(err, &fe) || fe.Name != "supervisor_mode_kernel" || !errors.Is(err, ErrBadImage) {
					t.Fatalf("got %v, want a FeatureError for supervisor_mode_kernel", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			frames, err := physmap.ForDomain(3, 2048)
			if err != nil {
				t.Fatal(err)
			}
			mem := machine.NewMemory(machine.Region{Name: "ram", Mem: make([]byte, 8<<20)})
			_, err = k.Build(mem, Params{Frames: frames})
			if !errors.Is(err, ErrSupervisorMode) || !errors.Is(err, ErrBadImage) {
				t.Fatalf("got %v, want ErrSupervisorMode", err)
			}
			if !strings.Contains(err.Error(), "supervisor_mode_kernel") {
				t.Errorf("error %q does not name the feature", err)
			}
		})
	}
}

func TestBuildErrors(t *testing.T) {
	for _, c := range []struct {
		name    string
		mem     uint64
		cmdline string
		want    string
	}{
		{"too small", 2 << 20, "", "memory too small"},
		{"not 2 MiB multiple", 9 << 20 / 2, "", "multiple of 2 MiB"},
		{"too large", 4 << 30, "", "exceeds"},
		{"cmdline too long", 8 << 20, strings.Repeat("x", 1024), "command line"},
	} {
		t.Run(c.name, func(t *testing.T) {
			k, err := Parse(guest.Image)
			if err != nil {
				t.Fatal(err)
			}
			pages := c.mem / 4096
			mem := machine.NewMemory(machine.Region{Name: "ram", Mem: make([]byte, min(c.mem, 64<<20))})
			_, err = k.Build(mem, Params{Cmdline: c.cmdline, Frames: physmap.Map{Base: 1 << 20, NrPages: pages}})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want %q", err, c.want)
			}
		})
	}
}

// FuzzParse: no image, however malformed, panics the parser.
func FuzzParse(f *testing.F) {
	f.Add(guest.Image)
	f.Add(guest.Image[:512])
	// Xen's other note sources, and every wrapping xc_dom unpacks.
	xtf := xtfLike()
	f.Add(xtf.bytes())
	sect := xtfLike()
	sect.sectionNotes, sect.notes = sect.notes, nil
	f.Add(sect.bytes())
	f.Add(testELF{
		entry:     0xffffffff80100000,
		loads:     []testLoad{{paddr: 0xffffffff80100000, vaddr: 0xffffffff80100000, data: make([]byte, 64), flags: elf.PF_R | elf.PF_X}},
		guestInfo: "GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xffffffff80000000,HYPERCALL_PAGE=0x100,FEATURES=!writable_page_tables",
	}.bytes())
	small := xtfLike()
	small.loads[0].data = small.loads[0].data[:64]
	img := small.bytes()
	f.Add(gzipBytes(f, img))
	f.Add(bzImage(gzipPayload(f, img), 0x20f))
	f.Add(bzImage(xzPayload(f, img), 0x20f))
	f.Add(bzImage(lzmaPayload(f, img), 0x20f))
	f.Add(bzImage(lz4Payload(f, img), 0x20f))
	f.Add(bzImage(zstdPayload(f, img), 0x20f))
	for _, name := range []string{"xtf-like.elf.bz2", "xtf-like.elf.x86.xz"} {
		p, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(bzImage(p, 0x20f))
	}
	f.Fuzz(func(t *testing.T, img []byte) {
		// A small limit keeps each run cheap; the parser's bounds are
		// what is under test.
		_, err := ParseWith(img, Options{Offer: DefaultOffer, MaxDecompressed: 4 << 20})
		if err != nil && !errors.Is(err, ErrBadImage) {
			t.Fatalf("error %v does not wrap ErrBadImage", err)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("error spans lines: %q", err)
		}
	})
}
