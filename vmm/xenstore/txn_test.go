package xenstore

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// dump renders the whole tree, permissions and values, one node a line.
func dump(s *Store) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var lines []string
	var walk func(path string, n *node)
	walk = func(path string, n *node) {
		lines = append(lines, fmt.Sprintf("%s %v %q", path, n.perms, n.value))
		for name, c := range n.children {
			walk(join(path, name), c)
		}
	}
	walk("/", s.root)
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// logRecorder is a slog handler that keeps what was logged.
type logRecorder struct {
	mu   sync.Mutex
	recs []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	l.mu.Lock()
	l.recs = append(l.recs, b.String())
	l.mu.Unlock()
	return nil
}

// count returns how many records contain every one of the substrings.
func (l *logRecorder) count(subs ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
next:
	for _, r := range l.recs {
		for _, s := range subs {
			if !strings.Contains(r, s) {
				continue next
			}
		}
		n++
	}
	return n
}

func newRecorded() (*Store, *logRecorder) {
	rec := &logRecorder{}
	return New(slog.New(rec)), rec
}

// Issue #8: replaying a transaction that hit the node quota answered
// EAGAIN yet left some of its writes in the store. Xen's rule is all or
// nothing, and its answer ENOSPC (acc_fix_domains in domain.c).
func TestCommitAllOrNothing(t *testing.T) {
	s, rec := newRecorded()
	q := DefaultQuota
	q.Nodes = 6
	s.SetQuota(q)
	setupDomain(t, s, 1) // domain 1 owns data and control/shutdown
	d1 := newClient(t, s, 1)
	tx := atoi(t, d1.must(XSTransactionStart, 0, ""))
	d1.must(XSWrite, tx, "data/a", "1")
	d1.must(XSWrite, tx, "data/b/c", "2") // 5 owned, as the transaction sees it
	d1.must(XSRm, tx, "control/shutdown") // and back to 4
	d1.must(XSWrite, tx, "data", "new value")
	// Meanwhile, elsewhere (nothing the transaction touched), the domain
	// fills its quota outside the transaction.
	s.Write("/local/domain/1/data2", "")
	s.SetPerms("/local/domain/1/data2", Perm{'n', 1})
	d1.must(XSWrite, 0, "data2/x", "")
	d1.must(XSWrite, 0, "data2/y", "")
	before := dump(s)
	d1.fails(ENOSPC, XSTransactionEnd, tx, "T")
	if after := dump(s); after != before {
		t.Fatalf("a refused commit changed the store:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if n := s.Stats().QuotaHits[QuotaNodes]; n != 1 {
		t.Errorf("node quota hits %d, want 1", n)
	}
	if rec.count("quota reached", "quota=nodes", "domid=1") != 1 {
		t.Errorf("quota hit not logged once: %v", rec.recs)
	}
	// The same transaction commits once there is room, whole.
	d1.must(XSRm, 0, "data2/x")
	tx = atoi(t, d1.must(XSTransactionStart, 0, ""))
	d1.must(XSRm, tx, "control/shutdown")
	d1.must(XSWrite, tx, "data/a", "1")
	d1.must(XSWrite, tx, "data/b/c", "2")
	d1.must(XSTransactionEnd, tx, "T")
	for path, want := range map[string]string{"data/a": "1", "data/b/c": "2", "data/b": ""} {
		if got := d1.must(XSRead, 0, path); got != want {
			t.Errorf("%s = %q, want %q", path, got, want)
		}
	}
	d1.fails(ENOENT, XSRead, 0, "control/shutdown")
	checkAccounting(t, s)
}

// checkAccounting recounts the nodes each domain owns.
func checkAccounting(t *testing.T, s *Store) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	owners := map[uint32]int{}
	countOwners(s.root, owners)
	if fmt.Sprint(owners) != fmt.Sprint(s.owned) {
		t.Fatalf("node accounting %v, tree has %v", s.owned, owners)
	}
}

// bigStore makes a store of about n nodes.
func bigStore(tb testing.TB, n int) *Store {
	tb.Helper()
	s := New(slog.New(slog.DiscardHandler))
	for i := 0; i < n; i++ {
		if err := s.Write("/big/"+strconv.Itoa(i/100)+"/n"+strconv.Itoa(i), "value"); err != nil {
			tb.Fatal(err)
		}
	}
	return s
}

// Issue #8: every open transaction copied the whole tree (1,500 of them
// on a 20,000-node store took 3.26 GiB). A transaction's memory must be
// proportional to what it touched.
func TestTransactionMemory(t *testing.T) {
	s := bigStore(t, 20000)
	const conns, per = 4, 10
	var cs []*client
	for i := 0; i < conns; i++ {
		cs = append(cs, newClient(t, s, 0))
	}
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	for _, c := range cs {
		for i := 0; i < per; i++ {
			tx := atoi(t, c.must(XSTransactionStart, 0, ""))
			c.must(XSRead, tx, "/big/7/n700")
			c.must(XSWrite, tx, "/big/8/n800", "x")
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	perTx := (int64(m1.HeapAlloc) - int64(m0.HeapAlloc)) / (conns * per)
	t.Logf("%d bytes per open transaction on a 20,000-node store", perTx)
	// Each touched three or four nodes; the whole tree is megabytes.
	if perTx > 16<<10 {
		t.Errorf("%d bytes per open transaction, want at most 16 KiB", perTx)
	}
	runtime.KeepAlive(cs)
}

// Every connection, a dom0 one too, has a limit on open transactions:
// Xen's 10 by default, raised through Limits.
func TestTransactionLimitEveryConnection(t *testing.T) {
	for _, domid := range []uint32{0, 1} {
		t.Run(fmt.Sprintf("dom%d", domid), func(t *testing.T) {
			s := New(slog.New(slog.DiscardHandler))
			setupDomain(t, s, 1)
			c := newClient(t, s, domid)
			for i := 0; i < 10; i++ {
				c.must(XSTransactionStart, 0, "")
			}
			c.fails(ENOSPC, XSTransactionStart, 0, "")
			l := s.Limits()
			l.Guest.Transactions, l.Privileged.Transactions = 11, 11
			s.SetLimits(l)
			c.must(XSTransactionStart, 0, "")
			c.fails(ENOSPC, XSTransactionStart, 0, "")
			if st := s.Stats(); st.QuotaHits[QuotaTransactions] != 2 || st.Transactions != 11 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestTransactionSemantics(t *testing.T) {
	s := New(nil)
	d0 := newClient(t, s, 0)
	other := newClient(t, s, 0)
	d0.must(XSWrite, 0, "/t/a", "a")
	d0.must(XSWrite, 0, "/t/dir/x", "x")
	d0.must(XSWrite, 0, "/t/dir/y/z", "z")
	other.must(XSWatch, 0, "/t", "w")
	other.drain()
	other.events = nil

	// Reads repeat even when the store changes (test-xenstore's "ta
	// err"), the transaction sees its own writes, and such a
	// transaction cannot commit.
	tx := atoi(t, d0.must(XSTransactionStart, 0, ""))
	if got := d0.must(XSRead, tx, "/t/a"); got != "a" {
		t.Fatalf("read %q", got)
	}
	other.must(XSWrite, 0, "/t/a", "b")
	if got := d0.must(XSRead, tx, "/t/a"); got != "a" {
		t.Fatalf("repeated read %q, want the first value", got)
	}
	d0.must(XSWrite, tx, "/t/a", "c")
	if got := d0.must(XSRead, tx, "/t/a"); got != "c" {
		t.Fatalf("own write %q", got)
	}
	d0.fails(EAGAIN, XSTransactionEnd, tx, "T")
	if got, _ := s.Read("/t/a"); got != "b" {
		t.Fatalf("after the conflict %q", got)
	}

	// Remove a subtree and make part of it again; list it; commit
	// fires watches then, not before.
	other.drain()
	other.events = nil
	tx = atoi(t, d0.must(XSTransactionStart, 0, ""))
	d0.must(XSRm, tx, "/t/dir")
	d0.fails(ENOENT, XSRead, tx, "/t/dir/x")
	d0.fails(ENOENT, XSDirectory, tx, "/t/dir")
	d0.must(XSWrite, tx, "/t/dir/y/new", "n")
	if got := d0.must(XSDirectory, tx, "/t/dir"); got != "y\x00" {
		t.Fatalf("directory in the transaction %q", got)
	}
	if got := d0.must(XSDirectory, tx, "/t/dir/y"); got != "new\x00" {
		t.Fatalf("directory of a remade node %q", got)
	}
	if got := d0.must(XSDirectory, 0, "/t/dir"); got != "x\x00y\x00" {
		t.Fatalf("directory outside %q", got)
	}
	other.drain()
	if len(other.events) != 0 {
		t.Fatalf("events before commit: %v", other.events)
	}
	d0.must(XSTransactionEnd, tx, "T")
	if got := d0.must(XSDirectory, 0, "/t/dir"); got != "y\x00" {
		t.Fatalf("directory after commit %q", got)
	}
	if got := d0.must(XSDirectory, 0, "/t/dir/y"); got != "new\x00" {
		t.Fatalf("directory after commit %q", got)
	}
	d0.fails(ENOENT, XSRead, 0, "/t/dir/y/z")
	other.drain()
	if !equal(other.events, []string{"/t/dir|w", "/t/dir/y/new|w"}) {
		t.Errorf("commit events %v", other.events)
	}
	checkAccounting(t, s)

	// A child appearing under a directory the transaction listed is a
	// conflict; one elsewhere is not.
	tx = atoi(t, d0.must(XSTransactionStart, 0, ""))
	d0.must(XSDirectory, tx, "/t/dir")
	other.must(XSWrite, 0, "/t/elsewhere", "")
	d0.must(XSWrite, tx, "/t/result", "1")
	d0.must(XSTransactionEnd, tx, "T")
	tx = atoi(t, d0.must(XSTransactionStart, 0, ""))
	d0.must(XSDirectory, tx, "/t/dir")
	other.must(XSWrite, 0, "/t/dir/late", "")
	d0.must(XSWrite, tx, "/t/result", "2")
	d0.fails(EAGAIN, XSTransactionEnd, tx, "T")
	if got, _ := s.Read("/t/result"); got != "1" {
		t.Errorf("result %q", got)
	}

	// A node the transaction creates that appears meanwhile: conflict.
	tx = atoi(t, d0.must(XSTransactionStart, 0, ""))
	d0.must(XSWrite, tx, "/t/new/a", "1")
	other.must(XSWrite, 0, "/t/new", "")
	d0.fails(EAGAIN, XSTransactionEnd, tx, "T")

	// Permissions in a transaction, and abort.
	tx = atoi(t, d0.must(XSTransactionStart, 0, ""))
	d0.must(XSSetPerms, tx, "/t/a", "n0", "r5")
	if got := d0.must(XSGetPerms, tx, "/t/a"); got != "n0\x00r5\x00" {
		t.Errorf("perms in the transaction %q", got)
	}
	d0.must(XSTransactionEnd, tx, "F")
	if got := d0.must(XSGetPerms, 0, "/t/a"); got != "n0\x00" {
		t.Errorf("perms after abort %q", got)
	}

	// No nesting; unknown ids; TRANSACTION_END outside one.
	tx = atoi(t, d0.must(XSTransactionStart, 0, ""))
	d0.fails(EBUSY, XSTransactionStart, tx, "")
	d0.fails(ENOENT, XSRead, tx+100, "/t/a")
	d0.fails(ENOENT, XSTransactionEnd, 0, "T")
	d0.fails(EINVAL, XSTransactionEnd, tx, "X")
	// WATCH ignores tx_id (Xen's XS_FLAG_NOTID).
	d0.must(XSWatch, tx+100, "/t", "x")
	d0.must(XSTransactionEnd, tx, "T")
	checkAccounting(t, s)
}

// A transaction that touches more nodes than the transaction-nodes quota
// gets ENOSPC, and its commit ENOMEM, as Xen's does (trans->fail).
func TestTransactionNodesQuota(t *testing.T) {
	s := New(slog.New(slog.DiscardHandler))
	q := DefaultQuota
	q.TransactionNodes = 8
	s.SetQuota(q)
	setupDomain(t, s, 1)
	d1 := newClient(t, s, 1)
	tx := atoi(t, d1.must(XSTransactionStart, 0, ""))
	var err error
	for i := 0; i < 20 && err == nil; i++ {
		_, err = d1.req(XSWrite, tx, "data/n"+itoa(i), "v")
	}
	if err != ENOSPC {
		t.Fatalf("touching many nodes: %v, want ENOSPC", err)
	}
	before := dump(s)
	d1.fails(ENOMEM, XSTransactionEnd, tx, "T")
	if dump(s) != before {
		t.Fatal("a failed transaction changed the store")
	}
	if s.Stats().QuotaHits[QuotaTransactionNodes] != 1 {
		t.Error("not counted")
	}
}
