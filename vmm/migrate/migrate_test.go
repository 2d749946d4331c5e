package migrate

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/internal/syncbuf"
	"github.com/xenresume/xenresume/vmm/toolstack"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// guard bounds every wait of a test; nothing is timed against it.
const guard = time.Minute

// guest runs the stub's suspend test (its hash chain, one suspend) on a
// new toolstack until it waits for the suspend request.
func guest(t *testing.T) (*toolstack.Domain, *syncbuf.Buffer) {
	t.Helper()
	kvmtest.Require(t)
	con := &syncbuf.Buffer{}
	d, err := toolstack.New(nil).Create(toolstack.DomainConfig{Cmdline: "test=suspend", Console: con, MemSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Destroy() })
	if err := d.Unpause(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, con, "suspend: ready cycle=0")
	return d, con
}

func waitFor(t *testing.T, con *syncbuf.Buffer, s string) {
	t.Helper()
	deadline := time.Now().Add(guard)
	for !strings.Contains(con.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("console never showed %q:\n%s", s, con)
		}
		time.Sleep(time.Millisecond)
	}
}

// poweroff waits for d's guest to power off with SUCCESS and returns its
// console.
func poweroff(t *testing.T, d *toolstack.Domain, con *syncbuf.Buffer) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	exit, err := d.Wait(ctx)
	if err != nil || exit.State != xen.Shutdown || exit.Reason != xenabi.ShutdownPoweroff {
		t.Fatalf("exit %v %v\n%s", exit, err, con)
	}
	if !strings.Contains(con.String(), "Test result: SUCCESS") {
		t.Fatalf("no success:\n%s", con)
	}
	return con.String()
}

// chainOK checks the stub's hash chain advanced 1000 steps per report,
// three reports (before the request, after the ack, after the resume).
func chainOK(t *testing.T, console string) {
	t.Helper()
	var ns []string
	for _, l := range strings.Split(console, "\n") {
		if n, ok := strings.CutPrefix(l, "work: n="); ok {
			ns = append(ns, strings.Fields(n)[0])
		}
	}
	if strings.Join(ns, " ") != "1000 2000 3000" {
		t.Fatalf("work reports at n=%v, want 1000 2000 3000:\n%s", ns, console)
	}
}

// pair returns both ends of a loopback TCP connection.
func pair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func connOf(nc net.Conn, timeout time.Duration) *Conn {
	return &Conn{R: nc, W: nc, Close: nc.Close, Timeout: timeout, Idle: timeout}
}

// noDomains checks ts holds no domain.
func noDomains(t *testing.T, ts *toolstack.Toolstack) {
	t.Helper()
	for id := uint16(1); id < 16; id++ {
		if _, err := ts.Lookup(id); err == nil {
			t.Errorf("domain %d left behind", id)
		}
	}
}

// A live migration over loopback TCP: the target's guest resumes in a new
// domain (0, %rdx its new start_info MFN) and its chain continues; the
// source's domain is gone.
func TestMigrate(t *testing.T) {
	d, con := guest(t)
	a, b := pair(t)
	ts2 := toolstack.New(nil)
	var log []string
	target := make(chan *toolstack.Domain, 1)
	go func() {
		c := connOf(b, 0)
		c.Log = func(m string) { log = append(log, m) }
		in, err := Accept(t.Context(), c)
		if err != nil {
			t.Error(err)
			target <- nil
			return
		}
		nd, err := in.Restore(t.Context(), ts2, toolstack.DomainConfig{Console: con})
		if err != nil {
			t.Error(err)
			target <- nil
			return
		}
		if in.Name != d.Name {
			t.Errorf("incoming name %q, want %q", in.Name, d.Name)
		}
		if err := in.Start(t.Context(), nd, nd.Unpause); err != nil {
			t.Error(err)
		}
		target <- nd
	}()
	stats, err := Send(t.Context(), d, connOf(a, 0), toolstack.MigrateOptions{})
	if err != nil {
		t.Fatalf("send: %v\n%s", err, con)
	}
	nd := <-target
	if nd == nil {
		t.FailNow()
	}
	defer nd.Destroy()
	if st := d.Status(); st.State != toolstack.Destroyed || !st.Migrated {
		t.Errorf("source %+v", st)
	}
	if stats.Outcome != toolstack.HandedOver || len(stats.Rounds) < 2 || stats.Downtime <= 0 {
		t.Errorf("stats %+v", stats)
	}
	out := poweroff(t, nd, con)
	if strings.Count(out, "resume: rc=0 new-domain") != 1 || strings.Contains(out, "rc=1") {
		t.Errorf("the guest did not resume once in a new domain:\n%s", out)
	}
	chainOK(t, out)
	want := "migration target: Ready to receive domain.|migration target: Transfer complete, requesting permission to start domain.|" +
		"migration target: Got permission, starting domain.|migration target: Domain started successsfully."
	if got := strings.Join(log, "|"); got != want {
		t.Errorf("receiver log %q", got)
	}
}

// guestSaw says what the source's guest must have seen.
type guestSaw int

const (
	untouched guestSaw = iota // never asked to suspend
	sawOne                    // suspended, then resumed here: its suspend returned 1
	stuck                     // left suspended: the handoff broke after GO
)

// The sender against receivers that fail at every step: before GO the
// guest keeps running here (untouched, or resumed seeing 1); after it, the
// guest stays suspended, as no one knows whether the target runs it.
func TestSenderFailures(t *testing.T) {
	restore := func(t *testing.T, b net.Conn, ts *toolstack.Toolstack) (*Incoming, *toolstack.Domain) {
		in, err := Accept(t.Context(), connOf(b, time.Second))
		if err != nil {
			t.Error(err)
			return nil, nil
		}
		nd, err := in.Restore(t.Context(), ts, toolstack.DomainConfig{})
		if err != nil {
			t.Error(err)
			return nil, nil
		}
		return in, nd
	}
	for _, c := range []struct {
		name     string
		receiver func(t *testing.T, b net.Conn, ts *toolstack.Toolstack)
		want     guestSaw
		msg      string
	}{
		{"no banner", func(t *testing.T, b net.Conn, _ *toolstack.Toolstack) { b.Close() }, untouched, "truncated reading banner"},
		{"wrong banner", func(t *testing.T, b net.Conn, _ *toolstack.Toolstack) {
			b.Write([]byte(strings.Replace(Banner, "ready", "READY", 1)))
			b.Close()
		}, untouched, "unexpected data instead of banner"},
		{"silent receiver", func(t *testing.T, b net.Conn, _ *toolstack.Toolstack) { io.Copy(io.Discard, b) }, untouched, "no answer within"},
		{"killed mid PAGE_DATA", func(t *testing.T, b net.Conn, _ *toolstack.Toolstack) {
			b.(*net.TCPConn).SetReadBuffer(4096) // so that the cut is seen in the live rounds
			b.Write([]byte(Banner))
			io.CopyN(io.Discard, b, 40<<10)
			b.Close()
		}, untouched, "live rounds"},
		{"killed before ready", func(t *testing.T, b net.Conn, ts *toolstack.Toolstack) {
			if _, nd := restore(t, b, ts); nd != nil {
				nd.Destroy()
			}
			b.Close()
		}, sawOne, "truncated reading ready message"},
		{"corrupt ready", func(t *testing.T, b net.Conn, ts *toolstack.Toolstack) {
			if _, nd := restore(t, b, ts); nd != nil {
				nd.Destroy()
			}
			b.Write([]byte(strings.Replace(ReadyMsg, "ready", "reddy", 1)))
			b.Close()
		}, sawOne, "unexpected data instead of ready message"},
		{"silent after the stream", func(t *testing.T, b net.Conn, ts *toolstack.Toolstack) {
			if _, nd := restore(t, b, ts); nd != nil {
				nd.Destroy()
			}
			io.Copy(io.Discard, b)
		}, sawOne, "no answer within"},
		{"start fails, domain given back", func(t *testing.T, b net.Conn, ts *toolstack.Toolstack) {
			if in, nd := restore(t, b, ts); nd != nil {
				if err := in.Start(t.Context(), nd, func() error { return errors.New("no") }); err == nil {
					t.Error("Start succeeded")
				}
			}
			b.Close()
		}, sawOne, "startup failure (status code 3)"},
		{"killed after GO", func(t *testing.T, b net.Conn, ts *toolstack.Toolstack) {
			if _, nd := restore(t, b, ts); nd != nil {
				nd.Destroy()
			}
			b.Write([]byte(ReadyMsg))
			io.ReadFull(b, make([]byte, len(GoMsg)))
			b.Close()
		}, stuck, "truncated reading the target's report"},
		{"failure reported, domain kept", func(t *testing.T, b net.Conn, ts *toolstack.Toolstack) {
			if _, nd := restore(t, b, ts); nd != nil {
				nd.Destroy()
			}
			b.Write([]byte(ReadyMsg))
			io.ReadFull(b, make([]byte, len(GoMsg)))
			b.Write([]byte(ReportMsg + "\x03"))
			b.Close()
		}, stuck, "did not give the domain back"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, con := guest(t)
			a, b := pair(t)
			a.(*net.TCPConn).SetWriteBuffer(4096)
			ts2 := toolstack.New(nil)
			done := make(chan struct{})
			go func() {
				defer close(done)
				c.receiver(t, b, ts2)
			}()
			_, err := Send(t.Context(), d, connOf(a, 500*time.Millisecond), toolstack.MigrateOptions{})
			a.Close()
			<-done
			if err == nil || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("send: %v, want an error with %q", err, c.msg)
			}
			noDomains(t, ts2)
			switch c.want {
			case stuck:
				if st := d.State(); st != toolstack.Suspended || !errors.Is(err, toolstack.ErrHandoffUnknown) {
					t.Fatalf("source %s after %v, want suspended", st, err)
				}
				return
			case untouched:
				if st := d.State(); st != toolstack.Running || strings.Contains(con.String(), "suspend: acked") {
					t.Fatalf("source %s, console:\n%s", st, con)
				}
				// The guest never noticed: suspend and resume it here
				// to let it finish.
				ctx := t.Context()
				if err := d.Suspend(ctx, toolstack.DefaultSuspendTimeouts); err != nil {
					t.Fatal(err)
				}
				if err := d.Resume(ctx, true); err != nil {
					t.Fatal(err)
				}
				d.Unpause()
			case sawOne:
				if st := d.State(); st != toolstack.Running {
					t.Fatalf("source %s after %v", st, err)
				}
			}
			out := poweroff(t, d, con)
			if strings.Count(out, "resume: rc=1 same-domain") != 1 {
				t.Errorf("the guest did not see 1 once:\n%s", out)
			}
			chainOK(t, out)
		})
	}
}

// savedStream returns a real stream: an xl save file of the stub.
func savedStream(t *testing.T) []byte {
	t.Helper()
	d, _ := guest(t)
	path := filepath.Join(t.TempDir(), "s")
	if err := d.Save(t.Context(), path, false); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The receiver against senders that fail: a cut, corrupt or stalled
// stream, and a permission that never comes, leave no domain behind.
func TestReceiverFailures(t *testing.T) {
	s := savedStream(t)
	// The libxc image header's id made wrong.
	bad := bytes.Clone(s)
	i := bytes.Index(bad, []byte("XENF"))
	if i < 0 {
		t.Fatal("no libxc image header")
	}
	bad[i+3] = 'G'
	for _, c := range []struct {
		name   string
		sender func(a net.Conn)
		step   string // "accept", "restore" or "start": where the receiver fails
	}{
		{"garbage instead of a stream", func(a net.Conn) {
			io.ReadFull(a, make([]byte, len(Banner)))
			a.Write(bytes.Repeat([]byte{0x5a}, 4096))
			a.Close()
		}, "accept"},
		{"no END record", func(a net.Conn) {
			io.ReadFull(a, make([]byte, len(Banner)))
			a.Write(s[:len(s)-8])
			a.Close()
		}, "restore"},
		{"cut mid PAGE_DATA", func(a net.Conn) {
			io.ReadFull(a, make([]byte, len(Banner)))
			a.Write(s[:len(s)/2])
			a.Close()
		}, "restore"},
		{"corrupt record", func(a net.Conn) {
			io.ReadFull(a, make([]byte, len(Banner)))
			a.Write(bad)
			a.Close()
		}, "restore"},
		{"stalled stream", func(a net.Conn) {
			io.ReadFull(a, make([]byte, len(Banner)))
			a.Write(s[:len(s)/2])
			io.Copy(io.Discard, a)
		}, "restore"},
		{"no permission", func(a net.Conn) {
			io.ReadFull(a, make([]byte, len(Banner)))
			a.Write(s)
			io.ReadFull(a, make([]byte, len(ReadyMsg)))
			a.Close()
		}, "start"},
		{"wrong permission", func(a net.Conn) {
			io.ReadFull(a, make([]byte, len(Banner)))
			a.Write(s)
			io.ReadFull(a, make([]byte, len(ReadyMsg)))
			a.Write([]byte(strings.ToUpper(GoMsg)))
			report := make([]byte, len(ReportMsg)+1+len(PermissionMsg))
			io.ReadFull(a, report)
			if string(report) != ReportMsg+"\xff"+PermissionMsg {
				t.Errorf("report and permission %q", report)
			}
			a.Close()
		}, "start"},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, b := pair(t)
			sent := make(chan struct{})
			go func() {
				defer close(sent)
				c.sender(a)
			}()
			defer func() { b.Close(); <-sent }()
			ts := toolstack.New(nil)
			conn := connOf(b, 500*time.Millisecond)
			step := "accept"
			in, err := Accept(t.Context(), conn)
			if err == nil {
				step = "restore"
				var d *toolstack.Domain
				if d, err = in.Restore(t.Context(), ts, toolstack.DomainConfig{}); err == nil {
					step = "start"
					err = in.Start(t.Context(), d, d.Unpause)
				}
			}
			if err == nil || step != c.step {
				t.Fatalf("failed at %s with %v, want a failure at %s", step, err, c.step)
			}
			noDomains(t, ts)
		})
	}
}

// Destroy during a migration whose receiver stopped reading ends it at
// once: the stuck write is aborted, and the domain is destroyed.
func TestDestroyDuringMigration(t *testing.T) {
	d, _ := guest(t)
	a, b := pair(t)
	a.(*net.TCPConn).SetWriteBuffer(4096)
	b.(*net.TCPConn).SetReadBuffer(4096)
	go func() {
		b.Write([]byte(Banner))
		io.ReadFull(b, make([]byte, 64)) // then never reads again
	}()
	done := make(chan error, 1)
	go func() {
		_, err := Send(t.Context(), d, &Conn{R: a, W: a, Close: a.Close, Timeout: guard, Idle: guard}, toolstack.MigrateOptions{})
		done <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	if _, err := d.WaitState(ctx, func(s toolstack.State) bool { return s == toolstack.Migrating }); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // into the stuck write
	start := time.Now()
	if err := d.Destroy(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil {
		t.Fatal("the migration succeeded")
	}
	if time.Since(start) > guard/2 || d.State() != toolstack.Destroyed {
		t.Fatalf("destroy took %v, state %s", time.Since(start), d.State())
	}
}

// Remus over loopback TCP whose primary goes silent with the connection
// still open (a partition, not a reset): the secondary fails over after
// its Idle bound to the last complete checkpoint, and its guest resumes
// there in a new domain (0) while the primary's carries on (1 at each
// checkpoint).
func TestRemusSilentPrimary(t *testing.T) {
	d, con := guest(t) // test=suspend: one checkpoint
	a, b := pair(t)
	ts2 := toolstack.New(nil)
	con2 := &syncbuf.Buffer{}
	type res struct {
		d   *toolstack.Domain
		n   int
		err error
	}
	done := make(chan res, 1)
	go func() {
		in, err := Accept(t.Context(), connOf(b, 300*time.Millisecond))
		if err != nil {
			done <- res{err: err}
			return
		}
		nd, n, err := in.ReceiveCheckpoints(t.Context(), ts2, toolstack.DomainConfig{Console: con2}, nil)
		done <- res{nd, n, err}
	}()
	n, err := SendRemus(t.Context(), d, connOf(a, guard), toolstack.RemusOptions{Checkpoints: 1})
	if err != nil || n != 1 {
		t.Fatalf("remus: %d checkpoints, %v", n, err)
	}
	// a stays open and silent.
	got := <-done
	if got.err != nil || got.n != 1 {
		t.Fatalf("secondary: checkpoint %d, %v", got.n, got.err)
	}
	defer got.d.Destroy()
	got.d.Unpause()
	out := poweroff(t, got.d, con2)
	if !strings.Contains(out, "resume: rc=0 new-domain") || !strings.Contains(out, "work: n=3000 ") {
		t.Errorf("secondary's guest:\n%s", out)
	}
	if out := poweroff(t, d, con); !strings.Contains(out, "resume: rc=1 same-domain") {
		t.Errorf("primary's guest:\n%s", out)
	}
}

// Incoming.HVM picks the restore path from the incoming configuration's
// type, as runvm restore does from a save file's.
func TestIncomingHVM(t *testing.T) {
	for _, tc := range []struct {
		cfg  string
		want bool
	}{
		{"name = \"a\"\ntype = \"hvm\"\nmemory = 8\n", true},
		{"name = \"a\"\ntype = \"pvh\"\nmemory = 8\n", true},
		{"name = \"a\"\ntype = \"pv\"\nmemory = 8\n", false},
		{"name = \"a\"\nmemory = 8\n", false},
		{"{\"c_info\": {\"type\": \"hvm\"}}", false}, // libxl's JSON: left to the PV restore, which says what is wrong
	} {
		if got := (&Incoming{Config: tc.cfg}).HVM(); got != tc.want {
			t.Errorf("%q: HVM %v, want %v", tc.cfg, got, tc.want)
		}
	}
}
