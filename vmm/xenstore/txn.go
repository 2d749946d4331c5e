package xenstore

import (
	"sort"
	"strings"
)

// A transaction is a journal of the nodes it touched, not a copy of the
// store, the way C xenstored has done them since Xen 4.9
// (tools/xenstored/transaction.c), with Go maps in place of its TDB:
//
//   - Starting one costs nothing. The first time a request in the
//     transaction reads or changes a node, the node's state is recorded
//     in the journal together with the node's generation in the store at
//     that moment (0 for a node that does not exist). Value and
//     permission slices are shared with the store, which only ever
//     replaces them; a node's child list is copied only when the
//     transaction changes it. Later requests see the journal's state:
//     reads repeat, and the transaction sees its own writes. So a
//     transaction's memory is proportional to what it touched, and
//     other clients never look at open transactions: their requests
//     cost the same with none or a thousand open.
//   - Commit first checks that every node the journal took from the
//     store still has the generation it had then (else EAGAIN: another
//     client changed something the transaction depends on), then works
//     out the whole effect, including the nodes each domain gains or
//     loses, and checks the node quota (ENOSPC). Only then does it
//     change the store, in a pass that cannot fail: all or nothing.
//   - Watch events of a transaction's changes fire at commit.
//
// The journal's view is consistent because every node whose state the
// journal took from the store is checked at commit: any node that changed
// meanwhile makes the commit fail, so a committed transaction behaves as
// if it ran, alone, at the moment of its commit.
type txn struct {
	id      uint32
	c       *Conn
	nodes   map[string]*txEntry
	order   []*txEntry     // in the order first touched: watch events fire in it
	delta   map[uint32]int // nodes gained (lost) per owner, as the transaction sees them
	created bool           // it made nodes: commit checks the node quota
	failed  bool           // a request in it could not complete: commit answers ENOMEM (Xen)
	doomed  bool           // it saw a node that changed since it touched it: commit answers EAGAIN
}

// txEntry is one node as a transaction sees it.
type txEntry struct {
	path     string
	check    bool   // its state came from the store: compare baseGen at commit
	baseGen  uint64 // the store's generation of the node when touched; 0: absent
	exists   bool
	value    []byte
	perms    []Perm
	oldPerms []Perm // perms when touched, for watch permission checks
	gen      uint64
	childLen int
	kids     map[string]struct{} // child names, once loaded
	loaded   bool                // kids holds the child list; else it is the store's at baseGen
	dirty    bool                // changed by the transaction
	fire     bool                // fire watches at commit
	removed  bool                // the target of an RM: fires as a removal
}

func (c *Conn) newTxn(id uint32) *txn {
	return &txn{id: id, c: c, nodes: map[string]*txEntry{}, delta: map[uint32]int{}}
}

// look resolves path in the transaction's view without touching it: the
// journal's entry if any, the store's node along the same path, whether
// the node exists in the view, and whether that was decided by the
// journal (det) rather than by the store.
func (t *txn) look(path string) (e *txEntry, ln *node, vis, det bool) {
	ln = t.c.s.root
	e = t.nodes["/"]
	vis = true
	if e != nil {
		vis, det = e.exists, true
	}
	p := ""
	for _, name := range split(path) {
		var next *node
		if ln != nil {
			next = ln.children[name]
		}
		switch {
		case !vis:
			// Nothing below a node that is not there.
		case e != nil && e.loaded:
			_, vis = e.kids[name]
			det = true
		default:
			vis, det = next != nil, false
		}
		p += "/" + name
		ln = next
		if e = t.nodes[p]; e != nil {
			vis, det = e.exists, true
		}
	}
	return e, ln, vis, det
}

// touch returns path's journal entry, recording the node's current state
// first if the transaction has not touched it yet.
func (t *txn) touch(path string) (*txEntry, error) {
	e, ln, vis, det := t.look(path)
	if e != nil {
		return e, nil
	}
	if t.c.over(QuotaTransactionNodes, len(t.nodes)+1) {
		t.failed = true
		return nil, ENOSPC
	}
	e = &txEntry{path: path}
	if vis && ln == nil {
		// A child list the journal holds names a node the store has
		// lost since: another client changed it, so this cannot commit.
		t.doomed, vis = true, false
	}
	switch {
	case vis:
		e.exists, e.value, e.perms, e.gen, e.childLen = true, ln.value, ln.perms, ln.gen, ln.childLen
		e.check, e.baseGen = true, ln.gen
	case !det:
		e.check = true // absent from the store: must still be at commit
	}
	e.oldPerms = e.perms
	t.nodes[path] = e
	t.order = append(t.order, e)
	return e, nil
}

// loadKids gives e a child list of its own, from the store's.
func (t *txn) loadKids(e *txEntry) {
	if e.loaded {
		return
	}
	e.kids = map[string]struct{}{}
	e.loaded = true
	ln := t.c.s.lookup(e.path)
	if ln == nil || ln.gen != e.baseGen {
		t.doomed = true
	}
	if ln != nil {
		for name := range ln.children {
			e.kids[name] = struct{}{}
		}
		e.childLen = ln.childLen
	}
}

func (t *txn) get(path string) (nodeView, bool, error) {
	e, err := t.touch(path)
	if err != nil || !e.exists {
		return nodeView{}, false, err
	}
	return nodeView{value: e.value, perms: e.perms, gen: e.gen, childLen: e.childLen}, true, nil
}

func (t *txn) childNames(path string) []string {
	e := t.nodes[path]
	if e == nil || !e.exists {
		return nil
	}
	if e.loaded {
		names := make([]string, 0, len(e.kids))
		for name := range e.kids {
			names = append(names, name)
		}
		return names
	}
	ln := t.c.s.lookup(path)
	if ln == nil || ln.gen != e.baseGen {
		t.doomed = true
	}
	if ln == nil {
		return nil
	}
	return ln.childNames()
}

func (t *txn) put(path string, value []byte, perms []Perm) error {
	e, err := t.touch(path)
	if err != nil {
		return err
	}
	if e.perms[0].Domid != perms[0].Domid {
		t.delta[e.perms[0].Domid]--
		t.delta[perms[0].Domid]++
	}
	e.value, e.perms, e.dirty, e.gen = value, perms, true, t.c.s.newGen()
	return nil
}

// add makes an empty node under an existing parent. The request touched
// both before, so it cannot fail half way.
func (t *txn) add(path string, perms []Perm) error {
	pe, err := t.touch(parent(path))
	if err != nil {
		return err
	}
	e, err := t.touch(path)
	if err != nil {
		return err
	}
	t.loadKids(pe)
	name := base(path)
	pe.kids[name] = struct{}{}
	pe.childLen += len(name) + 1
	pe.dirty, pe.gen = true, t.c.s.newGen()
	e.exists, e.value, e.perms = true, []byte{}, perms
	e.kids, e.loaded, e.childLen = map[string]struct{}{}, true, 0
	e.dirty, e.gen = true, t.c.s.newGen()
	t.delta[perms[0].Domid]++
	t.created = true
	return nil
}

func (t *txn) remove(path string) error {
	pe, err := t.touch(parent(path))
	if err != nil {
		return err
	}
	e, err := t.touch(path)
	if err != nil {
		return err
	}
	owners := map[uint32]int{}
	below := false
	for p := range t.nodes {
		if strings.HasPrefix(p, path+"/") {
			below = true
			break
		}
	}
	if ln := t.c.s.lookup(path); !below && !e.loaded && ln != nil {
		countOwners(ln, owners) // untouched below: the store's subtree
	} else {
		t.countView(path, owners)
	}
	for d, n := range owners {
		t.delta[d] -= n
	}
	t.loadKids(pe)
	name := base(path)
	delete(pe.kids, name)
	pe.childLen -= len(name) + 1
	pe.dirty, pe.gen = true, t.c.s.newGen()
	for p, x := range t.nodes {
		if p == path || strings.HasPrefix(p, path+"/") {
			x.exists, x.kids, x.loaded, x.childLen, x.dirty = false, nil, true, 0, true
			x.fire, x.removed = false, false
		}
	}
	return nil
}

// countView counts the nodes of path's subtree in the transaction's view,
// by owner.
func (t *txn) countView(path string, owners map[uint32]int) {
	e, ln, vis, _ := t.look(path)
	if !vis {
		return
	}
	var perms []Perm
	var names []string
	switch {
	case e != nil:
		perms = e.perms
		if e.loaded {
			for name := range e.kids {
				names = append(names, name)
			}
		} else if ln != nil {
			names = ln.childNames()
		}
	case ln != nil:
		perms, names = ln.perms, ln.childNames()
	default:
		return
	}
	owners[perms[0].Domid]++
	for _, name := range names {
		t.countView(join(path, name), owners)
	}
}

func (t *txn) owned(domid uint32) int { return t.c.s.owned[domid] + t.delta[domid] }

func (t *txn) changed(ch change) {
	if e := t.nodes[ch.path]; e != nil {
		e.fire, e.removed = true, ch.removed
	}
}

// commit applies the transaction to the store, all or nothing. s.mu held.
func (t *txn) commit() error {
	s := t.c.s
	if t.failed {
		return ENOMEM
	}
	if t.doomed {
		return EAGAIN
	}
	for _, e := range t.order {
		if !e.check {
			continue
		}
		g := uint64(0)
		if ln := s.lookup(e.path); ln != nil {
			g = ln.gen
		}
		if g != e.baseGen {
			return EAGAIN
		}
	}

	// The plan: nodes that exist at the end and changed, parents first;
	// store subtrees that go; nodes gained and lost per owner. Nothing
	// changes yet.
	var ents []*txEntry
	for _, e := range t.order {
		if e.dirty && e.exists {
			ents = append(ents, e)
		}
	}
	sort.Slice(ents, func(i, j int) bool {
		di, dj := strings.Count(ents[i].path, "/"), strings.Count(ents[j].path, "/")
		if di != dj {
			return di < dj
		}
		return ents[i].path < ents[j].path
	})
	type removal struct {
		parent *node
		name   string
	}
	var removals []removal
	delta := map[uint32]int{}
	rmPerms := map[*txEntry][]Perm{}
	for _, e := range t.order {
		if e.removed && !e.exists {
			if ln := s.lookup(e.path); ln != nil {
				rmPerms[e] = ln.perms
			}
		}
	}
	for _, e := range ents {
		if e.path != "/" {
			pe := t.nodes[parent(e.path)]
			if pe != nil && (!pe.exists || !pe.lists(base(e.path))) || pe == nil && s.lookup(parent(e.path)) == nil {
				// Cannot happen; refuse rather than half-apply.
				s.log.Error("xenstore: inconsistent transaction refused", "conn", t.c.Name, "path", e.path)
				return EAGAIN
			}
		}
		ln := s.lookup(e.path)
		if ln == nil {
			delta[e.perms[0].Domid]++
			continue
		}
		if ln.perms[0].Domid != e.perms[0].Domid {
			delta[ln.perms[0].Domid]--
			delta[e.perms[0].Domid]++
		}
		if !e.loaded {
			continue
		}
		for name, ch := range ln.children {
			if _, keep := e.kids[name]; !keep {
				owners := map[uint32]int{}
				countOwners(ch, owners)
				for d, n := range owners {
					delta[d] -= n
				}
				removals = append(removals, removal{ln, name})
			}
		}
	}
	if t.created && t.c.Domid != 0 {
		for d, n := range delta {
			if d != 0 && n > 0 && t.c.over(QuotaNodes, s.owned[d]+n) {
				return ENOSPC
			}
		}
	}

	// Apply: nothing below can fail.
	for _, r := range removals {
		s.removeChild(r.parent, r.name)
	}
	for _, e := range ents {
		ln := s.lookup(e.path)
		if ln == nil {
			ln = s.addChild(s.lookup(parent(e.path)), base(e.path), e.perms)
		}
		s.setNode(ln, e.value, e.perms)
	}
	for _, e := range t.order {
		switch {
		case !e.fire:
		case e.exists:
			s.fire(change{path: e.path, perms: e.perms, old: e.oldPerms})
		case e.removed && rmPerms[e] != nil:
			s.fire(change{path: e.path, removed: true, perms: rmPerms[e]})
		}
	}
	return nil
}

// lists reports whether e's child list, if it has one of its own, names
// name.
func (e *txEntry) lists(name string) bool {
	if !e.loaded {
		return true
	}
	_, ok := e.kids[name]
	return ok
}
