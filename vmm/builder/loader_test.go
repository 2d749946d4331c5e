package builder

import (
	"errors"
	"os"
	"path/filepath"
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
