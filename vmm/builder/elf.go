// Package builder is the domain builder (libxc's xc_dom, in Go): it parses
// and validates a Xen PV kernel image and its ELF notes, loads it into a
// domain's memory, and lays out the start-of-day pages Xen's PV ABI
// promises (start_info, the P2M list, bootstrap page tables, GDT, stack),
// then gives the boot vCPU state.
package builder

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// ErrBadImage is wrapped by every error about a malformed or unsupported
// kernel image.
var ErrBadImage = errors.New("bad kernel image")

// MaxImageSize bounds the images the builder reads.
const MaxImageSize = 256 << 20

// Notes are the Xen ELF notes of a kernel (XEN_ELFNOTE_*).
type Notes struct {
	GuestOS, GuestVersion, XenVersion, Loader string
	Features                                  string
	VirtBase, PaddrOffset                     uint64
	Entry, HypercallPage                      uint64
	HasVirtBase, HasPaddrOffset, HasEntry     bool
	HasHypercallPage                          bool
	SuspendCancel                             bool
	// Required lists the features the image marks '!' (required).
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
	Notes    Notes
	Segments []Segment
	// VirtStart and VirtEnd bound the loaded image.
	VirtStart, VirtEnd uint64
}

// features xenresume's hardware container provides to a PV guest.
var supportedFeatures = map[string]bool{
	"writable_page_tables":       true,
	"writable_descriptor_tables": true,
	"supervisor_mode_kernel":     true,
}

func bad(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadImage, fmt.Sprintf(format, args...))
}

// Parse validates image as a 64-bit x86 Xen PV kernel: an ELF64 x86-64
// executable with Xen ELF notes a PV loader accepts, loadable segments at or
// above VIRT_BASE, and its entry point and hypercall page inside them.
func Parse(image []byte) (k *Kernel, err error) {
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
	if f.Machine != elf.EM_X86_64 {
		return nil, bad("ELF machine %v: want EM_X86_64", f.Machine)
	}
	if f.Data != elf.ELFDATA2LSB {
		return nil, bad("ELF data encoding %v: want little-endian", f.Data)
	}
	if f.Type != elf.ET_EXEC {
		return nil, bad("ELF type %v: want an executable (ET_EXEC)", f.Type)
	}
	k = &Kernel{}
	if err := k.parseNotes(f); err != nil {
		return nil, err
	}
	if err := k.loadSegments(f, image); err != nil {
		return nil, err
	}
	n := &k.Notes
	if !k.contains(n.Entry, 1, true) {
		return nil, bad("entry point %#x is outside the image's executable segments", n.Entry)
	}
	if n.HypercallPage%4096 != 0 || !k.contains(n.HypercallPage, 4096, false) {
		return nil, bad("hypercall page %#x is not a page-aligned page inside the image", n.HypercallPage)
	}
	return k, nil
}

func (k *Kernel) contains(va, n uint64, exec bool) bool {
	for _, s := range k.Segments {
		if va >= s.Virt && va-s.Virt < s.MemSize && n <= s.MemSize-(va-s.Virt) && (!exec || s.Exec) {
			return true
		}
	}
	return false
}

func (k *Kernel) parseNotes(f *elf.File) error {
	var found bool
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(io.LimitReader(p.Open(), 1<<20))
		if err != nil {
			return bad("unreadable PT_NOTE segment: %v", err)
		}
		ok, err := k.parseNoteSegment(data)
		if err != nil {
			return err
		}
		found = found || ok
	}
	if !found {
		return bad("no Xen ELF notes: not a Xen PV kernel")
	}
	n := &k.Notes
	switch {
	case n.XenVersion != "xen-3.0":
		return bad("XEN_VERSION note %q: want \"xen-3.0\"", n.XenVersion)
	case n.Loader != "generic" && !strings.HasPrefix(n.GuestOS, "linux"):
		return bad("LOADER note %q: only the generic loader (or Linux) is supported", n.Loader)
	case !n.HasEntry:
		return bad("no ENTRY note")
	case !n.HasHypercallPage:
		return bad("no HYPERCALL_PAGE note")
	case !n.HasVirtBase:
		return bad("no VIRT_BASE note")
	}
	if !n.HasPaddrOffset {
		n.PaddrOffset = n.VirtBase
	}
	for _, feat := range strings.Split(n.Features, "|") {
		if req, ok := strings.CutPrefix(feat, "!"); ok {
			n.Required = append(n.Required, req)
			if !supportedFeatures[req] {
				return bad("the image requires feature %q, which xenresume does not provide", req)
			}
		}
	}
	return nil
}

// parseNoteSegment reads the notes of one PT_NOTE segment; it reports
// whether any was a Xen note.
func (k *Kernel) parseNoteSegment(data []byte) (bool, error) {
	var found bool
	for off := 0; off < len(data); {
		if len(data)-off < 12 {
			return false, bad("truncated ELF note header at offset %d", off)
		}
		namesz := uint64(binary.LittleEndian.Uint32(data[off:]))
		descsz := uint64(binary.LittleEndian.Uint32(data[off+4:]))
		typ := binary.LittleEndian.Uint32(data[off+8:])
		nameOff := uint64(off) + 12
		descOff := nameOff + align4(namesz)
		end := descOff + align4(descsz)
		if descOff > uint64(len(data)) || end > uint64(len(data)) {
			return false, bad("ELF note at offset %d runs past its segment (namesz %d, descsz %d)", off, namesz, descsz)
		}
		name := strings.TrimRight(string(data[nameOff:nameOff+namesz]), "\x00")
		desc := data[descOff : descOff+descsz]
		off = int(end)
		if name != "Xen" {
			continue
		}
		found = true
		if err := k.Notes.set(typ, desc); err != nil {
			return false, err
		}
	}
	return found, nil
}

func align4(n uint64) uint64 { return (n + 3) &^ 3 }

func noteString(desc []byte) string { return strings.TrimRight(string(desc), "\x00") }

func noteNumber(typ uint32, desc []byte) (uint64, error) {
	switch len(desc) {
	case 4:
		return uint64(binary.LittleEndian.Uint32(desc)), nil
	case 8:
		return binary.LittleEndian.Uint64(desc), nil
	}
	return 0, bad("numeric Xen note %d has a %d-byte descriptor: want 4 or 8", typ, len(desc))
}

func (n *Notes) set(typ uint32, desc []byte) error {
	var err error
	num := func() uint64 {
		var v uint64
		v, err = noteNumber(typ, desc)
		return v
	}
	switch typ {
	case xenabi.ElfnoteGuestOS:
		n.GuestOS = noteString(desc)
	case xenabi.ElfnoteGuestVersion:
		n.GuestVersion = noteString(desc)
	case xenabi.ElfnoteXenVersion:
		n.XenVersion = noteString(desc)
	case xenabi.ElfnoteLoader:
		n.Loader = noteString(desc)
	case xenabi.ElfnoteFeatures:
		n.Features = noteString(desc)
	case xenabi.ElfnoteVirtBase:
		n.VirtBase, n.HasVirtBase = num(), true
	case xenabi.ElfnotePaddrOffset:
		n.PaddrOffset, n.HasPaddrOffset = num(), true
	case xenabi.ElfnoteEntry:
		n.Entry, n.HasEntry = num(), true
	case xenabi.ElfnoteHypercallPage:
		n.HypercallPage, n.HasHypercallPage = num(), true
	case xenabi.ElfnoteSuspendCancel:
		n.SuspendCancel = num() != 0
	}
	return err
}

// loadSegments collects the PT_LOAD segments at their virtual addresses,
// which libelf computes as paddr + VIRT_BASE - PADDR_OFFSET.
func (k *Kernel) loadSegments(f *elf.File, image []byte) error {
	n := &k.Notes
	k.VirtStart = ^uint64(0)
	for i, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Memsz == 0 {
			continue
		}
		if p.Filesz > p.Memsz {
			return bad("segment %d: file size %#x exceeds memory size %#x", i, p.Filesz, p.Memsz)
		}
		if p.Off > uint64(len(image)) || p.Filesz > uint64(len(image))-p.Off {
			return bad("segment %d: file range %#x+%#x is outside the %d-byte file", i, p.Off, p.Filesz, len(image))
		}
		virt := p.Paddr + n.VirtBase - n.PaddrOffset
		if virt < n.VirtBase || virt+p.Memsz < virt {
			return bad("segment %d at %#x lies below VIRT_BASE %#x", i, virt, n.VirtBase)
		}
		k.Segments = append(k.Segments, Segment{
			Virt: virt, Data: image[p.Off : p.Off+p.Filesz], MemSize: p.Memsz,
			Exec: p.Flags&elf.PF_X != 0,
		})
		k.VirtStart = min(k.VirtStart, virt)
		k.VirtEnd = max(k.VirtEnd, virt+p.Memsz)
	}
	if len(k.Segments) == 0 {
		return bad("no loadable segments")
	}
	return nil
}

// Contains reports whether va lies in one of the kernel's loaded segments.
func (k *Kernel) Contains(va uint64) bool { return k.contains(va, 1, false) }
