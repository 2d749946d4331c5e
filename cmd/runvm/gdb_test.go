package main

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/guest"
	"github.com/xenresume/xenresume/internal/elftest"
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

// Across a save and a restore into a new domain, with real gdb. gdb on
// the first domain holds a breakpoint (always inserted) while the save
// runs and sees the domain exit; the restored guest runs from a file
// without the int3 (it would take it as its own #BP and fail). `runvm
// restore --gdb --gdb-wait` holds the restored guest before its first
// instruction, where gdb sees its registers in the new domain (the
// suspend hypercall about to return 0, %rdx the new start_info MFN),
// breaks on a function the resumed guest calls, steps, has a watchpoint
// fire, and detaching runs it on.
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
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	gdbCmd := func(sock string, cmds ...string) *exec.Cmd {
		args := []string{"-batch", "-nx", elfPath, "-ex", "target remote " + sock}
		for _, c := range cmds {
			args = append(args, "-ex", c)
		}
		return exec.CommandContext(ctx, gdb, args...)
	}
	waitLine := func(b *syncBuf, want string, done chan int) {
		t.Helper()
		for !strings.Contains(b.String(), want) {
			select {
			case code := <-done:
				t.Fatalf("runvm exited %d before %q:\n%s", code, want, b)
			case <-ctx.Done():
				t.Fatalf("never saw %q:\n%s", want, b)
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	sock1 := filepath.Join(dir, "gdb1.sock")
	out, errb := &syncBuf{}, &syncBuf{}
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"run", "--runtime-dir", dir, "--name", "g", "--mem", "16M", "--cmdline", "test=idle", "--gdb", sock1}, out, errb)
	}()
	waitLine(out, "suspend: ready cycle=0", done)
	// gdb 1: a breakpoint in the guest's memory, then continue until the
	// domain goes away under it.
	g1out := &syncBuf{}
	g1 := gdbCmd(sock1, "set breakpoint always-inserted on", "break events_enable", "echo inserted\\n",
		"continue", // to the save's suspend stop
		"continue") // to the end of the saved domain
	g1.Stdout, g1.Stderr = g1out, g1out
	if err := g1.Start(); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(g1out.String(), "inserted") {
		select {
		case <-ctx.Done():
			t.Fatalf("gdb never set its breakpoint:\n%s", g1out)
		case <-time.After(5 * time.Millisecond):
		}
	}
	file := filepath.Join(dir, "g.save")
	if code, _, errs := ctl(t, dir, "save", "g", file); code != 0 {
		t.Fatalf("save: %d %s", code, errs)
	}
	if code := <-done; code != exitSuspend {
		t.Fatalf("the saved owner exited %d:\n%s", code, out)
	}
	g1.Wait()
	if !strings.Contains(g1out.String(), "exited") || strings.Contains(g1out.String(), "Breakpoint 1,") {
		t.Errorf("gdb on the saved domain was not told it ended:\n%s", g1out)
	}
	sock := filepath.Join(dir, "gdb2.sock")
	rout, rerr := &syncBuf{}, &syncBuf{}
	rdone := make(chan int, 1)
	go func() {
		rdone <- run([]string{"restore", "--runtime-dir", dir, "--gdb", sock, "--gdb-wait", file}, rout, rerr)
	}()
	waitLine(rerr, "waits for gdb", rdone)
	b, err := gdbCmd(sock, "print $rax", "print/x $rdx", "x/2i $pc",
		"x/1xb events_enable", // before gdb 2 sets anything: the guest's own byte
		"break events_enable", "continue", "print/x $pc", "stepi", "print/x $pc", "delete",
		"set can-use-hw-watchpoints 0", "watch *(unsigned long *)&work_hash", "continue", "delete",
		"detach").CombinedOutput()
	if err != nil {
		t.Fatalf("gdb: %v\n%s", err, b)
	}
	s := string(b)
	ev := elftest.Symbol(t, guest.Image, "events_enable")
	first := elfByte(t, ev)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`\$1 = 0\n`), regexp.MustCompile(`\$2 = 0x`), regexp.MustCompile(`cltq`),
		regexp.MustCompile(fmt.Sprintf(`<events_enable>:\s+0x%02x\n`, first)),
		regexp.MustCompile(fmt.Sprintf(`Breakpoint 1, (0x0*%x in )?events_enable`, ev)),
		regexp.MustCompile(fmt.Sprintf(`\$3 = %#x\n`, ev)),
		regexp.MustCompile(`\$4 = 0x[0-9a-f]+\n`),
		regexp.MustCompile(`[Ww]atchpoint 2: \*\(unsigned long \*\)&work_hash\s+Old value = \d+\s+New value = \d+`),
		regexp.MustCompile(`\[Inferior 1 \(Remote target\) detached\]`),
	} {
		if !want.MatchString(s) {
			t.Errorf("gdb output lacks %s:\n%s", want, s)
		}
	}
	if m := regexp.MustCompile(`\$4 = (0x[0-9a-f]+)`).FindStringSubmatch(s); m == nil || m[1] == fmt.Sprintf("%#x", ev) {
		t.Errorf("stepi did not move the guest:\n%s", s)
	}
	waitLine(rout, "resume: rc=0 new-domain", rdone)
	waitLine(rout, "work: n=", rdone)
	if strings.Contains(rout.String(), "FAIL") {
		t.Fatalf("the restored guest failed:\n%s", rout)
	}
	if code, _, errs := ctl(t, dir, "shutdown", "g"); code != 0 {
		t.Fatalf("shutdown: %d %s", code, errs)
	}
	if code := <-rdone; code != exitPoweroff {
		t.Fatalf("restored owner exited %d:\n%s\n%s", code, rout, rerr)
	}
}

// elfByte returns the guest stub's byte at virtual address va.
func elfByte(t *testing.T, va uint64) byte {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(guest.Image))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && va >= p.Vaddr && va < p.Vaddr+p.Filesz {
			var b [1]byte
			if _, err := p.ReadAt(b[:], int64(va-p.Vaddr)); err != nil {
				t.Fatal(err)
			}
			return b[0]
		}
	}
	t.Fatalf("%#x is in no loaded segment", va)
	return 0
}
