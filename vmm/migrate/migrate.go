// Package migrate is xl's migration protocol around the save stream
// (tools/xl/xl_migrate.c and create_domain in xl_vmcontrol.c): the
// receiver's banner, the stream, the receiver's "ready to unpause", the
// sender's permission to start, the receiver's report, and the way back
// when the target fails. Send runs the sending side on a domain
// (toolstack.Domain.Migrate does the stream); Accept, Incoming.Restore and
// Incoming.Start run the receiving side, which is a restore. SendRemus and
// Incoming.ReceiveCheckpoints are Remus (xl remus, migrate-receive -r):
// the same banner and headers, then a checkpointed stream and no
// handshake.
//
// The bytes on the wire are xl's (docs/MIGRATION.md): an xl sender can
// talk to a runvm receiver and the other way round, as far as the stream
// itself goes. Where xl waits forever, every wait here is bounded
// (Conn.Timeout for each handshake message, Conn.Idle for a stream that
// stops moving): xl has no timeouts in the handshake.
package migrate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/toolstack"
	"github.com/xenresume/xenresume/vmm/xlcfg"
)

// The protocol's fixed messages (tools/xl/xl.h). Only the banner goes
// without its NUL.
const (
	Banner        = "xl migration receiver ready, send binary domain data.\n"
	ReadyMsg      = "domain received, ready to unpause\x00"
	GoMsg         = "domain is yours, you are cleared to unpause\x00"
	ReportMsg     = "my copy unpause results are as follows\x00"
	PermissionMsg = GoMsg // "permission to sender to have domain back"
)

// Defaults for Conn's bounds.
const (
	// DefaultTimeout bounds each wait for a handshake message.
	DefaultTimeout = 30 * time.Second
	// DefaultIdle bounds how long the receiver waits for the next bytes
	// of the stream: more than libxl's two 60 s suspend waits, during
	// which the sender sends nothing.
	DefaultIdle = 150 * time.Second
)

// StatusFailed is the report's status byte for a failed start (libxl's
// ERROR_FAIL, -3, negated as xl does); StatusNoGo is the one for a
// permission that never came ((char)-1).
const (
	StatusOK     = 0
	StatusFailed = 3
	StatusNoGo   = 0xff
)

// ErrProtocol is wrapped by every error about bytes that are not the
// protocol's.
var ErrProtocol = errors.New("migration protocol")

// Conn is one migration's byte streams: a TCP connection, or a pair such
// as a receiver's stdin and stdout (xl migrate-receive runs over ssh).
type Conn struct {
	R io.Reader
	W io.Writer
	// Close, when set, is called to abort reads and writes that wait too
	// long (a timeout, or the context's end); a Conn without it cannot
	// abort a read that blocks.
	Close func() error
	// Timeout bounds each wait for a handshake message (DefaultTimeout
	// when 0); Idle bounds the receiver's wait for more of the stream
	// (DefaultIdle when 0).
	Timeout, Idle time.Duration
	// Log, when set, gets xl's progress messages ("migration target:
	// Ready to receive domain.").
	Log func(msg string)
}

func (c *Conn) logf(format string, args ...any) {
	if c.Log != nil {
		c.Log(fmt.Sprintf(format, args...))
	}
}

func (c *Conn) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultTimeout
}

// bounded runs fn, closing the connection if it takes longer than d or
// ctx ends first, and says which.
func (c *Conn) bounded(ctx context.Context, d time.Duration, what string, fn func() error) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		if c.Close != nil {
			c.Close()
		}
	})
	err := fn()
	if !stop() && ctx.Err() != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%s: no answer within %v", what, d)
		}
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
	return err
}

// expect reads msg, as xl's libxl_read_exactly and memcmp do.
func (c *Conn) expect(ctx context.Context, msg, what, stream string) error {
	buf := make([]byte, len(msg))
	return c.bounded(ctx, c.timeout(), "waiting for "+what, func() error {
		if _, err := io.ReadFull(c.R, buf); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: file/stream truncated reading %s from %s", ErrProtocol, what, stream)
			}
			return fmt.Errorf("reading %s from %s: %w", what, stream, err)
		}
		if !bytes.Equal(buf, []byte(msg)) {
			return fmt.Errorf("%w: %s contained unexpected data instead of %s", ErrProtocol, stream, what)
		}
		return nil
	})
}

func (c *Conn) send(ctx context.Context, msg, what string) error {
	return c.bounded(ctx, c.timeout(), "sending "+what, func() error {
		if _, err := c.W.Write([]byte(msg)); err != nil {
			return fmt.Errorf("sending %s: %w", what, err)
		}
		return nil
	})
}

// Migrator is a domain Send can migrate: *toolstack.Domain (PV) and
// *toolstack.HVMDomain (HVM and PVH) are.
type Migrator interface {
	Migrate(ctx context.Context, w io.Writer, o toolstack.MigrateOptions,
		handoff func(ctx context.Context) (toolstack.Handoff, error)) (toolstack.MigrateStats, error)
}

// Send migrates d over c as xl migrate does: it waits for the receiver's
// banner, sends the stream (Domain.Migrate, with o), and then hands over:
// it waits for "ready", gives permission to start, and reads the report.
// The domain ends as Migrate says: destroyed when the target runs it;
// running again (the guest sees 1) for every failure before the
// permission to start, and for a target that reports a failed start and
// gives the domain back; suspended when the handoff broke after the
// permission, where only an operator can know which copy should run.
func Send(ctx context.Context, d Migrator, c *Conn, o toolstack.MigrateOptions) (toolstack.MigrateStats, error) {
	const peer = "migration receiver stream"
	if err := c.expect(ctx, Banner, "banner", peer); err != nil {
		return toolstack.MigrateStats{}, fmt.Errorf("migration receiver: %w; the domain was not touched", err)
	}
	// The stream's writes must keep moving: a receiver that stops
	// reading fails the migration after Idle, as one that dies does.
	ctx, release := c.closeWhenDone(ctx)
	defer release()
	w := &stallWriter{w: c.W, stallTimer: c.stallTimer()}
	defer w.stop()
	if c.Close != nil {
		o.Abort = func() { c.Close() }
	}
	return d.Migrate(ctx, w, o, func(ctx context.Context) (toolstack.Handoff, error) {
		w.stop()
		if err := c.expect(ctx, ReadyMsg, "ready message", peer); err != nil {
			return toolstack.NotHandedOver, err
		}
		c.logf("migration sender: Target has acknowledged transfer.")
		c.logf("migration sender: Giving target permission to start.")
		// The point of no return: from here the target may run it.
		if err := c.send(ctx, GoMsg, "permission to start"); err != nil {
			return toolstack.HandoffUnknown, err
		}
		if err := c.expect(ctx, ReportMsg, "the target's report", peer); err != nil {
			return toolstack.HandoffUnknown, err
		}
		var status [1]byte
		if err := c.bounded(ctx, c.timeout(), "waiting for the target's status", func() error {
			_, err := io.ReadFull(c.R, status[:])
			return err
		}); err != nil {
			return toolstack.HandoffUnknown, fmt.Errorf("reading the target's status: %w", err)
		}
		if status[0] == StatusOK {
			c.logf("migration sender: Target reports successful startup.")
			return toolstack.HandedOver, nil
		}
		c.logf("migration sender: Target reports startup failure (status code %d).", int8(status[0]))
		if err := c.expect(ctx, PermissionMsg, "permission to resume", peer); err != nil {
			return toolstack.HandoffUnknown, fmt.Errorf("the target reported startup failure (status code %d) but did not give the domain back: %w", int8(status[0]), err)
		}
		c.logf("migration sender: Trying to resume at our end.")
		return toolstack.NotHandedOver, fmt.Errorf("the target reports startup failure (status code %d)", int8(status[0]))
	})
}

func (c *Conn) idle() time.Duration {
	if c.Idle > 0 {
		return c.Idle
	}
	return DefaultIdle
}

// closeWhenDone returns a context that ends with ctx, or at release, and
// closes c (where c can be closed) if it ends before release: an operation
// on c that is cancelled unblocks the I/O it is stuck in.
func (c *Conn) closeWhenDone(ctx context.Context) (_ context.Context, release func()) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(ctx, func() {
		if c.Close != nil {
			c.Close()
		}
	})
	return ctx, func() { stop(); cancel() }
}

// stallTimer is a watchdog that closes c when one read or write on it
// stalls for c's idle time.
func (c *Conn) stallTimer() stallTimer {
	return stallTimer{idle: c.idle(), close: c.Close}
}

// Incoming is a migration being received: the banner sent and the
// domain's configuration read.
type Incoming struct {
	c      *Conn
	header []byte // the xl header as read, for the restore
	// Config is the domain's xl configuration from the stream; Name the
	// name in it (empty when none).
	Config string
	Name   string
}

// Accept begins the receiving side on c: it sends the banner and reads
// the xl header with the domain's configuration.
func Accept(ctx context.Context, c *Conn) (*Incoming, error) {
	c.logf("migration target: Ready to receive domain.")
	if err := c.send(ctx, Banner, "banner"); err != nil {
		return nil, err
	}
	var hdr bytes.Buffer
	var cfg string
	err := c.bounded(ctx, c.timeout(), "waiting for the xl header", func() error {
		var err error
		cfg, err = stream.ReadXLHeader(io.TeeReader(c.R, &hdr))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("migration stream: %w", err)
	}
	in := &Incoming{c: c, header: hdr.Bytes(), Config: cfg}
	if f, err := xlcfg.Parse("incoming configuration", []byte(cfg)); err == nil {
		if s, ok := f.Lookup("name"); ok && s.Value.Kind == xlcfg.String {
			in.Name = s.Value.Text
		}
	}
	return in, nil
}

// Restore reads the rest of the stream into a new domain on ts, left
// paused (toolstack.RestoreStream). A stream that stops for longer than
// the Conn's Idle fails. On failure nothing is left (the restore undoes
// itself) and nothing more is written: the sender sees the connection
// end, as from xl's receiver.
func (in *Incoming) Restore(ctx context.Context, ts *toolstack.Toolstack, cfg toolstack.DomainConfig) (*toolstack.Domain, error) {
	c := in.c
	ctx, release := c.closeWhenDone(ctx)
	defer release()
	r := in.stream()
	defer r.stop()
	d, err := ts.RestoreStream(ctx, r, "incoming migration stream", 0, cfg)
	if err != nil {
		c.logf("migration target: Domain creation failed.")
		return nil, err
	}
	return d, nil
}

// stream is the incoming migration stream, from its first record (the
// xl header Accept read, then the rest of the connection), failing when it
// stalls for the Conn's idle time.
func (in *Incoming) stream() *stallReader {
	return &stallReader{r: io.MultiReader(bytes.NewReader(in.header), in.c.R), stallTimer: in.c.stallTimer()}
}

// HVM reports whether the incoming domain is an HVM or PVH one (its
// configuration says type = "hvm" or "pvh"): RestoreHVM receives it, not
// Restore.
func (in *Incoming) HVM() bool { return toolstack.IsHVMConfig(in.Config) }

// RestoreHVM is Restore for an HVM or PVH domain (toolstack.RestoreHVM):
// the new domain is left Created, not started.
func (in *Incoming) RestoreHVM(ctx context.Context, cfg toolstack.HVMRestoreConfig) (*toolstack.HVMDomain, error) {
	c := in.c
	ctx, release := c.closeWhenDone(ctx)
	defer release()
	r := in.stream()
	defer r.stop()
	cfg.Stream = true
	d, err := toolstack.RestoreHVM(&ctxReader{ctx: ctx, r: r}, cfg)
	if err != nil {
		c.logf("migration target: Domain creation failed.")
		return nil, err
	}
	return d, nil
}

// ctxReader fails reads once ctx has ended: a reader that cannot be
// closed (stdin) still stops a restore at the next read.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}

// Destroyer is a received domain Start can destroy.
type Destroyer interface{ Destroy() error }

// Start finishes the receiving side for the restored domain d: it says
// "ready", waits for the permission to start, runs start (which unpauses
// the domain) and reports. If the permission never comes, or start fails,
// it reports the failure, destroys d and gives the domain back to the
// sender. It returns nil only when the guest runs here.
func (in *Incoming) Start(ctx context.Context, d Destroyer, start func() error) error {
	c := in.c
	const peer = "migration stream"
	c.logf("migration target: Transfer complete, requesting permission to start domain.")
	if err := c.send(ctx, ReadyMsg, "ready message"); err != nil {
		d.Destroy()
		return err
	}
	status := byte(StatusOK)
	var failure error
	if err := c.expect(ctx, GoMsg, "permission to start", peer); err != nil {
		status, failure = StatusNoGo, err
	} else {
		c.logf("migration target: Got permission, starting domain.")
		if err := start(); err != nil {
			status, failure = StatusFailed, err
		} else {
			c.logf("migration target: Domain started successsfully.")
		}
	}
	if err := c.send(ctx, ReportMsg+string([]byte{status}), "report"); err != nil {
		if failure == nil {
			// As xl: the guest runs here, and the sender, which cannot
			// know whether it does, keeps its copy suspended.
			c.logf("migration target: the domain runs, but the report to the sender failed: %v", err)
			return nil
		}
		d.Destroy()
		return fmt.Errorf("%w (and the report to the sender failed: %v)", failure, err)
	}
	if failure == nil {
		return nil
	}
	c.logf("migration target: Failure, destroying our copy.")
	if err := d.Destroy(); err != nil {
		return fmt.Errorf("%w (and destroying our copy failed, so the sender keeps its suspended: %v)", failure, err)
	}
	c.logf("migration target: Cleanup OK, granting sender permission to resume.")
	if err := c.send(ctx, PermissionMsg, "permission to resume"); err != nil {
		return fmt.Errorf("%w (and giving the domain back failed: %v)", failure, err)
	}
	return failure
}

// stallTimer closes a connection when one read or write on it has not
// finished within idle: stallWriter's and stallReader's watchdog.
type stallTimer struct {
	idle  time.Duration
	close func() error
	timer *time.Timer
	done  bool
}

// arm (re)starts the timer for one call and reports whether it did: the
// call then stops the timer when it returns.
func (t *stallTimer) arm() bool {
	if t.close == nil || t.done {
		return false
	}
	if t.timer == nil {
		t.timer = time.AfterFunc(t.idle, func() { t.close() })
	} else {
		t.timer.Reset(t.idle)
	}
	return true
}

// stop disarms the timer for good.
func (t *stallTimer) stop() {
	t.done = true
	if t.timer != nil {
		t.timer.Stop()
	}
}

// stallWriter fails a write that has not finished within idle, by closing
// the connection.
type stallWriter struct {
	w io.Writer
	stallTimer
}

func (s *stallWriter) Write(b []byte) (int, error) {
	if s.arm() {
		defer s.timer.Stop()
	}
	n, err := s.w.Write(b)
	if err != nil {
		return n, fmt.Errorf("migration stream: %w", err)
	}
	return n, nil
}

// stallReader fails a read that got nothing within idle, by closing the
// connection.
type stallReader struct {
	r io.Reader
	stallTimer
}

func (s *stallReader) Read(b []byte) (int, error) {
	if s.arm() {
		defer s.timer.Stop()
	}
	return s.r.Read(b)
}

// SendRemus replicates d over c as xl remus does: after the receiver's
// banner, the checkpointed stream (Domain.Remus) until writing fails (the
// secondary is gone), ctx ends or o.Checkpoints were sent. Remus reads
// nothing back: there is no handshake, and the primary's guest runs on
// when it stops.
func SendRemus(ctx context.Context, d *toolstack.Domain, c *Conn, o toolstack.RemusOptions) (int, error) {
	if err := c.expect(ctx, Banner, "banner", "migration receiver stream"); err != nil {
		return 0, fmt.Errorf("remus receiver: %w; the domain was not touched", err)
	}
	w := &stallWriter{w: c.W, stallTimer: c.stallTimer()}
	defer w.stop()
	if c.Close != nil {
		o.Abort = func() { c.Close() }
	}
	return d.Remus(ctx, w, o)
}

// ReceiveCheckpoints is the Remus secondary on the incoming stream
// (toolstack.ReceiveCheckpoints): it returns, paused, the domain of the
// last complete checkpoint once the stream breaks (the primary died, or
// sent nothing for the Conn's Idle), or an error when no checkpoint was
// complete, leaving nothing behind.
func (in *Incoming) ReceiveCheckpoints(ctx context.Context, ts *toolstack.Toolstack, cfg toolstack.DomainConfig,
	onCheckpoint func(n int)) (*toolstack.Domain, int, error) {
	c := in.c
	ctx, release := c.closeWhenDone(ctx)
	defer release()
	r := in.stream()
	defer r.stop()
	d, n, err := ts.ReceiveCheckpoints(ctx, r, cfg, onCheckpoint)
	if err != nil {
		c.logf("migration target: Domain creation failed.")
		return nil, n, err
	}
	c.logf("migration target: Remus Failover for domain %d", d.ID)
	return d, n, nil
}
