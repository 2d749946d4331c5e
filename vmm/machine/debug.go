package machine

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/kvmext"
)

// Guest debug control flags, KVM_SET_GUEST_DEBUG's KVM_GUESTDBG_*: what
// makes a vCPU exit to the VMM with KVM_EXIT_DEBUG (handled by VCPU.Debug)
// instead of delivering #DB or #BP to the guest.
const (
	// DebugEnable turns guest debugging on; without it the others mean
	// nothing and the guest owns its debug registers.
	DebugEnable = kvmext.GuestDbgEnable
	// DebugSingleStep exits after every instruction (#DB, DR6.BS).
	DebugSingleStep = kvmext.GuestDbgSingleStep
	// DebugSoftwareBP makes every #BP (int3) exit, with the PC of the
	// int3.
	DebugSoftwareBP = kvmext.GuestDbgUseSWBP
	// DebugHardwareBP loads DebugRegs[0:4] and [7] into DR0-DR3 and DR7
	// while the guest runs; their #DB exits, DR6 saying which.
	DebugHardwareBP = kvmext.GuestDbgUseHWBP
)

// Debug register indexes in DebugRegs, as KVM numbers them.
const (
	DR6 = 6
	DR7 = 7
)

// DR6 and DR7 bits.
const (
	// DR6BS: the #DB was a single step.
	DR6BS = 1 << 14
	// DR7GE is "global exact", which Intel recommends with any enabled
	// breakpoint.
	DR7GE = 1 << 9
)

// GuestDebug is the argument of SetGuestDebug: the control flags and the
// debug registers, DR0-DR3 at 0-3, DR6 and DR7 at 6 and 7 (4 and 5 unused).
type GuestDebug struct {
	Control   uint32
	DebugRegs [8]uint64
}

// SetGuestDebug sets the vCPU's guest debugging (KVM_SET_GUEST_DEBUG): the
// control flags (Debug*) and, with DebugHardwareBP, the debug registers.
// A zero GuestDebug turns it off. Like the other ioctl methods it may be
// called from any goroutine while the vCPU is not running (created,
// parked, ended), and from the vCPU's own thread (an exit handler); it
// fails with a *StateError wrapping ErrNotParked from elsewhere while the
// vCPU runs, or ErrClosed once the machine is closed.
func (v *VCPU) SetGuestDebug(g GuestDebug) error {
	return v.ioctl("KVM_SET_GUEST_DEBUG", func(fd uintptr) error {
		return kvmext.SetGuestDebug(fd, g.Control, g.DebugRegs)
	})
}

// TrapEntry arms (or disarms) a stop before the vCPU next enters the
// guest: its thread then calls Debug, with exception 1 and the PC where
// the guest would resume, instead of running guest code, once the vCPU is
// at a guest instruction boundary (see Settle), and disarms it. Unlike an
// instruction breakpoint or a single step it needs nothing of the host's
// guest debugging, so it stops a guest before its first instruction after
// a resume on every host and in every guest model. Any goroutine may call
// it; it does nothing without a Debug handler.
func (v *VCPU) TrapEntry(on bool) { v.entryTrap.Store(on) }

// trapEntry reports the armed entry trap to Debug, on the vCPU's thread
// before an entry; false while the vCPU is not at a guest boundary.
func (v *VCPU) trapEntry() (bool, error) {
	atGuest, err := v.settle()
	if err != nil || !atGuest {
		return false, err
	}
	if !v.entryTrap.CompareAndSwap(true, false) {
		return false, nil
	}
	e := kvmext.DebugExit{Exception: 1, PC: v.run.Sync.Regs.RIP}
	if err := v.Debug(v, &e); err != nil {
		return false, v.crash(err.Error())
	}
	return true, nil
}

// PagingParked reads the paging registers of a vCPU that is not running (one
// KVM_GET_SREGS), for walking its page tables from another goroutine: a
// debugger reading guest-virtual memory of a stopped vCPU. On the vCPU's
// thread use Paging.
func (v *VCPU) PagingParked() (Paging, error) {
	s, err := v.GetSregs()
	if err != nil {
		return Paging{}, err
	}
	return Paging{CR0: s.CR0, CR3: s.CR3, CR4: s.CR4, EFER: s.EFER}, nil
}

// RequestPause asks this vCPU alone to park and returns at once (see
// Machine.RequestPause). An exit handler calls it on its own vCPU to park
// it when the handler returns.
func (v *VCPU) RequestPause() { v.requestPause() }

// Pause parks this vCPU alone and waits until it is parked (or ended, or
// never started). It fails with ErrUnpaused if an Unpause withdrew the
// request first, and with ErrWaitOnOwnThread on the vCPU's own thread.
func (v *VCPU) Pause(ctx context.Context) error {
	v.requestPause()
	if err := v.waitParked(ctx); err != nil {
		return fmt.Errorf("pause vCPU %d: %w", v.ID, err)
	}
	return nil
}

// Unpause lets this vCPU alone run again (see Machine.Unpause), for a
// debugger that steps one vCPU while the others stay parked.
func (v *VCPU) Unpause() { v.unpause() }

// DebugSupport is what KVM's guest debugging does on this host, as
// ProbeGuestDebug measured it on a guest that runs in ring 0 (real mode):
// on hosts where such a guest is emulated (PVM), some of it does not.
type DebugSupport struct {
	// SoftwareBP: an int3 with DebugSoftwareBP exits with exception 3
	// (on PVM the emulator fails on it instead: a KVM internal error).
	SoftwareBP bool
	// HardwareBP: an instruction breakpoint in DR0 exits with
	// exception 1 before the instruction runs.
	HardwareBP bool
	// Watchpoint: a write breakpoint in DR0 exits with exception 1 after
	// the write (on PVM the emulator does not check data breakpoints).
	Watchpoint bool
	// SingleStep: DebugSingleStep exits after one instruction.
	SingleStep bool
}

var probed struct {
	sync.Once
	s   DebugSupport
	err error
}

// ProbeGuestDebug measures once per process, on throwaway one-vCPU
// machines, which of KVM's guest-debug exits this host delivers, so that a
// debugger offers only what works instead of crashing a guest (an int3
// that KVM cannot deliver ends the vCPU). It costs a few milliseconds the
// first time.
func ProbeGuestDebug() (DebugSupport, error) {
	probed.Do(func() {
		var s DebugSupport
		var err error
		try := func(ok *bool, code []byte, g GuestDebug, want func(e *kvmext.DebugExit) bool) {
			if err != nil {
				return
			}
			*ok, err = probeOnce(code, g, want)
		}
		try(&s.SoftwareBP, []byte{0xcc, 0xf4}, GuestDebug{Control: DebugEnable | DebugSoftwareBP},
			func(e *kvmext.DebugExit) bool { return e.Exception == 3 && e.PC == 0x1000 })
		try(&s.HardwareBP, []byte{0x90, 0xf4}, GuestDebug{Control: DebugEnable | DebugHardwareBP,
			DebugRegs: [8]uint64{0x1001, 0, 0, 0, 0, 0, 0, 1 | DR7GE}},
			func(e *kvmext.DebugExit) bool { return e.Exception == 1 && e.PC == 0x1001 && e.DR6&1 != 0 })
		// mov %al, 0x2000; hlt: a one-byte write breakpoint on 0x2000.
		try(&s.Watchpoint, []byte{0xa2, 0x00, 0x20, 0xf4}, GuestDebug{Control: DebugEnable | DebugHardwareBP,
			DebugRegs: [8]uint64{0x2000, 0, 0, 0, 0, 0, 0, 1 | DR7GE | 1<<16}},
			func(e *kvmext.DebugExit) bool { return e.Exception == 1 && e.DR6&1 != 0 })
		try(&s.SingleStep, []byte{0x90, 0x90, 0xf4}, GuestDebug{Control: DebugEnable | DebugSingleStep},
			func(e *kvmext.DebugExit) bool { return e.Exception == 1 && e.PC == 0x1001 && e.DR6&DR6BS != 0 })
		probed.s, probed.err = s, err
	})
	return probed.s, probed.err
}

// probeTimeout bounds a probe's wait for an exit: the probes' guests run
// two or three instructions, but on PVM an int3 that KVM cannot deliver
// makes no exit at all.
const probeTimeout = time.Second

// probeOnce runs code in real mode at 0x1000 with guest debugging g and
// reports whether its first exit is a debug exit want accepts. A guest the
// VMM had to end (an emulation failure), that halted, or that made no exit
// within probeTimeout is a no.
func probeOnce(code []byte, g GuestDebug, want func(e *kvmext.DebugExit) bool) (bool, error) {
	m, err := New(Config{MemSize: 2 << 20, NumVCPUs: 1})
	if err != nil {
		return false, fmt.Errorf("probe guest debugging: %w", err)
	}
	defer m.Close()
	if err := m.Memory().Write(0x1000, code); err != nil {
		return false, fmt.Errorf("probe guest debugging: %w", err)
	}
	v := m.VCPUs()[0]
	s, err := v.GetSregs()
	if err != nil {
		return false, fmt.Errorf("probe guest debugging: %w", err)
	}
	s.CS.Base, s.CS.Selector = 0, 0
	if err := v.SetSregs(s); err != nil {
		return false, fmt.Errorf("probe guest debugging: %w", err)
	}
	if err := v.SetRegs(&kvm.Regs{RIP: 0x1000, RFLAGS: 2}); err != nil {
		return false, fmt.Errorf("probe guest debugging: %w", err)
	}
	if err := v.SetGuestDebug(g); err != nil {
		return false, nil // refused: not supported
	}
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	var ok atomic.Bool
	v.Debug = func(v *VCPU, e *kvmext.DebugExit) error {
		ok.Store(want(e))
		cancel()
		v.RequestPause()
		return nil
	}
	v.Halt = func(v *VCPU) error {
		cancel()
		v.RequestPause()
		return nil
	}
	done := make(chan struct{})
	m.Start(ctx, func(*VCPU, error) { cancel(); close(done) })
	<-ctx.Done()
	if err := m.Close(); err != nil {
		return false, fmt.Errorf("probe guest debugging: %w", err)
	}
	<-done
	return ok.Load(), nil
}
