package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/xenresume/xenresume/vmm/api"
	"github.com/xenresume/xenresume/vmm/rundir"
	"github.com/xenresume/xenresume/vmm/xenstore"
)

// ownerSlot is the runtime slot an owner (own for a PV domain, ownHVM for
// an HVM or PVH one) claims, with its control API and xenstored sockets
// listening.
type ownerSlot struct {
	slot   *rundir.Slot
	api    net.Listener
	xs     net.Listener
	xsPath string // the xenstored socket's path, for api.Info
}

// claimOwnerSlot claims name's slot in runtime and listens on its control
// API and xenstored sockets: failing to create either is fatal. close
// gives all of it back.
func claimOwnerSlot(runtime, name string) (*ownerSlot, error) {
	slot, err := rundir.Claim(runtime, name)
	if err != nil {
		return nil, err
	}
	o := &ownerSlot{slot: slot, xsPath: slot.Path(rundir.XenstoreSock)}
	if o.api, err = slot.Listen(rundir.APISocket); err != nil {
		slot.Release()
		return nil, fmt.Errorf("control API: %w", err)
	}
	if o.xs, err = slot.Listen(rundir.XenstoreSock); err != nil {
		o.api.Close()
		slot.Release()
		return nil, fmt.Errorf("xenstored: %w", err)
	}
	return o, nil
}

// close closes the sockets and releases the slot.
func (o *ownerSlot) close() {
	o.xs.Close()
	o.api.Close()
	o.slot.Release()
}

// servers runs an owner's servers, each in its own goroutine, until stop.
type servers struct {
	ctx    context.Context // cancelled by stop
	cancel context.CancelFunc
	wg     sync.WaitGroup
	log    *slog.Logger
}

// startServers returns servers that serve until ctx ends or stop.
func startServers(ctx context.Context, log *slog.Logger) *servers {
	s := &servers{log: log}
	s.ctx, s.cancel = context.WithCancel(ctx)
	return s
}

// serve runs fn in a goroutine; an error it returns before the servers are
// stopped is logged as what stopped.
func (s *servers) serve(what string, fn func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := fn(); err != nil && s.ctx.Err() == nil {
			s.log.Error(what+" stopped", "err", err)
		}
	}()
}

// owned serves xenstored from store on o's xenstored socket and the
// control API for dom on o's API socket.
func (s *servers) owned(o *ownerSlot, store *xenstore.Store, dom api.Domain) {
	s.serve("xenstored", func() error { return store.Serve(s.ctx, o.xs) })
	s.serve("control API", func() error { return api.ServeListener(s.ctx, o.api, dom) })
}

// stop stops the servers and waits until each has returned.
func (s *servers) stop() {
	s.cancel()
	s.wg.Wait()
}
