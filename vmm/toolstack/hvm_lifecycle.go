package toolstack

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/hvm"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
	"github.com/xenresume/xenresume/vmm/xenstore"
)

// hvmLifecycle is an HVM or PVH domain's state, kept as Xen keeps it: the
// vCPUs run only while no one holds the domain, and each holder has its
// own reference (domain_pause_by_systemcontroller for `runvm pause`,
// hvm_s3_suspend's domain_pause for ACPI S3, the shutdown for a remote
// suspend, and the domain not yet unpaused once after its creation). So
// a resume of a domain the guest put in S3 leaves it held until the
// s3resume trigger, as xc_domain_resume does on Xen, and the trigger
// leaves a paused domain paused.
type hvmLifecycle struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced at every change
	run     bool          // Start was called
	cancel  context.CancelFunc
	done    chan struct{} // closed when the vCPUs have stopped for good

	created   bool // not unpaused since its creation
	paused    bool // the toolstack's pause
	s3        bool // the guest is in ACPI S3
	suspended bool // suspended (SHUTDOWN_suspend), remotely or by the guest
	coop      bool // the guest suspended itself (PVHVM): its hypercall returns at resume
	saved     bool // destroyed by a save (not a checkpoint)
	migrated  bool // destroyed by a migration the target took
	migrating bool // a migration holds the domain suspended: no resume or save may take it
	released  bool // the machine is closed (release)
	// Operations that read the machine's memory (beginOp) run inside ops;
	// destroy cancels opCtx and waits for them before the memory goes.
	ops    sync.WaitGroup
	opCtx  context.Context
	opStop context.CancelFunc
	ended  State // Shutdown, Crashed or Destroyed once it ended; 0 (Created) before
	exit   hvm.Exit
	from   State // the state Destroy ended
}

func (l *hvmLifecycle) init() {
	l.changed = make(chan struct{})
	l.created = true
	l.opCtx, l.opStop = context.WithCancel(context.Background())
}

// beginOp starts an operation that reads the domain's memory: it fails
// once the domain ended, and its context ends with ctx or when destroy
// begins, which waits for it. done ends it.
func (d *HVMDomain) beginOp(ctx context.Context, op Op) (context.Context, func(), error) {
	l := &d.lc
	l.mu.Lock()
	if st := l.stateLocked(); st.Ended() || l.released {
		l.mu.Unlock()
		return nil, nil, d.refuse(op, st, "")
	}
	l.ops.Add(1)
	l.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(l.opCtx, cancel)
	return ctx, func() {
		stop()
		cancel()
		l.ops.Done()
	}, nil
}

func (l *hvmLifecycle) started() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.run
}

// notifyLocked wakes Changed's waiters.
func (l *hvmLifecycle) notifyLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// stateLocked is the state the holds make, in the toolstack's names: a
// domain held only by S3 is "paused" (xl lists it so), with Reason "s3".
func (l *hvmLifecycle) stateLocked() State {
	switch {
	case l.ended != 0:
		return l.ended
	case l.suspended:
		return Suspended
	case l.created:
		return Created
	case l.paused || l.s3:
		return Paused
	}
	return Running
}

func (l *hvmLifecycle) heldLocked() bool { return l.created || l.paused || l.s3 || l.suspended }

// hvmStateError is a request the domain's state refuses; it matches
// ErrWrongState (a 409 from the API).
type hvmStateError struct{ msg string }

func (e *hvmStateError) Error() string        { return e.msg }
func (e *hvmStateError) Is(target error) bool { return target == ErrWrongState }

func (d *HVMDomain) refuse(op Op, st State, why string) error {
	msg := fmt.Sprintf("cannot %s domain %d: it is %s", op, d.ID, st)
	if why != "" {
		msg += " (" + why + ")"
	}
	return &hvmStateError{msg}
}

// Start runs the domain in the background with its vCPUs held (Created)
// until Unpause; Status and Changed follow it from then on.
func (d *HVMDomain) Start() error {
	l := &d.lc
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.run || l.released {
		return errors.New("the domain was started or destroyed already")
	}
	l.run = true
	d.m.RequestPause() // the vCPUs start parked
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel, l.done = cancel, make(chan struct{})
	go func() {
		defer close(l.done)
		e, err := d.Xen.Run(ctx)
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.ended != 0 {
			return // destroyed
		}
		switch {
		case err != nil: // the run failed without a report of its own
			l.ended, l.exit = Crashed, hvm.Exit{Crash: &machine.CrashError{Reason: err.Error()}}
		case e.Crash != nil:
			l.ended, l.exit = Crashed, e
		default:
			l.ended, l.exit = Shutdown, e
		}
		l.notifyLocked()
	}()
	return nil
}

// Status returns the domain's state and how it last stopped, in the
// toolstack's terms (Exit.State is set for Reason).
func (d *HVMDomain) Status() Status {
	l := &d.lc
	l.mu.Lock()
	defer l.mu.Unlock()
	st := Status{State: l.stateLocked(), DestroyedFrom: l.from, Saved: l.saved, Migrated: l.migrated}
	st.Exit.Reason, st.Exit.Crash = l.exit.Reason, l.exit.Crash
	switch {
	case l.suspended && l.ended == 0:
		st.Exit.State, st.Exit.Reason = xen.Shutdown, xenabi.ShutdownSuspend
	case l.exit.Crash != nil:
		st.Exit.State = xen.Crashed
	case l.ended != 0:
		st.Exit.State = xen.Shutdown
	}
	return st
}

// InS3 reports whether the guest is in ACPI S3 (held until S3Resume).
func (d *HVMDomain) InS3() bool {
	d.lc.mu.Lock()
	defer d.lc.mu.Unlock()
	return d.lc.s3
}

// SuspendedByGuest reports whether the domain is suspended because the
// guest suspended itself (PVHVM: SCHEDOP_shutdown(SHUTDOWN_suspend), whose
// hypercall a resume returns from), not remotely by the toolstack.
func (d *HVMDomain) SuspendedByGuest() bool {
	d.lc.mu.Lock()
	defer d.lc.mu.Unlock()
	return d.lc.suspended && d.lc.coop && d.lc.ended == 0
}

// Changed returns a channel closed at the domain's next change of state.
func (d *HVMDomain) Changed() <-chan struct{} {
	d.lc.mu.Lock()
	defer d.lc.mu.Unlock()
	return d.lc.changed
}

// MemSize returns the domain's RAM size in bytes.
func (d *HVMDomain) MemSize() uint64 { return d.memSize }

// applyLocked asks the vCPUs to park while anyone holds the domain and
// lets them run otherwise; it does not wait.
func (d *HVMDomain) applyLocked() {
	if d.lc.released || d.lc.ended != 0 {
		return
	}
	if d.lc.heldLocked() {
		d.m.RequestPause()
	} else {
		d.m.Unpause()
	}
}

// onS3 is the hypervisor's news of S3 (hvm.Config.OnS3): the guest's
// entry takes the S3 reference, S3Resume drops it.
func (d *HVMDomain) onS3(asleep bool) {
	l := &d.lc
	l.mu.Lock()
	defer l.mu.Unlock()
	l.s3 = asleep
	switch {
	case asleep:
	case !l.run: // Run in the foreground: nothing else holds the domain
		d.m.Unpause()
	default:
		d.applyLocked()
	}
	l.notifyLocked()
}

// onGuestSuspend is the hypervisor's news that the guest suspended itself
// (hvm.Config.OnSuspend): SCHEDOP_shutdown(SHUTDOWN_suspend), its vCPU
// parked after the hypercall with %eax 0. A started domain is suspended
// until Resume or a save; one run in the foreground (Run) has no one to
// resume it, and ends with reason suspend.
func (d *HVMDomain) onGuestSuspend() bool {
	l := &d.lc
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.run {
		return false
	}
	l.suspended, l.coop = true, true
	d.applyLocked()
	l.notifyLocked()
	return true
}

// Unpause drops the toolstack's pause, or lets a created domain run for
// the first time (xl unpause). A domain held by the guest's S3 stays held:
// only the s3resume trigger wakes it.
func (d *HVMDomain) Unpause() error {
	l := &d.lc
	l.mu.Lock()
	defer l.mu.Unlock()
	switch st := l.stateLocked(); {
	case st == Created:
		l.created = false
	case st == Paused && l.paused:
		l.paused = false
	case st == Paused:
		return d.refuse(OpUnpause, st, "the guest is in ACPI S3: `runvm trigger DOM s3resume` wakes it")
	default:
		return d.refuse(OpUnpause, st, "")
	}
	d.applyLocked()
	l.notifyLocked()
	return nil
}

// Pause takes the toolstack's pause (xl pause) and waits until the vCPUs
// are parked. A domain in S3 may be paused too; it then needs both the
// trigger and an unpause to run.
func (d *HVMDomain) Pause(ctx context.Context) error {
	l := &d.lc
	l.mu.Lock()
	st := l.stateLocked()
	if st != Running && !(st == Paused && !l.paused) {
		l.mu.Unlock()
		return d.refuse(OpPause, st, "")
	}
	l.paused = true
	d.applyLocked()
	l.notifyLocked()
	l.mu.Unlock()
	if err := d.m.WaitPaused(ctx); err != nil {
		return fmt.Errorf("pause domain %d: %w", d.ID, err)
	}
	return nil
}

// PressButton is `xl trigger DOM power` (power) or `xl trigger DOM sleep`:
// Xen's XEN_DOMCTL_SENDTRIGGER_POWER and _SLEEP set PM1a_STS's PWRBTN_STS
// or SLPBTN_STS and raise the SCI if the guest enabled it; what the
// guest's ACPI driver makes of it (a poweroff, a suspend) is its own
// business. A PVH domain has no ACPI PM block, and a domain that ended
// takes no trigger.
func (d *HVMDomain) PressButton(power bool) error {
	what := "sleep"
	if power {
		what = "power"
	}
	l := &d.lc
	l.mu.Lock()
	defer l.mu.Unlock()
	if st := l.stateLocked(); st.Ended() {
		return d.refuse(Op(what), st, "")
	}
	if err := d.Xen.Button(power); err != nil {
		return fmt.Errorf("trigger %s: %w", what, err)
	}
	return nil
}

// S3Resume is `xl trigger DOM s3resume`: it wakes a guest in ACPI S3
// through the firmware's S3 path (hvm.Domain.S3Resume). The domain runs
// then unless the toolstack paused or suspended it meanwhile.
func (d *HVMDomain) S3Resume(ctx context.Context) error {
	if d.Xen.Kind() == builder.KindPVH {
		return fmt.Errorf("s3resume: domain %d has no ACPI (PVH)", d.ID)
	}
	l := &d.lc
	l.mu.Lock()
	st, s3 := l.stateLocked(), l.s3
	l.mu.Unlock()
	if !s3 || st.Ended() {
		return d.refuse("s3resume", st, "the guest is not in ACPI S3")
	}
	if err := d.Xen.S3Resume(ctx); err != nil {
		return fmt.Errorf("domain %d: %w", d.ID, err)
	}
	return nil
}

// Suspend suspends the domain as libxl does an HVM or PVH guest
// (domain_suspend_callback_common), and waits until its vCPUs are parked:
//
//   - an HVM guest with HVM_PARAM_CALLBACK_IRQ 0 (no PV drivers) or in
//     ACPI S3 is shut down with SHUTDOWN_suspend remotely
//     (xc_domain_shutdown): the vCPUs stop wherever they are and the guest
//     takes no part (libxl does this for LIBXL_DOMAIN_TYPE_HVM only);
//   - a PVH guest always, and an HVM guest with a callback IRQ (PV
//     drivers), is asked
//     through xenstore: "suspend" in control/shutdown, which its driver
//     watches; it suspends itself with SCHEDOP_shutdown(SHUTDOWN_suspend)
//     (no start_info, unlike PV), and Suspend waits for that until ctx
//     ends or libxl's timeouts (DefaultSuspendTimeouts, together) pass. A guest that does not answer in time has the request taken
//     back (the node emptied) and the suspend fails, the guest running on.
func (d *HVMDomain) Suspend(ctx context.Context) error {
	l := &d.lc
	l.mu.Lock()
	st := l.stateLocked()
	if st != Running && st != Paused {
		l.mu.Unlock()
		return d.refuse(OpSuspend, st, "")
	}
	cb, _ := d.Xen.Param(hvm.ParamCallbackIRQ)
	if d.Xen.Kind() == builder.KindPVH || cb != 0 && !l.s3 {
		l.mu.Unlock()
		return d.suspendPV(ctx, cb)
	}
	l.mu.Unlock()
	return d.suspendRemotely(ctx)
}

// suspendRemotely is xc_domain_shutdown(SHUTDOWN_suspend): the vCPUs stop
// where they are, with no guest involvement. libxl does it to HVM guests
// only (Suspend); libxc, and the tests, can do it to any domain.
func (d *HVMDomain) suspendRemotely(ctx context.Context) error {
	l := &d.lc
	l.mu.Lock()
	if st := l.stateLocked(); st != Running && st != Paused {
		l.mu.Unlock()
		return d.refuse(OpSuspend, st, "")
	}
	l.suspended = true
	d.applyLocked()
	l.notifyLocked()
	l.mu.Unlock()
	if err := d.m.WaitPaused(ctx); err != nil {
		return fmt.Errorf("suspend domain %d: %w", d.ID, err)
	}
	return nil
}

// suspendPV is the PVHVM handshake: control/shutdown = "suspend", then
// the guest's own SHUTDOWN_suspend (onGuestSuspend).
func (d *HVMDomain) suspendPV(ctx context.Context, cb uint64) error {
	if d.store == nil {
		return fmt.Errorf("suspend domain %d: the guest is PVH or has PV drivers (HVM_PARAM_CALLBACK_IRQ %#x) and there is no xenstore to ask it through", d.ID, cb)
	}
	// libxl's bounds, the ack's and the shutdown's together: the guest's
	// clearing of the node (its ack) is not waited for on its own.
	ctx, cancel := context.WithTimeout(ctx, DefaultSuspendTimeouts.Ack+DefaultSuspendTimeouts.Shutdown)
	defer cancel()
	node := xenstore.DomainPath(uint32(d.ID)) + "/control/shutdown"
	if err := d.store.Write(node, "suspend"); err != nil {
		return fmt.Errorf("suspend domain %d: %w", d.ID, err)
	}
	for {
		ch := d.Changed()
		st := d.Status()
		switch {
		case st.State == Suspended:
			if err := d.m.WaitPaused(ctx); err != nil {
				return fmt.Errorf("suspend domain %d: %w", d.ID, err)
			}
			return nil
		case st.State.Ended():
			return fmt.Errorf("suspend domain %d: it ended (%v) instead of suspending", d.ID, st.State)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			d.store.Write(node, "") // taken back, as libxl does when the guest does not answer
			return fmt.Errorf("suspend domain %d: the guest did not suspend itself after control/shutdown = \"suspend\": %w", d.ID, ctx.Err())
		}
	}
}

// Resume resumes a suspended domain as xc_domain_resume does an HVM
// guest (XEN_DOMCTL_resumedomain). A domain suspended remotely goes on at
// the very instruction where it stopped, its registers as they were;
// fast (the cooperative resume) is refused for it: the guest made no
// hypercall that could return 1, and libxc's cooperative path would
// overwrite its %rax. A guest that suspended itself (PVHVM) returns from
// its SCHEDOP_shutdown: with fast, 1 in %rax (libxc's modify_returncode,
// for a guest with HVM_PARAM_CALLBACK_IRQ set): it was cancelled, and
// goes on in the same domain with its callbacks, event channels and
// shared_info as they were; without fast, 0, and the guest redoes its
// setup as after a resume in a new domain. A guest that was in S3 stays
// held until the s3resume trigger (the S3 reference stays), a paused one
// until unpause.
func (d *HVMDomain) Resume(fast bool) error { return d.resume(fast, false) }

// resume is Resume; a migration's own (migration) resumes the domain it
// holds, and lets go of it.
func (d *HVMDomain) resume(fast, migration bool) error {
	l := &d.lc
	l.mu.Lock()
	defer l.mu.Unlock()
	if migration {
		l.migrating = false
	}
	if st := l.stateLocked(); st != Suspended {
		return d.refuse(OpResume, st, "")
	}
	if l.migrating {
		return d.refuse(OpResume, Suspended, "a migration is sending it; it resumes here if the migration fails")
	}
	if fast && !l.coop {
		return fmt.Errorf("resume --fast of domain %d: it was suspended remotely, not by a hypercall that could return 1; resume it without --fast", d.ID)
	}
	if fast {
		if cb, _ := d.Xen.Param(hvm.ParamCallbackIRQ); cb != 0 {
			v := d.m.VCPUs()[0]
			r, err := v.GetRegs()
			if err != nil {
				return fmt.Errorf("resume --fast of domain %d: %w", d.ID, err)
			}
			r.RAX = 1
			if err := v.SetRegs(r); err != nil {
				return fmt.Errorf("resume --fast of domain %d: %w", d.ID, err)
			}
		}
	}
	l.suspended, l.coop = false, false
	d.applyLocked()
	l.notifyLocked()
	return nil
}

// RequestShutdown asks the guest to power off or reboot as libxl does an
// HVM or PVH guest: through control/shutdown for a PVH guest always, and
// for an HVM guest when it has PV drivers (HVM_PARAM_CALLBACK_IRQ set:
// libxl__domain_pvcontrol_available); without them xl needs -F, which
// presses the ACPI power button instead (PressButton, `runvm trigger DOM
// power`); here it is refused.
func (d *HVMDomain) RequestShutdown(reason string) error {
	if reason != "poweroff" && reason != "reboot" {
		return fmt.Errorf("shutdown reason %q: want poweroff or reboot", reason)
	}
	l := &d.lc
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.stateLocked()
	if st.Ended() {
		return d.refuse(OpShutdown, st, "")
	}
	if cb, _ := d.Xen.Param(hvm.ParamCallbackIRQ); cb == 0 && d.Xen.Kind() != builder.KindPVH {
		return fmt.Errorf("shutdown domain %d: no PV control interface (HVM_PARAM_CALLBACK_IRQ 0, as libxl's ERROR_NOPARAVIRT); xl shutdown -F falls back to the ACPI power button: runvm trigger DOM power", d.ID)
	}
	if d.store == nil {
		return fmt.Errorf("shutdown domain %d: no xenstore", d.ID)
	}
	if err := d.store.Write(xenstore.DomainPath(uint32(d.ID))+"/control/shutdown", reason); err != nil {
		return fmt.Errorf("shutdown domain %d: %w", d.ID, err)
	}
	return nil
}

// destroy ends a started domain: its vCPUs stop, its machine and xenstore
// connection are released, and it is Destroyed.
func (d *HVMDomain) destroy() error {
	l := &d.lc
	l.mu.Lock()
	if l.ended == Destroyed {
		l.mu.Unlock()
		return d.refuse(OpDestroy, Destroyed, "")
	}
	l.from = l.stateLocked()
	l.ended = Destroyed
	l.opStop()
	l.cancel()
	done := l.done
	l.mu.Unlock()
	<-done
	l.ops.Wait()
	err := d.release()
	l.mu.Lock()
	l.notifyLocked()
	l.mu.Unlock()
	return err
}
