// Package physmap is a domain's machine-frame space: which machine frame
// (MFN) backs each of its pseudo-physical frames (PFN), and the reverse.
//
// On Xen, frame numbers in the PV hypercall ABI (start_info, the P2M, the
// suspend record) are machine frames, and they are not the guest's
// pseudo-physical frames. xenresume gives every domain its own range of
// machine frames, disjoint from every PFN a guest can have, so that a guest
// or a toolstack step that confuses MFN and PFN breaks visibly, as on Xen.
//
// The guest's RAM is guest-physical [0, NrPages<<12) in the KVM VM; its
// machine frame n is Base+n. Frames Xen owns (shared_info) sit in the Xen
// window above RAM and have machine frames Base+gpa>>12 too, but they are
// not in the P2M: a guest reaches them only through hypercalls.
package physmap

import "fmt"

// Frame-space constants.
const (
	// XenWindow is the guest-physical base of the pages the emulated Xen
	// owns and shares with the guest (shared_info first).
	XenWindow = 0xFC00_0000
	// XenWindowPages is the window's size in pages.
	XenWindowPages = 16
	// VMMArea is the guest-physical base of the frames the VMM keeps for
	// a PV domain in ring 3 (its page tables for Xen's L4 slots, the M2P
	// it shows read-only, descriptor tables, trampolines, stacks). They
	// have no machine frame a guest can name: validation refuses them.
	VMMArea = 0xF800_0000
	// VMMAreaPages bounds the VMM area (it ends at the Xen window).
	VMMAreaPages = (XenWindow - VMMArea) >> 12
	// MaxPFN bounds any guest's RAM: it must end below the VMM area.
	MaxPFN = VMMArea >> 12
	// baseStride separates the machine-frame ranges of domains: 2^20
	// frames (4 GiB), more than MaxPFN, so no MFN ever equals a PFN.
	baseStride = 1 << 20
)

// Map is one domain's frame map.
type Map struct {
	Base    uint64 // machine frame of PFN 0
	NrPages uint64 // PFNs [0, NrPages) are RAM and in the P2M
}

// ForDomain returns the frame map xenresume uses for domain domid with
// nrPages of RAM: machine frames from (domid+1)<<20.
func ForDomain(domid uint16, nrPages uint64) (Map, error) {
	if nrPages == 0 || nrPages > MaxPFN {
		return Map{}, fmt.Errorf("%d pages of RAM: want 1 to %d", nrPages, MaxPFN)
	}
	return Map{Base: (uint64(domid) + 1) * baseStride, NrPages: nrPages}, nil
}

// MFN translates a RAM PFN to its machine frame.
func (m Map) MFN(pfn uint64) (uint64, bool) {
	if pfn >= m.NrPages {
		return 0, false
	}
	return m.Base + pfn, true
}

// PFN translates a machine frame back to the RAM PFN it backs (the M2P);
// false for a frame that is not this domain's RAM.
func (m Map) PFN(mfn uint64) (uint64, bool) {
	if mfn < m.Base || mfn-m.Base >= m.NrPages {
		return 0, false
	}
	return mfn - m.Base, true
}

// MachineAddress returns the guest-physical address of machine frame 0 in
// a VM that backs the domain's machine frames by aliasing them (RAM, then
// the Xen window) at MFN<<12, as a PV domain in ring 3 does so that the
// hardware walks page tables holding machine frames.
func (m Map) MachineAddress() uint64 { return m.Base << 12 }

// IsXenFrame reports whether mfn is one of the Xen window's frames.
func (m Map) IsXenFrame(mfn uint64) bool {
	return mfn >= m.XenFrame(0) && mfn < m.XenFrame(XenWindowPages)
}

// XenFrame returns the machine frame of the i'th page of the Xen window.
func (m Map) XenFrame(i uint64) uint64 { return m.Base + XenWindow>>12 + i }

// MachineToGPA returns the guest-physical address at which machine frame mfn
// is backed in the KVM VM: RAM or the Xen window. The hypervisor uses it for
// frames a guest names in hypercalls; false for anything else.
func (m Map) MachineToGPA(mfn uint64) (uint64, bool) {
	if pfn, ok := m.PFN(mfn); ok {
		return pfn << 12, true
	}
	if mfn >= m.XenFrame(0) && mfn < m.XenFrame(XenWindowPages) {
		return (mfn - m.Base) << 12, true
	}
	return 0, false
}
