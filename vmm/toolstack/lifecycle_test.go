package toolstack

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// bareDomain is a Domain with a lifecycle and nothing else, in state s,
// whose hypervisor reports exit: enough to test the state machine itself.
func bareDomain(s State, exit xen.Exit) *Domain {
	d := &Domain{ID: 7, lc: newLifecycle()}
	d.exitOf = func() xen.Exit { return exit }
	d.lc.state = s
	return d
}

var allStates = []State{Created, Running, Paused, Suspending, Suspended, Saving, Shutdown, Crashed, Destroyed}

var allOps = []Op{OpUnpause, OpPause, OpSuspend, OpResume, OpSave, OpShutdown, OpDestroy}

// Every operation from every state: allowed ones begin, refused ones get a
// WrongStateError naming the operation and the state, and leave it as it
// was.
func TestTransitionTable(t *testing.T) {
	want := map[Op][]State{
		OpUnpause:  {Created, Paused},
		OpPause:    {Running},
		OpSuspend:  {Running},
		OpResume:   {Suspended},
		OpSave:     {Running, Suspended},
		OpShutdown: {Running, Paused, Created},
		OpDestroy:  {Created, Running, Paused, Suspending, Suspended, Saving, Shutdown, Crashed},
	}
	for _, op := range allOps {
		for _, s := range allStates {
			d := bareDomain(s, xen.Exit{})
			_, _, end, err := d.begin(context.Background(), op, keep)
			ok := slices.Contains(want[op], s)
			if ok != (err == nil) {
				t.Errorf("%s from %s: err %v, want allowed=%v", op, s, err, ok)
				continue
			}
			if err != nil {
				var ws *WrongStateError
				if !errors.As(err, &ws) || ws.Op != op || ws.State != s || ws.Domid != 7 || !errors.Is(err, ErrWrongState) {
					t.Errorf("%s from %s: %#v", op, s, err)
				}
				if !strings.Contains(err.Error(), "it is "+s.String()) {
					t.Errorf("%s from %s: message %q does not say the state", op, s, err)
				}
				if d.State() != s {
					t.Errorf("%s from %s: a refused request moved the domain to %s", op, s, d.State())
				}
				continue
			}
			end(keep)
			if d.State() != s {
				t.Errorf("%s from %s: end(keep) left %s", op, s, d.State())
			}
		}
	}
}

// An operation in flight makes every other request a WrongStateError with
// the transient state, until it ends.
func TestOperationsDoNotOverlap(t *testing.T) {
	d := bareDomain(Running, xen.Exit{})
	_, _, end, err := d.begin(context.Background(), OpSuspend, Suspending)
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range []Op{OpPause, OpSuspend, OpSave, OpShutdown, OpUnpause} {
		_, _, _, err := d.begin(context.Background(), op, keep)
		var ws *WrongStateError
		if !errors.As(err, &ws) || ws.State != Suspending {
			t.Errorf("%s during a suspend: %v", op, err)
		}
	}
	end(Suspended)
	if d.State() != Suspended {
		t.Fatalf("state %s", d.State())
	}
	if _, _, end, err := d.begin(context.Background(), OpResume, keep); err != nil {
		t.Errorf("resume after the suspend: %v", err)
	} else {
		end(Paused)
	}
}

// What the guest does by itself moves an idle domain; during an operation
// the operation settles the state from the same report. A stale report
// (the hypervisor says the guest runs) moves nothing.
func TestObserve(t *testing.T) {
	suspend := xen.Exit{State: xen.Shutdown, Reason: xenabi.ShutdownSuspend, SuspendRDX: 0x1234}
	poweroff := xen.Exit{State: xen.Shutdown, Reason: xenabi.ShutdownPoweroff}
	crash := xen.Exit{State: xen.Crashed, Crash: &machine.CrashError{Reason: "triple fault"}}
	for _, c := range []struct {
		from State
		exit xen.Exit
		want State
	}{
		{Running, suspend, Suspended},
		{Running, poweroff, Shutdown},
		{Running, crash, Crashed},
		{Paused, crash, Crashed},
		{Suspended, crash, Crashed},
		{Paused, poweroff, Paused}, // a paused guest cannot shut down: ignored
		{Shutdown, crash, Shutdown},
		{Destroyed, crash, Destroyed},
		{Running, xen.Exit{State: xen.Running}, Running},
	} {
		d := bareDomain(c.from, c.exit)
		d.observe()
		if st := d.Status(); st.State != c.want {
			t.Errorf("%s + %v: %s, want %s", c.from, c.exit, st.State, c.want)
		}
	}
	// A stop the guest made while a pause was being asked for wins over
	// the Paused the pause meant to leave.
	d := bareDomain(Running, poweroff)
	_, _, end, _ := d.begin(context.Background(), OpPause, keep)
	if busy := d.observe(); busy == nil || d.State() != Running {
		t.Errorf("observe during an operation: moved the domain to %s, busy %v", d.State(), busy)
	}
	end(Paused)
	if st := d.Status(); st.State != Shutdown || st.Reason() != "poweroff" {
		t.Errorf("after the pause: %s (%s)", st.State, st.Reason())
	}
}

func TestStatusReason(t *testing.T) {
	crash := &machine.CrashError{Reason: "triple fault"}
	for _, c := range []struct {
		st   Status
		want string
	}{
		{Status{State: Running}, ""},
		{Status{State: Shutdown, Exit: xen.Exit{State: xen.Shutdown, Reason: xenabi.ShutdownReboot}}, "reboot"},
		{Status{State: Crashed, Exit: xen.Exit{State: xen.Crashed, Crash: crash}}, "triple fault"},
		{Status{State: Destroyed, Saved: true, DestroyedFrom: Suspended}, "saved"},
		{Status{State: Destroyed, DestroyedFrom: Running}, ""},
	} {
		if got := c.st.Reason(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.st, got, c.want)
		}
	}
}

// WaitEnded returns at the first state a domain never leaves, and not for
// a suspended one.
func TestWaitEnded(t *testing.T) {
	d := bareDomain(Running, xen.Exit{})
	done := make(chan Status, 1)
	go func() {
		st, _ := d.WaitEnded(context.Background())
		done <- st
	}()
	for _, s := range []State{Suspended, Paused, Running} {
		d.lc.mu.Lock()
		d.lc.setLocked(s)
		d.lc.mu.Unlock()
		select {
		case st := <-done:
			t.Fatalf("WaitEnded returned at %s", st.State)
		case <-time.After(10 * time.Millisecond):
		}
	}
	d.exitOf = func() xen.Exit { return xen.Exit{State: xen.Shutdown, Reason: xenabi.ShutdownPoweroff} }
	d.lc.mu.Lock()
	d.lc.setLocked(Running)
	d.lc.mu.Unlock()
	d.observe()
	if st := <-done; st.State != Shutdown {
		t.Fatalf("WaitEnded: %s", st.State)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := bareDomain(Running, xen.Exit{}).WaitEnded(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled wait: %v", err)
	}
}

// Concurrent begin/end from many goroutines: never two operations at once.
func TestBeginIsExclusive(t *testing.T) {
	d := bareDomain(Running, xen.Exit{})
	var mu sync.Mutex
	inside := 0
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				_, _, end, err := d.begin(context.Background(), OpShutdown, keep)
				if err != nil {
					continue
				}
				mu.Lock()
				inside++
				if inside != 1 {
					t.Errorf("%d operations at once", inside)
				}
				inside--
				mu.Unlock()
				end(keep)
			}
		}()
	}
	wg.Wait()
}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"g", "guest-1", "my.vm", "a_b+c", "x" + strings.Repeat("y", MaxNameLen-1)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "../x", "a/b", "-rf", "12", "a b", "tab\there", "nul\x00", "é", strings.Repeat("y", MaxNameLen+1)} {
		if err := ValidateName(bad); err == nil || !strings.Contains(err.Error(), "invalid domain name") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
