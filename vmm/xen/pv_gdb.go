package xen

import (
	"sync/atomic"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/kvmext"
	"github.com/xenresume/xenresume/vmm/machine"
)

// A debugger in the ring-3 model. Xen's own debugger interface for PV
// guests (gdbsx, XEN_DOMCTL_gdbsx_*) traps the guest's int3 and single
// step in the hypervisor before they become the guest's exceptions; the
// ring-3 model does the same where every exception of the guest arrives:
// the VMM's IDT trampolines (trap). So breakpoints and single-step work
// without the host's guest debugging (KVM_SET_GUEST_DEBUG), which a
// PVM host does not give native ring-3 code:
//
//   - A breakpoint is an int3 the debugger wrote into guest memory. Its
//     #BP reaches trap; if Debugger.Breakpoint claims the int3's address,
//     the vCPU's Debug handler is told (exception 3 at the int3) instead of
//     the guest's trap table. Any other int3 is the guest's, as on Xen.
//   - A single step sets RFLAGS.TF as the vCPU enters its guest (after
//     any event upcall: a step may stop in the upcall's handler, as a
//     hardware step stops in an interrupt's); the #DB with DR6.BS that
//     follows the instruction is the debugger's. Whenever the guest's state is
//     taken from a trap frame while a step is armed, the VMM's TF is
//     removed first, so no bounce frame, iret or %r11 the guest sees ever
//     carries it. An instruction that faults (or a hypercall that bounces)
//     ends in its handler: the step then stops after the handler's first
//     instruction rather than before it.
//
// Hardware breakpoints and watchpoints stay the guest's own (set_debugreg):
// gdb watches by single-stepping (its software watchpoints).

// Debugger is what an attached debugger asks of a ring-3 domain.
type Debugger struct {
	// Breakpoint reports whether the int3 at guest-virtual addr is the
	// debugger's. It runs on a vCPU's thread and must not block.
	Breakpoint func(addr uint64) bool
}

// gdbState is the debugger's state in a ring-3 domain.
type gdbState struct {
	dbg   atomic.Pointer[Debugger]
	step  [MaxPVVCPUs]atomic.Bool // a step is armed
	ownTF [MaxPVVCPUs]bool        // TF is set by the VMM (vCPU thread only)
}

// SetDebugger attaches a debugger to a ring-3 domain (nil detaches it);
// the vCPUs' Debug handlers receive its stops. It does nothing in a
// domain that is not in the ring-3 model.
func (d *Domain) SetDebugger(dbg *Debugger) {
	if d.pv != nil {
		d.pv.gdb.dbg.Store(dbg)
	}
}

// DebugStep arms (or disarms) a single step of vCPU id of a ring-3
// domain: its next guest instruction is followed by a debug stop. Any
// goroutine may call it; it takes effect at the vCPU's next entry.
func (d *Domain) DebugStep(id int, on bool) {
	if d.pv != nil && id >= 0 && id < len(d.pv.cpus) {
		d.pv.gdb.step[id].Store(on)
	}
}

// gdbFlags returns the RFLAGS of a trap frame without the VMM's TF.
func (p *pvDomain) gdbFlags(c *pvCPU, rflags uint64) uint64 {
	if c.id < MaxPVVCPUs && p.gdb.ownTF[c.id] {
		rflags &^= flagTF
	}
	return rflags
}

// gdbTrap runs for every vector the guest takes: it gives a #BP or #DB
// that is the debugger's to the vCPU's Debug handler, and swallows the
// #DB of a step the debugger no longer wants. True when it took the
// vector. The guest's registers are the interrupted context's (gdbFlags
// took the VMM's TF out of them).
func (p *pvDomain) gdbTrap(v *machine.VCPU, c *pvCPU, r *kvm.Regs, vec uint64) (bool, error) {
	if c.id >= MaxPVVCPUs {
		return false, nil
	}
	own := p.gdb.ownTF[c.id]
	p.gdb.ownTF[c.id] = false
	if vec != 1 && vec != 3 {
		return false, nil
	}
	dbg := p.gdb.dbg.Load()
	var e kvmext.DebugExit
	switch vec {
	case 3:
		if dbg == nil || v.Debug == nil || dbg.Breakpoint == nil || !dbg.Breakpoint(r.RIP-1) {
			return false, nil
		}
		p.gdb.step[c.id].Store(false)
		e = kvmext.DebugExit{Exception: 3, PC: r.RIP - 1}
	case 1:
		armed := p.gdb.step[c.id].Load()
		if !own && !armed {
			return false, nil
		}
		hw, err := v.DebugRegs()
		if err != nil {
			return false, err
		}
		if hw.DR6&machine.DR6BS == 0 {
			return false, nil // the guest's own breakpoint
		}
		hw.DR6 = dr6Default
		if err := v.SetDebugRegs(hw); err != nil {
			return false, err
		}
		if !armed || dbg == nil || v.Debug == nil {
			return own, nil // the VMM's step, no longer wanted
		}
		p.gdb.step[c.id].Store(false)
		e = kvmext.DebugExit{Exception: 1, PC: r.RIP, DR6: dr6Default | machine.DR6BS}
	}
	if p.d.trace != nil {
		p.d.trace.Info("debugger stop", "dom", p.d.id, "vcpu", c.id, "vector", vec, "rip", hex(e.PC))
	}
	return true, v.Debug(v, &e)
}

// gdbArmStep sets TF for an armed step as the vCPU enters its guest
// (after any event upcall, so that a step may stop in the upcall's
// handler, as a hardware step does in an interrupt's).
func (p *pvDomain) gdbArmStep(v *machine.VCPU, c *pvCPU) error {
	if c.id >= MaxPVVCPUs || !p.gdb.step[c.id].Load() {
		return nil
	}
	r, _, ok, err := guestBoundState(v)
	if !ok {
		return err
	}
	if r.RFLAGS&flagTF == 0 {
		r.RFLAGS |= flagTF
		p.gdb.ownTF[c.id] = true
		return v.SetRegsDirty()
	}
	return nil
}

// gdbSettle takes the VMM's TF out of the registers of a vCPU that stops
// for someone else (settle) or is about to have an upcall delivered, so
// that no saved or inspected state and no bounce frame carries it; an
// armed step sets it again as the vCPU enters its guest.
func (p *pvDomain) gdbSettle(v *machine.VCPU, c *pvCPU) error {
	if c.id >= MaxPVVCPUs || !p.gdb.ownTF[c.id] {
		return nil
	}
	p.gdb.ownTF[c.id] = false
	r, _, err := completedState(v)
	if err != nil {
		return err
	}
	r.RFLAGS &^= flagTF
	return v.SetRegsDirty()
}
