package xenstore

import (
	"fmt"
	"sort"

	"github.com/xenresume/xenresume/vmm/timeline"
)

// QuotaKind names one limit a client can reach. Its String is the name
// C xenstored gives the quota where it has one ("nodes", "watches", ...):
// the names XS_CONTROL "quota" reports and "quota set" takes.
type QuotaKind int

// The limits. Each Quota field has a kind; the last two are the socket
// listener's (Limits.MaxConnections, Limits.MaxClientConnections).
const (
	QuotaNodes             QuotaKind = iota // nodes a domain owns: ENOSPC
	QuotaNodeSize                           // bytes of one node as Xen counts them: ENOSPC
	QuotaPerms                              // permission entries of one node: ENOSPC
	QuotaPathLen                            // path bytes below /local/domain/<id>/: EINVAL
	QuotaWatches                            // watches of one connection: E2BIG
	QuotaTransactions                       // open transactions of one connection: ENOSPC
	QuotaTransactionNodes                   // nodes one transaction touches: ENOSPC, and its commit fails ENOMEM
	QuotaOutstanding                        // replies queued for a ring but not in it: the ring is not read
	QuotaEvents                             // watch events queued for one connection: more are dropped
	QuotaOutput                             // bytes of watch events queued for one connection: more are dropped
	QuotaConnections                        // socket connections at once: more are accepted and closed
	QuotaClientConnections                  // socket connections of one client process: likewise
	numQuotaKinds
)

var quotaInfo = [numQuotaKinds]struct{ name, descr string }{
	QuotaNodes:             {"nodes", "Nodes per domain"},
	QuotaNodeSize:          {"node-size", "Max. size of a node"},
	QuotaPerms:             {"node-permissions", "Max. number of permissions per node"},
	QuotaPathLen:           {"path-max", "Max. length of a node path"},
	QuotaWatches:           {"watches", "Watches per connection"},
	QuotaTransactions:      {"transactions", "Active transactions per connection"},
	QuotaTransactionNodes:  {"transaction-nodes", "Max. number of accessed nodes per transaction"},
	QuotaOutstanding:       {"outstanding", "Outstanding requests per ring"},
	QuotaEvents:            {"watch-events", "Queued watch events per connection"},
	QuotaOutput:            {"output-bytes", "Queued watch event bytes per connection"},
	QuotaConnections:       {"connections", "Socket connections"},
	QuotaClientConnections: {"client-connections", "Socket connections per client process"},
}

func (k QuotaKind) String() string {
	if k >= 0 && k < numQuotaKinds {
		return quotaInfo[k].name
	}
	return fmt.Sprintf("quota(%d)", int(k))
}

// MarshalText names the kind, so maps keyed by it marshal readably.
func (k QuotaKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText parses a kind's name.
func (k *QuotaKind) UnmarshalText(b []byte) error {
	for i := range numQuotaKinds {
		if quotaInfo[i].name == string(b) {
			*k = i
			return nil
		}
	}
	return fmt.Errorf("xenstore: unknown quota %q", b)
}

// Quota is a set of limits for one class of client. A field of 0 means no
// limit. The error a client gets when it would pass a limit is C
// xenstored's (tools/xenstored/core.c, domain.c, transaction.c, watch.c).
type Quota struct {
	// Nodes bounds the nodes a domain owns (Xen "nodes", default 1000;
	// ENOSPC). A transaction's commit is refused whole, with ENOSPC,
	// if its nodes would pass it.
	Nodes int
	// NodeSize bounds one node as Xen sizes it: a 16-byte header, 8
	// bytes per permission, the value, and each child's name with its
	// NUL (Xen "node-size", default 2048; ENOSPC).
	NodeSize int
	// Perms bounds the permission entries of one node (Xen
	// "node-permissions", default 5; ENOSPC).
	Perms int
	// PathLen bounds a path's length below /local/domain/<id>/, or the
	// whole path elsewhere (Xen "path-max", default 2048; EINVAL).
	PathLen int
	// Watches bounds one connection's watches (Xen "watches", default
	// 128 per domain; E2BIG).
	Watches int
	// Transactions bounds one connection's open transactions (Xen
	// "transactions", default 10; ENOSPC).
	Transactions int
	// TransactionNodes bounds the nodes one transaction reads or
	// writes (Xen "transaction-nodes", default 1024): the request that
	// passes it gets ENOSPC and the transaction fails, its commit
	// answering ENOMEM, as Xen's does.
	TransactionNodes int
	// Outstanding bounds a ring's replies that wait for room in the
	// ring: past it the ring's further requests wait (Xen
	// "outstanding", default 20; no error, the guest is simply not
	// read). Socket clients are served one request at a time.
	Outstanding int
	// Events bounds the watch events queued for one connection; more
	// are dropped, counted and logged, as C xenstored drops a domain's
	// events past its memory quota. An event equal to one already
	// queued is not queued again (Xen does the same).
	Events int
	// OutputBytes bounds the bytes of those queued events.
	OutputBytes int
}

// Get returns the field for kind k (0 for the listener's kinds).
func (q Quota) Get(k QuotaKind) int {
	if p := q.field(k); p != nil {
		return *p
	}
	return 0
}

// Set sets the field for kind k.
func (q *Quota) Set(k QuotaKind, v int) error {
	p := q.field(k)
	if p == nil {
		return fmt.Errorf("xenstore: %v is not a per-connection quota", k)
	}
	if v < 0 {
		return fmt.Errorf("xenstore: quota %v of %d", k, v)
	}
	*p = v
	return nil
}

func (q *Quota) field(k QuotaKind) *int {
	switch k {
	case QuotaNodes:
		return &q.Nodes
	case QuotaNodeSize:
		return &q.NodeSize
	case QuotaPerms:
		return &q.Perms
	case QuotaPathLen:
		return &q.PathLen
	case QuotaWatches:
		return &q.Watches
	case QuotaTransactions:
		return &q.Transactions
	case QuotaTransactionNodes:
		return &q.TransactionNodes
	case QuotaOutstanding:
		return &q.Outstanding
	case QuotaEvents:
		return &q.Events
	case QuotaOutput:
		return &q.OutputBytes
	}
	return nil
}

// DefaultQuota is the quota of unprivileged domains: C xenstored's hard
// quotas (hard_quotas[] in tools/xenstored/domain.c), plus the bound on
// queued watch events (oxenstored's quota-maxwatchevents, 1024) and
// their bytes.
var DefaultQuota = Quota{
	Nodes:            1000,
	NodeSize:         2048,
	Perms:            5,
	PathLen:          RelPathMax,
	Watches:          128,
	Transactions:     10,
	TransactionNodes: 1024,
	Outstanding:      20,
	Events:           1024,
	OutputBytes:      512 << 10,
}

// DefaultPrivilegedQuota is the quota of dom0's connections (socket
// clients and in-process watchers). C xenstored holds dom0 to none of
// its quotas; these only keep one client from exhausting the host: the
// transaction limit Xen gives domains, and bounds on watches and queued
// events.
var DefaultPrivilegedQuota = Quota{
	Watches:      4096,
	Transactions: 10,
	Events:       1024,
	OutputBytes:  512 << 10,
}

// Limits is everything the store bounds. The store's own API (Write,
// Read, Update, ...) is not limited.
type Limits struct {
	// Guest holds unprivileged domains, that is their rings.
	Guest Quota
	// GuestSoft holds warning levels for the same: passing one is
	// logged once per connection and counted, nothing is refused (Xen's
	// quota-soft). All 0, off, by default.
	GuestSoft Quota
	// Privileged holds dom0's connections: sockets and in-process
	// clients from NewConn(0, ...).
	Privileged Quota
	// MaxConnections bounds the socket connections served at once;
	// past it a new one is accepted, closed, logged and counted.
	MaxConnections int
	// MaxClientConnections bounds the socket connections of one client
	// process (by SO_PEERCRED pid) likewise.
	MaxClientConnections int
}

// DefaultLimits returns the limits a new store starts with.
func DefaultLimits() Limits {
	return Limits{
		Guest:                DefaultQuota,
		Privileged:           DefaultPrivilegedQuota,
		MaxConnections:       256,
		MaxClientConnections: 64,
	}
}

// Stats is a snapshot of the store's size and of the limits its clients
// reached: what `runvm list -l` or the control API can show.
type Stats struct {
	Nodes        int // nodes in the tree
	Connections  int // open connections: rings, sockets, in-process watchers
	Watches      int // watches of all connections
	Transactions int // open transactions of all connections
	// QuotaHits counts the requests refused (or events dropped, or
	// socket connections refused) at each limit since the store began.
	QuotaHits map[QuotaKind]uint64
	// SoftQuotaHits counts passes of the GuestSoft warning levels.
	SoftQuotaHits map[QuotaKind]uint64
	// EventsDropped counts watch events dropped at the Events and
	// OutputBytes limits (also in QuotaHits).
	EventsDropped uint64
	// AcceptRetries counts transient accept errors (EMFILE, ENFILE,
	// ECONNABORTED, ENOBUFS, ENOMEM) the socket listener backed off
	// from.
	AcceptRetries uint64
	Domains       []DomainStats // by domid
	Conns         []ConnStats   // by name
}

// DomainStats is one domain's share of Stats. Its quota hits include
// those of its connections that have closed; the entry goes when the
// domain is released.
type DomainStats struct {
	Domid        uint32
	Nodes        int // nodes it owns
	Watches      int
	Transactions int
	QuotaHits    map[QuotaKind]uint64
}

// ConnStats is one open connection's share of Stats.
type ConnStats struct {
	Name          string
	Domid         uint32
	Watches       int
	Transactions  int
	QueuedEvents  int
	QueuedBytes   int
	EventsDropped uint64
	QuotaHits     map[QuotaKind]uint64
}

// hitCounts is a counter per kind.
type hitCounts [numQuotaKinds]uint64

func (h *hitCounts) m() map[QuotaKind]uint64 {
	m := map[QuotaKind]uint64{}
	for k, n := range h {
		if n > 0 {
			m[QuotaKind(k)] = n
		}
	}
	return m
}

// domainAcc is what the store keeps per domain for XS_CONTROL "quota" and
// Stats: quota hits, and the highest value seen of each kind.
type domainAcc struct {
	hits hitCounts
	max  [numQuotaKinds]int
}

func (s *Store) acc(domid uint32) *domainAcc {
	a := s.doms[domid]
	if a == nil {
		a = &domainAcc{}
		s.doms[domid] = a
	}
	return a
}

// limit returns c's hard and soft limit of kind k; 0 is none. The store's
// own connections have none.
func (c *Conn) limit(k QuotaKind) (hard, soft int) {
	if c.internal {
		return 0, 0
	}
	l := c.s.limits.Load()
	if c.Domid == 0 {
		return l.Privileged.Get(k), 0
	}
	return l.Guest.Get(k), l.GuestSoft.Get(k)
}

// over reports whether a request that would bring c to n of kind k passes
// c's limit; if so the hit is counted and logged (once per connection and
// kind). Passing a soft limit is counted and logged the same way but not
// refused. s.mu held.
func (c *Conn) over(k QuotaKind, n int) bool {
	if c.internal {
		return false
	}
	hard, soft := c.limit(k)
	a := c.s.acc(c.Domid)
	a.max[k] = max(a.max[k], n)
	if c.Domid != 0 {
		c.s.maxSeen[k] = max(c.s.maxSeen[k], n)
	}
	if hard > 0 && n > hard {
		c.hit(k, n, hard)
		return true
	}
	if soft > 0 && n > soft {
		c.soft[k]++
		c.s.softHits[k]++
		if !c.softLogged[k] || c.s.trace.accOn() {
			c.softLogged[k] = true
			c.s.log.Warn("xenstore: soft quota passed", "conn", c.Name, "domid", c.Domid, "quota", k.String(), "limit", soft, "value", n)
		}
	}
	return false
}

// hit counts and logs a hard limit reached. s.mu held.
func (c *Conn) hit(k QuotaKind, n, limit int) {
	c.hits[k]++
	c.s.hits[k]++
	c.s.acc(c.Domid).hits[k]++
	if !c.logged[k] || c.s.trace.accOn() {
		c.logged[k] = true
		c.s.log.Warn("xenstore: quota reached", "conn", c.Name, "domid", c.Domid, "quota", k.String(), "limit", limit, "value", n)
	}
}

// Stats returns a snapshot of the store's size and quota counters.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{
		QuotaHits:     s.hits.m(),
		SoftQuotaHits: s.softHits.m(),
		EventsDropped: s.hits[QuotaEvents] + s.hits[QuotaOutput],
		AcceptRetries: s.acceptRetries,
		Connections:   len(s.conns),
	}
	doms := map[uint32]*DomainStats{}
	dom := func(id uint32) *DomainStats {
		d := doms[id]
		if d == nil {
			d = &DomainStats{Domid: id, Nodes: s.owned[id]}
			if a := s.doms[id]; a != nil {
				d.QuotaHits = a.hits.m()
			}
			doms[id] = d
		}
		return d
	}
	for id, n := range s.owned {
		st.Nodes += n
		dom(id)
	}
	for id := range s.doms {
		dom(id)
	}
	for c := range s.conns {
		cs := ConnStats{
			Name: c.Name, Domid: c.Domid, Watches: len(c.watches), Transactions: len(c.txns),
			QueuedEvents: len(c.events), QueuedBytes: c.evBytes,
			EventsDropped: c.hits[QuotaEvents] + c.hits[QuotaOutput], QuotaHits: c.hits.m(),
		}
		st.Conns = append(st.Conns, cs)
		st.Watches += cs.Watches
		st.Transactions += cs.Transactions
		d := dom(c.Domid)
		d.Watches += cs.Watches
		d.Transactions += cs.Transactions
	}
	for _, d := range doms {
		st.Domains = append(st.Domains, *d)
	}
	sort.Slice(st.Domains, func(i, j int) bool { return st.Domains[i].Domid < st.Domains[j].Domid })
	sort.Slice(st.Conns, func(i, j int) bool { return st.Conns[i].Name < st.Conns[j].Name })
	return st
}

// Limits returns the store's limits.
func (s *Store) Limits() Limits { return *s.limits.Load() }

// SetLimits replaces the store's limits; they apply to the next request
// of every connection, open ones included.
func (s *Store) SetLimits(l Limits) { s.updateLimits(func(old *Limits) { *old = l }) }

// SetQuota replaces the quota of unprivileged domains (Limits.Guest).
func (s *Store) SetQuota(q Quota) { s.updateLimits(func(l *Limits) { l.Guest = q }) }

// updateLimits changes a copy of the limits and publishes it.
func (s *Store) updateLimits(fn func(*Limits)) {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	l := *s.limits.Load()
	fn(&l)
	s.limits.Store(&l)
}

// SetTimeline makes every request the store answers an instant on r's
// xenstore track (type, path, connection, error); nil stops it.
func (s *Store) SetTimeline(r *timeline.Recorder) { s.timeline.Store(r) }
