package builder

import (
	"encoding/binary"
	"fmt"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/physmap"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

const (
	page     = 4096
	large    = 2 << 20
	bootPad  = 512 << 10 // Xen leaves at least 512 KiB after the stack
	regionAl = 4 << 20   // the start-of-day region ends on a 4 MiB boundary
	// MaxMemory is what the builder's bootstrap tables can map at
	// VIRT_BASE in the -2 GiB kernel code model.
	MaxMemory = 2 << 30
)

// Params is what the toolstack passes to Build.
type Params struct {
	Cmdline       string
	Frames        physmap.Map // the domain's frame map; NrPages<<12 bytes of RAM
	SharedInfoMFN uint64      // machine frame of the domain's shared_info
	StoreEvtchn   uint32      // xenstore event channel port
	ConsoleEvtchn uint32      // console event channel port
}

// Layout is the start-of-day memory layout Build wrote, as virtual
// addresses in the guest (guest-physical = virtual - VirtBase).
type Layout struct {
	VirtBase             uint64
	KernelStart          uint64
	KernelEnd            uint64
	P2M                  uint64 // the P2M list (mfn_list)
	P2MFrames            uint64
	StartInfo            uint64
	Store                uint64 // xenstore ring page
	Console              uint64 // console ring page
	PageTables           uint64 // bootstrap L4 (pt_base)
	PTFrames             uint64
	StackTop             uint64
	End                  uint64 // end of the start-of-day region (v_end)
	Entry, HypercallPage uint64
	// L4MFN is the bootstrap L4's machine frame (the initial CR3).
	L4MFN uint64
}

// PFN returns the pseudo-physical frame of a virtual address in the layout.
func (l *Layout) PFN(va uint64) uint64 { return (va - l.VirtBase) >> 12 }

// GPA returns the guest-physical address of a virtual address in the layout.
func (l *Layout) GPA(va uint64) uint64 { return va - l.VirtBase }

// ErrSupervisorMode refuses a kernel that declares XENFEAT_supervisor_mode_kernel
// (required or supported): such a kernel expects to run in ring 0, which Xen
// never offers a 64-bit PV guest. It wraps ErrBadImage.
var ErrSupervisorMode = fmt.Errorf("%w: kernel declares feature 'supervisor_mode_kernel' (a ring-0 PV kernel), which Xen never offers 64-bit PV guests", ErrBadImage)

// Build loads the kernel into mem and writes the start-of-day pages for
// Xen's ring-3 PV model, following xc_dom's order: kernel, P2M list,
// start_info, xenstore page, console page, bootstrap page tables, then one
// boot stack page, all 4 KiB aligned; the region ends on a 4 MiB boundary
// at least 512 KiB after the stack. The bootstrap tables are xc_dom's: 4
// KiB pages holding machine frames, with the builder's flags (the
// hypervisor validates and adjusts them when it pins the L4), mapping only
// the start-of-day region, the tables' own frames read-only. A kernel that
// declares supervisor_mode_kernel is refused (ErrSupervisorMode).
func (k *Kernel) Build(mem *machine.Memory, p Params) (*Layout, error) {
	if k.Supports(xenabi.XenfeatSupervisorModeKernel) {
		return nil, ErrSupervisorMode
	}
	nrPages := p.Frames.NrPages
	memSize := nrPages * page
	if memSize%large != 0 {
		return nil, fmt.Errorf("memory size %d KiB is not a multiple of 2 MiB", memSize>>10)
	}
	if memSize > MaxMemory {
		return nil, fmt.Errorf("memory size %d MiB exceeds the %d MiB the boot page tables map", memSize>>20, MaxMemory>>20)
	}
	if len(p.Cmdline) >= xenabi.MaxGuestCmdline {
		return nil, fmt.Errorf("command line is %d bytes; at most %d fit in start_info", len(p.Cmdline), xenabi.MaxGuestCmdline-1)
	}
	n := &k.Notes
	l := &Layout{
		VirtBase: n.VirtBase, KernelStart: k.VirtStart, KernelEnd: k.VirtEnd,
		Entry: n.Entry, HypercallPage: n.HypercallPage,
	}
	// Allocate the start-of-day pages after the kernel.
	next := roundUp(k.VirtEnd, page)
	alloc := func(pages uint64) uint64 {
		va := next
		next += pages * page
		return va
	}
	l.P2MFrames = roundUp(nrPages*8, page) / page
	l.P2M = alloc(l.P2MFrames)
	l.StartInfo = alloc(1)
	l.Store = alloc(1)
	l.Console = alloc(1)
	// xc_dom's count_pgtables loop: the tables must map the region that
	// holds them, the stack and 512 KiB after.
	start := next
	for l.PTFrames = 1; ; {
		next = start
		l.PageTables = alloc(l.PTFrames)
		stack := alloc(1)
		l.StackTop = stack + page
		l.End = roundUp(l.StackTop+bootPad, regionAl)
		n := ptCount(l.VirtBase, l.End)
		if n == l.PTFrames {
			break
		}
		l.PTFrames = n
	}
	l.L4MFN, _ = p.Frames.MFN(l.PFN(l.PageTables))

	if l.End-l.VirtBase > memSize {
		return nil, fmt.Errorf("memory too small: the image and its start-of-day pages need %d MiB, the domain has %d MiB",
			(l.End-l.VirtBase+(1<<20)-1)>>20, memSize>>20)
	}
	for i, s := range k.Segments {
		if s.Virt+s.MemSize-l.VirtBase > memSize {
			return nil, fmt.Errorf("%w: segment %d at %#x-%#x lies outside guest memory (%d MiB)",
				ErrBadImage, i, s.Virt, s.Virt+s.MemSize, memSize>>20)
		}
		dst, err := mem.Slice(l.GPA(s.Virt), s.MemSize)
		if err != nil {
			return nil, fmt.Errorf("load segment %d: %w", i, err)
		}
		clear(dst[copy(dst, s.Data):])
	}
	if err := l.writeP2M(mem, p.Frames); err != nil {
		return nil, err
	}
	if err := l.writeTables(mem, p.Frames); err != nil {
		return nil, err
	}
	for _, va := range []uint64{l.Store, l.Console} {
		pg, err := mem.Page(l.GPA(va))
		if err != nil {
			return nil, err
		}
		clear(pg)
	}
	if err := l.writeStartInfo(mem, p); err != nil {
		return nil, err
	}
	return l, nil
}

func roundUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

func (l *Layout) writeP2M(mem *machine.Memory, frames physmap.Map) error {
	b, err := mem.Slice(l.GPA(l.P2M), l.P2MFrames*page)
	if err != nil {
		return fmt.Errorf("P2M list: %w", err)
	}
	clear(b)
	for pfn := uint64(0); pfn < frames.NrPages; pfn++ {
		mfn, _ := frames.MFN(pfn)
		putU64(b[pfn*8:], mfn)
	}
	return nil
}

// ptCount is the number of 4-level page-table frames mapping [start, end)
// with 4 KiB pages: one L4, and an L3, L2 and L1 per 512 GiB, 1 GiB and
// 2 MiB of the range touched.
func ptCount(start, end uint64) uint64 {
	n := uint64(1)
	for _, shift := range []uint{39, 30, 21} {
		n += (end-1)>>shift - start>>shift + 1
	}
	return n
}

// writeTables writes the bootstrap tables as xc_dom's setup_pgtables_pv does: an L4, then the L3s, L2s and L1s, with
// machine frames; upper levels P|RW|A|D|U (0x67), L1 entries P|RW|A
// (0x23), and P|A (0x21) for the tables' own frames.
func (l *Layout) writeTables(mem *machine.Memory, frames physmap.Map) error {
	tables, err := mem.Slice(l.GPA(l.PageTables), l.PTFrames*page)
	if err != nil {
		return fmt.Errorf("page tables: %w", err)
	}
	clear(tables)
	mfnOf := func(va uint64) uint64 {
		m, _ := frames.MFN(l.PFN(va))
		return m
	}
	// Frames in order: L4, L3s, L2s, L1s.
	type level struct {
		shift uint
		first uint64 // index of its first table among the frames
	}
	start, end := l.VirtBase, l.End
	levels := []level{{39, 1}}
	levels = append(levels, level{30, levels[0].first + (end-1)>>39 - start>>39 + 1})
	levels = append(levels, level{21, levels[1].first + (end-1)>>30 - start>>30 + 1})
	tableVA := func(i uint64) uint64 { return l.PageTables + i*page }
	ptStart, ptEnd := l.PageTables, l.PageTables+l.PTFrames*page
	for va := start; va < end; va += page {
		parent := uint64(0) // the L4
		for _, lv := range levels {
			child := lv.first + va>>lv.shift - start>>lv.shift
			idx := (va >> lv.shift) & 511
			putU64(tables[parent*page+idx*8:], mfnOf(tableVA(child))<<12|0x67)
			parent = child
		}
		flags := uint64(0x23)
		if va >= ptStart && va < ptEnd {
			flags = 0x21
		}
		putU64(tables[parent*page+((va>>12)&511)*8:], mfnOf(va)<<12|flags)
	}
	return nil
}

func (l *Layout) writeStartInfo(mem *machine.Memory, p Params) error {
	pg, err := mem.Page(l.GPA(l.StartInfo))
	if err != nil {
		return fmt.Errorf("start_info: %w", err)
	}
	clear(pg)
	si := xenabi.View[xenabi.StartInfo](pg)
	copy(si.Magic[:], int8s("xen-3.0-x86_64"))
	si.Nr_pages = p.Frames.NrPages
	si.Shared_info = p.SharedInfoMFN << 12
	si.Flags = 0
	si.Store_mfn, _ = p.Frames.MFN(l.PFN(l.Store))
	si.Store_evtchn = p.StoreEvtchn
	conMFN, _ := p.Frames.MFN(l.PFN(l.Console))
	putU64(si.Console[0:], conMFN)
	putU32(si.Console[8:], p.ConsoleEvtchn)
	si.Pt_base = l.PageTables
	si.Nr_pt_frames = l.PTFrames
	si.Mfn_list = l.P2M
	copy(si.Cmd_line[:], int8s(p.Cmdline))
	si.First_p2m_pfn = l.PFN(l.P2M)
	si.Nr_p2m_frames = l.P2MFrames
	return nil
}

// BootRegs returns the boot vCPU's registers, as xc_dom's vcpu_x86_64 sets
// them for a 64-bit PV guest: RIP at the entry point, RSP at the top of the
// boot stack, RSI = start_info (virtual), RFLAGS.IF set. The special
// registers are the hypervisor's (xen.Domain.StartRing3).
func (l *Layout) BootRegs() kvm.Regs {
	return kvm.Regs{RIP: l.Entry, RSP: l.StackTop, RSI: l.StartInfo, RFLAGS: 0x202}
}

func putU64(b []byte, v uint64) { binary.LittleEndian.PutUint64(b, v) }

func putU32(b []byte, v uint32) { binary.LittleEndian.PutUint32(b, v) }

func int8s(s string) []int8 {
	out := make([]int8, len(s))
	for i := range s {
		out[i] = int8(s[i])
	}
	return out
}
