package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/xenresume/xenresume/vmm/gdbstub"
	"github.com/xenresume/xenresume/vmm/toolstack"
)

// gdbOptions are run's, restore's and create's --gdb flags.
type gdbOptions struct {
	addr    string // --gdb: host:port (loopback) or a Unix socket path
	wait    bool   // --gdb-wait: the guest starts when gdb continues it
	anyAddr bool   // --gdb-any-address: allow a TCP address off loopback
}

// gdbFlags adds --gdb, --gdb-wait and --gdb-any-address.
func (c *command) gdbFlags() *gdbOptions {
	o := &gdbOptions{}
	c.fs.StringVar(&o.addr, "gdb", "", "serve gdb's remote protocol on `ADDR`: host:port on loopback (127.0.0.1:1234, localhost:1234, [::1]:1234) or a Unix socket path; gdb -ex 'target remote ADDR'")
	c.fs.BoolVar(&o.wait, "gdb-wait", false, "with --gdb: keep the guest before its first instruction until gdb connects and continues it")
	c.fs.BoolVar(&o.anyAddr, "gdb-any-address", false, "with --gdb: allow a TCP address that is not loopback (anyone who reaches it controls the guest)")
	return o
}

// check validates the flags together, before anything is created.
func (o *gdbOptions) check() error {
	if o == nil {
		return nil
	}
	if o.addr == "" {
		if o.wait || o.anyAddr {
			return errors.New("--gdb-wait and --gdb-any-address need --gdb ADDR")
		}
		return nil
	}
	network, addr := o.network()
	if network == "unix" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--gdb %q: want host:port or a Unix socket path (with a '/'): %w", o.addr, err)
	}
	if o.anyAddr {
		return nil
	}
	if host == "" {
		return fmt.Errorf("--gdb %q listens on every interface: name a loopback address (127.0.0.1:PORT), or add --gdb-any-address", o.addr)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--gdb %q is not a loopback address: whoever reaches a gdb stub controls the guest; use 127.0.0.1:PORT or a Unix socket, or add --gdb-any-address", o.addr)
	}
	return nil
}

// network says how addr is served: a path (it has a '/', or no ':') is a
// Unix socket, anything else TCP.
func (o *gdbOptions) network() (string, string) {
	if strings.Contains(o.addr, "/") || !strings.Contains(o.addr, ":") {
		return "unix", o.addr
	}
	return "tcp", o.addr
}

// waits reports whether the guest waits for gdb instead of starting.
func (o *gdbOptions) waits() bool { return o != nil && o.addr != "" && o.wait }

// serve listens on the address and serves gdb sessions on dom, one at a
// time, with serveFn (own's, so the server stops before runvm exits). A
// session that ends leaves the guest running.
func (o *gdbOptions) serve(ctx context.Context, serveFn func(string, func() error), dom *toolstack.Domain,
	log *slog.Logger, stderr io.Writer) error {
	if o == nil || o.addr == "" {
		return nil
	}
	network, addr := o.network()
	l, err := net.Listen(network, addr)
	if err != nil {
		return fmt.Errorf("gdb stub: %w", err)
	}
	if network == "unix" {
		if err := os.Chmod(addr, 0o600); err != nil {
			l.Close()
			return fmt.Errorf("gdb stub: %w", err)
		}
	}
	t, err := toolstack.NewDomainTarget(dom, log)
	if err != nil {
		l.Close()
		return fmt.Errorf("gdb stub: %w", err)
	}
	t.TakeCreated = o.wait
	where := l.Addr().String()
	if o.wait {
		fmt.Fprintf(stderr, "runvm: domain %d (%s) waits for gdb: gdb -ex 'target remote %s'\n", dom.ID, dom.Name, where)
	} else {
		fmt.Fprintf(stderr, "runvm: gdb stub for domain %d (%s): gdb -ex 'target remote %s'\n", dom.ID, dom.Name, where)
	}
	serveFn("gdb stub", func() error {
		defer t.Close()
		return gdbstub.Serve(ctx, l, t, log)
	})
	return nil
}
