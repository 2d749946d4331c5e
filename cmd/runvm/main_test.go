package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/internal/syncbuf"
	"github.com/xenresume/xenresume/internal/xentools"
)

func runvm(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestRunExitStatus(t *testing.T) {
	kvmtest.Require(t)
	for _, c := range []struct {
		cmdline string
		code    int
		stderr  string
	}{
		{"", exitPoweroff, ""},
		{"test=xs-bench n=10", exitPoweroff, ""},
		{"test=console-ring", exitPoweroff, ""},
		{"test=shutdown reason=reboot", exitReboot, "rebooted"},
		{"test=shutdown reason=crash", exitCrash, "SHUTDOWN_crash"},
		{"test=shutdown reason=watchdog", exitWatchdog, "watchdog"},
		{"test=shutdown reason=soft_reset", exitSoftReset, "soft reset"},
		{"test=fail", exitCrash, "SHUTDOWN_crash"},
		{"test=unhandled-fault", exitVMMCrash, "unhandled exception 6"},
	} {
		t.Run(c.cmdline, func(t *testing.T) {
			code, out, errs := runvm(t, "run", "--runtime-dir", t.TempDir(), "--mem", "16M", "--cmdline", c.cmdline)
			if code != c.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, c.code, out, errs)
			}
			if c.code != exitVMMCrash && !strings.Contains(out, "Test result: ") {
				t.Errorf("no result line on stdout:\n%s", out)
			}
			if !strings.Contains(errs, c.stderr) {
				t.Errorf("stderr lacks %q:\n%s", c.stderr, errs)
			}
			if c.code == exitVMMCrash {
				checkGuestCrashReport(t, errs)
			}
		})
	}
}

// checkGuestCrashReport checks that a crash report of the ring-3 model
// shows the guest's context: its RIP (the one the reason names) and the
// faulting instruction there, ud2, then the VMM's registers as one line.
func checkGuestCrashReport(t *testing.T, report string) {
	t.Helper()
	m := regexp.MustCompile(`at rip (0x[0-9a-f]+)`).FindStringSubmatch(report)
	if m == nil {
		t.Fatalf("no guest rip in the reason:\n%s", report)
	}
	rip, err := strconv.ParseUint(m[1], 0, 64)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		fmt.Sprintf("guest rip %#016x ", rip),
		fmt.Sprintf("=> %#016x: 0f 0b", rip),
		"\n  VMM: rip ",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	if !regexp.MustCompile(`(?m)^  => 0x[0-9a-f]+: [0-9a-f ]+ud2$`).MatchString(report) {
		t.Errorf("report does not show ud2 at the guest's rip:\n%s", report)
	}
}

// Every scenario finishes under runvm run or says what it waits for:
// evtchn's round trip needs a dom0 peer that only the Go test provides.
func TestEvtchnWithoutPeerSkips(t *testing.T) {
	kvmtest.Require(t)
	code, out, errs := runvm(t, "run", "--runtime-dir", t.TempDir(), "--cmdline", "test=evtchn")
	if code != exitPoweroff || !strings.Contains(out, "Test result: SKIP: no dom0 peer bound port") {
		t.Errorf("exit %d\n%s%s", code, out, errs)
	}
}

func TestRunTrace(t *testing.T) {
	kvmtest.Require(t)
	code, _, errs := runvm(t, "run", "--runtime-dir", t.TempDir(), "--trace", "--cmdline", "test=version")
	if code != 0 || !strings.Contains(errs, `call="xen_version(capabilities, 0x`) {
		t.Errorf("exit %d, trace:\n%s", code, errs)
	}
}

func TestRunGuestFile(t *testing.T) {
	kvmtest.Require(t)
	img, err := os.ReadFile("../../guest/xenresume-stub.elf")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "guest.elf")
	os.WriteFile(path, img, 0o644)
	if code, out, errs := runvm(t, "run", "--runtime-dir", t.TempDir(), path); code != 0 || !strings.Contains(out, "SUCCESS") {
		t.Errorf("exit %d\n%s\n%s", code, out, errs)
	}
}

// Errors are one clear line, never a Go stack.
func TestRunErrors(t *testing.T) {
	dir := t.TempDir()
	notELF := filepath.Join(dir, "x.elf")
	os.WriteFile(notELF, []byte("hello"), 0o644)
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{nil, exitUsage, "usage"},
		{[]string{"bogus"}, exitUsage, "unknown command"},
		{[]string{"run", "--mem", "lots"}, exitUsage, "bad size"},
		{[]string{"run", "a", "b"}, exitUsage, "at most one"},
		{[]string{"run", filepath.Join(dir, "missing.elf")}, exitError, "no such file"},
		{[]string{"run", dir}, exitError, "not a regular file"},
		{[]string{"run", notELF}, exitError, "not an ELF file"},
		{[]string{"run", "--runtime-dir", dir, "--mem", "3M"}, exitUsage, "multiple of 2M"},
		{[]string{"run", "--mem", "4G"}, exitUsage, "at most 2G"},
		{[]string{"run", "--bogus"}, exitUsage, "not defined: -bogus"},
		{[]string{"suspend", "--timeout", "soon", "g"}, exitUsage, "invalid value"},
		{[]string{"suspend", "--runtime-dir", dir, "--timeout", "-1s", "g"}, exitUsage, "positive duration"},
		{[]string{"suspend", "--runtime-dir", dir, "nope"}, exitError, `no domain "nope"`},
		{[]string{"suspend", "--runtime-dir", dir}, exitUsage, "want DOM, got 0"},
		{[]string{"save", "--runtime-dir", dir, "g"}, exitUsage, "want DOM FILE"},
		{[]string{"restore", "--runtime-dir", dir}, exitUsage, "want FILE"},
		{[]string{"inspect"}, exitUsage, "usage"},
	} {
		code, _, errs := runvm(t, c.args...)
		if code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("runvm %v: exit %d, stderr %q", c.args, code, errs)
		}
		if strings.Contains(errs, "goroutine") || strings.Contains(errs, "panic") {
			t.Errorf("runvm %v printed a Go stack:\n%s", c.args, errs)
		}
		if strings.Contains(errs, "runvm: runvm") || strings.Contains(errs, ": usage: usage") {
			t.Errorf("runvm %v: doubled prefix: %s", c.args, errs)
		}
		if c.code != 0 && len(c.args) > 0 && strings.Count(strings.TrimSpace(errs), "\n") != 0 {
			t.Errorf("runvm %v: error is not one line:\n%s", c.args, errs)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"32M": 32 << 20, "1G": 1 << 30, "4096K": 4 << 20, "2097152": 2 << 20, "64mb": 64 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "0", "-1M", "12Q", "99999999999G"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}

// syncBuf is a writer tests read while runvm writes.
type syncBuf = syncbuf.Buffer

// startRun starts `runvm run` in the background and waits until the
// guest's console shows ready.
func startRun(t *testing.T, dir, name, cmdline, ready string) (*syncBuf, *syncBuf, chan int) {
	t.Helper()
	out, errb := &syncBuf{}, &syncBuf{}
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"run", "--runtime-dir", dir, "--name", name, "--mem", "16M", "--cmdline", cmdline}, out, errb)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), ready) {
		select {
		case code := <-done:
			t.Fatalf("runvm run exited %d early:\n%s\n%s", code, out, errb)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest never showed %q:\n%s", ready, out)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return out, errb, done
}

func ctl(t *testing.T, dir string, args ...string) (int, string, string) {
	t.Helper()
	cmd := append([]string{args[0], "--runtime-dir", dir}, args[1:]...)
	return runvm(t, cmd...)
}

func mustCtl(t *testing.T, dir string, args ...string) string {
	t.Helper()
	code, out, errs := ctl(t, dir, args...)
	if code != 0 {
		t.Fatalf("runvm %v: exit %d: %s", args, code, errs)
	}
	return out
}

// The control plane end to end: a running guest is listed, suspended and
// resumed both ways, paused, reached by the real xenstore clients through
// the printed XENSTORED_PATH, and shut down; wrong-state requests are
// refused with a clear error.
func TestControlPlane(t *testing.T) {
	kvmtest.Require(t)
	dir := t.TempDir()
	out, errb, done := startRun(t, dir, "g1", "test=idle", "suspend: ready cycle=0")
	if l := mustCtl(t, dir, "list"); !strings.Contains(l, "g1") || !strings.Contains(l, "running") {
		t.Fatalf("list:\n%s", l)
	}
	if code, _, errs := ctl(t, dir, "resume", "g1"); code != exitError || !strings.Contains(errs, "runvm resume: g1: cannot resume domain 1: it is running\n") {
		t.Errorf("resume of a running domain: %d %s", code, errs)
	}
	if s := mustCtl(t, dir, "suspend", "g1"); !strings.Contains(s, "suspended") {
		t.Fatalf("suspend: %s", s)
	}
	if code, _, errs := ctl(t, dir, "suspend", "1"); code != exitError || !strings.Contains(errs, "cannot suspend domain 1: it is suspended") {
		t.Errorf("second suspend (by domid): %d %s", code, errs)
	}
	mustCtl(t, dir, "resume", "--fast", "g1")
	waitOut(t, out, "resume: rc=1 same-domain")
	waitOut(t, out, "suspend: ready cycle=1")
	mustCtl(t, dir, "suspend", "g1")
	mustCtl(t, dir, "resume", "g1")
	waitOut(t, out, "resume: rc=0 new-domain")
	waitOut(t, out, "suspend: ready cycle=2")
	if s := mustCtl(t, dir, "pause", "g1"); !strings.Contains(s, "paused") {
		t.Errorf("pause: %s", s)
	}
	mustCtl(t, dir, "unpause", "g1")

	env := strings.TrimSpace(mustCtl(t, dir, "xenstore-path", "g1"))
	if !strings.HasPrefix(env, "export XENSTORED_PATH=") {
		t.Fatalf("xenstore-path: %q", env)
	}
	env = strings.TrimPrefix(env, "export ")
	read := xentools.Command(t, "usr/bin/xenstore-read", "/local/domain/1/control/feature-suspend")
	read.Env = append(read.Env, env)
	if o, err := read.CombinedOutput(); err != nil || string(o) != "1\n" {
		t.Errorf("xenstore-read via %s: %q %v", env, o, err)
	}
	mustCtl(t, dir, "shutdown", "g1")
	select {
	case code := <-done:
		if code != exitPoweroff {
			t.Fatalf("runvm run exited %d\n%s\n%s", code, out, errb)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the guest did not shut down")
	}
	if l := mustCtl(t, dir, "list"); strings.Contains(l, "g1") {
		t.Errorf("a finished domain is still listed:\n%s", l)
	}
}

// A domain destroyed while suspended ends runvm run with status 4.
func TestDestroySuspended(t *testing.T) {
	kvmtest.Require(t)
	dir := t.TempDir()
	_, errb, done := startRun(t, dir, "g2", "test=idle", "suspend: ready cycle=0")
	mustCtl(t, dir, "suspend", "g2")
	mustCtl(t, dir, "destroy", "g2")
	select {
	case code := <-done:
		if code != exitSuspend {
			t.Fatalf("exit %d\n%s", code, errb)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("destroy did not end runvm run")
	}
}

func waitOut(t *testing.T, b *syncBuf, s string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(b.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("never saw %q:\n%s", s, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// save --checkpoint, inspect, save, restore: the xl workflow end to end.
func TestSaveRestoreCLI(t *testing.T) {
	kvmtest.Require(t)
	dir := t.TempDir()
	files := t.TempDir()
	out, errb, done := startRun(t, dir, "g3", "test=idle", "suspend: ready cycle=0")
	ck := filepath.Join(files, "ck.save")
	if s := mustCtl(t, dir, "save", "--checkpoint", "g3", ck); !strings.Contains(s, "saved to "+ck+"; running") {
		t.Errorf("after a checkpoint: %s", s)
	}
	waitOut(t, out, "resume: rc=1 same-domain")
	code, ins, errs := runvm(t, "inspect", ck)
	if code != 0 || !strings.Contains(ins, "PAGE_DATA") || !strings.Contains(ins, "X86_PV_VCPU_BASIC") || !strings.Contains(ins, "64-bit, 4 levels") {
		t.Fatalf("inspect: %d\n%s\n%s", code, ins, errs)
	}
	waitOut(t, out, "suspend: ready cycle=1")
	saved := filepath.Join(files, "g3.save")
	if s := mustCtl(t, dir, "save", "g3", saved); !strings.Contains(s, "; destroyed, as after xl save") {
		t.Errorf("save says: %s", s)
	}
	select {
	case code := <-done:
		if code != exitSuspend {
			t.Fatalf("runvm run after save: exit %d\n%s", code, errb)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("runvm run did not end after save")
	}
	rout, rerr := &syncBuf{}, &syncBuf{}
	rdone := make(chan int, 1)
	// No --name: the restored domain keeps the saved name.
	go func() { rdone <- run([]string{"restore", "--runtime-dir", dir, saved}, rout, rerr) }()
	waitOut(t, rout, "resume: rc=0 new-domain")
	waitOut(t, rout, "suspend: ready cycle=2")
	if l := mustCtl(t, dir, "list"); !strings.Contains(l, "g3") || !strings.Contains(l, "running") {
		t.Fatalf("list after restore:\n%s", l)
	}
	mustCtl(t, dir, "shutdown", "g3")
	select {
	case code := <-rdone:
		if code != exitPoweroff {
			t.Fatalf("runvm restore: exit %d\n%s", code, rerr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the restored guest did not shut down")
	}
	// A file that is not a save file: one clear line.
	bad := filepath.Join(files, "bad")
	os.WriteFile(bad, []byte("nope"), 0o644)
	if code, _, errs := runvm(t, "restore", "--runtime-dir", dir, bad); code != exitError || strings.Count(strings.TrimSpace(errs), "\n") != 0 {
		t.Errorf("restore of a bad file: %d %q", code, errs)
	}
	if code, _, _ := runvm(t, "inspect", bad); code != exitError {
		t.Errorf("inspect of a bad file: %d", code)
	}
}

func TestProgressLine(t *testing.T) {
	var b bytes.Buffer
	p := &progressLine{w: &b, last: -1}
	for _, d := range []uint64{0, 1, 2, 50, 51, 100} {
		p.update("save", d, 100)
	}
	got := b.String()
	if !strings.Contains(got, "\rsave:  50% (50/100)") || !strings.HasSuffix(got, "\rsave: 100% (100/100)\n") {
		t.Errorf("progress output %q", got)
	}
	if strings.Count(got, "\r") != 6 || isTerminal(&b) {
		t.Errorf("redraws %d, terminal %v", strings.Count(got, "\r"), isTerminal(&b))
	}
}
