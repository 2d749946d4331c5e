package toolstack

import (
	"context"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/xentools"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// suspendAndCheck suspends d and checks what xc_domain_resume's callers
// rely on: vCPU 0 parked in sched_op's return path with %rax 0 and the
// start_info MFN in %rdx.
func suspendAndCheck(t *testing.T, ctx context.Context, d *Domain) {
	t.Helper()
	if err := d.Suspend(ctx, quick); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	exit := d.Xen.Exit()
	want, _ := d.Xen.Frames().MFN(d.Layout.PFN(d.Layout.StartInfo))
	if exit.Reason != xenabi.ShutdownSuspend || exit.SuspendRDX != want {
		t.Fatalf("exit %v, want suspend with rdx %#x", exit, want)
	}
	if in, rax, err := d.InReturnPath(); err != nil || !in || rax != 0 {
		t.Fatalf("suspended vCPU 0: in return path %v, rax %d, %v", in, rax, err)
	}
	if v, _ := d.ts.Store().Read(d.controlPath("shutdown")); v != "" {
		t.Errorf("control/shutdown after the ack: %q", v)
	}
}

// resumeAndCheck resumes d and checks it is still paused in the return
// path with the %rax the guest will see.
func resumeAndCheck(t *testing.T, ctx context.Context, d *Domain, fast bool) {
	t.Helper()
	if err := d.Resume(ctx, fast); err != nil {
		t.Fatalf("resume(fast=%v): %v", fast, err)
	}
	wantRAX := uint64(0)
	if fast {
		wantRAX = 1
	}
	in, rax, err := d.InReturnPath()
	if err != nil || !in || rax != wantRAX {
		t.Fatalf("after resume: in return path %v, rax %d (want %d), %v", in, rax, wantRAX, err)
	}
	time.Sleep(10 * time.Millisecond)
	if !d.Machine().VCPUs()[0].Parked() {
		t.Fatal("Resume let the domain run before Unpause")
	}
	if in2, _, _ := d.InReturnPath(); !in2 {
		t.Fatal("the vCPU moved before Unpause")
	}
	d.Unpause()
}

func TestSuspendResume(t *testing.T) {
	for _, fast := range []bool{true, false} {
		name := map[bool]string{true: "fast", false: "noncooperative"}[fast]
		t.Run(name, func(t *testing.T) {
			d, con, ctx := startGuest(t, "test=suspend", "suspend: ready cycle=0")
			if v, _ := d.ts.Store().Read(d.controlPath("feature-suspend")); v != "1" {
				t.Errorf("feature-suspend = %q", v)
			}
			suspendAndCheck(t, ctx, d)
			resumeAndCheck(t, ctx, d, fast)
			r := waitPoweroff(t, ctx, d, con)
			requireSuccess(t, r)
			want := "resume: rc=1 same-domain"
			if !fast {
				want = "resume: rc=0 new-domain"
			}
			if !strings.Contains(r.console, want) {
				t.Errorf("console lacks %q:\n%s", want, r.console)
			}
			checkWork(t, r.console, 3)
		})
	}
}

// Several suspends of one guest in a row, alternating resume modes.
func TestSuspendCycles(t *testing.T) {
	d, con, ctx := startGuest(t, "test=suspend cycles=4", "suspend: ready cycle=0")
	for i := 0; i < 4; i++ {
		waitFor(t, con, "suspend: ready cycle="+strconv.Itoa(i))
		suspendAndCheck(t, ctx, d)
		resumeAndCheck(t, ctx, d, i%2 == 0)
	}
	r := waitPoweroff(t, ctx, d, con)
	requireSuccess(t, r)
	checkWork(t, r.console, 1+2*4)
	if n := strings.Count(r.console, "rc=1 same-domain"); n != 2 {
		t.Errorf("%d fast resumes", n)
	}
}

// Negative control: a guest that never acknowledges gets the request
// cancelled (control/shutdown back to ""), an error, and keeps running.
func TestSuspendNotAcknowledged(t *testing.T) {
	d, con, ctx := startGuest(t, "test=suspend-reject", "suspend: ready")
	err := d.Suspend(ctx, SuspendTimeouts{Ack: 300 * time.Millisecond, Shutdown: time.Second})
	if !errors.Is(err, ErrSuspendNotAcknowledged) {
		t.Fatalf("got %v, want ErrSuspendNotAcknowledged", err)
	}
	waitPoweroff(t, ctx, d, con)
	if v, _ := d.ts.Store().Read(d.controlPath("shutdown")); v != "" {
		t.Errorf("control/shutdown after the cancel: %q", v)
	}
	requireSuccess(t, result{console: con.String()})
	if !strings.Contains(con.String(), "suspend-reject: request cancelled") {
		t.Errorf("the guest never saw the cancel:\n%s", con)
	}
}

// Negative control: a guest that acknowledges but never suspends gets its
// own error, and is still running.
func TestSuspendAckedButNoShutdown(t *testing.T) {
	d, _, ctx := startGuest(t, "test=suspend-noshutdown", "suspend: ready")
	err := d.Suspend(ctx, SuspendTimeouts{Ack: 5 * time.Second, Shutdown: 300 * time.Millisecond})
	if !errors.Is(err, ErrGuestDidNotSuspend) {
		t.Fatalf("got %v, want ErrGuestDidNotSuspend", err)
	}
	if e := d.Xen.Exit(); e.State != xen.Running {
		t.Errorf("domain state %v", e)
	}
}

func TestResumeRunningDomainRefused(t *testing.T) {
	d, _ := create(t, nil, "test=hlt sti=1")
	d.Unpause()
	err := d.Resume(context.Background(), true)
	var ws *WrongStateError
	if !errors.As(err, &ws) || ws.State != Running || ws.Op != OpResume || !errors.Is(err, ErrWrongState) {
		t.Fatalf("got %v, want a WrongStateError for a running domain", err)
	}
}

// Negative control: a guest that takes the non-cooperative resume for a
// cancelled one (it ignores the return value) is caught: its xenstore
// frame is then wrong and it fails.
func TestGuestIgnoringReturnCodeIsCaught(t *testing.T) {
	d, con, ctx := startGuest(t, "test=suspend ignore-rc=1", "suspend: ready")
	suspendAndCheck(t, ctx, d)
	resumeAndCheck(t, ctx, d, false)
	exit, err := d.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if l := resultLine(t, con.String()); !strings.Contains(l, "FAILURE") || exit.Reason != xenabi.ShutdownCrash {
		t.Fatalf("a guest that ignored rc=0 passed: %s (%v)", l, exit)
	}
}

// The real Xen client drives the protocol: xenstore-write of "suspend"
// through our xenstored socket makes the guest acknowledge and suspend.
func TestXenstoreWriteDrivesSuspend(t *testing.T) {
	ts := New(nil)
	d, con := create(t, ts, "test=suspend")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sock := filepath.Join(t.TempDir(), "xenstored")
	go ts.Store().ServeUnix(ctx, sock)
	d.Unpause()
	waitFor(t, con, "suspend: ready cycle=0")
	cmd := xentools.Command(t, "usr/bin/xenstore-write", d.controlPath("shutdown"), "suspend")
	cmd.Env = append(cmd.Env, "XENSTORED_PATH="+sock)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("xenstore-write: %v\n%s", err, out)
	}
	exit, err := d.Wait(ctx)
	if err != nil || exit.Reason != xenabi.ShutdownSuspend {
		t.Fatalf("exit %v %v\n%s", exit, err, con)
	}
	read := xentools.Command(t, "usr/bin/xenstore-read", d.controlPath("shutdown"))
	read.Env = append(read.Env, "XENSTORED_PATH="+sock)
	if out, err := read.CombinedOutput(); err != nil || string(out) != "\n" {
		t.Errorf("xenstore-read after the ack: %q %v", out, err)
	}
	resumeAndCheck(t, ctx, d, true)
	if exit, err := d.Wait(ctx); err != nil || exit.Reason != xenabi.ShutdownPoweroff {
		t.Fatalf("exit %v %v", exit, err)
	}
	requireSuccess(t, result{console: con.String()})
}

// The event-channel method: a guest that publishes a port in
// device/suspend/event-channel is signalled there; control/shutdown is not
// written and no acknowledgement is needed. Twice, across a non-cooperative
// resume after which it publishes a new port.
func TestSuspendEventChannelMethod(t *testing.T) {
	d, con, ctx := startGuest(t, "test=suspend suspend-evtchn=1 cycles=2", "suspend: ready cycle=0")
	for i, fast := range []bool{false, true} {
		waitFor(t, con, "suspend: ready cycle="+strconv.Itoa(i))
		suspendAndCheck(t, ctx, d)
		resumeAndCheck(t, ctx, d, fast)
	}
	r := waitPoweroff(t, ctx, d, con)
	requireSuccess(t, r)
	if n := strings.Count(r.console, "suspend: via event channel"); n != 2 || strings.Contains(r.console, "suspend: acked") {
		t.Errorf("%d suspends by event channel:\n%s", n, r.console)
	}
}
