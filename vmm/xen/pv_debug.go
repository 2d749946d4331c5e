package xen

import (
	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// Debug registers in the ring-3 model (set_debugreg and get_debugreg in
// xen/arch/x86/pv/misc-hypercalls.c, and the mov %drN emulation of
// pv_emulate_privileged_op): the guest's values are kept per vCPU with
// Xen's rules, and the breakpoints they describe are loaded into the
// vCPU's real debug registers (KVM_SET_DEBUGREGS), so that a data or
// instruction breakpoint raises #DB in the guest as on Xen. An I/O
// breakpoint is kept in the DR7 the guest reads back but never loaded
// (Xen's dr7_emul). No address the guest can load lies in Xen's range,
// so a breakpoint never fires on the VMM's own accesses; the one #DB the
// VMM can take at CPL 0 (a MovSS-deferred #DB at the syscall entry) is
// dropped, as Xen drops a #DB taken in hypervisor context.

// eNODEV is Xen's ENODEV (errno.h), which vmm/xenabi does not name.
const eNODEV = 19

// Debug register bits (x86-defns.h).
const (
	dr6Default = 0xffff0ff0 // X86_DR6_DEFAULT
	dr6Zeros   = 0x00001000 // bit 12 reads as zero
	dr7Default = 0x00000400 // X86_DR7_DEFAULT
	dr7Zeros   = 0x0000d800 // bits 11, 12, 14 and 15 read as zero
	dr7GD      = 1 << 13
	dr7Enables = 0xff // L0 G0 ... L3 G3
	cr4DE      = 1 << 3
	cr4TSD     = 1 << 2
	cr4FSGS    = 1 << 16
	cr4OSXSAVE = 1 << 18
	// cr4Real are the guest's CR4 bits the vCPU's CR4 follows
	// (pv_make_cr4): with OSXSAVE, KVM loads the guest's XCR0 and CPUID
	// reports OSXSAVE as Xen's guest_cpuid does from the guest's CR4.
	cr4Real = cr4FSGS | cr4TSD | cr4OSXSAVE
)

// dr7IOEnables returns the L/G enable bits of DR7's I/O breakpoints
// (R/W = 10b), which only the emulator may act on.
func dr7IOEnables(dr7 uint64) uint64 {
	var m uint64
	for i := 0; i < 4; i++ {
		if dr7>>(16+4*i)&3 == 2 {
			m |= 3 << (2 * i)
		}
	}
	return m
}

// setDebugreg is Xen's set_debugreg for vCPU c: 0 or a negative errno.
func (p *pvDomain) setDebugreg(v debugRegsCPU, c *pvCPU, reg int, val uint64) int64 {
	switch reg {
	case 0, 1, 2, 3:
		if !addrOK(val) {
			return errno(xenabi.EPERM)
		}
		c.dr[reg] = val
	case 4, 6:
		if reg == 4 && c.cr4&cr4DE != 0 {
			return errno(eNODEV)
		}
		if val>>32 != 0 {
			return errno(xenabi.EINVAL)
		}
		c.dr[6] = (val | dr6Default) &^ dr6Zeros
	case 5, 7:
		if reg == 5 && c.cr4&cr4DE != 0 {
			return errno(eNODEV)
		}
		if val>>32 != 0 {
			return errno(xenabi.EINVAL)
		}
		if val&dr7GD != 0 {
			return errno(xenabi.EPERM)
		}
		if dr7IOEnables(val) != 0 && c.cr4&cr4DE == 0 {
			return errno(xenabi.EPERM)
		}
		c.dr[7] = (val | dr7Default) &^ dr7Zeros
	default:
		return errno(eNODEV)
	}
	if err := p.loadDebugRegs(v, c); err != nil {
		return errno(xenabi.EIO)
	}
	return 0
}

// getDebugreg is Xen's get_debugreg: the value, or false with the errno.
func (c *pvCPU) getDebugreg(reg int) (uint64, int64) {
	switch reg {
	case 0, 1, 2, 3:
		return c.dr[reg], 0
	case 4, 6:
		if reg == 4 && c.cr4&cr4DE != 0 {
			return 0, errno(eNODEV)
		}
		return c.dr[6], 0
	case 5, 7:
		if reg == 5 && c.cr4&cr4DE != 0 {
			return 0, errno(eNODEV)
		}
		return c.dr[7], 0
	}
	return 0, errno(eNODEV)
}

// debugRegsCPU is a vCPU whose real debug registers can be loaded;
// *machine.VCPU implements it, the handler tests' fake does not.
type debugRegsCPU interface {
	SetDebugRegs(r machine.DebugRegs) error
	DebugRegs() (machine.DebugRegs, error)
}

// loadDebugRegs loads the guest's breakpoints into the vCPU: DR0-3 and
// DR7 without its I/O breakpoints; DR6 stays the hardware's default, its
// bits merged into the guest's on each #DB.
func (p *pvDomain) loadDebugRegs(v debugRegsCPU, c *pvCPU) error {
	if v == nil {
		return nil
	}
	dr7 := c.dr[7] &^ dr7IOEnables(c.dr[7])
	if dr7&dr7Enables == 0 && !c.drLoaded {
		return nil // nothing armed now or before: skip the ioctl
	}
	c.drLoaded = dr7&dr7Enables != 0
	return v.SetDebugRegs(machine.DebugRegs{DR: [4]uint64(c.dr[:4]), DR6: dr6Default, DR7: dr7})
}

// debugTrap is #DB from the guest: the hardware's DR6 bits are merged into
// the guest's (x86_merge_dr6) and the hardware's reset, then #DB bounces.
func (p *pvDomain) debugTrap(v *machine.VCPU, c *pvCPU, r *kvm.Regs, s *kvm.Sregs) error {
	if hw, err := v.DebugRegs(); err == nil {
		hit := hw.DR6 ^ dr6Default
		c.dr[6] = c.dr[6]&^0xf | hit&0xf // B0-B3 are replaced
		c.dr[6] |= hit &^ 0xf & 0xe000   // BD BS BT accumulate
		c.dr[6] = (c.dr[6] | dr6Default) &^ dr6Zeros
		hw.DR6 = dr6Default
		if err := v.SetDebugRegs(hw); err != nil {
			return err
		}
	}
	return p.bounceTrap(c, r, s, 1, nil)
}

func pvSetDebugreg(c *call) int64 {
	p, cpu := c.d.pv, c.pvCPU()
	dv, _ := c.v.(debugRegsCPU)
	return p.setDebugreg(dv, cpu, int(min(c.args[0], 16)), c.args[1])
}

func pvGetDebugreg(c *call) int64 {
	cpu := c.pvCPU()
	v, e := cpu.getDebugreg(int(min(c.args[0], 16)))
	if e != 0 {
		return e
	}
	return c.ret64(v)
}

// ret64 returns a hypercall result wider than the trap's 32 bits (an
// unsigned long, such as get_debugreg's): the trap delivers the low half,
// and the full value is written into %rax before the guest runs again,
// past the stub's cltq when the call came through the hypercall page.
func (c *call) ret64(val uint64) int64 {
	if int64(val) == int64(int32(val)) {
		return int64(int32(val))
	}
	cpu := c.pvCPU()
	viaPage := !cpu.inSyscall
	cpu.later(func(r *kvmRegs, s *kvmSregs) error {
		r.RAX = val
		if viaPage {
			var b [2]byte
			if c.d.pv.readGuest(s, r.RIP, b[:]) == nil && b == [2]byte{0x48, 0x98} {
				r.RIP += 2 // the stub's cltq would truncate it
			}
		}
		return nil
	})
	return int64(int32(val))
}
