package xenstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
)

// ServeUnix serves the store on a Unix socket at path (mode 0600), as
// xenstored does at /run/xenstored/socket: every client is dom0. Debian's
// xenstore-utils connect to it with XENSTORED_PATH=path. It returns when
// ctx is done (closing the listener and every connection) or the listener
// fails.
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

// Serve serves socket clients (dom0) from l until ctx is done.
func (s *Store) Serve(ctx context.Context, l net.Listener) error {
	var wg sync.WaitGroup
	conns := map[net.Conn]struct{}{}
	var mu sync.Mutex
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
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("xenstore: accept: %w", err)
		}
		mu.Lock()
		conns[nc] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(nc)
			mu.Lock()
			delete(conns, nc)
			mu.Unlock()
		}()
	}
}

func (s *Store) serveConn(nc net.Conn) {
	c := s.NewConn(0, "socket")
	var wmu sync.Mutex // replies and events share the socket
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
		for m := range c.Out() {
			write(m)
		}
	}()
	for {
		m, err := ReadMsg(nc)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.log.Warn("xenstore: closing socket connection", "err", err)
			}
			break
		}
		c.Handle(m, write)
	}
	c.Close()
	<-done
	nc.Close()
}
