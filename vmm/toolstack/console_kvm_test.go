package toolstack

import (
	"context"
	"errors"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The console backend across suspends: the stub's console-seq scenario
// numbers every line it prints, in bursts at start, between the ack and
// the suspend hypercall, and right after each resume; the captured
// console must hold every number exactly once, in order.

var cseqLine = regexp.MustCompile(`(?m)^cseq (\d+)$`)

// checkSeq checks that console holds "cseq 0" .. "cseq n-1" in order,
// each once, and nothing else numbered; it returns how many there were.
func checkSeq(t *testing.T, console string) int {
	t.Helper()
	ms := cseqLine.FindAllStringSubmatch(console, -1)
	for i, m := range ms {
		if n, _ := strconv.Atoi(m[1]); n != i {
			t.Fatalf("line %d of the sequence is cseq %d: output lost or repeated\n%s", i, n, console)
		}
	}
	if n := strings.Count(console, "cseq "); n != len(ms) {
		t.Fatalf("%d cseq fragments, %d whole lines: a line was torn\n%s", n, len(ms), console)
	}
	return len(ms)
}

// shortStallPeriod makes the console stall check fast for a test.
func shortStallPeriod(t *testing.T) {
	old := consoleStallPeriod
	consoleStallPeriod = 100 * time.Millisecond
	t.Cleanup(func() { consoleStallPeriod = old })
}

// A checkpoint, a fast resume, a non-cooperative resume (fast=0) and a
// save and restore into a new domain (new console port, new backend on
// the restored ring): no output lost or repeated, nothing stalled.
func TestConsoleAcrossSuspends(t *testing.T) {
	shortStallPeriod(t)
	ts := New(nil)
	const lines, cycles = 50, 4
	d, con := create(t, ts, "test=console-seq lines=50 cycles=4")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d.Unpause()
	oldPort := d.backends.conGuest
	for c := range cycles {
		waitFor(t, con, "suspend: ready cycle="+strconv.Itoa(c))
		switch c {
		case 0:
			if err := d.Save(ctx, filepath.Join(t.TempDir(), "c.save"), true); err != nil {
				t.Fatalf("checkpoint: %v", err)
			}
		case 1, 2:
			suspendAndCheck(t, ctx, d)
			resumeAndCheck(t, ctx, d, c == 1)
		case 3:
			path := filepath.Join(t.TempDir(), "g.save")
			if err := d.Save(ctx, path, false); err != nil {
				t.Fatalf("save: %v", err)
			}
			nd, err := ts.Restore(ctx, path, DomainConfig{Console: con})
			if err != nil {
				t.Fatalf("restore: %v", err)
			}
			t.Cleanup(func() {
				if _, err := ts.Lookup(nd.ID); err == nil {
					nd.Destroy()
				}
			})
			if nd.backends.conGuest == oldPort {
				t.Errorf("the restored domain's console port is the old one, %d", oldPort)
			}
			d = nd
			d.Unpause()
		}
	}
	r := waitPoweroff(t, ctx, d, con)
	requireSuccess(t, r)
	n := checkSeq(t, r.console)
	if want := lines * (1 + 2*cycles); n != want {
		t.Errorf("%d numbered lines, want %d\n%s", n, want, r.console)
	}
	if f := fields(r.console); f["console-seq.last"] != strconv.Itoa(n) {
		t.Errorf("the guest printed %s lines, the console has %d", f["console-seq.last"], n)
	}
	for c := range cycles {
		if k := strings.Count(r.console, "suspend: ready cycle="+strconv.Itoa(c)+"\n"); k != 1 {
			t.Errorf("suspend: ready cycle=%d %d times", c, k)
		}
	}
	// The guest's last line before each suspend hypercall, and its
	// first after: each once per cycle (a backend that re-read the
	// ring's tail would repeat them).
	for _, l := range []string{"suspend: acked\n", "suspend: calling rdx=", "resume: rc="} {
		if k := strings.Count(r.console, l); k != cycles {
			t.Errorf("%q %d times, want %d", l, k, cycles)
		}
	}
	if k := strings.Count(r.console, "Test result"); k != 1 {
		t.Errorf("%d result lines", k)
	}
	if k := strings.Count(r.console, "resume: rc=0 new-domain"); k != 2 {
		t.Errorf("%d new-domain resumes, want 2 (fast=0 and the restore)", k)
	}
	if err := d.ConsoleErr(); err != nil {
		t.Errorf("console: %v", err)
	}
}

// The negative control: after the restore the guest signals its old
// domain's console port. Its output stops (the numbers so far are still
// whole and in order); the toolstack reports the stall, and the domain
// is still running, not hung, and can be destroyed.
func TestConsoleStaleAfterRestore(t *testing.T) {
	shortStallPeriod(t)
	ts := New(nil)
	d, con := create(t, ts, "test=console-seq lines=20 cycles=1 stale=1")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d.Unpause()
	waitFor(t, con, "suspend: ready cycle=0")
	path := filepath.Join(t.TempDir(), "g.save")
	if err := d.Save(ctx, path, false); err != nil {
		t.Fatalf("save: %v", err)
	}
	nd, err := ts.Restore(ctx, path, DomainConfig{Console: con})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	defer nd.Destroy()
	if err := nd.ConsoleErr(); err != nil {
		t.Fatalf("console before the restored guest ran: %v", err)
	}
	nd.Unpause()
	deadline := time.Now().Add(20 * time.Second)
	for !errors.Is(nd.ConsoleErr(), ErrConsoleStalled) {
		if time.Now().After(deadline) {
			t.Fatalf("no stall reported; console err %v\n%s", nd.ConsoleErr(), con)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("reported: %v", nd.ConsoleErr())
	if !strings.Contains(nd.ConsoleErr().Error(), "port "+strconv.Itoa(int(nd.backends.conGuest))) {
		t.Errorf("the report does not name the console port %d: %v", nd.backends.conGuest, nd.ConsoleErr())
	}
	before := con.String()
	time.Sleep(5 * consoleStallPeriod)
	after := con.String()
	if after != before {
		t.Errorf("console output still flows after the stall:\n%s", after[len(before):])
	}
	checkSeq(t, after)
	if !strings.Contains(after, "resume: rc=0 new-domain") || strings.Contains(after, "Test result") {
		t.Errorf("the guest should have reached the new domain and stopped being heard:\n%s", after)
	}
	if st := nd.State(); st != Running {
		t.Errorf("the stalled domain is %v, want Running", st)
	}
	if err := nd.Destroy(); err != nil {
		t.Errorf("destroy: %v", err)
	}
}
