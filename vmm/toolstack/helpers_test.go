package toolstack

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/internal/syncbuf"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// Shared helpers for the KVM tests of the toolstack: a console buffer,
// creating and running domains, and reading the stub's console.

// syncBuffer is a console that tests can read while the guest writes.
type syncBuffer = syncbuf.Buffer

type result struct {
	console string
	exit    xen.Exit
	dom     *Domain
}

// create builds (paused) a domain running the stub with cmdline and a
// console tests can read; it is destroyed at cleanup, unless the test
// destroys it itself.
func create(t testing.TB, ts *Toolstack, cmdline string, edit ...func(*DomainConfig)) (*Domain, *syncBuffer) {
	t.Helper()
	kvmtest.Require(t)
	con := &syncBuffer{}
	cfg := DomainConfig{Cmdline: cmdline, Console: con, MemSize: 16 << 20}
	for _, e := range edit {
		e(&cfg)
	}
	if ts == nil {
		ts = New(nil)
	}
	d, err := ts.Create(cfg)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Cleanup(func() {
		if _, err := ts.Lookup(d.ID); err == nil {
			if err := d.Destroy(); err != nil {
				t.Errorf("destroy: %v", err)
			}
		}
	})
	return d, con
}

// run unpauses d and waits, with a timeout, until it stops.
func run(t testing.TB, d *Domain, con *syncBuffer) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d.Unpause()
	exit, err := d.Wait(ctx)
	if err != nil {
		t.Fatalf("wait: %v (console so far:\n%s)", err, con)
	}
	return result{console: con.String(), exit: exit, dom: d}
}

// boot creates a domain running the stub with cmdline and runs it to its
// end.
func boot(t *testing.T, cmdline string, edit ...func(*DomainConfig)) result {
	t.Helper()
	d, con := create(t, nil, cmdline, edit...)
	return run(t, d, con)
}

// waitFor polls until the console shows s.
func waitFor(t testing.TB, con *syncBuffer, s string) {
	t.Helper()
	waitForAfter(t, con, 0, s)
}

// waitForAfter is waitFor on what the console printed past its first
// from bytes (len(con.String()) before the step being waited for), so
// that an earlier, identical line does not count.
func waitForAfter(t testing.TB, con *syncBuffer, from int, s string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(con.String()[from:], s) {
		if time.Now().After(deadline) {
			t.Fatalf("console never showed %q:\n%s", s, con)
		}
		time.Sleep(time.Millisecond)
	}
}

// resultLine returns the stub's one "Test result:" line, failing the test
// when there is not exactly one.
func resultLine(t *testing.T, console string) string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(console, "\n") {
		if strings.HasPrefix(l, "Test result: ") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("%d result lines in console:\n%s", len(lines), console)
	}
	return lines[0]
}

func requireSuccess(t *testing.T, r result) {
	t.Helper()
	if l := resultLine(t, r.console); l != "Test result: SUCCESS" {
		t.Fatalf("%s\nconsole:\n%s", l, r.console)
	}
}

// fields parses "key: a=1 b=2" console lines into a map of "key.a" -> "1".
func fields(console string) map[string]string {
	out := map[string]string{}
	re := regexp.MustCompile(`([\w\[\]()-]+)=(\S*)`)
	for _, l := range strings.Split(console, "\n") {
		key, rest, ok := strings.Cut(l, ": ")
		if !ok || strings.Contains(key, " ") {
			continue
		}
		for _, m := range re.FindAllStringSubmatch(rest, -1) {
			out[key+"."+m[1]] = m[2]
		}
	}
	return out
}

func hexField(t *testing.T, f map[string]string, key string) uint64 {
	t.Helper()
	s, ok := f[key]
	if !ok {
		t.Fatalf("console has no %s", key)
	}
	v, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
	if err != nil {
		t.Fatalf("%s=%q: %v", key, s, err)
	}
	return v
}

func atoiField(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("not a number: %q", s)
	}
	return n
}

var quick = SuspendTimeouts{Ack: 5 * time.Second, Shutdown: 5 * time.Second}

// startGuest creates and runs a guest with cmdline, waits for the console
// line ready, and returns it with a context for the rest of the test.
func startGuest(t *testing.T, cmdline, ready string) (*Domain, *syncBuffer, context.Context) {
	t.Helper()
	d, con := create(t, New(nil), cmdline)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	d.Unpause()
	waitFor(t, con, ready)
	return d, con, ctx
}

// waitPoweroff waits for the guest to power off and returns its console.
func waitPoweroff(t *testing.T, ctx context.Context, d *Domain, con *syncBuffer) result {
	t.Helper()
	exit, err := d.Wait(ctx)
	if err != nil || exit.State != xen.Shutdown || exit.Reason != xenabi.ShutdownPoweroff {
		t.Fatalf("exit %v %v\n%s", exit, err, con)
	}
	return result{console: con.String(), exit: exit, dom: d}
}

var workLine = regexp.MustCompile(`work: n=(\d+) hash=(0x[0-9a-f]+)`)

// checkWork checks the guest's hash chain advanced 1000 steps per report,
// never restarting or skipping.
func checkWork(t *testing.T, console string, reports int) {
	t.Helper()
	ms := workLine.FindAllStringSubmatch(console, -1)
	if len(ms) != reports {
		t.Fatalf("%d work reports, want %d:\n%s", len(ms), reports, console)
	}
	for i, m := range ms {
		if n, _ := strconv.Atoi(m[1]); n != 1000*(i+1) {
			t.Fatalf("work report %d at n=%d: the chain restarted or skipped", i, n)
		}
	}
}

// checkChain checks that the guest's hash chain advanced 1000 steps per
// report, in order, however many reports there are.
func checkChain(t *testing.T, console string) {
	t.Helper()
	ms := workLine.FindAllStringSubmatch(console, -1)
	if len(ms) == 0 {
		t.Fatalf("no work reports:\n%s", console)
	}
	for i, m := range ms {
		if n, _ := strconv.Atoi(m[1]); n != 1000*(i+1) {
			t.Fatalf("work report %d at n=%d: the chain restarted or skipped", i, n)
		}
	}
}

// Every migration and checkpoint in the tests checks that the dirty pages
// (KVM's log and the VMM's dirty set) hold every page that changed: a
// hash pass over all pages in use (verify). Benchmarks turn it off.
func init() { verifyDirty = true }
