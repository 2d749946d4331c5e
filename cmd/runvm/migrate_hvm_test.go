package main

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/migrate"
	"github.com/xenresume/xenresume/vmm/stream"
)

// runvm migrate --live=false of the stub's HVM build (type = "hvm" with
// its PV drivers, and "pvh"): the source suspends it through
// control/shutdown, the receiver picks the HVM restore from the stream's
// configuration, and in the new domain the stub's SHUTDOWN_suspend
// returns 0, it redoes its setup and its xenstore round trip works; the
// source ends migrated away (exit 4) and both runtime directories are
// empty at the end. The negative control: a live migration, the default,
// is refused before the receiver is dialled, and the guest runs on.
func TestMigrateHVMStubCLI(t *testing.T) {
	kvmtest.Require(t)
	for _, kind := range []string{"hvm", "pvh"} {
		t.Run(kind, func(t *testing.T) {
			src, dst := t.TempDir(), t.TempDir()
			o := startStub(t, src, "mh", kind, "test=pvhvm-suspend")
			waitOut(t, o.out, "pvhvm: ready cycle=1")

			if code, _, merr := ctl(t, src, "migrate", "mh", "127.0.0.1:1"); code != exitError ||
				!strings.Contains(merr, "--live=false") {
				t.Errorf("live migrate of an HVM domain: exit %d: %s", code, merr)
			}
			if l := mustCtl(t, src, "list"); !strings.Contains(l, "running") {
				t.Fatalf("the source is not running after the refused live migration:\n%s", l)
			}

			addr, rout, rerr, rdone := startReceiver(t, dst)
			code, mout, merr := ctl(t, src, "migrate", "--live=false", "mh", addr)
			if code != 0 || !strings.Contains(mout, "final round (suspended): ") || !strings.Contains(mout, "migrated to "+addr) ||
				!strings.Contains(mout, "; destroyed here") {
				t.Fatalf("runvm migrate --live=false: exit %d\n%s%s\nsource:\n%s\ntarget:\n%s", code, mout, merr, o.errb, rerr)
			}
			if c := waitExit(t, o.done, o.errb); c != exitSuspend {
				t.Errorf("source exit %d:\n%s", c, o.errb)
			}
			waitOut(t, rout, "pvhvm: resumed cycle=1 rc=0 (redid")
			waitOut(t, rout, "pvhvm: event through the callback vector after rc=0")
			waitOut(t, rout, "pvhvm: ready cycle=2")
			lastDomid(t, rout.String()) // its xenstore round trip in the new domain
			if !strings.Contains(rerr.String(), "received domain 1 (mh)") ||
				!strings.Contains(rerr.String(), "migration target: Got permission, starting domain.") {
				t.Errorf("target stderr:\n%s", rerr)
			}
			mustCtl(t, dst, "shutdown", "mh")
			if c := exitOf(t, rdone, "the target", rerr); c != exitPoweroff || !strings.Contains(rout.String(), "Test result: SUCCESS") {
				t.Fatalf("target exit %d:\n%s\n%s", c, rout, rerr)
			}
			noSlots(t, src, dst)
		})
	}
}

// The failures of an HVM migration: a receiver that dies mid-stream
// leaves the source's guest running, its suspend returning 1 (cancelled,
// in the same domain); a sender that dies mid-stream leaves the receiver
// with nothing (it exits with an error, its runtime directory empty);
// and a migration after that still works.
func TestMigrateHVMStubCLIFailures(t *testing.T) {
	kvmtest.Require(t)
	src, dst := t.TempDir(), t.TempDir()
	o := startStub(t, src, "mf", "hvm", "test=pvhvm-suspend")
	waitOut(t, o.out, "pvhvm: ready cycle=1")

	// A receiver killed mid-stream: it sends the banner, takes 64 KiB of
	// the stream, and is gone with a reset.
	dead, killed := deadReceiver(t, func(c net.Conn) {
		c.Write([]byte(migrate.Banner))
		io.ReadFull(c, make([]byte, 64<<10))
	})
	if code, _, merr := ctl(t, src, "migrate", "--live=false", "mf", dead); code != exitError ||
		!strings.Contains(merr, "resumed here") {
		t.Errorf("migrate to a receiver killed mid-stream: exit %d: %s", code, merr)
	}
	<-killed
	waitOut(t, o.out, "pvhvm: resumed cycle=1 rc=1 (cancelled")
	waitOut(t, o.out, "pvhvm: ready cycle=2")
	if l := mustCtl(t, src, "list"); !strings.Contains(l, "running") {
		t.Fatalf("the source is not running:\n%s", l)
	}

	// A sender killed mid-stream: the xl header of an HVM domain and the
	// start of its libxl stream, then a reset.
	addr, _, rerr, rdone := startReceiver(t, dst, "--idle", "5s")
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(nc, make([]byte, len(migrate.Banner)))
	part := stream.AppendXLHeader(nil, "name = \"mf\"\ntype = \"hvm\"\nmemory = 8\n")
	part = stream.AppendLibxlHeader(part)
	part = stream.AppendRecord(part, stream.LibxlLibxcContext, nil)
	part = stream.AppendImageHeader(part)
	nc.Write(part)
	time.Sleep(100 * time.Millisecond)
	nc.(*net.TCPConn).SetLinger(0)
	nc.Close()
	if code := exitOf(t, rdone, "the receiver whose sender died", rerr); code != exitError {
		t.Errorf("receiver whose sender died: exit %d:\n%s", code, rerr)
	}
	noSlots(t, dst)

	// Remus of an HVM domain is not done: a --remus receiver refuses the
	// stream at its configuration and leaves nothing.
	addr, _, rerr, rdone = startReceiver(t, dst, "--remus")
	nc, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(nc, make([]byte, len(migrate.Banner)))
	nc.Write(part)
	if code := exitOf(t, rdone, "the --remus receiver of an HVM stream", rerr); code != exitError ||
		!strings.Contains(rerr.String(), "Remus is not done") {
		t.Errorf("--remus receiver of an HVM stream: exit %d:\n%s", code, rerr)
	}
	nc.Close()
	noSlots(t, dst)

	// And a good receiver takes it.
	addr, rout, rerr, rdone := startReceiver(t, dst)
	if code, mout, merr := ctl(t, src, "migrate", "--live=false", "mf", addr); code != 0 {
		t.Fatalf("migrate: exit %d\n%s%s", code, mout, merr)
	}
	waitExit(t, o.done, o.errb)
	waitOut(t, rout, "pvhvm: resumed cycle=2 rc=0 (redid")
	waitOut(t, rout, "pvhvm: ready cycle=3")
	mustCtl(t, dst, "shutdown", "mf")
	if code := exitOf(t, rdone, "the target", rerr); code != exitPoweroff {
		t.Fatalf("target exit %d:\n%s\n%s", code, rout, rerr)
	}
	noSlots(t, src, dst)
}
