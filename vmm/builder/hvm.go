package builder

import (
	"bytes"
	"debug/elf"
	"fmt"
)

// HVMLoader names which of libxc's loaders takes an image for an HVM or
// PVH container (xc_dom_find_loader).
type HVMLoader string

// The two loaders of an HVM container.
const (
	// LoaderHVMGeneric is xg_dom_hvmloader.c's: an ELF with no Xen notes
	// (hvmloader, or firmware without notes), loaded at its p_paddr and
	// entered at e_entry.
	LoaderHVMGeneric HVMLoader = "hvm-generic"
	// LoaderPVH is xg_dom_elfloader.c's in an HVM container: an ELF whose
	// Xen notes include XEN_ELFNOTE_PHYS32_ENTRY, loaded at its p_paddr and
	// entered there with %ebx = hvm_start_info. XTF's HVM tests take this
	// path even under type = "hvm".
	LoaderPVH HVMLoader = "elf-generic (PVH)"
)

// HVMImage is a parsed image for an HVM or PVH container: segments at
// guest-physical addresses and the 32-bit entry point.
type HVMImage struct {
	Loader HVMLoader
	// Class and Machine are the ELF header's: XTF's hvm64 images are
	// ELFCLASS32 files with machine EM_X86_64.
	Class   elf.Class
	Machine elf.Machine
	// Notes are the Xen notes (LoaderPVH only).
	Notes Notes
	// Segments are the PT_LOAD segments; Virt is the physical address.
	Segments []Segment
	// PStart and PEnd bound the segments by physical address (libelf's
	// pstart and pend).
	PStart, PEnd uint64
	// Entry is where the boot vCPU starts, in 32-bit flat protected mode:
	// PHYS32_ENTRY for LoaderPVH, e_entry for LoaderHVMGeneric.
	Entry uint64
}

// maxPhys32 is the top of what a 32-bit entry can reach: the image and
// its entry point live below 4 GiB.
const maxPhys32 = 1 << 32

// ParseHVM validates image as firmware or a kernel for an HVM or PVH
// container, as libxc picks and runs its loader there: an uncompressed
// little-endian ELF (class 32 or 64) for EM_386 or EM_X86_64, taken by the
// PVH loader when its Xen notes include PHYS32_ENTRY and by the generic
// HVM loader when it has no Xen notes. An image with Xen notes but no
// PHYS32_ENTRY is a PV kernel (type = "pv"), refused here. Every error
// wraps ErrBadImage.
func ParseHVM(image []byte) (img *HVMImage, err error) {
	defer func() {
		if r := recover(); r != nil { // debug/elf on crafted input
			img, err = nil, bad("malformed ELF (%v)", r)
		}
	}()
	if len(image) > MaxImageSize {
		return nil, bad("%d bytes, larger than %d", len(image), MaxImageSize)
	}
	if len(image) < 4 || !bytes.Equal(image[:4], []byte(elf.ELFMAG)) {
		return nil, bad("not an ELF file (an HVM or PVH image is an uncompressed ELF)")
	}
	f, err := elf.NewFile(bytes.NewReader(image))
	if err != nil {
		return nil, bad("malformed ELF: %v", err)
	}
	if f.Machine != elf.EM_386 && f.Machine != elf.EM_X86_64 {
		return nil, bad("ELF machine %v: want EM_386 or EM_X86_64", f.Machine)
	}
	if f.Data != elf.ELFDATA2LSB {
		return nil, bad("ELF data encoding %v: want little-endian", f.Data)
	}
	img = &HVMImage{Class: f.Class, Machine: f.Machine}
	var feats Features
	p := &noteParser{n: &img.Notes, f: &feats}
	src, err := p.parseNotes(f, image)
	if err != nil {
		return nil, err
	}
	switch {
	case src == 0:
		img.Loader, img.Entry = LoaderHVMGeneric, f.Entry
	case img.Notes.HasPhys32Entry:
		img.Loader, img.Entry = LoaderPVH, img.Notes.Phys32Entry
	default:
		return nil, bad("Xen ELF notes without XEN_ELFNOTE_PHYS32_ENTRY: a PV kernel, not a PVH or HVM image (use type = \"pv\")")
	}
	// The segments, by physical address (elf_parse_binary).
	k := &Kernel{}
	if err := k.loadSegments(f, image); err != nil {
		return nil, err
	}
	img.Segments, img.PStart, img.PEnd = k.Segments, k.VirtStart, k.VirtEnd
	if img.PEnd > maxPhys32 {
		return nil, bad("loadable segments end at %#x, above 4 GiB", img.PEnd)
	}
	if img.Entry < img.PStart || img.Entry >= img.PEnd {
		what := "ELF header e_entry"
		if img.Loader == LoaderPVH {
			what = "ELF note XEN_ELFNOTE_PHYS32_ENTRY"
		}
		return nil, bad("%s: entry point %#x is outside the image %#x-%#x", what, img.Entry, img.PStart, img.PEnd)
	}
	return img, nil
}

// String describes the image in one line, for logs and dry runs.
func (img *HVMImage) String() string {
	return fmt.Sprintf("%v %v, %s loader, %#x-%#x, entry %#x", img.Class, img.Machine, img.Loader, img.PStart, img.PEnd, img.Entry)
}
