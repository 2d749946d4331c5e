package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/xenresume/xenresume/vmm/api"
	"github.com/xenresume/xenresume/vmm/migrate"
	"github.com/xenresume/xenresume/vmm/rundir"
	"github.com/xenresume/xenresume/vmm/toolstack"
	"github.com/xenresume/xenresume/vmm/xenstore"
)

// dialTimeout bounds connecting to a migration receiver.
const dialTimeout = 10 * time.Second

// migrations is an owner's record of the last migration it tried, for
// Info.Migration: PV (controlled) and HVM (hvmControlled) owners share it.
type migrations struct {
	stderr io.Writer // the owner's: migration progress

	mu        sync.Mutex
	migration *api.MigrationInfo // the last migration tried
}

// last is the last migration tried, or nil.
func (c *migrations) last() *api.MigrationInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.migration
}

// migrate runs `runvm migrate` in the domain's owner: it connects to the
// receiver and sends the domain d (migrate.Send). Progress goes to the
// owner's stderr when it is a terminal; the rounds go back to the client
// in Info.Migration.
func (c *migrations) migrate(ctx context.Context, d migrate.Migrator, a api.Action) error {
	if a.Target == "" {
		return errors.New("migrate: no target HOST:PORT")
	}
	info := &api.MigrationInfo{Target: a.Target}
	c.mu.Lock()
	c.migration = info
	c.mu.Unlock()
	o := toolstack.MigrateOptions{NonLive: a.NonLive, MaxRounds: a.MaxRounds, TargetDirty: a.TargetDirty}
	if c.stderr != nil && isTerminal(c.stderr) {
		o.Progress = func(r toolstack.MigrateRound) { fmt.Fprintln(c.stderr, "runvm: migrate: "+roundLine(r)) }
	}
	var dialer net.Dialer
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	nc, err := dialer.DialContext(dctx, "tcp", a.Target)
	cancel()
	if err != nil {
		return c.migrated(info, toolstack.MigrateStats{}, fmt.Errorf("migrate: %w; the domain was not touched", err))
	}
	defer nc.Close()
	conn := &migrate.Conn{R: nc, W: nc, Close: nc.Close}
	if c.stderr != nil {
		conn.Log = func(m string) { fmt.Fprintln(c.stderr, "runvm: "+m) }
	}
	stats, err := migrate.Send(ctx, d, conn, o)
	return c.migrated(info, stats, err)
}

// remus runs `runvm remus` in the domain's owner: it replicates the
// domain to the receiver until that fails or the client goes away; the
// guest runs on here either way.
func (c *controlled) remus(ctx context.Context, a api.Action) error {
	if a.Target == "" {
		return errors.New("remus: no target HOST:PORT")
	}
	info := &api.MigrationInfo{Target: a.Target, Outcome: "replicated"}
	c.mu.Lock()
	c.migration = info
	c.mu.Unlock()
	o := toolstack.RemusOptions{Interval: time.Duration(a.IntervalMS) * time.Millisecond, MaxRounds: a.MaxRounds, TargetDirty: a.TargetDirty}
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	nc, err := d.DialContext(dctx, "tcp", a.Target)
	cancel()
	if err != nil {
		return c.migrated(info, toolstack.MigrateStats{}, fmt.Errorf("remus: %w; the domain was not touched", err))
	}
	defer nc.Close()
	n, err := migrate.SendRemus(ctx, c.d, &migrate.Conn{R: nc, W: nc, Close: nc.Close}, o)
	c.mu.Lock()
	info.Checkpoints = n
	c.mu.Unlock()
	if err != nil && c.stderr != nil {
		fmt.Fprintf(c.stderr, "runvm: remus stopped after %d checkpoints: %v\n", n, err)
	}
	return c.migrated(info, toolstack.MigrateStats{}, err)
}

// migrated records how a migration went, for Info.
func (c *migrations) migrated(info *api.MigrationInfo, s toolstack.MigrateStats, err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range s.Rounds {
		info.Rounds = append(info.Rounds, api.MigrationRound{Round: r.Round, Final: r.Final, Pages: r.Pages,
			Dirty: r.Dirty, Bytes: r.Bytes, ElapsedUS: r.Elapsed.Microseconds()})
	}
	if info.Outcome != "replicated" {
		info.Bytes, info.DowntimeUS, info.Outcome = s.Bytes, s.Downtime.Microseconds(), s.Outcome.String()
	}
	if err != nil {
		info.Error = err.Error()
	}
	return err
}

// roundLine is one round's progress line.
func roundLine(r toolstack.MigrateRound) string {
	if r.Final {
		return fmt.Sprintf("final round (suspended): %d pages, %d bytes sent in all", r.Pages, r.Bytes)
	}
	left := "the final round counts the rest"
	if r.Dirty >= 0 {
		left = fmt.Sprintf("%d dirty left", r.Dirty)
	}
	return fmt.Sprintf("round %d: %d pages sent, %s, %.1f MiB/s", r.Round, r.Pages, left, r.Rate()/(1<<20))
}

// apiRoundLine is roundLine for the rounds the client gets back.
func apiRoundLine(r api.MigrationRound) string {
	return roundLine(toolstack.MigrateRound{Round: r.Round, Final: r.Final, Pages: r.Pages, Dirty: r.Dirty,
		Bytes: r.Bytes, Elapsed: time.Duration(r.ElapsedUS) * time.Microsecond})
}

// cmdMigrateReceive receives a migration (as xl migrate-receive) into a
// new domain and owns it like restore: on a TCP address it listens for
// one connection; with --listen - it speaks on stdin and stdout (as xl
// does over ssh), and the guest's console goes to stderr.
func cmdMigrateReceive(args []string, stdout, stderr io.Writer) int {
	stdout, stderr = &syncWriter{w: stdout}, &syncWriter{w: stderr}
	c := newCommand("migrate-receive", "", 0, stdout, stderr)
	name := c.fs.String("name", "", "`name` for the domain (default: the sender's)")
	listen := c.fs.String("listen", "", "`ADDR:PORT` to accept the migration on (one connection), or - for stdin and stdout")
	timeout := c.fs.Duration("timeout", migrate.DefaultTimeout, "how long to wait for each handshake message")
	idle := c.fs.Duration("idle", migrate.DefaultIdle, "how long the stream may stop before the migration fails (with --remus: before failing over)")
	remus := c.fs.Bool("remus", false, "receive a Remus checkpointed stream (xl's -r): buffer each checkpoint, fail over to the last complete one when the stream breaks")
	runtime := c.runtimeFlag()
	of := c.ownerFlags()
	if code := c.parse(args); code >= 0 {
		return code
	}
	if *listen == "" {
		return c.usageError(errors.New("--listen ADDR:PORT or --listen - is required"))
	}
	if *timeout <= 0 || *idle <= 0 {
		return c.usageError(errors.New("--timeout and --idle must be positive"))
	}
	if of.gdb.waits() {
		return c.usageError(errors.New("--gdb-wait: the sender decides when the guest starts"))
	}
	if *name != "" {
		if err := toolstack.ValidateName(*name); err != nil {
			return c.usageError(err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	conn := &migrate.Conn{Timeout: *timeout, Idle: *idle, Log: func(m string) { fmt.Fprintln(stderr, "runvm: "+m) }}
	console := stdout
	if *listen == "-" {
		// stdin and stdout carry the migration.
		conn.R, conn.W, console = os.Stdin, stdout, stderr
	} else {
		l, err := net.Listen("tcp", *listen)
		if err != nil {
			return c.fail(err)
		}
		fmt.Fprintf(stderr, "runvm: migrate-receive: listening on %s\n", l.Addr())
		stopAccept := context.AfterFunc(ctx, func() { l.Close() })
		nc, err := l.Accept()
		stopAccept()
		l.Close() // one migration per receiver
		if err != nil {
			if ctx.Err() != nil {
				return exitSignal
			}
			return c.fail(err)
		}
		defer nc.Close()
		conn.R, conn.W, conn.Close = nc, nc, nc.Close
	}
	in, err := migrate.Accept(ctx, conn)
	if err != nil {
		return c.fail(err)
	}
	if *name == "" {
		*name = in.Name
	}
	if err := toolstack.ValidateName(*name); err != nil {
		return c.fail(fmt.Errorf("the incoming domain's %w (use --name)", err))
	}
	if in.HVM() {
		if *remus {
			return c.fail(errors.New("the incoming domain is HVM or PVH: Remus is not done for those (issue #11)"))
		}
		of.startHVM = func(d *toolstack.HVMDomain) error { return in.Start(ctx, d, d.Unpause) }
		return ownHVM(c, *runtime, *name, false, of, func(store *xenstore.Store, slot *rundir.Slot, log *slog.Logger) (*toolstack.HVMDomain, error) {
			d, err := in.RestoreHVM(ctx, toolstack.HVMRestoreConfig{Name: slot.Name, ID: slot.Domid, Console: console, Log: log, Store: store})
			if err == nil {
				fmt.Fprintf(stderr, "runvm: received domain %d (%s)\n", d.ID, d.Name)
			}
			return d, err
		})
	}
	if *remus {
		return own(c, *runtime, *name, true, of, func(ts *toolstack.Toolstack, slot *rundir.Slot) (*toolstack.Domain, error) {
			d, n, err := in.ReceiveCheckpoints(ctx, ts, toolstack.DomainConfig{Name: slot.Name, Console: console},
				func(n int) {
					if n == 1 {
						fmt.Fprintln(stderr, "runvm: remus: first checkpoint complete; the secondary is ready to fail over")
					}
				})
			if err == nil {
				fmt.Fprintf(stderr, "runvm: remus: the primary's stream broke; failed over to checkpoint %d as domain %d (%s)\n", n, d.ID, d.Name)
			}
			return d, err
		})
	}
	of.start = func(d *toolstack.Domain) error { return in.Start(ctx, d, d.Unpause) }
	return own(c, *runtime, *name, true, of, func(ts *toolstack.Toolstack, slot *rundir.Slot) (*toolstack.Domain, error) {
		d, err := in.Restore(ctx, ts, toolstack.DomainConfig{Name: slot.Name, Console: console})
		if err == nil {
			fmt.Fprintf(stderr, "runvm: received domain %d (%s)\n", d.ID, d.Name)
		}
		return d, err
	})
}
