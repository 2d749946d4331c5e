package xenstore

import (
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"testing"
)

// fuzzPaths are the nodes the transaction fuzzer works on, below
// /local/domain/1/data; fuzzBase is where they live.
var fuzzPaths = []string{"a", "a/b", "a/b/c", "d", "d/e", "f"}

const fuzzBase = "/local/domain/1/data"

// fuzzModel is the committed store below fuzzBase: relative path to value
// ("" is fuzzBase itself).
type fuzzModel map[string]string

func (m fuzzModel) write(path, value string) {
	for p := parentRel(path); p != ""; p = parentRel(p) {
		if _, ok := m[p]; !ok {
			m[p] = ""
		}
	}
	m[path] = value
}

func (m fuzzModel) rm(path string) {
	for p := range m {
		if p == path || strings.HasPrefix(p, path+"/") {
			delete(m, p)
		}
	}
}

func parentRel(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

// fuzzOp is a change a connection made: a write (value set) or an rm.
type fuzzOp struct {
	rm          bool
	path, value string
}

func (m fuzzModel) apply(op fuzzOp) {
	if op.rm {
		m.rm(op.path)
	} else {
		m.write(op.path, op.value)
	}
}

// storeBelow renders the store below fuzzBase like a fuzzModel.
func storeBelow(s *Store) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var lines []string
	var walk func(rel string, n *node)
	walk = func(rel string, n *node) {
		lines = append(lines, fmt.Sprintf("%q=%q", rel, n.value))
		for name, c := range n.children {
			r := name
			if rel != "" {
				r = rel + "/" + name
			}
			walk(r, c)
		}
	}
	if n := s.lookup(fuzzBase); n != nil {
		walk("", n)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func (m fuzzModel) String() string {
	var lines []string
	for p, v := range m {
		lines = append(lines, fmt.Sprintf("%q=%q", p, v))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// FuzzTransactions interleaves writes, removals, reads, commits and aborts
// of three connections (two dom0 ones and domain 1's, which has a small
// node quota while dom0 keeps giving it nodes) and checks the store against
// a model after every step: a committed transaction's writes all appear,
// an aborted or failed one's none; outside a transaction every change
// appears at once; reads in a transaction see its own writes; the node
// accounting stays exact.
//
// Each operation is two bytes: the first picks the connection (b%3) and
// the operation ((b/3)%6: write, rm, start, commit, abort, read), the
// second the path (b%6 of fuzzPaths) and the value written.
func FuzzTransactions(f *testing.F) {
	f.Add([]byte{6, 0, 0, 0, 0, 4, 9, 0})
	f.Add([]byte{6, 0, 15, 0, 1, 0, 0, 5, 9, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 400 {
			ops = ops[:400]
		}
		s := New(slog.New(slog.DiscardHandler))
		q := DefaultQuota
		q.Nodes, q.TransactionNodes = 5, 12
		s.SetQuota(q)
		home := DomainPath(1)
		s.Write(home, "")
		s.SetPerms(home, Perm{'n', 0}, Perm{'r', 1})
		s.Write(fuzzBase, "")
		s.SetPerms(fuzzBase, Perm{'n', 1})
		model := fuzzModel{"": ""}
		type fconn struct {
			c    *Conn
			tx   uint32
			ops  []fuzzOp
			seen map[string]*string // in the transaction: its own latest write, nil for removed
		}
		var conns []*fconn
		for _, d := range []uint32{0, 0, 1} {
			c := s.NewConn(d, fmt.Sprintf("fuzz-%d", len(conns)))
			defer c.Close()
			conns = append(conns, &fconn{c: c})
		}
		req := func(fc *fconn, typ, tx uint32, payload string) (string, Error) {
			var r Msg
			fc.c.Handle(Msg{Type: typ, TxID: tx, Payload: []byte(payload)}, func(m Msg) { r = m })
			fc.c.pending()
			if r.Type == XSError {
				return "", Error(strings.TrimSuffix(string(r.Payload), "\x00"))
			}
			if r.Type != typ {
				t.Fatalf("reply %s to %s", TypeName(r.Type), TypeName(typ))
			}
			return string(r.Payload), ""
		}
		for i := 0; i+1 < len(ops); i += 2 {
			fc := conns[int(ops[i])%3]
			kind := (int(ops[i]) / 3) % 6
			rel := fuzzPaths[int(ops[i+1])%len(fuzzPaths)]
			value := string(rune('a' + int(ops[i+1])/len(fuzzPaths)%26))
			abs := fuzzBase + "/" + rel
			step := fmt.Sprintf("op %d: conn %s tx %d kind %d %s", i/2, fc.c.Name, fc.tx, kind, rel)
			switch kind {
			case 0, 1: // write, rm
				op := fuzzOp{rm: kind == 1, path: rel, value: value}
				var err Error
				if op.rm {
					_, err = req(fc, XSRm, fc.tx, abs+"\x00")
				} else {
					_, err = req(fc, XSWrite, fc.tx, abs+"\x00"+value)
				}
				if err != "" {
					break
				}
				if fc.tx == 0 {
					model.apply(op)
					break
				}
				fc.ops = append(fc.ops, op)
				if op.rm {
					for p := range fc.seen {
						if p == rel || strings.HasPrefix(p, rel+"/") {
							fc.seen[p] = nil
						}
					}
					fc.seen[rel] = nil
				} else {
					fc.seen[rel] = &value
					for p := parentRel(rel); p != ""; p = parentRel(p) {
						if own, ok := fc.seen[p]; ok && own == nil {
							empty := "" // made again, empty
							fc.seen[p] = &empty
						}
					}
				}
			case 2: // start
				if fc.tx != 0 {
					break
				}
				r, err := req(fc, XSTransactionStart, 0, "\x00")
				if err != "" {
					t.Fatalf("%s: start: %v", step, err)
				}
				fc.tx = atoi(t, r)
				fc.ops, fc.seen = nil, map[string]*string{}
			case 3, 4: // commit, abort
				if fc.tx == 0 {
					break
				}
				before := storeBelow(s)
				arg := "T\x00"
				if kind == 4 {
					arg = "F\x00"
				}
				_, err := req(fc, XSTransactionEnd, fc.tx, arg)
				switch {
				case kind == 3 && err == "":
					for _, op := range fc.ops {
						model.apply(op)
					}
				case kind == 3 && err != EAGAIN && err != ENOSPC && err != ENOMEM:
					t.Fatalf("%s: commit: %v", step, err)
				default:
					if after := storeBelow(s); after != before {
						t.Fatalf("%s: a transaction that did not commit (%v) changed the store:\n%s\nto\n%s", step, err, before, after)
					}
				}
				fc.tx, fc.ops, fc.seen = 0, nil, nil
			case 5: // read
				v, err := req(fc, XSRead, fc.tx, abs+"\x00")
				if fc.tx != 0 {
					if own, ok := fc.seen[rel]; ok {
						if own == nil && err != ENOENT || own != nil && (err != "" || v != *own) {
							t.Fatalf("%s: read in the transaction %q %v, want its own write %v", step, v, err, own)
						}
					}
					break
				}
				if want, ok := model[rel]; ok != (err == "") || ok && v != want {
					t.Fatalf("%s: read %q %v, model %q %v", step, v, err, want, ok)
				}
			}
			if got := storeBelow(s); got != model.String() {
				t.Fatalf("%s: store\n%s\nmodel\n%s", step, got, model)
			}
			checkAccounting(t, s)
		}
	})
}
