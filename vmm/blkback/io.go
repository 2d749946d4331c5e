package blkback

import (
	"container/list"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// disk is the backing image. fileDisk is the production one; tests wrap
// it to count and gate I/O.
type disk interface {
	io.ReaderAt
	io.WriterAt
	Size() (int64, error)
	Sync() error
	// Discard deallocates length bytes at off: they read as zeros after.
	Discard(off, length int64) error
	Close() error
}

// vectorDisk is a disk that moves several buffers at consecutive
// offsets in one call (preadv, pwritev). A run of merged requests uses
// it when the image has it, else one ReadAt or WriteAt per buffer.
type vectorDisk interface {
	ReadvAt(iovs [][]byte, off int64) error
	WritevAt(iovs [][]byte, off int64) error
}

// fileDisk is a raw image file; fd is f's descriptor, for preadv and
// pwritev (f stays open as long as the fileDisk), and iov their struct
// iovec array, reused: only the device's worker does I/O, so a run
// allocates nothing.
type fileDisk struct {
	f   *os.File
	fd  int
	iov []unix.Iovec
}

// ReadvAt fills iovs from off on, with as many preadv calls as it takes
// (a short one carries on where it stopped); past the end of the file is
// an error.
func (d *fileDisk) ReadvAt(iovs [][]byte, off int64) error {
	return vectorIO(iovs, off, func(v [][]byte, at int64) (int, error) { return d.rw(unix.SYS_PREADV, v, at) })
}

// WritevAt writes iovs from off on, as ReadvAt.
func (d *fileDisk) WritevAt(iovs [][]byte, off int64) error {
	return vectorIO(iovs, off, func(v [][]byte, at int64) (int, error) { return d.rw(unix.SYS_PWRITEV, v, at) })
}

// rw is one preadv or pwritev (trap) of the non-empty buffers of v at
// off: x/sys's Preadv and Pwritev allocate their iovec array each call.
// The offset's high half (pos_h) is 0 on a 64-bit kernel. A single
// buffer (a request no other merged with: random I/O) is one pread64
// or pwrite64 instead, which spares the kernel copying in and checking
// an iovec array (import_iovec): what a plain pread costs, no more.
func (d *fileDisk) rw(trap uintptr, v [][]byte, off int64) (int, error) {
	d.iov = d.iov[:0]
	for _, b := range v {
		if len(b) > 0 {
			e := unix.Iovec{Base: &b[0]}
			e.SetLen(len(b))
			d.iov = append(d.iov, e)
		}
	}
	if len(d.iov) == 0 {
		return 0, nil
	}
	var n uintptr
	var errno syscall.Errno
	if len(d.iov) == 1 {
		single := uintptr(unix.SYS_PREAD64)
		if trap == unix.SYS_PWRITEV {
			single = unix.SYS_PWRITE64
		}
		n, _, errno = unix.Syscall6(single, uintptr(d.fd), uintptr(unsafe.Pointer(d.iov[0].Base)), uintptr(d.iov[0].Len), uintptr(off), 0, 0)
	} else {
		n, _, errno = unix.Syscall6(trap, uintptr(d.fd), uintptr(unsafe.Pointer(&d.iov[0])), uintptr(len(d.iov)), uintptr(off), 0, 0)
	}
	clear(d.iov) // no pointers into the guest's pages kept
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// vectorIO calls do until every byte of iovs has moved, dropping what
// each call did from the front of iovs (it modifies iovs' elements).
func vectorIO(iovs [][]byte, off int64, do func([][]byte, int64) (int, error)) error {
	for {
		for len(iovs) > 0 && len(iovs[0]) == 0 {
			iovs = iovs[1:] // nothing to move: not a call's worth
		}
		if len(iovs) == 0 {
			return nil
		}
		n, err := do(iovs, off)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		off += int64(n)
		for n > 0 && len(iovs) > 0 {
			k := min(n, len(iovs[0]))
			iovs[0] = iovs[0][k:]
			n -= k
			if len(iovs[0]) == 0 {
				iovs = iovs[1:]
			}
		}
	}
}

func (d *fileDisk) ReadAt(p []byte, off int64) (int, error)  { return d.f.ReadAt(p, off) }
func (d *fileDisk) WriteAt(p []byte, off int64) (int, error) { return d.f.WriteAt(p, off) }
func (d *fileDisk) Sync() error                              { return d.f.Sync() }
func (d *fileDisk) Close() error                             { return d.f.Close() }

func (d *fileDisk) Size() (int64, error) {
	fi, err := d.f.Stat()
	if err != nil {
		return 0, err
	}
	if !fi.Mode().IsRegular() {
		// A block device: its size is where it ends.
		return d.f.Seek(0, io.SeekEnd)
	}
	return fi.Size(), nil
}

// Discard punches a hole, keeping the file's size.
func (d *fileDisk) Discard(off, length int64) error {
	const keepSize, punchHole = 0x1, 0x2 // FALLOC_FL_*
	for {
		err := syscall.Fallocate(int(d.f.Fd()), keepSize|punchHole, off, length)
		if err != syscall.EINTR {
			return err
		}
	}
}

// dispatch serves one request and returns the operation and status of
// its response, as Linux's __do_block_io_op and its dispatch_* do.
func (b *Backend) dispatch(c *conn, r *request) (uint8, int16) {
	switch r.op {
	case OpRead, OpWrite, OpWriteBarrier, OpFlushDiskcache, OpIndirect:
		return b.readWrite(c, r)
	case OpDiscard:
		b.flushRun(c) // the writes before it land first
		return r.op, b.discard(r)
	default:
		return r.op, RspEOPNOTSUPP
	}
}

// translate is xen_vbd_translate: a request other than a read needs a
// writable device, and its sectors must lie in the image.
func (b *Backend) translate(sector, nsect uint64, read bool) bool {
	if !read && b.readonly {
		return false
	}
	if nsect > 0 {
		end := sector + nsect
		if end < sector || end > b.sectors {
			return false
		}
	}
	return true
}

// readWrite serves READ, WRITE, WRITE_BARRIER, FLUSH_DISKCACHE and
// INDIRECT (dispatch_rw_block_io). Every check comes before any I/O, and
// every grant is mapped before the first byte moves: a bad request costs
// nothing but its RspError.
func (b *Backend) readWrite(c *conn, r *request) (uint8, int16) {
	op := r.op
	indirect := op == OpIndirect
	if indirect {
		op = r.indirectOp
		b.stats.indirect.Add(1)
		if op != OpRead && op != OpWrite {
			return op, RspError
		}
	}
	flush := op == OpFlushDiskcache || op == OpWriteBarrier
	switch op {
	case OpRead:
		b.stats.reads.Add(1)
	case OpWrite:
		b.stats.writes.Add(1)
	case OpWriteBarrier:
		b.stats.barriers.Add(1)
	case OpFlushDiskcache:
		b.stats.flushes.Add(1)
	}
	nseg := r.nseg
	if (nseg == 0 && !flush) || (!indirect && nseg > MaxSegmentsPerRequest) || (indirect && nseg > c.maxSegs) {
		return op, RspError
	}
	segs := c.segs[:nseg]
	c.seq++
	defer c.releaseMaps()
	if indirect {
		if !b.readIndirect(c, r, segs) {
			return op, RspError
		}
	} else {
		copy(segs, r.seg[:nseg])
	}
	var nsect uint64
	for _, s := range segs {
		if s.last >= sectorsPerPage || s.last < s.first {
			return op, RspError
		}
		nsect += uint64(s.last-s.first) + 1
	}
	if !b.translate(r.sector, nsect, op == OpRead) {
		return op, RspError
	}
	// A read fills the frontend's pages: it needs them writable.
	maps := c.maps[:nseg]
	for i, s := range segs {
		m, err := c.mapGrant(b.cfg.Grants, b.cfg.Domid, s.gref, op == OpRead)
		if err != nil {
			b.log.Debug("blkback: mapping a segment", "gref", s.gref, "err", err)
			return op, RspError
		}
		maps[i] = m
		c.held++
	}
	if flush {
		// The flush comes before the data (REQ_PREFLUSH); everything
		// before it is done, since requests are served in order (the
		// plugged run first).
		b.flushRun(c)
		if err := b.img.Sync(); err != nil {
			if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOTSUP) {
				return op, RspEOPNOTSUPP
			}
			return op, RspError
		}
	}
	off := int64(r.sector) * SectorSize
	if !flush && b.plug(c, r.id, op, off, segs, maps) {
		return op, rspQueued
	}
	for i, s := range segs {
		buf := maps[i].page[int(s.first)*SectorSize : (int(s.last)+1)*SectorSize]
		var err error
		if op == OpRead {
			_, err = b.img.ReadAt(buf, off)
		} else {
			_, err = b.img.WriteAt(buf, off)
		}
		if err != nil {
			b.log.Warn("blkback: image I/O", "op", op, "offset", off, "err", err)
			return op, RspError
		}
		off += int64(len(buf))
	}
	return op, RspOkay
}

// plug adds a checked and mapped read or write to the connection's run
// (Linux's blk_start_plug around a batch: the block layer merges the
// bios of adjacent requests), flushing the run first when the request
// does not continue it: another direction, not the next sector, or no
// room left. The request's non-persistent mappings move to the run. It
// reports whether the request was queued (it always is, once the run
// has room).
func (b *Backend) plug(c *conn, id uint64, op uint8, off int64, segs []segment, maps []mapping) bool {
	run := &c.run
	write := op == OpWrite
	if len(run.pend) > 0 && (run.write != write || run.end != off || len(run.iov)+len(segs) > maxRunIov || len(run.pend) == cap(run.pend)) {
		b.flushRun(c)
	}
	if len(run.iov)+len(segs) > maxRunIov {
		return false // cannot happen: a request has at most 256 segments
	}
	if len(run.pend) == 0 {
		run.write, run.off, run.end, run.seq = write, off, off, c.seq
	}
	for i, s := range segs {
		buf := maps[i].page[int(s.first)*SectorSize : (int(s.last)+1)*SectorSize]
		run.iov = append(run.iov, buf)
		run.end += int64(len(buf))
		if maps[i].release != nil {
			run.rels = append(run.rels, maps[i].release)
			maps[i].release = nil
		}
	}
	run.pend = append(run.pend, pendingRsp{id: id, op: op})
	return true
}

// flushRun does the run's I/O in one preadv or pwritev (one per buffer on
// an image without vectorDisk), unmaps its grants and writes every
// response of the run, in ring order: all OKAY, or all ERROR if the I/O
// failed (as the block layer fails a merged request's bios). It is
// called before any response that is not the run's, before a flush,
// discard or other I/O, and at the end of every batch, so that the run
// never outlives the batch that took its requests.
func (b *Backend) flushRun(c *conn) {
	run := &c.run
	if len(run.pend) == 0 {
		return
	}
	var err error
	if v, ok := b.img.(vectorDisk); ok {
		if run.write {
			err = v.WritevAt(run.iov, run.off)
		} else {
			err = v.ReadvAt(run.iov, run.off)
		}
	} else {
		off := run.off
		for _, buf := range run.iov {
			if run.write {
				_, err = b.img.WriteAt(buf, off)
			} else {
				_, err = b.img.ReadAt(buf, off)
			}
			if err != nil {
				break
			}
			off += int64(len(buf))
		}
	}
	status := int16(RspOkay)
	if err != nil {
		b.log.Warn("blkback: image I/O", "write", run.write, "offset", run.off, "bytes", run.end-run.off, "requests", len(run.pend), "err", err)
		status = RspError
	}
	for _, rel := range run.rels {
		rel()
	}
	for _, p := range run.pend {
		b.respond(c, p.id, p.op, status)
	}
	clear(run.iov)
	clear(run.rels)
	run.iov, run.rels, run.pend = run.iov[:0], run.rels[:0], run.pend[:0]
	b.stats.merged.Add(1)
}

// readIndirect maps the request's indirect pages read-only and copies
// its segments out of them (xen_blkbk_parse_indirect).
func (b *Backend) readIndirect(c *conn, r *request, segs []segment) bool {
	pages := (len(segs) + SegmentsPerIndirectPage - 1) / SegmentsPerIndirectPage
	for i := range pages {
		m, err := c.mapGrant(b.cfg.Grants, b.cfg.Domid, r.indirectRefs[i], false)
		if err != nil {
			b.log.Debug("blkback: mapping an indirect page", "gref", r.indirectRefs[i], "err", err)
			return false
		}
		c.indirect[i] = m
		c.heldIndirect++
	}
	for n := range segs {
		pg := c.indirect[n/SegmentsPerIndirectPage].page
		segs[n] = parseSegment(pg[8*(n%SegmentsPerIndirectPage):])
	}
	return true
}

// discard serves BLKIF_OP_DISCARD (dispatch_discard_io): the range must
// be writable and in the image; it is punched out of the file.
func (b *Backend) discard(r *request) int16 {
	b.stats.discards.Add(1)
	if !b.translate(r.sector, r.discardSectors, false) {
		return RspError
	}
	if r.discardSectors == 0 {
		return RspOkay
	}
	err := b.img.Discard(int64(r.sector)*SectorSize, int64(r.discardSectors)*SectorSize)
	switch {
	case err == nil:
		return RspOkay
	case errors.Is(err, syscall.EOPNOTSUPP):
		return RspEOPNOTSUPP
	default:
		b.log.Warn("blkback: discard", "sector", r.sector, "sectors", r.discardSectors, "err", err)
		return RspError
	}
}

// mapGrant maps ref for one request: through the persistent grant cache
// (always writable) when the frontend asked for persistent grants,
// otherwise for this request only.
func (c *conn) mapGrant(g Grants, domid uint16, ref uint32, writable bool) (mapping, error) {
	if c.pgrants != nil {
		// Grants of the requests in the run, not yet done, are not
		// evicted: from the run's first request on.
		keepFrom := c.seq
		if len(c.run.pend) > 0 {
			keepFrom = c.run.seq
		}
		if pg, ok := c.pgrants.get(ref, c.seq); ok {
			return mapping{page: pg}, nil
		}
		pg, release, err := g.Map(domid, ref, true)
		if err != nil {
			return mapping{}, err
		}
		if err := checkPage(pg, release); err != nil {
			return mapping{}, err
		}
		if c.pgrants.put(ref, pg, release, c.seq, keepFrom) {
			return mapping{page: pg}, nil
		}
		return mapping{page: pg, release: release}, nil // cache full: this request only
	}
	pg, release, err := g.Map(domid, ref, writable)
	if err != nil {
		return mapping{}, err
	}
	if err := checkPage(pg, release); err != nil {
		return mapping{}, err
	}
	return mapping{page: pg, release: release}, nil
}

// checkPage refuses a mapping shorter than a page.
func checkPage(pg []byte, release func()) error {
	if len(pg) < PageSize {
		release()
		return fmt.Errorf("grant mapping of %d bytes", len(pg))
	}
	return nil
}

// releaseMaps unmaps the request's non-persistent mappings.
func (c *conn) releaseMaps() {
	for i := range c.held {
		if r := c.maps[i].release; r != nil {
			r()
		}
		c.maps[i] = mapping{}
	}
	for i := range c.heldIndirect {
		if r := c.indirect[i].release; r != nil {
			r()
		}
		c.indirect[i] = mapping{}
	}
	c.held, c.heldIndirect = 0, 0
}

// grantCache holds persistently mapped grants, at most max, evicting the
// least recently used that the current request does not use.
type grantCache struct {
	max int
	m   map[uint32]*list.Element
	lru list.List // of *pgrant, most recent first
}

type pgrant struct {
	ref     uint32
	page    []byte
	release func()
	used    uint64 // the request that last used it
}

func newGrantCache(max int) *grantCache {
	return &grantCache{max: max, m: map[uint32]*list.Element{}}
}

func (g *grantCache) len() int { return len(g.m) }

func (g *grantCache) get(ref uint32, seq uint64) ([]byte, bool) {
	e := g.m[ref]
	if e == nil {
		return nil, false
	}
	g.lru.MoveToFront(e)
	p := e.Value.(*pgrant)
	p.used = seq
	return p.page, true
}

// put caches a new mapping for request seq, reporting false when the
// cache is full of grants used by requests keepFrom and later (the
// current one, and those whose I/O is pending).
func (g *grantCache) put(ref uint32, page []byte, release func(), seq, keepFrom uint64) bool {
	if len(g.m) >= g.max {
		e := g.lru.Back()
		if e == nil || e.Value.(*pgrant).used >= keepFrom {
			return false
		}
		old := g.lru.Remove(e).(*pgrant)
		delete(g.m, old.ref)
		old.release()
	}
	g.m[ref] = g.lru.PushFront(&pgrant{ref: ref, page: page, release: release, used: seq})
	return true
}

func (g *grantCache) releaseAll() {
	for e := g.lru.Front(); e != nil; e = e.Next() {
		e.Value.(*pgrant).release()
	}
	g.lru.Init()
	clear(g.m)
}
