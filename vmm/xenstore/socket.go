package xenstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// ServeUnix serves the store on a Unix socket at path (mode 0600), as
// xenstored does at /run/xenstored/socket: every client is dom0. Debian's
// xenstore-utils connect to it with XENSTORED_PATH=path. It returns when
// ctx is done (closing the listener and every connection) or the listener
// fails for good.
func (s *Store) ServeUnix(ctx context.Context, path string) error {
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("xenstore: listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("xenstore: chmod %s: %w", path, err)
	}
	return s.Serve(ctx, l)
}

// Accept backoff after a transient error, as net/http's server does it.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// transientAccept reports whether an accept error is one of running out
// of something (descriptors, buffers, memory) or of a client that gave
// up: worth waiting out, not a dead listener.
func transientAccept(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED,
		syscall.ENOBUFS, syscall.ENOMEM, syscall.EINTR, syscall.EAGAIN, syscall.EPROTO} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Serve serves socket clients (dom0) from l until ctx is done. Transient
// accept errors (EMFILE, ENFILE, ECONNABORTED, ENOBUFS, ENOMEM) are waited
// out, 5 ms doubling up to 1 s between tries; they are logged once per
// run of them and counted (Stats.AcceptRetries). Past
// Limits.MaxConnections connections at once, or
// Limits.MaxClientConnections from one client process, a new connection
// is accepted and closed at once, logged once per run and counted
// (QuotaConnections, QuotaClientConnections). Each connection holds
// exactly one descriptor.
func (s *Store) Serve(ctx context.Context, l net.Listener) error {
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		conns   = map[net.Conn]struct{}{}
		clients = map[int32]int{} // connections per client pid
	)
	stop := context.AfterFunc(ctx, func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	defer wg.Wait()
	var delay time.Duration
	var refused uint64
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !transientAccept(err) {
				return fmt.Errorf("xenstore: accept: %w", err)
			}
			if delay == 0 {
				delay = acceptBackoffMin
				s.log.Warn("xenstore: accept failing; backing off", "err", err)
			} else {
				delay = min(2*delay, acceptBackoffMax)
			}
			s.mu.Lock()
			s.acceptRetries++
			s.mu.Unlock()
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		if delay != 0 {
			s.log.Info("xenstore: accepting again")
			delay = 0
		}
		pid := peerPID(nc)
		lim := s.limits.Load()
		mu.Lock()
		kind, limit := QuotaKind(-1), 0
		switch {
		case lim.MaxConnections > 0 && len(conns) >= lim.MaxConnections:
			kind, limit = QuotaConnections, lim.MaxConnections
		case lim.MaxClientConnections > 0 && pid > 0 && clients[pid] >= lim.MaxClientConnections:
			kind, limit = QuotaClientConnections, lim.MaxClientConnections
		}
		if kind >= 0 {
			mu.Unlock()
			s.mu.Lock()
			s.hits[kind]++ // counted before the client can see the close
			s.mu.Unlock()
			nc.Close()
			if refused++; refused == 1 {
				s.log.Warn("xenstore: refusing socket connections", "quota", kind.String(), "limit", limit, "pid", pid)
			}
			continue
		}
		if refused > 0 {
			s.log.Info("xenstore: socket connections accepted again", "refused", refused)
			refused = 0
		}
		conns[nc] = struct{}{}
		clients[pid]++
		mu.Unlock()
		s.mu.Lock()
		s.connSeq++
		name := fmt.Sprintf("socket-%d pid %d", s.connSeq, pid)
		s.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(nc, name)
			mu.Lock()
			delete(conns, nc)
			if clients[pid]--; clients[pid] <= 0 {
				delete(clients, pid)
			}
			mu.Unlock()
		}()
	}
}

// peerPID returns the process at the other end of a Unix socket, or -1.
func peerPID(nc net.Conn) int32 {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return -1
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	pid := int32(-1)
	raw.Control(func(fd uintptr) {
		if cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED); err == nil {
			pid = cred.Pid
		}
	})
	return pid
}

// serveConn serves one socket client: requests one at a time, replies
// and watch events sharing the socket.
func (s *Store) serveConn(nc net.Conn, name string) {
	c := s.NewConn(0, name)
	var wmu sync.Mutex
	write := func(m Msg) {
		wmu.Lock()
		defer wmu.Unlock()
		if _, err := nc.Write(m.Marshal()); err != nil {
			nc.Close()
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := c.NextEvent(context.Background())
			if err != nil {
				return
			}
			write(m)
		}
	}()
	for {
		m, err := ReadMsg(nc)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.log.Warn("xenstore: closing socket connection", "conn", name, "err", err)
			}
			break
		}
		c.Handle(m, write)
	}
	c.Close()
	nc.Close()
	<-done
}
