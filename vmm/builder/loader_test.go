package builder

import (
	"debug/elf"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// XTF's pv64 image shape (no ENTRY, VIRT_BASE or PADDR_OFFSET note; a
// hypercall page; FEATURES "!writable_page_tables|pae_pgdir_above_4gb")
// parses as Xen parses it.
func TestParseXTFShape(t *testing.T) {
	k, err := Parse(xtfLike().bytes())
	if err != nil {
		t.Fatal(err)
	}
	checkXTF(t, k, 0x106000)
	if k.VirtStart != 0x100000 || k.VirtEnd != 0x111000 {
		t.Errorf("image %#x-%#x, want 0x100000-0x111000", k.VirtStart, k.VirtEnd)
	}
}

func checkXTF(t *testing.T, k *Kernel, hc uint64) {
	t.Helper()
	n := k.Notes
	if n.HasEntry || n.HasVirtBase || n.HasPaddrOffset {
		t.Errorf("notes claim ENTRY/VIRT_BASE/PADDR_OFFSET: %+v", n)
	}
	if n.Entry != k.VirtStart || n.VirtBase != 0 || n.PaddrOffset != 0 {
		t.Errorf("entry %#x (image starts %#x), virt base %#x, paddr offset %#x", n.Entry, k.VirtStart, n.VirtBase, n.PaddrOffset)
	}
	if !n.HasHypercallPage || (hc != 0 && n.HypercallPage != hc) || n.HypercallPage%4096 != 0 {
		t.Errorf("hypercall page %#x (has %v)", n.HypercallPage, n.HasHypercallPage)
	}
	if n.GuestOS != "XTF" || n.Loader != "generic" || n.XenVersion != "xen-3.0" || n.PAEMode != "yes" {
		t.Errorf("string notes %+v", n)
	}
	if k.NoteSource != NotesSegment {
		t.Errorf("notes from %v", k.NoteSource)
	}
	if !k.Requires(xenabi.XenfeatWritablePageTables) || k.Requires(xenfeatPAEPgdirAbove4GB) ||
		!k.Supports(xenfeatPAEPgdirAbove4GB) || !k.Supports(xenabi.XenfeatWritablePageTables) {
		t.Errorf("features %+v", k.Features)
	}
	if len(n.Required) != 1 || n.Required[0] != "writable_page_tables" {
		t.Errorf("required %q", n.Required)
	}
}

// XENRESUME_XTF_DIR names a built XTF tree (e.g. .cache/xtf after make
// xtf); every test-pv64-* image in it must parse as Xen parses it.
func TestParseXTFImages(t *testing.T) {
	dir := os.Getenv("XENRESUME_XTF_DIR")
	if dir == "" {
		t.Skip("XENRESUME_XTF_DIR is not set")
	}
	images, err := filepath.Glob(filepath.Join(dir, "tests", "*", "test-pv64-*"))
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for _, path := range images {
		if strings.HasSuffix(path, ".cfg") || strings.HasSuffix(path, ".o") || strings.HasSuffix(path, ".d") {
			continue
		}
		n++
		t.Run(filepath.Base(path), func(t *testing.T) {
			img, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			k, err := Parse(img)
			if err != nil {
				t.Fatal(err)
			}
			checkXTF(t, k, 0)
			if !k.Contains(k.Notes.HypercallPage) || k.Notes.Entry != 0x100000 {
				t.Errorf("entry %#x, hypercall page %#x outside the image", k.Notes.Entry, k.Notes.HypercallPage)
			}
		})
	}
	if n == 0 {
		t.Fatalf("no test-pv64-* images under %s/tests", dir)
	}
}

// A kernel requiring writable_page_tables, which Xen offers a PV guest only
// through VMASST_TYPE_writable_pagetables, boots as on Xen; without that
// offer it is refused, by name.
func TestParseRequiredViaVMAssist(t *testing.T) {
	img := xtfLike().bytes()
	for _, c := range []struct {
		name  string
		offer Offer
		want  string
	}{
		{"vm_assist only", Offer{VMAssist: 1 << xenabi.XenfeatWritablePageTables}, ""},
		{"reported", Offer{Features: 1 << xenabi.XenfeatWritablePageTables}, ""},
		{"not offered", Offer{Features: 1 << xenabi.XenfeatWritableDescriptorTables},
			"kernel requires feature 'writable_page_tables' which xenresume does not offer"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseWith(img, Options{Offer: c.offer})
			switch {
			case c.want == "" && err != nil:
				t.Fatal(err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("got %v, want %q", err, c.want)
			}
			var fe *FeatureError
			if c.want != "" && (!errors.As(err, &fe) || fe.Feature != xenabi.XenfeatWritablePageTables || !errors.Is(err, ErrBadImage)) {
				t.Errorf("error %#v is not a FeatureError for writable_page_tables", err)
			}
		})
	}
}

// A vmlinux-shaped image: VIRT_BASE and PADDR_OFFSET 0 give segments at
// p_paddr + VIRT_BASE; SUPPORTED_FEATURES adds to the FEATURES string's
// set without requiring anything.
func TestParseLinuxShape(t *testing.T) {
	k, err := Parse(linuxLike().bytes())
	if err != nil {
		t.Fatal(err)
	}
	const vb = 0xffffffff80000000
	n := k.Notes
	if n.VirtBase != vb || n.PaddrOffset != 0 || n.Entry != vb+0x1000010 || n.HypercallPage != vb+0x1002000 || !n.SuspendCancel {
		t.Errorf("notes %+v", n)
	}
	if k.VirtStart != vb+0x1000000 || k.VirtEnd != vb+0x1005000 || len(k.Segments) != 2 || k.Segments[1].Virt != vb+0x1003000 {
		t.Errorf("image %#x-%#x segments %+v", k.VirtStart, k.VirtEnd, k.Segments)
	}
	want := Features{
		Supported: 1<<xenabi.XenfeatWritablePageTables | 1<<xenfeatPAEPgdirAbove4GB | 1<<xenfeatDom0,
		Required:  1 << xenabi.XenfeatWritablePageTables,
	}
	if k.Features != want || n.SupportedFeatures != 1<<xenabi.XenfeatWritablePageTables|1<<xenfeatDom0 {
		t.Errorf("features %+v, want %+v", k.Features, want)
	}
}

// withNote returns e with note n replacing any note of its type, or added.
func withNote(e testELF, n testNote) testELF {
	out := []testNote{}
	for _, o := range e.notes {
		if o.typ != n.typ {
			out = append(out, o)
		}
	}
	e.notes = append(out, n)
	return e
}

// without returns e without notes of the given types.
func without(e testELF, types ...uint32) testELF {
	out := []testNote{}
	for _, o := range e.notes {
		if !slices.Contains(types, o.typ) {
			out = append(out, o)
		}
	}
	e.notes = out
	return e
}

// Xen's loader rules, one image each: libelf's elf_xen_parse (where notes
// come from), elf_xen_parse_note and elf_xen_parse_guest_info (what they
// say), elf_xen_note_check, elf_xen_addr_calc_check (defaults and bounds),
// elf_xen_parse_features and xc_dom's feature checks.
func TestParseNoteRules(t *testing.T) {
	const vb = 0xffffffff80000000
	xtf := xtfLike
	legacy := func(info string) testELF {
		return testELF{
			entry:     vb + 0x100000,
			loads:     []testLoad{{paddr: vb + 0x100000, vaddr: vb + 0x100000, data: make([]byte, 0x3000), flags: elf.PF_R | elf.PF_X}},
			guestInfo: info,
		}
	}
	type check func(*testing.T, *Kernel)
	wantSource := func(s NoteSource) check {
		return func(t *testing.T, k *Kernel) {
			if k.NoteSource != s {
				t.Errorf("notes from %v, want %v", k.NoteSource, s)
			}
		}
	}
	for _, c := range []struct {
		name  string
		elf   testELF
		offer *Offer
		want  string // error, or "" for success
		check check
	}{
		// Where the notes come from (elf_xen_parse).
		{name: "PT_NOTE segment", elf: xtf(), check: wantSource(NotesSegment)},
		{name: "SHT_NOTE section only", elf: func() testELF { e := xtf(); e.sectionNotes, e.notes = e.notes, nil; return e }(),
			check: func(t *testing.T, k *Kernel) { wantSource(NotesSection)(t, k); checkXTF2(t, k) }},
		{name: "PT_NOTE without Xen notes falls back to sections", elf: func() testELF {
			e := xtf()
			e.sectionNotes, e.notes, e.segmentOnly = e.notes, []testNote{{"GNU", 3, []byte{1, 2, 3, 4}}}, true
			return e
		}(), check: wantSource(NotesSection)},
		{name: "PT_NOTE wins over SHT_NOTE", elf: func() testELF {
			e := xtf()
			e.segmentOnly = true
			e.sectionNotes = []testNote{strNote(xenabi.ElfnoteGuestOS, "other")}
			return e
		}(), check: func(t *testing.T, k *Kernel) {
			if k.Notes.GuestOS != "XTF" {
				t.Errorf("GUEST_OS %q from the section", k.Notes.GuestOS)
			}
		}},
		{name: "notes win over __xen_guest", elf: func() testELF { e := xtf(); e.guestInfo = "GUEST_OS=other"; return e }(),
			check: func(t *testing.T, k *Kernel) {
				if k.Notes.GuestOS != "XTF" || k.Notes.GuestInfo != "" {
					t.Errorf("notes %+v", k.Notes)
				}
			}},
		{name: "no notes at all", elf: func() testELF { e := xtf(); e.notes = nil; return e }(),
			want: "no Xen ELF notes and no __xen_guest section: not a Xen PV kernel (elf_xen_note_check)"},
		{name: "only non-Xen notes", elf: func() testELF { e := xtf(); e.notes = []testNote{{"GNU", 3, []byte{1, 2, 3, 4}}}; return e }(),
			want: "no Xen ELF notes"},

		// The legacy __xen_guest string (elf_xen_parse_guest_info).
		{name: "__xen_guest", elf: legacy("GUEST_OS=linux,GUEST_VER=2.6,XEN_VER=xen-3.0,VIRT_BASE=0xffffffff80000000,HYPERCALL_PAGE=0x101,LOADER=generic,FEATURES=writable_page_tables|!writable_descriptor_tables"),
			check: func(t *testing.T, k *Kernel) {
				wantSource(NotesGuestInfo)(t, k)
				n := k.Notes
				// PADDR_OFFSET defaults to VIRT_BASE for the legacy string;
				// HYPERCALL_PAGE is a page number from VIRT_BASE.
				if n.VirtBase != vb || n.PaddrOffset != vb || n.HypercallPage != vb+0x101000 || n.Entry != vb+0x100000 {
					t.Errorf("notes %+v", n)
				}
				if k.VirtStart != vb+0x100000 || !k.Requires(xenabi.XenfeatWritableDescriptorTables) || !k.Supports(xenabi.XenfeatWritablePageTables) {
					t.Errorf("image at %#x, features %+v", k.VirtStart, k.Features)
				}
			}},
		{name: "__xen_guest ELF_PADDR_OFFSET and VIRT_ENTRY", elf: func() testELF {
			e := legacy("GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xffffffff80000000,ELF_PADDR_OFFSET=0,VIRT_ENTRY=0xffffffff80100010")
			e.loads[0].paddr = 0x100000
			return e
		}(), check: func(t *testing.T, k *Kernel) {
			if k.VirtStart != vb+0x100000 || k.Notes.Entry != vb+0x100010 || k.Notes.HasHypercallPage {
				t.Errorf("image at %#x, notes %+v", k.VirtStart, k.Notes)
			}
		}},
		{name: "__xen_guest numbers as strtoull reads them", elf: legacy("GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=01777777777760000000000 junk,HYPERCALL_PAGE=257"),
			check: func(t *testing.T, k *Kernel) {
				if k.Notes.VirtBase != vb || k.Notes.HypercallPage != vb+0x101000 {
					t.Errorf("notes %+v", k.Notes)
				}
			}},
		{name: "__xen_guest unknown required feature stops the parse", elf: legacy("GUEST_OS=linux,FEATURES=!frobnicate,XEN_VER=xen-3.0"),
			want: `__xen_guest XEN_VER "": Xen loads only images built for xen-3.0`},
		{name: "__xen_guest without XEN_VER", elf: legacy("GUEST_OS=linux,VIRT_BASE=0xffffffff80000000"),
			want: `__xen_guest XEN_VER ""`},
		{name: "__xen_guest ELF_PADDR_OFFSET without VIRT_BASE", elf: legacy("GUEST_OS=linux,XEN_VER=xen-3.0,ELF_PADDR_OFFSET=0"),
			want: "PADDR_OFFSET 0x0 without VIRT_BASE (elf_xen_addr_calc_check)"},

		// elf_xen_note_check.
		{name: "XEN_VERSION prefix", elf: withNote(xtf(), strNote(xenabi.ElfnoteXenVersion, "xen-3.0-unstable"))},
		{name: "XEN_VERSION missing", elf: without(xtf(), xenabi.ElfnoteXenVersion), want: `XEN_VERSION "": Xen loads only images built for xen-3.0`},
		{name: "Linux needs no LOADER", elf: withNote(without(xtf(), xenabi.ElfnoteLoader), strNote(xenabi.ElfnoteGuestOS, "linux-6.1"))},
		{name: "neither generic nor Linux", elf: withNote(xtf(), strNote(xenabi.ElfnoteLoader, "bsd")),
			want: `ELF note XEN_ELFNOTE_LOADER "bsd" and ELF note XEN_ELFNOTE_GUEST_OS "XTF": Xen loads only images for the generic loader or Linux`},
		{name: "string note without its NUL", elf: withNote(xtf(), xenNote(xenabi.ElfnoteLoader, []byte("generic")))},

		// Numeric notes (elf_note_numeric): 1, 2, 4 or 8 bytes, else 0.
		{name: "4-byte HYPERCALL_PAGE", elf: withNote(xtf(), u32Note(xenabi.ElfnoteHypercallPage, 0x107000)),
			check: func(t *testing.T, k *Kernel) {
				if k.Notes.HypercallPage != 0x107000 {
					t.Errorf("hypercall page %#x", k.Notes.HypercallPage)
				}
			}},
		{name: "2-byte VIRT_BASE", elf: withNote(withNote(xtf(), xenNote(xenabi.ElfnoteVirtBase, []byte{0, 0})), u64Note(xenabi.ElfnotePaddrOffset, 0))},
		{name: "3-byte ENTRY reads as 0", elf: withNote(xtf(), xenNote(xenabi.ElfnoteEntry, []byte{0, 0, 0x10})),
			want: "ELF note XEN_ELFNOTE_ENTRY: entry point 0x0 is outside the image 0x100000-0x111000 (elf_xen_addr_calc_check)"},

		// elf_xen_addr_calc_check.
		{name: "ENTRY note over e_entry", elf: withNote(xtf(), u64Note(xenabi.ElfnoteEntry, 0x100040)),
			check: func(t *testing.T, k *Kernel) {
				if k.Notes.Entry != 0x100040 || !k.Notes.HasEntry {
					t.Errorf("entry %#x", k.Notes.Entry)
				}
			}},
		{name: "e_entry outside the image", elf: func() testELF { e := xtf(); e.entry = 0x200000; return e }(),
			want: "ELF header e_entry (no ENTRY note): entry point 0x200000 is outside the image"},
		{name: "entry at the image's end", elf: func() testELF { e := xtf(); e.entry = 0x111000; return e }()},
		{name: "VIRT_BASE, PADDR_OFFSET 0 by default with notes", elf: func() testELF {
			e := withNote(xtf(), u64Note(xenabi.ElfnoteVirtBase, vb))
			e.entry = vb + 0x100000
			return withNote(e, u64Note(xenabi.ElfnoteHypercallPage, vb+0x106000))
		}(), check: func(t *testing.T, k *Kernel) {
			if k.Notes.PaddrOffset != 0 || k.VirtStart != vb+0x100000 || k.Segments[0].Virt != vb+0x100000 {
				t.Errorf("paddr offset %#x, image at %#x", k.Notes.PaddrOffset, k.VirtStart)
			}
		}},
		{name: "PADDR_OFFSET without VIRT_BASE", elf: withNote(xtf(), u64Note(xenabi.ElfnotePaddrOffset, 0)),
			want: "PADDR_OFFSET 0x0 without VIRT_BASE (elf_xen_addr_calc_check)"},
		{name: "image below VIRT_BASE", elf: withNote(withNote(xtf(), u64Note(xenabi.ElfnoteVirtBase, 0x200000)), u64Note(xenabi.ElfnotePaddrOffset, 0x200000)),
			want: "image starts at 0x100000, below VIRT_BASE 0x200000"},
		{name: "no HYPERCALL_PAGE", elf: without(xtf(), xenabi.ElfnoteHypercallPage),
			check: func(t *testing.T, k *Kernel) {
				if k.Notes.HasHypercallPage {
					t.Error("hypercall page claimed")
				}
			}},
		{name: "hypercall page misaligned: its page", elf: withNote(xtf(), u64Note(xenabi.ElfnoteHypercallPage, 0x106123)),
			check: func(t *testing.T, k *Kernel) {
				if k.Notes.HypercallPage != 0x106000 {
					t.Errorf("hypercall page %#x", k.Notes.HypercallPage)
				}
			}},
		{name: "INIT_P2M inside the image", elf: withNote(xtf(), u64Note(xenabi.ElfnoteInitP2M, 0x108000)),
			want: "XEN_ELFNOTE_INIT_P2M: 0x108000 is inside the image"},
		{name: "INIT_P2M outside the image", elf: withNote(xtf(), u64Note(xenabi.ElfnoteInitP2M, 0xffff880000000000))},
		{name: "ET_DYN: libelf ignores e_type", elf: func() testELF { e := xtf(); e.typ = elf.ET_DYN; return e }()},
		{name: "PT_LOAD without R, W or X is not loaded", elf: func() testELF {
			e := xtf()
			e.loads = append(e.loads, testLoad{paddr: 0x400000, vaddr: 0x400000, data: []byte{1}})
			return e
		}(), check: func(t *testing.T, k *Kernel) {
			if len(k.Segments) != 1 || k.VirtEnd != 0x111000 {
				t.Errorf("segments %+v end %#x", k.Segments, k.VirtEnd)
			}
		}},

		// FEATURES and SUPPORTED_FEATURES.
		{name: "required feature offered", elf: withNote(xtf(), strNote(xenabi.ElfnoteFeatures, "!writable_descriptor_tables|hvm_callback_vector")),
			check: func(t *testing.T, k *Kernel) {
				if !k.Requires(xenabi.XenfeatWritableDescriptorTables) || k.Requires(xenabi.XenfeatHVMCallbackVector) || !k.Supports(xenabi.XenfeatHVMCallbackVector) {
					t.Errorf("features %+v", k.Features)
				}
			}},
		{name: "required feature not offered", elf: withNote(xtf(), strNote(xenabi.ElfnoteFeatures, "!supervisor_mode_kernel")),
			offer: &Offer{Features: 1 << xenabi.XenfeatWritablePageTables},
			want:  "kernel requires feature 'supervisor_mode_kernel' which xenresume does not offer"},
		{name: "unknown feature ignored", elf: withNote(xtf(), strNote(xenabi.ElfnoteFeatures, "frobnicate|writable_page_tables"))},
		{name: "unknown required feature", elf: withNote(xtf(), strNote(xenabi.ElfnoteFeatures, "writable_page_tables|!frobnicate")),
			want: `ELF note XEN_ELFNOTE_FEATURES "writable_page_tables|!frobnicate": requires feature 'frobnicate', which Xen does not know (elf_xen_parse_features)`},
		{name: "required dom0", elf: withNote(xtf(), strNote(xenabi.ElfnoteFeatures, "!dom0")),
			want: "kernel requires feature 'dom0' and does not support unprivileged (domU) operation (xc_dom_parse_elf_kernel)"},
		{name: "required auto_translated_physmap", elf: withNote(xtf(), strNote(xenabi.ElfnoteFeatures, "!auto_translated_physmap")),
			want: "kernel requires feature 'auto_translated_physmap' which Xen no longer offers PV guests (xc_dom bootearly)"},
		{name: "SUPPORTED_FEATURES", elf: withNote(xtf(), xenNote(xenabi.ElfnoteSupportedFeatures, []byte{0x01, 0x08, 0, 0, 0xff, 0xff, 0xff, 0xff})),
			check: func(t *testing.T, k *Kernel) {
				if !k.Supports(0) || !k.Supports(xenfeatDom0) || k.Requires(xenfeatDom0) || k.Supports(31) {
					t.Errorf("features %+v", k.Features)
				}
			}},
		{name: "too many notes", elf: func() testELF {
			e := xtf()
			e.notes = append(e.notes, slices.Repeat([]testNote{{"", 0, nil}}, maxNotes)...)
			return e
		}(), want: "more than 65536 ELF notes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			offer := DefaultOffer
			if c.offer != nil {
				offer = *c.offer
			}
			k, err := ParseWith(c.elf.bytes(), Options{Offer: offer})
			if c.want != "" {
				if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrBadImage) {
					t.Fatalf("got %v, want %q", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.check != nil {
				c.check(t, k)
			}
		})
	}
}

// checkXTF2 is checkXTF without the note source.
func checkXTF2(t *testing.T, k *Kernel) {
	t.Helper()
	s := k.NoteSource
	k.NoteSource = NotesSegment
	checkXTF(t, k, 0x106000)
	k.NoteSource = s
}
