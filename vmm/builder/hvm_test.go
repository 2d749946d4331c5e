package builder

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// elf32 lays out an ELF32 image as XTF's hvm builds are after objcopy to
// elf32-x86-64: one PT_LOAD per load, notes in a PT_NOTE, no sections.
func elf32(machine elf.Machine, entry uint32, loads []testLoad, notes []testNote) []byte {
	le := binary.LittleEndian
	nph := len(loads)
	if len(notes) > 0 {
		nph++
	}
	out := make([]byte, 52+32*nph)
	var phdrs [][]byte
	for _, l := range loads {
		for len(out)%16 != 0 {
			out = append(out, 0)
		}
		off := len(out)
		out = append(out, l.data...)
		memsz := l.memsz
		if memsz == 0 {
			memsz = uint64(len(l.data))
		}
		ph := make([]byte, 32)
		le.PutUint32(ph[0:], uint32(elf.PT_LOAD))
		le.PutUint32(ph[4:], uint32(off))
		le.PutUint32(ph[8:], uint32(l.vaddr))
		le.PutUint32(ph[12:], uint32(l.paddr))
		le.PutUint32(ph[16:], uint32(len(l.data)))
		le.PutUint32(ph[20:], uint32(memsz))
		le.PutUint32(ph[24:], uint32(l.flags))
		le.PutUint32(ph[28:], 16)
		phdrs = append(phdrs, ph)
	}
	if len(notes) > 0 {
		for len(out)%4 != 0 {
			out = append(out, 0)
		}
		n := encodeNotes(notes)
		ph := make([]byte, 32)
		le.PutUint32(ph[0:], uint32(elf.PT_NOTE))
		le.PutUint32(ph[4:], uint32(len(out)))
		le.PutUint32(ph[16:], uint32(len(n)))
		le.PutUint32(ph[20:], uint32(len(n)))
		le.PutUint32(ph[24:], uint32(elf.PF_R))
		le.PutUint32(ph[28:], 4)
		phdrs = append(phdrs, ph)
		out = append(out, n...)
	}
	copy(out, elf.ELFMAG)
	out[elf.EI_CLASS] = byte(elf.ELFCLASS32)
	out[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	out[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	le.PutUint16(out[16:], uint16(elf.ET_EXEC))
	le.PutUint16(out[18:], uint16(machine))
	le.PutUint32(out[20:], uint32(elf.EV_CURRENT))
	le.PutUint32(out[24:], entry)
	le.PutUint32(out[28:], 52)
	le.PutUint16(out[40:], 52)
	le.PutUint16(out[42:], 32)
	le.PutUint16(out[44:], uint16(nph))
	le.PutUint16(out[46:], 40)
	for i, ph := range phdrs {
		copy(out[52+32*i:], ph)
	}
	return out
}

// xtfHVMNotes are the notes XTF's arch/x86/hvm/head.S gives: the PV ones
// and PHYS32_ENTRY at _pvh_start.
func xtfHVMNotes(pvhStart uint32) []testNote {
	return append(xtfNotes(0x106000), u32Note(xenabi.ElfnotePhys32Entry, pvhStart))
}

var xtfHVMLoad = []testLoad{{paddr: 0x100000, vaddr: 0x100000, data: bytes.Repeat([]byte{0x90}, 0x3000), memsz: 0x11000,
	flags: elf.PF_R | elf.PF_W | elf.PF_X}}

func TestParseHVM(t *testing.T) {
	for _, tc := range []struct {
		name   string
		image  []byte
		loader HVMLoader
		entry  uint64
		err    string // "" for success
	}{
		{"xtf hvm64: ELF32 x86-64 with PHYS32_ENTRY", elf32(elf.EM_X86_64, 0x100000, xtfHVMLoad, xtfHVMNotes(0x100020)),
			LoaderPVH, 0x100020, ""},
		{"xtf hvm32: ELF32 i386 with PHYS32_ENTRY", elf32(elf.EM_386, 0x100000, xtfHVMLoad, xtfHVMNotes(0x100020)),
			LoaderPVH, 0x100020, ""},
		{"hvmloader-like: no notes, e_entry", elf32(elf.EM_386, 0x100010, xtfHVMLoad, nil),
			LoaderHVMGeneric, 0x100010, ""},
		{"ELF64 without notes", testELF{entry: 0x100000, loads: xtfHVMLoad}.bytes(), LoaderHVMGeneric, 0x100000, ""},
		{"a PV kernel (notes, no PHYS32_ENTRY)", elf32(elf.EM_X86_64, 0x100000, xtfHVMLoad, xtfNotes(0x106000)),
			"", 0, "without XEN_ELFNOTE_PHYS32_ENTRY"},
		{"PHYS32_ENTRY outside the image", elf32(elf.EM_X86_64, 0x100000, xtfHVMLoad, xtfHVMNotes(0x200000)),
			"", 0, "PHYS32_ENTRY: entry point 0x200000 is outside"},
		{"e_entry outside the image", elf32(elf.EM_386, 0x1000, xtfHVMLoad, nil), "", 0, "e_entry: entry point 0x1000"},
		{"wrong machine", elf32(elf.EM_ARM, 0x100000, xtfHVMLoad, nil), "", 0, "ELF machine EM_ARM"},
		{"no loadable segment", elf32(elf.EM_386, 0x100000, nil, nil), "", 0, "no loadable segments"},
		{"file size past memory size", elf32(elf.EM_386, 0x100000, []testLoad{{paddr: 0x100000, data: make([]byte, 64), memsz: 16,
			flags: elf.PF_R}}, nil), "", 0, "exceeds memory size"},
		{"not ELF", []byte("#!/bin/sh\n"), "", 0, "not an ELF file"},
		{"gzip", []byte{0x1f, 0x8b, 8, 0}, "", 0, "not an ELF file"},
		{"truncated header", elf32(elf.EM_386, 0x100000, xtfHVMLoad, nil)[:40], "", 0, "malformed ELF"},
		{"truncated segment", elf32(elf.EM_386, 0x100000, xtfHVMLoad, nil)[:0x200], "", 0, "outside the"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, err := ParseHVM(tc.image)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrBadImage) {
					t.Fatalf("ParseHVM: %v, want ErrBadImage with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if img.Loader != tc.loader || img.Entry != tc.entry || img.PStart != 0x100000 || img.PEnd != 0x111000 {
				t.Fatalf("got %v, want loader %s entry %#x over 0x100000-0x111000", img, tc.loader, tc.entry)
			}
		})
	}
}

// ram is guest memory for BuildHVM: [0, size) and the special pages.
type ram struct {
	low     []byte
	special []byte
}

func newRAM(size uint64) *ram {
	return &ram{low: make([]byte, size), special: make([]byte, NrSpecialPages<<12)}
}

func (r *ram) Write(gpa uint64, b []byte) error {
	switch {
	case gpa+uint64(len(b)) <= uint64(len(r.low)):
		copy(r.low[gpa:], b)
	case gpa >= SpecialPFNBase<<12 && gpa+uint64(len(b)) <= SpecialPFNBase<<12+uint64(len(r.special)):
		copy(r.special[gpa-SpecialPFNBase<<12:], b)
	default:
		return errors.New("bad guest address")
	}
	return nil
}

func TestBuildHVM(t *testing.T) {
	le := binary.LittleEndian
	for _, tc := range []struct {
		kind    ContainerKind
		cmdline string
		memmap  []MemmapEntry
	}{
		{KindHVM, "ignored for HVM", []MemmapEntry{{0x100000, 128<<20 - 0x100000, E820RAM}}},
		{KindPVH, "console=hvc0", []MemmapEntry{{0, 128 << 20, E820RAM}, {0xfeff8000, 0x8000, E820Reserved}}},
	} {
		t.Run(tc.kind.String(), func(t *testing.T) {
			img, err := ParseHVM(elf32(elf.EM_X86_64, 0x100000, xtfHVMLoad, xtfHVMNotes(0x100020)))
			if err != nil {
				t.Fatal(err)
			}
			mem := newRAM(128 << 20)
			mem.special[0x1000] = 0xaa // cleared by the build
			l, err := img.BuildHVM(mem, HVMParams{Kind: tc.kind, MemSize: 128 << 20, Cmdline: tc.cmdline})
			if err != nil {
				t.Fatal(err)
			}
			if l.StartInfo != 0x111000 || l.Entry != 0x100020 {
				t.Fatalf("start_info at %#x, entry %#x: want 0x111000, 0x100020", l.StartInfo, l.Entry)
			}
			if mem.low[0x100000] != 0x90 || mem.low[0x103000] != 0 || mem.special[0x1000] != 0 {
				t.Error("the image or the special pages are not as loaded")
			}
			if got := le.Uint32(mem.special[6<<12+4:]); got != 1<<22|0xe7 {
				t.Errorf("IDENT_PT entry 1 = %#x", got)
			}
			si := mem.low[l.StartInfo:]
			if le.Uint32(si[0:]) != StartInfoMagic || le.Uint32(si[4:]) != 1 || le.Uint32(si[8:]) != 0 || le.Uint32(si[12:]) != 0 {
				t.Fatalf("start_info header % x", si[:16])
			}
			cmd := le.Uint64(si[24:])
			if tc.kind == KindHVM && cmd != 0 {
				t.Errorf("HVM cmdline_paddr %#x, want 0", cmd)
			}
			if tc.kind == KindPVH {
				if cmd != l.StartInfo+56 || string(mem.low[cmd:cmd+uint64(len(tc.cmdline))+1]) != tc.cmdline+"\x00" {
					t.Errorf("PVH cmdline at %#x", cmd)
				}
			}
			mm, n := le.Uint64(si[40:]), le.Uint32(si[48:])
			if int(n) != len(tc.memmap) || mm+uint64(n)*24 != l.StartInfoEnd {
				t.Fatalf("memmap at %#x, %d entries (segment ends %#x)", mm, n, l.StartInfoEnd)
			}
			for i, want := range tc.memmap {
				e := mem.low[mm+uint64(i)*24:]
				got := MemmapEntry{le.Uint64(e[0:]), le.Uint64(e[8:]), le.Uint32(e[16:])}
				if got != want {
					t.Errorf("memmap[%d] = %#x, want %#x", i, got, want)
				}
			}
		})
	}
}

func TestBuildHVMErrors(t *testing.T) {
	good, err := ParseHVM(elf32(elf.EM_X86_64, 0x100000, xtfHVMLoad, xtfHVMNotes(0x100020)))
	if err != nil {
		t.Fatal(err)
	}
	vga, err := ParseHVM(elf32(elf.EM_386, 0xb0000, []testLoad{{paddr: 0xb0000, data: []byte{0xf4}, flags: elf.PF_R | elf.PF_X}}, nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		img  *HVMImage
		p    HVMParams
		err  string
	}{
		{"no kind", good, HVMParams{MemSize: 1 << 20}, "container kind"},
		{"odd size", good, HVMParams{Kind: KindHVM, MemSize: 1<<20 + 1}, "multiple of 4 KiB"},
		{"into the hole", good, HVMParams{Kind: KindPVH, MemSize: PVHHoleStart + 4096}, "MMIO hole"},
		{"image past RAM", good, HVMParams{Kind: KindHVM, MemSize: 1 << 20}, "past the"},
		{"start_info past RAM", good, HVMParams{Kind: KindHVM, MemSize: 0x111000}, "hvm_start_info"},
		{"VGA hole, HVM", vga, HVMParams{Kind: KindHVM, MemSize: 4 << 20}, "VGA hole"},
		{"long cmdline", good, HVMParams{Kind: KindPVH, MemSize: 4 << 20, Cmdline: strings.Repeat("x", 1024)}, "command line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := newRAM(min(tc.p.MemSize, 8<<20) &^ 4095)
			if _, err := tc.img.BuildHVM(mem, tc.p); err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("BuildHVM: %v, want %q", err, tc.err)
			}
		})
	}
	// PVH has RAM in the VGA hole.
	if _, err := vga.BuildHVM(newRAM(4<<20), HVMParams{Kind: KindPVH, MemSize: 4 << 20}); err != nil {
		t.Errorf("PVH image in 0xA0000-0xBFFFF: %v", err)
	}
}

func FuzzParseHVM(f *testing.F) {
	f.Add(elf32(elf.EM_X86_64, 0x100000, xtfHVMLoad, xtfHVMNotes(0x100020)))
	f.Add(elf32(elf.EM_386, 0x100000, xtfHVMLoad, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := ParseHVM(b)
		if err != nil {
			if !errors.Is(err, ErrBadImage) {
				t.Fatalf("error %v does not wrap ErrBadImage", err)
			}
			return
		}
		if img.Entry < img.PStart || img.Entry >= img.PEnd || img.PEnd > 1<<32 {
			t.Fatalf("accepted %v", img)
		}
	})
}
