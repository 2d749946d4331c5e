// Package blkback is a PV block backend (Linux's xen-blkback's role) for
// raw image files: it speaks the blkif ring protocol of Xen's io/blkif.h
// through grant mappings, and the xenbus state machine on the backend's
// and the frontend's xenstore nodes as Linux's blkback does. It reaches
// the rest of the VMM through small interfaces: the store
// (*xenstore.Store), grant mapping (Grants) and event channels
// (EventChannels), so that it runs against a Go fake frontend in tests.
// docs/BLKBACK.md describes the protocol as implemented.
package blkback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xenresume/xenresume/vmm/xenstore"
)

// State is a xenbus state (enum xenbus_state, io/xenbus.h).
type State int

// The xenbus states.
const (
	StateUnknown State = iota
	StateInitialising
	StateInitWait
	StateInitialised
	StateConnected
	StateClosing
	StateClosed
	StateReconfiguring
	StateReconfigured
)

var stateNames = [...]string{"Unknown", "Initialising", "InitWait", "Initialised", "Connected", "Closing", "Closed", "Reconfiguring", "Reconfigured"}

// String returns the state's name as xenbus_strstate spells it.
func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// Grants maps the frontend's grant references into the backend's address
// space (GNTTABOP_map_grant_ref from the backend's domain).
//
// Map returns the whole 4 KiB page that domid granted under ref, mapped
// writable or read-only as asked, and release, which unmaps it
// (GNTTABOP_unmap_grant_ref); release is called exactly once, and the
// page is not touched after it. Map must fail, and never panic, when ref
// is not an entry of domid's table, is not granted (GTF_permit_access) to
// the backend's domain, or is read-only (GTF_readonly) and writable is
// asked; while mapped, the entry must show GTF_reading (and GTF_writing
// for a writable mapping), as Xen sets them, so that the frontend cannot
// end the grant under the backend. The page must stay valid until
// release even if the frontend ends the grant. Map and release may be
// called from any goroutine.
type Grants interface {
	Map(domid uint16, ref uint32, writable bool) (page []byte, release func(), err error)
}

// EventChannels binds the frontend's event channel.
//
// Bind connects a port of the backend's domain to port, the unbound port
// domid allocated for the backend (EVTCHNOP_bind_interdomain). kick is
// the handler of every event the frontend sends: it calls Backend.Kick,
// which does not block. notify sends an event to the frontend
// (EVTCHNOP_send on the local port); unbind closes the local port
// (EVTCHNOP_close). notify is never called after unbind.
type EventChannels interface {
	Bind(domid uint16, port uint32, kick func()) (notify func(), unbind func(), err error)
}

// Defaults of the Config limits, Linux's.
const (
	// DefaultMaxIndirectSegments is feature-max-indirect-segments
	// (Linux's MAX_INDIRECT_SEGMENTS).
	DefaultMaxIndirectSegments = 256
	// DefaultMaxRingPageOrder is max-ring-page-order (Linux's
	// XENBUS_MAX_RING_GRANT_ORDER: 16 pages).
	DefaultMaxRingPageOrder = 4
	// DefaultMaxPersistentGrants is how many grants stay mapped per
	// device (Linux's max_persistent_grants).
	DefaultMaxPersistentGrants = 1056
)

// Config says which device a Backend serves and how it reaches the rest
// of the VMM.
type Config struct {
	Store  *xenstore.Store
	Grants Grants
	Events EventChannels
	// Domid is the frontend's domain, Devid the device's number
	// (virtual-device, e.g. 51712 for xvda).
	Domid uint16
	Devid int
	// BackendDomid is the backend's domain (0, dom0): its nodes live in
	// /local/domain/<BackendDomid>/backend/vbd/<Domid>/<Devid>.
	BackendDomid uint16
	// Limits; 0 takes the Default*.
	MaxIndirectSegments int // at most MaxIndirectPagesPerRequest*SegmentsPerIndirectPage
	MaxRingPageOrder    int // at most 4
	MaxPersistentGrants int
	Log                 *slog.Logger
}

// Stats counts what a Backend did.
type Stats struct {
	Requests, Reads, Writes, Flushes, Barriers, Discards, Indirect uint64
	Errors, NotSupported                                           uint64 // responses with RspError, RspEOPNOTSUPP
	Connects                                                       uint64
	// IOs counts the merged runs of reads or writes done (one preadv
	// or pwritev each); Reads+Writes over IOs is the merging.
	IOs uint64
	// Busy is the time the ring's worker spent serving requests (from
	// taking a batch's first request to its notification), which the
	// frontend waits through; the rest of a request's wait is wake-ups.
	Busy             time.Duration
	PersistentGrants int // mapped now
	// RingPages and RingEntries describe the ring connected now (0
	// when none is): 2^ring-page-order pages, their entries.
	RingPages, RingEntries int
}

type counters struct {
	requests, reads, writes, flushes, barriers, discards, indirect atomic.Uint64
	errors, notsupp, connects, merged                              atomic.Uint64
	busy                                                           atomic.Int64 // ns
}

// Backend serves one virtual block device of one frontend domain.
type Backend struct {
	cfg      Config
	log      *slog.Logger
	bePath   string // /local/domain/0/backend/vbd/<domid>/<devid>
	nodename string // bePath relative to the backend domain's home
	fePath   string

	// openDisk opens the image; tests replace it.
	openDisk func(path string, readonly bool) (disk, error)

	// Set by probe, read-only afterwards.
	img      disk
	readonly bool
	sectors  uint64
	info     uint32

	// busMu serialises the xenbus side: frontend state changes and fatal
	// errors. Lock order: busMu, then ringMu.
	busMu   sync.Mutex
	state   State
	removed bool

	// ringMu is held while requests are processed and while the ring is
	// connected or disconnected.
	ringMu sync.Mutex
	conn   *conn
	paused bool
	// yield asks the ring worker to let go of ringMu.
	yield atomic.Int32

	kickCh chan struct{}
	stats  counters
	// feEvents counts the frontend state events handled (tests wait
	// for the events of their writes to be done with).
	feEvents atomic.Uint64
}

// New checks cfg and returns a Backend ready to Run.
func New(cfg Config) (*Backend, error) {
	if cfg.Store == nil || cfg.Grants == nil || cfg.Events == nil {
		return nil, errors.New("blkback: Config needs Store, Grants and Events")
	}
	if cfg.MaxIndirectSegments == 0 {
		cfg.MaxIndirectSegments = DefaultMaxIndirectSegments
	}
	if cfg.MaxRingPageOrder == 0 {
		cfg.MaxRingPageOrder = DefaultMaxRingPageOrder
	}
	if cfg.MaxPersistentGrants == 0 {
		cfg.MaxPersistentGrants = DefaultMaxPersistentGrants
	}
	switch {
	case cfg.MaxIndirectSegments < MaxSegmentsPerRequest || cfg.MaxIndirectSegments > MaxIndirectPagesPerRequest*SegmentsPerIndirectPage:
		return nil, fmt.Errorf("blkback: MaxIndirectSegments %d out of [%d, %d]", cfg.MaxIndirectSegments, MaxSegmentsPerRequest, MaxIndirectPagesPerRequest*SegmentsPerIndirectPage)
	case cfg.MaxRingPageOrder < 0 || cfg.MaxRingPageOrder > 4:
		return nil, fmt.Errorf("blkback: MaxRingPageOrder %d out of [0, 4]", cfg.MaxRingPageOrder)
	case cfg.MaxPersistentGrants < cfg.MaxIndirectSegments+MaxIndirectPagesPerRequest:
		return nil, fmt.Errorf("blkback: MaxPersistentGrants %d below one request's %d", cfg.MaxPersistentGrants, cfg.MaxIndirectSegments+MaxIndirectPagesPerRequest)
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	home := xenstore.DomainPath(uint32(cfg.BackendDomid))
	nodename := fmt.Sprintf("backend/vbd/%d/%d", cfg.Domid, cfg.Devid)
	return &Backend{
		cfg:      cfg,
		log:      log.With("domid", cfg.Domid, "devid", cfg.Devid),
		bePath:   home + "/" + nodename,
		nodename: nodename,
		openDisk: openFile,
		kickCh:   make(chan struct{}, 1),
	}, nil
}

// Path returns the backend's xenstore directory.
func (b *Backend) Path() string { return b.bePath }

// State returns the state the backend last published.
func (b *Backend) State() State {
	b.busMu.Lock()
	defer b.busMu.Unlock()
	return b.state
}

// Stats returns the backend's counters.
func (b *Backend) Stats() Stats {
	s := Stats{
		Requests: b.stats.requests.Load(), Reads: b.stats.reads.Load(), Writes: b.stats.writes.Load(),
		Flushes: b.stats.flushes.Load(), Barriers: b.stats.barriers.Load(), Discards: b.stats.discards.Load(),
		Indirect: b.stats.indirect.Load(), Errors: b.stats.errors.Load(), NotSupported: b.stats.notsupp.Load(),
		Connects: b.stats.connects.Load(), IOs: b.stats.merged.Load(), Busy: time.Duration(b.stats.busy.Load()),
	}
	unlock := b.lockRing()
	if b.conn != nil {
		s.RingPages, s.RingEntries = len(b.conn.ring.pages), int(b.conn.ring.size)
		if b.conn.pgrants != nil {
			s.PersistentGrants = b.conn.pgrants.len()
		}
	}
	unlock()
	return s
}

// Kick is the event channel's handler: the frontend has queued requests.
// It never blocks; the ring is served by Run's worker.
func (b *Backend) Kick() {
	select {
	case b.kickCh <- struct{}{}:
	default:
	}
}

// Pause stops the backend from taking requests off the ring, after the
// ones being served (a merged run), and returns once nothing is in progress: every
// request consumed so far has its response on the ring. A toolstack
// pauses the backend before the last copy of a suspended guest's memory,
// so that the saved ring is final. A pause holds across reconnections
// until Unpause.
func (b *Backend) Pause() {
	unlock := b.lockRing()
	b.paused = true
	unlock()
}

// Unpause lets the backend take requests again (after a checkpoint, or a
// failed save) and looks at the ring.
func (b *Backend) Unpause() {
	unlock := b.lockRing()
	b.paused = false
	unlock()
	b.Kick()
}

// lockRing takes ringMu, asking the worker to let go of it after its
// current request.
func (b *Backend) lockRing() func() {
	b.yield.Add(1)
	b.ringMu.Lock()
	b.yield.Add(-1)
	return b.ringMu.Unlock
}

// Run serves the device until ctx ends or the device goes away (the
// frontend closes with "online" 0, or its state node is gone), then
// disconnects and closes the image. The toolstack has written the nodes
// of both sides (AddDevice) before. A device that cannot be opened is a
// fatal xenbus error (error node, state Closing), and Run returns it.
func (b *Backend) Run(ctx context.Context) error {
	if err := b.probe(); err != nil {
		return err
	}
	defer b.img.Close()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { b.worker(ctx) })
	b.cfg.Store.Watch(ctx, b.fePath+"/state", func() bool {
		b.frontendChanged()
		return !b.removed
	})
	cancel()
	wg.Wait()
	b.disconnect()
	if b.removed {
		return nil
	}
	return ctx.Err()
}

// probe is xen_blkbk_probe and backend_changed: find the frontend, open
// the image, advertise the transport features, go to InitWait.
func (b *Backend) probe() error {
	st := b.cfg.Store
	fe, err := st.Read(b.bePath + "/frontend")
	if err != nil {
		return fmt.Errorf("blkback: reading %s/frontend: %w", b.bePath, err)
	}
	b.fePath = fe
	if id, err := st.Read(b.bePath + "/frontend-id"); err != nil || id != strconv.Itoa(int(b.cfg.Domid)) {
		return fmt.Errorf("blkback: %s/frontend-id is %q, want %d (%v)", b.bePath, id, b.cfg.Domid, err)
	}
	// The transport features, as Linux writes them at probe.
	for _, kv := range [][2]string{
		{"feature-max-indirect-segments", strconv.Itoa(b.cfg.MaxIndirectSegments)},
		{"max-ring-page-order", strconv.Itoa(b.cfg.MaxRingPageOrder)},
	} {
		if err := st.Write(b.bePath+"/"+kv[0], kv[1]); err != nil {
			return fmt.Errorf("blkback: writing %s/%s: %w", b.bePath, kv[0], err)
		}
	}
	if err := b.openImage(); err != nil {
		b.busMu.Lock()
		b.fatal(err, errnoOf(err, syscall.EINVAL), "opening %s: %v", b.bePath, err)
		b.busMu.Unlock()
		return err
	}
	b.busMu.Lock()
	defer b.busMu.Unlock()
	b.switchState(StateInitWait)
	return nil
}

// openImage reads params, mode and device-type and opens the image.
func (b *Backend) openImage() error {
	st := b.cfg.Store
	params, err := st.Read(b.bePath + "/params")
	if err != nil {
		return fmt.Errorf("reading %s/params: %w", b.bePath, err)
	}
	mode, err := st.Read(b.bePath + "/mode")
	if err != nil {
		return fmt.Errorf("reading %s/mode: %w", b.bePath, err)
	}
	path, err := imagePath(params)
	if err != nil {
		return err
	}
	b.readonly = !strings.Contains(mode, "w")
	if dt, err := st.Read(b.bePath + "/device-type"); err == nil && dt == "cdrom" {
		b.info |= VDiskCDROM
	}
	if b.readonly {
		b.info |= VDiskReadonly
	}
	d, err := b.openDisk(path, b.readonly)
	if err != nil {
		return err
	}
	size, err := d.Size()
	if err != nil {
		d.Close()
		return fmt.Errorf("size of %s: %w", path, err)
	}
	b.img, b.sectors = d, uint64(size)/SectorSize
	b.log.Info("blkback: opened image", "path", path, "sectors", b.sectors, "readonly", b.readonly)
	return nil
}

// imagePath takes the file out of params: a path, or qdisk's
// "FORMAT:path" with a raw format.
func imagePath(params string) (string, error) {
	if params == "" {
		return "", errors.New("empty params")
	}
	if i := strings.IndexByte(params, ':'); i > 0 && !strings.HasPrefix(params, "/") {
		switch f := params[:i]; f {
		case "raw", "aio", "file", "phy":
			return params[i+1:], nil
		default:
			return "", fmt.Errorf("image format %q not supported (raw images only)", f)
		}
	}
	return params, nil
}

// switchState publishes the backend's state unless it is the state
// already, and not if the node has gone (the device is being removed),
// as xenbus_switch_state does. Called with busMu held.
func (b *Backend) switchState(s State) {
	if s == b.state {
		return
	}
	path := b.bePath + "/state"
	err := b.cfg.Store.Update(func(read func(string) (string, error), write func(string, string) error) error {
		if _, err := read(path); err != nil {
			return err
		}
		return write(path, strconv.Itoa(int(s)))
	})
	if err != nil {
		b.log.Warn("blkback: writing state", "state", s, "err", err)
		return
	}
	b.log.Debug("blkback: state", "from", b.state, "to", s)
	b.state = s
}

// fatal is xenbus_dev_fatal: it writes "<errno> <message>" to
// error/<nodename>/error under the backend domain's home and moves to
// Closing. Called with busMu held.
func (b *Backend) fatal(err error, errno int, format string, args ...any) {
	msg := fmt.Sprintf("%d %s", errno, fmt.Sprintf(format, args...))
	b.log.Error("blkback: fatal", "error", msg, "cause", err)
	path := xenstore.DomainPath(uint32(b.cfg.BackendDomid)) + "/error/" + b.nodename + "/error"
	if werr := b.cfg.Store.Write(path, msg); werr != nil {
		b.log.Error("blkback: writing error node", "path", path, "err", werr)
	}
	b.switchState(StateClosing)
}

// errnoOf returns err's errno, or def.
func errnoOf(err error, def syscall.Errno) int {
	var e syscall.Errno
	if errors.As(err, &e) {
		return int(e)
	}
	return int(def)
}

// readState reads a xenbus state node: a missing or unparsable one is
// Unknown, as xenbus_read_driver_state has it.
func (b *Backend) readState(path string) State {
	v, err := b.cfg.Store.Read(path)
	if err != nil {
		return StateUnknown
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return StateUnknown
	}
	return State(n)
}

// readUint reads an unsigned decimal node; ok is false when it is missing
// or not a number.
func (b *Backend) readUint(path string) (uint64, bool) {
	v, err := b.cfg.Store.Read(path)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseUint(v, 10, 32)
	return n, err == nil
}

// frontendChanged is Linux's frontend_changed, on every event of the
// frontend's state node.
func (b *Backend) frontendChanged() {
	b.busMu.Lock()
	defer b.busMu.Unlock()
	defer b.feEvents.Add(1)
	fs := b.readState(b.fePath + "/state")
	b.log.Debug("blkback: frontend state", "state", fs, "backend", b.state)
	switch fs {
	case StateInitialising:
		switch b.state {
		case StateClosed:
			// The frontend reconnects after closing.
			b.switchState(StateInitWait)
		case StateConnected:
			// The frontend dropped its ring (a resume in a new domain,
			// or a driver restart): finish with the old ring and wait
			// for the new one. Linux's blkback keeps serving here; it
			// relies on the toolstack making a new backend.
			b.disconnect()
			b.switchState(StateInitWait)
		}
	case StateInitialised, StateConnected:
		if b.state == StateConnected {
			break // two events, one state: already connected
		}
		b.disconnect()
		if err := b.connectRing(); err != nil {
			b.disconnect()
			break
		}
		b.connect()
	case StateClosing:
		b.switchState(StateClosing)
	case StateClosed:
		b.disconnect()
		b.switchState(StateClosed)
		if v, ok := b.readUint(b.bePath + "/online"); ok && v != 0 {
			break
		}
		b.removed = true
	case StateUnknown:
		b.disconnect()
		b.removed = true
	default:
		b.fatal(nil, int(syscall.EINVAL), "saw state %d at frontend", int(fs))
	}
}

// connectRing is connect_ring: read the frontend's transport parameters,
// map its ring, bind its event channel. A failure is fatal. Called with
// busMu held.
func (b *Backend) connectRing() error {
	st, fe := b.cfg.Store, b.fePath
	proto := ProtoX86_64
	if p, err := st.Read(fe + "/protocol"); err == nil {
		switch p {
		case ProtoNameX86_64:
		case ProtoNameX86_32:
			proto = ProtoX86_32
		default:
			// Linux passes xenbus_scanf's 1 as the error: "-1 ...".
			err := fmt.Errorf("unknown fe protocol %q", p)
			b.fatal(err, -1, "unknown fe protocol %s", p)
			return err
		}
	}
	persistent := false
	if v, ok := b.readUint(fe + "/feature-persistent"); ok && v != 0 {
		persistent = true
	}
	if v, ok := b.readUint(fe + "/multi-queue-num-queues"); ok && v != 1 {
		err := fmt.Errorf("%d queues asked", v)
		b.fatal(err, -1, "guest requested %d queues, exceeding the maximum of 1.", v)
		return err
	}
	pages, multi := 1, false
	if order, ok := b.readUint(fe + "/ring-page-order"); ok {
		if order > uint64(b.cfg.MaxRingPageOrder) {
			err := fmt.Errorf("ring page order %d", order)
			b.fatal(err, int(syscall.EINVAL), "requested ring page order %d exceed max:%d", order, b.cfg.MaxRingPageOrder)
			return err
		}
		pages, multi = 1<<order, true
	}
	port, ok := b.readUint(fe + "/event-channel")
	if !ok {
		err := errors.New("no event-channel")
		b.fatal(err, int(syscall.EINVAL), "reading %s/event-channel", fe)
		return err
	}
	refs := make([]uint32, pages)
	for i := range refs {
		name := "ring-ref"
		if multi {
			name = "ring-ref" + strconv.Itoa(i)
		}
		v, ok := b.readUint(fe + "/" + name)
		if !ok {
			err := fmt.Errorf("no %s", name)
			b.fatal(err, int(syscall.EINVAL), "reading %s/%s", fe, name)
			return err
		}
		refs[i] = uint32(v)
	}
	c, err := b.mapRing(proto, refs, uint32(port), persistent)
	if err != nil {
		b.fatal(err, errnoOf(err, syscall.EINVAL), "mapping ring-ref port %d", port)
		return err
	}
	unlock := b.lockRing()
	b.conn = c
	unlock()
	b.stats.connects.Add(1)
	b.log.Info("blkback: ring connected", "protocol", proto, "pages", pages, "port", port, "persistent", persistent)
	b.Kick()
	return nil
}

// mapRing maps the ring pages and binds the event channel.
func (b *Backend) mapRing(proto Protocol, refs []uint32, port uint32, persistent bool) (*conn, error) {
	c := &conn{maxSegs: b.cfg.MaxIndirectSegments}
	pages := make([][]byte, len(refs))
	for i, ref := range refs {
		pg, release, err := b.cfg.Grants.Map(b.cfg.Domid, ref, true)
		if err != nil {
			c.close()
			return nil, fmt.Errorf("mapping ring-ref %d (grant %d): %w", i, ref, err)
		}
		c.ringRelease = append(c.ringRelease, release)
		pages[i] = pg
	}
	r, err := newBackRing(proto, pages)
	if err != nil {
		c.close()
		return nil, err
	}
	c.ring = r
	notify, unbind, err := b.cfg.Events.Bind(b.cfg.Domid, port, b.Kick)
	if err != nil {
		c.close()
		return nil, fmt.Errorf("binding event channel %d: %w", port, err)
	}
	c.notify, c.unbind = notify, unbind
	if persistent {
		c.pgrants = newGrantCache(b.cfg.MaxPersistentGrants)
	}
	c.init()
	return c, nil
}

// connect publishes the device's properties in one transaction and goes
// to Connected (Linux's connect).
func (b *Backend) connect() {
	discard := true
	if v, ok := b.readUint(b.bePath + "/discard-enable"); ok && v == 0 {
		discard = false
	}
	kv := [][2]string{
		{"feature-flush-cache", "1"},
	}
	if discard {
		kv = append(kv, [2]string{"discard-granularity", strconv.Itoa(PageSize)},
			[2]string{"discard-alignment", "0"},
			[2]string{"discard-secure", "0"},
			[2]string{"feature-discard", "1"})
	}
	kv = append(kv,
		[2]string{"feature-barrier", "1"},
		[2]string{"feature-persistent", "1"},
		[2]string{"sectors", strconv.FormatUint(b.sectors, 10)},
		[2]string{"info", strconv.FormatUint(uint64(b.info), 10)},
		[2]string{"sector-size", strconv.Itoa(SectorSize)},
		[2]string{"physical-sector-size", strconv.Itoa(SectorSize)},
	)
	err := b.cfg.Store.Update(func(_ func(string) (string, error), write func(string, string) error) error {
		for _, e := range kv {
			if err := write(b.bePath+"/"+e[0], e[1]); err != nil {
				return fmt.Errorf("writing %s/%s: %w", b.bePath, e[0], err)
			}
		}
		return nil
	})
	if err != nil {
		b.fatal(err, errnoOf(err, syscall.EIO), "%v", err)
		return
	}
	b.switchState(StateConnected)
}

// disconnect is xen_blkif_disconnect: it waits for the request being
// served, then unbinds the event channel and unmaps the ring and every
// persistent grant. Requests the frontend queued and the backend had not
// taken are left on the old ring, unanswered. Idempotent.
func (b *Backend) disconnect() {
	unlock := b.lockRing()
	c := b.conn
	b.conn = nil
	unlock()
	if c != nil {
		c.close()
		b.log.Info("blkback: ring disconnected")
	}
}

// worker serves the ring on every Kick until ctx ends.
func (b *Backend) worker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.kickCh:
			b.serve()
		}
	}
}

// serve takes requests off the ring until it is empty, in batches of at
// most a ring, letting go of the ring between batches and whenever
// someone waits for it.
func (b *Backend) serve() {
	for {
		b.ringMu.Lock()
		c := b.conn
		if c == nil || c.halted || b.paused {
			b.ringMu.Unlock()
			return
		}
		t0 := time.Now()
		more, overflow := b.batch(c)
		b.stats.busy.Add(int64(time.Since(t0)))
		b.ringMu.Unlock()
		if overflow != nil {
			b.busMu.Lock()
			unlock := b.lockRing()
			current := b.conn == c
			unlock()
			if current {
				b.fatal(overflow, int(syscall.EACCES), "%v", overflow)
			}
			b.busMu.Unlock()
			return
		}
		if !more {
			return
		}
		if b.yield.Load() > 0 {
			// Someone waits for the ring: come back once they let go.
			b.Kick()
			return
		}
	}
}

// batch serves up to a ring of requests, with ringMu held. It reports
// whether there are more, or the error that halts the ring.
func (b *Backend) batch(c *conn) (more bool, halt error) {
	r := c.ring
	prod := r.reqProd()
	if r.overflow(prod) {
		c.halted = true
		return false, fmt.Errorf("frontend provided bogus ring requests (%d - %d = %d), halting ring processing", prod, r.rspProdPvt, prod-r.rspProdPvt)
	}
	for n := uint32(0); r.unconsumed(prod) > 0; n++ {
		if n == r.size || b.yield.Load() > 0 {
			more = true
			break
		}
		r.nextRequest(c.entry[:])
		parseRequest(r.proto, c.entry[:], &c.req)
		op, status := b.dispatch(c, &c.req)
		if status == rspQueued {
			continue // its response comes with its run's
		}
		b.flushRun(c) // responses in ring order
		b.respond(c, c.req.id, op, status)
	}
	b.flushRun(c)
	if !more {
		more = r.finalCheck()
	}
	if c.notifyDue {
		c.notifyDue = false
		c.notify()
	}
	return more, nil
}

// respond counts a request's status and writes its response, noting
// whether the frontend asked for an event (sent once per batch).
func (b *Backend) respond(c *conn, id uint64, op uint8, status int16) {
	b.count(status)
	if c.ring.putResponse(id, op, status) {
		c.notifyDue = true
	}
}

func (b *Backend) count(status int16) {
	b.stats.requests.Add(1)
	switch status {
	case RspError:
		b.stats.errors.Add(1)
	case RspEOPNOTSUPP:
		b.stats.notsupp.Add(1)
	}
}

// conn is one connection to a frontend's ring.
type conn struct {
	ring        *backRing
	ringRelease []func()
	notify      func()
	unbind      func()
	pgrants     *grantCache // nil without persistent grants
	halted      bool        // the frontend broke the ring's indices
	maxSegs     int
	notifyDue   bool // a response of this batch asked for an event

	// run holds the reads or writes of the current batch that are
	// merged into one I/O (plug, flushRun).
	run ioRun

	// Scratch space, allocated once per connection: memory does not grow
	// with what the frontend puts in the ring.
	entry    [112]byte
	req      request
	segs     []segment
	maps     []mapping
	indirect [MaxIndirectPagesPerRequest]mapping
	// held and heldIndirect count the mappings of maps and indirect the
	// current request made.
	held, heldIndirect int
	seq                uint64 // requests served, for the grant cache's LRU
}

// mapping is one grant mapped for a request.
type mapping struct {
	page    []byte
	release func() // nil for a persistent grant
}

func (c *conn) init() {
	c.segs = make([]segment, c.maxSegs)
	c.maps = make([]mapping, c.maxSegs)
	c.run = ioRun{iov: make([][]byte, 0, maxRunIov), rels: make([]func(), 0, maxRunIov), pend: make([]pendingRsp, 0, maxRunIov)}
}

// maxRunIov bounds a run's buffers: Linux's IOV_MAX, what one preadv
// takes.
const maxRunIov = 1024

// rspQueued is dispatch's status for a request queued in the run: its
// response is written when the run is flushed.
const rspQueued = 1

// ioRun is a plugged run: adjacent reads (or writes) of the image, their
// buffers in order from off to end, the mappings to release after the
// I/O and the responses to write.
type ioRun struct {
	write    bool
	off, end int64
	seq      uint64 // the first request's (conn.seq)
	iov      [][]byte
	rels     []func()
	pend     []pendingRsp
}

// pendingRsp is a queued request's response but for its status.
type pendingRsp struct {
	id uint64
	op uint8
}

// close unbinds and unmaps everything the connection holds.
func (c *conn) close() {
	if c.unbind != nil {
		c.unbind()
		c.unbind = nil
	}
	if c.pgrants != nil {
		c.pgrants.releaseAll()
	}
	for _, r := range c.ringRelease {
		r()
	}
	c.ringRelease = nil
}

// openFile opens a raw image.
func openFile(path string, readonly bool) (disk, error) {
	flag := os.O_RDWR
	if readonly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	return &fileDisk{f: f, fd: int(f.Fd()), iov: make([]unix.Iovec, 0, maxRunIov)}, nil
}
