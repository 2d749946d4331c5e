package xenstore

import (
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Perm is one entry of a node's permission list: an access letter ('n'
// none, 'r' read, 'w' write, 'b' both) and a domain. The first entry of a
// list names the owner, and its letter is the access of every domain not
// listed.
type Perm struct {
	Access byte
	Domid  uint32
}

func (p Perm) String() string { return fmt.Sprintf("%c%d", p.Access, p.Domid) }

// ParsePerm parses "r1", "b0", ....
func ParsePerm(s string) (Perm, error) {
	if len(s) < 2 || !strings.ContainsRune("nrwb", rune(s[0])) {
		return Perm{}, EINVAL
	}
	id, err := strconv.ParseUint(s[1:], 10, 16)
	if err != nil {
		return Perm{}, EINVAL
	}
	return Perm{Access: s[0], Domid: uint32(id)}, nil
}

// Quota bounds what one domain (other than dom0) may hold.
type Quota struct {
	Nodes        int // nodes it owns
	NodeSize     int // bytes of one node's value
	Watches      int // per connection
	Transactions int // open at once, per connection
	Events       int // watch events queued for it before more are dropped
}

// DefaultQuota is the quota of Xen's xenstored defaults.
var DefaultQuota = Quota{Nodes: 1000, NodeSize: 2048, Watches: 128, Transactions: 10, Events: 1024}

type node struct {
	value    []byte
	perms    []Perm
	children map[string]*node
	gen      uint64 // store generation of the last change to it or its child list
}

func (n *node) clone() *node {
	c := &node{value: n.value, perms: n.perms, gen: n.gen}
	if len(n.children) > 0 {
		c.children = make(map[string]*node, len(n.children))
		for k, v := range n.children {
			c.children[k] = v.clone()
		}
	}
	return c
}

func (n *node) childNames() []string {
	names := make([]string, 0, len(n.children))
	for k := range n.children {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// countOwned counts the nodes below and including n owned by domid.
func (n *node) countOwned(domid uint32) int {
	c := 0
	if n.perms[0].Domid == domid {
		c++
	}
	for _, ch := range n.children {
		c += ch.countOwned(domid)
	}
	return c
}

func split(path string) []string {
	if path == "/" {
		return nil
	}
	return strings.Split(path[1:], "/")
}

func parent(path string) string {
	i := strings.LastIndexByte(path, '/')
	if i <= 0 {
		return "/"
	}
	return path[:i]
}

func lookup(root *node, path string) *node {
	n := root
	for _, c := range split(path) {
		if n = n.children[c]; n == nil {
			return nil
		}
	}
	return n
}

// isBelow reports whether path is base or a descendant of it.
func isBelow(path, base string) bool {
	return path == base || base == "/" || strings.HasPrefix(path, base+"/")
}

// Store is the xenstore tree and everything connected to it.
type Store struct {
	mu     sync.Mutex
	root   *node
	gen    uint64
	nextTx uint32
	conns  map[*Conn]struct{}
	doms   map[uint32]*domainState
	quota  Quota
	log    *slog.Logger

	// Introduce is called for XS_INTRODUCE from dom0: it must connect
	// the domain's ring (gfn, event channel) to the store.
	Introduce func(domid uint32, gfn uint64, port uint32) error
}

type domainState struct {
	shutdown bool
}

// New returns a store holding /, /local and /local/domain, owned by dom0.
func New(log *slog.Logger) *Store {
	if log == nil {
		log = slog.Default()
	}
	s := &Store{conns: map[*Conn]struct{}{}, doms: map[uint32]*domainState{}, quota: DefaultQuota, log: log}
	s.root = &node{perms: []Perm{{'n', 0}}}
	for _, p := range []string{"/local", "/local/domain", "/tool"} {
		s.create(s.root, p, nil, []Perm{{'n', 0}})
	}
	return s
}

// SetQuota replaces the per-domain quota.
func (s *Store) SetQuota(q Quota) {
	s.mu.Lock()
	s.quota = q
	s.mu.Unlock()
}

// create makes path and any missing parents in root, new nodes getting
// perms (nil: inherit the parent's). It returns the node.
func (s *Store) create(root *node, path string, value []byte, perms []Perm) *node {
	n := root
	for _, c := range split(path) {
		ch := n.children[c]
		if ch == nil {
			p := perms
			if p == nil {
				p = n.perms
			}
			ch = &node{perms: p}
			if n.children == nil {
				n.children = map[string]*node{}
			}
			n.children[c] = ch
			s.gen++
			n.gen = s.gen
			ch.gen = s.gen
		}
		n = ch
	}
	if value != nil {
		n.value = value
		s.gen++
		n.gen = s.gen
	}
	return n
}

// access is what a domain may do to a node.
type access struct{ read, write, owner bool }

func permFor(domid uint32, n *node) access {
	if domid == 0 {
		return access{true, true, true}
	}
	if n.perms[0].Domid == domid {
		return access{true, true, true}
	}
	a := n.perms[0].Access
	for _, p := range n.perms[1:] {
		if p.Domid == domid {
			a = p.Access
			break
		}
	}
	return access{read: a == 'r' || a == 'b', write: a == 'w' || a == 'b'}
}

// DomainPath returns /local/domain/<domid>.
func DomainPath(domid uint32) string { return "/local/domain/" + strconv.FormatUint(uint64(domid), 10) }

// Write sets path to value as dom0, creating it and its parents. For the
// toolstack's own use.
func (s *Store) Write(path, value string) error {
	_, err := s.do(0, 0, Msg{Type: XSWrite, Payload: []byte(path + "\x00" + value)})
	return err
}

// Read returns path's value as dom0 sees it.
func (s *Store) Read(path string) (string, error) {
	b, err := s.do(0, 0, Msg{Type: XSRead, Payload: []byte(path + "\x00")})
	return string(b), err
}

// Mkdir creates path as dom0.
func (s *Store) Mkdir(path string) error {
	_, err := s.do(0, 0, Msg{Type: XSMkdir, Payload: []byte(path + "\x00")})
	return err
}

// Rm removes path as dom0.
func (s *Store) Rm(path string) error {
	_, err := s.do(0, 0, Msg{Type: XSRm, Payload: []byte(path + "\x00")})
	return err
}

// SetPerms sets path's permissions as dom0.
func (s *Store) SetPerms(path string, perms ...Perm) error {
	p := path + "\x00"
	for _, pm := range perms {
		p += pm.String() + "\x00"
	}
	_, err := s.do(0, 0, Msg{Type: XSSetPerms, Payload: []byte(p)})
	return err
}

// GetPerms returns path's permissions.
func (s *Store) GetPerms(path string) ([]Perm, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := lookup(s.root, path)
	if n == nil {
		return nil, ENOENT
	}
	return append([]Perm(nil), n.perms...), nil
}

// do runs one request on behalf of domid outside any connection.
func (s *Store) do(domid uint32, tx uint32, m Msg) ([]byte, error) {
	c := &Conn{s: s, Domid: domid, internal: true}
	s.mu.Lock()
	defer s.mu.Unlock()
	m.TxID = tx
	return c.handleLocked(m)
}

// IntroduceDomain records domid as introduced (XS_INTRODUCE's effect on the
// store) and fires @introduceDomain.
func (s *Store) IntroduceDomain(domid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.doms[domid] = &domainState{}
	s.fireSpecial("@introduceDomain")
}

// DomainShutdown fires @releaseDomain for a domain that shut down (what
// xenstored does on VIRQ_DOM_EXC), once until it is resumed.
func (s *Store) DomainShutdown(domid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.doms[domid]; d != nil && !d.shutdown {
		d.shutdown = true
		s.fireSpecial("@releaseDomain")
	}
}

// ReleaseDomain forgets a domain: its connections lose their watches and
// transactions, and @releaseDomain fires.
func (s *Store) ReleaseDomain(domid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseLocked(domid)
}

func (s *Store) releaseLocked(domid uint32) {
	delete(s.doms, domid)
	for c := range s.conns {
		if c.Domid == domid {
			c.watches, c.txns = nil, nil
		}
	}
	s.fireSpecial("@releaseDomain")
}

// Introduced reports whether domid is introduced.
func (s *Store) Introduced(domid uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.doms[domid] != nil
}

// ResumeDomain re-arms @releaseDomain for a domain that was shut down and
// resumed (XS_RESUME's effect).
func (s *Store) ResumeDomain(domid uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.doms[domid]
	if d == nil {
		return ENOENT
	}
	d.shutdown = false
	return nil
}

// Update runs fn in a transaction as dom0, retrying while it conflicts.
// fn reads and writes through the given functions.
func (s *Store) Update(fn func(read func(path string) (string, error), write func(path, value string) error) error) error {
	c := &Conn{s: s, Domid: 0, internal: true}
	for {
		s.mu.Lock()
		b, err := c.handleLocked(Msg{Type: XSTransactionStart, Payload: []byte{0}})
		s.mu.Unlock()
		if err != nil {
			return err
		}
		tx, _ := strconv.ParseUint(strings.TrimSuffix(string(b), "\x00"), 10, 32)
		do := func(m Msg) ([]byte, error) {
			m.TxID = uint32(tx)
			s.mu.Lock()
			defer s.mu.Unlock()
			return c.handleLocked(m)
		}
		err = fn(func(path string) (string, error) {
			v, err := do(Msg{Type: XSRead, Payload: []byte(path + "\x00")})
			return string(v), err
		}, func(path, value string) error {
			_, err := do(Msg{Type: XSWrite, Payload: []byte(path + "\x00" + value)})
			return err
		})
		if err != nil {
			do(Msg{Type: XSTransactionEnd, Payload: []byte("F\x00")})
			return err
		}
		if _, err := do(Msg{Type: XSTransactionEnd, Payload: []byte("T\x00")}); err != EAGAIN {
			return err
		}
	}
}

// Watch calls fn (with the store unlocked) for the registration event and
// for every change at or below path until fn returns false or ctx ends.
func (s *Store) Watch(ctx interface{ Done() <-chan struct{} }, path string, fn func() bool) {
	c := s.NewConn(0, "watch "+path)
	defer c.Close()
	c.Handle(Msg{Type: XSWatch, Payload: []byte(path + "\x00w\x00")}, func(Msg) {})
	for {
		select {
		case m := <-c.Out():
			if m.Type == XSWatchEvent && !fn() {
				return
			}
		case <-ctx.Done():
			return
		}
	}
}
