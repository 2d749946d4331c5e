package toolstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/xenresume/xenresume/vmm/gdbstub"
	"github.com/xenresume/xenresume/vmm/kvmext"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// DomainTarget is a domain as gdb debugs it (gdbstub.Target): registers
// from KVM, memory by guest-virtual address through the stopped vCPU's
// page tables, breakpoints and watchpoints through KVM's guest debugging,
// single-step, and stops that follow the domain's lifecycle.
//
// A gdb stop is a stop of the lifecycle: gdb's interrupt, or a breakpoint,
// watchpoint or step hit while the domain runs, makes a Running domain
// DebugStopped (OpDebugStop), and gdb's continue makes it Running again
// (OpDebugContinue), so `runvm list` and the API say what gdb did and
// `runvm pause`, `unpause`, `suspend` and `save` are refused while gdb
// holds the guest. A domain the toolstack holds (Created, Paused,
// Suspended) stays the toolstack's: gdb may inspect it, and its continue
// waits for the toolstack to run the guest (but see TakeCreated). While a
// toolstack operation is in flight (Suspending, Saving) and the guest
// hits a breakpoint, the debugger holds the vCPUs parked without changing
// the state the operation reports, so that a suspend can be stepped
// through; the operation waits for the guest as it would for a slow one.
// A stop that comes during another operation (an unpause, a pause, a
// resume) waits for it and goes by the state it leaves.
//
// While gdb holds the guest stopped and the toolstack holds it too (it is
// suspended, say), a trap is armed on every vCPU (machine.VCPU.TrapEntry,
// which needs no debug hardware): if the toolstack lets the guest run
// meanwhile (a resume, a checkpoint's end), the guest stops again before
// its first instruction, DebugStopped.
//
// Stop reasons beside gdb's (swbreak, hwbreak, watch):
//   - "suspend": the guest suspended (SCHEDOP_shutdown(SHUTDOWN_suspend))
//     while gdb waited; its vCPUs sit in the hypercall's return path.
//   - "resume": the guest was resumed (in the same domain, or after a
//     checkpoint) and stopped before its first instruction; %rax says
//     which resume (1 cooperative, 0 not).
//
// When the domain ends (a shutdown, a crash, a destroy, or a save that is
// not a checkpoint) gdb is told the program exited (W, with the shutdown
// reason as its status) and the session ends; a guest restored into a new
// domain is debugged with a new target (`runvm restore --gdb`), whose
// first stop shows its registers in the new domain.
//
// What is offered (DebugOffers): a ring-3 PV guest gets breakpoints and
// single-step from the hypervisor's trap path on every host (xen.Debugger:
// the int3s written into guest memory and the steps' TF arrive as the
// guest's #BP and #DB at the VMM's IDT, and the ones that are the
// debugger's become stops), and no hardware breakpoints or watchpoints (a
// watchpoint gets gdb's empty reply: gdb then watches by single-stepping).
// Another guest gets what this host's KVM delivers (machine.ProbeGuestDebug):
// int3s where KVM reports #BP, debug-register breakpoints otherwise. A
// save takes the int3s out of guest memory while it copies it
// (hideBreakpoints). Every stop, on every host, shows the guest's own
// registers at an instruction boundary (machine.VCPU.Settle).
type DomainTarget struct {
	// TakeCreated: gdb's first stop takes a Created domain (one that
	// waits for gdb before its first instruction, `runvm run
	// --gdb-wait`) as it takes a running one: DebugStopped, so that gdb
	// can step it from its first instruction and its continue (or
	// detach) starts it. Otherwise a Created domain is the toolstack's
	// to start.
	TakeCreated bool

	log     *slog.Logger
	support machine.DebugSupport

	stops  chan gdbstub.Stop
	events chan debugEvent

	mu        sync.Mutex
	d         *Domain
	cancel    context.CancelFunc // the watchers of d
	attached  bool               // a gdb session is on (Interrupt .. Detach)
	waiting   bool               // gdb waits for a stop (after Resume)
	owned     bool               // the debugger parked the vCPUs itself
	armed     bool               // traps armed at the parked vCPUs' RIPs
	resumeRsn string             // the reason an armed trap reports ("resume")
	step      int                // the vCPU single-stepping, or -1
	resumes   int                // Resume calls, for tests
	pending   *gdbstub.Stop      // a trap's stop gdb has not been told of
	sw        map[uint64]byte    // int3s written: the original bytes
	swAddrs   sync.Map           // the keys of sw, for the vCPUs' traps (no lock)

	// memMu fences guest memory and the vCPUs against the domain's
	// release: every access to them holds it for reading (after mu), and
	// a release takes it for writing and sets released.
	memMu    sync.RWMutex
	released bool
	hw       [4]*gdbstub.Breakpoint
}

// debugEvent is what the vCPUs and the watchers tell the target's loop.
type debugEvent struct {
	kind string // "debug", "suspend", "ended"
	vcpu int
	exit kvmext.DebugExit
	d    *Domain
}

// NewDomainTarget returns a target for d. It installs the vCPUs' debug
// exit handler and watches the domain until it ends or Close.
func NewDomainTarget(d *Domain, log *slog.Logger) (*DomainTarget, error) {
	if log == nil {
		log = slog.Default()
	}
	s, err := machine.ProbeGuestDebug()
	if err != nil {
		return nil, err
	}
	t := &DomainTarget{log: log, support: s, stops: make(chan gdbstub.Stop, 16),
		events: make(chan debugEvent, 64), step: -1, sw: map[uint64]byte{}}
	t.mu.Lock()
	t.attach(d)
	t.mu.Unlock()
	go t.loop()
	return t, nil
}

// Support returns what KVM's guest debugging does on this host.
func (t *DomainTarget) Support() machine.DebugSupport { return t.support }

// Offers is what a DomainTarget offers gdb for one guest on one host;
// gdb gets an error reply (a watchpoint: the empty reply) for the rest.
type Offers struct {
	// Breakpoints: gdb's break (Z0), as an int3 or in a debug register.
	Breakpoints bool
	// HardwareBreakpoints: hbreak (Z1), in the four debug registers.
	HardwareBreakpoints bool
	// Watchpoints: watch, rwatch and awatch (Z2-Z4) in debug registers.
	Watchpoints bool
	// SingleStep: stepi (vCont;s).
	SingleStep bool
}

// DebugOffers returns what a DomainTarget offers for a guest in the
// ring-3 PV model (ring3) or another guest on a host whose guest
// debugging is s. A ring-3 guest gets breakpoints and single-step on
// every host, from the hypervisor's trap path (xen.Debugger, as Xen's
// gdbsx traps them in Xen), and no hardware breakpoints or watchpoints:
// its debug registers are its own (set_debugreg), and gdb watches by
// single-stepping. Another guest gets what s says works.
func DebugOffers(ring3 bool, s machine.DebugSupport) Offers {
	if ring3 {
		return Offers{Breakpoints: true, SingleStep: true}
	}
	return Offers{
		Breakpoints:         s.SoftwareBP || s.HardwareBP,
		HardwareBreakpoints: s.HardwareBP,
		Watchpoints:         s.Watchpoint,
		SingleStep:          s.SingleStep,
	}
}

// Offers returns what the target offers for its domain on this host.
func (t *DomainTarget) Offers() Offers {
	t.mu.Lock()
	defer t.mu.Unlock()
	return DebugOffers(t.d.Xen.Ring3(), t.support)
}

// Domain returns the domain the target debugs now.
func (t *DomainTarget) Domain() *Domain {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.d
}

// Close stops watching the domain and leaves it as Detach does.
func (t *DomainTarget) Close() error {
	err := t.Detach()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cancel != nil {
		t.cancel()
		t.cancel = nil
	}
	if t.d != nil {
		t.d.Xen.SetDebugger(nil)
		t.d.dbg.CompareAndSwap(t, nil)
	}
	return err
}

// ErrBreakpointsSet refuses a live migration or Remus of a domain in
// which a debugger has int3s in guest memory: its live rounds copy memory
// while the guest runs, so the int3s would travel to a target with no
// debugger, whose guest would take them as its own #BP.
var ErrBreakpointsSet = errors.New("gdb has breakpoints in the guest's memory: delete them (or detach gdb) before migrating")

// checkNoBreakpoints returns ErrBreakpointsSet while an attached debugger
// has int3s in d's memory.
func (d *Domain) checkNoBreakpoints() error {
	t := d.dbg.Load()
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.d == d && len(t.sw) > 0 {
		return fmt.Errorf("domain %d: %w", d.ID, ErrBreakpointsSet)
	}
	return nil
}

// hideBreakpoints takes the debugger's int3s out of guest memory while a
// save copies it (no saved image carries them), and returns what puts
// them back for a domain that goes on (a checkpoint, a failed save).
func (d *Domain) hideBreakpoints() (restore func()) {
	t := d.dbg.Load()
	if t == nil {
		return func() {}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.d != d || len(t.sw) == 0 {
		return func() {}
	}
	hidden := map[uint64]byte{}
	for addr, orig := range t.sw {
		if err := t.restoreByte(addr, orig); err != nil {
			t.log.Warn("gdb: take a breakpoint out for the save", "addr", fmt.Sprintf("%#x", addr), "err", err)
			continue
		}
		hidden[addr] = orig
	}
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		for addr := range hidden {
			if _, ok := t.sw[addr]; !ok || t.d != d {
				continue // removed meanwhile
			}
			done, err := t.hold()
			if err != nil {
				return
			}
			p, err := t.vcpu(0).PagingParked()
			if err == nil {
				err = d.machine.Memory().WriteVirt(p, addr, []byte{0xcc})
			}
			done()
			if err != nil {
				t.log.Warn("gdb: put a breakpoint back after the save", "addr", fmt.Sprintf("%#x", addr), "err", err)
			}
		}
	}
}

// attach installs the debug exit handler on d's vCPUs and starts its
// watcher. t.mu held.
func (t *DomainTarget) attach(d *Domain) {
	t.d = d
	var ctx context.Context
	ctx, t.cancel = context.WithCancel(context.Background())
	for _, v := range d.machine.VCPUs() {
		v.Debug = func(v *machine.VCPU, e *kvmext.DebugExit) error {
			// Park every vCPU as the handler returns; the loop settles
			// the lifecycle and tells gdb.
			d.machine.RequestPause()
			t.post(debugEvent{kind: "debug", vcpu: v.ID, exit: *e, d: d})
			return nil
		}
	}
	if d.Xen.Ring3() {
		d.Xen.SetDebugger(&xen.Debugger{Breakpoint: func(addr uint64) bool {
			_, ok := t.swAddrs.Load(addr)
			return ok
		}})
	}
	d.dbg.Store(t)
	go t.watch(ctx, d)
}

// post hands an event to the loop without ever blocking a vCPU.
func (t *DomainTarget) post(e debugEvent) {
	select {
	case t.events <- e:
	default:
		t.log.Warn("gdb: debug event dropped", "kind", e.kind)
	}
}

// send delivers a stop to the session without blocking; t.mu held.
func (t *DomainTarget) send(s gdbstub.Stop) {
	select {
	case t.stops <- s:
	default:
		t.log.Warn("gdb: stop dropped", "reason", s.Reason)
	}
}

// watch reports the guest's suspends and its end to the loop.
func (t *DomainTarget) watch(ctx context.Context, d *Domain) {
	go func() {
		if _, err := d.WaitEnded(ctx); err == nil {
			t.post(debugEvent{kind: "ended", d: d})
		}
	}()
	for {
		e, err := d.Xen.Wait(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			continue // resumed and unpaused meanwhile
		case !suspended(e):
			return // a shutdown or crash: WaitEnded reports it
		}
		t.post(debugEvent{kind: "suspend", d: d})
		// Wait for the resume (or the end).
		for {
			ch := d.Changed()
			if d.State().Ended() {
				return // WaitEnded reports it
			}
			if !suspended(d.Xen.Exit()) {
				break
			}
			select {
			case <-ch:
			case <-ctx.Done():
				return
			}
		}
	}
}

// suspended reports whether the hypervisor's report is a suspend.
func suspended(e xen.Exit) bool {
	return e.State == xen.Shutdown && e.Reason == xenabi.ShutdownSuspend
}

// loop turns the vCPUs' debug exits and the watchers' reports into stops.
func (t *DomainTarget) loop() {
	for e := range t.events {
		t.mu.Lock()
		if e.d != t.d {
			t.mu.Unlock()
			continue // a domain the target no longer follows
		}
		switch e.kind {
		case "debug":
			t.debugExit(e)
		case "suspend":
			if t.waiting && !suspended(t.d.Xen.Exit()) {
				// Resumed before the stop could be told: hold it
				// where it got to.
				t.d.machine.RequestPause()
				t.stopGuestLocked(t.d)
				t.waiting = false
				t.send(gdbstub.Stop{VCPU: 0, Signal: gdbstub.SIGTRAP, Reason: "resume"})
			}
			if t.waiting {
				t.waiting = false
				t.owned = false
				t.armLocked("resume")
				t.send(gdbstub.Stop{VCPU: 0, Signal: gdbstub.SIGTRAP, Reason: "suspend"})
			}
		case "ended":
			if t.attached {
				st := t.d.Status()
				t.send(gdbstub.Stop{Exited: true, Status: int(st.Exit.Reason)})
				t.attached, t.waiting = false, false
			}
		}
		t.mu.Unlock()
	}
}

// debugExit handles one debug exit; t.mu held. The vCPUs were asked to
// park by the handler.
func (t *DomainTarget) debugExit(e debugEvent) {
	d := t.d
	if !t.armed && t.step < 0 && e.exit.Exception == 1 && e.exit.DR6 == 0 {
		// An entry trap (machine.VCPU.TrapEntry reports DR6 0) that
		// fired as a continue disarmed it: not a stop. Its handler asked
		// the vCPUs to park; a running domain nobody else holds goes on.
		if !t.owned && d.State() == Running {
			d.machine.Unpause()
		}
		return
	}
	stop := gdbstub.Stop{VCPU: e.vcpu, Signal: gdbstub.SIGTRAP}
	trap := t.armed
	switch {
	case trap:
		stop.Reason = t.resumeRsn
	case t.step >= 0 && e.exit.DR6&machine.DR6BS != 0:
	case e.exit.Exception == 3:
		stop.Reason = "swbreak"
	default:
		for i, bp := range t.hw {
			if bp == nil || e.exit.DR6&(1<<i) == 0 {
				continue
			}
			switch bp.Kind {
			case gdbstub.SoftwareBreak:
				stop.Reason = "swbreak"
			case gdbstub.HardwareBreak:
				stop.Reason = "hwbreak"
			case gdbstub.WriteWatch:
				stop.Reason, stop.Addr = "watch", bp.Addr
			case gdbstub.ReadWatch:
				stop.Reason, stop.Addr = "rwatch", bp.Addr
			case gdbstub.AccessWatch:
				stop.Reason, stop.Addr = "awatch", bp.Addr
			}
			break
		}
	}
	t.stopGuestLocked(d)
	if trap {
		t.armed = false
		t.program()
	}
	if stop.Reason == "swbreak" && e.exit.Exception == 3 {
		// KVM reports the int3's address; make RIP point there, as gdb
		// expects with swbreak, should it be past it.
		if done, err := t.hold(); err == nil {
			defer done()
		}
		if v := t.vcpu(e.vcpu); v != nil && !t.released {
			if r, err := v.GetRegs(); err == nil && r.RIP == e.exit.PC+1 {
				r.RIP = e.exit.PC
				if err := v.SetRegs(r); err != nil {
					t.log.Warn("gdb: rewind RIP to the breakpoint", "err", err)
				}
			}
		}
	}
	if t.step >= 0 {
		t.step = -1
		t.program()
	}
	if t.waiting {
		t.waiting = false
		t.send(stop)
	} else if trap && t.attached {
		// gdb held the guest and the toolstack let it run: it stopped
		// at once, and gdb's next resume is told so.
		t.pending = &stop
	}
}

// stopGuestLocked makes the parked vCPUs the debugger's: a Running domain
// becomes DebugStopped; during an operation in flight that waits for the
// guest (Suspending, Saving) the vCPUs are only waited for. t.mu held.
//
// Another toolstack operation in flight (an unpause, a pause, a resume, a
// shutdown request, a destroy: they keep the state while they run) is
// waited for, and the vCPUs go by the state it leaves. An unpause lets the
// vCPUs run before it says Running, so a trap armed for a resume fires
// while the domain still says Paused; taken as the toolstack's hold, the
// vCPUs the trap parked were left to nobody once the unpause ended (a
// Running domain that never ran again, which a detach did not start).
// Those operations never take t.mu, so waiting for one while holding it
// cannot deadlock; a Suspending or Saving one can (a save hides the
// breakpoints) and a migration or Remus lasts: neither is waited for.
func (t *DomainTarget) stopGuestLocked(d *Domain) {
	ctx := context.Background()
	for {
		st, idle := d.stateAndOp()
		switch {
		case st == DebugStopped:
			if err := d.machine.WaitPaused(ctx); err != nil {
				t.log.Warn("gdb: wait for the vCPUs to park", "err", err)
			}
			t.owned = true
			return
		case st == Suspending || st == Saving:
			// The operation waits for the guest; the debugger holds it.
			d.machine.RequestPause()
			if err := d.machine.WaitPaused(ctx); err == nil {
				t.owned = true
			}
			return
		case st.Busy():
			// A live migration or Remus: its rounds run the guest, and
			// it is not waited for (it lasts).
			return
		case idle != nil:
			<-idle
		case st == Running || (st == Created && t.TakeCreated):
			_, _, end, err := d.begin(ctx, OpDebugStop, keep)
			if err != nil {
				continue // an operation began meanwhile: look again
			}
			if err := d.machine.Pause(ctx); err != nil {
				d.machine.Unpause()
				end(Running)
				return
			}
			end(DebugStopped)
			t.owned = true
			return
		default:
			// The toolstack holds it (or it ended): leave its vCPUs alone.
			return
		}
	}
}

// vcpu returns the vCPU with id, or nil.
func (t *DomainTarget) vcpu(id int) *machine.VCPU {
	for _, v := range t.d.machine.VCPUs() {
		if v.ID == id {
			return v
		}
	}
	return nil
}

// armLocked arms the trap that stops a guest the toolstack lets run while
// gdb holds it; reason is what the trap reports to a waiting gdb.
func (t *DomainTarget) armLocked(reason string) {
	t.armed, t.resumeRsn = true, reason
	t.program()
}

// program loads every vCPU's guest debugging from the target's state:
// the hardware breakpoints, int3 exits, the step, and the trap. It is
// best effort on a vCPU that runs (the trap needs it parked).
func (t *DomainTarget) program() {
	ring3 := t.d.Xen.Ring3()
	for _, v := range t.d.machine.VCPUs() {
		g := machine.GuestDebug{}
		for i, bp := range t.hw {
			if bp == nil {
				continue
			}
			g.Control |= machine.DebugEnable | machine.DebugHardwareBP
			g.DebugRegs[i] = bp.Addr
			g.DebugRegs[machine.DR7] |= dr7(i, bp)
		}
		switch {
		case ring3:
			// int3s and steps go through the hypervisor's trap path.
			t.d.Xen.DebugStep(v.ID, t.step == v.ID)
		default:
			if len(t.sw) > 0 {
				g.Control |= machine.DebugEnable | machine.DebugSoftwareBP
			}
			if t.step == v.ID {
				g.Control |= machine.DebugEnable | machine.DebugSingleStep
			}
		}
		v.TrapEntry(t.armed)
		if g.Control&machine.DebugHardwareBP != 0 {
			g.DebugRegs[machine.DR7] |= machine.DR7GE
		}
		if err := v.SetGuestDebug(g); err != nil {
			t.log.Debug("gdb: set guest debugging", "vcpu", v.ID, "err", err)
		}
	}
}

// dr7 is DR7's enable, type and length bits for breakpoint i.
func dr7(i int, bp *gdbstub.Breakpoint) uint64 {
	var rw, ln uint64
	switch bp.Kind {
	case gdbstub.WriteWatch:
		rw = 1
	case gdbstub.ReadWatch, gdbstub.AccessWatch:
		rw = 3 // x86 has no read-only breakpoint: read or write
	}
	if rw != 0 {
		switch bp.Len {
		case 2:
			ln = 1
		case 4:
			ln = 3
		case 8:
			ln = 2
		}
	}
	return 1<<(2*i) | rw<<(16+4*i) | ln<<(18+4*i)
}

// VCPUs lists the domain's vCPUs.
func (t *DomainTarget) VCPUs() []int {
	t.mu.Lock()
	defer t.mu.Unlock()
	var ids []int
	for _, v := range t.d.machine.VCPUs() {
		ids = append(ids, v.ID)
	}
	return ids
}

// errReleased: the domain's machine is gone (a save, a destroy).
var errReleased = errors.New("gdb: the domain has ended")

// hold fences the domain's memory and vCPUs against its release for one
// access; the caller calls the returned function when done.
func (t *DomainTarget) hold() (func(), error) {
	t.memMu.RLock()
	if t.released {
		t.memMu.RUnlock()
		return nil, errReleased
	}
	return t.memMu.RUnlock, nil
}

// releaseMachine is told by d's release before its machine closes: it
// waits for accesses in flight and refuses later ones.
func (t *DomainTarget) releaseMachine(d *Domain) {
	t.memMu.Lock()
	defer t.memMu.Unlock()
	if t.d == d {
		t.released = true
	}
}

func (t *DomainTarget) lockedVCPU(id int) (*machine.VCPU, error) {
	v := t.vcpu(id)
	if v == nil {
		return nil, fmt.Errorf("domain %d has no vCPU %d", t.d.ID, id)
	}
	return v, nil
}

// Registers reads a stopped vCPU's registers (KVM_GET_REGS, KVM_GET_SREGS).
func (t *DomainTarget) Registers(id int) (*gdbstub.Registers, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	done, err := t.hold()
	if err != nil {
		return nil, err
	}
	defer done()
	v, err := t.lockedVCPU(id)
	if err != nil {
		return nil, err
	}
	r, err := v.GetRegs()
	if err != nil {
		return nil, fmt.Errorf("gdb: registers: %w", err)
	}
	s, err := v.GetSregs()
	if err != nil {
		return nil, fmt.Errorf("gdb: registers: %w", err)
	}
	return &gdbstub.Registers{
		GPR:    [16]uint64{r.RAX, r.RBX, r.RCX, r.RDX, r.RSI, r.RDI, r.RBP, r.RSP, r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15},
		RIP:    r.RIP,
		RFLAGS: r.RFLAGS,
		Seg:    [6]uint16{s.CS.Selector, s.SS.Selector, s.DS.Selector, s.ES.Selector, s.FS.Selector, s.GS.Selector},
		FSBase: s.FS.Base, GSBase: s.GS.Base,
		CR0: s.CR0, CR2: s.CR2, CR3: s.CR3, CR4: s.CR4, CR8: s.CR8, EFER: s.EFER,
	}, nil
}

// ErrReadOnlyRegister: gdb tried to change a segment selector or control
// register, which would need descriptors and paging the stub does not
// check; the general registers, RIP, RFLAGS and the FS and GS bases can
// be written.
var ErrReadOnlyRegister = errors.New("segment selectors and control registers are read-only")

// SetRegisters writes a stopped vCPU's general registers, RIP, RFLAGS and
// FS/GS bases.
func (t *DomainTarget) SetRegisters(id int, g *gdbstub.Registers) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	done, err := t.hold()
	if err != nil {
		return err
	}
	defer done()
	v, err := t.lockedVCPU(id)
	if err != nil {
		return err
	}
	r, err := v.GetRegs()
	if err != nil {
		return fmt.Errorf("gdb: registers: %w", err)
	}
	s, err := v.GetSregs()
	if err != nil {
		return fmt.Errorf("gdb: registers: %w", err)
	}
	if g.Seg != [6]uint16{s.CS.Selector, s.SS.Selector, s.DS.Selector, s.ES.Selector, s.FS.Selector, s.GS.Selector} ||
		g.CR0 != s.CR0 || g.CR2 != s.CR2 || g.CR3 != s.CR3 || g.CR4 != s.CR4 || g.CR8 != s.CR8 || g.EFER != s.EFER {
		return ErrReadOnlyRegister
	}
	p := &g.GPR
	r.RAX, r.RBX, r.RCX, r.RDX, r.RSI, r.RDI, r.RBP, r.RSP = p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
	r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15 = p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15]
	r.RIP, r.RFLAGS = g.RIP, g.RFLAGS|2
	if err := v.SetRegs(r); err != nil {
		return fmt.Errorf("gdb: registers: %w", err)
	}
	if g.FSBase != s.FS.Base || g.GSBase != s.GS.Base {
		s.FS.Base, s.GS.Base = g.FSBase, g.GSBase
		if err := v.SetSregs(s); err != nil {
			return fmt.Errorf("gdb: registers: %w", err)
		}
	}
	return nil
}

// virt runs fn on each page-bounded piece of [addr, addr+len(b)) as
// vCPU id's page tables map it, until the first unmapped piece; it returns
// the bytes done.
func (t *DomainTarget) virt(id int, addr uint64, b []byte, fn func(mem *machine.Memory, p machine.Paging, va uint64, b []byte) error) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	done0, err := t.hold()
	if err != nil {
		return 0, err
	}
	defer done0()
	v, err := t.lockedVCPU(id)
	if err != nil {
		return 0, err
	}
	p, err := v.PagingParked()
	if err != nil {
		return 0, fmt.Errorf("gdb: memory: %w", err)
	}
	mem := t.d.machine.Memory()
	done := 0
	for done < len(b) {
		va := addr + uint64(done)
		if va < addr {
			return done, fmt.Errorf("gdb: memory at %#x wraps around: %w", addr, machine.ErrFault)
		}
		n := min(len(b)-done, int(machine.PageSize-va%machine.PageSize))
		if err := fn(mem, p, va, b[done:done+n]); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// ReadMemory reads guest-virtual memory through vCPU id's page tables.
func (t *DomainTarget) ReadMemory(id int, addr uint64, b []byte) (int, error) {
	return t.virt(id, addr, b, func(mem *machine.Memory, p machine.Paging, va uint64, b []byte) error {
		return mem.ReadVirt(p, va, b)
	})
}

// WriteMemory writes guest-virtual memory through vCPU id's page tables,
// read-only mappings included (as a debugger patches code).
func (t *DomainTarget) WriteMemory(id int, addr uint64, b []byte) (int, error) {
	return t.virt(id, addr, b, func(mem *machine.Memory, p machine.Paging, va uint64, b []byte) error {
		return mem.WriteVirt(p, va, b)
	})
}

// SetBreakpoint sets a breakpoint or watchpoint; see DomainTarget for what
// each kind becomes on this host.
func (t *DomainTarget) SetBreakpoint(bp gdbstub.Breakpoint) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	o := DebugOffers(t.d.Xen.Ring3(), t.support)
	switch bp.Kind {
	case gdbstub.SoftwareBreak:
		if !o.Breakpoints {
			return fmt.Errorf("gdb: no breakpoints in this guest on this host")
		}
		if t.support.SoftwareBP || t.d.Xen.Ring3() {
			return t.setInt3(bp.Addr)
		}
		return t.setHW(bp)
	case gdbstub.HardwareBreak:
		if !o.HardwareBreakpoints {
			return fmt.Errorf("gdb: no hardware breakpoints in this guest on this host")
		}
		return t.setHW(bp)
	default:
		if !o.Watchpoints {
			return gdbstub.ErrUnsupported
		}
		switch bp.Len {
		case 1, 2, 4, 8:
		default:
			return gdbstub.ErrUnsupported
		}
		if bp.Addr%uint64(bp.Len) != 0 {
			return gdbstub.ErrUnsupported // x86 wants it aligned
		}
		return t.setHW(bp)
	}
}

// setInt3 writes an int3 at addr, keeping the byte it replaces.
func (t *DomainTarget) setInt3(addr uint64) error {
	if _, ok := t.sw[addr]; ok {
		return nil
	}
	if st := t.d.State(); st == Migrating || st == Replicating {
		return fmt.Errorf("gdb: no breakpoints while domain %d is %s (they would travel with its memory)", t.d.ID, st)
	}
	done, err := t.hold()
	if err != nil {
		return err
	}
	defer done()
	p, err := t.vcpu(0).PagingParked()
	if err != nil {
		return fmt.Errorf("gdb: breakpoint: %w", err)
	}
	mem := t.d.machine.Memory()
	var orig [1]byte
	if err := mem.ReadVirt(p, addr, orig[:]); err != nil {
		return fmt.Errorf("gdb: breakpoint at %#x: %w", addr, err)
	}
	if err := mem.WriteVirt(p, addr, []byte{0xcc}); err != nil {
		return fmt.Errorf("gdb: breakpoint at %#x: %w", addr, err)
	}
	t.sw[addr] = orig[0]
	t.swAddrs.Store(addr, struct{}{})
	t.program()
	return nil
}

// setHW takes a debug register for bp; its address must be mapped.
func (t *DomainTarget) setHW(bp gdbstub.Breakpoint) error {
	for _, h := range t.hw {
		if h != nil && *h == bp {
			return nil
		}
	}
	if bp.Kind == gdbstub.SoftwareBreak || bp.Kind == gdbstub.HardwareBreak {
		done, err := t.hold()
		if err != nil {
			return err
		}
		p, err := t.vcpu(0).PagingParked()
		if err != nil {
			done()
			return fmt.Errorf("gdb: breakpoint: %w", err)
		}
		_, err = t.d.machine.Memory().Translate(p, bp.Addr)
		done()
		if err != nil {
			return fmt.Errorf("gdb: breakpoint at %#x: %w", bp.Addr, err)
		}
	}
	for i, h := range t.hw {
		if h == nil {
			b := bp
			t.hw[i] = &b
			t.program()
			return nil
		}
	}
	return fmt.Errorf("gdb: all 4 debug registers are in use")
}

// ClearBreakpoint removes a breakpoint or watchpoint; removing one that
// is not set is not an error.
func (t *DomainTarget) ClearBreakpoint(bp gdbstub.Breakpoint) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if bp.Kind == gdbstub.SoftwareBreak {
		if orig, ok := t.sw[bp.Addr]; ok {
			delete(t.sw, bp.Addr)
			t.swAddrs.Delete(bp.Addr)
			if err := t.restoreByte(bp.Addr, orig); err != nil {
				return err
			}
			t.program()
			return nil
		}
	}
	for i, h := range t.hw {
		if h != nil && *h == bp {
			t.hw[i] = nil
		}
	}
	t.program()
	return nil
}

func (t *DomainTarget) restoreByte(addr uint64, orig byte) error {
	done, err := t.hold()
	if err != nil {
		return err
	}
	defer done()
	p, err := t.vcpu(0).PagingParked()
	if err != nil {
		return fmt.Errorf("gdb: remove breakpoint: %w", err)
	}
	if err := t.d.machine.Memory().WriteVirt(p, addr, []byte{orig}); err != nil {
		return fmt.Errorf("gdb: remove breakpoint at %#x: %w", addr, err)
	}
	return nil
}

// Resume lets the guest run, or steps vCPU step while the others stay
// parked. A step needs vCPUs the debugger parked.
func (t *DomainTarget) Resume(step int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.resumes++
	if t.pending != nil {
		t.send(*t.pending)
		t.pending = nil
		return nil
	}
	d := t.d
	if step >= 0 {
		v, err := t.lockedVCPU(step)
		if err != nil {
			return err
		}
		if !t.owned {
			return fmt.Errorf("gdb: cannot step domain %d: it is %s, held by the toolstack", d.ID, d.State())
		}
		if !DebugOffers(d.Xen.Ring3(), t.support).SingleStep {
			return fmt.Errorf("gdb: no single-step in this guest on this host")
		}
		t.armed = false
		t.step = step
		t.program()
		t.waiting = true
		v.Unpause()
		return nil
	}
	t.waiting = true
	st := d.State()
	switch {
	case suspended(d.Xen.Exit()) && !st.Ended():
		// It runs when the toolstack resumes it: the trap then reports
		// "resume".
		if !t.armed {
			t.armLocked("resume")
		}
	case st == DebugStopped:
		t.armed = false
		t.program()
		_, _, end, err := d.begin(context.Background(), OpDebugContinue, keep)
		if err != nil {
			t.waiting = false
			return err
		}
		d.machine.Unpause()
		t.owned = false
		end(Running)
	case t.owned && (st == Suspending || st == Saving || st == Running):
		// Running: the debugger parked the vCPUs while an operation held
		// the domain (a checkpoint's resume trapped before the save
		// ended), and the operation has ended since.
		t.armed = false
		t.program()
		t.owned = false
		d.machine.Unpause()
	default:
		// Paused, or an operation holds it: it runs when the toolstack
		// lets it; nothing stops it then but gdb's breakpoints.
		t.armed = false
		t.program()
	}
	return nil
}

// Interrupt stops the guest (a Running domain becomes DebugStopped) and
// reports SIGINT; a guest the toolstack holds is reported stopped as it
// is, with the trap armed.
func (t *DomainTarget) Interrupt() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.attached {
		for len(t.stops) > 0 { // a new session: nothing stale
			<-t.stops
		}
		t.attached = true
	}
	d := t.d
	if d.State().Ended() {
		t.waiting = false
		t.send(gdbstub.Stop{Exited: true, Status: int(d.Status().Exit.Reason)})
		return nil
	}
	t.stopGuestLocked(d)
	if !t.owned {
		t.armLocked("resume")
	}
	t.waiting = false
	t.send(gdbstub.Stop{VCPU: 0, Signal: gdbstub.SIGINT})
	return nil
}

// Stops delivers the stops.
func (t *DomainTarget) Stops() <-chan gdbstub.Stop { return t.stops }

// Detach removes every breakpoint and watchpoint and lets the guest go: a
// DebugStopped domain runs again; one the toolstack holds stays so.
func (t *DomainTarget) Detach() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	d := t.d
	var errs []error
	for addr, orig := range t.sw {
		if err := t.restoreByte(addr, orig); err != nil && !d.State().Ended() {
			errs = append(errs, err)
		}
	}
	t.sw = map[uint64]byte{}
	t.swAddrs.Clear()
	t.hw = [4]*gdbstub.Breakpoint{}
	t.armed, t.step, t.attached, t.waiting, t.pending = false, -1, false, false, nil
	if !d.State().Ended() {
		t.program()
	}
	switch st := d.State(); {
	case st == DebugStopped:
		if _, _, end, err := d.begin(context.Background(), OpDebugContinue, keep); err == nil {
			d.machine.Unpause()
			end(Running)
		} else {
			errs = append(errs, err)
		}
	case t.owned && (st == Suspending || st == Saving || st == Running):
		d.machine.Unpause()
	}
	t.owned = false
	return errors.Join(errs...)
}
