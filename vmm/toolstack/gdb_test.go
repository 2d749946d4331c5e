package toolstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/guest"
	"github.com/xenresume/xenresume/internal/elftest"
	"github.com/xenresume/xenresume/internal/xentools"
	"github.com/xenresume/xenresume/vmm/gdbstub"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// The debugger's operations in the transition table: only a running (or
// created) domain stops in the debugger, only a debug-stopped one continues, and a
// debug-stopped one refuses the toolstack's pause, unpause, suspend,
// resume and save but can be destroyed or asked to shut down.
func TestDebugTransitions(t *testing.T) {
	states := append(slices.Clone(allStates), DebugStopped)
	want := map[Op][]State{
		OpDebugStop:     {Running, Created},
		OpDebugContinue: {DebugStopped},
		OpUnpause:       {Created, Paused},
		OpPause:         {Running},
		OpSuspend:       {Running},
		OpResume:        {Suspended},
		OpSave:          {Running, Suspended},
		OpShutdown:      {Running, Paused, Created, DebugStopped},
		OpDestroy:       {Created, Running, Paused, Suspending, Suspended, Saving, Shutdown, Crashed, DebugStopped},
	}
	for op, from := range want {
		for _, s := range states {
			d := bareDomain(s, xen.Exit{})
			_, _, end, err := d.begin(context.Background(), op, keep)
			if ok := slices.Contains(from, s); ok != (err == nil) {
				t.Errorf("%s from %s: err %v, want allowed=%v", op, s, err, ok)
				continue
			}
			if err == nil {
				end(keep)
			} else if !strings.Contains(err.Error(), "it is "+s.String()) {
				t.Errorf("%s from %s: %v", op, s, err)
			}
		}
	}
	if DebugStopped.String() != "debug-stopped" || DebugStopped.Busy() || DebugStopped.Ended() {
		t.Errorf("DebugStopped: %q busy=%v ended=%v", DebugStopped, DebugStopped.Busy(), DebugStopped.Ended())
	}
	// A step that runs the guest's suspend or shutdown moves it.
	for _, c := range []struct {
		exit xen.Exit
		want State
	}{
		{xen.Exit{State: xen.Shutdown, Reason: xenabi.ShutdownSuspend}, Suspended},
		{xen.Exit{State: xen.Shutdown, Reason: 0}, Shutdown},
		{xen.Exit{State: xen.Running}, DebugStopped},
	} {
		d := bareDomain(DebugStopped, c.exit)
		d.observe()
		if d.State() != c.want {
			t.Errorf("observing %+v from debug-stopped: %s, want %s", c.exit, d.State(), c.want)
		}
	}
	// A guest that suspended while the debugger's stop waited for it wins.
	d := bareDomain(Running, xen.Exit{State: xen.Shutdown, Reason: xenabi.ShutdownSuspend})
	_, _, end, _ := d.begin(context.Background(), OpDebugStop, keep)
	end(DebugStopped)
	if d.State() != Suspended {
		t.Errorf("a debug stop that raced a suspend left %s", d.State())
	}
}

// stopped waits until the domain is stopped for gdb: it parks and the
// target has told the session.
func newTarget(t *testing.T, d *Domain) *DomainTarget {
	t.Helper()
	tg, err := NewDomainTarget(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tg.Close() })
	return tg
}

func nextStop(t *testing.T, tg *DomainTarget) gdbstub.Stop {
	t.Helper()
	select {
	case s := <-tg.Stops():
		return s
	case <-time.After(20 * time.Second):
		t.Fatal("no stop")
		return gdbstub.Stop{}
	}
}

// The target's side of bad input: reads of unmapped or non-canonical
// addresses read nothing (or up to the first unmapped byte), breakpoints
// there are refused, registers gdb may not change are refused, and the
// guest runs on after a detach.
func TestDomainTargetBadInput(t *testing.T) {
	d, con := create(t, nil, "test=idle")
	if err := d.Unpause(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, con, "suspend: ready cycle=0")
	tg := newTarget(t, d)
	if err := tg.Interrupt(); err != nil {
		t.Fatal(err)
	}
	if s := nextStop(t, tg); s.Signal != gdbstub.SIGINT {
		t.Fatalf("interrupt: %+v", s)
	}
	if d.State() != DebugStopped {
		t.Fatalf("state %s after an interrupt", d.State())
	}
	for _, op := range []func() error{d.Unpause, func() error { return d.Pause(context.Background()) },
		func() error { return d.Suspend(context.Background(), DefaultSuspendTimeouts) }} {
		if err := op(); !errors.Is(err, ErrWrongState) {
			t.Errorf("a toolstack request while gdb holds the guest: %v", err)
		}
	}
	img := guest.Image
	base := elftest.Symbol(t, img, "_start")
	buf := make([]byte, 64)
	for _, c := range []struct {
		addr uint64
		n    int
		want int
	}{
		{base, 64, 64},
		{0x1000_0000_0000, 64, 0},      // unmapped
		{0x8000_0000_0000, 64, 0},      // not canonical
		{0xffff_ffff_ffff_fff0, 64, 0}, // wraps
		{base - 16, 64, 0},             // below the mapping: nothing
	} {
		got, _ := tg.ReadMemory(0, c.addr, buf[:c.n])
		if got != c.want {
			t.Errorf("read %#x: %d bytes, want %d", c.addr, got, c.want)
		}
	}
	if n, err := tg.WriteMemory(0, 0x1000_0000_0000, []byte{1}); n != 0 || err == nil {
		t.Errorf("write of an unmapped address: %d, %v", n, err)
	}
	if _, err := tg.ReadMemory(5, base, buf); err == nil {
		t.Error("a vCPU that does not exist was read")
	}
	for _, k := range []gdbstub.BreakKind{gdbstub.SoftwareBreak, gdbstub.HardwareBreak} {
		if err := tg.SetBreakpoint(gdbstub.Breakpoint{Kind: k, Addr: 0x1000_0000_0000, Len: 1}); err == nil {
			t.Errorf("breakpoint kind %d at an unmapped address was set", k)
		}
	}
	if err := tg.SetBreakpoint(gdbstub.Breakpoint{Kind: gdbstub.WriteWatch, Addr: 0x1001, Len: 3}); !errors.Is(err, gdbstub.ErrUnsupported) {
		t.Errorf("a 3-byte watchpoint: %v", err)
	}
	r, err := tg.Registers(0)
	if err != nil {
		t.Fatal(err)
	}
	bad := *r
	bad.CR3 ^= 0x1000
	if err := tg.SetRegisters(0, &bad); !errors.Is(err, ErrReadOnlyRegister) {
		t.Errorf("a CR3 write: %v", err)
	}
	if err := tg.SetRegisters(0, r); err != nil {
		t.Errorf("writing the registers back unchanged: %v", err)
	}
	// Five hardware breakpoints do not fit in four debug registers; where
	// the target offers none in this guest, every one is refused, and so
	// are breakpoints, watchpoints and steps (gdb's error replies).
	o := tg.Offers()
	start := elftest.Symbol(t, img, "printk")
	var errs int
	for i := range 5 {
		if err := tg.SetBreakpoint(gdbstub.Breakpoint{Kind: gdbstub.HardwareBreak, Addr: start + uint64(i), Len: 1}); err != nil {
			errs++
		}
	}
	want := 1
	if !o.HardwareBreakpoints {
		want = 5
	}
	if errs != want {
		t.Errorf("%d of 5 hardware breakpoints refused, want %d (offers %+v)", errs, want, o)
	}
	for _, c := range []struct {
		name    string
		offered bool
		set     func() error
	}{
		{"break", o.Breakpoints, func() error {
			return tg.SetBreakpoint(gdbstub.Breakpoint{Kind: gdbstub.SoftwareBreak, Addr: start + 8, Len: 1})
		}},
		{"watch", o.Watchpoints, func() error {
			return tg.SetBreakpoint(gdbstub.Breakpoint{Kind: gdbstub.WriteWatch, Addr: elftest.Symbol(t, img, "work_hash"), Len: 8})
		}},
	} {
		if err := c.set(); (err == nil) != c.offered {
			t.Errorf("%s (offered %v): %v", c.name, c.offered, err)
		}
	}
	if !o.Watchpoints {
		if err := tg.SetBreakpoint(gdbstub.Breakpoint{Kind: gdbstub.WriteWatch, Addr: elftest.Symbol(t, img, "work_hash"), Len: 8}); !errors.Is(err, gdbstub.ErrUnsupported) {
			t.Errorf("a watchpoint where none are offered: %v, want ErrUnsupported (gdb's empty reply)", err)
		}
	}
	before, err := tg.Registers(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := tg.Resume(0); (err == nil) != o.SingleStep {
		t.Errorf("stepi (offered %v): %v", o.SingleStep, err)
	}
	if o.SingleStep {
		if s := nextStop(t, tg); s.Signal != gdbstub.SIGTRAP {
			t.Errorf("step: %+v", s)
		}
	}
	after, err := tg.Registers(0)
	if err != nil {
		t.Fatal(err)
	}
	if (after.RIP != before.RIP) != o.SingleStep {
		t.Errorf("stepi (offered %v) moved RIP %#x to %#x", o.SingleStep, before.RIP, after.RIP)
	}
	for _, bp := range []gdbstub.Breakpoint{{Kind: gdbstub.SoftwareBreak, Addr: start + 8, Len: 1},
		{Kind: gdbstub.WriteWatch, Addr: elftest.Symbol(t, img, "work_hash"), Len: 8}} {
		if err := tg.ClearBreakpoint(bp); err != nil {
			t.Error(err)
		}
	}
	if err := tg.Detach(); err != nil {
		t.Fatal(err)
	}
	if d.State() != Running {
		t.Fatalf("state %s after detach", d.State())
	}
	if err := d.RequestShutdown("poweroff"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if st, err := d.WaitEnded(ctx); err != nil || st.State != Shutdown {
		t.Fatalf("after detach the guest did not power off: %v %v\n%s", st.State, err, con)
	}
}

// gdbPath finds Debian's gdb, or skips (fails under
// XENRESUME_REQUIRE_TOOLS=1).
func gdbPath(t *testing.T) string {
	t.Helper()
	gdb, err := exec.LookPath("gdb")
	if err != nil {
		if os.Getenv("XENRESUME_REQUIRE_TOOLS") == "1" {
			t.Fatal("gdb is missing")
		}
		t.Skip("gdb is not installed")
	}
	return gdb
}

// serveGDB serves tg on a loopback port until the test ends.
func serveGDB(t *testing.T, tg *DomainTarget) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { gdbstub.Serve(ctx, l, tg, nil); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return l.Addr().String()
}

// waitResumed waits until gdb has resumed the guest n times and waits
// for a stop.
func waitResumed(t *testing.T, tg *DomainTarget, ctx context.Context, n int) {
	for {
		tg.mu.Lock()
		w := tg.waiting && tg.resumes >= n
		tg.mu.Unlock()
		if w {
			return
		}
		select {
		case <-ctx.Done():
			t.Error("gdb never resumed the guest")
			return
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// waitContinuedSuspended waits until gdb has been told of the guest's
// suspend and continued after it: the target then waits for a stop with
// the trap armed that reports the resume (before the suspend stop the
// continue that waits for it leaves the trap off; after the stop gdb does
// not wait until it continues).
func waitContinuedSuspended(t *testing.T, tg *DomainTarget, ctx context.Context) {
	for {
		tg.mu.Lock()
		w := tg.waiting && tg.armed && tg.resumeRsn == "resume" && suspended(tg.d.Xen.Exit())
		tg.mu.Unlock()
		if w {
			return
		}
		select {
		case <-ctx.Done():
			t.Error("gdb never continued after the suspend stop")
			return
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func runGDB(t *testing.T, ctx context.Context, image []byte, addr string, cmds ...string) string {
	t.Helper()
	elfPath := filepath.Join(t.TempDir(), "guest.elf")
	if err := os.WriteFile(elfPath, image, 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-batch", "-nx", elfPath, "-ex", "target remote " + addr}
	for _, c := range cmds {
		args = append(args, "-ex", c)
	}
	out, err := exec.CommandContext(ctx, gdbPath(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("gdb: %v\n%s", err, out)
	}
	return string(out)
}

func wantAll(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !regexp.MustCompile(w).MatchString(out) {
			t.Errorf("gdb output lacks %q:\n%s", w, out)
		}
	}
}

// Real gdb against the stub through a suspend and a cooperative resume:
// break on a symbol while the toolstack suspends the guest, read
// registers and memory, step, a watchpoint that fires, the suspend stop,
// the resume stop with the new %rax, detach; the guest then powers off.
func TestGDBStubAcrossSuspend(t *testing.T) { gdbAcrossSuspend(t, false) }

// The same through a checkpoint (`xl save -c`): the guest suspends, is
// written to a file and resumed cooperatively by the save itself, and gdb
// sees the suspend and then the resume.
func TestGDBStubAcrossCheckpoint(t *testing.T) { gdbAcrossSuspend(t, true) }

func gdbAcrossSuspend(t *testing.T, checkpoint bool) {
	gdbPath(t)
	d, con := create(t, nil, "test=idle")
	if err := d.Unpause(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, con, "suspend: ready cycle=0")
	tg := newTarget(t, d)
	addr := serveGDB(t, tg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The toolstack's side, while gdb drives: suspend once gdb waits at
	// its breakpoint, resume once it waits after the suspend stop.
	toolstack := make(chan error, 1)
	go func() {
		waitResumed(t, tg, ctx, 1)
		if checkpoint {
			toolstack <- d.Save(ctx, filepath.Join(t.TempDir(), "cp.save"), true)
			return
		}
		if err := d.Suspend(ctx, DefaultSuspendTimeouts); err != nil {
			toolstack <- err
			return
		}
		// Not "one Resume more than now": Suspend returns after the
		// target has told gdb of the suspend, and gdb may have
		// continued already.
		waitContinuedSuspended(t, tg, ctx)
		if err := d.Resume(ctx, true); err != nil {
			toolstack <- err
			return
		}
		toolstack <- d.Unpause()
	}()
	t.Cleanup(func() {
		if t.Failed() {
			r, err := d.Machine().VCPUs()[0].GetRegs()
			t.Logf("state %s, vCPU %s regs %+v %v, console:\n%s", d.State(), d.Machine().VCPUs()[0].State(), r, err, con)
			if c := d.Status().Exit.Crash; c != nil {
				t.Logf("crash report:\n%s", c.Report())
			}
		}
	})
	out := runGDB(t, ctx, guest.Image, addr, suspendScript(tg, d)...)
	if err := <-toolstack; err != nil {
		t.Fatalf("toolstack: %v\ngdb:\n%s", err, out)
	}
	wantSuspendScript(t, tg, d, out, checkpoint)
	if t.Failed() {
		t.FailNow()
	}
	if d.State() != Running {
		t.Fatalf("state %s after detach", d.State())
	}
	waitFor(t, con, "resume: rc=1 same-domain")
	if err := d.RequestShutdown("poweroff"); err != nil {
		t.Fatal(err)
	}
	if st, err := d.WaitEnded(ctx); err != nil || st.State != Shutdown || strings.Contains(con.String(), "FAIL") {
		t.Fatalf("the guest did not power off cleanly: %v %v\n%s", st.State, err, con)
	}
}

// A resume trap that fires while the toolstack's unpause is still in
// flight (Unpause lets the vCPUs run before it says Running; under load
// the trap's stop reaches the target first) is settled by the state the
// unpause leaves: the domain is DebugStopped and the debugger's, gdb is
// told of the resume only then, and a detach runs the guest. Taken as the
// toolstack's hold instead, the parked vCPUs were left to nobody: a
// Running domain that never ran again (TestGDBStubAcrossSuspend's "console
// never showed resume: rc=1").
func TestGDBResumeTrapDuringUnpause(t *testing.T) {
	d, con, tg := stoppedIdle(t)
	if err := tg.Resume(-1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := d.Suspend(ctx, DefaultSuspendTimeouts); err != nil {
		t.Fatal(err)
	}
	if s := nextStop(t, tg); s.Reason != "suspend" {
		t.Fatalf("stop after the suspend: %+v", s)
	}
	if err := tg.Resume(-1); err != nil { // the trap is armed for the resume
		t.Fatal(err)
	}
	if err := d.Resume(ctx, true); err != nil {
		t.Fatal(err)
	}
	// Unpause, held open after the vCPUs run: the trap parks vCPU 0.
	_, _, end, err := d.begin(ctx, OpUnpause, keep)
	if err != nil {
		t.Fatal(err)
	}
	d.machine.Unpause()
	v0 := d.machine.VCPUs()[0]
	for v0.State() != machine.VCPUParked {
		if ctx.Err() != nil {
			end(Running)
			t.Fatalf("the resume trap never parked vCPU 0 (%s)", v0.State())
		}
		time.Sleep(time.Millisecond)
	}
	// Negative control of the order: no stop while the unpause holds the
	// domain (a stop here is the race, whenever the target gets to it).
	select {
	case s := <-tg.Stops():
		end(Running)
		t.Fatalf("gdb was told %+v while the unpause was in flight", s)
	case <-time.After(100 * time.Millisecond):
	}
	end(Running)
	if s := nextStop(t, tg); s.Reason != "resume" {
		t.Fatalf("stop after the unpause: %+v", s)
	}
	if st := d.State(); st != DebugStopped {
		t.Fatalf("state %s after the resume trap, want debug-stopped", st)
	}
	if r, err := tg.Registers(0); err != nil || r.GPR[0] != 1 {
		t.Fatalf("%%rax at the resume stop: %+v %v, want 1 (cooperative)", r, err)
	}
	if err := tg.Detach(); err != nil {
		t.Fatal(err)
	}
	if st := d.State(); st != Running {
		t.Fatalf("state %s after detach", st)
	}
	waitFor(t, con, "resume: rc=1 same-domain")
}

// canBreak reports whether the target offers breakpoints in d on this
// host (DebugOffers: on PVM a ring-3 guest gets none).
func canBreak(tg *DomainTarget, _ *Domain) bool { return tg.Offers().Breakpoints }

// suspendScript is gdb's side of a suspend and resume: with breakpoints,
// a breakpoint on ack_suspend (which the toolstack's suspend request
// reaches), registers, memory, a step and a watchpoint that fires while
// the toolstack waits for the guest; without, a step where gdb stopped
// it. Then the suspend stop and the resume stop, each with %rax.
func suspendScript(tg *DomainTarget, d *Domain) []string {
	var cmds []string
	if canBreak(tg, d) {
		cmds = append(cmds, "break ack_suspend", "continue")
	}
	cmds = append(cmds, "print/x $pc", "info registers rip cs cr3", "x/2gx &work_n", "stepi", "print/x $pc")
	if canBreak(tg, d) {
		cmds = append(cmds, "delete")
		if !tg.Support().Watchpoint {
			cmds = append(cmds, "set can-use-hw-watchpoints 0")
		}
		cmds = append(cmds, "watch *(unsigned long *)&work_hash", "continue", "delete")
	}
	return append(cmds, "continue", "maint packet ?", "print/x $rax", "continue", "maint packet ?", "print/x $rax", "detach")
}

// wantSuspendScript checks gdb's output of suspendScript. At the suspend
// stop %rax is 0 (the suspend hypercall has not returned); in a
// checkpoint it may read 1 already: the save does not wait for gdb, and
// its cooperative resume sets %rax while gdb looks at the suspend stop
// (the guest itself stays stopped until the resume stop).
func wantSuspendScript(t *testing.T, tg *DomainTarget, d *Domain, out string, checkpoint bool) {
	t.Helper()
	n := 3
	atSuspend := `0x0`
	if checkpoint {
		atSuspend = `0x[01]`
	}
	if canBreak(tg, d) {
		ack := elftest.Symbol(t, guest.Image, "ack_suspend")
		wantAll(t, out,
			`Breakpoint 1, 0x0*`+strconvHex(ack)+` in ack_suspend \(\)`,
			`\$1 = `+hex(ack)+`\n`,
			`rip +`+hex(ack)+` `,
			`[Ww]atchpoint 2: \*\(unsigned long \*\)&work_hash\s+Old value = \d+\s+New value = \d+`)
	} else {
		t.Logf("no breakpoints in this guest on this host (ring 3: %v, %+v)", d.Xen.Ring3(), tg.Support())
	}
	wantAll(t, out,
		`rip +0x`, `cs +0x`, `cr3 +0x`,
		`<work_n>:\s+0x`,
		`\$2 = 0x`,
		`received: "T05thread:1;suspend:1;"`,
		fmt.Sprintf(`\$%d = %s\n`, n, atSuspend),
		`received: "T05thread:1;resume:1;"`,
		fmt.Sprintf(`\$%d = 0x1\n`, n+1), // a cooperative resume
		`\[Inferior 1 \(Remote target\) detached\]`)
	noStep := !tg.Offers().SingleStep // gdb gets an error reply: see DomainTarget
	if m := regexp.MustCompile(`\$1 = (0x[0-9a-f]+)\n[^$]*\$2 = (0x[0-9a-f]+)\n`).FindStringSubmatch(out); m == nil || (m[1] == m[2]) != noStep {
		t.Errorf("stepi (refused: %v): %v", noStep, m)
	}
	if noStep {
		wantAll(t, out, `remote failure reply 'E0e'|Remote failure reply: E0e`)
	}
}

func hex(v uint64) string { return "0x" + strconvHex(v) }

func strconvHex(v uint64) string {
	const digits = "0123456789abcdef"
	var b []byte
	for {
		b = append([]byte{digits[v&15]}, b...)
		v >>= 4
		if v == 0 {
			return string(b)
		}
	}
}

// Real gdb against an XTF guest (Xen's ring-3 PV model), taken before its
// first instruction: registers (CPL 3 selectors), memory at RIP, a step,
// and a breakpoint where this host can set one; after the detach it runs
// to its SUCCESS line.
func TestGDBStubXTF(t *testing.T) {
	gdbPath(t)
	img := xentools.XTFImage(t, "example")
	d, con := create(t, nil, "", func(c *DomainConfig) { c.Image = img })
	tg := newTarget(t, d)
	tg.TakeCreated = true
	addr := serveGDB(t, tg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmds := []string{"print/x $pc", "print/x $cs", "x/4xb $pc", "stepi", "print/x $pc"}
	if canBreak(tg, d) {
		cmds = append(cmds, "break test_main", "continue", "print/x $pc")
	}
	out := runGDB(t, ctx, img, addr, append(cmds, "detach")...)
	entry := elftest.Symbol(t, img, "_start")
	wantAll(t, out, `\$1 = `+hex(entry)+`\n`, `\$2 = 0x`, `0x[0-9a-f]+ <_(elf_)?start>:\s+0x`,
		`\[Inferior 1 \(Remote target\) detached\]`)
	noStep := !tg.Offers().SingleStep
	if m := regexp.MustCompile(`\$3 = (0x[0-9a-f]+)`).FindStringSubmatch(out); m == nil || (m[1] == hex(entry)) != noStep {
		t.Errorf("stepi (refused: %v):\n%s", noStep, out)
	}
	if noStep {
		wantAll(t, out, `remote failure reply 'E0e'|Remote failure reply: E0e`)
	}
	if m := regexp.MustCompile(`\$2 = 0x([0-9a-f]+)`).FindStringSubmatch(out); m == nil || !strings.HasSuffix(m[1], "3") {
		t.Errorf("a ring-3 guest's CS has RPL 3:\n%s", out)
	}
	if canBreak(tg, d) {
		// With the image's debug info gdb names the function (and no
		// address) when the stop is at its first instruction.
		wantAll(t, out, `Breakpoint 1, (0x0*`+strconvHex(elftest.Symbol(t, img, "test_main"))+` in )?test_main \(\)`,
			`\$4 = `+hex(elftest.Symbol(t, img, "test_main"))+`\n`)
	} else {
		t.Logf("no breakpoints in this guest on this host (ring 3: %v, %+v)", d.Xen.Ring3(), tg.Support())
	}
	if st, err := d.WaitEnded(ctx); err != nil || st.State != Shutdown {
		report := ""
		if st.Exit.Crash != nil {
			report = st.Exit.Crash.Report()
		}
		t.Fatalf("after detach: %v %v\n%s\n%s", st.State, err, con, report)
	}
	waitFor(t, con, "Test result: SUCCESS")
}

// A breakpoint stays out of a checkpoint's file and is back in the
// running guest after it (hideBreakpoints): the file has the page as the
// guest wrote it, never with the debugger's int3, and the resumed guest
// stops at the breakpoint when it next calls events_enable() (as it does
// after every resume).
func TestGDBBreakpointAcrossCheckpoint(t *testing.T) {
	d, con := create(t, nil, "test=idle")
	if err := d.Unpause(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, con, "suspend: ready cycle=0")
	tg := newTarget(t, d)
	if !tg.Offers().Breakpoints {
		t.Fatalf("no breakpoints offered in a %s guest: %+v", map[bool]string{true: "ring-3", false: "ring-0"}[d.Xen.Ring3()], tg.Offers())
	}
	if err := tg.Interrupt(); err != nil {
		t.Fatal(err)
	}
	if s := nextStop(t, tg); s.Signal != gdbstub.SIGINT {
		t.Fatalf("interrupt: %+v", s)
	}
	work := elftest.Symbol(t, guest.Image, "events_enable")
	page := make([]byte, 4096)
	if n, err := tg.ReadMemory(0, work&^4095, page); err != nil || n != len(page) {
		t.Fatalf("read the page of events_enable(): %d %v", n, err)
	}
	withBP := slices.Clone(page)
	withBP[work&4095] = 0xcc
	if err := tg.SetBreakpoint(gdbstub.Breakpoint{Kind: gdbstub.SoftwareBreak, Addr: work, Len: 1}); err != nil {
		t.Fatal(err)
	}
	if err := tg.Resume(-1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	file := filepath.Join(t.TempDir(), "cp.save")
	if err := d.Save(ctx, file, true); err != nil {
		t.Fatal(err)
	}
	if s := nextStop(t, tg); s.Reason != "suspend" {
		t.Fatalf("stop after the checkpoint's suspend: %+v", s)
	}
	// gdb continues: it is told of the resume if it has not happened
	// yet (the save resumes the guest on its own), then of the breakpoint.
	if err := tg.Resume(-1); err != nil {
		t.Fatal(err)
	}
	s := nextStop(t, tg)
	if s.Reason == "resume" {
		if err := tg.Resume(-1); err != nil {
			t.Fatal(err)
		}
		s = nextStop(t, tg)
	}
	if s.Reason != "swbreak" {
		t.Fatalf("stop after the resume: %+v (want the breakpoint in events_enable)\n%s", s, con)
	}
	if r, err := tg.Registers(0); err != nil || r.RIP != work {
		t.Fatalf("stopped at %#x (%v), want events_enable at %#x", r.RIP, err, work)
	}
	// The file: the page as the guest has it, never with the int3.
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var clean, dirty int
	_, err = stream.ReadSave(f, &stream.ReadOptions{Pages: func(_ *stream.Save, b stream.PageBatch) error {
		for _, p := range b.Data {
			clean += btoi(bytes.Equal(p, page))
			dirty += btoi(bytes.Equal(p, withBP))
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if clean != 1 || dirty != 0 {
		t.Errorf("the checkpoint has %d copies of events_enable()'s page as the guest wrote it (want 1) and %d with the debugger's int3 (want 0)", clean, dirty)
	}
	if err := tg.Detach(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, con, "work: n=")
	if strings.Contains(con.String(), "FAIL") {
		t.Fatalf("the guest failed:\n%s", con)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Negative control: with a debugger attached and a breakpoint of its own
// set, the guest's own int3s are still the guest's (XTF's xsa-265 takes a
// #BP through its trap table and checks the frame), and gdb is told of
// nothing but the end.
func TestGDBGuestInt3StaysGuests(t *testing.T) {
	img := xentools.XTFImage(t, "xsa-265")
	d, con := create(t, nil, "", func(c *DomainConfig) { c.Image = img })
	tg := newTarget(t, d)
	tg.TakeCreated = true
	if err := tg.Interrupt(); err != nil {
		t.Fatal(err)
	}
	if s := nextStop(t, tg); s.Signal != gdbstub.SIGINT {
		t.Fatalf("interrupt: %+v", s)
	}
	if err := tg.SetBreakpoint(gdbstub.Breakpoint{Kind: gdbstub.SoftwareBreak, Addr: elftest.Symbol(t, img, "xtf_failure"), Len: 1}); err != nil {
		t.Fatal(err)
	}
	if err := tg.Resume(-1); err != nil {
		t.Fatal(err)
	}
	if s := nextStop(t, tg); !s.Exited {
		t.Fatalf("gdb was told %+v, want only the exit:\n%s", s, con)
	}
	waitFor(t, con, "Test result: SUCCESS")
}

// A live migration or Remus of a domain in which gdb has int3s in memory
// is refused before it starts (its rounds copy memory while the guest
// runs, so the int3s would reach a target with no debugger), and the
// guest runs on; once gdb deletes them, the check passes.
func TestMigrateRefusedWithBreakpoints(t *testing.T) {
	d, _, tg := stoppedIdle(t)
	bp := gdbstub.Breakpoint{Kind: gdbstub.SoftwareBreak, Addr: elftest.Symbol(t, guest.Image, "events_enable"), Len: 1}
	if err := tg.SetBreakpoint(bp); err != nil {
		t.Fatal(err)
	}
	if err := tg.Resume(-1); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Migrate(t.Context(), io.Discard, MigrateOptions{}, nil); !errors.Is(err, ErrBreakpointsSet) {
		t.Errorf("migrate with a breakpoint set: %v, want ErrBreakpointsSet", err)
	}
	if _, err := d.Remus(t.Context(), io.Discard, RemusOptions{}); !errors.Is(err, ErrBreakpointsSet) {
		t.Errorf("remus with a breakpoint set: %v, want ErrBreakpointsSet", err)
	}
	if st := d.State(); st != Running {
		t.Errorf("state %s after the refusals, want running", st)
	}
	if err := tg.Interrupt(); err != nil { // gdb deletes breakpoints at a stop
		t.Fatal(err)
	}
	nextStop(t, tg)
	if err := tg.ClearBreakpoint(bp); err != nil {
		t.Fatal(err)
	}
	if err := d.checkNoBreakpoints(); err != nil {
		t.Errorf("after gdb deleted its breakpoint: %v", err)
	}
}

// stoppedIdle starts the stub's idle scenario, attaches a debugger target
// and stops the guest with an interrupt (the stop taken).
func stoppedIdle(t *testing.T) (*Domain, *syncBuffer, *DomainTarget) {
	t.Helper()
	d, con := create(t, nil, "test=idle")
	if err := d.Unpause(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, con, "suspend: ready cycle=0")
	tg := newTarget(t, d)
	if err := tg.Interrupt(); err != nil {
		t.Fatal(err)
	}
	nextStop(t, tg)
	return d, con, tg
}
