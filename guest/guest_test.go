package guest_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/guest"
	"github.com/xenresume/xenresume/internal/xentools"
	"github.com/xenresume/xenresume/vmm/builder"
)

// Xen's own readnotes (Debian xen-utils-4.17) accepts the committed image
// and reads the entry point and hypercall page our builder reads.
func TestReadnotesAcceptsImage(t *testing.T) {
	cmd := xentools.Command(t, "usr/lib/xen-4.17/bin/readnotes", "guest/xenresume-stub.elf")
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("readnotes: %v\n%s", err, out)
	}
	k, err := builder.Parse(guest.Image)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"GUEST_OS: xenresume-stub",
		"XEN_VERSION: xen-3.0",
		"LOADER: generic",
		fmt.Sprintf("ENTRY: %#x (8 bytes)", k.Notes.Entry),
		fmt.Sprintf("HYPERCALL_PAGE: %#x (8 bytes)", k.Notes.HypercallPage),
		fmt.Sprintf("VIRT_BASE: %#x (8 bytes)", k.Notes.VirtBase),
		"FEATURES: writable_descriptor_tables",
		"SUSPEND_CANCEL: 0x1",
	} {
		// readnotes right-aligns numbers in a field 18 wide.
		if !strings.Contains(strings.Join(strings.Fields(string(out)), " "), want) {
			t.Errorf("readnotes output lacks %q:\n%s", want, out)
		}
	}
}

// Negative control: readnotes rejects what is not a Xen kernel, so the
// check above can fail.
func TestReadnotesRejectsNonXenImage(t *testing.T) {
	cmd := xentools.Command(t, "usr/lib/xen-4.17/bin/readnotes", "go.mod")
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	if err == nil && strings.Contains(string(out), "ENTRY") {
		t.Fatalf("readnotes accepted go.mod:\n%s", out)
	}
}

// The HVM build is a PVH image to our builder and to Xen's readnotes:
// PHYS32_ENTRY at its entry point inside the one segment at 1 MiB, and no
// PV entry or hypercall-page notes (the negative control: the PV image is
// not taken as one).
func TestHVMImage(t *testing.T) {
	img, err := builder.ParseHVM(guest.ImageHVM)
	if err != nil {
		t.Fatal(err)
	}
	if img.Loader != builder.LoaderPVH || img.PStart != 0x100000 || img.Entry != 0x100000 {
		t.Errorf("HVM image: %v", img)
	}
	if _, err := builder.ParseHVM(guest.Image); err == nil {
		t.Error("the PV image parsed as an HVM/PVH image")
	}
	cmd := xentools.Command(t, "usr/lib/xen-4.17/bin/readnotes", "guest/xenresume-stub-hvm.elf")
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("readnotes: %v\n%s", err, out)
	}
	flat := strings.Join(strings.Fields(string(out)), " ")
	for _, want := range []string{"GUEST_OS: xenresume-stub", "PHYS32_ENTRY: 0x100000"} {
		if !strings.Contains(flat, want) {
			t.Errorf("readnotes output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(flat, "HYPERCALL_PAGE") {
		t.Errorf("the HVM image has a PV hypercall-page note:\n%s", out)
	}
}
