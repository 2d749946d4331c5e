package toolstack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/xlcfg"
)

// ErrHVMLive is returned by HVMDomain.Migrate for a live migration, which
// is not done for HVM and PVH domains yet: only MigrateOptions.NonLive.
var ErrHVMLive = errors.New("live migration of HVM and PVH domains is not done yet; migrate with --live=false (non-live)")

// Migrate sends the HVM or PVH domain to w as xl migrate does, non-live
// (o.NonLive must be set; a live migration is refused with ErrHVMLive):
// the guest is suspended as Suspend does it (remotely for an HVM guest
// without PV drivers; the control/shutdown handshake for a PVH guest and
// a PVHVM one), and the stream an `xl save` of it would write goes to w
// (SaveStream: every frame, then X86_TSC_INFO, HVM_CONTEXT and
// HVM_PARAMS). handoff then runs the migration protocol's end and says
// what the target did, and the domain follows it as Domain.Migrate's
// does: Destroyed (Status.Migrated) after HandedOver; resumed after
// NotHandedOver or any failure before the handoff (as `xl migrate` does
// with suspend_cancel: a guest that suspended itself sees its
// SCHEDOP_shutdown return 1 and goes on in this domain; one suspended
// remotely goes on where it stopped); left Suspended after HandoffUnknown,
// with an error that wraps ErrHandoffUnknown. The stats hold one round,
// the final one. A domain that is paused is migrated too (it comes back
// paused if the migration fails); o.Abort is called if the domain is
// destroyed, or ctx ends, while the stream is written.
func (d *HVMDomain) Migrate(ctx context.Context, w io.Writer, o MigrateOptions,
	handoff func(ctx context.Context) (Handoff, error)) (stats MigrateStats, err error) {
	if !o.NonLive {
		return stats, fmt.Errorf("migrate domain %d: %w", d.ID, ErrHVMLive)
	}
	l := &d.lc
	l.mu.Lock()
	st := l.stateLocked()
	if st != Running && st != Paused || l.migrating {
		l.mu.Unlock()
		return stats, d.refuse(OpMigrate, st, "")
	}
	// Until the handoff says what happened, no resume or save may take
	// the suspended domain: the guest would run here and on the target.
	l.migrating = true
	l.mu.Unlock()
	unhold := func() {
		l.mu.Lock()
		l.migrating = false
		l.mu.Unlock()
	}
	opCtx, done, err := d.beginOp(ctx, OpMigrate)
	if err != nil {
		unhold()
		return stats, err
	}
	if o.Abort != nil {
		stop := context.AfterFunc(opCtx, o.Abort)
		defer stop()
	}
	ended := false
	end := func() { // once: the operation must end before a destroy waits for it
		if !ended {
			ended = true
			done()
		}
	}
	defer end()
	suspendedAt := time.Now()
	if err := d.Suspend(opCtx); err != nil {
		unhold()
		return stats, fmt.Errorf("migrate: %w", err)
	}
	// From here on the guest is suspended: anything that fails before
	// the target says it runs the guest resumes it here.
	outcome, err := func() (Handoff, error) {
		start := time.Now()
		cw := &countingWriter{w: w}
		bw := bufio.NewWriterSize(cw, 1<<20)
		if _, err := d.SaveStream(opCtx, bw); err != nil {
			return NotHandedOver, err
		}
		if err := bw.Flush(); err != nil {
			return NotHandedOver, fmt.Errorf("migrate domain %d: %w", d.ID, err)
		}
		var pages uint64
		for _, r := range guestRegions(d.m.Memory()) {
			pages += uint64(len(r.Mem) / machine.PageSize)
		}
		stats.Bytes = cw.n
		stats.Rounds = append(stats.Rounds, MigrateRound{Final: true, Pages: pages, Dirty: -1, Bytes: cw.n, Elapsed: time.Since(start)})
		if o.Progress != nil {
			o.Progress(stats.Rounds[0])
		}
		return handoff(opCtx)
	}()
	stats.Outcome = outcome
	switch {
	case err == nil && outcome == HandedOver:
		stats.Downtime = time.Since(suspendedAt)
		l.mu.Lock()
		l.migrated = true
		l.mu.Unlock()
		end()
		derr := d.Destroy()
		unhold()
		if derr != nil {
			return stats, fmt.Errorf("migrated, but destroying the domain here failed: %w", derr)
		}
		return stats, nil
	case outcome == HandoffUnknown:
		unhold() // the operator's to resume or destroy
		if err == nil {
			err = errors.New("the target's report is unknown")
		}
		return stats, fmt.Errorf("migrate: %w: %w", ErrHandoffUnknown, err)
	}
	if err == nil {
		err = errors.New("the target did not take the domain")
	}
	l.mu.Lock()
	fast := l.coop
	l.mu.Unlock()
	if rerr := d.resume(fast, true); rerr != nil {
		return stats, fmt.Errorf("migrate: %w (and resuming the guest here failed, it stays suspended: %v)", err, rerr)
	}
	return stats, fmt.Errorf("migrate: %w; the guest resumed here", err)
}

// IsHVMConfig reports whether an xl configuration (a save file's or an
// incoming migration's) describes an HVM or PVH domain: type = "hvm" or
// "pvh". A configuration it cannot read in xl's syntax is not.
func IsHVMConfig(text string) bool {
	x, err := xlcfg.Parse("saved configuration", []byte(text))
	if err != nil {
		return false
	}
	c, err := xlcfg.Decode(x, "/")
	if err != nil {
		return false
	}
	return c.Type == "hvm" || c.Type == "pvh"
}
