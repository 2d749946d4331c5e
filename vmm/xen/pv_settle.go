package xen

import (
	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/xenresume/xenresume/asm"
	"github.com/xenresume/xenresume/vmm/machine"
)

// settle is the ring-3 model's machine.VCPU.Settle: it brings a vCPU
// that is to stop for someone else (a pause of any kind, a debugger's
// stop) to a guest instruction boundary with the guest's own registers,
// or reports that the VMM's code in the guest's container must run
// first.
//
//   - In the write loop (a saved guest state): it must run to its end.
//   - At a trampoline's (or the write loop's) hlt, or before it: the
//     vCPU was kicked out between an exception's delivery and the hlt's
//     exit; it must run on to the hlt, whose exit puts the guest's
//     context back.
//   - Just past a hlt of the VMM's that made no HLT exit (a debugger's
//     single step stepped over it, as on PVM, where a step of the guest's
//     native code arrives as #DB through the IDT): it is handled as the
//     HLT exit would have been. (On PVM a stepped hlt also leaves a
//     spurious HLT exit for later, which is why a DomainTarget never
//     steps a ring-3 guest there.)
//   - At the guest's code: register changes still queued by an exit are
//     made (as beforeEntry makes them), and queued page-table writes
//     start the write loop. Event upcalls are left for beforeEntry, as
//     Xen delivers them only as a vCPU returns to the guest.
func (p *pvDomain) settle(v *machine.VCPU) (bool, error) {
	c := p.cpus[v.ID]
	for range 4 {
		s, err := v.Sregs()
		if err != nil {
			return false, err
		}
		r, err := v.Regs()
		if err != nil {
			return false, err
		}
		if s.CS.DPL != 3 {
			if !p.steppedHalt(c, r.RIP) {
				return false, nil
			}
			if err := p.halt(v); err != nil {
				return false, err
			}
			continue
		}
		if c.saved != nil {
			return false, nil
		}
		if len(c.pending) > 0 || c.syncCR3 || c.syncTS {
			if err := p.finishExit(v, c); err != nil {
				return false, err
			}
		}
		if len(c.ptq) > 0 {
			return false, p.startFlush(v, c)
		}
		return true, p.gdbSettle(v, c)
	}
	return false, c.crash("the vCPU does not settle in the VMM's code")
}

// steppedHalt reports whether rip is just past one of the VMM's hlts
// (a trampoline's, LSTAR's or the write loop's).
func (p *pvDomain) steppedHalt(c *pvCPU, rip uint64) bool {
	switch {
	case rip == c.flush+flushHalt, rip == c.lstar+1:
		return true
	case rip > c.trampVA && rip <= c.trampVA+256*asm.TrampolineSize:
		return (rip-c.trampVA-1)%asm.TrampolineSize == 0
	}
	return false
}

// completedState completes the pending exit (an I/O instruction KVM
// finishes at the next entry) and returns the registers as the guest will
// see them, for a handler that moves the guest. vCPU thread only.
func completedState(v *machine.VCPU) (*kvm.Regs, *kvm.Sregs, error) {
	if err := v.CompleteExit(); err != nil {
		return nil, nil, err
	}
	r, err := v.Regs()
	if err != nil {
		return nil, nil, err
	}
	s, err := v.Sregs()
	if err != nil {
		return nil, nil, err
	}
	return r, s, nil
}

// guestBoundState is completedState for a vCPU about to enter its guest
// (to bounce it, or arm a step): ok is false, with nothing completed,
// while the vCPU is in a trampoline, which exits before any guest code
// runs, and when an error is returned.
func guestBoundState(v *machine.VCPU) (r *kvm.Regs, s *kvm.Sregs, ok bool, err error) {
	s, err = v.Sregs()
	if err != nil {
		return nil, nil, false, err
	}
	if s.CS.DPL != 3 {
		return nil, nil, false, nil
	}
	r, s, err = completedState(v)
	if err != nil {
		return nil, nil, false, err
	}
	return r, s, true, nil
}

// finishExit completes the exit and makes the register changes queued for
// the vCPU (pending closures, CR3 and CR0.TS syncs): before an entry
// (beforeEntry) and before a park (settle).
func (p *pvDomain) finishExit(v *machine.VCPU, c *pvCPU) error {
	r, s, err := completedState(v)
	if err != nil {
		return err
	}
	todo := c.pending
	c.pending = nil
	for _, f := range todo {
		if err := f(r, s); err != nil {
			return err
		}
	}
	c.syncRegs(s)
	if err := v.SetRegsDirty(); err != nil {
		return err
	}
	return v.SetSregsDirty()
}
