package builder

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// NoteSource says where a kernel's Xen notes came from.
type NoteSource int

// Where elf_xen_parse (xen/common/libelf/libelf-dominfo.c) looks, in order.
const (
	// NotesSegment: PT_NOTE program headers.
	NotesSegment NoteSource = iota + 1
	// NotesSection: SHT_NOTE sections, read only when no PT_NOTE segment
	// held a Xen note.
	NotesSection
	// NotesGuestInfo: the legacy __xen_guest section's "KEY=VALUE,..."
	// string, read only when no note held a Xen note.
	NotesGuestInfo
)

// String names the source as an error message would.
func (s NoteSource) String() string {
	switch s {
	case NotesSegment:
		return "PT_NOTE segments"
	case NotesSection:
		return "SHT_NOTE sections"
	case NotesGuestInfo:
		return "__xen_guest section"
	}
	return "none"
}

// maxNotes is libelf's ELF_MAX_TOTAL_NOTE_COUNT: the notes elf_xen_parse
// walks, Xen's or not, over all segments and sections.
const maxNotes = 65536

// noteParser collects Xen notes as elf_xen_parse does.
type noteParser struct {
	n     *Notes
	f     *Features
	total int // notes walked, for maxNotes
}

// parseNotes finds the kernel's Xen notes: PT_NOTE segments, else SHT_NOTE
// sections, else the __xen_guest string (elf_xen_parse). It reports where
// they came from, or 0 when there are none.
func (p *noteParser) parseNotes(f *elf.File, image []byte) (NoteSource, error) {
	found := 0
	for i, ph := range f.Progs {
		// "Some versions of binutils do not correctly set p_offset for
		// note segments": libelf skips a PT_NOTE at offset 0.
		if ph.Type != elf.PT_NOTE || ph.Off == 0 {
			continue
		}
		data, err := fileRange(image, ph.Off, ph.Filesz)
		if err != nil {
			return 0, bad("PT_NOTE segment %d: %v", i, err)
		}
		n, err := p.walk(data)
		if err != nil {
			return 0, bad("PT_NOTE segment %d: %v", i, err)
		}
		found += n
	}
	if found > 0 {
		return NotesSegment, nil
	}
	for i, s := range f.Sections {
		if i == 0 || s.Type != elf.SHT_NOTE {
			continue
		}
		data, err := fileRange(image, s.Offset, s.Size)
		if err != nil {
			return 0, bad("SHT_NOTE section %d (%s): %v", i, s.Name, err)
		}
		n, err := p.walk(data)
		if err != nil {
			return 0, bad("SHT_NOTE section %d (%s): %v", i, s.Name, err)
		}
		found += n
	}
	if found > 0 {
		return NotesSection, nil
	}
	// elf_shdr_by_name: the first section so named, index 0 included.
	for i, s := range f.Sections {
		if s.Name != "__xen_guest" {
			continue
		}
		if s.Offset >= uint64(len(image)) {
			return 0, bad("__xen_guest section %d: offset %#x is outside the %d-byte file", i, s.Offset, len(image))
		}
		// libelf reads the string from the section's start to its NUL,
		// bounded by the image, not by sh_size.
		p.parseGuestInfo(cString(image[s.Offset:]))
		return NotesGuestInfo, nil
	}
	return 0, nil
}

// fileRange returns image[off:off+size], or an error if that is not inside
// the image.
func fileRange(image []byte, off, size uint64) ([]byte, error) {
	if off > uint64(len(image)) || size > uint64(len(image))-off {
		return nil, fmt.Errorf("file range %#x+%#x is outside the %d-byte file", off, size, len(image))
	}
	return image[off : off+size], nil
}

// cString returns b up to its first NUL (all of b if none).
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

// walk reads the notes in one segment or section (elf_xen_parse_notes): a
// 12-byte header, the name and the descriptor each padded to 4 bytes. Only
// notes named "Xen" count. A note that runs past its segment is an error
// (libelf would read on into the bytes after it).
func (p *noteParser) walk(data []byte) (int, error) {
	found := 0
	for off := uint64(0); off < uint64(len(data)); {
		if p.total >= maxNotes {
			return 0, fmt.Errorf("more than %d ELF notes (libelf's ELF_MAX_TOTAL_NOTE_COUNT)", maxNotes)
		}
		p.total++
		if uint64(len(data))-off < 12 {
			return 0, fmt.Errorf("truncated ELF note header at offset %d", off)
		}
		namesz := uint64(binary.LittleEndian.Uint32(data[off:]))
		descsz := uint64(binary.LittleEndian.Uint32(data[off+4:]))
		typ := binary.LittleEndian.Uint32(data[off+8:])
		nameOff := off + 12
		descOff := nameOff + align4(namesz)
		end := descOff + align4(descsz)
		if end > uint64(len(data)) {
			return 0, fmt.Errorf("ELF note at offset %d runs past its end (namesz %d, descsz %d)", off, namesz, descsz)
		}
		name := cString(data[nameOff:]) // libelf compares the C string
		rest := data[descOff:]          // a string descriptor's C string may run on
		desc := data[descOff : descOff+descsz]
		off = end
		if name != "Xen" {
			continue
		}
		if err := p.note(typ, desc, rest); err != nil {
			return 0, err
		}
		found++
	}
	return found, nil
}

func align4(n uint64) uint64 { return (n + 3) &^ 3 }

// noteNumber reads a numeric descriptor as elf_note_numeric does: 1, 2, 4
// or 8 bytes little-endian; any other size reads as 0.
func noteNumber(desc []byte) uint64 {
	switch len(desc) {
	case 1:
		return uint64(desc[0])
	case 2:
		return uint64(binary.LittleEndian.Uint16(desc))
	case 4:
		return uint64(binary.LittleEndian.Uint32(desc))
	case 8:
		return binary.LittleEndian.Uint64(desc)
	}
	return 0
}

// note applies one Xen note (elf_xen_parse_note). Unknown types are
// ignored; string descriptors are C strings.
func (p *noteParser) note(typ uint32, desc, rest []byte) error {
	n := p.n
	num := noteNumber(desc)
	str := cString(rest)
	switch typ {
	case xenabi.ElfnoteEntry:
		n.Entry, n.HasEntry = num, true
	case xenabi.ElfnoteHypercallPage:
		n.HypercallPage, n.HasHypercallPage = num, true
	case xenabi.ElfnoteVirtBase:
		n.VirtBase, n.HasVirtBase = num, true
	case xenabi.ElfnotePaddrOffset:
		n.PaddrOffset, n.HasPaddrOffset = num, true
	case xenabi.ElfnoteXenVersion:
		n.XenVersion = str
	case xenabi.ElfnoteGuestOS:
		n.GuestOS = str
	case xenabi.ElfnoteGuestVersion:
		n.GuestVersion = str
	case xenabi.ElfnoteLoader:
		n.Loader = str
	case xenabi.ElfnotePAEMode:
		n.PAEMode = str
	case xenabi.ElfnoteBSDSymtab:
		n.BSDSymtab = str == "yes"
	case xenabi.ElfnoteHVStartLow:
		n.HVStartLow = num
	case xenabi.ElfnoteSuspendCancel:
		n.SuspendCancel = num != 0
	case xenabi.ElfnoteInitP2M:
		n.InitP2M, n.HasInitP2M = num, true
	case xenabi.ElfnoteModStartPFN:
		n.ModStartPFN = num != 0
	case xenabi.ElfnotePhys32Entry:
		n.Phys32Entry, n.HasPhys32Entry = num, true
	case xenabi.ElfnoteFeatures:
		n.Features = str
		if err := parseFeatures(str, p.f); err != nil {
			return fmt.Errorf("ELF note XEN_ELFNOTE_FEATURES %q: %w", str, err)
		}
	case xenabi.ElfnoteSupportedFeatures:
		// elf_note_numeric_array: submap 0 is the first u32, if the
		// descriptor is a whole number of u32s.
		if len(desc) >= 4 && len(desc)%4 == 0 {
			v := binary.LittleEndian.Uint32(desc)
			n.SupportedFeatures |= v
			p.f.Supported |= v
		}
	}
	return nil
}

// Guest-info field limits: elf_xen_parse_guest_info reads names into a
// 32-byte buffer and values into a 128-byte one.
const (
	maxGuestInfoName  = 31
	maxGuestInfoValue = 127
)

// parseGuestInfo reads the legacy __xen_guest string as
// elf_xen_parse_guest_info does: comma-separated NAME=VALUE pairs; a name
// longer than 31 bytes or a value longer than 127 is cut there and its rest
// read as the next pair. Numbers are strtoull(value, NULL, 0);
// HYPERCALL_PAGE is a page number from VIRT_BASE. An unknown required
// feature stops the parse, and elf_xen_parse ignores that failure: the
// pairs read so far stand.
func (p *noteParser) parseGuestInfo(s string) {
	n := p.n
	n.GuestInfo = s
	var hypercallPage uint64
	for len(s) > 0 {
		var name, value string
		i := 0
		for ; i < maxGuestInfoName && i < len(s) && s[i] != ',' && s[i] != '='; i++ {
		}
		name = s[:i]
		switch {
		case i < maxGuestInfoName && i < len(s) && s[i] == ',':
			s = s[i+1:]
		case i < maxGuestInfoName && i < len(s) && s[i] == '=':
			s = s[i+1:]
			j := 0
			for ; j < maxGuestInfoValue && j < len(s) && s[j] != ','; j++ {
			}
			value = s[:j]
			if j < maxGuestInfoValue && j < len(s) {
				j++ // the comma
			}
			s = s[j:]
		default:
			s = s[i:]
		}
		switch name {
		case "LOADER":
			n.Loader = value
		case "GUEST_OS":
			n.GuestOS = value
		case "GUEST_VER":
			n.GuestVersion = value
		case "XEN_VER":
			n.XenVersion = value
		case "PAE":
			n.PAEMode = value
		case "BSD_SYMTAB":
			n.BSDSymtab = true
		case "VIRT_BASE":
			n.VirtBase, n.HasVirtBase = strtoull(value), true
		case "VIRT_ENTRY":
			n.Entry, n.HasEntry = strtoull(value), true
		case "ELF_PADDR_OFFSET":
			n.PaddrOffset, n.HasPaddrOffset = strtoull(value), true
		case "HYPERCALL_PAGE":
			hypercallPage, n.HasHypercallPage = strtoull(value), true
		case "FEATURES":
			n.Features = value
			if parseFeatures(value, p.f) != nil {
				s = ""
			}
		}
	}
	if n.HasHypercallPage {
		// The page number counts from VIRT_BASE (0 when unset).
		n.HypercallPage = hypercallPage<<12 + n.VirtBase
	}
}

// strtoull parses a number as C's strtoull(s, NULL, 0): leading white
// space, an optional sign, then hex after "0x", octal after "0", else
// decimal, up to the first byte that is not a digit; no digits reads as 0,
// overflow as the maximum, and a '-' negates.
func strtoull(s string) uint64 {
	s = strings.TrimLeft(s, " \t\n\v\f\r")
	neg := false
	if len(s) > 0 && (s[0] == '+' || s[0] == '-') {
		neg = s[0] == '-'
		s = s[1:]
	}
	base := uint64(10)
	switch {
	case len(s) > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') && hexDigit(s[2]) < 16:
		base, s = 16, s[2:]
	case len(s) > 0 && s[0] == '0':
		base = 8
	}
	var v uint64
	overflow := false
	for i := 0; i < len(s); i++ {
		d := hexDigit(s[i])
		if d >= base {
			break
		}
		if v > (^uint64(0)-d)/base {
			overflow = true
		}
		v = v*base + d
	}
	if overflow {
		return ^uint64(0)
	}
	if neg {
		v = -v
	}
	return v
}

func hexDigit(c byte) uint64 {
	switch {
	case c >= '0' && c <= '9':
		return uint64(c - '0')
	case c >= 'a' && c <= 'z':
		return uint64(c-'a') + 10
	case c >= 'A' && c <= 'Z':
		return uint64(c-'A') + 10
	}
	return 99
}
