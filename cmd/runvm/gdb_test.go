package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/guest"
	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/toolstack"
)

// --gdb's addresses: loopback TCP and Unix sockets are taken; every
// interface or another host's address needs --gdb-any-address; --gdb-wait
// alone is a usage error.
func TestGDBFlags(t *testing.T) {
	for _, c := range []struct {
		o   gdbOptions
		bad string // in the error; "" means accepted
	}{
		{gdbOptions{}, ""},
		{gdbOptions{addr: "127.0.0.1:1234"}, ""},
		{gdbOptions{addr: "localhost:0"}, ""},
		{gdbOptions{addr: "[::1]:1234"}, ""},
		{gdbOptions{addr: "/tmp/g.sock", wait: true}, ""},
		{gdbOptions{addr: "g.sock"}, ""},
		{gdbOptions{addr: ":1234"}, "every interface"},
		{gdbOptions{addr: "0.0.0.0:1234"}, "not a loopback"},
		{gdbOptions{addr: "192.0.2.1:1234"}, "not a loopback"},
		{gdbOptions{addr: "example.com:1234"}, "not a loopback"},
		{gdbOptions{addr: "192.0.2.1:1234", anyAddr: true}, ""},
		{gdbOptions{addr: ":1234", anyAddr: true}, ""},
		{gdbOptions{addr: "1:2:3"}, "host:port"},
		{gdbOptions{wait: true}, "need --gdb"},
		{gdbOptions{anyAddr: true}, "need --gdb"},
	} {
		err := c.o.check()
		switch {
		case c.bad == "" && err != nil:
			t.Errorf("%+v: %v", c.o, err)
		case c.bad != "" && (err == nil || !strings.Contains(err.Error(), c.bad)):
			t.Errorf("%+v: %v, want %q", c.o, err, c.bad)
		}
	}
	code, _, errs := runvm(t, "run", "--runtime-dir", t.TempDir(), "--gdb", "0.0.0.0:1234")
	if code != exitUsage || !strings.Contains(errs, "not a loopback") || strings.Count(errs, "\n") != 1 {
		t.Errorf("run --gdb 0.0.0.0:1234: exit %d, %q", code, errs)
	}
}

// runvm run --gdb SOCKET --gdb-wait: the guest waits before its first
// instruction; gdb connects, sees the entry point, steps, continues,
// interrupts and detaches; the guest runs on and powers off when asked.
// A second gdb can connect after the first one left.
func TestRunGDBWait(t *testing.T) {
	kvmtest.Require(t)
	gdb, err := exec.LookPath("gdb")
	if err != nil {
		if os.Getenv("XENRESUME_REQUIRE_TOOLS") == "1" {
			t.Fatal("gdb is missing")
		}
		t.Skip("gdb is not installed")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "gdb.sock")
	elfPath := filepath.Join(dir, "stub.elf")
	if err := os.WriteFile(elfPath, guest.Image, 0o644); err != nil {
		t.Fatal(err)
	}
	out, errb := &syncBuf{}, &syncBuf{}
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"run", "--runtime-dir", dir, "--name", "g", "--mem", "16M", "--cmdline", "test=idle",
			"--gdb", sock, "--gdb-wait"}, out, errb)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(errb.String(), "waits for gdb") {
		if time.Now().After(deadline) {
			t.Fatalf("runvm never served gdb: %s", errb)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if strings.Contains(out.String(), "xenresume stub") {
		t.Fatalf("the guest ran before gdb connected:\n%s", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	gdbRun := func(cmds ...string) string {
		args := []string{"-batch", "-nx", elfPath, "-ex", "target remote " + sock}
		for _, c := range cmds {
			args = append(args, "-ex", c)
		}
		b, err := exec.CommandContext(ctx, gdb, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("gdb: %v\n%s", err, b)
		}
		return string(b)
	}
	// What gdb may do here is what the target offers the stub (which runs
	// in the ring-3 PV model) on this host: a step moves the PC, or gdb
	// gets an error reply and the PC stays at the first instruction.
	support, err := machine.ProbeGuestDebug()
	if err != nil {
		t.Fatal(err)
	}
	wants := []string{"$1 = 1", "$2 = 1", "[Inferior 1 (Remote target) detached]"}
	if !toolstack.DebugOffers(true, support).SingleStep {
		wants = []string{"$1 = 1", "Remote failure reply: E0e", "$2 = 0", "[Inferior 1 (Remote target) detached]"}
	}
	s := gdbRun("print $pc == &_start", "stepi", "print $pc != &_start", "detach")
	for _, want := range wants {
		if !strings.Contains(s, want) {
			t.Errorf("gdb output lacks %q:\n%s", want, s)
		}
	}
	for !strings.Contains(out.String(), "suspend: ready cycle=0") {
		if time.Now().After(deadline) {
			t.Fatalf("the guest did not run after gdb detached:\n%s\n%s", out, errb)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A second session stops the running guest
	// and lets it go.
	s = gdbRun("info registers rip", "detach")
	if !strings.Contains(s, "rip") {
		t.Errorf("second session:\n%s", s)
	}
	if code, _, errs := ctl(t, dir, "shutdown", "g"); code != 0 {
		t.Fatalf("shutdown: %d %s", code, errs)
	}
	select {
	case code := <-done:
		if code != exitPoweroff {
			t.Fatalf("runvm exited %d:\n%s\n%s", code, out, errb)
		}
	case <-ctx.Done():
		t.Fatal("the guest did not power off")
	}
}

// Across a save and a restore into a new domain: gdb on the saved domain
// sees it exit; `runvm restore --gdb --gdb-wait` holds the restored guest
// before its first instruction, where gdb sees its registers in the new
// domain (the suspend hypercall about to return 0, %rdx the new
// start_info MFN), and detaching runs it on.
func TestGDBAcrossSaveRestore(t *testing.T) {
	kvmtest.Require(t)
	gdb, err := exec.LookPath("gdb")
	if err != nil {
		if os.Getenv("XENRESUME_REQUIRE_TOOLS") == "1" {
			t.Fatal("gdb is missing")
		}
		t.Skip("gdb is not installed")
	}
	dir := t.TempDir()
	elfPath := filepath.Join(dir, "stub.elf")
	if err := os.WriteFile(elfPath, guest.Image, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	gdbRun := func(sock string, cmds ...string) string {
		args := []string{"-batch", "-nx", elfPath, "-ex", "target remote " + sock}
		for _, c := range cmds {
			args = append(args, "-ex", c)
		}
		b, err := exec.CommandContext(ctx, gdb, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("gdb: %v\n%s", err, b)
		}
		return string(b)
	}
	out, errb, done := startRun(t, dir, "g", "test=idle", "suspend: ready cycle=0")
	_ = errb
	// The first owner has no gdb: save it.
	file := filepath.Join(dir, "g.save")
	if code, _, errs := ctl(t, dir, "save", "g", file); code != 0 {
		if strings.Contains(errs, "ring-3") {
			t.Skip("a ring-3 domain cannot be saved yet")
		}
		t.Fatalf("save: %d %s", code, errs)
	}
	if code := <-done; code != exitSuspend {
		t.Fatalf("the saved owner exited %d:\n%s", code, out)
	}
	sock := filepath.Join(dir, "gdb2.sock")
	rout, rerr := &syncBuf{}, &syncBuf{}
	rdone := make(chan int, 1)
	go func() {
		rdone <- run([]string{"restore", "--runtime-dir", dir, "--gdb", sock, "--gdb-wait", file}, rout, rerr)
	}()
	for !strings.Contains(rerr.String(), "waits for gdb") {
		select {
		case code := <-rdone:
			t.Fatalf("restore exited %d: %s", code, rerr)
		case <-ctx.Done():
			t.Fatalf("restore never served gdb: %s", rerr)
		case <-time.After(5 * time.Millisecond):
		}
	}
	s := gdbRun(sock, "print $rax", "print/x $rdx", "x/2i $pc", "detach")
	for _, want := range []string{"$1 = 0", "$2 = 0x", "cltq", "[Inferior 1 (Remote target) detached]"} {
		if !strings.Contains(s, want) {
			t.Errorf("gdb output lacks %q:\n%s", want, s)
		}
	}
	for !strings.Contains(rout.String(), "resume: rc=0 new-domain") {
		select {
		case code := <-rdone:
			t.Fatalf("restore exited %d:\n%s\n%s", code, rout, rerr)
		case <-ctx.Done():
			t.Fatalf("the restored guest did not resume:\n%s\n%s", rout, rerr)
		case <-time.After(5 * time.Millisecond):
		}
	}
	if code, _, errs := ctl(t, dir, "shutdown", "g"); code != 0 {
		t.Fatalf("shutdown: %d %s", code, errs)
	}
	if code := <-rdone; code != exitPoweroff {
		t.Fatalf("restored owner exited %d:\n%s\n%s", code, rout, rerr)
	}
}
