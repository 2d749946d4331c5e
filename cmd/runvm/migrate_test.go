package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/migrate"
)

var listening = regexp.MustCompile(`migrate-receive: listening on (\S+)`)

// startReceiver runs `runvm migrate-receive` on a loopback port in the
// background and returns its address.
func startReceiver(t *testing.T, dir string, args ...string) (string, *syncBuf, *syncBuf, chan int) {
	t.Helper()
	out, errb := &syncBuf{}, &syncBuf{}
	done := make(chan int, 1)
	go func() {
		done <- run(append([]string{"migrate-receive", "--runtime-dir", dir, "--listen", "127.0.0.1:0"}, args...), out, errb)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if m := listening.FindStringSubmatch(errb.String()); m != nil {
			return m[1], out, errb, done
		}
		if time.Now().After(deadline) {
			t.Fatalf("the receiver never listened:\n%s", errb)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// workNs returns the n of each "work:" report in console order.
func workNs(console string) string {
	var ns []string
	for _, m := range regexp.MustCompile(`work: n=(\d+)`).FindAllStringSubmatch(console, -1) {
		ns = append(ns, m[1])
	}
	return strings.Join(ns, " ")
}

func exitOf(t *testing.T, done chan int, what string, errb *syncBuf) int {
	t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not end:\n%s", what, errb)
		return -1
	}
}

// runvm migrate between two runvm owners over loopback TCP: the rounds on
// the client's terminal, the guest resumed in a new domain on the target
// with its hash chain continuing exactly, the source gone (exit 4), and
// both runtime directories empty at the end.
func TestMigrateCLI(t *testing.T) {
	kvmtest.Require(t)
	src, dst := t.TempDir(), t.TempDir()
	out, errb, done := startRun(t, src, "mg", "test=suspend", "suspend: ready cycle=0")
	addr, rout, rerr, rdone := startReceiver(t, dst)
	code, mout, merr := ctl(t, src, "migrate", "mg", addr)
	if code != 0 || !strings.Contains(mout, "round 0: ") || !strings.Contains(mout, "final round (suspended): ") ||
		!strings.Contains(mout, "domain 1 (mg): migrated to "+addr) || !strings.Contains(mout, "; destroyed here") {
		t.Fatalf("runvm migrate: exit %d\n%s%s\nsource:\n%s\ntarget:\n%s", code, mout, merr, errb, rerr)
	}
	if code := exitOf(t, done, "the source", errb); code != exitSuspend || !strings.Contains(errb.String(), "domain migrated") {
		t.Errorf("source exit %d:\n%s", code, errb)
	}
	if code := exitOf(t, rdone, "the target", rerr); code != exitPoweroff {
		t.Fatalf("target exit %d:\n%s\n%s", code, rout, rerr)
	}
	if !strings.Contains(rout.String(), "resume: rc=0 new-domain") || !strings.Contains(rout.String(), "Test result: SUCCESS") {
		t.Errorf("target console:\n%s", rout)
	}
	if ns := workNs(out.String() + rout.String()); ns != "1000 2000 3000" {
		t.Errorf("hash chain at %s, want 1000 2000 3000:\nsource:\n%s\ntarget:\n%s", ns, out, rout)
	}
	for _, l := range []string{"migration target: Ready to receive domain.", "migration target: Got permission, starting domain."} {
		if !strings.Contains(rerr.String(), l) {
			t.Errorf("the target did not say %q:\n%s", l, rerr)
		}
	}
	noSlots(t, src, dst)
}

// A receiver that refuses (its runtime directory already has the name),
// one fed garbage, and one killed before it answered: the source's guest
// keeps running, and a later migration still works; the receivers leave
// nothing in their runtime directories.
func TestMigrateCLIFailures(t *testing.T) {
	kvmtest.Require(t)
	src, dst := t.TempDir(), t.TempDir()
	out, errb, done := startRun(t, src, "mf", "test=suspend cycles=10", "suspend: ready cycle=0")

	// Refusal: "mf" is taken on the target.
	_, _, other := startRun(t, dst, "mf", "test=idle", "suspend: ready cycle=0")
	addr, _, rerr, rdone := startReceiver(t, dst)
	if code, _, merr := ctl(t, src, "migrate", "mf", addr); code != exitError || !strings.Contains(merr, "runs here") &&
		!strings.Contains(merr, "not touched") && !strings.Contains(merr, "resumed here") {
		t.Errorf("migrate to a refusing receiver: exit %d: %s", code, merr)
	}
	if code := exitOf(t, rdone, "the refusing receiver", rerr); code != exitError || !strings.Contains(rerr.String(), "in use") {
		t.Errorf("refusing receiver exit %d:\n%s", code, rerr)
	}
	mustCtl(t, dst, "destroy", "mf")
	exitOf(t, other, "the other domain", rerr)

	// Garbage after the banner: the receiver gives up and leaves nothing.
	addr, _, rerr, rdone = startReceiver(t, dst)
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(nc, make([]byte, len(migrate.Banner)))
	nc.Write([]byte(strings.Repeat("garbage!", 512)))
	if code := exitOf(t, rdone, "the receiver fed garbage", rerr); code != exitError {
		t.Errorf("receiver fed garbage: exit %d:\n%s", code, rerr)
	}
	nc.Close()

	// A receiver that accepted and died before it answered (a peer that
	// takes the connection, says nothing, and is gone 300 ms later with
	// a reset): the sender's wait for the banner ends and the guest was
	// never touched. (A real receiver stopped with SIGSTOP raced with
	// its own accept and banner under load.)
	dead, killed := deadReceiver(t, func(net.Conn) { time.Sleep(300 * time.Millisecond) })
	if code, _, merr := ctl(t, src, "migrate", "mf", dead); code != exitError || !strings.Contains(merr, "not touched") {
		t.Errorf("migrate to a dead receiver: exit %d: %s", code, merr)
	}
	<-killed
	if l := mustCtl(t, src, "list"); !strings.Contains(l, "running") {
		t.Fatalf("the source is not running:\n%s", l)
	}
	if strings.Contains(out.String(), "suspend: acked") && !strings.Contains(out.String(), "resume: rc=1") {
		t.Fatalf("the guest was suspended and not resumed:\n%s", out)
	}

	// And a good receiver takes it.
	addr, rout, rerr, rdone := startReceiver(t, dst)
	if code, mout, merr := ctl(t, src, "migrate", "mf", addr); code != 0 {
		t.Fatalf("migrate: exit %d\n%s%s", code, mout, merr)
	}
	exitOf(t, done, "the source", errb)
	waitOut(t, rout, "resume: rc=0 new-domain")
	mustCtl(t, dst, "shutdown", "mf")
	if code := exitOf(t, rdone, "the target", rerr); code != exitPoweroff {
		t.Fatalf("target exit %d:\n%s\n%s", code, rout, rerr)
	}
	all := out.String() + rout.String()
	ns := strings.Fields(workNs(all))
	for i, n := range ns {
		if n != strconv.Itoa(1000*(i+1)) {
			t.Fatalf("hash chain at %v: restarted or skipped:\n%s", ns, all)
		}
	}
	if strings.Count(all, "resume: rc=0 new-domain") != 1 {
		t.Errorf("not one resume in a new domain:\n%s", all)
	}
	noSlots(t, src, dst)
}

// noSlots checks that the runtime directories hold no domain's slot (only
// rundir's own .lock and .last-domid).
func noSlots(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), ".") {
				t.Errorf("%s holds %s", d, e.Name())
			}
		}
	}
}

// --live=false suspends first and copies once: no live round.
func TestMigrateCLINonLive(t *testing.T) {
	kvmtest.Require(t)
	src, dst := t.TempDir(), t.TempDir()
	out, errb, done := startRun(t, src, "nl", "test=suspend", "suspend: ready cycle=0")
	addr, rout, rerr, rdone := startReceiver(t, dst, "--name", "nl2")
	code, mout, merr := ctl(t, src, "migrate", "--live=false", "nl", addr)
	if code != 0 || strings.Contains(mout, "round 0") || !strings.Contains(mout, "final round (suspended)") {
		t.Fatalf("runvm migrate --live=false: exit %d\n%s%s", code, mout, merr)
	}
	exitOf(t, done, "the source", errb)
	if code := exitOf(t, rdone, "the target", rerr); code != exitPoweroff || !strings.Contains(rerr.String(), "received domain 1 (nl2)") {
		t.Fatalf("target exit %d:\n%s\n%s", code, rout, rerr)
	}
	if ns := workNs(out.String() + rout.String()); ns != "1000 2000 3000" {
		t.Errorf("hash chain at %s", ns)
	}
	if code, _, errs := ctl(t, src, "migrate", "--max-rounds", "0", "nl", addr); code != exitUsage {
		t.Errorf("--max-rounds 0: exit %d %s", code, errs)
	}
}

// runvm remus between two owners, the primary a process of its own that
// is killed with SIGKILL mid-replication: the secondary fails over to its
// last complete checkpoint, its guest resumes in a new domain (0) and its
// chain continues exactly from that checkpoint, a prefix of the primary's.
func TestRemusCLI(t *testing.T) {
	kvmtest.Require(t)
	src, dst := t.TempDir(), t.TempDir()
	cmd := exec.Command(os.Args[0], "run", "--runtime-dir", src, "--name", "rm", "--mem", "16M", "--cmdline", "test=idle")
	cmd.Env = append(os.Environ(), "RUNVM_AS_MAIN=1")
	pout, perr := &syncBuf{}, &syncBuf{}
	cmd.Stdout, cmd.Stderr = pout, perr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitOut(t, pout, "suspend: ready cycle=0")
	addr, rout, rerr, rdone := startReceiver(t, dst, "--remus")
	remusDone := make(chan string, 1)
	go func() {
		code, out, errs := ctl(t, src, "remus", "--interval", "20ms", "rm", addr)
		remusDone <- fmt.Sprintf("exit %d: %s%s", code, out, errs)
	}()
	waitOut(t, rerr, "first checkpoint complete")
	waitOut(t, pout, "suspend: ready cycle=4") // a few checkpoints in
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	waitOut(t, rerr, "failed over to checkpoint")
	m := regexp.MustCompile(`failed over to checkpoint (\d+)`).FindStringSubmatch(rerr.String())
	k, _ := strconv.Atoi(m[1])
	want := 2000*k + 1000
	waitOut(t, rout, fmt.Sprintf("work: n=%d ", want))
	if ns := workNs(rout.String()); !strings.HasPrefix(ns, strconv.Itoa(want)) || !strings.Contains(rout.String(), "resume: rc=0 new-domain") {
		t.Fatalf("secondary's chain %s, want it to start at %d:\n%s", ns, want, rout)
	}
	if !strings.Contains(pout.String(), fmt.Sprintf("work: n=%d ", want-1000)) || strings.Contains(pout.String(), "rc=0") {
		t.Fatalf("the primary's chain does not hold checkpoint %d's n=%d, or it saw 0:\n%s", k, want-1000, pout)
	}
	if c := strings.Count(pout.String(), "resume: rc=1 same-domain"); c < k {
		t.Errorf("the primary saw 1 %d times for %d checkpoints", c, k)
	}
	mustCtl(t, dst, "shutdown", "rm")
	if code := exitOf(t, rdone, "the secondary", rerr); code != exitPoweroff {
		t.Fatalf("secondary exit %d:\n%s", code, rerr)
	}
	t.Log(<-remusDone)
}

// deadReceiver listens on a loopback port for one connection, runs talk
// on it (what the receiver does before it dies) and then resets it, as a
// killed process's socket is. It returns the address and a channel
// closed once the connection is gone.
func deadReceiver(t *testing.T, talk func(net.Conn)) (string, <-chan struct{}) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		defer l.Close()
		c, err := l.Accept()
		if err != nil {
			return
		}
		talk(c)
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}()
	return l.Addr().String(), gone
}
