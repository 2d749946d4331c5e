package toolstack

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/xenresume/xenresume/vmm/kvmext"
	"github.com/xenresume/xenresume/vmm/timeline"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// State is where a domain is in its lifecycle. The toolstack's Domain is
// its one owner: every operation and every change the guest makes itself
// (a shutdown, a suspend it starts, a crash) goes through one table of
// allowed transitions (allowed and observed below), and the CLI and API
// report this state instead of working it out. docs/ARCHITECTURE.md draws
// the machine.
//
// Destroy is allowed from every state but Destroyed; it cancels an
// operation in flight first. A Save that fails, or a checkpoint, returns
// the domain to the state it had before; a Save that is not a checkpoint
// ends in Destroyed, as `xl save` does.
type State int

// Lifecycle states.
const (
	// Created: built (or restored) and paused; it has not run since.
	Created State = iota
	// Running: the vCPUs run guest code.
	Running
	// Paused: the toolstack paused the vCPUs; nothing else changed.
	Paused
	// Suspending: the toolstack asked the guest to suspend and waits.
	Suspending
	// Suspended: the guest called SCHEDOP_shutdown(SHUTDOWN_suspend); its
	// vCPUs are parked in the hypercall's return path.
	Suspended
	// Saving: the domain's memory and state are being written to a file.
	Saving
	// Shutdown: the guest shut down with a reason other than suspend.
	Shutdown
	// Crashed: the VMM ended the domain (triple fault, bad exit, ...).
	Crashed
	// Destroyed: the domain's resources are released.
	Destroyed
	// DebugStopped: a debugger (gdb, through DomainTarget) stopped the
	// running guest, or took a created one: its vCPUs are parked, and only the debugger's
	// continue (or a single step, which leaves it DebugStopped), Destroy
	// or the guest itself (a step that shuts it down) move it.
	DebugStopped
	// Migrating: the domain is being sent to another host (Migrate): the
	// guest runs while its memory is copied, then is suspended for the
	// last copy and the handoff. It ends Destroyed when the target took
	// the guest, Running when it did not (the guest sees its suspend
	// return 1), or Suspended when the handoff broke after the target was
	// told to start (no one knows whether it did; the guest must not run
	// twice).
	Migrating
	// Replicating: Remus checkpoints the domain to a secondary every
	// interval (Remus); the guest runs between checkpoints. It ends
	// Running when the replication stops.
	Replicating
)

var stateNames = [...]string{"created", "running", "paused", "suspending", "suspended", "saving", "shutdown", "crashed", "destroyed", "debug-stopped", "migrating", "replicating"}

func (s State) String() string {
	if int(s) < len(stateNames) && s >= 0 {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// Busy reports whether s is the transient state of an operation in flight.
func (s State) Busy() bool {
	return s == Suspending || s == Saving || s == Migrating || s == Replicating
}

// Ended reports whether the domain will never run again in this state.
func (s State) Ended() bool { return s == Shutdown || s == Crashed || s == Destroyed }

// Op names an operation on a domain, for the transition table and errors.
type Op string

// Operations. The guest's own shutdown and crashes are not requests; they
// are observed (see Domain.observe) and follow the same table.
const (
	OpUnpause  Op = "unpause"
	OpPause    Op = "pause"
	OpSuspend  Op = "suspend"
	OpResume   Op = "resume"
	OpSave     Op = "save"
	OpShutdown Op = "shutdown" // ask the guest: poweroff or reboot
	OpDestroy  Op = "destroy"
	OpMigrate  Op = "migrate"
	OpRemus    Op = "remus"
	// The debugger's stop and continue (gdb.go).
	OpDebugStop     Op = "debug-stop"
	OpDebugContinue Op = "debug-continue"
)

// allowed is the transition table: the states each operation may start
// from. Where it goes is the operation's business (each says in its doc).
var allowed = map[Op][]State{
	OpUnpause:  {Created, Paused},
	OpPause:    {Running},
	OpSuspend:  {Running},
	OpResume:   {Suspended},
	OpSave:     {Running, Suspended},
	OpShutdown: {Running, Paused, Created, DebugStopped},
	OpMigrate:  {Running},
	OpRemus:    {Running},
	OpDestroy:  {Created, Running, Paused, Suspending, Suspended, Saving, Shutdown, Crashed, DebugStopped, Migrating, Replicating},
	// Only the debugger stops a running guest in the debugger (or a
	// created one that waits for it: runvm --gdb-wait) and lets it go
	// again; a paused or suspended guest stays the toolstack's (the
	// debugger waits for it to run), and a debug-stopped one cannot be
	// paused, unpaused, suspended or saved until the debugger continues.
	OpDebugStop:     {Running, Created},
	OpDebugContinue: {DebugStopped},
}

// observed is what the guest (or the VMM on its behalf) may do by itself,
// from the states in which its vCPUs run.
var observed = map[State][]State{
	Running:   {Suspended, Shutdown, Crashed},
	Created:   {Crashed},
	Paused:    {Crashed},
	Suspended: {Crashed},
	// A single step runs guest code in DebugStopped.
	DebugStopped: {Suspended, Shutdown, Crashed},
}

// ErrWrongState is what every refused request wraps (errors.Is).
var ErrWrongState = errors.New("domain is in the wrong state")

// WrongStateError says which request was refused and the state the domain
// was in.
type WrongStateError struct {
	Domid uint16
	Op    Op
	State State
}

func (e *WrongStateError) Error() string {
	return fmt.Sprintf("cannot %s domain %d: it is %s", e.Op, e.Domid, e.State)
}

// Is makes errors.Is(err, ErrWrongState) true.
func (e *WrongStateError) Is(target error) bool { return target == ErrWrongState }

// lifecycle is a domain's state and the bookkeeping around it. Requests
// never wait for one another: one in flight makes the domain Busy, and a
// conflicting request is refused with the transient state, except Destroy,
// which cancels it and waits.
type lifecycle struct {
	mu       sync.Mutex
	changed  chan struct{} // closed and replaced at every change
	state    State
	exit     xen.Exit // the guest's last stop (shutdown reason, crash)
	saved    bool     // ended by a save that was not a checkpoint
	migrated bool     // ended by a migration the target took
	from     State    // Destroyed: the state destroy ended
	inFlight bool     // an operation holds the domain
	cancelOp context.CancelFunc
	idle     chan struct{} // closed when the operation in flight ends

	tl *timeline.Recorder // spans of operations, instants of the guest's stops; nil: none
	op *timeline.Span     // the span of the operation in flight; nil: none or not recording
}

// SetTimeline records the domain's lifecycle on r from now on: a span per
// operation on the toolstack track (from its start to the state it
// settles in) and an instant per stop the guest makes by itself.
func (d *Domain) SetTimeline(r *timeline.Recorder) {
	d.lc.mu.Lock()
	defer d.lc.mu.Unlock()
	d.lc.tl = r
	if d.Xen != nil {
		d.Xen.SetTimeline(r)
	}
}

// opSpan is the span of the operation in flight, for its phases (nil when
// not recording, which records nothing).
func (d *Domain) opSpan() *timeline.Span {
	d.lc.mu.Lock()
	defer d.lc.mu.Unlock()
	return d.lc.op
}

// phase ends parent's phase in progress and begins the next, name (see
// timeline.Span.Phase: a span's phases tile it), and samples the vCPUs'
// exit counters at the boundary.
func (d *Domain) phase(parent *timeline.Span, name string) *timeline.Span {
	if parent == nil {
		return nil
	}
	p := parent.Phase(name, nil)
	d.lc.mu.Lock()
	tl := d.lc.tl
	d.lc.mu.Unlock()
	d.sampleExits(tl)
	return p
}

// sampleExits records the domain's VM exits so far, by KVM exit reason
// and summed over its vCPUs, as the counter "exits" on tl: sampled at
// phase boundaries, so a viewer shows how many exits each phase took.
func (d *Domain) sampleExits(tl *timeline.Recorder) {
	if tl == nil || d.machine == nil {
		return
	}
	var by [64]uint64
	for _, v := range d.machine.VCPUs() {
		for r := range by {
			by[r] += v.Exits(uint32(r))
		}
	}
	vals := map[string]any{}
	for r, n := range by {
		if n != 0 {
			vals[kvmext.ExitName(uint32(r))] = n
		}
	}
	tl.Counter("exits", vals)
}

func newLifecycle() lifecycle {
	return lifecycle{changed: make(chan struct{}), state: Created}
}

// setLocked moves to s and wakes every waiter.
func (l *lifecycle) setLocked(s State) {
	if s == l.state {
		return
	}
	l.state = s
	close(l.changed)
	l.changed = make(chan struct{})
}

// Status is a consistent snapshot of a domain's lifecycle.
type Status struct {
	State State
	// Exit is how the guest last stopped: the shutdown reason, the start_info
	// MFN it suspended with, or the VMM's crash report.
	Exit xen.Exit
	// Saved: the domain ended because a save (not a checkpoint) took it.
	Saved bool
	// Migrated: the domain ended because a migration handed it over.
	Migrated bool
	// DestroyedFrom is the state Destroy ended (when State is Destroyed).
	DestroyedFrom State
}

// Reason is a short word for why the domain is in its state: the shutdown
// reason or the crash, empty otherwise.
func (s Status) Reason() string {
	switch {
	case s.State == Shutdown || (s.State == Destroyed && s.DestroyedFrom == Shutdown):
		return xen.ShutdownName(s.Exit.Reason)
	case (s.State == Crashed || (s.State == Destroyed && s.DestroyedFrom == Crashed)) && s.Exit.Crash != nil:
		return s.Exit.Crash.Reason
	case s.State == Destroyed && s.Saved:
		return "saved"
	case s.State == Destroyed && s.Migrated:
		return "migrated"
	}
	return ""
}

// Status returns the domain's state now.
func (d *Domain) Status() Status {
	d.lc.mu.Lock()
	defer d.lc.mu.Unlock()
	return d.statusLocked()
}

func (d *Domain) statusLocked() Status {
	return Status{State: d.lc.state, Exit: d.lc.exit, Saved: d.lc.saved, Migrated: d.lc.migrated, DestroyedFrom: d.lc.from}
}

// State returns the domain's lifecycle state.
func (d *Domain) State() State { return d.Status().State }

// keep, as a state an operation moves to, leaves the state as it is.
const keep State = -1

// begin claims the domain for op if the table allows it from the current
// state, moving to the transient state busy (or staying put with keep). It
// returns the state it started from, a context that Destroy cancels, and
// the function that ends the operation in state to (or keep).
//
// end settles the state with what the hypervisor says: if the guest
// stopped by itself meanwhile (it shut down or suspended while a pause was
// being asked for, say), that stop wins over a Running, Paused or Created
// the operation meant to leave.
func (d *Domain) begin(ctx context.Context, op Op, busy State) (from State, opCtx context.Context, end func(to State), err error) {
	l := &d.lc
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inFlight || !stateIn(l.state, allowed[op]) {
		return l.state, nil, nil, &WrongStateError{Domid: d.ID, Op: op, State: l.state}
	}
	from = l.state
	opCtx, cancel := context.WithCancel(ctx)
	l.inFlight, l.cancelOp, l.idle = true, cancel, make(chan struct{})
	if busy != keep {
		l.setLocked(busy)
	}
	span := l.tl.Begin(timeline.TrackToolstack, "lifecycle", string(op), map[string]any{"domid": d.ID, "from": from.String()})
	l.op = span
	end = func(to State) {
		cancel()
		l.mu.Lock()
		defer l.mu.Unlock()
		defer func() {
			d.sampleExits(l.tl)
			span.End(map[string]any{"to": l.state.String()})
		}()
		l.op = nil
		e := d.hvExit()
		l.inFlight, l.cancelOp = false, nil
		close(l.idle)
		if l.state == Destroyed {
			return
		}
		if to == keep {
			to = l.state
		}
		if stopped := stateOfExit(e); stopped != Running {
			l.exit = e
			if to == Running || to == Paused || to == Created || to == DebugStopped {
				to = stopped
			}
		}
		l.setLocked(to)
	}
	return from, opCtx, end, nil
}

// stateAndOp returns the state and, when an operation is in flight, a
// channel closed when it ends (else nil), read together: an operation that
// moves to a transient state (Suspending, Saving) is in it from its start.
func (d *Domain) stateAndOp() (State, <-chan struct{}) {
	d.lc.mu.Lock()
	defer d.lc.mu.Unlock()
	if !d.lc.inFlight {
		return d.lc.state, nil
	}
	return d.lc.state, d.lc.idle
}

// hvExit is the hypervisor's report of how the guest last stopped.
func (d *Domain) hvExit() xen.Exit {
	if d.exitOf != nil {
		return d.exitOf()
	}
	return d.Xen.Exit()
}

func stateIn(s State, set []State) bool {
	for _, x := range set {
		if s == x {
			return true
		}
	}
	return false
}

// observe records a stop the guest made by itself (or a crash), from the
// hypervisor's report now: the watcher's report may be stale (it can be
// taken before a resume and returned after). While an operation is in
// flight the operation settles the state itself from the same report, so
// only an idle domain moves here; observe then returns a channel closed
// when the operation ends, else nil.
func (d *Domain) observe() <-chan struct{} {
	l := &d.lc
	l.mu.Lock()
	defer l.mu.Unlock()
	// Read under the lock: an operation changes the hypervisor's state
	// only while it holds the domain (inFlight), so what is read here is
	// either an operation's business or final.
	e := d.hvExit()
	to := stateOfExit(e)
	if to == Running {
		return nil
	}
	if l.exit != e {
		l.tl.Instant(timeline.TrackGuest, "guest", "guest stopped: "+e.String(), map[string]any{"domid": d.ID})
	}
	l.exit = e
	if l.inFlight {
		return l.idle
	}
	if stateIn(to, observed[l.state]) {
		l.setLocked(to)
	}
	return nil
}

// stateOfExit maps the hypervisor's report of a stop to a lifecycle state.
func stateOfExit(e xen.Exit) State {
	switch {
	case e.State == xen.Crashed:
		return Crashed
	case e.State == xen.Shutdown && e.Reason == xenabi.ShutdownSuspend:
		return Suspended
	case e.State == xen.Shutdown:
		return Shutdown
	}
	return Running
}

// WaitEnded blocks until the domain can never run again (Shutdown,
// Crashed, Destroyed) and returns its status. A suspended domain has not
// ended: it waits for Resume or Destroy.
func (d *Domain) WaitEnded(ctx context.Context) (Status, error) {
	return d.WaitState(ctx, func(s State) bool { return s.Ended() })
}

// WaitState blocks until the domain's state satisfies ok.
func (d *Domain) WaitState(ctx context.Context, ok func(State) bool) (Status, error) {
	for {
		d.lc.mu.Lock()
		st, ch := d.statusLocked(), d.lc.changed
		d.lc.mu.Unlock()
		if ok(st.State) {
			return st, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return st, fmt.Errorf("domain %d is %s: %w", d.ID, st.State, ctx.Err())
		}
	}
}

// Changed returns a channel closed at the next state change.
func (d *Domain) Changed() <-chan struct{} {
	d.lc.mu.Lock()
	defer d.lc.mu.Unlock()
	return d.lc.changed
}

// MaxNameLen bounds a domain name: it becomes a directory under the
// runtime directory whose sockets must fit a Unix socket path.
const MaxNameLen = 64

// ValidateName checks a domain name before it becomes a xenstore value and
// a directory name. Xen's toolstack refuses an empty name and one already
// in use, and xl reads an all-digit argument as a domid, so such a name
// could never be named; xenresume also refuses what would be unsafe as a
// path: "." and "..", '/', control characters and spaces, a leading '-'
// (it would read as a flag) and names longer than MaxNameLen bytes.
func ValidateName(name string) error {
	bad := func(why string) error { return fmt.Errorf("invalid domain name %q: %s", name, why) }
	switch {
	case name == "":
		return bad("it is empty")
	case name == "." || name == "..":
		return bad("it names a directory")
	case len(name) > MaxNameLen:
		return bad(fmt.Sprintf("longer than %d bytes", MaxNameLen))
	case name[0] == '-':
		return bad("it starts with '-'")
	}
	digits := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '/':
			return bad("it contains '/'")
		case c <= ' ' || c >= 0x7f:
			return bad(fmt.Sprintf("byte %d is %#02x: use printable ASCII without spaces", i, c))
		}
		digits = digits && c >= '0' && c <= '9'
	}
	if digits {
		return bad("all digits, it would read as a domid")
	}
	return nil
}
