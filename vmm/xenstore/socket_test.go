package xenstore

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"
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
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 1000 {
			t.Fatal("socket never appeared")
		}
		time.Sleep(time.Millisecond)
	}
	if st, _ := os.Stat(sock); st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", st.Mode().Perm())
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
