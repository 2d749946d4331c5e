package xen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/arch/x86/x86asm"

	"github.com/xenresume/xenresume/asm"
	"github.com/xenresume/xenresume/vmm/machine"
)

// regsCPU is what the ring-3 model needs of a vCPU beyond CPU: the special
// registers, and completing the exit before it moves the guest.
// *machine.VCPU implements it.
type regsCPU interface {
	CPU
	Sregs() (*kvm.Sregs, error)
	SetSregsDirty() error
	CompleteExit() error
	CPUID(leaf, subleaf uint32) (eax, ebx, ecx, edx uint32)
}

var _ regsCPU = (*machine.VCPU)(nil)

// RFLAGS bits.
const (
	flagTF   = 1 << 8
	flagIF   = 1 << 9
	flagDF   = 1 << 10
	flagIOPL = 3 << 12
	flagNT   = 1 << 14
	flagRF   = 1 << 16
	flagVM   = 1 << 17
	flagAC   = 1 << 18
	// flagsArch are the RFLAGS bits a guest may set through iret.
	flagsArch = 0x3f7fd5
)

// crash is the error that ends the vCPU for a guest the model cannot
// continue (Xen's domain_crash), naming what the guest did and the
// guest's view: its mode, page tables, kernel stack and last bounce.
func (c *pvCPU) crash(format string, args ...any) error {
	return c.crashVec(-1, format, args...)
}

// crashVec is crash for a vector, adding the guest's trap-table entry
// for it.
func (c *pvCPU) crashVec(vec int, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	mode := "kernel"
	if !c.kernel {
		mode = "user"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "PV guest (%s mode): %s", mode, msg)
	fmt.Fprintf(&b, "\n  guest view: %s mode, kernel L4 mfn %#x, user L4 mfn %#x, kernel stack %#x:%#x",
		mode, c.kL4, c.uL4, c.kernelSS, c.kernelSP)
	if vec >= 0 && vec < 256 {
		ti := c.traps[vec]
		if ti.addr != 0 {
			fmt.Fprintf(&b, "\n  trap table, vector %d: handler %#x:%#x, DPL %d, events %s",
				vec, ti.cs, ti.addr, ti.flags&3, map[bool]string{true: "masked", false: "unmasked"}[ti.flags&4 != 0])
		} else {
			fmt.Fprintf(&b, "\n  trap table, vector %d: no handler", vec)
		}
	}
	if c.lastMsg != "" {
		b.WriteString("\n  last bounce: " + c.lastMsg)
	}
	return errors.New(b.String())
}

// later queues a change of the guest's registers for BeforeEntry, which
// makes it once the exit is complete.
func (c *pvCPU) later(f func(r *kvm.Regs, s *kvm.Sregs) error) {
	c.pending = append(c.pending, f)
}

// halt is the vCPU's HLT exit in the ring-3 model: the guest never halts
// (hlt at CPL 3 is #GP), so every one is a trampoline's. When the exit
// crashes the vCPU after the guest's context was taken back from the trap
// frame (CS is the guest's again), that context is kept for the report.
func (p *pvDomain) halt(v *machine.VCPU) error {
	c := p.cpus[v.ID]
	r, err := v.Regs()
	if err != nil {
		return err
	}
	s, err := v.Sregs()
	if err != nil {
		return err
	}
	err = p.trampolineExit(v, c, r, s)
	if err != nil && s.CS.Selector&3 == 3 {
		c.crashed.Store(p.guestContext(r, s))
	}
	return err
}

// guestContext is the report's copy of the guest's registers r and s,
// with the code at its RIP.
func (p *pvDomain) guestContext(r *kvm.Regs, s *kvm.Sregs) *machine.GuestContext {
	g := &machine.GuestContext{Regs: *r, CS: s.CS.Selector, SS: s.SS.Selector}
	pg := machine.Paging{CR0: s.CR0, CR3: s.CR3, CR4: s.CR4, EFER: s.EFER}
	g.Code, g.CodeErr = p.d.mem.CodeAt(pg, s.CS, r.RIP)
	return g
}

// trampolineExit dispatches a HLT exit by the trampoline it came from.
func (p *pvDomain) trampolineExit(v *machine.VCPU, c *pvCPU, r *kvm.Regs, s *kvm.Sregs) error {
	if s.CS.DPL != 0 {
		return c.crash("HLT exit at CPL %d, rip %#x", s.CS.DPL, r.RIP)
	}
	switch rip := r.RIP; {
	case rip == c.flush+flushHalt:
		return p.flushDone(v, c, r, s)
	case rip == c.lstar+1:
		// syscall entered LSTAR at CPL 0, as on VMX and SVM hosts.
		return p.sysEntry(v, c, r, s)
	case rip > c.trampVA && rip <= c.trampVA+256*asm.TrampolineSize && (rip-c.trampVA-1)%asm.TrampolineSize == 0:
		return p.trap(v, c, r, s, (rip-c.trampVA-1)/asm.TrampolineSize)
	default:
		return c.crash("HLT exit at CPL 0 outside the VMM's trampolines, rip %#x", rip)
	}
}

// segment returns the cached descriptor for selector sel as the hardware
// would load it: Xen's flat selectors, or a descriptor of the guest's GDT.
func (p *pvDomain) segment(c *pvCPU, sel uint16) (kvm.Segment, bool) {
	switch sel | 3 {
	case FlatKernelCS, FlatKernelSS, FlatUserCS32:
		s := flatSeg(sel)
		return s, true
	}
	dsc, _, ok := p.gdtDesc(c, sel)
	if !ok || dsc&(1<<47) == 0 || dsc&(1<<44) == 0 || int(dsc>>45&3) != int(sel&3) && dsc>>45&3 != 3 {
		return kvm.Segment{}, false
	}
	return descSeg(sel, dsc), true
}

// gdtDesc returns the guest GDT's descriptor for selector sel and its
// guest-physical address; false for the null selector, an LDT selector or
// one past the guest's GDT.
func (p *pvDomain) gdtDesc(c *pvCPU, sel uint16) (uint64, uint64, bool) {
	if sel&4 != 0 || sel < 4 {
		return 0, 0, false // LDT or null
	}
	idx := uint64(sel >> 3)
	if idx >= uint64(len(c.gdtFrames))*512 {
		return 0, 0, false
	}
	gpa := c.gdtFrames[idx/512]<<12 + idx%512*8
	b, err := p.d.mem.Slice(gpa, 8)
	if err != nil {
		return 0, 0, false
	}
	return binary.LittleEndian.Uint64(b), gpa, true
}

// descSeg is the cached form of descriptor dsc loaded for selector sel.
func descSeg(sel uint16, dsc uint64) kvm.Segment {
	s := kvm.Segment{
		Base:     dsc>>16&0xffffff | (dsc>>56)<<24,
		Limit:    uint32(dsc&0xffff | (dsc>>48&0xf)<<16),
		Selector: sel, Typ: uint8(dsc >> 40 & 0xf), Present: uint8(dsc >> 47 & 1), DPL: uint8(dsc >> 45 & 3), S: uint8(dsc >> 44 & 1),
		L: uint8(dsc >> 53 & 1), DB: uint8(dsc >> 54 & 1), G: uint8(dsc >> 55 & 1),
	}
	if s.G != 0 {
		s.Limit = s.Limit<<12 | 0xfff
	}
	return s
}

// iretFrameFault is the fault the hardware's iretq to CPL 3 raises for
// a target of cs:rip, ss: a vector and its error code.
type iretFrameFault struct{ vec, ec uint64 }

// iretTarget checks an iret's target as the final iretq to CPL 3 does
// (Xen's do_iret leaves the checks to it, and a fault is the guest's, at
// the target: §4.7) and returns the segments to load, with the accessed
// bits set in the guest's GDT as the hardware sets them. CS must be a
// present code segment, not both L and D, of DPL 3 (or conforming); SS a
// present writable data segment of DPL 3; RIP canonical for 64-bit code
// and within the limit for 32-bit code.
func (p *pvDomain) iretTarget(c *pvCPU, csSel, ssSel uint16, rip uint64) (kvm.Segment, kvm.Segment, *iretFrameFault) {
	load := func(sel uint16) (kvm.Segment, uint64, bool) {
		switch sel {
		case FlatKernelCS, FlatKernelSS, FlatUserCS32:
			return flatSeg(sel), 0, true
		}
		dsc, gpa, ok := p.gdtDesc(c, sel)
		if !ok || dsc&(1<<44) == 0 {
			return kvm.Segment{}, 0, false
		}
		return descSeg(sel, dsc), gpa, true
	}
	gp := func(sel uint16) *iretFrameFault { return &iretFrameFault{13, uint64(sel &^ 3)} }
	cs, csGPA, ok := load(csSel)
	if !ok || cs.Typ&8 == 0 || (cs.L != 0 && cs.DB != 0) || (cs.Typ&4 == 0 && cs.DPL != 3) {
		return cs, kvm.Segment{}, gp(csSel)
	}
	if cs.Present == 0 {
		return cs, kvm.Segment{}, &iretFrameFault{11, uint64(csSel &^ 3)}
	}
	ss, ssGPA, ok := load(ssSel)
	if !ok || ss.Typ&8 != 0 || ss.Typ&2 == 0 || ss.DPL != 3 {
		return cs, ss, gp(ssSel)
	}
	if ss.Present == 0 {
		return cs, ss, &iretFrameFault{12, uint64(ssSel &^ 3)}
	}
	if (cs.L != 0 && !canonical(rip)) || (cs.L == 0 && rip > uint64(cs.Limit)) {
		return cs, ss, gp(0)
	}
	for _, a := range []struct {
		seg *kvm.Segment
		gpa uint64
	}{{&cs, csGPA}, {&ss, ssGPA}} {
		if a.gpa != 0 && a.seg.Typ&1 == 0 {
			a.seg.Typ |= 1
			p.setAccessed(a.gpa)
		}
	}
	return cs, ss, nil
}

// setAccessed sets the accessed bit of the descriptor at gpa, as the
// hardware does (a locked update: the guest may write the word too).
func (p *pvDomain) setAccessed(gpa uint64) {
	b, err := p.d.mem.Slice(gpa, 8)
	if err != nil {
		return
	}
	w := (*uint64)(unsafe.Pointer(&b[0]))
	for {
		old := atomic.LoadUint64(w)
		if old&(1<<40) != 0 || atomic.CompareAndSwapUint64(w, old, old|1<<40) {
			return
		}
	}
}

// trap handles a vector the hardware delivered through the VMM's IDT.
func (p *pvDomain) trap(v *machine.VCPU, c *pvCPU, r *kvm.Regs, s *kvm.Sregs, vec uint64) error {
	stackBase := c.stackTop - machine.PageSize
	if r.RSP < stackBase || r.RSP > c.stackTop-40 {
		return c.crash("vector %d with the VMM stack at %#x", vec, r.RSP)
	}
	stk, err := p.d.mem.Slice(c.stackGPA, machine.PageSize)
	if err != nil {
		return err
	}
	fr := stk[r.RSP-stackBase:]
	word := func(i int) uint64 { return binary.LittleEndian.Uint64(fr[8*i:]) }
	var ec uint64
	withEC := c.stackTop-r.RSP >= 48
	if withEC {
		ec, fr = word(0), fr[8:]
	}
	rip, cs, rflags, rsp, ss := word(0), uint16(word(1)), word(2), word(3), uint16(word(4))
	if cs&3 != 3 {
		if vec == 1 && rip == c.lstar && cs == xenCS {
			// A MovSS-deferred #DB taken at the syscall entry (CPL 0 on
			// VMX/SVM): Xen discards a #DB taken in its own context.
			// The syscall's state is still in the registers.
			return p.sysEntry(v, c, r, s)
		}
		return c.crash("vector %d (error code %#x) in the VMM at rip %#x", vec, ec, rip)
	}
	// Back to the guest's context, as it was when the vector arrived.
	r.RIP, r.RSP, r.RFLAGS = rip, rsp, p.gdbFlags(c, rflags)
	var ok bool
	if s.CS, ok = p.segment(c, cs); !ok {
		return c.crash("vector %d from code selector %#x the VMM cannot reload", vec, cs)
	}
	if s.SS, ok = p.segment(c, ss); !ok {
		return c.crash("vector %d with stack selector %#x the VMM cannot reload", vec, ss)
	}
	if err := v.SetRegsDirty(); err != nil {
		return err
	}
	if err := v.SetSregsDirty(); err != nil {
		return err
	}
	if done, err := p.gdbTrap(v, c, r, vec); done || err != nil {
		return err
	}
	switch vec {
	case 1:
		return p.debugTrap(v, c, r, s)
	case 6:
		return p.invalidOp(v, c, r, s)
	case 13:
		if ec == 0 {
			return p.gpFault(v, c, r, s)
		}
		if ec&2 != 0 { // an IDT vector: int $n through a DPL-0 gate
			return p.softInt(c, r, s, ec)
		}
		return p.bounceTrap(c, r, s, 13, &ec)
	case 14:
		if ec&8 != 0 {
			return c.crash("reserved-bit page fault at %#x", s.CR2)
		}
		if done, err := p.m2pRead(c, r, s, ec); done || err != nil {
			return err
		}
		if p.ptwr(c, r, s, ec) {
			return nil // registers already marked dirty above
		}
		if p.lstarFetch(c, rip, s.CR2, ec) {
			return p.sysEntry(v, c, r, s)
		}
		ec &^= 4
		if !c.kernel {
			ec |= 4
		}
		c.cr2 = s.CR2
		if c.id < 32 {
			atomic.StoreUint64(&p.d.vcpuInfoOf(c.id).Arch.Cr2, s.CR2)
		}
		return p.bounceTrap(c, r, s, 14, &ec)
	case 0x80:
		if c.traps[0x80].addr != 0 {
			return p.bounceTrap(c, r, s, 0x80, nil)
		}
		r.RIP -= 2
		ec = 0x80<<3 | 2
		return p.bounceTrap(c, r, s, 13, &ec)
	case 7:
		c.ts = false
		s.CR0 &^= 8
		return p.bounceTrap(c, r, s, 7, nil)
	case 12:
		if ec == 0 && p.ssIsGP(r, s) {
			vec = 13 // see ssIsGP
		}
		return p.bounceTrap(c, r, s, vec, &ec)
	case 2, 8, 18:
		return c.crash("vector %d at rip %#x (error code %#x)", vec, rip, ec)
	}
	if vec >= 32 {
		return c.crash("unexpected vector %d at rip %#x", vec, rip)
	}
	if withEC {
		return p.bounceTrap(c, r, s, vec, &ec)
	}
	return p.bounceTrap(c, r, s, vec, nil)
}

// bounceTrap delivers vector vec to the guest's trap-table handler.
func (p *pvDomain) bounceTrap(c *pvCPU, r *kvm.Regs, s *kvm.Sregs, vec uint64, ec *uint64) error {
	ti := c.traps[vec]
	if ti.addr == 0 {
		code := ""
		if ec != nil {
			code = fmt.Sprintf(" [%#x]", *ec)
		}
		return c.crashVec(int(vec), "unhandled exception %d%s at rip %#x with no trap-table entry (cr2 %#x)", vec, code, r.RIP, c.cr2)
	}
	from := "kernel"
	if !c.kernel {
		from = "user"
	}
	c.lastMsg = fmt.Sprintf("vector %d from %s rip %#x to %#x", vec, from, r.RIP, ti.addr)
	if p.d.trace != nil {
		attrs := []any{"dom", p.d.id, "vcpu", c.id, "vector", vec, "from", from, "rip", hex(r.RIP), "handler", hex(ti.addr)}
		if ec != nil {
			attrs = append(attrs, "error_code", hex(*ec))
		}
		if vec == 14 {
			attrs = append(attrs, "cr2", hex(c.cr2))
		}
		p.d.trace.Info("bounce", attrs...)
	}
	return p.bounce(c, r, s, ti.addr, ti.flags&4 != 0, ec)
}

// bounce builds Xen's bounce frame (create_bounce_frame) on the guest
// kernel stack and moves the guest to handler addr: from user mode it
// switches to kernel mode first and uses the stack_switch stack; mask sets
// evtchn_upcall_mask after its old value was saved in the frame.
func (p *pvDomain) bounce(c *pvCPU, r *kvm.Regs, s *kvm.Sregs, addr uint64, mask bool, ec *uint64) error {
	var mid []uint64
	if ec != nil {
		mid = []uint64{uint64(uint32(*ec))}
	}
	return p.bounceFrame(c, r, s, addr, mask, mid)
}

// bounceFrame is bounce with the words mid between %r11 and %rip: the
// error code of an exception, the data selectors of the failsafe frame.
func (p *pvDomain) bounceFrame(c *pvCPU, r *kvm.Regs, s *kvm.Sregs, addr uint64, mask bool, mid []uint64) error {
	vi := p.vcpuInfo(c)
	saved := uint64(atomic.LoadUint32(vi) >> 8 & 0xff)
	csSlot := uint64(s.CS.Selector)
	intRSP, intSS := r.RSP, uint64(s.SS.Selector)
	var sp uint64
	if c.kernel {
		sp = r.RSP
		csSlot &^= 3
	} else {
		p.toggle(c, s)
		sp = c.kernelSP
	}
	sp &^= 15
	if sp > MachToPhysVirt && sp < hypervisorVirtEnd+0x40 {
		return c.crash("bounce frame at %#x, in Xen's range", sp)
	}
	fl := r.RFLAGS &^ (flagIF | flagIOPL)
	if saved == 0 {
		fl |= flagIF
	}
	if p.archIOPL() {
		fl |= uint64(c.iopl) << 12
	}
	frame := append([]uint64{r.RCX, r.R11}, mid...)
	frame = append(frame, r.RIP, csSlot|saved<<32, fl, intRSP, intSS)
	sp -= uint64(len(frame)) * 8
	b := make([]byte, len(frame)*8)
	for i, w := range frame {
		binary.LittleEndian.PutUint64(b[8*i:], w)
	}
	if err := p.writeGuest(c, s, sp, b); err != nil {
		return c.crash("cannot write the bounce frame at %#x: %v", sp, err)
	}
	r.RIP, r.RSP = addr, sp
	r.RFLAGS = r.RFLAGS&^(flagAC|flagVM|flagRF|flagNT|flagTF|flagIOPL) | flagIF | 2
	// Xen returns to a handler with sysret: %rcx and %r11 are garbage.
	r.RCX, r.R11 = addr, r.RFLAGS
	s.CS, s.SS = flatSeg(FlatKernelCS), flatSeg(FlatKernelSS)
	if mask {
		p.setMask(c, 1)
	}
	return nil
}

// dataSegment returns the cached descriptor for data selector sel as
// Xen's load_segments loads it into %ds, %es, %fs or %gs (in ring 0, so
// only the selector's RPL limits the DPL): the null selector, Xen's flat
// data or readable code selectors, or a present data or readable code
// descriptor of the guest's GDT. false when the load would fault: past the
// GDT, an LDT selector (the model has no LDT), a system or not-present
// descriptor, execute-only code.
func (p *pvDomain) dataSegment(c *pvCPU, sel uint16) (kvm.Segment, bool) {
	if sel&^3 == 0 {
		return kvm.Segment{Selector: sel, Unusable: 1}, true
	}
	switch sel | 3 {
	case FlatKernelCS, FlatKernelSS, FlatUserCS32:
		return flatSeg(sel), true
	}
	dsc, _, ok := p.gdtDesc(c, sel)
	if !ok || dsc&(1<<47) == 0 || dsc&(1<<44) == 0 || dsc>>45&3 < uint64(sel&3) {
		return kvm.Segment{}, false
	}
	if typ := dsc >> 40 & 0xf; typ&8 != 0 && typ&2 == 0 {
		return kvm.Segment{}, false // execute-only code
	}
	return descSeg(sel, dsc), true
}

// loadDataSegments loads the guest's %ds, %es, %fs and %gs selectors sels
// as Xen's load_segments does when it schedules the vCPU: a selector that
// would fault is loaded as null, and then the vCPU enters its failsafe
// callback (in kernel mode, switching from user mode first) on a frame of
// %rcx, %r11, the four selectors Xen tried to load, and the usual return
// frame; VGCF_failsafe_disables_events masks events. A failsafe address
// of 0 is used as Xen uses it; a frame that cannot be written crashes the
// domain. The FS and GS bases of a non-null selector are the
// descriptor's, as loading it sets them.
func (p *pvDomain) loadDataSegments(c *pvCPU, r *kvm.Regs, s *kvm.Sregs, sels [4]uint16) error {
	fsBase, gsBase := s.FS.Base, s.GS.Base
	ok := true
	for i, seg := range []*kvm.Segment{&s.DS, &s.ES, &s.FS, &s.GS} {
		d, good := p.dataSegment(c, sels[i])
		if !good {
			ok = false
			d = kvm.Segment{Unusable: 1}
		}
		*seg = d
	}
	if s.FS.Selector&^3 == 0 {
		s.FS.Base = fsBase // nul selector: the base as set by wrfsbase
	}
	if s.GS.Selector&^3 == 0 {
		s.GS.Base = gsBase
	} else if c.kernel {
		// The selector is the user's: its base is the inactive one.
		c.gsInactive, s.GS.Base = s.GS.Base, gsBase
	}
	if ok {
		return nil
	}
	c.lastMsg = fmt.Sprintf("failsafe callback: data selectors ds %#x es %#x fs %#x gs %#x", sels[0], sels[1], sels[2], sels[3])
	if p.d.trace != nil {
		p.d.trace.Info("failsafe", "dom", p.d.id, "vcpu", c.id, "ds", hex(uint64(sels[0])), "es", hex(uint64(sels[1])),
			"fs", hex(uint64(sels[2])), "gs", hex(uint64(sels[3])), "rip", hex(r.RIP), "handler", hex(c.failsafe))
	}
	mid := []uint64{uint64(sels[0]), uint64(sels[1]), uint64(sels[2]), uint64(sels[3])}
	return p.bounceFrame(c, r, s, c.failsafe, c.failsafeMask, mid)
}

// toggle switches the vCPU between guest kernel and user mode
// (toggle_guest_mode): the other L4 and the other GS base.
func (p *pvDomain) toggle(c *pvCPU, s *kvm.Sregs) {
	c.kernel = !c.kernel
	l4 := c.kL4
	if !c.kernel {
		l4 = c.uL4
	}
	s.CR3 = l4 << 12
	s.GS.Base, c.gsInactive = c.gsInactive, s.GS.Base
}

// vcpuInfo returns the first word of the vCPU's vcpu_info: pending in
// byte 0, the mask in byte 1.
func (p *pvDomain) vcpuInfo(c *pvCPU) *uint32 {
	return (*uint32)(unsafe.Pointer(&p.d.vcpuInfoOf(c.id).Upcall_pending))
}

// setMask sets evtchn_upcall_mask, byte 1 of the vcpu_info word whose
// byte 0, evtchn_upcall_pending, markVCPU sets atomically from any
// goroutine: the mask is changed with a compare-and-swap of the whole
// word, so neither write is lost and no access to the word is plain. The
// guest writes the byte too, unlocked, as on Xen.
func (p *pvDomain) setMask(c *pvCPU, m uint8) {
	w := p.vcpuInfo(c)
	for {
		old := atomic.LoadUint32(w)
		if atomic.CompareAndSwapUint32(w, old, old&^0xff00|uint32(m)<<8) {
			return
		}
	}
}

func (p *pvDomain) archIOPL() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.vmassist&(1<<vmassistArchIOPL) != 0
}

// writeGuest writes b at guest virtual va through the kernel page tables,
// as Xen writes a bounce frame: every byte must be mapped writable.
func (p *pvDomain) writeGuest(c *pvCPU, s *kvm.Sregs, va uint64, b []byte) error {
	pg := machine.Paging{CR0: s.CR0, CR3: c.kL4 << 12, CR4: s.CR4, EFER: s.EFER}
	return p.d.mem.WriteVirtChecked(pg, va, b)
}

// errNotGuest: an address a guest may not hand Xen (addrOK).
var errNotGuest = errors.New("address in the hypervisor's range")

// readKernel reads guest virtual memory at va through the kernel page
// tables, as Xen's copy_from_guest reads it for the guest kernel: every
// byte must be a guest address (addrOK), so a guest-chosen pointer can
// never reach the VMM's slots, such as the slot-262 window.
func (p *pvDomain) readKernel(c *pvCPU, s *kvm.Sregs, va uint64, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if end := va + uint64(len(b)) - 1; end < va || !addrOK(va) || !addrOK(end) {
		return fmt.Errorf("read %#x+%d: %w", va, len(b), errNotGuest)
	}
	pg := machine.Paging{CR0: s.CR0, CR3: c.kL4 << 12, CR4: s.CR4, EFER: s.EFER}
	return p.d.mem.ReadVirt(pg, va, b)
}

// readGuest reads guest virtual memory through the current page tables.
func (p *pvDomain) readGuest(s *kvm.Sregs, va uint64, b []byte) error {
	pg := machine.Paging{CR0: s.CR0, CR3: s.CR3, CR4: s.CR4, EFER: s.EFER}
	return p.d.mem.ReadVirt(pg, va, b)
}

// beforeEntry runs before every entry: it completes an exit that queued
// register changes and makes them, has the guest make the page-table
// writes the VMM queued, and delivers a pending event upcall, as Xen does
// on every return to a guest.
func (p *pvDomain) beforeEntry(v *machine.VCPU) error {
	c := p.cpus[v.ID]
	if c.saved != nil {
		return nil // the flush trampoline runs
	}
	if len(c.pending) > 0 || c.syncCR3 || c.syncTS {
		if err := p.finishExit(v, c); err != nil {
			return err
		}
	}
	if len(c.ptq) > 0 {
		return p.startFlush(v, c)
	}
	if err := p.gdbSettle(v, c); err != nil {
		return err
	}
	if err := p.deliverEvent(v, c); err != nil {
		return err
	}
	return p.gdbArmStep(v, c)
}

// syncRegs brings CR3 and CR0.TS in line with the model where a
// hypercall changed them (syncCR3, syncTS).
func (c *pvCPU) syncRegs(s *kvm.Sregs) {
	if c.syncCR3 {
		l4 := c.kL4
		if !c.kernel {
			l4 = c.uL4
		}
		s.CR3 = l4 << 12
	}
	if c.syncTS {
		if c.ts {
			s.CR0 |= 8
		} else {
			s.CR0 &^= 8
		}
	}
	c.syncCR3, c.syncTS = false, false
}

// deliverEvent bounces to the event callback when the vCPU has events
// pending and unmasked and runs guest code (test_guest_events).
func (p *pvDomain) deliverEvent(v *machine.VCPU, c *pvCPU) error {
	w := atomic.LoadUint32(p.vcpuInfo(c))
	if w&0xff == 0 || w>>8&0xff != 0 || c.event == 0 {
		return nil
	}
	r, s, ok, err := guestBoundState(v)
	if !ok {
		return err
	}
	c.lastMsg = fmt.Sprintf("event upcall from rip %#x", r.RIP)
	if p.d.trace != nil {
		p.d.trace.Info("event upcall", "dom", p.d.id, "vcpu", c.id, "kernel", c.kernel, "rip", hex(r.RIP), "handler", hex(c.event))
	}
	if err := p.bounce(c, r, s, c.event, true, nil); err != nil {
		return err
	}
	if err := v.SetRegsDirty(); err != nil {
		return err
	}
	if err := v.SetSregsDirty(); err != nil {
		return err
	}
	if len(c.ptq) > 0 {
		return p.startFlush(v, c)
	}
	return nil
}

// startFlush saves the guest's state and runs the write loop at CPL 0 on
// the VMM stack, with the guest's CR3, to make the queued page-table
// writes: a write the hardware's (or KVM's shadow) MMU sees, followed by a
// CR3 reload that flushes the TLB. On shadow-paging hosts (PVM) a write
// the VMM made to a page table in host memory alone would never reach the
// shadow tables.
func (p *pvDomain) startFlush(v *machine.VCPU, c *pvCPU) error {
	r, s, err := completedState(v)
	if err != nil {
		return err
	}
	c.saved = &savedState{regs: *r, sregs: *s}
	if err := p.loadList(c); err != nil {
		return err
	}
	r.RIP, r.RSI, r.RSP, r.RFLAGS = c.flush, c.listVA, c.stackTop, 2
	s.CS, s.SS = flatSeg(xenCS), flatSeg(xenDS)
	s.CS.Selector, s.SS.Selector = xenCS, xenDS
	if err := v.SetRegsDirty(); err != nil {
		return err
	}
	return v.SetSregsDirty()
}

// loadList moves as many queued writes as fit into the write list.
func (p *pvDomain) loadList(c *pvCPU) error {
	list, err := p.d.mem.Slice(c.listGPA, listPages*machine.PageSize)
	if err != nil {
		return err
	}
	n := min(len(c.ptq), len(list)/16-1)
	for i, w := range c.ptq[:n] {
		binary.LittleEndian.PutUint64(list[16*i:], w.va)
		binary.LittleEndian.PutUint64(list[16*i+8:], w.val)
	}
	binary.LittleEndian.PutUint64(list[16*n:], 0)
	c.ptq = c.ptq[n:]
	clear(c.ptqIdx)
	return nil
}

// flushDone is the write loop's halt: more writes, or back to the guest.
func (p *pvDomain) flushDone(v *machine.VCPU, c *pvCPU, r *kvm.Regs, s *kvm.Sregs) error {
	if c.saved == nil {
		return c.crash("write loop halted with no guest state saved")
	}
	if len(c.ptq) > 0 {
		if err := p.loadList(c); err != nil {
			return err
		}
		r.RIP, r.RSI, r.RSP = c.flush, c.listVA, c.stackTop
		return v.SetRegsDirty()
	}
	*r, *s = c.saved.regs, c.saved.sregs
	c.saved = nil
	if err := v.SetRegsDirty(); err != nil {
		return err
	}
	return v.SetSregsDirty()
}

// softInt handles #GP from `int $n` through a DPL-0 gate: delivered as
// vector n when the guest's trap table permits it in this mode
// (pv_emulate_sw_interrupt), else the #GP itself.
func (p *pvDomain) softInt(c *pvCPU, r *kvm.Regs, s *kvm.Sregs, ec uint64) error {
	n := ec >> 3
	var code [2]byte
	if n < 256 && p.readGuest(s, r.RIP, code[:]) == nil && code[0] == 0xcd && uint64(code[1]) == n {
		ti := c.traps[n]
		dpl := ti.flags & 3
		if ti.addr != 0 && (dpl == 3 || (dpl != 0 && c.kernel)) {
			r.RIP += 2
			return p.bounceTrap(c, r, s, n, nil)
		}
	}
	return p.bounceTrap(c, r, s, 13, &ec)
}

// invalidOp handles #UD: the syscall instruction (should EFER.SCE not be
// honoured), Xen's forced-emulation prefix
// with cpuid, or an #UD for the guest.
func (p *pvDomain) invalidOp(v *machine.VCPU, c *pvCPU, r *kvm.Regs, s *kvm.Sregs) error {
	var code [7]byte
	n := 0
	for n < len(code) && p.readGuest(s, r.RIP+uint64(n), code[n:n+1]) == nil {
		n++
	}
	switch {
	case n >= 2 && code[0] == 0x0f && code[1] == 0x05:
		return p.syscallInsn(v, c, r, s)
	case n >= 2 && code[0] == 0xcd:
		// int $n: architecturally a #GP through Xen's DPL-0 gates, or the
		// vector itself through its DPL-3 ones (3, 4, 0x80). PVM hosts,
		// which run CPL-3 code natively in host user mode, raise #UD for
		// it instead; it is handled as the hardware would have.
		vec := uint64(code[1])
		switch vec {
		case 3, 4:
			r.RIP += 2
			return p.bounceTrap(c, r, s, vec, nil)
		case 0x80:
			if c.traps[0x80].addr != 0 {
				r.RIP += 2
				return p.bounceTrap(c, r, s, 0x80, nil)
			}
		}
		return p.softInt(c, r, s, vec<<3|2)
	case n >= 3 && code[0] == 0x0f && code[1] == 0x01 && code[2] == 0xd1:
		// xsetbv at CPL 3: on Xen's hardware a #GP(0) Xen emulates;
		// this PVM host raises #UD for it (measured with the guest's
		// CR4.OSXSAVE clear, all this host's CPUID allows), so the #UD
		// is emulated the same way.
		if in, err := x86asm.Decode(code[:3], 64); err == nil {
			return p.emulateXSETBV(v, c, r, s, &in)
		}
	case n == 7 && string(code[:]) == "\x0f\x0bxen\x0f\xa2":
		eax, ebx, ecx, edx := p.cpuid(v, uint32(r.RAX), uint32(r.RCX))
		r.RAX, r.RBX, r.RCX, r.RDX = uint64(eax), uint64(ebx), uint64(ecx), uint64(edx)
		r.RIP += 7
		return nil
	}
	return p.bounceTrap(c, r, s, 6, nil)
}

// pfFetch and pfUser are the error-code bits of a #PF on an instruction
// fetch at CPL 3.
const (
	pfUser  = 1 << 2
	pfFetch = 1 << 4
)

// lstarFetch reports whether a #PF at rip, cr2 with error code ec is a
// syscall: on a host where syscall stays at CPL 3 (PVM: the guest's CPL-3
// code runs natively in host user mode) it goes to LSTAR there, and
// fetching the VMM's supervisor trampoline faults. Elsewhere syscall
// enters LSTAR at CPL 0, and such a #PF is a jump to LSTAR: the guest's
// own page fault.
func (p *pvDomain) lstarFetch(c *pvCPU, rip, cr2, ec uint64) bool {
	return p.syscallFaults && rip == c.lstar && cr2 == c.lstar && ec&(pfUser|pfFetch) == pfUser|pfFetch
}

// sysretFlags is the RFLAGS a syscall's saved %r11 gives the guest
// back, as sysret loads it: the architectural flags kept, RF, VM and the
// reserved bits cleared, bit 1 set; and IOPL cleared (it is virtual).
// The %r11 reaching LSTAR is the guest's to forge (on PVM a jump to LSTAR
// arrives as a syscall does), and a reserved bit would fail the entry.
func sysretFlags(r11 uint64) uint64 {
	const sysretMask = 0x3c7fd7 // CF PF AF ZF SF TF IF DF OF IOPL NT AC VIF VIP ID
	return r11&sysretMask&^flagIOPL | 2
}

// sysEntry is a syscall that reached LSTAR (%rcx the return address, %r11
// the flags): the guest state is put back as it was at the instruction
// and handled by syscallInsn.
func (p *pvDomain) sysEntry(v *machine.VCPU, c *pvCPU, r *kvm.Regs, s *kvm.Sregs) error {
	r.RIP, r.RFLAGS = r.RCX-2, sysretFlags(r.R11)
	s.CS, s.SS = flatSeg(FlatKernelCS), flatSeg(FlatKernelSS)
	if err := v.SetRegsDirty(); err != nil {
		return err
	}
	if err := v.SetSregsDirty(); err != nil {
		return err
	}
	return p.syscallInsn(v, c, r, s)
}

// syscallInsn is the syscall instruction (EFER.SCE is clear, so it
// raised #UD): in guest kernel mode Xen's hypercall instruction; in user
// mode the guest's syscall callback, or #UD without one.
func (p *pvDomain) syscallInsn(v *machine.VCPU, c *pvCPU, r *kvm.Regs, s *kvm.Sregs) error {
	next := r.RIP + 2
	if !c.kernel {
		cb := c.syscall
		if s.CS.L == 0 {
			cb = c.syscall32
		}
		if cb.addr == 0 {
			return p.bounceTrap(c, r, s, 6, nil)
		}
		r.RCX, r.R11 = next, r.RFLAGS
		r.RIP = next
		cs := uint16(FlatKernelCS)
		if s.CS.L == 0 {
			cs = FlatUserCS32
		}
		s.CS, s.SS = flatSeg(cs), flatSeg(FlatKernelSS)
		c.lastMsg = fmt.Sprintf("syscall from user rip %#x", r.RIP)
		if p.d.trace != nil {
			p.d.trace.Info("syscall callback", "dom", p.d.id, "vcpu", c.id, "rip", hex(r.RIP), "handler", hex(cb.addr))
		}
		if err := p.bounce(c, r, s, cb.addr, cb.mask, nil); err != nil {
			return err
		}
		r.RFLAGS &^= flagDF
		return nil
	}
	// The hypercall returns as through sysret: %rcx the return address,
	// %r11 the flags, CS and SS Xen's flat selectors.
	r.RIP = next
	r.RFLAGS = r.RFLAGS&^(flagIOPL|flagVM) | flagIF | 2
	r.RCX, r.R11 = next, r.RFLAGS
	s.CS, s.SS = flatSeg(FlatKernelCS), flatSeg(FlatKernelSS)
	nr, args := r.RAX, [5]uint64{r.RDI, r.RSI, r.RDX, r.R10, r.R8}
	c.inSyscall = true
	ret, err := p.d.hypercall(v, nr, args)
	c.inSyscall = false
	if err != nil {
		return err
	}
	r.RAX = uint64(ret)
	return nil
}

// cpuid answers an emulated CPUID (Xen's forced-emulation prefix): Xen's
// leaves at 0x40000000, the vCPU's CPUID table for the rest.
func (p *pvDomain) cpuid(v *machine.VCPU, leaf, sub uint32) (eax, ebx, ecx, edx uint32) {
	switch leaf {
	case 0x40000000:
		return 0x40000003, 0x566e6558, 0x65584d4d, 0x4d4d566e // "XenVMMXenVMM"
	case 0x40000001:
		return VersionMajor<<16 | VersionMinor, 0, 0, 0
	case 0x40000002:
		return 1, 0x40000000, 1, 0 // one hypercall page, MSR, MMU_PT_UPDATE_PRESERVE_AD
	case 0x40000003:
		return 0, 0, 0, 0
	}
	return v.CPUID(leaf, sub)
}

// hex formats a value for traces.
type hex uint64

func (h hex) String() string { return fmt.Sprintf("%#x", uint64(h)) }
