// Package rundir owns xenresume's runtime directory, where each runvm
// process that owns a domain keeps one slot:
//
//	<dir>/<name>/lock            flock'd (exclusive) by the owner for its life
//	<dir>/<name>/domid           the domain's domid, in decimal
//	<dir>/<name>/api.sock        the control API (package api)
//	<dir>/<name>/xenstored.sock  its xenstored
//
// A name belongs to the process holding the lock of its slot, alive or
// stopped (a SIGSTOPped owner keeps its name and domid); a slot whose lock
// nobody holds is stale and is reclaimed. rundir only ever removes the
// files above, and a slot directory only when they were all it held: it
// never removes anything it did not create.
package rundir

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Files of a slot.
const (
	LockFile      = "lock"
	DomidFile     = "domid"
	APISocket     = "api.sock"
	XenstoreSock  = "xenstored.sock"
	dirLockFile   = ".lock"
	lastDomidFile = ".last-domid"
	maxSocketPath = 107 // sun_path is 108 bytes with its NUL
)

// slotFiles are the only files a slot may hold for rundir to remove it.
var slotFiles = []string{LockFile, DomidFile, APISocket, XenstoreSock}

// MaxDomid is the largest domid handed out (DOMID_FIRST_RESERVED - 1).
const MaxDomid = 0x7fef

// Slot is a claimed slot: the caller owns its name and domid until Release.
type Slot struct {
	Dir   string // <runtime>/<name>
	Name  string
	Domid uint16
	lock  *os.File
}

// Listen creates the slot's Unix socket file (APISocket or XenstoreSock),
// mode 0600.
func (s *Slot) Listen(file string) (net.Listener, error) {
	if file != APISocket && file != XenstoreSock {
		return nil, fmt.Errorf("%s is not a socket of a slot", file)
	}
	path := s.Path(file)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return l, nil
}

// Path returns the path of one of the slot's files.
func (s *Slot) Path(file string) string { return filepath.Join(s.Dir, file) }

// Entry is a live slot: one whose owner holds its lock.
type Entry struct {
	Name  string
	Domid uint16
	Dir   string
}

// ErrNameTaken is what Claim wraps when a live process owns the name.
var ErrNameTaken = errors.New("domain name in use")

// CheckName refuses names that are unsafe as a slot directory: empty, "."
// or "..", containing '/' or a NUL, or too long for the slot's sockets to
// fit a Unix socket path under dir. (Domain names have stricter rules of
// their own; see toolstack.ValidateName.)
func CheckName(dir, name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("invalid domain name %q: it is not a directory name", name)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("invalid domain name %q: it contains '/' or NUL", name)
	}
	if p := filepath.Join(dir, name, XenstoreSock); len(p) > maxSocketPath {
		return fmt.Errorf("invalid domain name %q: the socket path %s would be %d bytes, over the %d a Unix socket allows; use a shorter name or runtime directory",
			name, p, len(p), maxSocketPath)
	}
	return nil
}

// Claim makes dir (0700) if needed and claims the slot for name, with the
// next domid as Xen hands them out: one past the last one handed out in
// dir (kept in dir/.last-domid), wrapping before DOMID_FIRST_RESERVED and
// skipping live ones, so that a restored domain gets a new domid. An empty
// name becomes "domain-<domid>". It fails with ErrNameTaken when a live process owns
// the name. Claims are serialized across processes by a lock on dir.
func Claim(dir, name string) (*Slot, error) {
	// Check before creating anything; an unnamed domain's name is at most
	// this long.
	check := name
	if check == "" {
		check = "domain-" + strconv.Itoa(MaxDomid)
	}
	if err := CheckName(dir, check); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	dl, err := lockFile(filepath.Join(dir, dirLockFile), unix.LOCK_EX)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	defer dl.Close()
	live, err := List(dir)
	if err != nil {
		return nil, err
	}
	domid, err := nextDomid(dir, live)
	if err != nil {
		return nil, err
	}
	if name == "" {
		name = "domain-" + strconv.Itoa(int(domid))
	}
	if err := CheckName(dir, name); err != nil {
		return nil, err
	}
	for _, e := range live {
		if e.Name == name {
			return nil, fmt.Errorf("%w: a domain named %q is owned by another runvm (domid %d)", ErrNameTaken, name, e.Domid)
		}
	}
	s := &Slot{Dir: filepath.Join(dir, name), Name: name, Domid: domid}
	if err := reclaim(s.Dir); err != nil {
		return nil, err
	}
	if err := os.Mkdir(s.Dir, 0o700); err != nil {
		return nil, err
	}
	if s.lock, err = lockFile(s.Path(LockFile), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		os.Remove(s.Path(LockFile))
		os.Remove(s.Dir)
		return nil, fmt.Errorf("lock %s: %w", s.Dir, err)
	}
	if err := os.WriteFile(s.Path(DomidFile), []byte(strconv.Itoa(int(domid))+"\n"), 0o600); err != nil {
		s.Release()
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, lastDomidFile), []byte(strconv.Itoa(int(domid))+"\n"), 0o600); err != nil {
		s.Release()
		return nil, err
	}
	return s, nil
}

// nextDomid is the domid after the last one handed out in dir, skipping
// live ones. Called with dir locked.
func nextDomid(dir string, live []Entry) (uint16, error) {
	last := 0
	if b, err := os.ReadFile(filepath.Join(dir, lastDomidFile)); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > 0 && n <= MaxDomid {
			last = n
		}
	}
	used := make(map[uint16]bool, len(live))
	for _, e := range live {
		used[e.Domid] = true
	}
	for i := 1; i <= MaxDomid; i++ {
		id := uint16((last+i-1)%MaxDomid + 1)
		if !used[id] {
			return id, nil
		}
	}
	return 0, fmt.Errorf("%s: no free domid", dir)
}

// reclaim removes a stale slot at path, if there is one: only the files a
// slot holds, and the directory only once empty. Anything else there is
// not ours, and is left alone with an error.
func reclaim(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s exists and is not a runvm slot; remove it or use another name", path)
	}
	ents, err := os.ReadDir(path)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !slices.Contains(slotFiles, e.Name()) {
			return fmt.Errorf("%s holds %s, which runvm did not create; remove it or use another name", path, e.Name())
		}
	}
	for _, e := range ents {
		if err := os.Remove(filepath.Join(path, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return os.Remove(path)
}

// Release gives the slot up: its files and then its directory go (the
// directory only if nothing else was put there), and the lock last.
func (s *Slot) Release() error {
	var errs []error
	for _, f := range []string{APISocket, XenstoreSock, DomidFile, LockFile} {
		if err := os.Remove(s.Path(f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(s.Dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	if s.lock != nil {
		errs = append(errs, s.lock.Close())
		s.lock = nil
	}
	return errors.Join(errs...)
}

// List returns the live slots under dir, those whose lock an owner holds.
func List(dir string) ([]Entry, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, e := range ents {
		if !e.IsDir() || e.Name()[0] == '.' {
			continue
		}
		slot := filepath.Join(dir, e.Name())
		if !held(filepath.Join(slot, LockFile)) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(slot, DomidFile))
		if err != nil {
			continue // being claimed: not listed until it has a domid
		}
		id, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 16)
		if err != nil || id == 0 || id > MaxDomid {
			continue
		}
		out = append(out, Entry{Name: e.Name(), Domid: uint16(id), Dir: slot})
	}
	return out, nil
}

// held reports whether some process holds the lock at path.
func held(path string) bool {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	return false
}

// lockFile opens (creating, 0600) and flocks path.
func lockFile(path string, how int) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is locked by another process", ErrNameTaken, path)
		}
		return nil, err
	}
	return f, nil
}
