package xenstore

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/xenresume/xenresume/vmm/timeline"
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

// node is one node of the live tree. Its value and perms slices are never
// changed in place, only replaced, so a transaction may keep them.
type node struct {
	value    []byte
	perms    []Perm
	children map[string]*node
	childLen int    // bytes of the child list as Xen keeps it: each name and a NUL
	gen      uint64 // store generation of the last change to it or its child list
}

func (n *node) childNames() []string {
	names := make([]string, 0, len(n.children))
	for k := range n.children {
		names = append(names, k)
	}
	return names
}

// nodeSize is a node's size as C xenstored counts it for its node-size
// quota (calc_node_acc_size): a 16-byte header, 8 bytes per permission,
// the value, and the child list.
func nodeSize(perms, value, childLen int) int { return 16 + 8*perms + value + childLen }

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

func base(path string) string { return path[strings.LastIndexByte(path, '/')+1:] }

func join(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}

// isBelow reports whether path is base or a descendant of it.
func isBelow(path, base string) bool {
	return path == base || base == "/" || strings.HasPrefix(path, base+"/")
}

// Store is the xenstore tree and everything connected to it. One mutex
// guards it all; no request holds it for longer than its own work, and
// open transactions add nothing to other requests' work.
type Store struct {
	mu     sync.Mutex
	root   *node
	gen    uint64
	nextTx uint32
	conns  map[*Conn]struct{}
	intro  map[uint32]*domainState // introduced domains
	doms   map[uint32]*domainAcc   // per-domain accounting
	owned  map[uint32]int          // nodes per owner
	log    *slog.Logger
	trace  traceFlags

	timeline atomic.Pointer[timeline.Recorder] // nil: not recording

	limits        atomic.Pointer[Limits]
	limMu         sync.Mutex // serialises changes to limits
	hits          hitCounts
	softHits      hitCounts
	maxSeen       [numQuotaKinds]int // by unprivileged domains
	acceptRetries uint64
	connSeq       uint64

	// Introduce is called for XS_INTRODUCE from dom0: it must connect
	// the domain's ring (gfn, event channel) to the store.
	Introduce func(domid uint32, gfn uint64, port uint32) error
}

type domainState struct {
	shutdown bool
}

// traceFlags are XS_CONTROL "log"'s switches.
type traceFlags struct {
	on  bool // "log on"
	io  bool // each request and its answer
	acc bool // every quota hit, not only a connection's first of a kind
}

func (t traceFlags) ioOn() bool  { return t.on && t.io }
func (t traceFlags) accOn() bool { return t.on && t.acc }

// New returns a store holding /, /local, /local/domain and /tool, owned
// by dom0, with DefaultLimits.
func New(log *slog.Logger) *Store {
	if log == nil {
		log = slog.Default()
	}
	s := &Store{
		conns: map[*Conn]struct{}{}, intro: map[uint32]*domainState{}, doms: map[uint32]*domainAcc{},
		owned: map[uint32]int{}, log: log, trace: traceFlags{io: true},
	}
	l := DefaultLimits()
	s.limits.Store(&l)
	s.root = &node{perms: []Perm{{'n', 0}}}
	s.owned[0] = 1
	for _, p := range []string{"/local", "/local/domain", "/tool"} {
		s.addChild(s.lookup(parent(p)), base(p), []Perm{{'n', 0}})
	}
	return s
}

func (s *Store) newGen() uint64 {
	s.gen++
	return s.gen
}

func (s *Store) lookup(path string) *node {
	n := s.root
	for _, c := range split(path) {
		if n = n.children[c]; n == nil {
			return nil
		}
	}
	return n
}

func (s *Store) own(domid uint32, delta int) {
	if s.owned[domid] += delta; s.owned[domid] == 0 {
		delete(s.owned, domid)
	}
}

// addChild makes an empty node name under p.
func (s *Store) addChild(p *node, name string, perms []Perm) *node {
	g := s.newGen()
	n := &node{value: []byte{}, perms: perms, gen: g}
	if p.children == nil {
		p.children = map[string]*node{}
	}
	p.children[name] = n
	p.childLen += len(name) + 1
	p.gen = g
	s.own(perms[0].Domid, 1)
	return n
}

// removeChild removes p's child name and its subtree.
func (s *Store) removeChild(p *node, name string) {
	n := p.children[name]
	if n == nil {
		return
	}
	owners := map[uint32]int{}
	countOwners(n, owners)
	for d, k := range owners {
		s.own(d, -k)
	}
	delete(p.children, name)
	p.childLen -= len(name) + 1
	p.gen = s.newGen()
}

// setNode replaces n's value and permissions.
func (s *Store) setNode(n *node, value []byte, perms []Perm) {
	if perms[0].Domid != n.perms[0].Domid {
		s.own(n.perms[0].Domid, -1)
		s.own(perms[0].Domid, 1)
	}
	n.value, n.perms = value, perms
	n.gen = s.newGen()
}

// countOwners adds the nodes of n's subtree to owners, by owner.
func countOwners(n *node, owners map[uint32]int) {
	owners[n.perms[0].Domid]++
	for _, c := range n.children {
		countOwners(c, owners)
	}
}

// liveTree is the store itself as a request outside a transaction sees
// it: changes apply at once and fire watches at once.
type liveTree struct{ s *Store }

func (t liveTree) get(path string) (nodeView, bool, error) {
	n := t.s.lookup(path)
	if n == nil {
		return nodeView{}, false, nil
	}
	return nodeView{value: n.value, perms: n.perms, gen: n.gen, childLen: n.childLen}, true, nil
}

func (t liveTree) childNames(path string) []string {
	if n := t.s.lookup(path); n != nil {
		return n.childNames()
	}
	return nil
}

func (t liveTree) put(path string, value []byte, perms []Perm) error {
	t.s.setNode(t.s.lookup(path), value, perms)
	return nil
}

func (t liveTree) add(path string, perms []Perm) error {
	t.s.addChild(t.s.lookup(parent(path)), base(path), perms)
	return nil
}

func (t liveTree) remove(path string) error {
	t.s.removeChild(t.s.lookup(parent(path)), base(path))
	return nil
}

func (t liveTree) owned(domid uint32) int { return t.s.owned[domid] }

func (t liveTree) changed(ch change) { t.s.fire(ch) }

// access bits, as Xen's XS_PERM_*.
const (
	permRead  = 1
	permWrite = 2
	permOwner = 4
)

// permFor is what domid may do to a node with perms (Xen's perm_for_conn):
// everything for dom0 and the owner, else the first entry naming it, else
// the owner entry's letter.
func permFor(domid uint32, perms []Perm) int {
	if domid == 0 || perms[0].Domid == domid {
		return permRead | permWrite | permOwner
	}
	a := perms[0].Access
	for _, p := range perms[1:] {
		if p.Domid == domid {
			a = p.Access
			break
		}
	}
	switch a {
	case 'r':
		return permRead
	case 'w':
		return permWrite
	case 'b':
		return permRead | permWrite
	}
	return 0
}

// DomainPath returns /local/domain/<domid>.
func DomainPath(domid uint32) string { return "/local/domain/" + strconv.FormatUint(uint64(domid), 10) }

// Write sets path to value as dom0, creating it and its parents. For the
// toolstack's own use.
func (s *Store) Write(path, value string) error {
	_, err := s.do(0, Msg{Type: XSWrite, Payload: []byte(path + "\x00" + value)})
	return err
}

// Read returns path's value as dom0 sees it.
func (s *Store) Read(path string) (string, error) {
	b, err := s.do(0, Msg{Type: XSRead, Payload: []byte(path + "\x00")})
	return string(b), err
}

// Mkdir creates path as dom0.
func (s *Store) Mkdir(path string) error {
	_, err := s.do(0, Msg{Type: XSMkdir, Payload: []byte(path + "\x00")})
	return err
}

// Rm removes path and everything below it as dom0. As in Xen, removing a
// node that does not exist is not an error if its parent exists.
func (s *Store) Rm(path string) error {
	_, err := s.do(0, Msg{Type: XSRm, Payload: []byte(path + "\x00")})
	return err
}

// SetPerms sets path's permissions as dom0.
func (s *Store) SetPerms(path string, perms ...Perm) error {
	p := path + "\x00"
	for _, pm := range perms {
		p += pm.String() + "\x00"
	}
	_, err := s.do(0, Msg{Type: XSSetPerms, Payload: []byte(p)})
	return err
}

// GetPerms returns path's permissions.
func (s *Store) GetPerms(path string) ([]Perm, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.lookup(path)
	if n == nil {
		return nil, ENOENT
	}
	return append([]Perm(nil), n.perms...), nil
}

// do runs one request on behalf of domid outside any connection.
func (s *Store) do(domid uint32, m Msg) ([]byte, error) {
	c := &Conn{s: s, Domid: domid, Name: "store", internal: true}
	s.mu.Lock()
	defer s.mu.Unlock()
	return c.handleLocked(m)
}

// IntroduceDomain records domid as introduced (XS_INTRODUCE's effect on the
// store) and fires @introduceDomain.
func (s *Store) IntroduceDomain(domid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.intro[domid] = &domainState{}
	s.fireSpecial("@introduceDomain")
}

// DomainShutdown fires @releaseDomain for a domain that shut down (what
// xenstored does on VIRQ_DOM_EXC), once until it is resumed.
func (s *Store) DomainShutdown(domid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.intro[domid]; d != nil && !d.shutdown {
		d.shutdown = true
		s.fireSpecial("@releaseDomain")
	}
}

// ReleaseDomain forgets a domain: its connections lose their watches and
// transactions, its accounting goes, and @releaseDomain fires.
func (s *Store) ReleaseDomain(domid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseLocked(domid)
}

func (s *Store) releaseLocked(domid uint32) {
	delete(s.intro, domid)
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
	return s.intro[domid] != nil
}

// ResumeDomain re-arms @releaseDomain for a domain that was shut down and
// resumed (XS_RESUME's effect).
func (s *Store) ResumeDomain(domid uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.intro[domid]
	if d == nil {
		return ENOENT
	}
	d.shutdown = false
	return nil
}

// Update runs fn in a transaction as dom0, retrying while it conflicts.
// fn reads and writes through the given functions.
func (s *Store) Update(fn func(read func(path string) (string, error), write func(path, value string) error) error) error {
	c := &Conn{s: s, Domid: 0, Name: "store", internal: true}
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
// ctx is usually a context.Context; anything with a Done channel will do.
func (s *Store) Watch(done interface{ Done() <-chan struct{} }, path string, fn func() bool) {
	ctx, ok := done.(context.Context)
	if !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-done.Done():
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	c := s.NewConn(0, "watch "+path)
	defer c.Close()
	c.Handle(Msg{Type: XSWatch, Payload: []byte(path + "\x00w\x00")}, func(Msg) {})
	for {
		m, err := c.NextEvent(ctx)
		if err != nil {
			return
		}
		if m.Type == XSWatchEvent && !fn() {
			return
		}
	}
}

// check recounts the nodes each domain owns and corrects the accounting
// (XS_CONTROL "check"). It returns how many domains' counts were wrong.
func (s *Store) check() int {
	owners := map[uint32]int{}
	countOwners(s.root, owners)
	bad := 0
	for d, n := range owners {
		if s.owned[d] != n {
			s.log.Error("xenstore: node accounting corrected", "domid", d, "counted", s.owned[d], "found", n)
			bad++
		}
	}
	for d := range s.owned {
		if _, ok := owners[d]; !ok {
			s.log.Error("xenstore: node accounting corrected", "domid", d, "counted", s.owned[d], "found", 0)
			bad++
		}
	}
	s.owned = owners
	return bad
}

// sortedNames sorts a child list for the wire.
func sortedNames(names []string) []string {
	sort.Strings(names)
	return names
}
