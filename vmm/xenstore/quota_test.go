package xenstore

import (
	"encoding/json"
	"strings"
	"testing"
)

// Each quota answers C xenstored's error, is logged once per connection
// (with the connection) and counted per connection, per domain and in
// all.
func TestQuotaErrors(t *testing.T) {
	small := Quota{Nodes: 4, NodeSize: 64, Perms: 2, PathLen: 40, Watches: 2, Transactions: 1, TransactionNodes: 6}
	tests := []struct {
		kind QuotaKind
		want Error
		fill func(c *client) // requests within the limit
		pass func(c *client) (string, error)
	}{
		{QuotaNodes, ENOSPC,
			func(c *client) { c.must(XSWrite, 0, "data/a/b", "") }, // data, shutdown, a, b
			func(c *client) (string, error) { return c.req(XSWrite, 0, "data/c", "") }},
		{QuotaNodeSize, ENOSPC, // 16 + 8 + 40 = 64
			func(c *client) { c.must(XSWrite, 0, "data", strings.Repeat("v", 40)) },
			func(c *client) (string, error) { return c.req(XSWrite, 0, "data", strings.Repeat("v", 41)) }},
		{QuotaPerms, ENOSPC,
			func(c *client) { c.must(XSSetPerms, 0, "data", "n1", "r0") },
			func(c *client) (string, error) { return c.req(XSSetPerms, 0, "data", "n1", "r0", "r2") }},
		{QuotaPathLen, EINVAL, // below /local/domain/1/
			func(c *client) { c.must(XSWrite, 0, "data/"+strings.Repeat("p", 35), "") },
			func(c *client) (string, error) { return c.req(XSRead, 0, "data/"+strings.Repeat("p", 36)) }},
		{QuotaWatches, E2BIG,
			func(c *client) { c.must(XSWatch, 0, "data", "1"); c.must(XSWatch, 0, "data", "2") },
			func(c *client) (string, error) { return c.req(XSWatch, 0, "data", "3") }},
		{QuotaTransactions, ENOSPC,
			func(c *client) { c.must(XSTransactionStart, 0, "") },
			func(c *client) (string, error) { return c.req(XSTransactionStart, 0, "") }},
	}
	for _, tt := range tests {
		t.Run(tt.kind.String(), func(t *testing.T) {
			s, rec := newRecorded()
			s.SetQuota(small)
			setupDomain(t, s, 1)
			c := newClient(t, s, 1)
			tt.fill(c)
			for i := 0; i < 3; i++ {
				if _, err := tt.pass(c); err != tt.want {
					t.Fatalf("past the quota: %v, want %v", err, tt.want)
				}
			}
			if n := rec.count("quota reached", "quota="+tt.kind.String(), "conn="+t.Name(), "domid=1"); n != 1 {
				t.Errorf("logged %d times, want once: %q", n, rec.recs)
			}
			st := s.Stats()
			if st.QuotaHits[tt.kind] != 3 {
				t.Errorf("aggregate hits %v", st.QuotaHits)
			}
			var conn *ConnStats
			for i := range st.Conns {
				if st.Conns[i].Name == t.Name() {
					conn = &st.Conns[i]
				}
			}
			if conn == nil || conn.QuotaHits[tt.kind] != 3 {
				t.Errorf("connection hits %+v", conn)
			}
			var dom *DomainStats
			for i := range st.Domains {
				if st.Domains[i].Domid == 1 {
					dom = &st.Domains[i]
				}
			}
			if dom == nil || dom.QuotaHits[tt.kind] != 3 {
				t.Errorf("domain hits %+v", dom)
			}
			// A second connection of the domain logs its own first hit.
			c2 := newClient(t, s, 1)
			c2.c.Name = "second"
			tt.fill(c2)
			tt.pass(c2)
			if n := rec.count("quota reached", "quota="+tt.kind.String(), "conn=second"); n > 1 {
				t.Errorf("second connection logged %d times", n)
			}
		})
	}
}

// dom0 is held to none of Xen's domain quotas.
func TestDom0Unlimited(t *testing.T) {
	s := New(nil)
	d0 := newClient(t, s, 0)
	d0.must(XSWrite, 0, "/big", strings.Repeat("x", 4000))
	d0.must(XSSetPerms, 0, "/big", "n0", "r1", "r2", "r3", "r4", "r5", "r6")
	for i := 0; i < 1100; i++ {
		d0.must(XSWrite, 0, "/many/n"+itoa(i), "")
	}
	if s.Stats().QuotaHits[QuotaNodes] != 0 {
		t.Error("dom0 hit the node quota")
	}
}

// Issue #8: watch events past about 1,000 queued were dropped silently for
// dom0 connections. They are still dropped past the quota (as C xenstored
// drops a domain's events past its memory quota) but counted, logged, and
// shown in Stats.
func TestWatchEventOverflow(t *testing.T) {
	s, rec := newRecorded()
	watcher := newClient(t, s, 0)
	writer := newClient(t, s, 0)
	writer.c.Name = "writer"
	watcher.must(XSWatch, 0, "/w", "tok")
	for i := 0; i < 1500; i++ {
		writer.must(XSWrite, 0, "/w/n"+itoa(i), "v")
	}
	st := s.Stats()
	// 1 registration event + 1500 changes; the quota keeps 1024.
	if st.EventsDropped != 1501-1024 || st.QuotaHits[QuotaEvents] != 1501-1024 {
		t.Errorf("dropped %d (hits %v), want %d", st.EventsDropped, st.QuotaHits, 1501-1024)
	}
	if n := rec.count("quota reached", "quota=watch-events", "conn="+t.Name()); n != 1 {
		t.Errorf("overflow logged %d times, want once", n)
	}
	if got := len(watcher.c.pending()); got != 1024 {
		t.Errorf("%d events queued, want 1024", got)
	}
	// An event equal to one still queued is not queued twice (Xen's
	// send_event), so a node written in a loop cannot fill the queue.
	watcher.must(XSWatch, 0, "/v", "tok")
	for i := 0; i < 5000; i++ {
		writer.must(XSWrite, 0, "/v/same", itoa(i))
	}
	if got := len(watcher.c.pending()); got != 2 {
		t.Errorf("%d events queued for one node written 5000 times", got)
	}
	// The byte bound holds for long paths.
	l := s.Limits()
	l.Privileged.OutputBytes = 4096
	s.SetLimits(l)
	long := "/w/" + strings.Repeat("x", 1000)
	for i := 0; i < 10; i++ {
		writer.must(XSWrite, 0, long+itoa(i), "")
	}
	st = s.Stats()
	for _, cs := range st.Conns {
		if cs.Name == t.Name() && (cs.QueuedBytes > 4096 || cs.QuotaHits[QuotaOutput] == 0) {
			t.Errorf("byte bound: %+v", cs)
		}
	}
}

func TestSoftQuota(t *testing.T) {
	s, rec := newRecorded()
	l := s.Limits()
	l.GuestSoft.Nodes = 3
	s.SetLimits(l)
	setupDomain(t, s, 1)
	d1 := newClient(t, s, 1)
	d1.must(XSWrite, 0, "data/a", "")
	d1.must(XSWrite, 0, "data/b", "") // 4 > 3: warned, allowed
	d1.must(XSWrite, 0, "data/c", "")
	if st := s.Stats(); st.SoftQuotaHits[QuotaNodes] != 2 || st.QuotaHits[QuotaNodes] != 0 {
		t.Errorf("soft hits %v hard %v", st.SoftQuotaHits, st.QuotaHits)
	}
	if rec.count("soft quota passed", "quota=nodes") != 1 {
		t.Errorf("log %q", rec.recs)
	}
}

func TestStatsJSON(t *testing.T) {
	s := New(nil)
	setupDomain(t, s, 1)
	d1 := newClient(t, s, 1)
	d1.must(XSWatch, 0, "data", "t")
	s.SetQuota(Quota{Watches: 1})
	d1.req(XSWatch, 0, "data", "u")
	b, err := json.Marshal(s.Stats())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"QuotaHits":{"watches":1}`) {
		t.Errorf("stats JSON: %s", b)
	}
	for _, k := range []QuotaKind{QuotaNodes, QuotaClientConnections} {
		var back QuotaKind
		if err := back.UnmarshalText([]byte(k.String())); err != nil || back != k {
			t.Errorf("%v round trip: %v %v", k, back, err)
		}
	}
}

// Issue #8: under a parent the caller may not read, a missing node
// answered ENOENT and an existing one EACCES. Xen's xenstored answers
// EACCES for both (errno_from_parents in core.c): the answer must not
// tell whether a node the caller may not see exists.
func TestExistenceOracle(t *testing.T) {
	s := New(nil)
	setupDomain(t, s, 1)
	setupDomain(t, s, 2)
	s.Write("/local/domain/1/data/secret", "s")
	d2 := newClient(t, s, 2)
	tests := []struct {
		typ  uint32
		args []string
		want Error
	}{
		{XSRead, []string{"/local/domain/1/control/shutdown"}, EACCES},
		{XSRead, []string{"/local/domain/1/control/missing"}, EACCES},
		{XSRead, []string{"/local/domain/1/missing/deeper"}, EACCES},
		{XSDirectory, []string{"/local/domain/1/data"}, EACCES},
		{XSDirectory, []string{"/local/domain/1/nodata"}, EACCES},
		{XSGetPerms, []string{"/local/domain/1/data/secret"}, EACCES},
		{XSGetPerms, []string{"/local/domain/1/data/nosecret"}, EACCES},
		{XSDirectoryPart, []string{"/local/domain/1/data/secret", "0"}, EACCES},
		{XSDirectoryPart, []string{"/local/domain/1/data/nosecret", "0"}, EACCES},
		// Writing: an existing node, a missing one, MKDIR and RM alike.
		{XSWrite, []string{"/local/domain/1/data/secret", "x"}, EACCES},
		{XSWrite, []string{"/local/domain/1/data/nosecret", "x"}, EACCES},
		{XSMkdir, []string{"/local/domain/1/data/secret"}, EACCES},
		{XSMkdir, []string{"/local/domain/1/data/nosecret"}, EACCES},
		{XSRm, []string{"/local/domain/1/data/secret"}, EACCES},
		{XSRm, []string{"/local/domain/1/data/nosecret"}, EACCES},
		{XSSetPerms, []string{"/local/domain/1/data/secret", "n2"}, EACCES},
		{XSSetPerms, []string{"/local/domain/1/data/nosecret", "n2"}, EACCES},
		// Where the parent is readable, a missing node is ENOENT.
		{XSRead, []string{"/local/domain/2/control/missing"}, ENOENT},
		{XSRead, []string{"control/missing"}, ENOENT},
	}
	for _, tt := range tests {
		if _, err := d2.req(tt.typ, 0, tt.args...); err != tt.want {
			t.Errorf("%s %v: %v, want %v", TypeName(tt.typ), tt.args, err, tt.want)
		}
	}
	// Same inside a transaction.
	tx := atoi(t, d2.must(XSTransactionStart, 0, ""))
	d2.fails(EACCES, XSRead, tx, "/local/domain/1/control/missing")
	d2.fails(EACCES, XSRead, tx, "/local/domain/1/control/shutdown")
}

// Issue #8: paths without their terminating NUL were accepted; Xen answers
// EINVAL. Which strings must be terminated follows C xenstored: onearg()
// for READ, MKDIR, RM, DIRECTORY, GET_PERMS, TRANSACTION_END,
// GET_DOMAIN_PATH, IS_DOMAIN_INTRODUCED, RELEASE, RESUME (exactly one NUL,
// at the end); one NUL for WRITE (after the path); two NUL-terminated
// strings for WATCH and UNWATCH, exactly two NULs for DIRECTORY_PART, at
// least two for SET_PERMS, three strings for INTRODUCE, a terminated
// command for CONTROL.
func TestMissingNUL(t *testing.T) {
	s := New(nil)
	s.Introduce = func(uint32, uint64, uint32) error { return nil }
	s.Write("/a/b", "v")
	d0 := newClient(t, s, 0)
	tx := atoi(t, d0.must(XSTransactionStart, 0, ""))
	tests := []struct {
		typ     uint32
		tx      uint32
		payload string
		want    Error // "" for success
	}{
		{XSRead, 0, "/a/b", EINVAL},
		{XSRead, 0, "/a/b\x00", ""},
		{XSRead, 0, "/a/b\x00\x00", EINVAL},
		{XSRead, 0, "", EINVAL},
		{XSRead, 0, "\x00", EINVAL}, // empty path
		{XSGetPerms, 0, "/a/b", EINVAL},
		{XSDirectory, 0, "/a", EINVAL},
		{XSDirectory, 0, "/a\x00", ""},
		{XSMkdir, 0, "/a/c", EINVAL},
		{XSRm, 0, "/a/c", EINVAL},
		{XSWrite, 0, "/a/b", EINVAL},
		{XSWrite, 0, "/a/b\x00", ""},
		{XSWrite, 0, "/a/b\x00with\x00nuls", ""},
		{XSSetPerms, 0, "/a/b", EINVAL},
		{XSSetPerms, 0, "/a/b\x00n0", EINVAL},
		{XSSetPerms, 0, "/a/b\x00n0\x00", ""},
		{XSWatch, 0, "/a\x00tok", EINVAL},
		{XSWatch, 0, "/a", EINVAL},
		{XSWatch, 0, "/a\x00tok\x00", ""},
		{XSWatch, 0, "/a\x00tok\x003\x00", EINVAL}, // no watch depth (not advertised)
		{XSUnwatch, 0, "/a\x00tok", EINVAL},
		{XSUnwatch, 0, "/a\x00tok\x00", ""},
		{XSDirectoryPart, 0, "/a\x000", EINVAL},
		{XSDirectoryPart, 0, "/a\x000\x00", ""},
		{XSGetDomainPath, 0, "3", EINVAL},
		{XSGetDomainPath, 0, "3\x00", ""},
		{XSIsDomainIntroduced, 0, "3", EINVAL},
		{XSRelease, 0, "3", EINVAL},
		{XSResume, 0, "3", EINVAL},
		{XSIntroduce, 0, "3\x00100\x005", EINVAL},
		{XSIntroduce, 0, "3\x00100\x005\x00", ""},
		{XSControl, 0, "help", EINVAL},
		{XSControl, 0, "help\x00", ""},
		{XSTransactionEnd, tx, "T", EINVAL},
		{XSTransactionEnd, tx, "T\x00", ""},
		// TRANSACTION_START and RESET_WATCHES take no arguments: Xen
		// does not look at their payload.
		{XSTransactionStart, 0, "", ""},
		{XSResetWatches, 0, "junk", ""},
	}
	for _, tt := range tests {
		var r Msg
		d0.c.Handle(Msg{Type: tt.typ, TxID: tt.tx, Payload: []byte(tt.payload)}, func(m Msg) { r = m })
		got := Error("")
		if r.Type == XSError {
			got = Error(strings.TrimSuffix(string(r.Payload), "\x00"))
		}
		if got != tt.want {
			t.Errorf("%s %q: %q, want %q", TypeName(tt.typ), tt.payload, got, tt.want)
		}
	}
}

func TestControl(t *testing.T) {
	s, rec := newRecorded()
	setupDomain(t, s, 1)
	d0 := newClient(t, s, 0)
	d1 := newClient(t, s, 1)
	d1.fails(EACCES, XSControl, 0, "quota") // dom0 only (XS_FLAG_PRIV)
	d1.fails(EACCES, XSControl, 0, "x")
	d0.fails(EINVAL, XSControl, 0, "bogus") // Xen: unknown commands are EINVAL
	d0.fails(EINVAL, XSControl, 0, "memreport")

	got := d0.must(XSControl, 0, "quota")
	for _, line := range []string{"Quota settings:\n", "nodes            :     1000 Nodes per domain\n",
		"transactions     :       10 ", "watches          :      128 ", "node-size        :     2048 "} {
		if !strings.Contains(got, line) {
			t.Errorf("quota lacks %q:\n%s", line, got)
		}
	}
	if !strings.HasSuffix(got, "\n\x00") {
		t.Errorf("quota reply not NUL-terminated: %q", got)
	}
	d0.must(XSControl, 0, "quota", "set", "watches", "1")
	d0.fails(EINVAL, XSControl, 0, "quota", "set", "watches", "0")
	d0.fails(EINVAL, XSControl, 0, "quota", "set", "bogus", "3")
	if s.Limits().Guest.Watches != 1 {
		t.Errorf("quota set: %+v", s.Limits().Guest)
	}
	d1.must(XSWatch, 0, "data", "a")
	d1.fails(E2BIG, XSWatch, 0, "data", "b")
	got = d0.must(XSControl, 0, "quota", "1")
	for _, line := range []string{"Domain 1:\n", "nodes            :        2 (max        2)\n", "watches          :        1 (max        2)\n"} {
		if !strings.Contains(got, line) {
			t.Errorf("quota 1 lacks %q:\n%s", line, got)
		}
	}
	d0.fails(ENOENT, XSControl, 0, "quota", "7")
	if got = d0.must(XSControl, 0, "quota", "max"); !strings.Contains(got, "watches          :        2\n") {
		t.Errorf("quota max:\n%s", got)
	}
	d0.must(XSControl, 0, "quota", "max", "-r")

	if got = d0.must(XSControl, 0, "quota-soft"); !strings.Contains(got, "nodes            :        0 ") {
		t.Errorf("quota-soft:\n%s", got)
	}
	d0.must(XSControl, 0, "quota-soft", "set", "nodes", "900")
	d0.fails(EINVAL, XSControl, 0, "quota-soft", "max")
	if s.Limits().GuestSoft.Nodes != 900 {
		t.Error("quota-soft set")
	}

	if got = d0.must(XSControl, 0, "log"); got != "Log switch settings:\nio      : on\nacc     : off\ntracing : off\n\x00" {
		t.Errorf("log: %q", got)
	}
	d0.must(XSControl, 0, "log", "on")
	d0.must(XSControl, 0, "log", "+acc")
	d0.fails(EINVAL, XSControl, 0, "log", "+nosuch")
	d0.must(XSRead, 0, "/local")
	if rec.count("xenstore: request", "type=READ", "conn="+t.Name()) != 1 {
		t.Errorf("io trace missing: %q", rec.recs)
	}
	d0.must(XSControl, 0, "log", "off")
	d0.must(XSRead, 0, "/local")
	if rec.count("xenstore: request", "type=READ") != 1 {
		t.Error("traced after log off")
	}

	d0.must(XSControl, 0, "print", "hello")
	if rec.count("control print", "msg=hello") != 1 {
		t.Error("print not logged")
	}
	if got = d0.must(XSControl, 0, "help"); !strings.Contains(got, "quota-soft      [set <name> <val>]\n") {
		t.Errorf("help: %q", got)
	}
	// check repairs the accounting.
	s.mu.Lock()
	s.owned[1] += 5
	s.mu.Unlock()
	d0.must(XSControl, 0, "check")
	checkAccounting(t, s)
}
