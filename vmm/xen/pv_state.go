package xen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync/atomic"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/physmap"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// A ring-3 domain's PV state as Xen's save and restore move it: the page
// types the hypervisor tracks (XEN_DOMCTL_getpageframeinfo3) and each
// vCPU's vcpu_guest_context (arch_get_info_guest, arch_set_info_guest).
// The toolstack canonicalises machine frames to PFNs in the stream and
// back; everything here is in the domain's own machine frames.

// PVTable is a frame the hypervisor holds as a page table.
type PVTable struct {
	MFN    uint64
	Level  int  // 1 to 4
	Pinned bool // MMUEXT_PIN_Ln_TABLE
}

// PVTables returns every frame of the domain that has a page-table type
// (a non-zero type count of L1 to L4), by MFN: what getpageframeinfo3
// reports as L1TAB to L4TAB, with LPINTAB for the pinned ones.
func (d *Domain) PVTables() ([]PVTable, error) {
	p := d.pv
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []PVTable
	for mfn, pi := range p.pages.all {
		if pi.count > 0 && pi.typ >= ptL1 && pi.typ <= ptL4 {
			out = append(out, PVTable{MFN: mfn, Level: level(pi.typ), Pinned: pi.pinned})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].MFN < out[j].MFN })
	return out, nil
}

// errBusy refuses the state of a vCPU caught between an exit and the
// guest (register changes or page-table writes still queued): only a
// vCPU parked in a hypercall's return path has a context to save.
var errBusy = errors.New("the vCPU has queued register changes or page-table writes")

// PVContext returns vCPU v's vcpu_guest_context as Xen's
// arch_get_info_guest fills it for a 64-bit PV vCPU, from the parked
// vCPU's registers: user_regs (with the virtual IOPL in rflags), the
// trap table, the event, failsafe and syscall callbacks (and their
// disables-events flags), kernel SS and SP, the GDT frames and entry
// count, the virtual CR0 (TS), CR2 and CR4, CR3 and CR1 as
// xen_pfn_to_cr3 of the kernel and user L4 MFNs, the debug registers,
// vm_assist, the FS and both GS bases, and VGCF_online|VGCF_in_kernel as
// the vCPU is. The LDT (not modelled) is empty. The FPU state is the
// vCPU's in KVM: the toolstack adds it (fpu_ctxt and VGCF_i387_valid, from
// machine.VCPU.FXSave) and loads it back on restore.
func (d *Domain) PVContext(v int, regs *kvm.Regs, s *kvm.Sregs) (xenabi.VCPUGuestContext, error) {
	var ctx xenabi.VCPUGuestContext
	p := d.pv
	if v < 0 || v >= len(p.cpus) {
		return ctx, fmt.Errorf("no vCPU %d", v)
	}
	c := p.cpus[v]
	if c.saved != nil || len(c.pending) > 0 || len(c.ptq) > 0 {
		return ctx, fmt.Errorf("vCPU %d: %w", v, errBusy)
	}
	ur := &ctx.User_regs
	ur.R15, ur.R14, ur.R13, ur.R12 = regs.R15, regs.R14, regs.R13, regs.R12
	ur.Rbp, ur.Rbx, ur.R11, ur.R10 = regs.RBP, regs.RBX, regs.R11, regs.R10
	ur.R9, ur.R8, ur.Rax, ur.Rcx = regs.R9, regs.R8, regs.RAX, regs.RCX
	ur.Rdx, ur.Rsi, ur.Rdi = regs.RDX, regs.RSI, regs.RDI
	ur.Rip, ur.Rsp = regs.RIP, regs.RSP
	ur.Rflags = regs.RFLAGS&^flagIOPL | uint64(c.iopl)<<12
	ur.Cs, ur.Ss = s.CS.Selector, s.SS.Selector
	ur.Ds, ur.Es, ur.Fs, ur.Gs = s.DS.Selector, s.ES.Selector, s.FS.Selector, s.GS.Selector
	ur.Saved_upcall_mask = uint8(atomic.LoadUint32(p.vcpuInfo(c)) >> 8)

	ctx.Flags = xenabi.VGCFOnline
	if c.kernel {
		ctx.Flags |= xenabi.VGCFInKernel
	}
	if c.failsafeMask {
		ctx.Flags |= xenabi.VGCFFailsafeDisablesEvents
	}
	if c.syscall.mask {
		ctx.Flags |= xenabi.VGCFSyscallDisablesEvents
	}
	for i, t := range c.traps {
		if t.addr != 0 {
			ctx.Trap_ctxt[i] = xenabi.TrapInfo{Vector: uint8(i), Flags: t.flags, Cs: t.cs, Address: t.addr}
		}
	}
	copy(ctx.Gdt_frames[:], c.gdtFrames)
	ctx.Gdt_ents = uint64(len(c.gdtFrames)) * 512
	ctx.Kernel_ss, ctx.Kernel_sp = uint64(c.kernelSS), c.kernelSP
	if c.ts {
		ctx.Ctrlreg[0] = 8 // X86_CR0_TS: the guest's virtual CR0 bits
	}
	if c.uL4 != 0 {
		ctx.Ctrlreg[1] = c.uL4 << 12
	}
	ctx.Ctrlreg[2] = c.cr2
	ctx.Ctrlreg[3] = c.kL4 << 12 // xen_pfn_to_cr3 for a 64-bit guest
	ctx.Ctrlreg[4] = c.cr4
	ctx.Debugreg = c.dr
	ctx.Event_callback_eip = c.event
	ctx.Failsafe_callback_eip = c.failsafe
	ctx.Syscall_callback_eip = c.syscall.addr
	p.mu.Lock()
	ctx.Vm_assist = p.vmassist
	p.mu.Unlock()
	ctx.Fs_base = s.FS.Base
	ctx.Gs_base_kernel, ctx.Gs_base_user = s.GS.Base, c.gsInactive
	if !c.kernel {
		ctx.Gs_base_kernel, ctx.Gs_base_user = c.gsInactive, s.GS.Base
	}
	return ctx, nil
}

// RestorePV gives a new domain's vCPU v, which has not run, the state a
// saved one had, as libxc's restore and Xen do it: every pinned table in
// pins is pinned again (MMUEXT_PIN_Ln_TABLE, pin_pagetables), which
// validates it and every table below it against this domain's frames and
// fills Xen's L4 slots; then the context is loaded as
// arch_set_info_guest loads it (vm_assist, the trap table, callbacks,
// kernel stack, GDT frames taken as descriptor pages, CR3 and CR1 taken
// as L4 base pointers, debug registers, segment bases) and the data
// selectors as load_segments loads them: one that would fault enters the
// failsafe callback (loadDataSegments). Machine frames in
// pins and ctx are this domain's (the toolstack localised them). It
// returns the registers to load; a table or context Xen would refuse is
// an error naming it, with Xen's errno.
func (d *Domain) RestorePV(v int, pins []PVTable, ctx *xenabi.VCPUGuestContext) (kvm.Regs, kvm.Sregs, error) {
	p := d.pv
	if v < 0 || v >= len(p.cpus) {
		return kvm.Regs{}, kvm.Sregs{}, fmt.Errorf("no vCPU %d", v)
	}
	c := p.cpus[v]
	if ctx.Flags&xenabi.VGCFOnline == 0 {
		return kvm.Regs{}, kvm.Sregs{}, fmt.Errorf("vCPU %d is not online (flags %#x)", v, ctx.Flags)
	}
	if err := p.setInfoGuest(c, pins, ctx); err != nil {
		return kvm.Regs{}, kvm.Sregs{}, err
	}
	regs, s, err := p.contextRegs(c, ctx)
	if err != nil {
		return kvm.Regs{}, kvm.Sregs{}, err
	}
	p.setMask(c, ctx.User_regs.Saved_upcall_mask)
	ur := &ctx.User_regs
	if err := p.loadDataSegments(c, &regs, &s, [4]uint16{ur.Ds, ur.Es, ur.Fs, ur.Gs}); err != nil {
		return kvm.Regs{}, kvm.Sregs{}, err
	}
	if d.m != nil {
		if err := d.setSyscallMSRs(v, c); err != nil {
			return kvm.Regs{}, kvm.Sregs{}, err
		}
	}
	c.ptq, c.pending, c.saved, c.lastMsg = nil, nil, nil, ""
	d.restoredUp(v)
	return regs, s, nil
}

// setInfoGuest loads ctx into vCPU c's model as Xen's
// arch_set_info_guest does for a 64-bit PV vCPU: Xen's checks first
// (canonical addresses, the LDT, the GDT size, a user L4 for a vCPU not
// in kernel mode, and the vm_assist types, which only vCPU 0's context
// sets), then every table in pins is pinned and the base pointers and
// GDT frames are taken, then the trap table, callbacks, kernel stack and
// virtual control and debug registers. Errors wrap Xen's errno (a
// xenErr). p.mu must not be held.
func (p *pvDomain) setInfoGuest(c *pvCPU, pins []PVTable, ctx *xenabi.VCPUGuestContext) error {
	einval := xenErr(xenabi.EINVAL)
	ur := &ctx.User_regs
	for _, a := range []struct {
		what string
		va   uint64
	}{
		{"rip", ur.Rip}, {"rsp", ur.Rsp}, {"kernel_sp", ctx.Kernel_sp}, {"ldt_base", ctx.Ldt_base},
		{"fs_base", ctx.Fs_base}, {"gs_base_kernel", ctx.Gs_base_kernel}, {"gs_base_user", ctx.Gs_base_user},
		{"event_callback_eip", ctx.Event_callback_eip}, {"failsafe_callback_eip", ctx.Failsafe_callback_eip},
		{"syscall_callback_eip", ctx.Syscall_callback_eip},
	} {
		if !canonical(a.va) {
			return fmt.Errorf("%s %#x is not canonical: %w", a.what, a.va, einval)
		}
	}
	for i, t := range ctx.Trap_ctxt {
		if !canonical(t.Address) {
			return fmt.Errorf("trap %d handler %#x is not canonical: %w", i, t.Address, einval)
		}
	}
	if ctx.Ldt_base&0xfff != 0 || ctx.Ldt_ents > 8192 {
		return fmt.Errorf("LDT at %#x with %d entries: %w", ctx.Ldt_base, ctx.Ldt_ents, einval)
	}
	if ctx.Flags&xenabi.VGCFInKernel == 0 && ctx.Ctrlreg[1] == 0 {
		return fmt.Errorf("a vCPU in user mode without a user L4 (cr1 0): %w", einval)
	}
	if c.id == 0 && ctx.Vm_assist&^vmassistPV64 != 0 {
		return fmt.Errorf("vm_assist %#x: types a 64-bit PV guest may not set: %w", ctx.Vm_assist, einval)
	}
	p.mu.Lock()
	err := p.restoreTables(c, pins, ctx)
	p.mu.Unlock()
	if err != nil {
		return err
	}
	c.traps = [256]trapInfo{}
	for i, t := range ctx.Trap_ctxt {
		if t.Address != 0 {
			c.traps[i] = trapInfo{flags: t.Flags, cs: t.Cs | 3, addr: t.Address}
		}
	}
	for _, cb := range []struct {
		typ   uint16
		flags uint16
		addr  uint64
	}{
		{cbEvent, 0, ctx.Event_callback_eip},
		{cbFailsafe, boolFlag(ctx.Flags&xenabi.VGCFFailsafeDisablesEvents != 0), ctx.Failsafe_callback_eip},
		{cbSyscall, boolFlag(ctx.Flags&xenabi.VGCFSyscallDisablesEvents != 0), ctx.Syscall_callback_eip},
	} {
		if e := p.registerCallback(c, cb.typ, cb.flags, cb.addr); e != 0 {
			return fmt.Errorf("callback type %d at %#x: %w", cb.typ, cb.addr, xenErr(-e))
		}
	}
	c.kernel = ctx.Flags&xenabi.VGCFInKernel != 0
	c.kernelSS, c.kernelSP = uint16(ctx.Kernel_ss)|3, ctx.Kernel_sp
	c.ts = ctx.Ctrlreg[0]&8 != 0
	c.cr2, c.cr4 = ctx.Ctrlreg[2], ctx.Ctrlreg[4]
	c.dr = ctx.Debugreg
	c.iopl = uint8(ur.Rflags >> 12 & 3)
	return nil
}

// contextRegs returns the registers that run vCPU c (whose model
// setInfoGuest loaded from ctx) at ctx's user_regs: the general
// registers, and the selectors loaded through c's descriptor tables, as
// the first return to the guest loads them.
func (p *pvDomain) contextRegs(c *pvCPU, ctx *xenabi.VCPUGuestContext) (kvm.Regs, kvm.Sregs, error) {
	ur := &ctx.User_regs
	regs := kvm.Regs{
		RAX: ur.Rax, RBX: ur.Rbx, RCX: ur.Rcx, RDX: ur.Rdx, RSI: ur.Rsi, RDI: ur.Rdi, RSP: ur.Rsp, RBP: ur.Rbp,
		R8: ur.R8, R9: ur.R9, R10: ur.R10, R11: ur.R11, R12: ur.R12, R13: ur.R13, R14: ur.R14, R15: ur.R15,
		RIP: ur.Rip, RFLAGS: ur.Rflags&flagsArch&^(flagIOPL|flagVM) | flagIF | 2,
	}
	l4 := c.kL4
	if !c.kernel {
		l4 = c.uL4
	}
	s := c.sregs(l4)
	var ok bool
	if s.CS, ok = p.segment(c, ur.Cs|3); !ok {
		return kvm.Regs{}, kvm.Sregs{}, fmt.Errorf("code selector %#x cannot be loaded", ur.Cs)
	}
	if s.SS, ok = p.segment(c, ur.Ss|3); !ok {
		return kvm.Regs{}, kvm.Sregs{}, fmt.Errorf("stack selector %#x cannot be loaded", ur.Ss)
	}
	if c.ts {
		s.CR0 |= 8
	}
	s.FS.Base = ctx.Fs_base
	s.GS.Base, c.gsInactive = ctx.Gs_base_kernel, ctx.Gs_base_user
	if !c.kernel {
		s.GS.Base, c.gsInactive = ctx.Gs_base_user, ctx.Gs_base_kernel
	}
	return regs, s, nil
}

func boolFlag(b bool) uint16 {
	if b {
		return cbMaskEvents
	}
	return 0
}

// restoreTables pins the saved pinned tables, then takes the base
// pointers and GDT frames of ctx (arch_set_info_guest's
// get_page_type(PGT_root_page_table) and set_gdt). p.mu held.
func (p *pvDomain) restoreTables(c *pvCPU, pins []PVTable, ctx *xenabi.VCPUGuestContext) error {
	if c.id == 0 {
		p.vmassist = ctx.Vm_assist // only vCPU 0's context sets it
	}
	for _, t := range pins {
		if t.Level < 1 || t.Level > 4 {
			return fmt.Errorf("pin of mfn %#x at level %d", t.MFN, t.Level)
		}
		if e := p.pin(c, t.MFN, ptL1+pageType(t.Level-1)); e != 0 {
			return fmt.Errorf("re-pinning the L%d table at mfn %#x: %w", t.Level, t.MFN, xenErr(-e))
		}
	}
	if ctx.Gdt_ents > FirstReservedGDTEntry {
		return fmt.Errorf("%d GDT entries, more than %d: %w", ctx.Gdt_ents, FirstReservedGDTEntry, xenErr(xenabi.EINVAL))
	}
	frames := make([]uint64, (ctx.Gdt_ents+511)/512)
	copy(frames, ctx.Gdt_frames[:])
	for i, f := range frames {
		if e := p.getType(c, f, ptSegDesc); e != 0 {
			return fmt.Errorf("GDT frame %d (mfn %#x): %w", i, f, xenErr(-e))
		}
	}
	c.gdtFrames = frames
	for i := 0; i < gdtGuestFrames; i++ {
		e := p.zeroPage | pteP | pteA | pteNX
		if i < len(frames) {
			e = frames[i]<<12 | pteP | pteRW | pteA | pteD | pteNX
		}
		p.writePTE(nil, p.l1GDT+uint64(8*(c.id*32+i)), e)
	}
	kL4 := ctx.Ctrlreg[3] >> 12
	if e := p.getType(c, kL4, ptL4); e != 0 {
		return fmt.Errorf("cr3 (mfn %#x) as an L4 base pointer: %w", kL4, xenErr(-e))
	}
	c.kL4 = kL4
	p.kernelL4(c, kL4)
	if cr1 := ctx.Ctrlreg[1]; cr1 != 0 {
		uL4 := cr1 >> 12
		if e := p.getType(c, uL4, ptL4); e != 0 {
			return fmt.Errorf("cr1 (mfn %#x) as the user L4 base pointer: %w", uL4, xenErr(-e))
		}
		c.uL4 = uL4
		p.userL4(c, uL4)
	}
	return nil
}

// setSyscallMSRs points the vCPU's syscall MSRs at the VMM and gives it
// Xen's initial XCR0, for StartRing3 and RestorePV.
func (d *Domain) setSyscallMSRs(v int, c *pvCPU) error {
	cpu := d.m.VCPUs()[v]
	// XCR0 starts as Xen starts a PV vCPU's (XSTATE_FP_SSE); the vCPU
	// uses it once the guest sets CR4.OSXSAVE (see emulateXSETBV).
	if _, _, ecx, _ := cpu.CPUID(1, 0); ecx&(1<<26) != 0 {
		if err := cpu.SetXCR0(xcr0FP | xcr0SSE); err != nil {
			return err
		}
	}
	for _, msr := range []struct {
		index uint32
		value uint64
	}{
		{msrSTAR, uint64(FlatUserCS32)<<48 | uint64(xenCS)<<32},
		{msrLSTAR, c.lstar},
		{msrCSTAR, c.lstar},
		{msrSFMASK, flagTF | flagDF | flagIF | flagNT | flagAC | flagIOPL},
	} {
		if err := cpu.SetMSR(msr.index, msr.value); err != nil {
			return err
		}
	}
	return nil
}

// Page-table entries in a save stream hold PFNs (libxc's
// normalise_pagetable and localise_page).
const (
	// L4 slots a 64-bit guest's saved L4 has zeroed: Xen's, from
	// HYPERVISOR_VIRT_START to HYPERVISOR_VIRT_END.
	firstXenL4Slot, lastXenL4Slot = firstXenSlot, lastXenSlot
	pteFrame                      = pteAddr
)

// NormalisePageTable rewrites a copy of a level-l page-table page for the
// stream as libxc's normalise_pagetable does: Xen's L4 slots zeroed, every
// present entry's machine frame replaced by its PFN in the domain's frame
// map f. A superpage above L1 or a frame that is not the domain's RAM is
// an error naming the entry.
func NormalisePageTable(page []byte, l int, f physmap.Map) ([]byte, error) {
	return rewriteTable(nil, page, l, true, f)
}

// NormalisePageTableInto is NormalisePageTable writing the copy into dst
// (4096 bytes) rather than a new page, for a saver that reuses its
// buffers.
func NormalisePageTableInto(dst, page []byte, l int, f physmap.Map) error {
	if len(dst) != 4096 {
		return fmt.Errorf("a destination of %d bytes for a page table", len(dst))
	}
	_, err := rewriteTable(dst, page, l, true, f)
	return err
}

// LocalisePageTable rewrites a level-l page-table page read from a stream
// in place, as libxc's x86_pv_localise_page does: every present entry's
// PFN becomes the new domain's machine frame in its frame map f; a PFN
// outside the domain is an error naming the entry.
func LocalisePageTable(page []byte, l int, f physmap.Map) error {
	_, err := rewriteTable(nil, page, l, false, f)
	return err
}

// rewriteTable rewrites page in place, or for a save a copy of it: in
// dst when given (4096 bytes), else in a new page. Both directions are
// an offset over a range of frames (PFN = MFN - f.Base for the f.NrPages
// RAM frames), so the loop does a compare and an add per entry: it runs
// over every entry of every table a save writes or a restore reads (an
// L1 table per 2 MiB of a guest that maps all its RAM).
func rewriteTable(dst, page []byte, l int, save bool, f physmap.Map) ([]byte, error) {
	if len(page) != 4096 || l < 1 || l > 4 {
		return nil, fmt.Errorf("a level-%d table of %d bytes", l, len(page))
	}
	out := page
	from, to := uint64(0), f.Base // restore: PFN -> MFN
	what := "pfn"
	if save {
		if dst == nil {
			dst = make([]byte, 4096)
		}
		out = dst
		copy(out, page)
		from, to, what = f.Base, 0, "mfn"
	}
	out = out[:4096]
	for i := 0; i < 512; i++ {
		e := binary.LittleEndian.Uint64(out[8*i:])
		if save && l == 4 && i >= firstXenL4Slot && i <= lastXenL4Slot {
			e = 0
		}
		if e&pteP != 0 {
			if l > 1 && e&ptePS != 0 {
				return nil, fmt.Errorf("entry %d of an L%d table (%#x): a superpage", i, l, e)
			}
			fr := (e & pteFrame) >> 12
			if fr < from || fr-from >= f.NrPages {
				return nil, fmt.Errorf("entry %d of an L%d table (%#x): bad %s %#x", i, l, e, what, fr)
			}
			e = e&^pteFrame | (fr-from+to)<<12
		}
		binary.LittleEndian.PutUint64(out[8*i:], e)
	}
	return out, nil
}
