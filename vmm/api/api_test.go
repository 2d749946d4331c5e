package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/vmm/rundir"
)

type fakeDomain struct {
	state string
	last  Action
}

func (f *fakeDomain) Info() Info { return Info{Domid: 3, Name: "g", State: f.state} }

func (f *fakeDomain) Do(_ context.Context, a Action) error {
	f.last = a
	if a.Action == "resume" && f.state != "suspended" {
		return Conflict(fmt.Errorf("cannot resume a %s domain", f.state))
	}
	if a.Action == "explode" {
		return errors.New("boom")
	}
	f.state = a.Action + "d"
	return nil
}

func serve(t *testing.T, dir, name string, d Domain) string {
	t.Helper()
	sock := filepath.Join(dir, name, "api.sock")
	os.MkdirAll(filepath.Dir(sock), 0o700)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Serve(ctx, sock, d); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	for i := 0; i < 1000; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return sock
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("API socket never came up")
	return ""
}

func TestAPI(t *testing.T) {
	dir := t.TempDir()
	f := &fakeDomain{state: "running"}
	sock := serve(t, dir, "g", f)
	if st, _ := os.Stat(sock); st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v", st.Mode().Perm())
	}
	c := NewClient(sock)
	ctx := context.Background()
	if info, err := c.Info(ctx); err != nil || info.Domid != 3 || info.State != "running" {
		t.Fatalf("info %+v %v", info, err)
	}
	if info, err := c.Do(ctx, Action{Action: "suspend", TimeoutMS: 5}); err != nil || info.State != "suspendd" || f.last.TimeoutMS != 5 {
		t.Fatalf("suspend: %+v %v (%+v)", info, err, f.last)
	}
	f.state = "running"
	if _, err := c.Do(ctx, Action{Action: "resume", Fast: true}); !errors.Is(err, ErrConflict) || err.Error() != "cannot resume a running domain" {
		t.Errorf("resume of a running domain: %v", err)
	}
	if _, err := c.Do(ctx, Action{Action: "explode"}); err == nil || errors.Is(err, ErrConflict) || err.Error() != "boom" {
		t.Errorf("failing action: %v", err)
	}
	// Malformed bodies are refused before reaching the domain.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", sock)
	}}}
	for _, body := range []string{"{", `{"action":"suspend","bogus":1}`, strings.Repeat("x", 10000)} {
		req, _ := http.NewRequest("PUT", "http://x/domain/actions", strings.NewReader(body))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("body %.20q: status %d", body, resp.StatusCode)
		}
	}
}

// claim claims a runtime slot and listens on its API socket, for the
// test's duration.
func claim(t *testing.T, dir, name string) (*rundir.Slot, net.Listener) {
	t.Helper()
	slot, err := rundir.Claim(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slot.Release() })
	l, err := slot.Listen(rundir.APISocket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return slot, l
}

func TestFindAndRunning(t *testing.T) {
	dir := t.TempDir()
	slot, l := claim(t, dir, "g")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ServeListener(ctx, l, &fakeDomain{state: "running"}); close(done) }()
	defer func() { cancel(); <-done }()
	os.MkdirAll(filepath.Join(dir, "stale"), 0o700) // a dead runvm's slot: no lock held
	os.WriteFile(filepath.Join(dir, "stale", "lock"), nil, 0o600)
	os.WriteFile(filepath.Join(dir, "stale", "domid"), []byte("9\n"), 0o600)
	doms, err := Running(context.Background(), dir)
	if err != nil || len(doms) != 1 || doms[0].Name != "g" || doms[0].State != "running" {
		t.Fatalf("running: %+v %v", doms, err)
	}
	for _, q := range []string{"g", fmt.Sprint(slot.Domid)} {
		if _, e, err := Find(dir, q); err != nil || e.Name != "g" {
			t.Errorf("find %q: %+v %v", q, e, err)
		}
	}
	if _, _, err := Find(dir, "nope"); err == nil {
		t.Error("found a domain that does not exist")
	}
	if doms, err := Running(context.Background(), filepath.Join(dir, "missing")); err != nil || len(doms) != 0 {
		t.Errorf("missing runtime dir: %v %v", doms, err)
	}
}

// An owner that holds its name but does not answer (stopped) is listed as
// unresponsive, not dropped.
func TestRunningUnresponsiveOwner(t *testing.T) {
	dir := t.TempDir()
	slot, _ := claim(t, dir, "frozen") // its socket accepts nothing: like a SIGSTOPped process
	doms, err := Running(context.Background(), dir)
	if err != nil || len(doms) != 1 || doms[0].State != "unresponsive" || doms[0].Domid != slot.Domid {
		t.Fatalf("running: %+v %v", doms, err)
	}
}

func TestRuntimeDir(t *testing.T) {
	t.Setenv("XENRESUME_RUNTIME_DIR", "/x/y")
	if d := RuntimeDir(); d != "/x/y" {
		t.Errorf("env override: %s", d)
	}
	t.Setenv("XENRESUME_RUNTIME_DIR", "")
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/7")
	if d := RuntimeDir(); d != "/run/user/7/xenresume" {
		t.Errorf("XDG: %s", d)
	}
}

// endingDomain stops its own server from inside an action, as a destroy
// or a save does in runvm, and only then returns.
type endingDomain struct {
	fakeDomain
	stop context.CancelFunc
}

func (e *endingDomain) Do(ctx context.Context, a Action) error {
	e.stop()
	time.Sleep(50 * time.Millisecond) // Serve is shutting down meanwhile
	return e.fakeDomain.Do(ctx, a)
}

// An action that ends the server still gets its reply, and Serve returns
// only after the reply went out.
func TestReplyOutlivesShutdown(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	ctx, cancel := context.WithCancel(context.Background())
	d := &endingDomain{fakeDomain: fakeDomain{state: "running"}, stop: cancel}
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, sock, d) }()
	c := NewClient(sock)
	for i := 0; ; i++ {
		if _, err := c.Info(context.Background()); err == nil {
			break
		} else if i == 1000 {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	info, err := c.Do(context.Background(), Action{Action: "destroy"})
	if err != nil || info.State != "destroyd" {
		t.Fatalf("destroy: %+v %v", info, err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}
