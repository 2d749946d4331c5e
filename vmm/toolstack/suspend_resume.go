package toolstack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"strconv"

	"github.com/xenresume/xenresume/vmm/timeline"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
	"github.com/xenresume/xenresume/vmm/xenstore"
)

// Suspend errors, distinct so callers can tell what the guest did.
var (
	// ErrSuspendNotAcknowledged: the guest left control/shutdown at
	// "suspend" (its only way to refuse); the request was cancelled and
	// the guest keeps running. libxl reports success here (a known
	// quirk); xenresume reports it.
	ErrSuspendNotAcknowledged = errors.New("guest did not acknowledge the suspend request; request cancelled")
	// ErrGuestDidNotSuspend: the guest acknowledged but never called
	// SCHEDOP_shutdown(SHUTDOWN_suspend).
	ErrGuestDidNotSuspend = errors.New("guest acknowledged the suspend request but did not suspend")
	// ErrWrongShutdown: the guest shut down, but not to suspend.
	ErrWrongShutdown = errors.New("guest shut down with another reason while suspending")
)

// SuspendTimeouts bound the two waits of a suspend; libxl uses 60 s each.
type SuspendTimeouts struct {
	Ack      time.Duration // for control/shutdown to change
	Shutdown time.Duration // for SCHEDOP_shutdown(SHUTDOWN_suspend) after the ack
}

// DefaultSuspendTimeouts are libxl's.
var DefaultSuspendTimeouts = SuspendTimeouts{Ack: 60 * time.Second, Shutdown: 60 * time.Second}

func (d *Domain) controlPath(node string) string {
	return xenstore.DomainPath(uint32(d.ID)) + "/control/" + node
}

// Suspend asks a running PV guest to suspend (Suspending) and returns once
// it has (Suspended); if it does not, the domain is Running again, or in
// whatever state the guest went to by itself (Shutdown, Crashed).
func (d *Domain) Suspend(ctx context.Context, to SuspendTimeouts) error {
	_, opCtx, end, err := d.begin(ctx, OpSuspend, Suspending)
	if err != nil {
		return err
	}
	if err := d.suspend(opCtx, to, d.opSpan()); err != nil {
		end(Running)
		return err
	}
	end(Suspended)
	return nil
}

// suspend asks a PV guest to suspend with Xen's xenstore protocol, as
// libxl's domain_suspend_callback_common does, and returns once every vCPU
// is parked in the hypercall's return path:
//
//  1. write "suspend" to control/shutdown;
//  2. wait for the acknowledgement: any other value, or the node's removal;
//  3. on a timeout, cancel in a transaction (unless the guest acknowledged
//     at the last moment) and return ErrSuspendNotAcknowledged;
//  4. wait for the domain to shut down with SHUTDOWN_suspend
//     (ErrGuestDidNotSuspend, ErrWrongShutdown, or a crash, otherwise);
//  5. wait for every vCPU to park, and tell xenstored, which fires
//     @releaseDomain.
//
// span (nil: not recording) gets its phases, which tile it: "request"
// (writing control/shutdown, or signalling the event channel), "ack"
// (waiting for the guest to clear it), "suspend hypercall" (from the ack
// until the hypervisor has seen SCHEDOP_shutdown(SHUTDOWN_suspend)) and
// "pause" (until the vCPUs are parked, and the operation's end).
func (d *Domain) suspend(ctx context.Context, to SuspendTimeouts, span *timeline.Span) error {
	s := d.ts.store
	d.phase(span, "request")
	// The event-channel method, when the guest published a port in
	// device/suspend/event-channel: signal it; no acknowledgement.
	if port, ok := d.suspendPort(); ok {
		if err := d.ts.xen.Dom0().Send(port); err != nil {
			return fmt.Errorf("signal the suspend event channel: %w", err)
		}
		return d.waitSuspended(ctx, to, span)
	}
	path := d.controlPath("shutdown")
	if err := s.Write(path, "suspend"); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	d.phase(span, "ack")
	acked := func() bool {
		v, err := s.Read(path)
		return err != nil || v != "suspend"
	}
	ackCtx, cancel := context.WithTimeout(ctx, to.Ack)
	s.Watch(ackCtx, path, func() bool { return !acked() })
	cancel()
	if !acked() {
		if err := ctx.Err(); err != nil {
			return err
		}
		late := false
		err := s.Update(func(read func(string) (string, error), write func(string, string) error) error {
			v, err := read(path)
			if err != nil || v != "suspend" {
				late = true
				return nil
			}
			return write(path, "")
		})
		if err != nil {
			return fmt.Errorf("cancelling the suspend request: %w", err)
		}
		if !late {
			d.ts.log.Warn("guest didn't acknowledge suspend, cancelling request", "domid", d.ID)
			return ErrSuspendNotAcknowledged
		}
	}
	return d.waitSuspended(ctx, to, span)
}

// waitSuspended waits for the shutdown with SHUTDOWN_suspend and for the
// vCPUs to park.
func (d *Domain) waitSuspended(ctx context.Context, to SuspendTimeouts, span *timeline.Span) error {
	d.phase(span, "suspend hypercall")
	waitCtx, cancel := context.WithTimeout(ctx, to.Shutdown)
	defer cancel()
	exit, err := d.Wait(waitCtx)
	switch {
	case err != nil && ctx.Err() == nil:
		return ErrGuestDidNotSuspend
	case err != nil:
		return err
	case exit.State == xen.Crashed:
		return fmt.Errorf("guest crashed while suspending: %s", exit.Crash.Reason)
	case exit.Reason != xenabi.ShutdownSuspend:
		return fmt.Errorf("%w: %s", ErrWrongShutdown, xen.ShutdownName(exit.Reason))
	}
	d.phase(span, "pause")
	if d.machine != nil {
		// The hypervisor asked for the pause with the shutdown.
		if err := d.machine.WaitPaused(ctx); err != nil {
			return err
		}
	}
	d.ts.store.DomainShutdown(uint32(d.ID))
	return nil
}

// suspendPort returns dom0's end of the guest's suspend event channel,
// binding to the port the guest published (xs_suspend_evtchn_port +
// xc_suspend_evtchn_init_exclusive) the first time, or again when it
// published another.
func (d *Domain) suspendPort() (uint32, bool) {
	v, err := d.ts.store.Read(xenstore.DomainPath(uint32(d.ID)) + "/device/suspend/event-channel")
	if err != nil || v == "" {
		return 0, false
	}
	guestPort, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return 0, false
	}
	d.suspendMu.Lock()
	defer d.suspendMu.Unlock()
	if d.suspendBound == uint32(guestPort) && d.suspendLocal != 0 {
		if st, err := d.ts.xen.Dom0().Status(d.suspendLocal); err == nil && st.State == xen.StatInterdomain {
			return d.suspendLocal, true
		}
	}
	local, err := d.ts.xen.Dom0().BindInterdomain(d.ID, uint32(guestPort), func() {})
	if err != nil {
		d.ts.log.Warn("cannot bind the guest's suspend event channel; using xenstore", "domid", d.ID, "port", guestPort, "err", err)
		return 0, false
	}
	d.suspendBound, d.suspendLocal = uint32(guestPort), local
	return local, true
}

// Resume brings a suspended domain back in the same domain and leaves it
// Paused, with vCPU 0 in the hypercall's return path: Unpause runs it. If
// it fails, the domain stays Suspended.
func (d *Domain) Resume(ctx context.Context, fast bool) error {
	_, opCtx, end, err := d.begin(ctx, OpResume, keep)
	if err != nil {
		return err
	}
	if err := d.resume(opCtx, fast, d.opSpan()); err != nil {
		end(Suspended)
		return err
	}
	end(Paused)
	return nil
}

// resume is xc_domain_resume and libxl's domain_resume_done on a suspended
// domain: it returns with the domain paused and vCPU 0 in the hypercall's
// return path.
//
// fast (cooperative, suspend_cancel): vCPU 0's %rax becomes 1, so the
// guest's SCHEDOP_shutdown returns 1 and it carries on with everything in
// place. Not fast: %rax stays 0, so the guest believes it is in a new
// domain; the toolstack finds start_info by vCPU 0's %rdx and rewrites its
// store and console frames from PFN back to MFN. Then XS_RESUME.
//
// span (nil: not recording) gets its phases, which tile it: "registers"
// (fast: vCPU 0's %rax) or "start_info" (its frames back to MFNs), "time
// and event channels" (vcpu_time_info, the hypervisor's resume) and
// "XS_RESUME"; and the guest track gets a mark, "first hypercall after
// resume", at the first hypercall the guest makes once unpaused: the
// first thing it does that the VMM's Xen sees (an earlier VM exit, a page
// fault say, is not one the hypervisor handles).
func (d *Domain) resume(ctx context.Context, fast bool, span *timeline.Span) error {
	exit := d.Xen.Exit()
	if exit.State != xen.Shutdown || exit.Reason != xenabi.ShutdownSuspend {
		return fmt.Errorf("domain %d is not suspended in the hypervisor (%v)", d.ID, exit)
	}
	if fast {
		d.phase(span, "registers")
	} else {
		d.phase(span, "start_info")
	}
	if err := d.machine.WaitPaused(ctx); err != nil {
		return err
	}
	v0 := d.machine.VCPUs()[0]
	regs, err := v0.GetRegs()
	if err != nil {
		return err
	}
	if fast {
		regs.RAX = 1
		if err := v0.SetRegs(regs); err != nil {
			return err
		}
	} else {
		pfn, err := d.StartInfoPFN(exit)
		if err != nil {
			return err
		}
		if err := d.uncanonicalise(pfn); err != nil {
			return err
		}
		// xc_domain_resume_any resets every secondary vCPU
		// (xc_vcpu_setcontext with no context): the guest initialises
		// and brings them up again, as after a boot.
		for i := 1; i < len(d.machine.VCPUs()); i++ {
			if err := d.Xen.ResetVCPU(i); err != nil {
				return err
			}
		}
	}
	// Refresh vcpu_time_info so system time stays continuous.
	d.phase(span, "time and event channels")
	if err := d.Xen.UpdateTime(); err != nil {
		return err
	}
	if span != nil {
		d.Xen.MarkNextHypercall("first hypercall after resume")
	}
	if err := d.Xen.ResumeSuspended(); err != nil {
		return err
	}
	d.phase(span, "XS_RESUME")
	return d.ts.store.ResumeDomain(uint32(d.ID))
}

// uncanonicalise rewrites start_info's store and console frames from the
// PFNs the guest left there to MFNs (xc_domain_resume_any).
func (d *Domain) uncanonicalise(pfn uint64) error {
	page, err := d.machine.Memory().Page(pfn << 12)
	if err != nil {
		return err
	}
	si := xenabi.View[xenabi.StartInfo](page)
	frames := d.Xen.Frames()
	store, ok1 := frames.MFN(si.Store_mfn)
	con, ok2 := frames.MFN(u64(si.Console[:]))
	if !ok1 || !ok2 {
		return fmt.Errorf("start_info's store %#x and console %#x frames are not the domain's PFNs", si.Store_mfn, u64(si.Console[:]))
	}
	si.Store_mfn = store
	putU64(si.Console[:], con)
	return nil
}

// InReturnPath reports whether vCPU 0 of a paused domain sits in the
// sched_op hypercall's return path, where xc_domain_resume leaves it.
func (d *Domain) InReturnPath() (bool, uint64, error) {
	regs, err := d.machine.VCPUs()[0].GetRegs()
	if err != nil {
		return false, 0, err
	}
	return regs.RIP == d.Xen.HypercallReturnAddress(d.Layout.HypercallPage, xenabi.HypervisorSchedOp), regs.RAX, nil
}

func u64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }

func putU64(b []byte, v uint64) { binary.LittleEndian.PutUint64(b, v) }
