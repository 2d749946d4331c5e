package xenstore

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
)

// Conn is one client of the store: a domain's ring or a socket (dom0).
// Requests go in through Handle, which returns each reply through a
// callback; watch events come out of Out.
type Conn struct {
	s        *Store
	Domid    uint32
	Name     string
	internal bool // the store's own API: no watches, no output

	watches []watch
	txns    map[uint32]*txn
	out     chan Msg
	after   []Msg // events that follow the current request's reply
	dropped int
	closed  bool
}

type watch struct {
	path     string // absolute, or @special
	token    string
	relative bool
}

type txn struct {
	id       uint32
	startGen uint64 // the store generation when it started
	root     *node
	seen     map[string]uint64 // path -> generation when first touched (0: absent)
	ops      []Msg             // to replay on commit
}

type change struct {
	path    string
	removed bool
	perms   []Perm // of the node, for watch permission checks
}

// NewConn connects a client for domid. Out delivers its watch events; at
// most quota.Events wait there before more are dropped.
func (s *Store) NewConn(domid uint32, name string) *Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := &Conn{s: s, Domid: domid, Name: name, out: make(chan Msg, s.quota.Events+4)}
	s.conns[c] = struct{}{}
	return c
}

// Out delivers the connection's watch events.
func (c *Conn) Out() <-chan Msg { return c.out }

// Close disconnects: its watches and transactions go, Out is closed.
func (c *Conn) Close() {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	delete(c.s.conns, c)
	close(c.out)
}

// Reset drops the connection's watches and transactions, as a ring
// reconnection does.
func (c *Conn) Reset() {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	c.watches, c.txns = nil, nil
}

// Handle processes one request and hands its reply to reply, on the
// caller's goroutine and with the store unlocked; watch events the request
// fires for this connection (a WATCH's first event) are queued on Out after
// that, so they follow the reply.
func (c *Conn) Handle(m Msg, reply func(Msg)) {
	c.s.mu.Lock()
	if c.closed {
		c.s.mu.Unlock()
		return
	}
	payload, err := c.handleLocked(m)
	after := c.after
	c.after = nil
	c.s.mu.Unlock()
	r := Msg{Type: m.Type, ReqID: m.ReqID, TxID: m.TxID, Payload: payload}
	var xe Error
	if errors.As(err, &xe) {
		r = Msg{Type: XSError, ReqID: m.ReqID, TxID: m.TxID, Payload: []byte(string(xe) + "\x00")}
	} else if err != nil {
		r = Msg{Type: XSError, ReqID: m.ReqID, TxID: m.TxID, Payload: []byte("EIO\x00")}
	}
	reply(r)
	if len(after) > 0 {
		c.s.mu.Lock()
		for _, e := range after {
			c.send(e)
		}
		c.s.mu.Unlock()
	}
}

// send queues a watch event; past the quota it is dropped and logged.
func (c *Conn) send(m Msg) {
	if c.internal || c.closed {
		return
	}
	if len(c.out) >= cap(c.out)-2 {
		c.dropped++
		if c.dropped == 1 {
			c.s.log.Warn("xenstore: watch event queue full; dropping events", "conn", c.Name, "domid", c.Domid)
		}
		return
	}
	c.out <- m
}

var ok = []byte("OK\x00")

// args splits a payload into its NUL-terminated strings.
func args(p []byte) []string {
	if len(p) > 0 && p[len(p)-1] == 0 {
		p = p[:len(p)-1]
	}
	return strings.Split(string(p), "\x00")
}

func validPath(p string) bool {
	if p == "/" {
		return true
	}
	if p == "" || strings.HasSuffix(p, "/") || strings.Contains(p, "//") {
		return false
	}
	for i := 0; i < len(p); i++ {
		ch := p[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || strings.IndexByte("-/_@", ch) >= 0) {
			return false
		}
	}
	return true
}

// abspath canonicalizes a request path: relative paths are below the
// domain's home, /local/domain/<domid>.
func (c *Conn) abspath(p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		if len(p) > RelPathMax {
			return "", EINVAL
		}
		p = DomainPath(c.Domid) + "/" + p
	}
	if len(p) > AbsPathMax || !validPath(p) || strings.Contains(p, "@") {
		return "", EINVAL
	}
	return p, nil
}

func (c *Conn) handleLocked(m Msg) ([]byte, error) {
	s := c.s
	var tx *txn
	if m.TxID != 0 {
		if tx = c.txns[m.TxID]; tx == nil {
			return nil, ENOENT
		}
	}
	root := s.root
	if tx != nil {
		root = tx.root
	}
	a := args(m.Payload)
	switch m.Type {
	case XSRead, XSGetPerms, XSDirectory, XSDirectoryPart:
		path, err := c.abspath(a[0])
		if err != nil {
			return nil, err
		}
		tx.touch(path)
		n := lookup(root, path)
		if n == nil {
			return nil, ENOENT
		}
		if !permFor(c.Domid, n).read {
			return nil, EACCES
		}
		switch m.Type {
		case XSRead:
			return append([]byte(nil), n.value...), nil
		case XSGetPerms:
			var b bytes.Buffer
			for _, p := range n.perms {
				b.WriteString(p.String() + "\x00")
			}
			return b.Bytes(), nil
		case XSDirectory:
			var b bytes.Buffer
			for _, name := range n.childNames() {
				b.WriteString(name + "\x00")
			}
			if b.Len() > PayloadMax {
				return nil, E2BIG
			}
			return b.Bytes(), nil
		default:
			return directoryPart(n, a)
		}
	case XSWrite, XSMkdir, XSRm, XSSetPerms:
		if len(a) < 1 {
			return nil, EINVAL
		}
		path, err := c.abspath(a[0])
		if err != nil {
			return nil, err
		}
		if err := c.mutate(root, tx, m.Type, path, m.Payload, a); err != nil {
			return nil, err
		}
		if tx != nil {
			tx.ops = append(tx.ops, m)
		}
		return ok, nil
	case XSWatch, XSUnwatch:
		if len(a) < 2 {
			return nil, EINVAL
		}
		return c.watch(m.Type, a[0], a[1])
	case XSTransactionStart:
		if tx != nil {
			return nil, EBUSY
		}
		if c.Domid != 0 && len(c.txns) >= s.quota.Transactions {
			return nil, ENOSPC
		}
		s.nextTx++
		if s.nextTx == 0 {
			s.nextTx++
		}
		if c.txns == nil {
			c.txns = map[uint32]*txn{}
		}
		c.txns[s.nextTx] = &txn{id: s.nextTx, startGen: s.gen, root: s.root.clone(), seen: map[string]uint64{}}
		return []byte(strconv.FormatUint(uint64(s.nextTx), 10) + "\x00"), nil
	case XSTransactionEnd:
		if tx == nil {
			return nil, EINVAL
		}
		delete(c.txns, tx.id)
		switch a[0] {
		case "F":
			return ok, nil
		case "T":
			return ok, c.commit(tx)
		}
		return nil, EINVAL
	case XSGetDomainPath:
		id, err := strconv.ParseUint(a[0], 10, 16)
		if err != nil {
			return nil, EINVAL
		}
		return []byte(DomainPath(uint32(id)) + "\x00"), nil
	case XSIsDomainIntroduced:
		if c.Domid != 0 {
			return nil, EACCES
		}
		id, err := strconv.ParseUint(a[0], 10, 16)
		if err != nil {
			return nil, EINVAL
		}
		if s.doms[uint32(id)] != nil {
			return []byte("T\x00"), nil
		}
		return []byte("F\x00"), nil
	case XSIntroduce, XSRelease, XSResume:
		if c.Domid != 0 {
			return nil, EACCES
		}
		id, err := strconv.ParseUint(a[0], 10, 16)
		if err != nil || id == 0 {
			return nil, EINVAL
		}
		domid := uint32(id)
		switch m.Type {
		case XSIntroduce:
			if len(a) < 3 || s.Introduce == nil {
				return nil, EINVAL
			}
			gfn, err1 := strconv.ParseInt(a[1], 10, 64)
			port, err2 := strconv.ParseUint(a[2], 10, 32)
			if err1 != nil || err2 != nil {
				return nil, EINVAL
			}
			if s.doms[domid] != nil {
				return ok, nil
			}
			s.mu.Unlock()
			err := s.Introduce(domid, uint64(gfn), uint32(port))
			s.mu.Lock()
			if err != nil {
				s.log.Warn("xenstore: introduce failed", "domid", domid, "err", err)
				return nil, EINVAL
			}
			s.doms[domid] = &domainState{}
			s.fireSpecial("@introduceDomain")
		case XSRelease:
			if s.doms[domid] == nil {
				return nil, ENOENT
			}
			s.releaseLocked(domid)
		case XSResume:
			d := s.doms[domid]
			if d == nil {
				return nil, ENOENT
			}
			d.shutdown = false
		}
		return ok, nil
	case XSResetWatches:
		c.watches, c.txns = nil, nil
		return ok, nil
	}
	return nil, ENOSYS
}

func directoryPart(n *node, a []string) ([]byte, error) {
	if len(a) < 2 {
		return nil, EINVAL
	}
	off, err := strconv.Atoi(a[1])
	if err != nil || off < 0 {
		return nil, EINVAL
	}
	var full bytes.Buffer
	for _, name := range n.childNames() {
		full.WriteString(name + "\x00")
	}
	all := full.Bytes()
	if off > len(all) {
		return nil, EINVAL
	}
	gen := strconv.FormatUint(n.gen, 10) + "\x00"
	rest := all[off:]
	room := PayloadMax - len(gen) - 1
	if len(rest) <= room {
		// Complete: the list ends with an empty string.
		return append(append([]byte(gen), rest...), 0), nil
	}
	cut := bytes.LastIndexByte(rest[:room], 0)
	if cut < 0 {
		return nil, E2BIG
	}
	return append([]byte(gen), rest[:cut+1]...), nil
}

// touch records a path a transaction depends on, as it was when the
// transaction started. Every node the transaction changes is touched
// before it changes, so a node newer than the start that was not touched
// yet was created by the transaction: absent at the start.
func (t *txn) touch(path string) {
	if t == nil {
		return
	}
	if _, ok := t.seen[path]; ok {
		return
	}
	if n := lookup(t.root, path); n != nil && n.gen <= t.startGen {
		t.seen[path] = n.gen
	} else {
		t.seen[path] = 0
	}
}

func (c *Conn) mutate(root *node, tx *txn, typ uint32, path string, payload []byte, a []string) error {
	s := c.s
	tx.touch(path)
	n := lookup(root, path)
	switch typ {
	case XSWrite, XSMkdir:
		var value []byte
		if typ == XSWrite {
			if len(payload) <= len(a[0]) {
				return EINVAL // no NUL between path and value
			}
			value = payload[len(a[0])+1:]
			if value == nil {
				value = []byte{}
			}
			if c.Domid != 0 && len(value) > s.quota.NodeSize {
				return E2BIG
			}
		}
		if n != nil {
			if typ == XSMkdir {
				return nil
			}
			if !permFor(c.Domid, n).write {
				return EACCES
			}
			n.value = append([]byte(nil), value...)
			s.gen++
			n.gen = s.gen
			c.changed(tx, path, n.perms, false)
			return nil
		}
		// Create: the nearest existing ancestor must be writable.
		anc := parent(path)
		for lookup(root, anc) == nil {
			anc = parent(anc)
		}
		tx.touch(anc)
		an := lookup(root, anc)
		if !permFor(c.Domid, an).write {
			return EACCES
		}
		perms := an.perms
		if c.Domid != 0 {
			// Unprivileged domains own what they create.
			perms = append([]Perm{{perms[0].Access, c.Domid}}, perms[1:]...)
			created := len(split(path)) - len(split(anc))
			if root.countOwned(c.Domid)+created > s.quota.Nodes {
				return ENOSPC
			}
		}
		if value == nil {
			value = []byte{}
		}
		nn := s.create(root, path, append([]byte(nil), value...), perms)
		c.changed(tx, path, nn.perms, false)
		return nil
	case XSRm:
		if n == nil {
			return ENOENT
		}
		if path == "/" {
			return EINVAL
		}
		if !permFor(c.Domid, n).write {
			return EACCES
		}
		p := lookup(root, parent(path))
		tx.touch(parent(path))
		delete(p.children, path[strings.LastIndexByte(path, '/')+1:])
		s.gen++
		p.gen = s.gen
		c.changed(tx, path, n.perms, true)
		return nil
	case XSSetPerms:
		if n == nil {
			return ENOENT
		}
		if !permFor(c.Domid, n).owner {
			return EACCES
		}
		if len(a) < 2 {
			return EINVAL
		}
		var perms []Perm
		for _, ps := range a[1:] {
			p, err := ParsePerm(ps)
			if err != nil {
				return err
			}
			perms = append(perms, p)
		}
		if c.Domid != 0 && perms[0].Domid != n.perms[0].Domid {
			return EPERM // only dom0 gives nodes away
		}
		n.perms = perms
		s.gen++
		n.gen = s.gen
		c.changed(tx, path, perms, false)
		return nil
	}
	return EINVAL
}

// changed fires the watches for a change outside a transaction; inside one
// they fire when commit replays it.
func (c *Conn) changed(tx *txn, path string, perms []Perm, removed bool) {
	if tx == nil {
		c.s.fire(change{path, removed, perms})
	}
}

// commit applies a transaction if nothing it read or wrote changed since it
// started; otherwise EAGAIN.
func (c *Conn) commit(tx *txn) error {
	s := c.s
	for path, gen := range tx.seen {
		cur := uint64(0)
		if n := lookup(s.root, path); n != nil {
			cur = n.gen
		}
		if cur != gen {
			return EAGAIN
		}
	}
	for _, m := range tx.ops {
		a := args(m.Payload)
		path, _ := c.abspath(a[0])
		if err := c.mutate(s.root, nil, m.Type, path, m.Payload, a); err != nil {
			// Everything it touched is unchanged, so this cannot
			// happen; refuse rather than half-apply.
			s.log.Error("xenstore: transaction replay failed", "path", path, "err", err)
			return EAGAIN
		}
	}
	return nil
}

func (c *Conn) watch(typ uint32, wpath, token string) ([]byte, error) {
	s := c.s
	w := watch{path: wpath, token: token}
	if !strings.HasPrefix(wpath, "@") {
		abs, err := c.abspath(wpath)
		if err != nil {
			return nil, err
		}
		w.path, w.relative = abs, !strings.HasPrefix(wpath, "/")
	} else if wpath != "@introduceDomain" && wpath != "@releaseDomain" {
		return nil, EINVAL
	}
	if typ == XSUnwatch {
		for i, x := range c.watches {
			if x.path == w.path && x.token == token {
				c.watches = append(c.watches[:i], c.watches[i+1:]...)
				return ok, nil
			}
		}
		return nil, ENOENT
	}
	for _, x := range c.watches {
		if x.path == w.path && x.token == token {
			return nil, EEXIST
		}
	}
	if c.Domid != 0 && len(c.watches) >= s.quota.Watches {
		return nil, E2BIG
	}
	c.watches = append(c.watches, w)
	// A watch fires once as soon as it is set, after the reply.
	c.after = append(c.after, Msg{Type: XSWatchEvent, Payload: []byte(wpath + "\x00" + token + "\x00")})
	return ok, nil
}

// fire sends watch events for a committed change to every connection whose
// watch covers it and which may read the node.
func (s *Store) fire(ch change) {
	for c := range s.conns {
		for _, w := range c.watches {
			if strings.HasPrefix(w.path, "@") {
				continue
			}
			if !isBelow(ch.path, w.path) && !(ch.removed && isBelow(w.path, ch.path)) {
				continue
			}
			if !permFor(c.Domid, &node{perms: ch.perms}).read {
				continue
			}
			p := ch.path
			if ch.removed && isBelow(w.path, ch.path) {
				p = w.path
			}
			if w.relative {
				p = strings.TrimPrefix(p, DomainPath(c.Domid)+"/")
			}
			c.send(Msg{Type: XSWatchEvent, Payload: []byte(p + "\x00" + w.token + "\x00")})
		}
	}
}

// fireSpecial fires @introduceDomain or @releaseDomain for dom0's watchers.
func (s *Store) fireSpecial(path string) {
	for c := range s.conns {
		if c.Domid != 0 {
			continue
		}
		for _, w := range c.watches {
			if w.path == path {
				c.send(Msg{Type: XSWatchEvent, Payload: []byte(path + "\x00" + w.token + "\x00")})
			}
		}
	}
}
