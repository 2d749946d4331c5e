package toolstack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/timeline"
	"github.com/xenresume/xenresume/vmm/xen"
)

// libxc's default precopy policy (simple_precopy_policy in xg_sr_save.c),
// which libxl always uses: stop the live rounds once fewer than
// DefaultPrecopyDirty pages were dirtied in a round, or after
// DefaultPrecopyRounds rounds.
const (
	DefaultPrecopyRounds = 5  // SPP_MAX_ITERATIONS
	DefaultPrecopyDirty  = 50 // SPP_TARGET_DIRTY_COUNT
)

// MigrateOptions tune Migrate; the zero value is xl migrate's live
// migration with libxc's default policy and libxl's suspend timeouts.
type MigrateOptions struct {
	// NonLive suspends the guest first and copies its memory once, as a
	// save does (runvm migrate --live=false).
	NonLive bool
	// MaxRounds bounds the live rounds, the first full one included
	// (DefaultPrecopyRounds when 0).
	MaxRounds int
	// TargetDirty: the live rounds stop once a round leaves fewer dirty
	// pages than this (DefaultPrecopyDirty when 0; negative: never, so
	// MaxRounds rounds run).
	TargetDirty int
	// Suspend bounds the guest's suspend (DefaultSuspendTimeouts when
	// zero).
	Suspend SuspendTimeouts
	// Progress, if set, is told about every round once it is sent.
	Progress func(MigrateRound)
	// Abort, if set, is called when the migration is cancelled (a
	// Destroy, or ctx's end) to unblock a write the stream is stuck in:
	// closing the connection, say.
	Abort func()

	beforeCollect func() // tests: runs before each live round's dirty log is read
}

// MigrateRound is one round of memory sent.
type MigrateRound struct {
	Round int  // 0 is the full pass
	Final bool // after the suspend
	Pages uint64
	// Dirty is how many pages the guest dirtied during the round, to be
	// sent in the next; -1 when the next is the final round (counted
	// there).
	Dirty   int
	Bytes   uint64        // stream bytes written so far
	Elapsed time.Duration // the round's own time
}

// Rate returns the round's throughput in bytes per second of stream
// (pages at 4 KiB each plus their records).
func (r MigrateRound) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Pages*machine.PageSize) / r.Elapsed.Seconds()
}

// Handoff is what the target said after the stream (see Migrate).
type Handoff int

// Handoff outcomes.
const (
	// HandedOver: the target runs the guest; ours is destroyed.
	HandedOver Handoff = iota
	// NotHandedOver: the target does not run the guest and never will
	// (it failed or refused before it was told to start, or it reported a
	// failed start and gave the guest back); ours resumes.
	NotHandedOver
	// HandoffUnknown: the handoff broke after the target was told to
	// start: it may run the guest, so ours stays suspended (xl's
	// "failed during final handshake").
	HandoffUnknown
)

func (h Handoff) String() string {
	switch h {
	case HandedOver:
		return "handed over"
	case NotHandedOver:
		return "not handed over"
	}
	return "unknown"
}

// MigrateStats says how a migration went.
type MigrateStats struct {
	Rounds []MigrateRound
	Bytes  uint64
	// Downtime runs from the suspend request to the end of the handoff
	// (the target's report that the guest runs there).
	Downtime time.Duration
	Outcome  Handoff
}

// ErrHandoffUnknown is wrapped by Migrate's error when the domain was left
// suspended because the handoff broke after the target was told to start.
var ErrHandoffUnknown = errors.New("migration broke after the target was cleared to start: the domain stays suspended here; destroy it if the target runs the guest, else resume it")

// withDefaults is o with its zero fields filled in as MigrateOptions
// documents.
func (o MigrateOptions) withDefaults() MigrateOptions {
	if o.MaxRounds <= 0 {
		o.MaxRounds = DefaultPrecopyRounds
	}
	if o.TargetDirty == 0 {
		o.TargetDirty = DefaultPrecopyDirty
	}
	if o.Suspend == (SuspendTimeouts{}) {
		o.Suspend = DefaultSuspendTimeouts
	}
	return o
}

// abortUntilEnd arranges for abort, if not nil, to be called when opCtx
// ends before the operation does (a Destroy, or the caller's ctx), and
// returns the end the operation calls instead of end. abort is not called
// at the operation's own end.
func abortUntilEnd(opCtx context.Context, abort func(), end func(to State)) func(to State) {
	if abort == nil {
		return end
	}
	stop := context.AfterFunc(opCtx, abort)
	return func(to State) { stop(); end(to) }
}

// Migrate sends the running domain to w as a live migration, libxc's way
// (xg_sr_save.c): the same libxl/libxc v3 stream as Save, with the guest's
// memory sent while it runs, in rounds under KVM's dirty-page log (the
// first round every page in use, each later one the pages dirtied during
// the one before) until libxc's precopy policy stops them (see
// MigrateOptions); then the guest is suspended through Xen's protocol,
// and the last round sends what is still dirty, and every page table
// (typed and normalised, deferred from the live rounds as libxc defers
// pages it cannot normalise while the guest runs). "Dirty" is KVM's log
// together with the VMM's dirty set (machine's vmmdirty.go): the emulated
// Xen and the backends write guest memory from the host, which KVM's log
// does not see. Each page sent carries a 64-bit hash of its content, so a
// dirty page whose content is what the target has is not sent again. The
// stream ends with the vCPU state, END and the libxl END, as a save's.
//
// handoff then runs the migration protocol's end and says what the
// target did (Handoff); the domain follows it: Destroyed (Status.Migrated)
// after HandedOver; Running after NotHandedOver or any failure before the
// handoff (the guest sees its suspend return 1, and carries on as if
// nothing happened); Suspended after HandoffUnknown, with an error that
// wraps ErrHandoffUnknown. The guest is never lost, and never runs twice.
// Destroy cancels a migration in flight.
//
// The domain is Migrating throughout. On a timeline the operation's span
// has phases: "headers", "round N" for each live round, "suspend",
// "final round", "end records", "handoff", then "destroy" or "resume".
func (d *Domain) Migrate(ctx context.Context, w io.Writer, o MigrateOptions,
	handoff func(ctx context.Context) (Handoff, error)) (stats MigrateStats, err error) {
	if err := d.checkNoBreakpoints(); err != nil {
		return stats, err
	}
	_, opCtx, end, err := d.begin(ctx, OpMigrate, Migrating)
	if err != nil {
		return stats, err
	}
	o = o.withDefaults()
	end = abortUntilEnd(opCtx, o.Abort, end)
	span := d.opSpan()
	cw := &countingWriter{w: w}
	bw := bufio.NewWriterSize(cw, 1<<20)
	p, err := d.newPrecopy(func(b []byte) error { _, err := bw.Write(b); return err })
	if err != nil {
		end(Running)
		return stats, fmt.Errorf("migrate: %w", err)
	}
	defer p.stopLogging()
	report := func(r MigrateRound) {
		r.Bytes = cw.n + uint64(bw.Buffered())
		stats.Rounds = append(stats.Rounds, r)
		if o.Progress != nil {
			o.Progress(r)
		}
	}
	if err := d.writeHead(bw, d.phase(span, "headers")); err != nil {
		end(Running)
		return stats, fmt.Errorf("migrate: %w", err)
	}
	if !o.NonLive {
		if err := d.precopy(opCtx, p, o, span, bw, report); err != nil {
			end(Running)
			return stats, fmt.Errorf("migrate: live rounds: %w", err)
		}
	}
	suspendedAt := time.Now()
	if err := d.suspend(opCtx, o.Suspend, d.phase(span, "suspend")); err != nil {
		end(Running)
		return stats, fmt.Errorf("migrate: %w", err)
	}
	// From here on the guest is suspended: anything that fails before
	// the target says it runs the guest resumes it here.
	d.pauseDisks()
	outcome, err := func() (Handoff, error) {
		start := time.Now()
		d.phase(span, "final round")
		n, err := p.final(opCtx, !o.NonLive)
		if err != nil {
			return NotHandedOver, fmt.Errorf("final round: %w", err)
		}
		if err := d.writeTail(bw, d.phase(span, "end records")); err != nil {
			return NotHandedOver, err
		}
		if err := bw.Flush(); err != nil {
			return NotHandedOver, err
		}
		report(MigrateRound{Round: len(stats.Rounds), Final: true, Pages: n, Dirty: -1, Elapsed: time.Since(start)})
		d.phase(span, "handoff")
		return handoff(opCtx)
	}()
	stats.Bytes, stats.Outcome = cw.n, outcome
	switch {
	case err == nil && outcome == HandedOver:
		stats.Downtime = time.Since(suspendedAt)
		d.phase(span, "destroy")
		derr := d.release()
		d.lc.mu.Lock()
		d.lc.migrated, d.lc.from = true, Suspended
		d.lc.mu.Unlock()
		end(Destroyed)
		if derr != nil {
			return stats, fmt.Errorf("migrated, but destroying the domain here failed: %w", derr)
		}
		return stats, nil
	case outcome == HandoffUnknown:
		end(Suspended)
		if err == nil {
			err = errors.New("the target's report is unknown")
		}
		return stats, fmt.Errorf("migrate: %w: %w", ErrHandoffUnknown, err)
	}
	if err == nil {
		err = errors.New("the target did not take the domain")
	}
	d.unpauseDisks()
	if rerr := d.resume(context.WithoutCancel(opCtx), true, d.phase(span, "resume")); rerr != nil {
		end(Suspended)
		return stats, fmt.Errorf("migrate: %w (and resuming the guest here failed, it stays suspended: %v)", err, rerr)
	}
	d.phase(span, "unpause")
	d.machine.Unpause()
	end(Running)
	return stats, fmt.Errorf("migrate: %w; the guest resumed here", err)
}

// precopy runs the live rounds (libxc's send_domain_memory_live): the
// policy is asked before each round with the last round's dirty count,
// and the round is sent even when the policy says stop.
func (d *Domain) precopy(ctx context.Context, p *precopyState, o MigrateOptions, span *timeline.Span,
	bw *bufio.Writer, report func(MigrateRound)) error {
	m := d.machine
	if err := m.SetDirtyLog(true); err != nil {
		return err
	}
	p.logging = true
	set, err := p.resident()
	if err != nil {
		return err
	}
	stop := func(round, dirty int) bool {
		return (dirty >= 0 && dirty < o.TargetDirty) || round >= o.MaxRounds
	}
	dirty := int(p.nr)
	for round := 0; ; {
		if round > 0 && dirty == 0 {
			return nil // nothing to send (libxc sends a non-empty set only)
		}
		stopNow := stop(round, dirty)
		start := time.Now()
		rs := d.phase(span, fmt.Sprintf("round %d", round))
		tables, err := d.tablesByPFN()
		if err != nil {
			return err
		}
		n, err := p.send(ctx, set, tables, false)
		if err != nil {
			return err
		}
		if err := bw.Flush(); err != nil { // the target applies it now
			return err
		}
		elapsed := time.Since(start)
		rs.Set("pages", n)
		round++
		if stopNow || stop(round, -1) {
			report(MigrateRound{Round: round - 1, Pages: n, Dirty: -1, Elapsed: elapsed})
			return nil
		}
		if o.beforeCollect != nil {
			o.beforeCollect()
		}
		if set, err = p.dirty(); err != nil {
			return err
		}
		dirty = set.Count()
		rs.Set("dirty", dirty)
		report(MigrateRound{Round: round - 1, Pages: n, Dirty: dirty, Elapsed: elapsed})
	}
}

// precopyState is what the target has: per PFN, a hash of the content
// last sent (that of a zero page for pages never sent, as the target's
// new domain starts zeroed), and the page tables deferred to the final
// round.
type precopyState struct {
	d        *Domain
	ram      []byte
	nr       uint64
	seed     maphash.Seed
	zero     uint64
	sent     []uint64
	deferred machine.DirtyBitmap
	logging  bool
	put      func([]byte) error
	buf      []byte // maxBatch pages, the batch's copies
	pfns     []uint64
	types    []uint8
	data     [][]byte
}

func (d *Domain) newPrecopy(put func([]byte) error) (*precopyState, error) {
	ram := d.machine.Memory().Regions()[0].Mem
	nr := d.Xen.Frames().NrPages
	if nr*machine.PageSize > uint64(len(ram)) {
		return nil, fmt.Errorf("%d pages, but %d bytes of RAM", nr, len(ram))
	}
	p := &precopyState{d: d, ram: ram, nr: nr, seed: maphash.MakeSeed(), sent: make([]uint64, nr),
		deferred: machine.NewDirtyBitmap(nr), put: put, buf: make([]byte, maxBatch*machine.PageSize)}
	p.zero = maphash.Bytes(p.seed, make([]byte, machine.PageSize))
	for i := range p.sent {
		p.sent[i] = p.zero
	}
	// The VMM's writes from here on are the stream's to send; the first
	// round sends every page in use, whatever was written before.
	if _, err := d.machine.Memory().CollectVMMDirty("ram"); err != nil {
		return nil, err
	}
	return p, nil
}

// dirty returns the pages written since the last call (or the first
// round): KVM's log of the guest's writes and the VMM's dirty set.
func (p *precopyState) dirty() (machine.DirtyBitmap, error) {
	set, err := p.d.machine.CollectDirty("ram")
	if err != nil {
		return nil, err
	}
	vmm, err := p.d.machine.Memory().CollectVMMDirty("ram")
	if err != nil {
		return nil, err
	}
	if !skipVMMDirty {
		for i := range set {
			set[i] |= vmm[i]
		}
	}
	return set, nil
}

// resident returns the pages the guest has touched (mincore): the first
// round's, as in a save; untouched pages are zero on both sides.
func (p *precopyState) resident() (machine.DirtyBitmap, error) {
	ram := p.ram[:p.nr*machine.PageSize]
	res := make([]byte, p.nr)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&ram[0])), uintptr(len(ram)),
		uintptr(unsafe.Pointer(&res[0]))); e != 0 {
		return nil, fmt.Errorf("mincore: %w", e)
	}
	b := machine.NewDirtyBitmap(p.nr)
	for i, r := range res {
		if r&1 != 0 {
			b.Set(uint64(i))
		}
	}
	return b, nil
}

// send writes PAGE_DATA records for the pages in set whose content differs
// from what the target has, and returns how many it sent. Live (not
// final), page tables are deferred to the final round; final, they are
// sent typed and normalised whatever the target has.
func (p *precopyState) send(ctx context.Context, set machine.DirtyBitmap, tables map[uint64]xen.PVTable, final bool) (uint64, error) {
	var n uint64
	var err error
	flush := func() error {
		if len(p.pfns) == 0 {
			return nil
		}
		n += uint64(len(p.pfns))
		body := stream.EncodePageData(p.pfns, p.types, p.data)
		p.pfns, p.types, p.data = p.pfns[:0], p.types[:0], p.data[:0]
		if err := ctx.Err(); err != nil {
			return err
		}
		return p.put(stream.AppendRecord(nil, stream.RecPageData, body))
	}
	frames := p.d.Xen.Frames()
	set.Pages(func(pfn uint64) bool {
		if pfn >= p.nr {
			return false
		}
		slot := p.buf[len(p.pfns)*machine.PageSize:][:machine.PageSize]
		src := p.ram[pfn*machine.PageSize:][:machine.PageSize]
		typ := uint8(stream.PageNormal)
		if t, ok := tables[pfn]; ok {
			if !final {
				p.deferred.Set(pfn)
				return true
			}
			copy(slot, src)
			norm, nerr := xen.NormalisePageTable(slot, t.Level, frames)
			if nerr != nil {
				err = fmt.Errorf("page table at PFN %#x: %w", pfn, nerr)
				return false
			}
			copy(slot, norm)
			typ = uint8(t.Level)
			if t.Pinned {
				typ |= stream.PagePinned
			}
			p.sent[pfn] = 0 // typed: never compared again
		} else if final && finalSkip != nil && finalSkip(src) {
			return true
		} else {
			// The page in place against what the target has; sent[pfn]
			// is always the hash of the copy the target got, so equal
			// means the target has exactly this content, however the
			// page changed meanwhile.
			if maphash.Bytes(p.seed, src) == p.sent[pfn] {
				return true
			}
			copy(slot, src)
			p.sent[pfn] = maphash.Bytes(p.seed, slot)
		}
		p.pfns = append(p.pfns, pfn)
		p.types = append(p.types, typ)
		p.data = append(p.data, slot)
		if len(p.pfns) == maxBatch {
			err = flush()
		}
		return err == nil
	})
	if err == nil {
		err = flush()
	}
	return n, err
}

// final sends the last round of the suspended domain: the pages dirtied
// since the last live round (KVM's log and the VMM's dirty set), the
// deferred ones and every page table; without live rounds, every page in
// use.
func (p *precopyState) final(ctx context.Context, live bool) (uint64, error) {
	n, err := p.checkpoint(ctx, live)
	if lerr := p.stopLogging(); err == nil {
		err = lerr
	}
	return n, err
}

// checkpoint is final without turning the dirty log off: a Remus epoch's
// pages.
func (p *precopyState) checkpoint(ctx context.Context, live bool) (uint64, error) {
	var set machine.DirtyBitmap
	var err error
	if live && p.logging {
		set, err = p.dirty()
	} else {
		set, err = p.resident() // nothing sent yet: every page in use
	}
	if err != nil {
		return 0, err
	}
	for i := range set {
		set[i] |= p.deferred[i]
	}
	tables, err := p.d.tablesByPFN()
	if err != nil {
		return 0, err
	}
	for pfn := range tables {
		if pfn < p.nr {
			set.Set(pfn)
		}
	}
	if verifyDirty && live && p.logging {
		if err := p.verify(set, tables); err != nil {
			return 0, err
		}
	}
	return p.send(ctx, set, tables, true)
}

// verify is the check that the dirty pages are all that changed: every
// page in use and not in set must hold what the target has. It hashes all
// of memory, so only tests turn it on (verifyDirty).
func (p *precopyState) verify(set machine.DirtyBitmap, tables map[uint64]xen.PVTable) error {
	res, err := p.resident()
	if err != nil {
		return err
	}
	var missed []uint64
	res.Pages(func(pfn uint64) bool {
		// A page sent typed (sent is 0) went normalised: the target's
		// copy cannot be compared with this one.
		if _, typed := tables[pfn]; typed || set.Test(pfn) || pfn >= p.nr || p.sent[pfn] == 0 {
			return true
		}
		if maphash.Bytes(p.seed, p.ram[pfn*machine.PageSize:][:machine.PageSize]) != p.sent[pfn] {
			missed = append(missed, pfn)
		}
		return true
	})
	if len(missed) > 0 {
		return fmt.Errorf("%w: PFNs %#x", errDirtyMissed, missed[:min(len(missed), 16)])
	}
	return nil
}

// errDirtyMissed: verify found a changed page that neither KVM's log nor
// the VMM's dirty set had.
var errDirtyMissed = errors.New("pages changed that neither KVM's dirty log nor the VMM's dirty set reported")

// stopLogging turns KVM's dirty log off again, as libxc's cleanup does
// whatever happened.
func (p *precopyState) stopLogging() error {
	if !p.logging {
		return nil
	}
	p.logging = false
	return p.d.machine.SetDirtyLog(false)
}

// verifyDirty: each last round and checkpoint also hashes every page in
// use to check that nothing changed outside the dirty pages (verify);
// tests turn it on. skipVMMDirty: the VMM's dirty set is left out, so
// that tests show KVM's log alone misses the VMM's writes.
var verifyDirty, skipVMMDirty bool

// finalSkip, when set (by tests), drops the pages it matches from the last
// round: a migration that loses pages, for the guest to catch.
var finalSkip func(page []byte) bool

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n uint64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += uint64(n)
	return n, err
}
