package rundir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestClaimAndRelease(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "rt")
	a, err := Claim(dir, "a")
	if err != nil {
		t.Fatal(err)
	}
	if a.Domid != 1 || a.Dir != filepath.Join(dir, "a") {
		t.Fatalf("slot %+v", a)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("runtime dir: %v %v", st.Mode(), err)
	}
	// The name is taken while the slot is held, by this process too.
	if _, err := Claim(dir, "a"); !errors.Is(err, ErrNameTaken) {
		t.Errorf("second claim of a: %v", err)
	}
	b, err := Claim(dir, "")
	if err != nil || b.Name != "domain-2" || b.Domid != 2 {
		t.Fatalf("unnamed claim: %+v %v", b, err)
	}
	live, err := List(dir)
	if err != nil || len(live) != 2 || live[0].Name != "a" || live[1].Domid != 2 {
		t.Fatalf("list: %+v %v", live, err)
	}
	l, err := a.Listen(APISocket)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := a.Listen("other.sock"); err == nil {
		t.Error("listened on a file that is not a slot's socket")
	}
	if err := a.Release(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a.Dir); !os.IsNotExist(err) {
		t.Errorf("released slot still there: %v", err)
	}
	// The name is free again; the domid moves on, as Xen's does.
	if c, err := Claim(dir, "a"); err != nil || c.Domid != 3 {
		t.Errorf("reclaim a: %+v %v", c, err)
	} else {
		c.Release()
	}
	b.Release()
}

// A slot nobody holds is stale: it is reclaimed, but only when it holds
// nothing but a slot's files.
func TestStaleSlots(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "g")
	os.Mkdir(stale, 0o700)
	for _, f := range []string{LockFile, DomidFile, APISocket} {
		os.WriteFile(filepath.Join(stale, f), []byte("7\n"), 0o600)
	}
	if live, _ := List(dir); len(live) != 0 {
		t.Errorf("a stale slot is listed: %+v", live)
	}
	s, err := Claim(dir, "g")
	if err != nil {
		t.Fatal(err)
	}
	s.Release()

	os.Mkdir(stale, 0o700)
	os.WriteFile(filepath.Join(stale, "precious"), []byte("x"), 0o600)
	if _, err := Claim(dir, "g"); err == nil || !strings.Contains(err.Error(), "did not create") {
		t.Errorf("claim over a foreign file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(stale, "precious")); err != nil {
		t.Errorf("the foreign file is gone: %v", err)
	}
	os.Remove(filepath.Join(stale, "precious"))
	os.Remove(stale)

	// A symlink in place of a slot is not followed.
	target := t.TempDir()
	os.Symlink(target, stale)
	if _, err := Claim(dir, "g"); err == nil || !strings.Contains(err.Error(), "not a runvm slot") {
		t.Errorf("claim over a symlink: %v", err)
	}
	if _, err := os.Stat(target); err != nil {
		t.Errorf("symlink target: %v", err)
	}
}

// Release removes only the slot's own files: anything else put in the
// slot keeps the directory.
func TestReleaseKeepsForeignFiles(t *testing.T) {
	dir := t.TempDir()
	s, err := Claim(dir, "g")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(s.Path("notes"), []byte("x"), 0o600)
	if err := s.Release(); err == nil {
		t.Error("Release of a slot with a foreign file reported no error")
	}
	if _, err := os.Stat(s.Path("notes")); err != nil {
		t.Errorf("foreign file: %v", err)
	}
}

func TestCheckName(t *testing.T) {
	for _, bad := range []string{"", ".", "..", "a/b", "../x", "nul\x00"} {
		if err := CheckName("/run/x", bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if err := CheckName("/run/x", "guest"); err != nil {
		t.Error(err)
	}
	if err := CheckName("/"+strings.Repeat("d", 80), "guest-name-long"); err == nil || !strings.Contains(err.Error(), "Unix socket") {
		t.Errorf("over-long socket path: %v", err)
	}
}

func TestNextDomidWraps(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, lastDomidFile), []byte("32751\n"), 0o600)
	live := []Entry{{Domid: 1}, {Domid: 2}}
	if id, err := nextDomid(dir, live); err != nil || id != 3 {
		t.Errorf("after the last domid with 1 and 2 live: %d %v", id, err)
	}
	os.WriteFile(filepath.Join(dir, lastDomidFile), []byte("garbage"), 0o600)
	if id, _ := nextDomid(dir, nil); id != 1 {
		t.Errorf("with a corrupt rover: %d", id)
	}
}

// A socket that cannot be created is an error (runvm's owner then gives
// up on the domain before creating it).
func TestListenFailure(t *testing.T) {
	s, err := Claim(t.TempDir(), "g")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release()
	l, err := s.Listen(XenstoreSock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := s.Listen(XenstoreSock); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("second listen: %v", err)
	}
}
