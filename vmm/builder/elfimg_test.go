package builder

import (
	"bytes"
	"debug/elf"
	"encoding/binary"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// testLoad is one PT_LOAD segment of a test image.
type testLoad struct {
	paddr, vaddr uint64
	data         []byte
	memsz        uint64 // 0: len(data)
	flags        elf.ProgFlag
}

// testNote is one ELF note.
type testNote struct {
	name string
	typ  uint32
	desc []byte
}

// testELF describes a small ELF64 x86-64 image for the loader tests.
type testELF struct {
	typ   elf.Type // 0: ET_EXEC
	entry uint64
	loads []testLoad
	// notes go in a PT_NOTE segment, which also has an SHT_NOTE section
	// (as ld lays them out) unless segmentOnly; sectionNotes go in an
	// SHT_NOTE section with no segment.
	notes        []testNote
	segmentOnly  bool
	sectionNotes []testNote
	// guestInfo, if set, is the __xen_guest section's contents (a NUL is
	// appended unless guestInfoRaw).
	guestInfo    string
	guestInfoRaw bool
}

func xenNote(typ uint32, desc []byte) testNote { return testNote{"Xen", typ, desc} }

func strNote(typ uint32, s string) testNote { return xenNote(typ, append([]byte(s), 0)) }

func u64Note(typ uint32, v uint64) testNote {
	return xenNote(typ, binary.LittleEndian.AppendUint64(nil, v))
}

func u32Note(typ uint32, v uint32) testNote {
	return xenNote(typ, binary.LittleEndian.AppendUint32(nil, v))
}

func encodeNotes(notes []testNote) []byte {
	var b []byte
	pad := func() {
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	for _, n := range notes {
		name := append([]byte(n.name), 0)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(name)))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(n.desc)))
		b = binary.LittleEndian.AppendUint32(b, n.typ)
		b = append(b, name...)
		pad()
		b = append(b, n.desc...)
		pad()
	}
	return b
}

// xtfNotes are the notes XTF's pv64 head.S gives (XTF arch/x86/pv/head.S),
// with the hypercall page at hc.
func xtfNotes(hc uint64) []testNote {
	return []testNote{
		strNote(xenabi.ElfnoteGuestOS, "XTF"),
		strNote(xenabi.ElfnoteGuestVersion, "0"),
		strNote(xenabi.ElfnoteLoader, "generic"),
		u64Note(xenabi.ElfnoteHypercallPage, hc),
		strNote(xenabi.ElfnoteXenVersion, "xen-3.0"),
		strNote(xenabi.ElfnoteFeatures, "!writable_page_tables|pae_pgdir_above_4gb"),
		strNote(xenabi.ElfnotePAEMode, "yes"),
	}
}

// xtfLike is an image shaped like XTF's test-pv64-example: one RWX
// PT_LOAD at 1 MiB (p_paddr == p_vaddr), entry at its start, no ENTRY,
// VIRT_BASE or PADDR_OFFSET note.
func xtfLike() testELF {
	return testELF{
		entry: 0x100000,
		loads: []testLoad{{paddr: 0x100000, vaddr: 0x100000, data: bytes.Repeat([]byte{0x90}, 0x8000), memsz: 0x11000,
			flags: elf.PF_R | elf.PF_W | elf.PF_X}},
		notes: xtfNotes(0x106000),
	}
}

// linuxLike is an image laid out as Linux's vmlinux is: linked at
// 0xffffffff81000000 with p_paddr 0x1000000, and notes giving VIRT_BASE
// and PADDR_OFFSET 0, ENTRY and HYPERCALL_PAGE.
func linuxLike() testELF {
	const vb = 0xffffffff80000000
	return testELF{
		entry: vb + 0x1000000,
		loads: []testLoad{
			{paddr: 0x1000000, vaddr: vb + 0x1000000, data: bytes.Repeat([]byte{0xcc}, 0x3000), flags: elf.PF_R | elf.PF_X},
			{paddr: 0x1003000, vaddr: vb + 0x1003000, data: []byte{1, 2, 3}, memsz: 0x2000, flags: elf.PF_R | elf.PF_W},
		},
		notes: []testNote{
			strNote(xenabi.ElfnoteGuestOS, "linux"),
			strNote(xenabi.ElfnoteGuestVersion, "2.6"),
			strNote(xenabi.ElfnoteXenVersion, "xen-3.0"),
			u64Note(xenabi.ElfnoteVirtBase, vb),
			u64Note(xenabi.ElfnotePaddrOffset, 0),
			u64Note(xenabi.ElfnoteEntry, vb+0x1000010),
			u64Note(xenabi.ElfnoteHypercallPage, vb+0x1002000),
			strNote(xenabi.ElfnoteFeatures, "!writable_page_tables|pae_pgdir_above_4gb"),
			u32Note(xenabi.ElfnoteSupportedFeatures, 1<<xenabi.XenfeatWritablePageTables|1<<xenfeatDom0),
			u64Note(xenabi.ElfnoteSuspendCancel, 1),
		},
	}
}

// bytes lays the image out: ELF header, program headers, segment data,
// note data, __xen_guest, the section-name table, section headers.
func (e testELF) bytes() []byte {
	le := binary.LittleEndian
	var out []byte
	align := func(a int) {
		for len(out)%a != 0 {
			out = append(out, 0)
		}
	}
	segNotes := encodeNotes(e.notes)
	secNotes := encodeNotes(e.sectionNotes)
	nph := len(e.loads)
	if len(e.notes) > 0 {
		nph++
	}
	out = make([]byte, 64+56*nph)
	type sec struct {
		name           string
		typ            elf.SectionType
		off, size, adr uint64
	}
	secs := []sec{{}}
	var phdrs [][]byte
	for i, l := range e.loads {
		align(16)
		off := len(out)
		out = append(out, l.data...)
		memsz := l.memsz
		if memsz == 0 {
			memsz = uint64(len(l.data))
		}
		ph := make([]byte, 56)
		le.PutUint32(ph[0:], uint32(elf.PT_LOAD))
		le.PutUint32(ph[4:], uint32(l.flags))
		le.PutUint64(ph[8:], uint64(off))
		le.PutUint64(ph[16:], l.vaddr)
		le.PutUint64(ph[24:], l.paddr)
		le.PutUint64(ph[32:], uint64(len(l.data)))
		le.PutUint64(ph[40:], memsz)
		le.PutUint64(ph[48:], 16)
		phdrs = append(phdrs, ph)
		secs = append(secs, sec{name: ".load" + string(rune('0'+i)), typ: elf.SHT_PROGBITS, off: uint64(off), size: uint64(len(l.data)), adr: l.vaddr})
	}
	if len(e.notes) > 0 {
		align(4)
		off := len(out)
		out = append(out, segNotes...)
		ph := make([]byte, 56)
		le.PutUint32(ph[0:], uint32(elf.PT_NOTE))
		le.PutUint32(ph[4:], uint32(elf.PF_R))
		le.PutUint64(ph[8:], uint64(off))
		le.PutUint64(ph[32:], uint64(len(segNotes)))
		le.PutUint64(ph[40:], uint64(len(segNotes)))
		le.PutUint64(ph[48:], 4)
		phdrs = append(phdrs, ph)
		if !e.segmentOnly {
			secs = append(secs, sec{name: ".note", typ: elf.SHT_NOTE, off: uint64(off), size: uint64(len(segNotes))})
		}
	}
	if len(e.sectionNotes) > 0 {
		align(4)
		secs = append(secs, sec{name: ".note.Xen", typ: elf.SHT_NOTE, off: uint64(len(out)), size: uint64(len(secNotes))})
		out = append(out, secNotes...)
	}
	if e.guestInfo != "" {
		gi := []byte(e.guestInfo)
		if !e.guestInfoRaw {
			gi = append(gi, 0)
		}
		secs = append(secs, sec{name: "__xen_guest", typ: elf.SHT_PROGBITS, off: uint64(len(out)), size: uint64(len(gi))})
		out = append(out, gi...)
	}
	// Section names.
	var shstr []byte
	shstr = append(shstr, 0)
	nameOff := make([]uint32, len(secs)+1)
	for i := range secs {
		if i == 0 {
			continue
		}
		nameOff[i] = uint32(len(shstr))
		shstr = append(append(shstr, secs[i].name...), 0)
	}
	nameOff[len(secs)] = uint32(len(shstr))
	shstr = append(append(shstr, ".shstrtab"...), 0)
	secs = append(secs, sec{name: ".shstrtab", typ: elf.SHT_STRTAB, off: uint64(len(out)), size: uint64(len(shstr))})
	out = append(out, shstr...)
	align(8)
	shoff := len(out)
	for i, s := range secs {
		sh := make([]byte, 64)
		if i > 0 {
			le.PutUint32(sh[0:], nameOff[i])
			le.PutUint32(sh[4:], uint32(s.typ))
			le.PutUint64(sh[16:], s.adr)
			le.PutUint64(sh[24:], s.off)
			le.PutUint64(sh[32:], s.size)
			le.PutUint64(sh[48:], 1)
		}
		out = append(out, sh...)
	}
	// ELF header and program headers.
	copy(out, elf.ELFMAG)
	out[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	out[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	out[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	typ := e.typ
	if typ == 0 {
		typ = elf.ET_EXEC
	}
	le.PutUint16(out[16:], uint16(typ))
	le.PutUint16(out[18:], uint16(elf.EM_X86_64))
	le.PutUint32(out[20:], uint32(elf.EV_CURRENT))
	le.PutUint64(out[24:], e.entry)
	le.PutUint64(out[32:], 64)
	le.PutUint64(out[40:], uint64(shoff))
	le.PutUint16(out[52:], 64)
	le.PutUint16(out[54:], 56)
	le.PutUint16(out[56:], uint16(nph))
	le.PutUint16(out[58:], 64)
	le.PutUint16(out[60:], uint16(len(secs)))
	le.PutUint16(out[62:], uint16(len(secs)-1))
	for i, ph := range phdrs {
		copy(out[64+56*i:], ph)
	}
	return out
}
