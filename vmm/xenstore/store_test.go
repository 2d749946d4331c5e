package xenstore

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
)

// client is a test connection: req sends one request and returns its
// reply, collecting watch events that arrive on the way.
type client struct {
	t      *testing.T
	c      *Conn
	events []string // "path|token"
}

func newClient(t *testing.T, s *Store, domid uint32) *client {
	t.Helper()
	c := s.NewConn(domid, t.Name())
	t.Cleanup(c.Close)
	return &client{t: t, c: c}
}

func (cl *client) drain() {
	for _, m := range cl.c.pending() {
		if m.Type != XSWatchEvent {
			cl.t.Fatalf("unexpected %s", TypeName(m.Type))
		}
		a := nulStrings(m.Payload)
		cl.events = append(cl.events, a[0]+"|"+a[1])
	}
}

func (cl *client) req(typ, tx uint32, a ...string) (string, error) {
	cl.t.Helper()
	p := strings.Join(a, "\x00")
	if typ != XSWrite {
		p += "\x00"
	}
	var m Msg
	cl.c.Handle(Msg{Type: typ, ReqID: 7, TxID: tx, Payload: []byte(p)}, func(r Msg) { m = r })
	{
		if m.ReqID != 7 || m.TxID != tx {
			cl.t.Fatalf("reply ids %d/%d", m.ReqID, m.TxID)
		}
		if m.Type == XSError {
			return "", Error(strings.TrimSuffix(string(m.Payload), "\x00"))
		}
		if m.Type != typ {
			cl.t.Fatalf("reply type %s to %s", TypeName(m.Type), TypeName(typ))
		}
		return string(m.Payload), nil
	}
}

func (cl *client) must(typ, tx uint32, a ...string) string {
	cl.t.Helper()
	r, err := cl.req(typ, tx, a...)
	if err != nil {
		cl.t.Fatalf("%s %v: %v", TypeName(typ), a, err)
	}
	return r
}

func (cl *client) fails(want Error, typ, tx uint32, a ...string) {
	cl.t.Helper()
	if _, err := cl.req(typ, tx, a...); !errors.Is(err, want) {
		cl.t.Fatalf("%s %v: got %v, want %v", TypeName(typ), a, err, want)
	}
}

// A domain's home as libxl makes it: owned by dom0, readable by the domain,
// with control/shutdown writable by it.
func setupDomain(t *testing.T, s *Store, domid uint32) {
	t.Helper()
	home := DomainPath(domid)
	for _, p := range []string{home, home + "/control", home + "/control/shutdown", home + "/data"} {
		if err := s.Write(p, ""); err != nil {
			t.Fatal(err)
		}
	}
	s.SetPerms(home, Perm{'n', 0}, Perm{'r', domid})
	s.SetPerms(home+"/control", Perm{'n', 0}, Perm{'r', domid})
	s.SetPerms(home+"/control/shutdown", Perm{'n', domid})
	s.SetPerms(home+"/data", Perm{'n', domid})
}

func TestReadWriteDirectory(t *testing.T) {
	s := New(nil)
	d0 := newClient(t, s, 0)
	d0.must(XSWrite, 0, "/a/b/c", "hello\x00with nul")
	if got := d0.must(XSRead, 0, "/a/b/c"); got != "hello\x00with nul" {
		t.Errorf("read %q", got)
	}
	if got := d0.must(XSRead, 0, "/a/b"); got != "" {
		t.Errorf("implicit parent has value %q", got)
	}
	d0.must(XSMkdir, 0, "/a/d")
	d0.must(XSMkdir, 0, "/a/d") // existing: fine
	if got := d0.must(XSDirectory, 0, "/a"); got != "b\x00d\x00" {
		t.Errorf("directory %q", got)
	}
	d0.fails(ENOENT, XSRead, 0, "/nope")
	d0.must(XSRm, 0, "/nope")              // Xen: a missing node is fine if its parent exists
	d0.fails(ENOENT, XSRm, 0, "/nope/too") // but not if that is missing too
	d0.must(XSRm, 0, "/a/b")
	d0.fails(ENOENT, XSRead, 0, "/a/b/c")
	for _, bad := range []string{"", "/a/", "/a//b", "/a b", "/a/@x", "/" + strings.Repeat("x", AbsPathMax)} {
		d0.fails(EINVAL, XSRead, 0, bad)
	}
	d0.fails(EINVAL, XSRm, 0, "/")
	if got := d0.must(XSGetDomainPath, 0, "5"); got != "/local/domain/5\x00" {
		t.Errorf("domain path %q", got)
	}
	d0.fails(ENOSYS, 99, 0, "x")
	d0.fails(ENOSYS, XSSetTarget, 0, "1", "2")
	// A WRITE with no separator between path and value is malformed.
	var m Msg
	d0.c.Handle(Msg{Type: XSWrite, ReqID: 7, Payload: []byte("/a/nonul")}, func(r Msg) { m = r })
	if m.Type != XSError || string(m.Payload) != "EINVAL\x00" {
		t.Errorf("write without NUL: %s %q", TypeName(m.Type), m.Payload)
	}
}

func TestPermissions(t *testing.T) {
	s := New(nil)
	setupDomain(t, s, 1)
	setupDomain(t, s, 2)
	d1 := newClient(t, s, 1)
	d2 := newClient(t, s, 2)

	// Relative paths are below the domain's home.
	d1.must(XSWrite, 0, "control/shutdown", "")
	d1.fails(EACCES, XSWrite, 0, "control/other", "x") // control/ is read-only
	d1.fails(EACCES, XSWrite, 0, "name", "evil")
	d1.must(XSRead, 0, "control")
	d2.fails(EACCES, XSRead, 0, "/local/domain/1/control")
	d2.fails(EACCES, XSWrite, 0, "/local/domain/1/data/x", "y")

	// What a domain creates it owns, and quota counts it.
	d1.must(XSWrite, 0, "data/mine/leaf", "v")
	if got := d1.must(XSGetPerms, 0, "data/mine/leaf"); got != "n1\x00" {
		t.Errorf("perms of a created node %q", got)
	}
	// The owner can share it read-only; others then read but not write.
	d1.must(XSSetPerms, 0, "data/mine/leaf", "n1", "r2")
	if got := d2.must(XSRead, 0, "/local/domain/1/data/mine/leaf"); got != "v" {
		t.Errorf("d2 read %q", got)
	}
	d2.fails(EACCES, XSWrite, 0, "/local/domain/1/data/mine/leaf", "w")
	d2.fails(EACCES, XSSetPerms, 0, "/local/domain/1/data/mine/leaf", "b2")
	// An owner cannot give a node away; dom0 can.
	d1.fails(EPERM, XSSetPerms, 0, "data/mine/leaf", "b2")
	if err := s.SetPerms("/local/domain/1/data/mine/leaf", Perm{'n', 2}); err != nil {
		t.Fatal(err)
	}
	d2.must(XSWrite, 0, "/local/domain/1/data/mine/leaf", "now mine")
	d1.fails(EACCES, XSRead, 0, "data/mine/leaf")
	d1.fails(EINVAL, XSSetPerms, 0, "data/mine", "x1")
	// Domain-management requests are dom0's.
	d1.fails(EACCES, XSIsDomainIntroduced, 0, "1")
	d1.fails(EACCES, XSRelease, 0, "1")
}

func TestWatches(t *testing.T) {
	s := New(nil)
	setupDomain(t, s, 1)
	d0 := newClient(t, s, 0)
	d1 := newClient(t, s, 1)

	d1.must(XSWatch, 0, "control/shutdown", "tok")
	if len(d1.events) != 0 {
		t.Fatalf("event before the reply: %v", d1.events)
	}
	d1.drain()
	if want := []string{"control/shutdown|tok"}; !equal(d1.events, want) {
		t.Fatalf("registration events %v, want %v", d1.events, want)
	}
	d1.fails(EEXIST, XSWatch, 0, "control/shutdown", "tok")
	d0.must(XSWatch, 0, "/local/domain/1", "home")
	d0.drain()
	d1.events, d0.events = nil, nil

	// A change fires the watches on it and on its ancestors; relative
	// watches get relative paths.
	d0.must(XSWrite, 0, "/local/domain/1/control/shutdown", "suspend")
	d1.drain()
	d0.drain()
	if !equal(d1.events, []string{"control/shutdown|tok"}) || !equal(d0.events, []string{"/local/domain/1/control/shutdown|home"}) {
		t.Fatalf("events: d1 %v d0 %v", d1.events, d0.events)
	}
	// A watcher that cannot read the node hears nothing.
	d1.events = nil
	d1.must(XSWatch, 0, "/local/domain/1/data", "data")
	d0.must(XSWrite, 0, "/local/domain/1/data/private", "x")
	s.SetPerms("/local/domain/1/data/private", Perm{'n', 0})
	d1.drain()
	d1.events = nil
	d0.must(XSWrite, 0, "/local/domain/1/data/private", "y")
	d1.drain()
	if len(d1.events) != 0 {
		t.Errorf("d1 saw a change to a node it cannot read: %v", d1.events)
	}
	// Removing a parent fires the watches below it, with their own path.
	d1.events = nil
	d0.must(XSRm, 0, "/local/domain/1/control")
	d1.drain()
	if !equal(d1.events, []string{"control/shutdown|tok"}) {
		t.Errorf("rm events %v", d1.events)
	}
	d1.must(XSUnwatch, 0, "control/shutdown", "tok")
	d1.fails(ENOENT, XSUnwatch, 0, "control/shutdown", "tok")
	d1.must(XSResetWatches, 0)
	d1.fails(ENOENT, XSUnwatch, 0, "/local/domain/1/data", "data")
}

func TestSpecialWatches(t *testing.T) {
	s := New(nil)
	d0 := newClient(t, s, 0)
	d3 := newClient(t, s, 3)
	d0.must(XSWatch, 0, "@introduceDomain", "i")
	d0.must(XSWatch, 0, "@releaseDomain", "r")
	d3.must(XSWatch, 0, "@releaseDomain", "r3")
	d0.fails(EINVAL, XSWatch, 0, "@bogus", "x")
	d0.drain()
	d3.drain()
	d0.events, d3.events = nil, nil
	s.IntroduceDomain(3)
	s.DomainShutdown(3)
	s.DomainShutdown(3) // once until resumed
	if got := d0.must(XSIsDomainIntroduced, 0, "3"); got != "T\x00" {
		t.Errorf("introduced: %q", got)
	}
	d0.must(XSResume, 0, "3")
	s.DomainShutdown(3)
	d0.must(XSRelease, 0, "3")
	d0.drain()
	want := []string{"@introduceDomain|i", "@releaseDomain|r", "@releaseDomain|r", "@releaseDomain|r"}
	if !equal(d0.events, want) {
		t.Errorf("dom0 events %v, want %v", d0.events, want)
	}
	d3.drain()
	if len(d3.events) != 0 {
		t.Errorf("an unprivileged domain heard special events: %v", d3.events)
	}
	if got := d0.must(XSIsDomainIntroduced, 0, "3"); got != "F\x00" {
		t.Errorf("after release: %q", got)
	}
	d0.fails(ENOENT, XSResume, 0, "3")
	d0.fails(EINVAL, XSIntroduce, 0, "4", "100", "1") // no introducer set
}

func TestTransactions(t *testing.T) {
	s := New(nil)
	setupDomain(t, s, 1)
	d0 := newClient(t, s, 0)
	d1 := newClient(t, s, 1)
	d0.must(XSWatch, 0, "/local/domain/1/control/shutdown", "w")
	d0.drain()
	d0.events = nil
	d0.must(XSWrite, 0, "/local/domain/1/control/shutdown", "suspend")
	d0.drain()
	d0.events = nil

	// The guest's ack, as Linux does it: read, write "", commit.
	tx := atoi(t, d1.must(XSTransactionStart, 0, ""))
	if got := d1.must(XSRead, tx, "control/shutdown"); got != "suspend" {
		t.Fatalf("read in tx %q", got)
	}
	d1.must(XSWrite, tx, "control/shutdown", "")
	if got, _ := s.Read("/local/domain/1/control/shutdown"); got != "suspend" {
		t.Fatalf("uncommitted write visible: %q", got)
	}
	d0.drain()
	if len(d0.events) != 0 {
		t.Fatalf("watch fired before commit: %v", d0.events)
	}
	d1.must(XSTransactionEnd, tx, "T")
	if got, _ := s.Read("/local/domain/1/control/shutdown"); got != "" {
		t.Fatalf("committed value %q", got)
	}
	d0.drain()
	if !equal(d0.events, []string{"/local/domain/1/control/shutdown|w"}) {
		t.Fatalf("commit events %v", d0.events)
	}

	// Conflict: the node changed under the transaction.
	tx = atoi(t, d1.must(XSTransactionStart, 0, ""))
	d1.must(XSRead, tx, "control/shutdown")
	d1.must(XSWrite, tx, "control/shutdown", "")
	d0.must(XSWrite, 0, "/local/domain/1/control/shutdown", "poweroff")
	d1.fails(EAGAIN, XSTransactionEnd, tx, "T")
	if got, _ := s.Read("/local/domain/1/control/shutdown"); got != "poweroff" {
		t.Fatalf("conflicting transaction was applied: %q", got)
	}
	// A transaction over unrelated nodes commits.
	tx = atoi(t, d1.must(XSTransactionStart, 0, ""))
	d1.must(XSWrite, tx, "data/x", "1")
	d0.must(XSWrite, 0, "/local/domain/1/control/shutdown", "")
	d1.must(XSTransactionEnd, tx, "T")
	// Nodes a transaction creates, and writes below them, commit.
	tx = atoi(t, d0.must(XSTransactionStart, 0, ""))
	d0.must(XSWrite, tx, "/local/domain/9/name", "g")
	d0.must(XSWrite, tx, "/local/domain/9/control/shutdown", "")
	d0.must(XSTransactionEnd, tx, "T")
	if got, _ := s.Read("/local/domain/9/name"); got != "g" {
		t.Fatalf("created in a transaction: %q", got)
	}
	// But one whose new node appeared meanwhile conflicts.
	tx = atoi(t, d0.must(XSTransactionStart, 0, ""))
	d0.must(XSWrite, tx, "/new/a", "1")
	s.Write("/new", "")
	d0.fails(EAGAIN, XSTransactionEnd, tx, "T")
	// Abort discards; unknown or ended ids are ENOENT.
	tx = atoi(t, d1.must(XSTransactionStart, 0, ""))
	d1.must(XSWrite, tx, "data/y", "1")
	d1.must(XSTransactionEnd, tx, "F")
	d1.fails(ENOENT, XSRead, 0, "data/y")
	d1.fails(ENOENT, XSRead, tx, "data/x")
	d1.fails(ENOENT, XSRead, 12345, "data/x")
}

func TestQuotas(t *testing.T) {
	s := New(nil)
	// Node size as Xen counts it: 16 + 8 per permission + value +
	// children; 40 leaves 16 bytes of value for a node with one
	// permission and no children.
	s.SetQuota(Quota{Nodes: 6, NodeSize: 40, Watches: 2, Transactions: 1, Events: 4})
	setupDomain(t, s, 1)
	d1 := newClient(t, s, 1)
	d1.fails(ENOSPC, XSWrite, 0, "data/big", strings.Repeat("x", 17)) // Xen: ENOSPC, not E2BIG
	// data and control/shutdown are owned by domain 1: four more fit.
	d1.must(XSWrite, 0, "data/a/b/c", "")
	d1.must(XSWrite, 0, "data/d", "")
	d1.fails(ENOSPC, XSWrite, 0, "data/e", "")
	d1.must(XSRm, 0, "data/a")
	d1.must(XSWrite, 0, "data/e", "")

	d1.must(XSWatch, 0, "data", "1")
	d1.must(XSWatch, 0, "data", "2")
	d1.fails(E2BIG, XSWatch, 0, "data", "3")
	d1.must(XSTransactionStart, 0, "")
	d1.fails(ENOSPC, XSTransactionStart, 0, "")
	// dom0 has no quota.
	d0 := newClient(t, s, 0)
	d0.must(XSWrite, 0, "/big", strings.Repeat("x", 4000))
	// A domain that never reads its events cannot grow the queue.
	for i := 0; i < 50; i++ {
		d0.must(XSWrite, 0, "/local/domain/1/data/e", "x")
	}
	if n := len(d1.c.pending()); n > 4 {
		t.Errorf("%d events queued past the quota", n)
	}
}

func TestDirectoryPart(t *testing.T) {
	s := New(nil)
	d0 := newClient(t, s, 0)
	var names []string
	for i := 0; i < 400; i++ {
		name := "child-with-a-long-name-" + strings.Repeat("x", i%7) + "-" + itoa(i)
		names = append(names, name)
		d0.must(XSMkdir, 0, "/dir/"+name)
	}
	d0.fails(E2BIG, XSDirectory, 0, "/dir")
	var got []string
	off := 0
	for {
		r := d0.must(XSDirectoryPart, 0, "/dir", itoa(off))
		parts := strings.Split(r, "\x00")
		body := parts[1 : len(parts)-1]
		done := strings.HasSuffix(r, "\x00\x00")
		for _, p := range body {
			if p != "" {
				got = append(got, p)
				off += len(p) + 1
			}
		}
		if done {
			break
		}
	}
	if len(got) != len(names) {
		t.Fatalf("DIRECTORY_PART gave %d names, want %d", len(got), len(names))
	}
}

// FuzzHandle: no request, however malformed, panics the store, and every
// request gets exactly one reply.
func FuzzHandle(f *testing.F) {
	f.Add(Msg{Type: XSWrite, Payload: []byte("/a\x00b")}.Marshal())
	f.Add(Msg{Type: XSTransactionStart, Payload: []byte("\x00")}.Marshal())
	f.Add(Msg{Type: XSWatch, Payload: []byte("@releaseDomain\x00t\x00")}.Marshal())
	f.Add(Msg{Type: XSDirectoryPart, Payload: []byte("/\x0099\x00")}.Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		s := New(nil)
		c := s.NewConn(1, "fuzz")
		for len(b) > 0 {
			m, n, err := Decode(b)
			if err != nil || n == 0 {
				return
			}
			b = b[n:]
			replies := 0
			c.Handle(m, func(Msg) { replies++ })
			for _, r := range c.pending() {
				if r.Type != XSWatchEvent {
					t.Fatalf("a %s reply on the event queue", TypeName(r.Type))
				}
			}
			if replies != 1 {
				t.Fatalf("%d replies to %s", replies, TypeName(m.Type))
			}
		}
	})
}

func TestDecode(t *testing.T) {
	m := Msg{Type: XSRead, ReqID: 3, TxID: 4, Payload: []byte("/x\x00")}
	b := m.Marshal()
	for i := 0; i < len(b); i++ {
		if _, n, err := Decode(b[:i]); n != 0 || err != nil {
			t.Fatalf("partial %d: %d %v", i, n, err)
		}
	}
	got, n, err := Decode(b)
	if err != nil || n != len(b) || got.ReqID != 3 || got.TxID != 4 || !bytes.Equal(got.Payload, m.Payload) {
		t.Fatalf("decode: %+v %d %v", got, n, err)
	}
	big := Msg{Type: XSRead}.Marshal()
	big[12], big[13] = 0x01, 0x10 // 4097
	if _, _, err := Decode(big); !errors.Is(err, ErrMalformed) {
		t.Errorf("oversized payload: %v", err)
	}
	if _, err := ReadMsg(bytes.NewReader(b[:len(b)-1])); !errors.Is(err, ErrMalformed) {
		t.Errorf("truncated payload: %v", err)
	}
}

func equal(a, b []string) bool { return strings.Join(a, ",") == strings.Join(b, ",") }

func itoa(i int) string { return strconv.Itoa(i) }

func atoi(t *testing.T, s string) uint32 {
	t.Helper()
	s = strings.TrimSuffix(s, "\x00")
	var n uint32
	for _, c := range s {
		if c < '0' || c > '9' {
			t.Fatalf("not a number: %q", s)
		}
		n = n*10 + uint32(c-'0')
	}
	return n
}
