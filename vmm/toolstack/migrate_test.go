package toolstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/vmm/timeline"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// migration is one in-process migration: the source's stream goes through
// a pipe into a restore on a second toolstack.
type migration struct {
	stats   MigrateStats
	err     error
	target  *Domain
	restErr error
	stream  []byte // the whole stream, captured
}

// migrateTo migrates d into ts2 over a pipe. handoff decides the
// handoff's outcome once the restore returned (nil: HandedOver when the
// restore worked). cut, if > 0, breaks the pipe after that many bytes.
func migrateTo(t testing.TB, d *Domain, ts2 *Toolstack, con io.Writer, o MigrateOptions, cut int,
	handoff func(restored *Domain, restErr error) (Handoff, error)) *migration {
	t.Helper()
	pr, pw := io.Pipe()
	var captured bytes.Buffer
	type res struct {
		d   *Domain
		err error
	}
	done := make(chan res, 1)
	go func() {
		var r io.Reader = io.TeeReader(pr, &captured)
		if cut > 0 {
			r = io.LimitReader(r, int64(cut))
		}
		nd, err := ts2.RestoreStream(t.Context(), r, "migration", 0, DomainConfig{Console: con})
		if err != nil {
			pr.CloseWithError(err)
		}
		done <- res{nd, err}
	}()
	m := &migration{}
	var got res
	m.stats, m.err = d.Migrate(t.Context(), pw, o, func(ctx context.Context) (Handoff, error) {
		got = <-done
		if handoff != nil {
			return handoff(got.d, got.err)
		}
		if got.err != nil {
			return NotHandedOver, got.err
		}
		return HandedOver, nil
	})
	pw.Close()
	if got == (res{}) {
		got = <-done
	}
	m.target, m.restErr, m.stream = got.d, got.err, captured.Bytes()
	if m.target != nil {
		t.Cleanup(func() {
			if _, err := ts2.Lookup(m.target.ID); err == nil {
				m.target.Destroy()
			}
		})
	}
	return m
}

// A live migration of the stub's hash-chain workload: rounds while the
// guest runs (the policy held off so that every round runs), the suspend,
// the last round; the target's guest returns 0 from its suspend with the
// new start_info MFN in %rdx, and its chain continues exactly. A page the
// emulated Xen writes during the live rounds (KVM's log cannot see it)
// reaches the target too. The captured stream passes verify-stream-v2.
func TestMigrateLive(t *testing.T) {
	ts := New(nil)
	d, con := create(t, ts, "test=suspend")
	d.Unpause()
	waitFor(t, con, "suspend: ready cycle=0")
	marker := []byte("written by the VMM, not the guest")
	last := d.Xen.Frames().NrPages - 1
	var rounds []MigrateRound
	tl := timeline.New(1, "migrate")
	d.SetTimeline(tl)
	o := MigrateOptions{MaxRounds: 3, TargetDirty: -1, Suspend: quick, Progress: func(r MigrateRound) {
		if r.Round == 0 && !r.Final {
			if err := d.Machine().Memory().Write(last<<12+8, marker); err != nil {
				t.Error(err)
			}
		}
		rounds = append(rounds, r)
	}}
	m := migrateTo(t, d, New(nil), con, o, 0, nil)
	if m.err != nil || m.restErr != nil {
		t.Fatalf("migrate: %v; restore: %v\n%s", m.err, m.restErr, con)
	}
	if st := d.Status(); st.State != Destroyed || !st.Migrated || st.Reason() != "migrated" {
		t.Fatalf("source after migration: %+v", st)
	}
	if n := len(rounds); n < 2 || n > 4 || rounds[0].Pages == 0 || !rounds[n-1].Final || rounds[n-1].Pages == 0 || m.stats.Outcome != HandedOver {
		t.Fatalf("rounds %+v, stats %+v", rounds, m.stats)
	}
	if m.stats.Bytes != uint64(len(m.stream)) {
		t.Errorf("stats say %d bytes, the stream has %d", m.stats.Bytes, len(m.stream))
	}
	nd := m.target
	frames := nd.Xen.Frames()
	siMFN, _ := frames.MFN(nd.Layout.PFN(nd.Layout.StartInfo))
	regs, _ := nd.Machine().VCPUs()[0].GetRegs()
	if in, rax, _ := nd.InReturnPath(); !in || rax != 0 || regs.RDX != siMFN {
		t.Fatalf("target: in return path %v, rax %d, rdx %#x (want start_info MFN %#x)", in, rax, regs.RDX, siMFN)
	}
	got := make([]byte, len(marker))
	nd.Machine().Memory().Read(last<<12+8, got)
	if !bytes.Equal(got, marker) {
		t.Errorf("the page the VMM wrote during the live rounds reads %q on the target", got)
	}
	path := filepath.Join(t.TempDir(), "migration.stream")
	if err := os.WriteFile(path, m.stream, 0o600); err != nil {
		t.Fatal(err)
	}
	verify(t, path)
	// Timeline: the migrate span's phases.
	var names []string
	tr := tl.Snapshot()
	for _, s := range tr.Spans() {
		if s.Name == "migrate" {
			for _, p := range tr.Children(s) {
				names = append(names, p.Name)
			}
		}
	}
	want := "headers"
	for _, r := range rounds[:len(rounds)-1] {
		want += fmt.Sprintf(" round %d", r.Round)
	}
	want += " suspend final round end records handoff destroy"
	if strings.Join(names, " ") != want {
		t.Errorf("migrate phases %q, want %q", strings.Join(names, " "), want)
	}
	nd.Unpause()
	waitPoweroffAfter(t, nd, con)
	r := result{console: con.String()}
	requireSuccess(t, r)
	if !strings.Contains(r.console, "resume: rc=0 new-domain") || strings.Contains(r.console, "rc=1") {
		t.Errorf("the guest did not resume once in a new domain:\n%s", r.console)
	}
	checkWork(t, r.console, 3)
}

// Negative controls for the VMM's dirty set: without it, the page only
// the VMM wrote is missing on the target (so the test above would catch a
// migration that trusted KVM's log alone), and the tests' cross-check
// (verifyDirty: a hash pass over every page in use) finds the page the
// dirty pages missed and fails the migration, which resumes the guest.
func TestMigrateVMMDirtyNeeded(t *testing.T) {
	for _, verifyOn := range []bool{false, true} {
		t.Run(fmt.Sprintf("verify=%v", verifyOn), func(t *testing.T) {
			ts := New(nil)
			d, con := create(t, ts, "test=suspend")
			d.Unpause()
			waitFor(t, con, "suspend: ready cycle=0")
			skipVMMDirty, verifyDirty = true, verifyOn
			defer func() { skipVMMDirty, verifyDirty = false, true }()
			marker := []byte("written by the VMM, not the guest")
			last := d.Xen.Frames().NrPages - 1
			o := MigrateOptions{MaxRounds: 2, TargetDirty: -1, Suspend: quick, Progress: func(r MigrateRound) {
				if r.Round == 0 && !r.Final {
					d.Machine().Memory().Write(last<<12+8, marker)
				}
			}}
			m := migrateTo(t, d, New(nil), con, o, 0, nil)
			if verifyOn {
				if !errors.Is(m.err, errDirtyMissed) {
					t.Fatalf("migrate with a page missed: %v, want %v", m.err, errDirtyMissed)
				}
				if st := d.Status(); st.State != Running {
					t.Fatalf("source after the failed check: %+v", st)
				}
				return
			}
			if m.err != nil || m.restErr != nil {
				t.Fatalf("migrate: %v; restore: %v", m.err, m.restErr)
			}
			got := make([]byte, len(marker))
			m.target.Machine().Memory().Read(last<<12+8, got)
			if bytes.Equal(got, marker) {
				t.Fatal("the VMM's write reached the target without the VMM's dirty set: the test above proves nothing")
			}
		})
	}
}

// Every failure before the handoff resumes the guest in the same domain:
// it sees its suspend return 1 and carries on; the target keeps nothing.
// After the target was told to start, a broken handoff leaves the guest
// suspended here.
func TestMigrateFailures(t *testing.T) {
	for _, c := range []struct {
		name    string
		nonLive bool
		live    bool // the failure comes before the suspend
		cut     int  // bytes the target reads before its connection breaks
		handoff func(*Domain, error) (Handoff, error)
		want    State
	}{
		{name: "cut in the live rounds", live: true, cut: 40 << 10, want: Running},
		{name: "cut non-live", nonLive: true, cut: 40 << 10, want: Running},
		{name: "target refuses", handoff: func(d *Domain, err error) (Handoff, error) {
			if d != nil {
				d.Destroy()
			}
			return NotHandedOver, errors.New("refused")
		}, want: Running},
		{name: "target fails to start and gives it back", handoff: func(d *Domain, err error) (Handoff, error) {
			if d != nil {
				d.Destroy()
			}
			return NotHandedOver, errors.New("target reports startup failure")
		}, want: Running},
		{name: "handoff breaks after GO", handoff: func(d *Domain, err error) (Handoff, error) {
			if d != nil {
				d.Destroy()
			}
			return HandoffUnknown, errors.New("connection reset")
		}, want: Suspended},
	} {
		t.Run(c.name, func(t *testing.T) {
			ts := New(nil)
			d, con := create(t, ts, "test=suspend")
			d.Unpause()
			waitFor(t, con, "suspend: ready cycle=0")
			ts2 := New(nil)
			o := MigrateOptions{NonLive: c.nonLive, Suspend: quick}
			m := migrateTo(t, d, ts2, io.Discard, o, c.cut, c.handoff)
			if m.err == nil {
				t.Fatal("migration succeeded")
			}
			if st := d.State(); st != c.want {
				t.Fatalf("source %s after %v, want %s", st, m.err, c.want)
			}
			if c.cut > 0 && m.restErr == nil {
				t.Fatal("the target restored a cut stream")
			}
			if c.want == Suspended {
				if !errors.Is(m.err, ErrHandoffUnknown) {
					t.Errorf("error %v does not wrap ErrHandoffUnknown", m.err)
				}
				return
			}
			if m.target != nil {
				if _, err := ts2.Lookup(m.target.ID); err == nil {
					t.Error("the target kept its domain")
				}
			}
			if !c.live {
				waitPoweroffAfter(t, d, con)
				r := result{console: con.String()}
				requireSuccess(t, r)
				if !strings.Contains(r.console, "resume: rc=1 same-domain") {
					t.Errorf("the guest did not see 1:\n%s", r.console)
				}
				checkWork(t, r.console, 3)
				return
			}
			// Cut before the suspend: the guest never noticed, and a
			// second migration takes it.
			if strings.Contains(con.String(), "suspend: acked") {
				t.Fatalf("the guest was asked to suspend:\n%s", con)
			}
			m = migrateTo(t, d, New(nil), con, MigrateOptions{Suspend: quick}, 0, nil)
			if m.err != nil || m.restErr != nil {
				t.Fatalf("second migration: %v; restore: %v", m.err, m.restErr)
			}
			m.target.Unpause()
			waitPoweroffAfter(t, m.target, con)
			r := result{console: con.String()}
			requireSuccess(t, r)
			if strings.Count(r.console, "resume: rc=0 new-domain") != 1 || strings.Contains(r.console, "rc=1") {
				t.Errorf("the guest did not resume once in a new domain:\n%s", r.console)
			}
			checkWork(t, r.console, 3)
		})
	}
}

// A migration or Remus is refused unless the domain runs, and Destroy is
// allowed during either.
func TestMigrateTransitions(t *testing.T) {
	for _, op := range []Op{OpMigrate, OpRemus} {
		for _, s := range append(allStates, DebugStopped, Migrating, Replicating) {
			d := bareDomain(s, xen.Exit{State: xen.Running})
			_, _, end, err := d.begin(context.Background(), op, keep)
			if (s == Running) != (err == nil) {
				t.Errorf("%s from %s: %v", op, s, err)
			}
			if err == nil {
				end(keep)
			}
		}
	}
	for s, name := range map[State]string{Migrating: "migrating", Replicating: "replicating"} {
		if !s.Busy() || s.Ended() || s.String() != name {
			t.Errorf("%s is a busy state", name)
		}
		d := bareDomain(s, xen.Exit{State: xen.Running})
		if _, _, end, err := d.begin(context.Background(), OpDestroy, keep); err != nil {
			t.Errorf("destroy while %s: %v", s, err)
		} else {
			end(keep)
		}
	}
}

// A guest that keeps writing memory while it is migrated (dirty=64: 64
// pages per step over a 512 KiB buffer, each stamped with its write's
// sequence number): KVM's log sees its writes, so the live rounds resend
// pages and run to the policy's limit; after the resume in the new domain
// the guest finds every page holding its last write. With the last
// round dropping the buffer's pages, the guest catches the lost writes
// (the negative control).
func TestMigrateDirtyingGuest(t *testing.T) {
	for _, lose := range []bool{false, true} {
		name := "complete"
		if lose {
			name = "last round lost"
		}
		t.Run(name, func(t *testing.T) {
			ts := New(nil)
			d, con := create(t, ts, "test=suspend dirty=64")
			d.Unpause()
			waitFor(t, con, "suspend: ready cycle=0")
			time.Sleep(20 * time.Millisecond) // let it dirty the whole buffer
			if lose {
				// The buffer's pages: word 1 the sequence number,
				// word 511 its complement.
				finalSkip = func(pg []byte) bool {
					w1, w511 := binary.LittleEndian.Uint64(pg[8:]), binary.LittleEndian.Uint64(pg[4088:])
					return w1 != 0 && w511 == ^w1
				}
				defer func() { finalSkip = nil }()
			}
			var rounds []MigrateRound
			ram := d.Machine().Memory().Regions()[0].Mem[:d.Xen.Frames().NrPages<<12]
			o := MigrateOptions{Suspend: quick, Progress: func(r MigrateRound) { rounds = append(rounds, r) },
				// Every round sees the guest rewrite its buffer, however
				// the host schedules its vCPU.
				beforeCollect: func() { waitRewritten(t, ram) }}
			m := migrateTo(t, d, New(nil), con, o, 0, nil)
			if m.err != nil || m.restErr != nil {
				t.Fatalf("migrate: %v; restore: %v", m.err, m.restErr)
			}
			if len(rounds) != DefaultPrecopyRounds+1 || rounds[1].Pages < DefaultPrecopyDirty || rounds[0].Dirty < DefaultPrecopyDirty ||
				rounds[3].Dirty < DefaultPrecopyDirty {
				t.Fatalf("rounds %+v: the guest's writes did not keep the live rounds going", rounds)
			}
			m.target.Unpause()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			exit, err := m.target.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			out := con.String()
			if lose {
				if !strings.Contains(out, "lost its last write") {
					t.Fatalf("the guest did not catch the lost pages (exit %v):\n%s", exit, out)
				}
				return
			}
			if exit.Reason != xenabi.ShutdownPoweroff || !strings.Contains(out, "all pages hold their last write") {
				t.Fatalf("exit %v:\n%s", exit, out)
			}
			requireSuccess(t, result{console: out})
			checkWork(t, out, 3)
		})
	}
}

// waitRewritten waits until the stub's dirty=N buffer (pages whose word 1
// is a sequence number and word 511 its complement) has been written all
// over again: its highest sequence number grew by more than its 128 pages.
func waitRewritten(t *testing.T, ram []byte) {
	t.Helper()
	top := func() uint64 {
		var m uint64
		for off := 0; off+4096 <= len(ram); off += 4096 {
			w1, w511 := binary.LittleEndian.Uint64(ram[off+8:]), binary.LittleEndian.Uint64(ram[off+4088:])
			if w1 != 0 && w511 == ^w1 && w1 > m {
				m = w1
			}
		}
		return m
	}
	start := top()
	deadline := time.Now().Add(20 * time.Second)
	for top() < start+300 {
		if time.Now().After(deadline) {
			t.Fatal("the guest stopped writing its buffer")
		}
		time.Sleep(time.Millisecond)
	}
}
