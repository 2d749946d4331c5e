package xen

import (
	"encoding/binary"

	"github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/arch/x86/x86asm"

	"github.com/xenresume/xenresume/vmm/machine"
)

// Privileged-instruction emulation for #GP(0) (pv_emulate_privileged_op):
// what Xen admits for a 64-bit PV guest, with the guest kernel treated as
// CPL 0 (CPL 1 for I/O permission) and user mode as CPL 3. Anything else
// is the guest's #GP(0).

// MSRs the model answers.
const (
	msrAPICBase    = 0x1b
	msrEFER        = 0xc0000080
	msrFSBase      = 0xc0000100
	msrGSBase      = 0xc0000101
	msrShadowGS    = 0xc0000102
	msrPAT         = 0x277
	msrMiscEnable  = 0x1a0
	msrPlatformInf = 0xce
	msrSTAR        = 0xc0000081
	msrLSTAR       = 0xc0000082
	msrCSTAR       = 0xc0000083
	msrSFMASK      = 0xc0000084
	msrMiscFeat    = 0x140
	msrDebugCtl    = 0x1d9
	// xenPAT is XEN_MSR_PAT, an ABI.
	xenPAT = 0x0000050100070406
)

func (p *pvDomain) gpFault(v *machine.VCPU, c *pvCPU, r *kvm.Regs, s *kvm.Sregs) error {
	var code [15]byte
	n := 0
	for n < len(code) && p.readGuest(s, r.RIP+uint64(n), code[n:n+1]) == nil {
		n++
	}
	zero := uint64(0)
	inst, err := x86asm.Decode(code[:n], 64)
	if err == nil && c.kernel {
		if dr, toDR, gpr, ok := movDR(&inst); ok {
			return p.emulateMovDR(v, c, r, s, &inst, dr, toDR, gpr)
		}
		if inst.Op == x86asm.MOV && inst.Args[0] == x86asm.CR4 {
			if rp, _ := reg(r, regArg(inst.Args[1])); rp != nil {
				p.writeCR4(v, c, s, *rp)
				r.RIP += uint64(inst.Len)
				return nil
			}
		}
	}
	if err == nil && inst.Op == x86asm.XSETBV {
		return p.emulateXSETBV(v, c, r, s, &inst)
	}
	if err == nil && (inst.Op == x86asm.LCALL || inst.Op == x86asm.LJMP) {
		if sel, ok := p.farSelector(v, r, s, &inst); ok && sel&4 != 0 && c.ldtEnts <= uint64(sel>>3) {
			// A far transfer through an LDT selector beyond the LDT (or
			// with none): the hardware's #GP(selector), which this PVM
			// host reports as #GP(0) (XSA-298).
			ec := uint64(sel &^ 3)
			return p.bounceTrap(c, r, s, 13, &ec)
		}
	}
	if err != nil || !p.emulate(c, r, s, &inst) {
		return p.bounceTrap(c, r, s, 13, &zero)
	}
	r.RIP += uint64(inst.Len)
	return nil
}

// reg returns a pointer to the 64-bit register holding x86asm register
// reg, and its width in bytes.
func reg(r *kvm.Regs, x x86asm.Reg) (*uint64, int) {
	all := []*uint64{&r.RAX, &r.RCX, &r.RDX, &r.RBX, &r.RSP, &r.RBP, &r.RSI, &r.RDI,
		&r.R8, &r.R9, &r.R10, &r.R11, &r.R12, &r.R13, &r.R14, &r.R15}
	switch {
	case x >= x86asm.RAX && x <= x86asm.R15:
		return all[x-x86asm.RAX], 8
	case x >= x86asm.EAX && x <= x86asm.R15L:
		return all[x-x86asm.EAX], 4
	case x >= x86asm.AX && x <= x86asm.R15W:
		return all[x-x86asm.AX], 2
	case x >= x86asm.AL && x <= x86asm.BL:
		return all[x-x86asm.AL], 1
	}
	return nil, 0
}

func setReg(p *uint64, size int, v uint64) {
	switch size {
	case 8:
		*p = v
	case 4:
		*p = uint64(uint32(v))
	case 2:
		*p = *p&^0xffff | v&0xffff
	case 1:
		*p = *p&^0xff | v&0xff
	}
}

// ioAllowed is iopl_ok plus the guest's I/O bitmap (PHYSDEVOP_set_iobitmap).
func (p *pvDomain) ioAllowed(c *pvCPU, s *kvm.Sregs, port uint16, size int) bool {
	cpl := uint8(3)
	if c.kernel {
		cpl = 1
		if p.archIOPL() {
			cpl = 0
		}
	}
	if cpl <= c.iopl {
		return true
	}
	if uint32(port)+uint32(size) > c.ioBitmapPorts {
		return false
	}
	var b [2]byte
	if p.readKernel(c, s, c.ioBitmap+uint64(port/8), b[:]) != nil {
		return false
	}
	bits := uint16(b[0]) | uint16(b[1])<<8
	mask := uint16(1<<size-1) << (port % 8)
	return bits&mask == 0
}

func (p *pvDomain) emulate(c *pvCPU, r *kvm.Regs, s *kvm.Sregs, in *x86asm.Inst) bool {
	switch in.Op {
	case x86asm.CLI, x86asm.STI:
		return p.iopl(c)
	case x86asm.IN, x86asm.OUT:
		return p.portIO(c, r, s, in)
	case x86asm.WBINVD:
		return c.kernel
	}
	if !c.kernel {
		return false
	}
	switch in.Op {
	case x86asm.MOV:
		dst, src := in.Args[0], in.Args[1]
		if cr, ok := src.(x86asm.Reg); ok && cr >= x86asm.CR0 && cr <= x86asm.CR15 {
			rp, size := reg(r, dst.(x86asm.Reg))
			if rp == nil {
				return false
			}
			var v uint64
			switch cr {
			case x86asm.CR0:
				v = 0x80050033
				if c.ts {
					v |= 8
				}
			case x86asm.CR2:
				v = c.cr2
			case x86asm.CR3:
				v = c.kL4 << 12
			case x86asm.CR4:
				v = 0x620 | c.cr4
			default:
				return false
			}
			setReg(rp, size, v)
			return true
		}
		if cr, ok := dst.(x86asm.Reg); ok && cr >= x86asm.CR0 && cr <= x86asm.CR15 {
			rp, _ := reg(r, src.(x86asm.Reg))
			if rp == nil {
				return false
			}
			switch cr {
			case x86asm.CR0:
				if (*rp^0x80050033)&^8 != 0 {
					return false
				}
				c.ts = *rp&8 != 0
				if c.ts {
					s.CR0 |= 8
				} else {
					s.CR0 &^= 8
				}
				return true
			case x86asm.CR2:
				c.cr2 = *rp
				return true
			case x86asm.CR3:
				p.mu.Lock()
				defer p.mu.Unlock()
				mfn := *rp >> 12 & (pteAddr >> 12)
				if mfn == c.kL4 {
					p.flushTLB(c)
					return true
				}
				if p.getType(c, mfn, ptL4) != 0 {
					return false
				}
				p.kernelL4(c, mfn)
				old := c.kL4
				c.kL4 = mfn
				s.CR3 = mfn << 12
				p.putType(c, old)
				return true
			}
		}
		return false
	case x86asm.CLTS:
		c.ts = false
		s.CR0 &^= 8
		return true
	case x86asm.RDMSR:
		v, ok := p.rdmsr(c, s, uint32(r.RCX))
		if !ok {
			return false
		}
		r.RAX, r.RDX = v&0xffffffff, v>>32
		return true
	case x86asm.WRMSR:
		return p.wrmsr(c, s, uint32(r.RCX), r.RDX<<32|r.RAX&0xffffffff)
	}
	return false
}

func (p *pvDomain) iopl(c *pvCPU) bool {
	cpl := uint8(3)
	if c.kernel {
		cpl = 1
		if p.archIOPL() {
			cpl = 0
		}
	}
	return cpl <= c.iopl
}

// portIO emulates in/out the guest may make: reads see all ones and
// writes are dropped, as for a domU with no I/O resources.
func (p *pvDomain) portIO(c *pvCPU, r *kvm.Regs, s *kvm.Sregs, in *x86asm.Inst) bool {
	var port uint16
	var val x86asm.Arg
	if in.Op == x86asm.IN {
		val = in.Args[0]
		port = p.portArg(r, in.Args[1])
	} else {
		val = in.Args[1]
		port = p.portArg(r, in.Args[0])
	}
	vr, ok := val.(x86asm.Reg)
	if !ok {
		return false
	}
	rp, size := reg(r, vr)
	if rp == nil || !p.ioAllowed(c, s, port, size) {
		return false
	}
	if in.Op == x86asm.IN {
		setReg(rp, size, ^uint64(0))
	}
	return true
}

func (p *pvDomain) portArg(r *kvm.Regs, a x86asm.Arg) uint16 {
	switch a := a.(type) {
	case x86asm.Imm:
		return uint16(a)
	case x86asm.Reg:
		return uint16(r.RDX)
	}
	return 0
}

func (p *pvDomain) rdmsr(c *pvCPU, s *kvm.Sregs, msr uint32) (uint64, bool) {
	switch msr {
	case msrFSBase:
		return s.FS.Base, true
	case msrGSBase:
		return s.GS.Base, true
	case msrShadowGS:
		return c.gsInactive, true
	case msrEFER:
		return 0xd01, true // SCE LME LMA NXE, as the host's
	case msrAPICBase:
		if c.id == 0 {
			return 0xfee00900, true
		}
		return 0xfee00800, true
	case msrPAT:
		return xenPAT, true
	case msrPlatformInf, msrMiscFeat, msrDebugCtl:
		return 0, true
	}
	if msr>>16 == 0x4000 {
		return 0, msr == 0x40000000
	}
	// No #GP handler yet: Xen fakes a read of 0 (for host-readable MSRs).
	return 0, c.traps[13].addr == 0
}

func (p *pvDomain) wrmsr(c *pvCPU, s *kvm.Sregs, msr uint32, v uint64) bool {
	switch msr {
	case msrFSBase, msrGSBase, msrShadowGS:
		if !canonical(v) {
			return false
		}
		switch msr {
		case msrFSBase:
			s.FS.Base = v
		case msrGSBase:
			s.GS.Base = v
		default:
			c.gsInactive = v
		}
		return true
	case msrEFER:
		return v == 0xd01
	case msrMiscFeat, msrDebugCtl:
		return v == 0
	}
	return false
}

// m2pRead emulates a guest read of the read-only M2P that faulted
// although the M2P is mapped: on a PVM host the guest's CPL-3 code runs
// natively in host user mode, where the upper half of the address space
// (Xen's range) is the host's, so every such read faults. On other hosts
// the hardware reads the M2P and this never runs. Only plain loads
// (mov, movzx, movsx to a register) are emulated; it reports whether it
// did.
func (p *pvDomain) m2pRead(c *pvCPU, r *kvm.Regs, s *kvm.Sregs, ec uint64) (bool, error) {
	va := s.CR2
	if va < MachToPhysVirt || va >= machToPhysVirtEnd || ec&(2|16) != 0 {
		return false, nil
	}
	var code [15]byte
	n := 0
	for n < len(code) && p.readGuest(s, r.RIP+uint64(n), code[n:n+1]) == nil {
		n++
	}
	inst, err := x86asm.Decode(code[:n], 64)
	if err != nil || len(inst.Args) < 2 {
		return false, nil
	}
	dst, ok := inst.Args[0].(x86asm.Reg)
	if _, isMem := inst.Args[1].(x86asm.Mem); !ok || !isMem {
		return false, nil
	}
	size := inst.MemBytes
	if size != 1 && size != 2 && size != 4 && size != 8 {
		return false, nil
	}
	b := make([]byte, 8)
	if err := p.readGuest(s, va, b[:size]); err != nil {
		return false, nil
	}
	v := binary.LittleEndian.Uint64(b)
	rp, rsize := reg(r, dst)
	if rp == nil {
		return false, nil
	}
	switch inst.Op {
	case x86asm.MOV, x86asm.MOVZX:
	case x86asm.MOVSX, x86asm.MOVSXD:
		sh := 64 - 8*uint(size)
		v = uint64(int64(v<<sh) >> sh)
	default:
		return false, nil
	}
	setReg(rp, rsize, v)
	r.RIP += uint64(inst.Len)
	return true, nil
}

func regArg(a x86asm.Arg) x86asm.Reg {
	r, _ := a.(x86asm.Reg)
	return r
}

// movDR recognises mov to or from a debug register: the register's
// number, the direction and the general register.
func movDR(in *x86asm.Inst) (dr int, toDR bool, gpr x86asm.Reg, ok bool) {
	if in.Op != x86asm.MOV {
		return 0, false, 0, false
	}
	a, b := regArg(in.Args[0]), regArg(in.Args[1])
	switch {
	case a >= x86asm.DR0 && a <= x86asm.DR7:
		return int(a - x86asm.DR0), true, b, b != 0
	case b >= x86asm.DR0 && b <= x86asm.DR7:
		return int(b - x86asm.DR0), false, a, a != 0
	}
	return 0, false, 0, false
}

// emulateMovDR is mov to or from %drN in guest kernel mode, with
// set_debugreg's and get_debugreg's rules: -ENODEV becomes #UD, any other
// error #GP(0).
func (p *pvDomain) emulateMovDR(v *machine.VCPU, c *pvCPU, r *kvm.Regs, s *kvm.Sregs, in *x86asm.Inst, dr int, toDR bool, gpr x86asm.Reg) error {
	rp, _ := reg(r, gpr)
	if rp == nil {
		zero := uint64(0)
		return p.bounceTrap(c, r, s, 13, &zero)
	}
	var e int64
	if toDR {
		e = p.setDebugreg(v, c, dr, *rp)
	} else {
		var val uint64
		if val, e = c.getDebugreg(dr); e == 0 {
			*rp = val
		}
	}
	switch e {
	case 0:
		r.RIP += uint64(in.Len)
		return nil
	case errno(eNODEV):
		return p.bounceTrap(c, r, s, 6, nil)
	}
	zero := uint64(0)
	return p.bounceTrap(c, r, s, 13, &zero)
}

// writeCR4 is a write of the guest's virtual CR4 (pv_make_cr4): of the
// bits a guest controls (TSD, DE, FSGSBASE, OSXSAVE), those its CPUID
// policy has are kept and the rest silently dropped, as on Xen; the real
// CR4 gets FSGSBASE and TSD when the guest set them.
func (p *pvDomain) writeCR4(v *machine.VCPU, c *pvCPU, s *kvm.Sregs, val uint64) {
	allowed := uint64(cr4TSD | cr4DE)
	if _, ebx, _, _ := v.CPUID(7, 0); ebx&1 != 0 {
		allowed |= cr4FSGS
	}
	if _, _, ecx, _ := v.CPUID(1, 0); ecx&(1<<26) != 0 {
		allowed |= cr4OSXSAVE
	}
	c.cr4 = val & allowed
	s.CR4 = s.CR4&^cr4Real | c.cr4&cr4Real
}

// ssIsGP reports whether a #SS(0) the guest's 64-bit code took is, on
// the hardware Xen runs on, a #GP(0): in 64-bit mode the ES, CS, SS and
// DS overrides are ignored, so a non-canonical access faults #SS only
// through an %rsp or %rbp base or an implicit stack access. This PVM host
// raises #SS for an explicit %ss override with any base (measured with
// XTF memop-seg), which the model corrects.
func (p *pvDomain) ssIsGP(r *kvm.Regs, s *kvm.Sregs) bool {
	if s.CS.L == 0 {
		return false
	}
	var code [15]byte
	n := 0
	for n < len(code) && p.readGuest(s, r.RIP+uint64(n), code[n:n+1]) == nil {
		n++
	}
	in, err := x86asm.Decode(code[:n], 64)
	if err != nil {
		return false
	}
	switch in.Op {
	case x86asm.PUSH, x86asm.POP, x86asm.CALL, x86asm.RET, x86asm.ENTER, x86asm.LEAVE,
		x86asm.PUSHF, x86asm.POPF, x86asm.IRET, x86asm.IRETQ, x86asm.LRET:
		return false
	}
	for _, a := range in.Args {
		if m, ok := a.(x86asm.Mem); ok {
			switch m.Base {
			case x86asm.RSP, x86asm.RBP, x86asm.ESP, x86asm.EBP:
				return false
			}
			return m.Segment == x86asm.SS || m.Segment == 0
		}
	}
	return false
}

// farSelector reads the selector of an indirect far call or jump's
// m16:32 or m16:64 operand (AMD ignores REX.W here, so it is m16:32
// there whatever the prefix).
func (p *pvDomain) farSelector(v *machine.VCPU, r *kvm.Regs, s *kvm.Sregs, in *x86asm.Inst) (uint16, bool) {
	m, ok := in.Args[0].(x86asm.Mem)
	if !ok || m.Segment == x86asm.FS || m.Segment == x86asm.GS {
		return 0, false
	}
	var base, index uint64
	if m.Base == x86asm.RIP {
		base = r.RIP + uint64(in.Len)
	} else if m.Base != 0 {
		rp, size := reg(r, m.Base)
		if rp == nil || size != 8 {
			return 0, false
		}
		base = *rp
	}
	if m.Index != 0 {
		rp, size := reg(r, m.Index)
		if rp == nil || size != 8 {
			return 0, false
		}
		index = *rp * uint64(m.Scale)
	}
	off := uint64(4)
	if _, ebx, _, _ := v.CPUID(0, 0); in.MemBytes == 10 && ebx != 0x68747541 { // "Auth"
		off = 8
	}
	var b [2]byte
	if p.readGuest(s, base+index+uint64(m.Disp)+off, b[:]) != nil {
		return 0, false
	}
	return uint16(b[0]) | uint16(b[1])<<8, true
}

// XCR0 feature bits (X86_XCR0_*) that valid_xcr0 relates.
const (
	xcr0FP       = 1 << 0
	xcr0SSE      = 1 << 1
	xcr0YMM      = 1 << 2
	xcr0BNDREGS  = 1 << 3
	xcr0BNDCSR   = 1 << 4
	xcr0OPMASK   = 1 << 5
	xcr0ZMM      = 1 << 6
	xcr0HIZMM    = 1 << 7
	xcr0TILECFG  = 1 << 17
	xcr0TILEDATA = 1 << 18
)

// validXCR0 is Xen's valid_xcr0: x87 always on; YMM needs SSE; the three
// AVX-512 components need YMM and come together; so do the two MPX
// components and the two AMX ones.
func validXCR0(x uint64) bool {
	const avx512 = xcr0OPMASK | xcr0ZMM | xcr0HIZMM
	switch {
	case x&xcr0FP == 0:
		return false
	case x&xcr0YMM != 0 && x&xcr0SSE == 0:
		return false
	case x&avx512 != 0 && (x&xcr0YMM == 0 || x&avx512 != avx512):
		return false
	case (x&xcr0BNDREGS == 0) != (x&xcr0BNDCSR == 0):
		return false
	case (x&xcr0TILECFG == 0) != (x&xcr0TILEDATA == 0):
		return false
	}
	return true
}

// xsetbvFault is the fault Xen's emulation of xsetbv raises for a PV
// guest (x86_emulate's 0f 01 d1, x86emul_write_xcr, handle_xsetbv), 0 for
// none: #UD with a 66, f2 or f3 prefix or with the guest's CR4.OSXSAVE
// clear; #GP(0) from guest user mode (not ring 0 to the emulator), for an
// XCR other than 0 (%ecx), or for a value valid_xcr0 refuses or with
// components beyond max, the guest's CPUID leaf 0xd.
func xsetbvFault(c *pvCPU, in *x86asm.Inst, ecx uint32, val, max uint64) uint64 {
	for _, pfx := range in.Prefix {
		switch pfx & 0xff { // the prefix byte, without x86asm's flags
		case 0x66, 0xf2, 0xf3:
			return 6
		}
	}
	switch {
	case c.cr4&cr4OSXSAVE == 0:
		return 6
	case !c.kernel, ecx != 0, !validXCR0(val), val&^max != 0:
		return 13
	}
	return 0
}

// emulateXSETBV emulates xsetbv in the guest kernel as Xen does, loading
// the new XCR0 into the vCPU (set_xcr0), or bounces the fault it raises.
func (p *pvDomain) emulateXSETBV(v *machine.VCPU, c *pvCPU, r *kvm.Regs, s *kvm.Sregs, in *x86asm.Inst) error {
	val := r.RDX<<32 | r.RAX&0xffffffff
	eax, _, _, edx := v.CPUID(0xd, 0)
	switch vec := xsetbvFault(c, in, uint32(r.RCX), val, uint64(edx)<<32|uint64(eax)); vec {
	case 6:
		return p.bounceTrap(c, r, s, 6, nil)
	case 13:
		zero := uint64(0)
		return p.bounceTrap(c, r, s, 13, &zero)
	}
	if err := v.SetXCR0(val); err != nil {
		// valid_xcr0 and the CPUID bound passed, so KVM should take it:
		// Xen crashes the domain when the hardware does not.
		return c.crash("xsetbv: %v", err)
	}
	r.RIP += uint64(in.Len)
	return nil
}
