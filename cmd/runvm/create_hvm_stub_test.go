package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/guest"
	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/internal/xentools"
)

// stubOwner is a `runvm create` (or `runvm restore`) of the guest stub's
// HVM build running in the background: the guest's console and runvm's
// stderr, and its exit status once it ends.
type stubOwner struct {
	out, errb *syncBuf
	done      chan int      // the exit status, for waitExit
	ended     chan struct{} // closed when run returned
}

// startStub creates the HVM stub (guest.ImageHVM) as a user would: an xl
// configuration of type kind, `runvm create -p`, the stub's command line
// given, and `runvm unpause`. A PVH domain takes the command line in its
// configuration (hvm_start_info's cmdline); an HVM one gets none from the
// builder, as on Xen, so it is written to the domain's data/cmdline with
// Xen's own xenstore-write through `runvm xenstore-path` while the domain
// is created paused, and the stub reads it there.
func startStub(t *testing.T, dir, name, kind, cmdline string) *stubOwner {
	t.Helper()
	files := t.TempDir()
	img := filepath.Join(files, "stub-hvm.elf")
	if err := os.WriteFile(img, guest.ImageHVM, 0o600); err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf("name = '%s'\ntype = '%s'\nmemory = 8\n", name, kind)
	if kind == "pvh" {
		body += fmt.Sprintf("kernel = '%s'\ncmdline = '%s'\n", img, cmdline)
	} else {
		body += fmt.Sprintf("firmware_override = '%s'\n", img)
	}
	cfg := filepath.Join(files, name+".cfg")
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	const xsWrite = "usr/bin/xenstore-write"
	if kind == "hvm" {
		xentools.Command(t, xsWrite) // skips (fails under CI) before anything starts without it
	}
	o := startOwner(t, dir, name, "create", "-p", "--runtime-dir", dir, cfg)
	domid := waitListed(t, dir, name, o)
	if kind == "hvm" {
		env := strings.TrimPrefix(strings.TrimSpace(mustCtl(t, dir, "xenstore-path", name)), "export ")
		cmd := xentools.Command(t, xsWrite, fmt.Sprintf("/local/domain/%s/data/cmdline", domid), cmdline)
		cmd.Env = append(cmd.Env, env)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("xenstore-write data/cmdline: %v\n%s", err, b)
		}
	}
	mustCtl(t, dir, "unpause", name)
	return o
}

// startOwner runs runvm with args in the background; at the test's end
// it destroys the domain name, so a test that failed midway leaves no
// owner behind.
func startOwner(t *testing.T, dir, name string, args ...string) *stubOwner {
	t.Helper()
	o := &stubOwner{out: &syncBuf{}, errb: &syncBuf{}, done: make(chan int, 1), ended: make(chan struct{})}
	go func() {
		o.done <- run(args, o.out, o.errb)
		close(o.ended)
	}()
	t.Cleanup(func() {
		select {
		case <-o.ended:
			return
		default:
		}
		ctl(t, dir, "destroy", name)
		select {
		case <-o.ended:
		case <-time.After(30 * time.Second):
			t.Errorf("runvm %s did not end after destroy", args[0])
		}
	})
	return o
}

// waitListed waits until runvm list shows the domain and returns its
// domid.
func waitListed(t *testing.T, dir, name string, o *stubOwner) string {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; {
		_, l, _ := ctl(t, dir, "list")
		for _, line := range strings.Split(l, "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[1] == name {
				return f[0]
			}
		}
		select {
		case code := <-o.done:
			t.Fatalf("runvm create exited %d before the domain was listed:\n%s", code, o.errb)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never listed:\n%s", name, o.errb)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var roundTrip = regexp.MustCompile(`xenstore round trip: domid=(\d+)`)

// lastDomid is the domid the stub read in its last xenstore round trip.
func lastDomid(t *testing.T, out string) string {
	t.Helper()
	m := roundTrip.FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		t.Fatalf("no xenstore round trip in:\n%s", out)
	}
	return m[len(m)-1][1]
}

// PVHVM suspend and resume (claim 10), with the stub's HVM build under
// `runvm create` and the commands a user types. The stub watches
// control/shutdown through its xenstore client; `runvm suspend` is the
// handshake (the stub acks and calls SHUTDOWN_suspend with no
// start_info). `runvm resume --fast` returns 1 in the same domain with
// everything kept; `runvm resume` returns 0 and the stub redoes its
// setup; `runvm save` and `runvm restore` return 0 in a new domain (a new
// domid), where the stub redoes shared_info, the callback vector, its
// ports and its xenstore connection, then makes a xenstore round trip and
// takes an event through the callback vector. `runvm shutdown` ends it
// with its result. Under type = "hvm" (its command line from xenstore)
// and "pvh" (from hvm_start_info).
func TestCreateHVMStubPVHVMSuspend(t *testing.T) {
	kvmtest.Require(t)
	for _, kind := range []string{"hvm", "pvh"} {
		t.Run(kind, func(t *testing.T) {
			dir, files := t.TempDir(), t.TempDir()
			o := startStub(t, dir, "pv", kind, "test=pvhvm-suspend")
			waitOut(t, o.out, "pvhvm: ready cycle=1")
			if s := mustCtl(t, dir, "suspend", "pv"); !strings.Contains(s, "suspended") {
				t.Errorf("suspend: %q", s)
			}
			waitOut(t, o.errb, "suspended itself (SHUTDOWN_suspend); `runvm resume [--fast] pv`")
			if strings.Contains(o.errb.String(), "suspended remotely") {
				t.Errorf("the guest's own suspend announced as a remote one:\n%s", o.errb)
			}
			mustCtl(t, dir, "resume", "--fast", "pv")
			waitOut(t, o.out, "pvhvm: resumed cycle=1 rc=1 (cancelled")
			waitOut(t, o.out, "pvhvm: event through the callback vector after rc=1")
			waitOut(t, o.out, "pvhvm: ready cycle=2")
			first := lastDomid(t, o.out.String())

			mustCtl(t, dir, "suspend", "pv")
			mustCtl(t, dir, "resume", "pv")
			waitOut(t, o.out, "pvhvm: resumed cycle=2 rc=0 (redid")
			waitOut(t, o.out, "pvhvm: event through the callback vector after rc=0")
			waitOut(t, o.out, "pvhvm: ready cycle=3")
			if d := lastDomid(t, o.out.String()); d != first {
				t.Errorf("a resume without --fast changed the domid %s -> %s", first, d)
			}

			file := filepath.Join(files, "pv.save")
			mustCtl(t, dir, "save", "pv", file)
			if c := waitExit(t, o.done, o.errb); c != exitSuspend {
				t.Fatalf("owner after save: exit %d\n%s", c, o.errb)
			}
			r := startOwner(t, dir, "pv", "restore", "--runtime-dir", dir, file)
			waitOut(t, r.out, "pvhvm: resumed cycle=3 rc=0 (redid")
			waitOut(t, r.out, "pvhvm: event through the callback vector after rc=0")
			waitOut(t, r.out, "pvhvm: ready cycle=4")
			if d := lastDomid(t, r.out.String()); d == first {
				t.Errorf("restored in the same domid %s", d)
			}
			mustCtl(t, dir, "shutdown", "pv")
			if c := waitExit(t, r.done, r.errb); c != exitPoweroff || !strings.Contains(r.out.String(), "Test result: SUCCESS") {
				t.Fatalf("restored owner: exit %d\n%s\n%s", c, r.out, r.errb)
			}
		})
	}
}

// The negative control of claim 10: the stub with skip-callback=1 does
// not set its callback vector again after a resume that returns 0. In the
// same domain (resume --fast, and resume without it, where
// HVM_PARAM_CALLBACK_IRQ is still set) its events still arrive; after
// save and restore (a new domain, where CALLBACK_IRQ is not in Xen's
// stream) its xenstore round trip still works (it polls its ring) but no
// event reaches it, and its bounded wait ends in a FAILURE that says so:
// the domain crashes (exit 5), nothing hangs.
func TestCreateHVMStubSkipCallback(t *testing.T) {
	kvmtest.Require(t)
	dir, files := t.TempDir(), t.TempDir()
	o := startStub(t, dir, "sk", "hvm", "test=pvhvm-suspend skip-callback=1")
	waitOut(t, o.out, "pvhvm: ready cycle=1")
	mustCtl(t, dir, "suspend", "sk")
	mustCtl(t, dir, "resume", "--fast", "sk")
	waitOut(t, o.out, "pvhvm: event through the callback vector after rc=1")
	waitOut(t, o.out, "pvhvm: ready cycle=2")
	mustCtl(t, dir, "suspend", "sk")
	mustCtl(t, dir, "resume", "sk")
	waitOut(t, o.out, "pvhvm: event through the callback vector after rc=0")
	waitOut(t, o.out, "pvhvm: ready cycle=3")

	file := filepath.Join(files, "sk.save")
	mustCtl(t, dir, "save", "sk", file)
	if c := waitExit(t, o.done, o.errb); c != exitSuspend {
		t.Fatalf("owner after save: exit %d\n%s", c, o.errb)
	}
	r := startOwner(t, dir, "sk", "restore", "--runtime-dir", dir, file)
	c := waitExit(t, r.done, r.errb)
	out := r.out.String()
	for _, want := range []string{
		"pvhvm: resumed cycle=3 rc=0",
		"pvhvm: xenstore round trip: domid=",
		"Test result: FAILURE: no event within 2000 ms after the resume (rc=0): the callback vector was not set again (skip-callback=1)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("restored stub's console lacks %q", want)
		}
	}
	if c != exitCrash || strings.Contains(out, "event through the callback vector after rc=0") {
		t.Fatalf("restored owner: exit %d, want %d (the stub's FAILURE)\n%s\n%s", c, exitCrash, out, r.errb)
	}
}

// ACPI S3 with the stub's HVM build (claim 11): it finds the FACS, PM1a_CNT
// and \_S3 through the VMM's tables, copies its real-mode waking code
// below 1 MiB, sets the waking vector, fills memory with a pattern and
// enters S3; `runvm list -l` shows it paused with reason s3, and `runvm
// trigger DOM s3resume` runs the firmware's S3 path into its waking
// vector, which returns to long mode, where the stub finds its pattern
// intact and still takes events, and powers off. The negative control
// sets no waking vector: the VMM's firmware says so and ends the domain
// (exit 8), nothing hangs. A PVH domain has no ACPI tables here, and the
// stub says SKIP.
func TestCreateHVMStubS3(t *testing.T) {
	kvmtest.Require(t)
	for _, tc := range []struct {
		name, kind, cmdline string
		s3                  bool
		code                int
		want                string
	}{
		{"wakes", "hvm", "test=s3", true, exitPoweroff, "s3: memory intact"},
		{"no-vector", "hvm", "test=s3 no-vector=1", true, exitVMMCrash, "no waking vector"},
		{"pvh", "pvh", "test=s3", false, exitPoweroff, "Test result: SKIP: no ACPI tables"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			o := startStub(t, dir, tc.name, tc.kind, tc.cmdline)
			if tc.s3 {
				waitOut(t, o.errb, "is in ACPI S3; `runvm trigger "+tc.name+" s3resume` wakes it")
				if l := mustCtl(t, dir, "list", "-l"); !strings.Contains(l, "paused") || !strings.Contains(l, " s3 ") {
					t.Errorf("list -l in S3:\n%s", l)
				}
				if strings.Contains(o.out.String(), "s3: woke") {
					t.Fatalf("woke before the trigger:\n%s", o.out)
				}
				if s := mustCtl(t, dir, "trigger", tc.name, "s3resume"); !strings.Contains(s, "sent s3resume") {
					t.Errorf("trigger: %q", s)
				}
			}
			c := waitExit(t, o.done, o.errb)
			if all := o.out.String() + o.errb.String(); c != tc.code || !strings.Contains(all, tc.want) {
				t.Fatalf("exit %d, want %d with %q:\n%s\n%s", c, tc.code, tc.want, o.out, o.errb)
			}
			if tc.code == exitPoweroff && tc.s3 && !strings.Contains(o.out.String(), "Test result: SUCCESS") {
				t.Errorf("no SUCCESS:\n%s", o.out)
			}
		})
	}
}

// A stub saved while in ACPI S3 and restored wakes at once in the new
// domain (the S3 state is not in Xen's stream: xen-hvm-pvh.md §7.5),
// through its waking vector with memory intact, finds CALLBACK_IRQ 0
// there, redoes its setup as after any resume in a new domain, and takes
// an event. The same-domain case (`wakes` above) takes its event without
// redoing anything.
func TestCreateHVMStubS3SaveRestore(t *testing.T) {
	kvmtest.Require(t)
	dir, files := t.TempDir(), t.TempDir()
	o := startStub(t, dir, "s3r", "hvm", "test=s3")
	waitOut(t, o.errb, "is in ACPI S3; `runvm trigger s3r s3resume` wakes it")
	file := filepath.Join(files, "s3r.save")
	mustCtl(t, dir, "save", "s3r", file)
	if c := waitExit(t, o.done, o.errb); c != exitSuspend {
		t.Fatalf("owner after save: exit %d\n%s", c, o.errb)
	}
	if strings.Contains(o.out.String(), "s3: woke") {
		t.Fatalf("woke in the saved domain:\n%s", o.out)
	}
	r := startOwner(t, dir, "s3r", "restore", "--runtime-dir", dir, file)
	c := waitExit(t, r.done, r.errb)
	out := r.out.String()
	if c != exitPoweroff || !strings.Contains(out, "s3: memory intact") || !strings.Contains(out, "s3: woke in a new domain") ||
		!strings.Contains(out, "Test result: SUCCESS") {
		t.Fatalf("restored owner: exit %d\n%s\n%s", c, out, r.errb)
	}
	if strings.Contains(o.out.String(), "woke in a new domain") {
		t.Errorf("the first domain redid its setup")
	}
}
