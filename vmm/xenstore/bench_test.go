package xenstore

import (
	"context"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkSocket: READ round trips over the Unix socket against null
// requests (an unknown type, answered ENOSYS without touching the store)
// in the same run.
func BenchmarkSocket(b *testing.B) {
	s := New(nil)
	s.Write("/local/domain/1/name", "guest")
	sock := filepath.Join(b.TempDir(), "s")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.ServeUnix(ctx, sock)
	var nc net.Conn
	var err error
	for i := 0; i < 1000; i++ {
		if nc, err = net.Dial("unix", sock); err == nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	loop := func(m Msg, n int) time.Duration {
		req := m.Marshal()
		t0 := time.Now()
		for i := 0; i < n; i++ {
			if _, err := nc.Write(req); err != nil {
				b.Fatal(err)
			}
			if _, err := ReadMsg(nc); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(t0)
	}
	read := Msg{Type: XSRead, Payload: []byte("/local/domain/1/name\x00")}
	null := Msg{Type: 99, Payload: []byte("x\x00")} // an unknown type: ENOSYS
	b.ResetTimer()
	rd, nl := loop(read, b.N), loop(null, b.N)
	b.ReportMetric(float64(b.N)/rd.Seconds(), "reads/s")
	b.ReportMetric(float64(b.N)/nl.Seconds(), "null/s")
	b.ReportMetric(float64(rd)/float64(nl), "x-null")
}

// BenchmarkStoreRead: the store alone, in process.
func BenchmarkStoreRead(b *testing.B) {
	s := New(nil)
	s.Write("/local/domain/1/name", "guest")
	c := s.NewConn(0, "bench")
	m := Msg{Type: XSRead, Payload: []byte("/local/domain/1/name\x00")}
	for i := 0; i < b.N; i++ {
		c.Handle(m, func(Msg) {})
	}
}

// BenchmarkReadOpenTransactions: READ latency on a 20,000-node store
// with no open transaction and with 1,000 open (each having read two
// nodes and written one), measured on two identical stores in
// alternating chunks of the same run, and their ratio (x-1000tx; the goal
// is at most 1.2). Before transactions became journals each open one
// held a copy of the tree.
func BenchmarkReadOpenTransactions(b *testing.B) {
	const nodes, open, chunk = 20000, 1000, 500
	quiet, busy := bigStore(b, nodes), bigStore(b, nodes)
	l := busy.Limits()
	l.Privileged.Transactions = open
	busy.SetLimits(l)
	holder := busy.NewConn(0, "holder")
	defer holder.Close()
	for i := 0; i < open; i++ {
		var tx uint32
		holder.Handle(Msg{Type: XSTransactionStart, Payload: []byte{0}}, func(r Msg) {
			n, _ := strconv.Atoi(strings.TrimSuffix(string(r.Payload), "\x00"))
			tx = uint32(n)
		})
		if tx == 0 {
			b.Fatal("transaction start failed")
		}
		for _, m := range []Msg{
			{Type: XSRead, TxID: tx, Payload: []byte("/big/" + strconv.Itoa(i%200) + "/n" + strconv.Itoa(i%200*100) + "\x00")},
			{Type: XSRead, TxID: tx, Payload: []byte("/big/199/n19999\x00")},
			{Type: XSWrite, TxID: tx, Payload: []byte("/big/" + strconv.Itoa(i%200) + "/tx" + strconv.Itoa(i) + "\x00v")},
		} {
			holder.Handle(m, func(r Msg) {
				if r.Type == XSError {
					b.Fatalf("%s in a transaction: %s", TypeName(m.Type), r.Payload)
				}
			})
		}
	}
	if st := busy.Stats(); st.Transactions != open {
		b.Fatalf("%d transactions open", st.Transactions)
	}
	q, w := quiet.NewConn(0, "reader"), busy.NewConn(0, "reader")
	defer q.Close()
	defer w.Close()
	m := Msg{Type: XSRead, Payload: []byte("/big/150/n15000\x00")}
	reads := func(c *Conn, n int) time.Duration {
		t0 := time.Now()
		for i := 0; i < n; i++ {
			c.Handle(m, func(Msg) {})
		}
		return time.Since(t0)
	}
	var base, with time.Duration
	b.ResetTimer()
	for done := 0; done < b.N; done += chunk {
		n := min(chunk, b.N-done)
		base += reads(q, n)
		with += reads(w, n)
	}
	b.ReportMetric(float64(base.Nanoseconds())/float64(b.N), "ns/read-0tx")
	b.ReportMetric(float64(with.Nanoseconds())/float64(b.N), "ns/read-1000tx")
	b.ReportMetric(float64(with)/float64(base), "x-1000tx")
}
