// Package builder is the domain builder (libxc's xc_dom, in Go): it parses
// and validates a Xen PV kernel image and its ELF notes, loads it into a
// domain's memory, and lays out the start-of-day pages Xen's PV ABI
// promises (start_info, the P2M list, bootstrap page tables, GDT, stack),
// then gives the boot vCPU state.
//
// Parse follows Xen's loader rules: libelf's (xen/common/libelf) for the
// ELF image and its Xen notes, xc_dom's (tools/libs/guest) for compressed
// and bzImage-wrapped kernels and for the features a kernel requires. Each
// rule names the Xen function it comes from.
package builder

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"strings"
)

// ErrBadImage is wrapped by every error about a malformed or unsupported
// kernel image.
var ErrBadImage = errors.New("bad kernel image")

// MaxImageSize bounds the images the builder reads.
const MaxImageSize = 256 << 20

// Notes are the Xen ELF notes of a kernel (XEN_ELFNOTE_*), or the fields of
// its legacy __xen_guest string, after libelf's defaults: Entry, VirtBase
// and PaddrOffset always hold the values the loader uses; the Has* fields
// say whether the image gave them.
type Notes struct {
	GuestOS, GuestVersion, XenVersion, Loader string
	// Features is the FEATURES string as the image gives it; Kernel.Features
	// holds what it means.
	Features string
	// PAEMode is PAE_MODE (or the legacy PAE field); 32-bit kernels only.
	PAEMode string
	// VirtBase is the virtual address of pseudo-physical frame 0 (default
	// 0); PaddrOffset is subtracted from a segment's p_paddr to find its
	// offset from VirtBase (default 0 with notes, VirtBase with the legacy
	// string).
	VirtBase, PaddrOffset uint64
	// Entry is the entry point (default: the ELF header's e_entry).
	Entry uint64
	// HypercallPage is the page-aligned virtual address of the page the
	// hypervisor fills with hypercall stubs, when HasHypercallPage: libxc's
	// setup_hypercall_page uses the page holding the note's address.
	// Without it the kernel issues `syscall` itself.
	HypercallPage                         uint64
	HasVirtBase, HasPaddrOffset, HasEntry bool
	HasHypercallPage                      bool
	SuspendCancel                         bool
	// InitP2M is INIT_P2M: where the kernel wants the P2M list mapped,
	// outside the initial mapping.
	InitP2M    uint64
	HasInitP2M bool
	// ModStartPFN is MOD_START_PFN: the kernel takes an unmapped initrd by
	// frame number.
	ModStartPFN bool
	// BSDSymtab is BSD_SYMTAB "yes": the kernel wants its symbol table
	// loaded after the image. xenresume's builder does not load it.
	BSDSymtab bool
	// HVStartLow is HV_START_LOW (32-bit kernels only).
	HVStartLow uint64
	// Phys32Entry is PHYS32_ENTRY, the PVH entry point (not used for PV).
	Phys32Entry    uint64
	HasPhys32Entry bool
	// SupportedFeatures is submap 0 of the SUPPORTED_FEATURES note.
	SupportedFeatures uint32
	// GuestInfo is the legacy __xen_guest string, when the notes came
	// from it.
	GuestInfo string
	// Required lists the names of the features the image marks '!'
	// (required), in XENFEAT_* bit order.
	Required []string
}

// Segment is one loadable segment, at its final virtual address.
type Segment struct {
	Virt    uint64
	Data    []byte // file contents; the rest up to MemSize is zero
	MemSize uint64
	Exec    bool
}

// Kernel is a parsed, validated Xen PV kernel image.
type Kernel struct {
	Notes Notes
	// Features are the XENFEAT_* bitmaps the kernel supports and
	// requires; see Requires and Supports.
	Features Features
	// NoteSource is where the notes came from.
	NoteSource NoteSource
	// Format describes the image's wrapping: "ELF", or e.g. "gzip: ELF",
	// "bzImage (xz): ELF".
	Format   string
	Segments []Segment
	// VirtStart and VirtEnd bound the loaded image: libelf's virt_kstart
	// and virt_kend, from the lowest p_paddr and highest p_paddr+p_memsz
	// of the loadable segments.
	VirtStart, VirtEnd uint64
}

// Options are ParseWith's choices.
type Options struct {
	// Offer is what the platform offers; a kernel requiring more is
	// refused.
	Offer Offer
	// MaxDecompressed bounds what a compressed kernel may decompress to;
	// 0 means MaxDecompressedSize.
	MaxDecompressed uint64
}

func bad(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadImage, fmt.Sprintf(format, args...))
}

// Parse validates image as a 64-bit x86 Xen PV kernel, under DefaultOffer.
func Parse(image []byte) (*Kernel, error) {
	return ParseWith(image, Options{Offer: DefaultOffer})
}

// ParseWith validates image as a 64-bit x86 Xen PV kernel as Xen's loader
// does: an ELF64 x86-64 image, gzip-compressed or not, or a bzImage whose
// payload decompresses to one, with Xen notes (or the legacy __xen_guest
// string) that libelf accepts, whose required features opt.Offer meets.
func ParseWith(image []byte, opt Options) (k *Kernel, err error) {
	defer func() {
		// debug/elf has panicked on crafted input before; an image is
		// untrusted, so a panic in parsing is just a bad image.
		if r := recover(); r != nil {
			k, err = nil, bad("malformed ELF (%v)", r)
		}
	}()
	if len(image) > MaxImageSize {
		return nil, bad("%d bytes, larger than %d", len(image), MaxImageSize)
	}
	limit := opt.MaxDecompressed
	if limit == 0 {
		limit = MaxDecompressedSize
	}
	img, format, err := unwrap(image, limit)
	if err != nil {
		return nil, err
	}
	return parseELF(img, opt, format)
}

// parseELF parses an uncompressed ELF kernel.
func parseELF(image []byte, opt Options, format string) (*Kernel, error) {
	if len(image) < 4 || !bytes.Equal(image[:4], []byte(elf.ELFMAG)) {
		return nil, bad("not an ELF file")
	}
	if len(image) > elf.EI_CLASS && elf.Class(image[elf.EI_CLASS]) != elf.ELFCLASS64 {
		return nil, bad("ELF class %v: xenresume boots 64-bit PV kernels only", elf.Class(image[elf.EI_CLASS]))
	}
	f, err := elf.NewFile(bytes.NewReader(image))
	if err != nil {
		return nil, bad("malformed ELF: %v", err)
	}
	if f.Class != elf.ELFCLASS64 {
		return nil, bad("ELF class %v: xenresume boots 64-bit PV kernels only", f.Class)
	}
	// xc_dom_guest_type: EM_X86_64 is "xen-3.0-x86_64"; libelf does not
	// look at e_type.
	if f.Machine != elf.EM_X86_64 {
		return nil, bad("ELF machine %v: want EM_X86_64", f.Machine)
	}
	if f.Data != elf.ELFDATA2LSB {
		return nil, bad("ELF data encoding %v: want little-endian", f.Data)
	}
	k := &Kernel{Format: format}
	p := &noteParser{n: &k.Notes, f: &k.Features}
	if k.NoteSource, err = p.parseNotes(f, image); err != nil {
		return nil, err
	}
	if err := k.noteCheck(); err != nil {
		return nil, err
	}
	if err := k.loadSegments(f, image); err != nil {
		return nil, err
	}
	if err := k.addrCalcCheck(f); err != nil {
		return nil, err
	}
	for bit := range 32 {
		if k.Features.Required&(1<<bit) != 0 {
			k.Notes.Required = append(k.Notes.Required, FeatureName(bit))
		}
	}
	if err := checkFeatures(k.Features, opt.Offer); err != nil {
		return nil, err
	}
	return k, nil
}

// noteCheck is elf_xen_note_check for a PV kernel.
func (k *Kernel) noteCheck() error {
	n := &k.Notes
	if k.NoteSource == 0 {
		return bad("no Xen ELF notes and no __xen_guest section: not a Xen PV kernel (elf_xen_note_check)")
	}
	what := "ELF note XEN_ELFNOTE_"
	loader, guestOS, xenVer := what+"LOADER", what+"GUEST_OS", what+"XEN_VERSION"
	if k.NoteSource == NotesGuestInfo {
		loader, guestOS, xenVer = "__xen_guest LOADER", "__xen_guest GUEST_OS", "__xen_guest XEN_VER"
	}
	if n.HasPhys32Entry && n.Loader == "" {
		return bad("ELF note XEN_ELFNOTE_PHYS32_ENTRY and no LOADER: a PVH/HVM image, not a PV kernel (runvm create it with type = \"pvh\" or \"hvm\")")
	}
	if !strings.HasPrefix(n.Loader, "generic") && !strings.HasPrefix(n.GuestOS, "linux") {
		return bad("%s %q and %s %q: Xen loads only images for the generic loader or Linux (elf_xen_note_check)",
			loader, n.Loader, guestOS, n.GuestOS)
	}
	if !strings.HasPrefix(n.XenVersion, "xen-3.0") {
		return bad("%s %q: Xen loads only images built for xen-3.0 (elf_xen_note_check)", xenVer, n.XenVersion)
	}
	return nil
}

// loadSegments collects the loadable segments (elf_parse_binary: PT_LOAD
// with any of R, W or X) and the bounds of the image by p_paddr.
func (k *Kernel) loadSegments(f *elf.File, image []byte) error {
	pstart, pend := ^uint64(0), uint64(0)
	for i, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Flags&(elf.PF_R|elf.PF_W|elf.PF_X) == 0 {
			continue
		}
		if p.Filesz > p.Memsz {
			return bad("segment %d: file size %#x exceeds memory size %#x", i, p.Filesz, p.Memsz)
		}
		data, err := fileRange(image, p.Off, p.Filesz)
		if err != nil {
			return bad("segment %d: %v", i, err)
		}
		if p.Paddr+p.Memsz < p.Paddr {
			return bad("segment %d: p_paddr %#x + p_memsz %#x overflows", i, p.Paddr, p.Memsz)
		}
		pstart, pend = min(pstart, p.Paddr), max(pend, p.Paddr+p.Memsz)
		if p.Memsz == 0 {
			continue
		}
		// Virt is set in addrCalcCheck, once PADDR_OFFSET is known.
		k.Segments = append(k.Segments, Segment{
			Virt: p.Paddr, Data: data, MemSize: p.Memsz, Exec: p.Flags&elf.PF_X != 0,
		})
	}
	if pstart > pend {
		return bad("no loadable segments")
	}
	k.VirtStart, k.VirtEnd = pstart, pend
	return nil
}

// addrCalcCheck is elf_xen_addr_calc_check for a PV kernel: the defaults
// for VIRT_BASE, PADDR_OFFSET and ENTRY, the image's virtual bounds, and
// the checks on them.
func (k *Kernel) addrCalcCheck(f *elf.File) error {
	n := &k.Notes
	if n.HasPaddrOffset && !n.HasVirtBase {
		return bad("PADDR_OFFSET %#x without VIRT_BASE (elf_xen_addr_calc_check)", n.PaddrOffset)
	}
	if !n.HasVirtBase {
		n.VirtBase = 0
	}
	if !n.HasPaddrOffset {
		// Notes: 0. The legacy string: VIRT_BASE, for old kernels whose
		// p_paddr was their virtual address.
		n.PaddrOffset = 0
		if k.NoteSource == NotesGuestInfo {
			n.PaddrOffset = n.VirtBase
		}
	}
	off := n.VirtBase - n.PaddrOffset // wraps, as in C
	k.VirtStart += off
	k.VirtEnd += off
	for i := range k.Segments {
		k.Segments[i].Virt += off
	}
	if !n.HasEntry {
		n.Entry = f.Entry
	}
	switch {
	case k.VirtStart > k.VirtEnd:
		return bad("loadable segments at %#x-%#x wrap the address space with PADDR_OFFSET %#x (elf_xen_addr_calc_check)",
			k.VirtStart, k.VirtEnd, n.PaddrOffset)
	case n.VirtBase > k.VirtStart:
		return bad("image starts at %#x, below VIRT_BASE %#x (elf_xen_addr_calc_check)", k.VirtStart, n.VirtBase)
	case n.Entry < k.VirtStart || n.Entry > k.VirtEnd:
		src := "ELF note XEN_ELFNOTE_ENTRY"
		switch {
		case !n.HasEntry:
			src = "ELF header e_entry (no ENTRY note)"
		case k.NoteSource == NotesGuestInfo:
			src = "__xen_guest VIRT_ENTRY"
		}
		return bad("%s: entry point %#x is outside the image %#x-%#x (elf_xen_addr_calc_check)",
			src, n.Entry, k.VirtStart, k.VirtEnd)
	case n.HasInitP2M && n.InitP2M >= k.VirtStart && n.InitP2M < k.VirtEnd:
		return bad("ELF note XEN_ELFNOTE_INIT_P2M: %#x is inside the image %#x-%#x (elf_xen_addr_calc_check)",
			n.InitP2M, k.VirtStart, k.VirtEnd)
	}
	if n.HasHypercallPage {
		// setup_hypercall_page: the frame is (address - VIRT_BASE) >> 12,
		// which must be one of the domain's; below VIRT_BASE it is not.
		if n.HypercallPage < n.VirtBase {
			return bad("ELF note XEN_ELFNOTE_HYPERCALL_PAGE: %#x is below VIRT_BASE %#x (setup_hypercall_page)",
				n.HypercallPage, n.VirtBase)
		}
		n.HypercallPage &^= 4095
	}
	return nil
}

// Contains reports whether va lies in one of the kernel's loaded segments.
func (k *Kernel) Contains(va uint64) bool {
	for _, s := range k.Segments {
		if va >= s.Virt && va-s.Virt < s.MemSize {
			return true
		}
	}
	return false
}
