package builder

import (
	"fmt"
	"strings"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// XENFEAT_* bit numbers the FEATURES note can name and xenabi does not
// define (xen/include/public/features.h).
const (
	xenfeatPAEPgdirAbove4GB = 4
	xenfeatDom0             = 11
)

// featureNames are the names libelf's FEATURES parser knows
// (elf_xen_feature_names in xen/common/libelf/libelf-dominfo.c): exactly
// these seven; any other name is unknown to it.
var featureNames = map[string]int{
	"writable_page_tables":       xenabi.XenfeatWritablePageTables,
	"writable_descriptor_tables": xenabi.XenfeatWritableDescriptorTables,
	"auto_translated_physmap":    xenabi.XenfeatAutoTranslatedPhysmap,
	"supervisor_mode_kernel":     xenabi.XenfeatSupervisorModeKernel,
	"pae_pgdir_above_4gb":        xenfeatPAEPgdirAbove4GB,
	"hvm_callback_vector":        xenabi.XenfeatHVMCallbackVector,
	"dom0":                       xenfeatDom0,
}

// FeatureName returns the name Xen's FEATURES note uses for XENFEAT_* bit
// feat, or "feature N" for a bit the note syntax cannot name.
func FeatureName(feat int) string {
	for name, bit := range featureNames {
		if bit == feat {
			return name
		}
	}
	return fmt.Sprintf("feature %d", feat)
}

// Features are a kernel's XENFEAT_* bitmaps (submap 0), as libelf collects
// them in elf_dom_parms.f_supported and f_required.
type Features struct {
	// Supported holds every feature the FEATURES note names (required or
	// not) and the bits of the SUPPORTED_FEATURES note.
	Supported uint32
	// Required holds the features the FEATURES note marks with '!'.
	// Required is a subset of Supported.
	Required uint32
}

// Requires reports whether the kernel marks XENFEAT_* bit feat required.
func (k *Kernel) Requires(feat int) bool {
	return feat >= 0 && feat < 32 && k.Features.Required&(1<<feat) != 0
}

// Supports reports whether the kernel declares XENFEAT_* bit feat
// supported (every required feature is also supported).
func (k *Kernel) Supports(feat int) bool {
	return feat >= 0 && feat < 32 && k.Features.Supported&(1<<feat) != 0
}

// Offer is what the platform offers a 64-bit PV kernel, as XENFEAT_*
// bitmaps (submap 0). A required feature the offer lacks refuses the
// kernel.
type Offer struct {
	// Features are the features XENVER_get_features reports to the guest
	// from its first instruction.
	Features uint32
	// VMAssist are the features offered only through a vm_assist the
	// kernel enables itself: Xen reports writable_page_tables to a PV
	// guest never (only to translated ones), but implements it as
	// VMASST_TYPE_writable_pagetables, and reports pae_pgdir_above_4gb
	// once VMASST_TYPE_pae_extended_cr3 is on. Xen's toolstack boots a
	// kernel that requires either (XTF requires writable_page_tables):
	// xc_dom_parse_image only checks the kernel's required features
	// against its own supported ones, and no step of xc_dom turns the
	// assist on for the kernel.
	VMAssist uint32
}

// All returns every feature the offer provides, directly or through
// vm_assist.
func (o Offer) All() uint32 { return o.Features | o.VMAssist }

// DefaultOffer is what xenresume offers a 64-bit PV kernel in Xen's ring-3
// model: the descriptor- and page-table features a kernel may require
// (Xen itself never checks a kernel's required features against its own,
// so this errs on Xen's permissive side) plus the ones Xen offers through
// vm_assist. Not supervisor_mode_kernel (Build refuses a kernel that
// declares it) nor hvm_callback_vector (a PVHVM feature). Parse checks
// kernels against it; ParseWith takes another.
var DefaultOffer = Offer{
	Features: 1<<xenabi.XenfeatWritablePageTables |
		1<<xenabi.XenfeatWritableDescriptorTables,
	VMAssist: 1<<xenabi.XenfeatWritablePageTables | 1<<xenfeatPAEPgdirAbove4GB,
}

// FeatureError is the error for a kernel whose required features cannot be
// met. It wraps ErrBadImage.
type FeatureError struct {
	Feature int    // XENFEAT_* bit
	Name    string // as the FEATURES note spells it
	Reason  string // why it cannot be met
}

// Error is one line: the feature by its FEATURES name, and why.
func (e *FeatureError) Error() string {
	return fmt.Sprintf("%v: kernel requires feature '%s' %s", ErrBadImage, e.Name, e.Reason)
}

// Unwrap returns ErrBadImage.
func (e *FeatureError) Unwrap() error { return ErrBadImage }

// maxFeatureLen is the longest feature name elf_xen_parse_features reads
// into its 64-byte buffer (the rest starts the next name).
const maxFeatureLen = 63

// parseFeatures reads a FEATURES string as elf_xen_parse_features does:
// '|'-separated names, each at most 63 bytes (a longer one is cut there
// and its rest read as the next name), a leading '!' marking a required
// feature, unknown names ignored unless required, which fails the parse.
// It stops at the first NUL.
func parseFeatures(s string, f *Features) error {
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	for len(s) > 0 {
		n := 0
		for n < maxFeatureLen && n < len(s) && s[n] != '|' {
			n++
		}
		name := s[:n]
		if n < len(s) && s[n] == '|' && n < maxFeatureLen {
			n++
		}
		s = s[n:]
		if req, ok := strings.CutPrefix(name, "!"); ok {
			bit, known := featureNames[req]
			if !known {
				return fmt.Errorf("requires feature '%s', which Xen does not know (elf_xen_parse_features)", req)
			}
			f.Supported |= 1 << bit
			f.Required |= 1 << bit
			continue
		}
		if bit, known := featureNames[name]; known {
			f.Supported |= 1 << bit
		}
	}
	return nil
}

// checkFeatures applies Xen's rules for a PV domU's required features, then
// refuses any the offer lacks.
func checkFeatures(f Features, offer Offer) error {
	req := func(bit int) bool { return f.Required&(1<<bit) != 0 }
	// xc_dom_parse_elf_kernel (tools/libs/guest/xg_dom_elfloader.c).
	if req(xenfeatDom0) {
		return &FeatureError{xenfeatDom0, "dom0", "and does not support unprivileged (domU) operation (xc_dom_parse_elf_kernel)"}
	}
	// bootearly (tools/libs/guest/xg_dom_x86.c): PV auto-translate is gone.
	if req(xenabi.XenfeatAutoTranslatedPhysmap) {
		return &FeatureError{xenabi.XenfeatAutoTranslatedPhysmap, "auto_translated_physmap",
			"which Xen no longer offers PV guests (xc_dom bootearly)"}
	}
	// xc_dom_parse_image checks required against the kernel's supported
	// set, which holds by construction (parseFeatures sets both). What the
	// hypervisor provides is xenresume's own check.
	missing := f.Required &^ offer.All()
	for bit := 0; bit < 32; bit++ {
		if missing&(1<<bit) != 0 {
			return &FeatureError{bit, FeatureName(bit), "which xenresume does not offer"}
		}
	}
	return nil
}
