package xen

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/asm"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/physmap"
)

// The ring-3 PV model: Xen's x86-64 PV CPU model on a KVM vCPU. The guest
// kernel and its user mode both run at CPL 3 on Xen's flat selectors, with
// page tables that hold machine frames (the domain's RAM is aliased at
// MFN<<12, physmap.Map.MachineAddress, so the hardware walks them as they
// are). The VMM owns L4 slots 256-271 of every L4 the guest runs on: slot
// 256 maps the read-only M2P, slot 260 the VMM's descriptor tables, TSS,
// trampolines and stacks, slot 262 a supervisor-only window onto the
// domain's machine frames that the VMM's page-table writes go through.
// Every IDT gate leads to a trampoline that halts; the VMM identifies the
// vector by RIP, reads the hardware frame from its stack, and decides: a
// hypercall (syscall), an instruction to emulate, or an exception to bounce
// to the guest's trap table, as Xen does.

// Xen's flat selectors for a 64-bit PV guest (arch-x86/xen-x86_64.h) and
// its own, in the reserved GDT page (desc.c).
const (
	FlatKernelCS = 0xe033 // FLAT_RING3_CS64
	FlatKernelSS = 0xe02b // FLAT_RING3_SS64
	FlatUserCS32 = 0xe023 // FLAT_RING3_CS32
	xenCS        = 0xe008 // __HYPERVISOR_CS
	xenDS        = 0xe010 // __HYPERVISOR_DS32
	xenTSSSel    = 0xe040
	gdtLimit     = 0xefff // LAST_RESERVED_GDT_BYTE
	// FirstReservedGDTEntry is the first GDT entry Xen keeps for itself.
	FirstReservedGDTEntry = 7168
	gdtGuestFrames        = 14
)

// Virtual addresses in Xen's range (config.h, xen-x86_64.h).
const (
	// MachToPhysVirt is where the read-only M2P is mapped
	// (MACH2PHYS_VIRT_START).
	MachToPhysVirt    = 0xffff800000000000
	machToPhysVirtEnd = 0xffff804000000000
	hypervisorVirtEnd = 0xffff880000000000
	perDomainVirt     = 0xffff820000000000 // slot 260: GDT_VIRT_START
	vmmTextVirt       = perDomainVirt + 1<<30
	directMapVirt     = 0xffff830000000000 // slot 262
	firstXenSlot      = 256
	lastXenSlot       = 271
	gdtVCPUShift      = 17 // 128 KiB of GDT area per vCPU
	// MaxPVVCPUs bounds the vCPUs of a ring-3 domain: one L1 table maps
	// their GDT areas.
	MaxPVVCPUs = 16
)

// Page-table entry bits.
const (
	pteP     = 1 << 0
	pteRW    = 1 << 1
	pteU     = 1 << 2
	ptePWT   = 1 << 3
	ptePCD   = 1 << 4
	pteA     = 1 << 5
	pteD     = 1 << 6
	ptePS    = 1 << 7 // PAT in an L1 entry
	pteG     = 1 << 8
	pteNX    = 1 << 63
	pteGuest = 1 << 52 // _PAGE_GUEST_KERNEL
	pteAddr  = 0x000f_ffff_ffff_f000
)

// Per-vCPU VMM pages, in the order they are allocated.
const (
	tssPages  = 3 // 104 bytes, the 8 KiB I/O bitmap and its end byte
	listPages = 8 // the page-table write list
	tssSize   = 104 + 8192 + 1
)

// pvDomain is the ring-3 model's state for a domain.
type pvDomain struct {
	d      *Domain
	frames physmap.Map
	area   []byte // host view of the VMM area
	npages uint64

	l4M2P, l4VMM, l4Direct uint64 // the entries of slots 256, 260, 262
	m2p                    []byte // the M2P entries of the domain's RAM frames
	m2pShared              bool   // m2p was mapped from m2pTemplate, not written
	zeroPage               uint64 // GPA of a page of zeros
	l1GDT                  uint64 // GPA of the L1 table mapping the GDT areas

	mu       sync.Mutex // page types, vm_assist
	pages    pageInfos
	vmassist uint64
	gnt      grantTable
	res      reservation // frames given back with decrease_reservation

	cpus []*pvCPU
	gdb  gdbState // an attached debugger (pv_gdb.go)

	// syscallFaults: on this host syscall stays at CPL 3 and arrives as
	// the #PF of fetching LSTAR's trampoline (see lstarFetch).
	syscallFaults bool
}

// hostSyscallFaults reports whether the host's KVM runs the guest's CPL-3
// code natively in host user mode (PVM, the kvm_pvm module), where a
// syscall reaches LSTAR at CPL 3.
func hostSyscallFaults() bool {
	_, err := os.Stat("/sys/module/kvm_pvm")
	return err == nil
}

// pvCPU is the model's per-vCPU state: what Xen keeps in struct pv_vcpu.
type pvCPU struct {
	id     int
	kernel bool   // guest kernel mode (TF_kernel_mode)
	kL4    uint64 // guest_table: kernel L4 MFN
	uL4    uint64 // guest_table_user: user L4 MFN, 0 when none

	traps                 [256]trapInfo
	event, failsafe       uint64
	syscall, syscall32    callback
	sysenter              callback
	failsafeMask          bool
	kernelSS              uint16
	kernelSP              uint64
	gdtFrames             []uint64
	gsInactive            uint64 // the GS base of the other mode
	ts                    bool   // virtual CR0.TS
	cr2                   uint64
	cr4                   uint64 // virtual CR4 bits the guest set
	iopl                  uint8
	ioBitmap              uint64 // PHYSDEVOP_set_iobitmap
	ioBitmapPorts         uint32
	dr                    [8]uint64
	drLoaded              bool // breakpoints are in the vCPU's debug registers
	inSyscall             bool // the hypercall in flight came by syscall
	inMulticall           bool
	ldtBase, ldtEnts      uint64 // MMUEXT_SET_LDT
	nmiMasked             bool
	tssGPA, stackGPA      uint64
	gdtGPA, listGPA       uint64
	tssVA, stackTop       uint64
	gdtVA, listVA         uint64
	trampVA, idtVA, flush uint64
	lstar                 uint64

	// Page-table writes waiting to be made by the guest itself (see
	// flushPT), and the guest state to return to after they are made.
	ptq    []ptWrite
	ptqIdx map[uint64]int // VA to its write's index in ptq, for coalescing
	saved  *savedState
	// Register state to bring in line with the model before the next
	// entry, from the model's state at that time (so that any number of
	// requests costs one flag): CR3 from the current mode's L4, CR0.TS
	// from ts.
	syncCR3, syncTS bool
	pending         []func(r *kvm.Regs, s *kvm.Sregs) error
	lastMsg         string // the last bounce, for crash reports
	// offline: the vCPU is down and its thread has stopped running it
	// (see pvDomain.offline); its own thread's.
	offline bool
	// flushWaits: TLB flushes this vCPU asked of others, to wait for
	// before it enters the guest again (waitFlushes).
	flushWaits []flushWait
	// crashed is the guest's context at the crash that ended the vCPU on
	// a trampoline, for VCPUEnded to put in the report.
	crashed atomic.Pointer[machine.GuestContext]
}

type trapInfo struct {
	flags uint8
	cs    uint16
	addr  uint64
}

type callback struct {
	addr uint64
	mask bool
}

type ptWrite struct{ va, val uint64 }

type savedState struct {
	regs  kvm.Regs
	sregs kvm.Sregs
}

// VMM area layout: frame indices, fixed part.
const (
	fL3M2P = iota
	fInvL2
	fInvL1
	fInvPage
	fDomL2
	fL3VMM
	fL2GDT
	fL1GDT
	fL2VMM
	fL1VMM
	fZero
	fIDT
	fTramp
	fL3Direct
	fL2Direct // 4 of them: the first 4 GiB of frame offsets
	fFixed    = fL2Direct + 4
)

// Offsets in the VMM text L1: IDT, trampolines, then per vCPU.
const (
	vmmIDT = iota
	vmmTramp
	vmmPerCPU
	// Per vCPU: TSS, stack, reserved GDT page, write list.
	vmmCPUStride = tssPages + 2 + listPages
	flushTramp   = 256 * asm.TrampolineSize // the write loop, after the vectors
	// syscallTramp is LSTAR's target, after the write loop.
	syscallTramp = flushTramp + 64
)

func ceilDiv(a, b uint64) uint64 { return (a + b - 1) / b }

// m2pGeometry returns the number of M2P L1 tables and data pages the
// domain's RAM needs.
func m2pGeometry(nr uint64) (l1s, data uint64) {
	return ceilDiv(nr*8, 2<<20), ceilDiv(nr*8, machine.PageSize)
}

// newPV adds the ring-3 model's memory to machine m (before Start): the
// aliases of RAM and the Xen window at machine addresses, and the VMM
// area with its page tables, M2P, descriptor tables and trampolines.
func newPV(d *Domain, m *machine.Machine, frames physmap.Map, ncpu int) (*pvDomain, error) {
	if ncpu > MaxPVVCPUs {
		return nil, fmt.Errorf("%d vCPUs: the ring-3 model supports %d", ncpu, MaxPVVCPUs)
	}
	ma := frames.MachineAddress()
	if err := m.AddAlias("machine-ram", ma, "ram", 0, frames.NrPages*machine.PageSize); err != nil {
		return nil, err
	}
	if err := m.AddAlias("machine-xen", ma+physmap.XenWindow, "xen", 0, physmap.XenWindowPages*machine.PageSize); err != nil {
		return nil, err
	}
	l1s, data := m2pGeometry(frames.NrPages)
	npages := fFixed + l1s + data + uint64(ncpu)*vmmCPUStride
	if npages > physmap.VMMAreaPages {
		return nil, fmt.Errorf("the VMM area needs %d pages, more than %d", npages, physmap.VMMAreaPages)
	}
	area, err := m.AddRegion("vmm", physmap.VMMArea, npages*machine.PageSize)
	if err != nil {
		return nil, err
	}
	p := &pvDomain{d: d, frames: frames, area: area, npages: npages, pages: newPageInfos(frames), syscallFaults: hostSyscallFaults()}
	// The M2P's entries start as the process's shared copy (m2pTemplate),
	// mapped copy-on-write, rather than written into fresh memory for every
	// configured frame of every domain created. Building the copy costs
	// about what writing one domain's entries does, so the process's first
	// domain (the only one of a runvm owner) writes its own, and the copy
	// is made for the second.
	if m2pDomains.Add(1) > 1 {
		if err := m.MapTemplate("vmm", (fFixed+l1s)*machine.PageSize, data*machine.PageSize, m2pTemplate); err != nil {
			d.log.Warn("the M2P is written for this domain instead of mapped from the shared copy", "dom", d.id, "err", err)
		} else {
			p.m2pShared = true
		}
	}
	p.build(ncpu, l1s, data)
	for _, v := range m.VCPUs() {
		v.Settle = p.vcpuSettle // see settle: a vCPU parks only in guest code
	}
	return p, nil
}

// m2pTemplate is the M2P's data as every domain's starts: entry k is k,
// the PFN of the domain's machine frame Base+k (the entries are indexed by
// PFN, so the content is the same for every domain). Each domain maps it
// copy-on-write (machine.MapTemplate): MMU_MACHPHYS_UPDATE and the VMM's
// own writes make private copies of the pages they change.
var m2pTemplate = machine.NewTemplate("m2p", fillM2P)

// m2pDomains counts the domains newPV has made in this process.
var m2pDomains atomic.Uint64

// fillM2P writes the initial M2P entries at byte offset off (a multiple
// of 8) of the M2P's data into b: entry k is k.
func fillM2P(b []byte, off uint64) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], (off+uint64(i))/8)
	}
}

func (p *pvDomain) gpa(frame uint64) uint64 { return physmap.VMMArea + frame*machine.PageSize }

func (p *pvDomain) page(frame uint64) []byte {
	return p.area[frame*machine.PageSize : (frame+1)*machine.PageSize]
}

func put64(b []byte, i int, v uint64) { binary.LittleEndian.PutUint64(b[i*8:], v) }

func (p *pvDomain) build(ncpu int, l1s, data uint64) {
	const tbl = pteP | pteRW | pteA | pteD // a VMM table entry, supervisor
	const ro = pteP | pteA | pteU          // the M2P's, user-readable
	// The M2P: every MFN outside the domain's RAM reads as all ones
	// (INVALID_M2P_ENTRY) through one chain of shared tables; the
	// domain's own range has its own L1 tables and data pages.
	for i := range p.page(fInvPage) {
		p.page(fInvPage)[i] = 0xff
	}
	for i := 0; i < 512; i++ {
		put64(p.page(fInvL1), i, p.gpa(fInvPage)|ro|pteNX)
		put64(p.page(fInvL2), i, p.gpa(fInvL1)|ro)
		put64(p.page(fDomL2), i, p.gpa(fInvL1)|ro)
	}
	off := p.frames.Base * 8 // byte offset of the domain's entries
	for i := 0; i < 256; i++ {
		put64(p.page(fL3M2P), i, p.gpa(fInvL2)|ro)
	}
	put64(p.page(fL3M2P), int(off>>30), p.gpa(fDomL2)|ro)
	firstL1, firstData := uint64(fFixed), uint64(fFixed)+l1s
	for k := uint64(0); k < l1s; k++ {
		put64(p.page(fDomL2), int((off>>21)&511+k), p.gpa(firstL1+k)|ro)
		for i := uint64(0); i < 512; i++ {
			e := p.gpa(fInvPage)
			if n := k*512 + i; n < data {
				e = p.gpa(firstData + n)
			}
			put64(p.page(firstL1+k), int(i), e|ro|pteNX)
		}
	}
	p.m2p = p.area[firstData*machine.PageSize : (firstData+data)*machine.PageSize]
	// Each byte is written once: the domain's entries (unless they are
	// the shared copy already), then the last page's tail invalid. (The
	// area is fresh memory: every first touch is a page fault, a few
	// microseconds on a nested host; the shared copy's pages are mapped
	// without one each.)
	if !p.m2pShared {
		fillM2P(p.m2p[:p.frames.NrPages*8], 0)
	}
	for i := p.frames.NrPages * 8; i < uint64(len(p.m2p)); i++ {
		p.m2p[i] = 0xff
	}
	p.l4M2P = p.gpa(fL3M2P) | pteP | pteU | pteA | pteNX

	// Slot 260: the per-vCPU GDT areas and the VMM's text and data.
	put64(p.page(fL3VMM), 0, p.gpa(fL2GDT)|tbl)
	put64(p.page(fL3VMM), 1, p.gpa(fL2VMM)|tbl)
	put64(p.page(fL2GDT), 0, p.gpa(fL1GDT)|tbl)
	put64(p.page(fL2VMM), 0, p.gpa(fL1VMM)|tbl)
	p.l4VMM = p.gpa(fL3VMM) | tbl
	p.zeroPage, p.l1GDT = p.gpa(fZero), p.gpa(fL1GDT)
	put64(p.page(fL1VMM), vmmIDT, p.gpa(fIDT)|pteP|pteA|pteNX)
	put64(p.page(fL1VMM), vmmTramp, p.gpa(fTramp)|pteP|pteA)
	tr := p.page(fTramp)
	for i := range tr {
		tr[i] = 0xCC
	}
	for v := 0; v < 256; v++ {
		copy(tr[v*asm.TrampolineSize:], asm.Trampoline())
	}
	copy(tr[flushTramp:], flushLoop)
	copy(tr[syscallTramp:], asm.Trampoline())
	trampVA := uint64(vmmTextVirt + vmmTramp*machine.PageSize)
	idt := p.page(fIDT)
	for v := 0; v < 256; v++ {
		dpl := uint64(0)
		if v == 3 || v == 4 || v == 0x80 { // int3, into, int $0x80 (gen-idt.h)
			dpl = 3
		}
		h := trampVA + uint64(v)*asm.TrampolineSize
		put64(idt, 2*v, h&0xffff|xenCS<<16|1<<32|(0x8e|dpl<<5)<<40|(h>>16&0xffff)<<48)
		put64(idt, 2*v+1, h>>32)
	}
	// Slot 262: every frame of the domain (RAM and the Xen window, by
	// offset from its first machine frame) and the VMM area, supervisor
	// read-write, for the guest-side page-table writes.
	const big = pteP | pteRW | pteA | pteD | ptePS | pteNX
	ma := p.frames.MachineAddress()
	for g := 0; g < 4; g++ {
		put64(p.page(fL3Direct), g, p.gpa(fL2Direct+uint64(g))|tbl)
	}
	for off := uint64(0); off < p.frames.NrPages*machine.PageSize; off += 2 << 20 {
		put64(p.page(fL2Direct+off>>30), int(off>>21&511), (ma+off)|big)
	}
	put64(p.page(fL2Direct+3), int(physmap.XenWindow>>21&511), (ma+physmap.XenWindow)|big)
	for off := uint64(0); off < p.npages*machine.PageSize; off += 2 << 20 {
		a := physmap.VMMArea + off
		put64(p.page(fL2Direct+a>>30), int(a>>21&511), a|big)
	}
	p.l4Direct = p.gpa(fL3Direct) | tbl

	for v := 0; v < ncpu; v++ {
		p.cpus = append(p.cpus, p.buildCPU(v, l1s+data))
	}
}

// flushLoop makes the page-table writes listed at %rsi ({VA, value}
// pairs up to a zero VA), reloads %cr3 to flush the TLB, and halts:
//
//	 0: mov (%rsi), %rdi; test %rdi, %rdi; jz 21
//	 8: mov 8(%rsi), %rax; mov %rax, (%rdi); add $16, %rsi; jmp 0
//	21: mov %cr3, %rax; mov %rax, %cr3
//	27: hlt; jmp 27
var flushLoop = []byte{
	0x48, 0x8b, 0x3e, 0x48, 0x85, 0xff, 0x74, 0x0d,
	0x48, 0x8b, 0x46, 0x08, 0x48, 0x89, 0x07, 0x48, 0x83, 0xc6, 0x10, 0xeb, 0xeb,
	0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8, 0xf4, 0xeb, 0xfd,
}

// flushHalt is the offset in flushLoop just past its hlt.
const flushHalt = 28

func (p *pvDomain) buildCPU(v int, m2pFrames uint64) *pvCPU {
	base := uint64(fFixed) + m2pFrames + uint64(v)*vmmCPUStride
	l1 := p.page(fL1VMM)
	slot := uint64(vmmPerCPU + v*vmmCPUStride)
	const rw = pteP | pteRW | pteA | pteD | pteNX
	for i := uint64(0); i < vmmCPUStride; i++ {
		put64(l1, int(slot+i), p.gpa(base+i)|rw)
	}
	c := &pvCPU{
		id: v, kernel: true, kernelSS: FlatKernelSS,
		tssGPA: p.gpa(base), stackGPA: p.gpa(base + tssPages),
		gdtGPA: p.gpa(base + tssPages + 1), listGPA: p.gpa(base + tssPages + 2),
		tssVA:   vmmTextVirt + slot*machine.PageSize,
		trampVA: vmmTextVirt + vmmTramp*machine.PageSize,
		idtVA:   vmmTextVirt + vmmIDT*machine.PageSize,
		gdtVA:   perDomainVirt + uint64(v)<<gdtVCPUShift,
		dr:      [8]uint64{6: 0xffff0ff0, 7: 0x400},
	}
	c.stackTop = c.tssVA + (tssPages+1)*machine.PageSize
	c.listVA = c.stackTop + machine.PageSize
	c.flush = c.trampVA + flushTramp
	c.lstar = c.trampVA + syscallTramp
	tss := p.area[(base)*machine.PageSize : (base)*machine.PageSize+tssSize]
	binary.LittleEndian.PutUint64(tss[4:], c.stackTop)  // RSP0
	binary.LittleEndian.PutUint64(tss[36:], c.stackTop) // IST1
	binary.LittleEndian.PutUint16(tss[102:], 104)       // I/O bitmap offset
	bm := tss[104:]
	for i := range bm {
		bm[i] = 0xff
	}
	// A 32-bit IN checks the bits of all four ports it spans: the
	// hypercall port and the three after it (the null port among them).
	for port := HypercallPort; port < HypercallPort+4; port++ {
		bm[port/8] &^= 1 << (port % 8)
	}
	// The reserved GDT page (desc.c's boot_gdt, with this vCPU's TSS).
	g := p.area[c.gdtGPA-physmap.VMMArea:][:machine.PageSize]
	put64(g, 1, 0x00af9b000000ffff) // 0xe008 ring-0 64-bit code
	put64(g, 2, 0x00cf93000000ffff) // 0xe010 ring-0 data
	put64(g, 4, 0x00cffb000000ffff) // 0xe023 FLAT_RING3_CS32
	put64(g, 5, 0x00cff3000000ffff) // 0xe02b FLAT_RING3_DS32/SS64
	put64(g, 6, 0x00affb000000ffff) // 0xe033 FLAT_RING3_CS64
	lim, b := uint64(tssSize-1), c.tssVA
	put64(g, 8, lim&0xffff|(b&0xffffff)<<16|0x8b<<40|(lim>>16&0xf)<<48|(b>>24&0xff)<<56)
	put64(g, 9, b>>32)
	put64(g, 12, 0x0000910000000000|uint64(v)) // lsl gives the CPU number
	gl1 := p.page(fL1GDT)
	for i := 0; i < gdtGuestFrames; i++ {
		put64(gl1, v*32+i, p.zeroPage|pteP|pteA|pteNX)
	}
	put64(gl1, v*32+gdtGuestFrames, c.gdtGPA|rw)
	return c
}

// installSlots writes the VMM's entries into L4 slots 256-271 of the
// table whose host view is l4, as init_xen_l4_slots does: the read-only
// M2P's slot only with VMASST_TYPE_m2p_strict (without it a new L4 gets
// the slot when it is first used as a kernel L4: kernelL4). p.mu held.
func (p *pvDomain) installSlots(l4 []byte) {
	for i := firstXenSlot; i <= lastXenSlot; i++ {
		put64(l4, i, 0)
	}
	if p.m2pStrict() {
		put64(l4, 256, p.l4M2P)
	}
	put64(l4, 260, p.l4VMM)
	put64(l4, 262, p.l4Direct)
}

// m2pStrict reports whether the guest enabled VMASST_TYPE_m2p_strict.
// p.mu held.
func (p *pvDomain) m2pStrict() bool { return p.vmassist&(1<<vmassistM2PStrict) != 0 }

// setROMPT writes L4 table l4's read-only M2P slot (256): Xen's
// fill_ro_mpt when present, zap_ro_mpt when not. p.mu held.
func (p *pvDomain) setROMPT(c *pvCPU, l4 uint64, present bool) {
	t := p.table(l4)
	if t == nil {
		return
	}
	want := uint64(0)
	if present {
		want = p.l4M2P
	}
	if binary.LittleEndian.Uint64(t[256*8:]) != want {
		p.writePTE(c, l4<<12+256*8, want)
	}
}

// kernelL4 and userL4 are what Xen does to an L4 becoming a kernel or a
// user base pointer (new_guest_cr3, MMUEXT_NEW_USER_BASEPTR,
// arch_set_info_guest): without m2p_strict a kernel L4 gets the read-only
// M2P; with it a user L4 loses it, so guest user mode cannot read the
// M2P. p.mu held.
func (p *pvDomain) kernelL4(c *pvCPU, l4 uint64) {
	if !p.m2pStrict() {
		p.setROMPT(c, l4, true)
	}
}

func (p *pvDomain) userL4(c *pvCPU, l4 uint64) {
	if p.m2pStrict() {
		p.setROMPT(c, l4, false)
	}
}

// machineAddr returns the GPA of machine frame mfn's first byte, and
// whether the frame is the domain's (RAM or Xen window).
func (p *pvDomain) machineAddr(mfn uint64) (uint64, bool) {
	if _, ok := p.ram(mfn); ok || p.frames.IsXenFrame(mfn) {
		return mfn << 12, true
	}
	return 0, false
}

// directVA returns the slot-262 address of guest-physical gpa (a machine
// address of the domain, or the VMM area), through which the guest-side
// page-table writes go.
func (p *pvDomain) directVA(gpa uint64) (uint64, error) {
	ma := p.frames.MachineAddress()
	switch {
	case gpa >= physmap.VMMArea && gpa < physmap.VMMArea+p.npages*machine.PageSize:
		return directMapVirt + gpa, nil
	case gpa >= ma && gpa-ma < p.frames.NrPages*machine.PageSize,
		gpa >= ma+physmap.XenWindow && gpa-ma-physmap.XenWindow < physmap.XenWindowPages*machine.PageSize:
		return directMapVirt + gpa - ma, nil
	}
	return 0, fmt.Errorf("guest-physical %#x is not in the direct map", gpa)
}

// Ring3 reports whether the domain runs its kernel in ring 3 (Xen's PV
// model): every domain NewDomain makes does.
func (d *Domain) Ring3() bool { return d.pv != nil }

// StartRing3 makes the start-of-day state of vCPU v in the ring-3 model,
// as Xen's arch_set_info_guest does for the builder's context: the L4 at
// machine frame l4 is pinned (validated, with the VMM's slots written
// in) and becomes the kernel base pointer; the kernel stack is the boot
// stack; events are masked. It returns the special registers to load:
// FLAT_KERNEL_CS/SS, the VMM's GDT, IDT and TSS, CR3 = l4. regs.RFLAGS
// must be 0x202. Call it before the vCPU first runs.
func (d *Domain) StartRing3(v int, regs *kvm.Regs, l4 uint64) (kvm.Sregs, error) {
	p := d.pv
	if v != 0 {
		// Secondaries start down; the guest initialises them
		// (VCPUOP_initialise), as on Xen.
		return kvm.Sregs{}, fmt.Errorf("vCPU %d: only vCPU 0 has a start-of-day state", v)
	}
	c := p.cpus[v]
	p.mu.Lock()
	defer p.mu.Unlock()
	{
		if e := p.pin(c, l4, ptL4); e != 0 {
			return kvm.Sregs{}, fmt.Errorf("pin the boot L4 (mfn %#x): %s", l4, formatRet(e))
		}
		p.kernelL4(c, l4)
		c.ptq = nil // nothing runs yet: the host writes are enough
		if e := p.getType(c, l4, ptL4); e != 0 {
			return kvm.Sregs{}, fmt.Errorf("boot L4 as base pointer: %s", formatRet(e))
		}
	}
	c.kL4, c.kernel, c.kernelSP = l4, true, regs.RSP
	if d.m != nil {
		if err := d.setSyscallMSRs(v, c); err != nil {
			return kvm.Sregs{}, err
		}
	}
	return c.sregs(l4), nil
}

// sregs returns the special registers of the guest context with CR3 at
// L4 frame l4 and the flat kernel selectors.
func (c *pvCPU) sregs(l4 uint64) kvm.Sregs {
	null := kvm.Segment{Unusable: 1}
	return kvm.Sregs{
		CS: flatSeg(FlatKernelCS), SS: flatSeg(FlatKernelSS),
		DS: null, ES: null, FS: null, GS: null,
		TR:   kvm.Segment{Base: c.tssVA, Limit: tssSize - 1, Selector: xenTSSSel, Typ: 11, Present: 1},
		LDT:  kvm.Segment{Typ: 2, Unusable: 1},
		GDT:  kvm.Descriptor{Base: c.gdtVA, Limit: gdtLimit},
		IDT:  kvm.Descriptor{Base: c.idtVA, Limit: 256*16 - 1},
		CR0:  0x80050033, // PG AM WP NE ET MP PE
		CR3:  l4 << 12,
		CR4:  0x620 | c.cr4&cr4Real, // PAE OSFXSR OSXMMEXCPT, and the guest's
		EFER: 0xd01,                 // NXE LMA LME SCE
	}
}

// flatSeg returns the cached descriptor of one of Xen's flat selectors.
func flatSeg(sel uint16) kvm.Segment {
	s := kvm.Segment{Limit: 0xffffffff, Selector: sel, Present: 1, S: 1, G: 1, DPL: 3}
	switch sel &^ 3 {
	case FlatKernelCS &^ 3:
		s.Typ, s.L = 11, 1
	case FlatUserCS32 &^ 3:
		s.Typ, s.DB = 11, 1
	case xenCS:
		s.Typ, s.L, s.DPL = 11, 1, 0
	case xenDS:
		s.Typ, s.DB, s.DPL = 3, 1, 0
	default:
		s.Typ, s.DB = 3, 1
	}
	return s
}
