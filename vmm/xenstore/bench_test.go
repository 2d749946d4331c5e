package xenstore

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkSocket: READ round trips over the Unix socket against null
// requests (an unsupported type, answered ENOSYS without touching the
// store) in the same run.
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
	null := Msg{Type: XSControl, Payload: []byte("x\x00")}
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
