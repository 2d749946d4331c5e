package xenstore

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/xenresume/xenresume/vmm/timeline"
)

// ErrClosed is returned by NextEvent once its connection is closed.
var ErrClosed = errors.New("xenstore: connection closed")

// Conn is one client of the store: a domain's ring, a socket (dom0), or
// an in-process client. Requests go in through Handle, which returns each
// reply through a callback; watch events come out of NextEvent (or Out).
type Conn struct {
	s        *Store
	Domid    uint32
	Name     string
	internal bool // the store's own API: no limits, no watches, no output

	watches []watch
	txns    map[uint32]*txn
	after   []Msg // events that follow the current request's reply

	// Watch events waiting to be taken, bounded by the Events and
	// OutputBytes quotas; queued counts the payloads queued so an event
	// equal to a waiting one is not queued twice.
	events  []Msg
	evBytes int
	queued  map[string]int
	cond    *sync.Cond // on s.mu: events arrived, or closed
	closed  bool
	done    chan struct{}
	out     chan Msg
	outOnce sync.Once

	hits, soft         hitCounts
	logged, softLogged [numQuotaKinds]bool
	outstanding        atomic.Int32 // a ring's replies waiting for room
}

type watch struct {
	path     string // absolute, or @special
	token    string
	relative bool
}

// change is a committed change, for firing watches: the node's
// permissions after it (before, for a removal), and before it when they
// changed.
type change struct {
	path    string
	removed bool
	perms   []Perm
	old     []Perm
}

// nodeView is a node as a request sees it.
type nodeView struct {
	value    []byte
	perms    []Perm
	gen      uint64
	childLen int
}

// tree is what a request works on: the store itself (liveTree), or a
// transaction's view of it (*txn).
type tree interface {
	get(path string) (nodeView, bool, error)
	childNames(path string) []string // of an existing node, unsorted
	put(path string, value []byte, perms []Perm) error
	add(path string, perms []Perm) error // an empty node under an existing parent
	remove(path string) error            // an existing node and its subtree
	owned(domid uint32) int
	changed(ch change)
}

// NewConn connects a client for domid: domid 0 is privileged (held to
// Limits.Privileged), any other an unprivileged domain (Limits.Guest).
// Its watch events come out of NextEvent or Out.
func (s *Store) NewConn(domid uint32, name string) *Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := &Conn{s: s, Domid: domid, Name: name, done: make(chan struct{})}
	c.cond = sync.NewCond(&s.mu)
	s.conns[c] = struct{}{}
	return c
}

// Out delivers the connection's watch events on a channel, closed when
// the connection closes. It is NextEvent in a goroutine: use one or the
// other.
func (c *Conn) Out() <-chan Msg {
	c.outOnce.Do(func() {
		c.out = make(chan Msg)
		go func() {
			defer close(c.out)
			for {
				m, err := c.NextEvent(context.Background())
				if err != nil {
					return
				}
				select {
				case c.out <- m:
				case <-c.done:
					return
				}
			}
		}()
	})
	return c.out
}

// NextEvent waits for the connection's next watch event. It returns
// ErrClosed once the connection is closed, or ctx's error.
func (c *Conn) NextEvent(ctx context.Context) (Msg, error) {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		c.s.mu.Lock()
		c.cond.Broadcast()
		c.s.mu.Unlock()
	})
	defer stop()
	for len(c.events) == 0 {
		if c.closed {
			return Msg{}, ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return Msg{}, err
		}
		c.cond.Wait()
	}
	return c.pop(), nil
}

// pop takes the first queued event. s.mu held, events not empty.
func (c *Conn) pop() Msg {
	m := c.events[0]
	c.events[0] = Msg{}
	c.events = c.events[1:]
	if len(c.events) == 0 {
		c.events = nil // let the backing array go
	}
	c.evBytes -= HeaderSize + len(m.Payload)
	if k := string(m.Payload); c.queued[k] > 1 {
		c.queued[k]--
	} else {
		delete(c.queued, k)
	}
	return m
}

// pending takes every queued event without waiting.
func (c *Conn) pending() []Msg {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	var ms []Msg
	for len(c.events) > 0 {
		ms = append(ms, c.pop())
	}
	return ms
}

// Close disconnects: its watches, transactions and queued events go, and
// NextEvent returns ErrClosed.
func (c *Conn) Close() {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	delete(c.s.conns, c)
	c.watches, c.txns = nil, nil
	c.events, c.evBytes, c.queued = nil, 0, nil
	c.cond.Broadcast()
	close(c.done)
	if h := c.hits.m(); len(h) > 0 {
		c.s.log.Info("xenstore: connection closed after reaching quotas", "conn", c.Name, "domid", c.Domid, "hits", h)
	}
}

// Reset drops the connection's watches, transactions and queued events,
// as a ring reconnection does.
func (c *Conn) Reset() {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	c.watches, c.txns = nil, nil
	c.events, c.evBytes, c.queued = nil, 0, nil
}

// Handle processes one request and hands its reply to reply, on the
// caller's goroutine and with the store unlocked; watch events the request
// fires for this connection (a WATCH's first event) are queued after
// that, so they follow the reply.
func (c *Conn) Handle(m Msg, reply func(Msg)) {
	s := c.s
	s.mu.Lock()
	if c.closed {
		s.mu.Unlock()
		return
	}
	payload, err := c.handleLocked(m)
	after := c.after
	c.after = nil
	if s.trace.ioOn() {
		s.log.Info("xenstore: request", "conn", c.Name, "domid", c.Domid, "type", TypeName(m.Type),
			"req", m.ReqID, "tx", m.TxID, "len", len(m.Payload), "err", err)
	}
	s.mu.Unlock()
	r := Msg{Type: m.Type, ReqID: m.ReqID, TxID: m.TxID, Payload: payload}
	var xe Error
	if errors.As(err, &xe) {
		r = Msg{Type: XSError, ReqID: m.ReqID, TxID: m.TxID, Payload: []byte(string(xe) + "\x00")}
	} else if err != nil {
		r = Msg{Type: XSError, ReqID: m.ReqID, TxID: m.TxID, Payload: []byte("EIO\x00")}
	}
	if tl := s.timeline.Load(); tl != nil {
		args := map[string]any{"conn": c.Name, "domid": c.Domid}
		if r.Type == XSError {
			args["error"] = strings.TrimRight(string(r.Payload), "\x00")
		}
		tl.Instant(timeline.TrackXenstore, "xenstore", TypeName(m.Type)+" "+firstString(m.Payload), args)
	}
	reply(r)
	if len(after) > 0 {
		s.mu.Lock()
		for _, e := range after {
			c.send(e)
		}
		s.mu.Unlock()
	}
}

// send queues a watch event. An event equal to one still queued is not
// queued again (as C xenstored's send_event); past the Events or
// OutputBytes quota it is dropped, counted and logged. s.mu held.
func (c *Conn) send(m Msg) {
	if c.internal || c.closed {
		return
	}
	key := string(m.Payload)
	if c.queued[key] > 0 && !strings.HasPrefix(key, "@") {
		return
	}
	size := HeaderSize + len(m.Payload)
	if c.over(QuotaEvents, len(c.events)+1) || c.over(QuotaOutput, c.evBytes+size) {
		return
	}
	if c.queued == nil {
		c.queued = map[string]int{}
	}
	c.queued[key]++
	c.events = append(c.events, m)
	c.evBytes += size
	c.cond.Broadcast()
}

var ok = []byte("OK\x00")

// nulStrings returns the NUL-terminated strings of a payload; bytes after
// the last NUL are no string (Xen's get_strings).
func nulStrings(p []byte) []string {
	var a []string
	for {
		i := bytes.IndexByte(p, 0)
		if i < 0 {
			return a
		}
		a = append(a, string(p[:i]))
		p = p[i+1:]
	}
}

// onearg returns a payload's only string, which must end with the
// payload's only NUL (Xen's onearg).
func onearg(p []byte) (string, error) {
	if len(p) == 0 || bytes.IndexByte(p, 0) != len(p)-1 {
		return "", EINVAL
	}
	return string(p[:len(p)-1]), nil
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

// localOff is the length of a /local/domain/<id>/ prefix of p, or 0: the
// part of a path Xen leaves out of its path-max quota.
func localOff(p string) int {
	const pre = "/local/domain/"
	if !strings.HasPrefix(p, pre) {
		return 0
	}
	i := strings.IndexByte(p[len(pre):], '/')
	if i < 1 || i > 5 {
		return 0
	}
	for _, ch := range p[len(pre) : len(pre)+i] {
		if ch < '0' || ch > '9' {
			return 0
		}
	}
	return len(pre) + i + 1
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
	if c.over(QuotaPathLen, len(p)-localOff(p)) {
		return "", EINVAL
	}
	return p, nil
}

// node returns path's node if c may access it as want. If not, the error
// is ENOENT or EACCES as Xen's errno_from_parents decides: EACCES unless
// the nearest existing ancestor grants want, so that the answer says
// nothing about a node c may not see.
func (c *Conn) node(t tree, path string, want int) (nodeView, error) {
	n, ok, err := t.get(path)
	if err != nil {
		return nodeView{}, err
	}
	if ok && permFor(c.Domid, n.perms)&want == want {
		return n, nil
	}
	if ok {
		return nodeView{}, EACCES
	}
	return nodeView{}, c.absent(t, path, want)
}

// absent is the error for a missing node: ENOENT if its nearest existing
// ancestor grants want, else EACCES.
func (c *Conn) absent(t tree, path string, want int) error {
	for path != "/" {
		path = parent(path)
		n, ok, err := t.get(path)
		if err != nil {
			return err
		}
		if ok {
			if permFor(c.Domid, n.perms)&want == want {
				return ENOENT
			}
			return EACCES
		}
	}
	return EACCES
}

func (c *Conn) handleLocked(m Msg) ([]byte, error) {
	s := c.s
	switch m.Type {
	case XSControl, XSIntroduce, XSRelease, XSIsDomainIntroduced, XSResume, XSSetTarget:
		if c.Domid != 0 {
			return nil, EACCES // Xen's XS_FLAG_PRIV
		}
	case XSDirectory, XSRead, XSGetPerms, XSWatch, XSUnwatch, XSTransactionStart, XSTransactionEnd,
		XSGetDomainPath, XSWrite, XSMkdir, XSRm, XSSetPerms, XSResetWatches, XSDirectoryPart:
	default:
		return nil, ENOSYS
	}
	var tx *txn
	if m.TxID != 0 && m.Type != XSWatch && m.Type != XSUnwatch { // Xen's XS_FLAG_NOTID
		if tx = c.txns[m.TxID]; tx == nil {
			return nil, ENOENT
		}
	}
	var t tree = liveTree{s}
	if tx != nil {
		t = tx
	}
	p := m.Payload
	switch m.Type {
	case XSRead, XSGetPerms, XSDirectory:
		arg, err := onearg(p)
		if err != nil {
			return nil, err
		}
		path, err := c.abspath(arg)
		if err != nil {
			return nil, err
		}
		n, err := c.node(t, path, permRead)
		if err != nil {
			return nil, err
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
		}
		var b bytes.Buffer
		for _, name := range sortedNames(t.childNames(path)) {
			b.WriteString(name + "\x00")
		}
		if b.Len() > PayloadMax {
			return nil, E2BIG
		}
		return b.Bytes(), nil
	case XSDirectoryPart:
		if bytes.Count(p, []byte{0}) != 2 {
			return nil, EINVAL
		}
		a := nulStrings(p)
		path, err := c.abspath(a[0])
		if err != nil {
			return nil, err
		}
		n, err := c.node(t, path, permRead)
		if err != nil {
			return nil, err
		}
		return directoryPart(t, path, n, a[1])
	case XSWrite:
		i := bytes.IndexByte(p, 0)
		if i < 0 {
			return nil, EINVAL
		}
		path, err := c.abspath(string(p[:i]))
		if err != nil {
			return nil, err
		}
		return ok, c.write(t, path, append([]byte{}, p[i+1:]...), false)
	case XSMkdir, XSRm:
		arg, err := onearg(p)
		if err != nil {
			return nil, err
		}
		path, err := c.abspath(arg)
		if err != nil {
			return nil, err
		}
		if m.Type == XSRm {
			return ok, c.rm(t, path)
		}
		return ok, c.write(t, path, []byte{}, true)
	case XSSetPerms:
		if bytes.Count(p, []byte{0}) < 2 {
			return nil, EINVAL
		}
		a := nulStrings(p)
		return ok, c.setPerms(t, a[0], a[1:])
	case XSWatch, XSUnwatch:
		a := nulStrings(p)
		if len(a) != 2 {
			return nil, EINVAL
		}
		return c.watch(m.Type, a[0], a[1])
	case XSTransactionStart:
		if tx != nil {
			return nil, EBUSY // no nesting
		}
		if c.over(QuotaTransactions, len(c.txns)+1) {
			return nil, ENOSPC
		}
		for {
			if s.nextTx++; s.nextTx != 0 && c.txns[s.nextTx] == nil {
				break
			}
		}
		if c.txns == nil {
			c.txns = map[uint32]*txn{}
		}
		c.txns[s.nextTx] = c.newTxn(s.nextTx)
		return []byte(strconv.FormatUint(uint64(s.nextTx), 10) + "\x00"), nil
	case XSTransactionEnd:
		arg, err := onearg(p)
		if err != nil || arg != "T" && arg != "F" {
			return nil, EINVAL
		}
		if tx == nil {
			return nil, ENOENT
		}
		delete(c.txns, tx.id)
		if arg == "T" {
			if err := tx.commit(); err != nil {
				return nil, err
			}
		}
		return ok, nil
	case XSGetDomainPath:
		arg, err := onearg(p)
		if err != nil {
			return nil, err
		}
		id, err := strconv.ParseUint(arg, 10, 16)
		if err != nil {
			return nil, EINVAL
		}
		return []byte(DomainPath(uint32(id)) + "\x00"), nil
	case XSIsDomainIntroduced:
		arg, err := onearg(p)
		if err != nil {
			return nil, err
		}
		id, err := strconv.ParseUint(arg, 10, 16)
		if err != nil {
			return nil, EINVAL
		}
		if s.intro[uint32(id)] != nil {
			return []byte("T\x00"), nil
		}
		return []byte("F\x00"), nil
	case XSIntroduce:
		a := nulStrings(p)
		if len(a) < 3 || s.Introduce == nil {
			return nil, EINVAL
		}
		id, err := strconv.ParseUint(a[0], 10, 16)
		gfn, err1 := strconv.ParseInt(a[1], 10, 64)
		port, err2 := strconv.ParseUint(a[2], 10, 32)
		if err != nil || id == 0 || err1 != nil || err2 != nil {
			return nil, EINVAL
		}
		domid := uint32(id)
		if s.intro[domid] != nil {
			return ok, nil
		}
		s.mu.Unlock()
		err = s.Introduce(domid, uint64(gfn), uint32(port))
		s.mu.Lock()
		if err != nil {
			s.log.Warn("xenstore: introduce failed", "domid", domid, "err", err)
			return nil, EINVAL
		}
		s.intro[domid] = &domainState{}
		s.fireSpecial("@introduceDomain")
		return ok, nil
	case XSRelease, XSResume:
		arg, err := onearg(p)
		if err != nil {
			return nil, err
		}
		id, err := strconv.ParseUint(arg, 10, 16)
		if err != nil || id == 0 {
			return nil, EINVAL
		}
		d := s.intro[uint32(id)]
		if d == nil {
			return nil, ENOENT
		}
		if m.Type == XSRelease {
			s.releaseLocked(uint32(id))
		} else {
			d.shutdown = false
		}
		return ok, nil
	case XSResetWatches:
		c.watches, c.txns = nil, nil
		return ok, nil
	case XSControl:
		return c.control(p)
	}
	return nil, ENOSYS // XS_SET_TARGET
}

func directoryPart(t tree, path string, n nodeView, offset string) ([]byte, error) {
	off, err := strconv.Atoi(offset)
	if err != nil || off < 0 {
		return nil, EINVAL
	}
	var full bytes.Buffer
	for _, name := range sortedNames(t.childNames(path)) {
		full.WriteString(name + "\x00")
	}
	all := full.Bytes()
	gen := strconv.FormatUint(n.gen, 10) + "\x00"
	if off >= len(all) {
		return []byte(gen + "\x00"), nil // past the end: an empty list (Xen)
	}
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

// write is WRITE, or MKDIR (which leaves an existing node alone).
func (c *Conn) write(t tree, path string, value []byte, mkdir bool) error {
	n, ok, err := t.get(path)
	if err != nil {
		return err
	}
	if ok {
		if permFor(c.Domid, n.perms)&permWrite == 0 {
			return EACCES
		}
		if mkdir {
			return nil
		}
		if c.over(QuotaNodeSize, nodeSize(len(n.perms), len(value), n.childLen)) {
			return ENOSPC
		}
		if err := t.put(path, value, n.perms); err != nil {
			return err
		}
		t.changed(change{path: path, perms: n.perms})
		return nil
	}
	// A new node and maybe parents: the nearest existing ancestor
	// decides, and they inherit its permissions (but what an
	// unprivileged domain creates, it owns).
	anc := parent(path)
	var a nodeView
	for {
		if a, ok, err = t.get(anc); err != nil {
			return err
		}
		if ok {
			break
		}
		anc = parent(anc)
	}
	if permFor(c.Domid, a.perms)&permWrite == 0 {
		return EACCES
	}
	perms := a.perms
	if c.Domid != 0 {
		perms = append([]Perm{{perms[0].Access, c.Domid}}, perms[1:]...)
	}
	levels := split(path)[len(split(anc)):]
	if c.over(QuotaNodes, t.owned(c.Domid)+len(levels)) {
		return ENOSPC
	}
	size := nodeSize(len(a.perms), len(a.value), a.childLen+len(levels[0])+1)
	for i := range levels {
		v, kids := 0, 0
		if i+1 < len(levels) {
			kids = len(levels[i+1]) + 1
		} else {
			v = len(value)
		}
		size = max(size, nodeSize(len(perms), v, kids))
	}
	if c.over(QuotaNodeSize, size) {
		return ENOSPC
	}
	p := anc
	for _, name := range levels {
		p = join(p, name)
		if err := t.add(p, perms); err != nil {
			return err
		}
	}
	if len(value) > 0 {
		if err := t.put(path, value, perms); err != nil {
			return err
		}
	}
	t.changed(change{path: path, perms: perms})
	return nil
}

// rm is RM: as in Xen, a missing node is fine if its parent exists.
func (c *Conn) rm(t tree, path string) error {
	n, ok, err := t.get(path)
	if err != nil {
		return err
	}
	if !ok {
		if err := c.absent(t, path, permWrite); err != ENOENT {
			return err
		}
		if _, pok, err := t.get(parent(path)); err != nil || pok {
			return err
		}
		return ENOENT
	}
	if permFor(c.Domid, n.perms)&permWrite == 0 {
		return EACCES
	}
	if path == "/" {
		return EINVAL
	}
	if err := t.remove(path); err != nil {
		return err
	}
	t.changed(change{path: path, removed: true, perms: n.perms})
	return nil
}

// setPerms is SET_PERMS, checked in Xen's order: the permissions, then the
// node, then who may change its owner.
func (c *Conn) setPerms(t tree, arg string, strs []string) error {
	if c.over(QuotaPerms, len(strs)) {
		return ENOSPC
	}
	perms := make([]Perm, len(strs))
	for i, ps := range strs {
		p, err := ParsePerm(ps)
		if err != nil {
			return err
		}
		perms[i] = p
	}
	path, err := c.abspath(arg)
	if err != nil {
		return err
	}
	n, err := c.node(t, path, permWrite|permOwner)
	if err != nil {
		return err
	}
	if c.Domid != 0 && perms[0].Domid != n.perms[0].Domid {
		return EPERM // only dom0 gives nodes away
	}
	if c.over(QuotaNodeSize, nodeSize(len(perms), len(n.value), n.childLen)) {
		return ENOSPC
	}
	if err := t.put(path, n.value, perms); err != nil {
		return err
	}
	t.changed(change{path: path, perms: perms, old: n.perms})
	return nil
}

func (c *Conn) watch(typ uint32, wpath, token string) ([]byte, error) {
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
	if c.over(QuotaWatches, len(c.watches)+1) {
		return nil, E2BIG
	}
	c.watches = append(c.watches, w)
	// A watch fires once as soon as it is set, after the reply.
	c.after = append(c.after, Msg{Type: XSWatchEvent, Payload: []byte(wpath + "\x00" + token + "\x00")})
	return ok, nil
}

// fire sends watch events for a committed change to every connection whose
// watch covers it and which may read the node (before or after the
// change).
func (s *Store) fire(ch change) {
	for c := range s.conns {
		if len(c.watches) == 0 {
			continue
		}
		if permFor(c.Domid, ch.perms)&permRead == 0 && (ch.old == nil || permFor(c.Domid, ch.old)&permRead == 0) {
			continue
		}
		for _, w := range c.watches {
			if strings.HasPrefix(w.path, "@") {
				continue
			}
			below := ch.removed && isBelow(w.path, ch.path)
			if !isBelow(ch.path, w.path) && !below {
				continue
			}
			p := ch.path
			if below {
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

// firstString is a request's first NUL-terminated string (its path, for
// most types), cut to 64 bytes, for timelines.
func firstString(p []byte) string {
	if i := bytes.IndexByte(p, 0); i >= 0 {
		p = p[:i]
	}
	if len(p) > 64 {
		p = p[:64]
	}
	return string(p)
}
