package builder

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ContainerKind is the kind of HVM container a domain is built in.
type ContainerKind int

// Container kinds.
const (
	KindHVM ContainerKind = iota + 1 // type = "hvm": device model, firmware
	KindPVH                          // type = "pvh": no device model
)

func (k ContainerKind) String() string {
	switch k {
	case KindHVM:
		return "hvm"
	case KindPVH:
		return "pvh"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// The HVM guest-physical layout libxc and libxl build (xg_dom_x86.c,
// libxl_x86.c, public/hvm/e820.h, tools/include/xenguest.h).
const (
	// SpecialPFNBase is special_pfn(0): X86_HVM_END_SPECIAL_REGION
	// (0xFF000) less X86_HVM_NR_SPECIAL_PAGES (8).
	SpecialPFNBase = 0xfeff8
	// NrSpecialPages is X86_HVM_NR_SPECIAL_PAGES.
	NrSpecialPages = 8
	// StorePFN is special_pfn(SPECIALPAGE_XENSTORE), HVM_PARAM_STORE_PFN.
	StorePFN = SpecialPFNBase + 4
	// IdentPTPFN is special_pfn(SPECIALPAGE_IDENT_PT), HVM_PARAM_IDENT_PT.
	IdentPTPFN = SpecialPFNBase + 6
	// ConsolePFN is special_pfn(SPECIALPAGE_CONSOLE), HVM_PARAM_CONSOLE_PFN.
	ConsolePFN = SpecialPFNBase + 7
	// HVMHoleStart is HVM_BELOW_4G_RAM_END: the MMIO hole of an HVM guest
	// with the default mmio_size.
	HVMHoleStart = 0xf0000000
	// PVHHoleStart is where a PVH guest's RAM below 4 GiB ends: the ACPI
	// area at 0xFC000000.
	PVHHoleStart = 0xfc000000
	// VGAHoleStart and VGAHoleEnd bound the frames libxc leaves
	// unpopulated in an HVM guest (LIBXL_VGA_HOLE_SIZE 0x20 pages).
	VGAHoleStart = 0xa0000
	VGAHoleEnd   = 0xc0000
)

// hvm_start_info (public/arch-x86/hvm/start_info.h).
const (
	StartInfoMagic   = 0x336ec578 // XEN_HVM_START_MAGIC_VALUE
	startInfoVersion = 1
	startInfoSize    = 56
	modlistEntrySize = 32
	memmapEntrySize  = 24
	// hvmloaderModuleMax and maxGuestCmdline are the room bootlate_hvm
	// leaves for modules (HVMLOADER_MODULE_MAX_COUNT entries with
	// MAX_GUEST_CMDLINE-byte command lines).
	hvmloaderModuleMax = 2
	maxGuestCmdline    = 1024
)

// E820 types, as hvm_memmap_table_entry uses them.
const (
	E820RAM      = 1
	E820Reserved = 2
	E820ACPI     = 3
	E820NVS      = 4
)

// MemmapEntry is one hvm_memmap_table_entry.
type MemmapEntry struct {
	Addr, Size uint64
	Type       uint32
}

// HVMParams are what BuildHVM needs besides the image.
type HVMParams struct {
	Kind    ContainerKind
	MemSize uint64 // bytes of RAM, a multiple of 4 KiB
	Cmdline string // PVH only (bootlate_hvm passes none to HVM firmware)
}

// HVMLayout is what BuildHVM placed.
type HVMLayout struct {
	Kind ContainerKind
	// LowmemEnd is where RAM below 4 GiB ends.
	LowmemEnd uint64
	// StartInfo is the guest-physical address of hvm_start_info, which
	// the boot vCPU gets in %ebx.
	StartInfo uint64
	// StartInfoEnd is the end of its segment (cmdline, modlist, memmap).
	StartInfoEnd uint64
	// Entry is the boot vCPU's %eip.
	Entry uint64
	// Memmap is the map start_info carries (and XENMEM_memory_map gives).
	Memmap []MemmapEntry
}

// Writer is the guest memory BuildHVM fills: guest-physical addresses.
type Writer interface {
	Write(gpa uint64, b []byte) error
}

// BuildHVM loads img into an HVM or PVH container's memory as libxc does
// (meminit_hvm, alloc_magic_pages_hvm, bootlate_hvm): the segments at
// their physical addresses, the special pages cleared (and IDENT_PT's
// identity page directory written), and hvm_start_info page-aligned after
// the image with its command line, module list room and memory map. The
// caller provides RAM at [0, LowmemEnd) and the special pages at
// SpecialPFNBase.
func (img *HVMImage) BuildHVM(mem Writer, p HVMParams) (*HVMLayout, error) {
	hole := uint64(HVMHoleStart)
	switch p.Kind {
	case KindHVM:
	case KindPVH:
		hole = PVHHoleStart
	default:
		return nil, fmt.Errorf("build: container kind %v", p.Kind)
	}
	if p.MemSize == 0 || p.MemSize%4096 != 0 {
		return nil, fmt.Errorf("build: memory size %#x is not a positive multiple of 4 KiB", p.MemSize)
	}
	if p.MemSize > hole {
		return nil, fmt.Errorf("build: %d MiB of memory reaches the MMIO hole at %#x; RAM above 4 GiB is not built yet", p.MemSize>>20, hole)
	}
	if len(p.Cmdline) >= maxGuestCmdline {
		return nil, fmt.Errorf("build: command line of %d bytes, at most %d", len(p.Cmdline), maxGuestCmdline-1)
	}
	l := &HVMLayout{Kind: p.Kind, LowmemEnd: p.MemSize, Entry: img.Entry}
	if img.PEnd > l.LowmemEnd {
		return nil, fmt.Errorf("build: the image ends at %#x, past the %d MiB of RAM", img.PEnd, p.MemSize>>20)
	}
	for i, s := range img.Segments {
		if p.Kind == KindHVM && s.Virt < VGAHoleEnd && s.Virt+s.MemSize > VGAHoleStart {
			return nil, fmt.Errorf("build: segment %d at %#x-%#x overlaps the VGA hole %#x-%#x, which an HVM guest has no RAM in",
				i, s.Virt, s.Virt+s.MemSize, VGAHoleStart, VGAHoleEnd)
		}
		if err := mem.Write(s.Virt, s.Data); err != nil {
			return nil, fmt.Errorf("build: segment %d at %#x: %w", i, s.Virt, err)
		}
		if zero := s.MemSize - uint64(len(s.Data)); zero > 0 {
			if err := mem.Write(s.Virt+uint64(len(s.Data)), make([]byte, zero)); err != nil {
				return nil, fmt.Errorf("build: segment %d's zero fill: %w", i, err)
			}
		}
	}
	if err := mem.Write(SpecialPFNBase<<12, make([]byte, NrSpecialPages<<12)); err != nil {
		return nil, fmt.Errorf("build: special pages: %w", err)
	}
	pd := make([]byte, 4096) // 1024 4-MiB PSE entries: P, RW, US, A, D, PS
	for i := range 1024 {
		binary.LittleEndian.PutUint32(pd[i*4:], uint32(i)<<22|0xe7)
	}
	if err := mem.Write(IdentPTPFN<<12, pd); err != nil {
		return nil, fmt.Errorf("build: IDENT_PT: %w", err)
	}

	switch p.Kind {
	case KindHVM: // the minimal map; hvmloader builds the real one
		l.Memmap = []MemmapEntry{{Addr: 0x100000, Size: l.LowmemEnd - 0x100000, Type: E820RAM}}
	case KindPVH:
		l.Memmap = []MemmapEntry{
			{Addr: 0, Size: l.LowmemEnd, Type: E820RAM},
			{Addr: SpecialPFNBase << 12, Size: NrSpecialPages << 12, Type: E820Reserved},
		}
	}
	si, err := buildStartInfo(l, p)
	if err != nil {
		return nil, err
	}
	l.StartInfo = (img.PEnd + 4095) &^ 4095
	l.StartInfoEnd = l.StartInfo + uint64(len(si.b))
	if l.StartInfoEnd > l.LowmemEnd {
		return nil, fmt.Errorf("build: hvm_start_info at %#x-%#x is past the end of RAM %#x", l.StartInfo, l.StartInfoEnd, l.LowmemEnd)
	}
	si.relocate(l.StartInfo)
	if err := mem.Write(l.StartInfo, si.b); err != nil {
		return nil, fmt.Errorf("build: hvm_start_info: %w", err)
	}
	return l, nil
}

// startInfo is the hvm_start_info segment being built at offset 0, with
// the offsets of its pointer fields to relocate.
type startInfo struct {
	b        []byte
	pointers []int // offsets of u64 fields holding segment offsets
}

func (s *startInfo) relocate(base uint64) {
	for _, off := range s.pointers {
		v := binary.LittleEndian.Uint64(s.b[off:])
		binary.LittleEndian.PutUint64(s.b[off:], v+base)
	}
}

func buildStartInfo(l *HVMLayout, p HVMParams) (*startInfo, error) {
	if len(l.Memmap) == 0 {
		return nil, errors.New("build: empty memory map")
	}
	s := &startInfo{b: make([]byte, startInfoSize)}
	le := binary.LittleEndian
	le.PutUint32(s.b[0:], StartInfoMagic)
	le.PutUint32(s.b[4:], startInfoVersion)
	// flags 0 (a domU); nr_modules 0: no module is loaded (libxl's
	// "firmware" module, the BIOS, exists only with a BIOS).
	if p.Kind == KindPVH && p.Cmdline != "" {
		le.PutUint64(s.b[24:], uint64(len(s.b)))
		s.pointers = append(s.pointers, 24)
		c := append([]byte(p.Cmdline), 0)
		for len(c)%8 != 0 {
			c = append(c, 0)
		}
		s.b = append(s.b, c...)
	}
	// Room for the module list and its command lines, as bootlate_hvm
	// leaves it.
	s.b = append(s.b, make([]byte, hvmloaderModuleMax*(modlistEntrySize+maxGuestCmdline))...)
	le.PutUint64(s.b[40:], uint64(len(s.b)))
	s.pointers = append(s.pointers, 40)
	le.PutUint32(s.b[48:], uint32(len(l.Memmap)))
	for _, e := range l.Memmap {
		var ent [memmapEntrySize]byte
		le.PutUint64(ent[0:], e.Addr)
		le.PutUint64(ent[8:], e.Size)
		le.PutUint32(ent[16:], e.Type)
		s.b = append(s.b, ent[:]...)
	}
	return s, nil
}
