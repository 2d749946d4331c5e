package toolstack

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenstore"
)

var errInjected = errors.New("injected failure")

// savedIdleGuest saves a guest running the idle scenario and returns the
// file.
func savedIdleGuest(t *testing.T) string {
	t.Helper()
	d, _, ctx := startGuest(t, "test=idle", "suspend: ready cycle=0")
	path := filepath.Join(t.TempDir(), "idle.save")
	if err := d.Save(ctx, path, false); err != nil {
		t.Fatal(err)
	}
	return path
}

// A launch that fails at any step leaves nothing behind: no domain, no
// reserved name, no xenstore nodes, no introduction to xenstored, no
// event channel bound in dom0; and the name can be used at once. Create
// and Restore share the path, so both are checked at every step.
func TestLaunchFailureLeavesNothing(t *testing.T) {
	saved := savedIdleGuest(t)
	for _, kind := range []string{"create", "restore"} {
		for _, step := range []string{"fill", "nodes", "backends"} {
			t.Run(kind+"/"+step, func(t *testing.T) {
				ts := New(nil)
				launchFault = func(s string) error {
					if s == step {
						return fmt.Errorf("%s: %w", s, errInjected)
					}
					return nil
				}
				defer func() { launchFault = nil }()
				var err error
				if kind == "create" {
					_, err = ts.Create(DomainConfig{Name: "g", MemSize: 16 << 20, Cmdline: "test=idle"})
				} else {
					_, err = ts.Restore(context.Background(), saved, DomainConfig{Name: "g"})
				}
				if !errors.Is(err, errInjected) {
					t.Fatalf("got %v, want the injected failure", err)
				}
				if _, err := ts.store.Read(xenstore.DomainPath(1)); err == nil {
					t.Error("the failed domain's xenstore nodes are left")
				}
				if ts.store.Introduced(1) {
					t.Error("the failed domain is still introduced to xenstored")
				}
				for p := uint32(1); p < 8; p++ {
					if st, err := ts.xen.Dom0().Status(p); err == nil && st.State != xen.StatClosed {
						t.Errorf("dom0 port %d left %v", p, st.State)
					}
				}
				ts.mu.Lock()
				n, r := len(ts.domains), len(ts.reserved)
				ts.mu.Unlock()
				if n != 0 || r != 0 {
					t.Errorf("%d domains and %d reserved names left", n, r)
				}
				launchFault = nil
				d, err := ts.Create(DomainConfig{Name: "g", MemSize: 16 << 20})
				if err != nil {
					t.Fatalf("the name is not free again: %v", err)
				}
				d.Destroy()
			})
		}
	}
}

// A save that fails leaves the domain as it was: a running guest runs on
// (resumed cooperatively), a suspended one stays suspended.
func TestFailedSaveKeepsState(t *testing.T) {
	d, con, ctx := startGuest(t, "test=idle", "suspend: ready cycle=0")
	bad := filepath.Join(t.TempDir(), "missing-dir", "g.save")
	if err := d.Save(ctx, bad, false); err == nil {
		t.Fatal("a save into a missing directory succeeded")
	}
	if s := d.State(); s != Running {
		t.Fatalf("after a failed save of a running domain: %s", s)
	}
	waitFor(t, con, "resume: rc=1 same-domain")
	waitFor(t, con, "suspend: ready cycle=1")

	if err := d.Suspend(ctx, quick); err != nil {
		t.Fatal(err)
	}
	if err := d.Save(ctx, bad, true); err == nil {
		t.Fatal("a checkpoint into a missing directory succeeded")
	}
	if s := d.State(); s != Suspended {
		t.Fatalf("after a failed save of a suspended domain: %s", s)
	}
	// A checkpoint of a suspended domain keeps it suspended too.
	if err := d.Save(ctx, filepath.Join(t.TempDir(), "ck.save"), true); err != nil {
		t.Fatal(err)
	}
	if s := d.State(); s != Suspended {
		t.Fatalf("after a checkpoint of a suspended domain: %s", s)
	}
	if err := d.Resume(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := d.Unpause(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, con, "suspend: ready cycle=2")
	if err := d.RequestShutdown("poweroff"); err != nil {
		t.Fatal(err)
	}
	st, err := d.WaitEnded(ctx)
	if err != nil || st.State != Shutdown || st.Reason() != "poweroff" {
		t.Fatalf("end: %+v %v\n%s", st, err, con)
	}
	requireSuccess(t, result{console: con.String(), exit: st.Exit, dom: d})
	checkChain(t, con.String())
}

// A save that is not a checkpoint ends the domain (Destroyed, saved).
func TestSaveEndsDomain(t *testing.T) {
	d, _, ctx := startGuest(t, "test=idle", "suspend: ready cycle=0")
	if err := d.Save(ctx, filepath.Join(t.TempDir(), "g.save"), false); err != nil {
		t.Fatal(err)
	}
	st := d.Status()
	if st.State != Destroyed || !st.Saved || st.DestroyedFrom != Suspended || st.Reason() != "saved" {
		t.Fatalf("after save: %+v", st)
	}
	if err := d.Destroy(); !errors.Is(err, ErrWrongState) {
		t.Errorf("destroying a saved domain: %v", err)
	}
}

// Destroy during a suspend that waits for a guest that never acknowledges
// cancels the wait, which settles the domain back to Running, and ends it
// from there (runvm reports "destroyed while running").
func TestDestroyCancelsSuspend(t *testing.T) {
	d, _, _ := startGuest(t, "test=suspend-reject", "suspend: ready cycle=0")
	errc := make(chan error, 1)
	go func() { errc <- d.Suspend(context.Background(), DefaultSuspendTimeouts) }()
	if _, err := d.WaitState(t.Context(), func(s State) bool { return s == Suspending }); err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err == nil {
		t.Error("the cancelled suspend reported success")
	}
	if st := d.Status(); st.State != Destroyed || st.DestroyedFrom != Running {
		t.Errorf("after destroy: %+v", st)
	}
}

// Many goroutines issue conflicting lifecycle requests against one domain
// for a while. Every request either succeeds or is refused with a
// WrongStateError; afterwards the state is a legal one, the guest can be
// brought back and powered off, and its hash chain is intact.
func TestConcurrentLifecycle(t *testing.T) {
	d, con, ctx := startGuest(t, "test=idle", "suspend: ready cycle=0")
	dir := t.TempDir()
	deadline := time.Now().Add(3 * time.Second)
	var wg sync.WaitGroup
	var mu sync.Mutex
	done := map[string]int{}
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for i := 0; time.Now().Before(deadline); i++ {
				var op string
				var err error
				switch rng.IntN(6) {
				case 0:
					op, err = "pause", d.Pause(ctx)
					if err == nil {
						err = checkParked(d)
					}
				case 1:
					op, err = "unpause", d.Unpause()
				case 2:
					op, err = "suspend", d.Suspend(ctx, quick)
				case 3:
					op, err = "resume", d.Resume(ctx, rng.IntN(2) == 0)
				case 4:
					op, err = "checkpoint", d.Save(ctx, filepath.Join(dir, fmt.Sprintf("ck-%d-%d", g, i)), true)
				case 5:
					op = "status"
					if s := d.State(); s.Ended() {
						err = fmt.Errorf("the domain ended: %+v", d.Status())
					}
				}
				if err != nil && !errors.Is(err, ErrWrongState) {
					t.Errorf("%s: %v", op, err)
					return
				}
				if err == nil {
					mu.Lock()
					done[op]++
					mu.Unlock()
				}
			}
		}(g)
	}
	wg.Wait()
	t.Logf("requests that succeeded: %v", done)
	switch s := d.State(); s {
	case Suspended:
		if err := d.Resume(ctx, true); err != nil {
			t.Fatal(err)
		}
		fallthrough
	case Paused, Created:
		if err := d.Unpause(); err != nil {
			t.Fatal(err)
		}
	case Running:
	default:
		t.Fatalf("state after the storm: %s", s)
	}
	if err := d.RequestShutdown("poweroff"); err != nil {
		t.Fatal(err)
	}
	st, err := d.WaitEnded(ctx)
	if err != nil || st.State != Shutdown {
		t.Fatalf("end: %+v %v\n%s", st, err, con)
	}
	requireSuccess(t, result{console: con.String(), exit: st.Exit, dom: d})
	checkChain(t, con.String())
}

// checkParked checks that a paused domain's vCPUs are parked at a guest
// instruction boundary with the guest's own registers: a guest RIP (never
// the VMM's trampolines or write loop in the upper half), the guest's CS
// (RPL 3 in the ring-3 model) and a context Xen could save. A vCPU
// another request unpaused meanwhile is skipped.
//
// The check holds the lifecycle while it reads (as a save of a paused
// domain does), so that no request unpauses a vCPU whose hypervisor state
// PVContext reads; a domain no longer paused by then is not checked.
func checkParked(d *Domain) error {
	from, _, end, err := d.begin(context.Background(), OpSave, Saving)
	if err != nil {
		return nil // another request holds it
	}
	defer end(from)
	if from != Paused {
		return nil
	}
	for _, v := range d.Machine().VCPUs() {
		r, err := v.GetRegs()
		if errors.Is(err, machine.ErrNotParked) {
			continue
		}
		if err != nil {
			return err
		}
		s, err := v.GetSregs()
		if err != nil {
			continue // unpaused between the two reads
		}
		if r.RIP >= 0x0000_8000_0000_0000 || s.CS.Selector&3 != 3 {
			return fmt.Errorf("vCPU %d parked outside the guest: rip %#x cs %#x", v.ID, r.RIP, s.CS.Selector)
		}
		if _, err := d.Xen.PVContext(v.ID, r, s); err != nil && v.State() == machine.VCPUParked {
			return fmt.Errorf("vCPU %d parked at rip %#x: %w", v.ID, r.RIP, err)
		}
	}
	return nil
}

// The stub runs in the ring-3 PV model, and a ring-3 domain saves as Xen
// writes a PV domain: no HVM_CONTEXT, page tables typed and pinned (a
// pinned L4 at the PFN CR3 names), and it restores into a new domain,
// where its suspend returns 0 and it runs on.
func TestSaveRestoreRing3(t *testing.T) {
	kvmtest.Require(t)
	ts := New(nil)
	d, con := create(t, ts, "test=suspend cycles=1")
	if !d.Xen.Ring3() {
		t.Fatal("the stub is not in the ring-3 model")
	}
	d.Unpause()
	waitFor(t, con, "suspend: ready cycle=0")
	path := filepath.Join(t.TempDir(), "x.save")
	if err := d.Save(t.Context(), path, false); err != nil {
		t.Fatalf("save: %v\n%s", err, con)
	}
	verify(t, path)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	types := map[uint64]uint8{}
	s, err := stream.ReadSave(f, &stream.ReadOptions{Pages: func(_ *stream.Save, b stream.PageBatch) error {
		for i, pfn := range b.PFNs {
			types[pfn] = b.Types[i]
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	v0 := s.VCPU(0)
	if v0.CPU != nil {
		t.Error("a ring-3 stream has HVM_CONTEXT")
	}
	cr3 := v0.Context.Ctrlreg[3] >> 12
	if got := types[cr3]; got != stream.PageL4|stream.PagePinned {
		t.Errorf("CR3's PFN %#x has type %#x, want a pinned L4", cr3, got)
	}
	count := map[uint8]int{}
	for _, t := range types {
		count[t&^stream.PagePinned]++
	}
	if count[stream.PageL1] == 0 || count[stream.PageL2] == 0 || count[stream.PageL3] == 0 {
		t.Errorf("page types in the stream: %v", count)
	}
	if v0.Context.Trap_ctxt[14].Address == 0 || v0.Context.Event_callback_eip == 0 {
		t.Errorf("trap table or event callback missing from the context")
	}
	nd, err := ts.Restore(t.Context(), path, DomainConfig{Console: con})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	defer nd.Destroy()
	if !nd.Xen.Ring3() {
		t.Fatal("restored outside the ring-3 model")
	}
	nd.Unpause()
	_ = waitPoweroffAfter(t, nd, con)
	requireSuccess(t, result{console: con.String()})
	if !strings.Contains(con.String(), "resume: rc=0 new-domain") {
		t.Errorf("console:\n%s", con)
	}
}
