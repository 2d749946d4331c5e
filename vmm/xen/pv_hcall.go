package xen

import (
	"encoding/binary"
	"fmt"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

type (
	kvmRegs  = kvm.Regs
	kvmSregs = kvm.Sregs
)

// PVFeatures is submap 0 of XENVER_get_features for a 64-bit PV guest in
// the ring-3 model, as Xen reports it to a plain domU (0x001E20E0 less
// what needs pae_extended_cr3): mmu_pt_update_preserve_ad, highmem_assist,
// gnttab_map_avail_bits, memory_op_vnode_supported, direct_mapped,
// runstate_phys_area, vcpu_time_phys_area, dm_msix_all_writes. Never
// supervisor_mode_kernel.
const PVFeatures = 1<<5 | 1<<6 | 1<<7 | 1<<13 | 1<<17 | 1<<18 | 1<<19 | 1<<20

// pvHypercalls replace or add to the hypercall table in the ring-3 model.
var pvHypercalls [128]*hypercallDef

func init() {
	for nr, def := range map[int]*hypercallDef{
		0:                           {name: "set_trap_table", nargs: 1, fn: pvSetTrapTable},
		xenabi.HypervisorMmuUpdate:  {name: "mmu_update", nargs: 4, fn: pvMMUUpdate},
		2:                           {name: "set_gdt", nargs: 2, fn: pvSetGDT},
		3:                           {name: "stack_switch", nargs: 2, fn: pvStackSwitch},
		4:                           {name: "set_callbacks", nargs: 3, fn: pvSetCallbacks},
		5:                           {name: "fpu_taskswitch", nargs: 1, fn: pvFPUTaskswitch},
		8:                           {name: "set_debugreg", nargs: 2, fn: pvSetDebugreg},
		9:                           {name: "get_debugreg", nargs: 1, fn: pvGetDebugreg},
		13:                          {name: "multicall", nargs: 2, fn: pvMulticall},
		10:                          {name: "update_descriptor", nargs: 2, fn: pvUpdateDescriptor},
		12:                          {name: "memory_op", nargs: 2, fn: pvMemoryOp},
		20:                          {name: "grant_table_op", nargs: 3, fn: pvGrantTableOp},
		21:                          {name: "vm_assist", nargs: 2, fn: pvVMAssist},
		23:                          {name: "iret", nargs: 0, fn: pvIret},
		25:                          {name: "set_segment_base", nargs: 2, fn: pvSetSegmentBase},
		26:                          {name: "mmuext_op", nargs: 4, fn: pvMMUExtOp},
		28:                          {name: "nmi_op", nargs: 2, fn: pvNMIOp},
		30:                          {name: "callback_op", nargs: 2, fn: pvCallbackOp},
		33:                          {name: "physdev_op", nargs: 2, fn: pvPhysdevOp},
		xenabi.HypervisorXenVersion: {name: "xen_version", nargs: 2, fn: pvXenVersion},
		xenabi.HypervisorHVMOp:      {name: "hvm_op", nargs: 2, fn: func(*call) int64 { return errno(xenabi.ENOSYS) }},
	} {
		def.cmds = hypercalls[nr].cmdsOrNil()
		pvHypercalls[nr] = def
	}
}

func (h *hypercallDef) cmdsOrNil() map[uint64]string {
	if h == nil {
		return nil
	}
	return h.cmds
}

func pvSetTrapTable(c *call) int64 {
	cpu := c.pvCPU()
	ptr := c.args[0]
	if ptr == 0 {
		cpu.traps = [256]trapInfo{}
		return 0
	}
	for i := uint64(0); i < 256; i++ {
		b, ok := c.arg(ptr+16*i, 16)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		ti := trapInfo{flags: b[1], cs: u16(b[2:]) | 3, addr: u64(b[8:])}
		if ti.addr == 0 {
			return 0
		}
		if !canonical(ti.addr) {
			return errno(xenabi.EINVAL)
		}
		cpu.traps[b[0]] = ti
		if c.d.trace != nil {
			c.d.trace.Info("trap table", "dom", c.d.id, "vcpu", cpu.id, "vector", b[0], "handler", hex(ti.addr),
				"cs", hex(ti.cs), "dpl", ti.flags&3, "mask_events", ti.flags&4 != 0)
		}
	}
	return 0
}

func canonical(va uint64) bool { top := int64(va) >> 47; return top == 0 || top == -1 }

// Callback types and flags (callback.h).
const (
	cbEvent, cbFailsafe, cbSyscall, cbSysenterDeprecated, cbNMI, cbSysenter, _, cbSyscall32 = 0, 1, 2, 3, 4, 5, 6, 7
	cbMaskEvents                                                                            = 1
)

var callbackNames = [...]string{"event", "failsafe", "syscall", "sysenter_deprecated", "nmi", "sysenter", "6", "syscall32"}

func (p *pvDomain) registerCallback(cpu *pvCPU, typ uint16, flags uint16, addr uint64) int64 {
	ret := p.registerCallback1(cpu, typ, flags, addr)
	if p.d.trace != nil {
		name := fmt.Sprint(typ)
		if int(typ) < len(callbackNames) {
			name = callbackNames[typ]
		}
		p.d.trace.Info("callback", "dom", p.d.id, "vcpu", cpu.id, "type", name, "address", hex(addr),
			"mask_events", flags&cbMaskEvents != 0, "ret", formatRet(ret))
	}
	return ret
}

func (p *pvDomain) registerCallback1(cpu *pvCPU, typ uint16, flags uint16, addr uint64) int64 {
	if !canonical(addr) {
		return errno(xenabi.EINVAL)
	}
	mask := flags&cbMaskEvents != 0
	switch typ {
	case cbEvent:
		cpu.event = addr
	case cbFailsafe:
		cpu.failsafe, cpu.failsafeMask = addr, mask
	case cbSyscall:
		cpu.syscall = callback{addr, mask}
	case cbSyscall32:
		cpu.syscall32 = callback{addr, mask}
	case cbSysenter:
		cpu.sysenter = callback{addr, mask}
	case cbNMI:
		cpu.traps[2] = trapInfo{flags: 4, cs: FlatKernelCS, addr: addr}
	default:
		return errno(xenabi.ENOSYS)
	}
	return 0
}

func pvCallbackOp(c *call) int64 {
	cpu := c.pvCPU()
	switch c.args[0] {
	case 0: // CALLBACKOP_register
		b, ok := c.arg(c.args[1], 16)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		return c.d.pv.registerCallback(cpu, u16(b), u16(b[2:]), u64(b[8:]))
	case 1: // CALLBACKOP_unregister
		b, ok := c.arg(c.args[1], 4)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		switch u16(b) {
		case cbNMI:
			cpu.traps[2] = trapInfo{}
			return 0
		case cbEvent, cbFailsafe, cbSyscall, cbSyscall32, cbSysenter:
			return errno(xenabi.EINVAL)
		}
	}
	return errno(xenabi.ENOSYS)
}

func pvSetCallbacks(c *call) int64 {
	p, cpu := c.d.pv, c.pvCPU()
	p.registerCallback(cpu, cbEvent, 0, c.args[0])
	p.registerCallback(cpu, cbFailsafe, 0, c.args[1])
	p.registerCallback(cpu, cbSyscall, 0, c.args[2])
	return 0
}

func pvStackSwitch(c *call) int64 {
	cpu := c.pvCPU()
	cpu.kernelSS, cpu.kernelSP = uint16(c.args[0])|3, c.args[1]
	return 0
}

func pvFPUTaskswitch(c *call) int64 {
	cpu := c.pvCPU()
	cpu.ts = c.args[0] != 0
	cpu.syncTS = true
	return 0
}

// checkDescriptor is check_descriptor for a 64-bit PV guest: it returns
// the descriptor as Xen stores it, or false when it is refused.
func checkDescriptor(d uint64) (uint64, bool) {
	if d&(1<<47) == 0 {
		return d, true // not present
	}
	if d&(1<<44) != 0 { // code or data: at most ring 3's privilege
		return d | 3<<45, true
	}
	switch d >> 40 & 0xf {
	case 0: // the upper half of a 16-byte gate
		return d, true
	case 0xc: // a 64-bit call gate
		sel := uint16(d >> 16)
		if sel&4 == 0 && int(sel>>3) >= FirstReservedGDTEntry && sel != FlatKernelCS {
			return 0, false // guest_gate_selector_okay: not Xen's segments
		}
		if d>>32&0xff != 0 {
			return 0, false // reserved bits
		}
		// DPL 0, the original DPL kept in the target selector's RPL:
		// any use faults #GP(gate), which Xen passes to the guest.
		dpl := d >> 45 & 3
		d = d&^(3<<16) | dpl<<16
		return d &^ (3 << 45), true
	}
	// Every other system descriptor (LDT, TSS, interrupt and trap gates,
	// 16- and 32-bit gates) is refused.
	return 0, false
}

// validateDescPage checks a whole page of descriptors (PGT_seg_desc_page).
func (p *pvDomain) validateDescPage(mfn uint64) int64 {
	t := p.table(mfn)
	if t == nil {
		return errno(xenabi.EINVAL)
	}
	for i := 0; i < 512; i++ {
		d := binary.LittleEndian.Uint64(t[8*i:])
		nd, ok := checkDescriptor(d)
		if !ok {
			return errno(xenabi.EINVAL)
		}
		if nd != d {
			store64(t[8*i:], nd)
		}
	}
	return 0
}

func pvSetGDT(c *call) int64 {
	p, cpu := c.d.pv, c.pvCPU()
	entries := c.args[1]
	if entries > FirstReservedGDTEntry {
		return errno(xenabi.EINVAL)
	}
	n := (entries + 511) / 512
	frames := make([]uint64, n)
	for i := range frames {
		b, ok := c.arg(c.args[0]+8*uint64(i), 8)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		frames[i] = u64(b)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, f := range frames {
		if e := p.getType(cpu, f, ptSegDesc); e != 0 {
			for _, g := range frames[:i] {
				p.putType(cpu, g)
			}
			return errno(xenabi.EINVAL)
		}
	}
	for _, f := range cpu.gdtFrames {
		p.putType(cpu, f)
	}
	cpu.gdtFrames = frames
	for i := 0; i < gdtGuestFrames; i++ {
		e := p.zeroPage | pteP | pteA | pteNX
		if i < len(frames) {
			e = frames[i]<<12 | pteP | pteRW | pteA | pteD | pteNX
		}
		p.writePTE(cpu, p.l1GDT+uint64(8*(cpu.id*32+i)), e)
	}
	return 0
}

func pvUpdateDescriptor(c *call) int64 {
	p, cpu := c.d.pv, c.pvCPU()
	ma, d := c.args[0], c.args[1]
	if ma&7 != 0 {
		return errno(xenabi.EINVAL)
	}
	nd, ok := checkDescriptor(d)
	if !ok {
		return errno(xenabi.EINVAL)
	}
	mfn := ma >> 12
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.ram(mfn); !ok {
		return errno(xenabi.EINVAL)
	}
	pi := p.info(mfn)
	if pi.count == 0 || pi.typ != ptSegDesc {
		if e := p.getType(cpu, mfn, ptWritable); e != 0 {
			return errno(xenabi.EINVAL)
		}
		defer p.putType(cpu, mfn)
	}
	t := p.table(mfn)
	if t == nil {
		return errno(xenabi.EINVAL)
	}
	store64(t[ma&0xff8:], nd)
	return 0
}

func pvVMAssist(c *call) int64 {
	cmd, typ := c.args[0], c.args[1]
	if typ >= 64 || vmassistPV64&(uint64(1)<<typ) == 0 {
		return errno(xenabi.EINVAL)
	}
	p := c.d.pv
	p.mu.Lock()
	defer p.mu.Unlock()
	switch cmd {
	case 0:
		p.vmassist |= 1 << typ
	case 1:
		p.vmassist &^= 1 << typ
	default:
		return errno(xenabi.ENOSYS)
	}
	return 0
}

func pvSetSegmentBase(c *call) int64 {
	cpu := c.pvCPU()
	which, base := c.args[0], c.args[1]
	if which != 3 && !canonical(base) {
		return errno(xenabi.EINVAL)
	}
	switch which {
	case 0, 1, 2:
	case 3:
		return 0 // SEGBASE_GS_USER_SEL: only the null selector is modelled
	default:
		return errno(xenabi.EINVAL)
	}
	cpu.later(func(_ *kvmRegs, s *kvmSregs) error {
		switch which {
		case 0:
			s.FS.Base = base
		case 1:
			if cpu.kernel {
				cpu.gsInactive = base
			} else {
				s.GS.Base = base
			}
		case 2:
			if cpu.kernel {
				s.GS.Base = base
			} else {
				cpu.gsInactive = base
			}
		}
		return nil
	})
	return 0
}

func pvPhysdevOp(c *call) int64 {
	cpu := c.pvCPU()
	switch c.args[0] {
	case 6: // PHYSDEVOP_set_iopl
		b, ok := c.arg(c.args[1], 4)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		if u32(b) > 3 {
			return errno(xenabi.EINVAL)
		}
		cpu.iopl = uint8(u32(b))
		return 0
	case 7: // PHYSDEVOP_set_iobitmap
		b, ok := c.arg(c.args[1], 12)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		// As Xen's guest_handle_okay: the bitmap must be a guest
		// address (it is read through the guest's page tables later).
		if u32(b[8:]) > 65536 || !addrOK(u64(b)) {
			return errno(xenabi.EINVAL)
		}
		cpu.ioBitmap, cpu.ioBitmapPorts = u64(b), u32(b[8:])
		return 0
	}
	return errno(xenabi.ENOSYS)
}

// pvConsoleIO is CONSOLEIO as a release Xen answers an unprivileged
// domU: -EPERM (its output goes through the console ring, which is what
// the console shows). What the guest wrote is logged at debug level, so
// that a panic before its console ring is up can still be read.
func pvConsoleIO(c *call) int64 {
	if c.args[0] == xenabi.ConsoleioWrite {
		n := min(uint64(uint32(c.args[1])), 4096)
		b := make([]byte, n)
		if c.read(c.args[2], b) {
			c.d.log.Debug("console_io write refused", "domain", c.d.id, "text", string(b))
		}
	}
	return errno(xenabi.EPERM)
}

func pvXenVersion(c *call) int64 {
	if c.args[0] != xenabi.XenverGetFeatures {
		return xenVersion(c)
	}
	idx, ok := c.u32(c.args[1])
	if !ok {
		return errno(xenabi.EFAULT)
	}
	if idx != 0 {
		return errno(xenabi.EINVAL)
	}
	fi := xenabi.FeatureInfo{Idx: 0, Submap: PVFeatures}
	if !c.write(c.args[1], xenabi.Bytes(&fi)) {
		return errno(xenabi.EFAULT)
	}
	return 0
}

// iret_context flags.
const vgcfInSyscall = 1 << 8

func pvIret(c *call) int64 {
	p, cpu := c.d.pv, c.pvCPU()
	r, err := c.v.Regs()
	if err != nil {
		c.fail(err)
		return 0
	}
	var b [72]byte
	if !c.read(r.RSP, b[:]) {
		c.fail(cpu.crash("iret: frame at %#x unreadable", r.RSP))
		return 0
	}
	w := func(i int) uint64 { return binary.LittleEndian.Uint64(b[8*i:]) }
	rax, r11, rcx, flags, rip, cs, rflags, rsp, ss := w(0), w(1), w(2), w(3), w(4), w(5), w(6), w(7), w(8)
	cpu.later(func(r *kvmRegs, s *kvmSregs) error {
		if cs&3 == 3 && cpu.kernel {
			if cpu.uL4 == 0 {
				return cpu.crash("iret to user mode with no user page table")
			}
			p.toggle(cpu, s)
		}
		r.RIP, r.RSP = rip, rsp
		r.RFLAGS = rflags&flagsArch&^(flagIOPL|flagVM) | flagIF | 2
		if p.archIOPL() {
			cpu.iopl = uint8(rflags >> 12 & 3)
		}
		r.RAX = rax
		csSel, ssSel := uint16(cs)|3, uint16(ss)|3
		if flags&vgcfInSyscall != 0 {
			r.RCX, r.R11 = rip, r.RFLAGS
			if csSel != FlatUserCS32 {
				csSel = FlatKernelCS
			}
			ssSel = FlatKernelSS
		} else {
			r.RCX, r.R11 = rcx, r11
		}
		if rflags&flagIF != 0 {
			p.setMask(cpu, 0)
		} else {
			p.setMask(cpu, 1)
		}
		cs, ss, f := p.iretTarget(cpu, csSel, ssSel, rip)
		if f != nil {
			return p.iretFault(cpu, r, s, f)
		}
		s.CS, s.SS = cs, ss
		cpu.nmiMasked = false
		cpu.lastMsg = ""
		if p.d.trace != nil {
			p.d.trace.Info("iret", "dom", p.d.id, "vcpu", cpu.id, "to", map[bool]string{true: "kernel", false: "user"}[cpu.kernel],
				"rip", hex(rip), "cs", hex(csSel), "rsp", hex(rsp), "ss", hex(ssSel), "rflags", hex(r.RFLAGS),
				"in_syscall", flags&vgcfInSyscall != 0, "events_masked", rflags&flagIF == 0)
		}
		return nil
	})
	return int64(int32(rax))
}

// iretFault is Xen's final iretq faulting on a bad target (§4.7): the
// fault (#GP(selector), #GP(0) for a non-canonical RIP, #NP or #SS) is
// the guest's, at the iret's target, bounced to its trap table.
func (p *pvDomain) iretFault(cpu *pvCPU, r *kvmRegs, s *kvmSregs, f *iretFrameFault) error {
	s.CS, s.SS = flatSeg(FlatKernelCS), flatSeg(FlatKernelSS)
	if p.d.trace != nil {
		p.d.trace.Info("iret fault", "dom", p.d.id, "vcpu", cpu.id, "vector", f.vec, "error_code", hex(f.ec), "rip", hex(r.RIP))
	}
	ec := f.ec
	return p.bounceTrap(cpu, r, s, f.vec, &ec)
}

// memory_op subcommands the ring-3 model answers.
const (
	xenmemMaximumRAMPage     = 2
	xenmemCurrentReservation = 3
	xenmemMaximumReservation = 4
	xenmemMachphysMapping    = 12
	xenmemMemoryMap          = 9
	xenmemMaximumGPFN        = 14
)

func pvMemoryOp(c *call) int64 {
	d := c.d
	nr := d.frames.NrPages
	switch c.args[0] & memopCmdMask {
	case xenmemIncreaseReservation, xenmemDecreaseReservation, xenmemPopulatePhysmap:
		return pvReservation(c)
	case xenmemExchange:
		return pvExchange(c)
	case xenmemMaximumRAMPage:
		return int64(d.frames.Base + nr)
	case xenmemCurrentReservation, xenmemMaximumReservation, xenmemMaximumGPFN:
		b, ok := c.arg(c.args[1], 2)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		if dom := u16(b); dom != domidSelf && dom != d.id {
			return errno(xenabi.ESRCH)
		}
		switch c.args[0] & 0x3f {
		case xenmemCurrentReservation:
			d.pv.mu.Lock()
			defer d.pv.mu.Unlock()
			return int64(nr - uint64(len(d.pv.res.removed)))
		case xenmemMaximumReservation:
			return int64(nr + 256) // LIBXL_MAXMEM_CONSTANT
		}
		maxPFN := d.SharedInfo().Arch.Max_pfn
		if maxPFN == 0 {
			maxPFN = 1
		}
		return int64(maxPFN - 1)
	case xenmemMachphysMapping:
		var b [24]byte
		binary.LittleEndian.PutUint64(b[0:], MachToPhysVirt)
		binary.LittleEndian.PutUint64(b[8:], machToPhysVirtEnd)
		binary.LittleEndian.PutUint64(b[16:], (machToPhysVirtEnd-MachToPhysVirt)/8-1)
		if !c.write(c.args[1], b[:]) {
			return errno(xenabi.EFAULT)
		}
		return 0
	case xenmemMemoryMap:
		b, ok := c.arg(c.args[1], 16)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		n, buf := u32(b), u64(b[8:])
		if n > 0 {
			var e [20]byte
			binary.LittleEndian.PutUint64(e[8:], (nr+256)*4096) // libxl: maxmem
			binary.LittleEndian.PutUint32(e[16:], 1)            // E820_RAM
			if !c.write(buf, e[:]) {
				return errno(xenabi.EFAULT)
			}
			n = 1
		}
		binary.LittleEndian.PutUint32(b, n)
		if !c.write(c.args[1], b[:4]) {
			return errno(xenabi.EFAULT)
		}
		return 0
	}
	return errno(xenabi.ENOSYS)
}

// pvNMIOp is nmi_op: XENNMI_register_callback ({handler_address, pad})
// sets trap-table slot 2 as CALLBACKTYPE_nmi does, and
// XENNMI_unregister_callback clears it (do_nmi_op).
func pvNMIOp(c *call) int64 {
	cpu := c.pvCPU()
	switch c.args[0] {
	case 0:
		b, ok := c.arg(c.args[1], 16)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		return c.d.pv.registerCallback(cpu, cbNMI, 0, u64(b))
	case 1:
		cpu.traps[2] = trapInfo{}
		return 0
	}
	return errno(xenabi.ENOSYS)
}
