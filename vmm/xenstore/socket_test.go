package xenstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/xentools"
)

// serve starts the store on a socket and returns its path and a function
// that runs one of Debian's xenstore-utils against it.
func serve(t *testing.T, s *Store) (string, func(tool string, args ...string) (string, error)) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "socket")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeUnix(ctx, sock) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	// The file appears at bind, before the chmod and listen: wait for the
	// final mode (dial retries a refused connection: listen may follow).
	for i := 0; ; i++ {
		if st, err := os.Stat(sock); err == nil && st.Mode().Perm() == 0o600 {
			break
		}
		if i > 2000 {
			st, err := os.Stat(sock)
			t.Fatalf("socket never got mode 0600: %v %v", st, err)
		}
		time.Sleep(time.Millisecond)
	}
	return sock, func(tool string, args ...string) (string, error) {
		cmd := xentools.Command(t, "usr/bin/"+tool, args...)
		cmd.Env = append(cmd.Env, "XENSTORED_PATH="+sock)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
}

func TestXenstoreUtils(t *testing.T) {
	s := New(nil)
	_, run := serve(t, s)
	must := func(tool string, args ...string) string {
		t.Helper()
		out, err := run(tool, args...)
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", tool, args, err, out)
		}
		return out
	}
	must("xenstore-write", "/local/domain/1/name", "guest", "/local/domain/1/control/shutdown", "")
	if out := must("xenstore-read", "/local/domain/1/name"); out != "guest\n" {
		t.Errorf("xenstore-read: %q", out)
	}
	if out := must("xenstore-list", "/local/domain/1"); out != "control\nname\n" {
		t.Errorf("xenstore-list: %q", out)
	}
	if out := must("xenstore-ls", "/local/domain/1"); !strings.Contains(out, `name = "guest"`) || !strings.Contains(out, "shutdown = \"\"") {
		t.Errorf("xenstore-ls:\n%s", out)
	}
	must("xenstore-exists", "/local/domain/1/name")
	if _, err := run("xenstore-exists", "/local/domain/1/nope"); err == nil {
		t.Error("xenstore-exists found a missing node")
	}
	must("xenstore-chmod", "/local/domain/1/name", "n0", "r1")
	if p, _ := s.GetPerms("/local/domain/1/name"); len(p) != 2 || p[1] != (Perm{'r', 1}) {
		t.Errorf("perms after xenstore-chmod: %v", p)
	}
	must("xenstore-rm", "/local/domain/1/name")
	if _, err := s.Read("/local/domain/1/name"); err != ENOENT {
		t.Errorf("after xenstore-rm: %v", err)
	}
	if out, err := run("xenstore-read", "/local/domain/1/name"); err == nil {
		t.Errorf("xenstore-read of a removed node succeeded: %q", out)
	}
}

// xenstore-watch sees the registration event and then each change, the
// way a toolstack watching control/shutdown does.
func TestXenstoreWatchUtil(t *testing.T) {
	s := New(nil)
	sock, _ := serve(t, s)
	s.Write("/local/domain/1/control/shutdown", "")
	cmd := xentools.Command(t, "usr/bin/xenstore-watch", "-n", "3", "/local/domain/1/control")
	cmd.Env = append(cmd.Env, "XENSTORED_PATH="+sock)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	var got []string
	next := func() {
		if !lines.Scan() {
			t.Fatalf("xenstore-watch ended early; got %v", got)
		}
		got = append(got, lines.Text())
	}
	next() // registration
	s.Write("/local/domain/1/control/shutdown", "suspend")
	next()
	s.Rm("/local/domain/1/control")
	next()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("xenstore-watch: %v", err)
	}
	want := []string{"/local/domain/1/control", "/local/domain/1/control/shutdown", "/local/domain/1/control"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("xenstore-watch printed %v, want %v", got, want)
	}
}

// Xen's own test-xenstore (tools/tests/xenstore) passes against the
// socket: reads, writes, directories, removal, and transactions with and
// without conflicts.
func TestXenTestXenstore(t *testing.T) {
	s := New(nil)
	sock, _ := serve(t, s)
	for _, args := range [][]string{nil, {"-i", "5"}} {
		cmd := xentools.Command(t, "usr/lib/xen-4.17/bin/test-xenstore", args...)
		cmd.Env = append(cmd.Env, "XENSTORED_PATH="+sock)
		out, err := cmd.CombinedOutput()
		if err != nil || strings.Contains(string(out), "failed") {
			t.Fatalf("test-xenstore %v: %v\n%s", args, err, out)
		}
		n := 0
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, " ns") {
				n++
			}
		}
		if n != 12 {
			t.Errorf("test-xenstore ran %d tests, want 12:\n%s", n, out)
		}
	}
	if st := s.Stats(); st.Transactions != 0 || len(st.QuotaHits) != 0 {
		t.Errorf("after test-xenstore: %+v", st)
	}
}

// Xen's xenstore-control reads our XS_CONTROL answers.
func TestXenstoreControlUtil(t *testing.T) {
	s := New(nil)
	sock, _ := serve(t, s)
	control := func(args ...string) string {
		t.Helper()
		cmd := xentools.Command(t, "usr/lib/xen-4.17/bin/xenstore-control", args...)
		cmd.Env = append(cmd.Env, "XENSTORED_PATH="+sock)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("xenstore-control %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := control("quota"); !strings.Contains(out, "transactions     :       10 Active transactions per connection") {
		t.Errorf("xenstore-control quota:\n%s", out)
	}
	control("quota", "set", "nodes", "1500")
	if s.Limits().Guest.Nodes != 1500 {
		t.Error("xenstore-control quota set had no effect")
	}
	if out := control("quota", "0"); !strings.Contains(out, "Domain 0:") {
		t.Errorf("xenstore-control quota 0:\n%s", out)
	}
	if out := control("log"); !strings.Contains(out, "io      : on") {
		t.Errorf("xenstore-control log:\n%s", out)
	}
}

// dial connects to the socket.
func dial(t *testing.T, sock string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	for i := 0; errors.Is(err, syscall.ECONNREFUSED) && i < 2000; i++ { // not listening yet
		time.Sleep(time.Millisecond)
		c, err = net.Dial("unix", sock)
	}
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends a READ of /local and waits up to timeout for its reply.
func roundTrip(c net.Conn, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(Msg{Type: XSRead, ReqID: 42, Payload: []byte("/local\x00")}.Marshal()); err != nil {
		return err
	}
	for {
		r, err := ReadMsg(c)
		if err != nil {
			return err
		}
		if r.Type == XSWatchEvent {
			continue
		}
		if r.Type != XSRead || r.ReqID != 42 {
			return fmt.Errorf("reply %s %q", TypeName(r.Type), r.Payload)
		}
		return nil
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// Issue #8: one accept error (EMFILE) killed the socket listener for good;
// later clients hung even after the descriptor flood was gone. With
// RLIMIT_NOFILE lowered, a flood of clients runs this process out of
// descriptors; once it ends, a new client is served.
func TestListenerSurvivesEMFILE(t *testing.T) {
	s, rec := newRecorded()
	l := s.Limits()
	l.MaxConnections, l.MaxClientConnections = 0, 0 // only descriptors limit this
	s.SetLimits(l)
	sock, _ := serve(t, s)
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	low := old
	low.Cur = uint64(len(fds) + 24)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Skipf("setrlimit: %v", err)
	}
	restore := func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) }
	defer restore()

	var flood []net.Conn
	for i := 0; i < 100; i++ {
		c, err := net.Dial("unix", sock)
		if err != nil {
			break // this process is out of descriptors too
		}
		flood = append(flood, c)
	}
	waitFor(t, "the listener to run out of descriptors", func() bool { return s.Stats().AcceptRetries > 0 })
	for _, c := range flood {
		c.Close()
	}
	// Same lowered limit, flood gone: served again within the backoff.
	var c net.Conn
	waitFor(t, "a descriptor for the new client", func() bool {
		c, err = net.Dial("unix", sock)
		return err == nil
	})
	defer c.Close()
	if err := roundTrip(c, 5*time.Second); err != nil {
		t.Fatalf("a client after the flood: %v", err)
	}
	restore()
	// Logged once per episode of failures (not per accept attempt: the
	// backoff retries many times), and the episode the new client ended was
	// logged as a recovery. Under load the flood's queued connections can
	// start another one, still running when the log is read.
	if fail, again := rec.count("accept failing; backing off"), rec.count("accepting again"); fail < 1 || fail > 5 || again < 1 || again < fail-1 {
		t.Errorf("log: %q", rec.recs)
	}
}

// Connections are capped overall and per client process; past a cap a
// connection is accepted and closed, logged and counted, and once others
// go new ones are served.
func TestListenerCaps(t *testing.T) {
	for _, tt := range []struct {
		kind             QuotaKind
		total, perClient int
	}{
		{QuotaClientConnections, 0, 2},
		{QuotaConnections, 2, 0},
	} {
		t.Run(tt.kind.String(), func(t *testing.T) {
			s, rec := newRecorded()
			l := s.Limits()
			l.MaxConnections, l.MaxClientConnections = tt.total, tt.perClient
			s.SetLimits(l)
			sock, _ := serve(t, s)
			a, b := dial(t, sock), dial(t, sock)
			for _, c := range []net.Conn{a, b} {
				if err := roundTrip(c, 5*time.Second); err != nil {
					t.Fatal(err)
				}
			}
			for i := 0; i < 3; i++ {
				c := dial(t, sock)
				if err := roundTrip(c, 5*time.Second); err == nil {
					t.Fatal("a connection past the cap was served")
				}
			}
			if n := s.Stats().QuotaHits[tt.kind]; n != 3 {
				t.Errorf("%v hits %d, want 3", tt.kind, n)
			}
			if rec.count("refusing socket connections", "quota="+tt.kind.String()) != 1 {
				t.Errorf("log: %q", rec.recs)
			}
			a.Close()
			waitFor(t, "the server to see a close", func() bool { return s.Stats().Connections == 1 })
			if err := roundTrip(dial(t, sock), 5*time.Second); err != nil {
				t.Fatalf("after one left: %v", err)
			}
		})
	}
}
