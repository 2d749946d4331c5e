package toolstack

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/physmap"
	"github.com/xenresume/xenresume/vmm/stream"
)

// DefaultRemusInterval is xl remus's default checkpoint interval.
const DefaultRemusInterval = 200 * time.Millisecond

// RemusOptions tune Remus.
type RemusOptions struct {
	// Interval between the end of one checkpoint and the next suspend
	// (DefaultRemusInterval when 0).
	Interval time.Duration
	// The first epoch is a live migration's rounds (MigrateOptions).
	MaxRounds, TargetDirty int
	// Suspend bounds each epoch's suspend (DefaultSuspendTimeouts when
	// zero).
	Suspend SuspendTimeouts
	// Checkpoints, when not 0, stops after that many checkpoints
	// (tests); otherwise Remus runs until it fails or ctx ends.
	Checkpoints int
	// Progress, if set, is told about each checkpoint once it is sent.
	Progress func(RemusCheckpoint)
	// Abort: as MigrateOptions.Abort.
	Abort func()
}

// RemusCheckpoint is one checkpoint sent.
type RemusCheckpoint struct {
	N     int    // 1 for the first
	Pages uint64 // pages sent in its suspended part
	Bytes uint64 // stream bytes so far
	// Pause is how long the guest was suspended: from the suspend request
	// to the resume.
	Pause time.Duration
}

// Remus replicates the running domain to w as xl remus does (libxl_remus.c
// and xg_sr_save.c with a checkpointed stream): the first epoch is a live
// migration's rounds; then, every epoch, the guest is suspended, the
// pages it dirtied (and those the emulated Xen wrote, and every page
// table) are sent with the end-of-checkpoint records and libxc's
// CHECKPOINT, the guest resumes at once (its suspend returns 1), libxl's
// CHECKPOINT_END follows, and Remus waits the interval. The stream never
// has an END. The domain is Replicating meanwhile.
//
// It returns when writing fails (the secondary is gone), when ctx ends, or
// after opts.Checkpoints; in every case the guest runs on here (resumed,
// seeing 1, if it was suspended), as xl's "Backup failed? resuming domain
// at primary". The error says why it stopped (nil after Checkpoints).
func (d *Domain) Remus(ctx context.Context, w io.Writer, o RemusOptions) (n int, err error) {
	if err := d.checkNoBreakpoints(); err != nil {
		return 0, err
	}
	_, opCtx, end, err := d.begin(ctx, OpRemus, Replicating)
	if err != nil {
		return 0, err
	}
	end = abortUntilEnd(opCtx, o.Abort, end)
	if o.Interval <= 0 {
		o.Interval = DefaultRemusInterval
	}
	mo := MigrateOptions{MaxRounds: o.MaxRounds, TargetDirty: o.TargetDirty, Suspend: o.Suspend}.withDefaults()
	o.Suspend = mo.Suspend
	span := d.opSpan()
	cw := &countingWriter{w: w}
	bw := bufio.NewWriterSize(cw, 1<<20)
	p, err := d.newPrecopy(func(b []byte) error { _, err := bw.Write(b); return err })
	if err != nil {
		end(Running)
		return 0, fmt.Errorf("remus: %w", err)
	}
	defer p.stopLogging()
	if err := d.writeHead(bw, d.phase(span, "headers")); err != nil {
		end(Running)
		return 0, fmt.Errorf("remus: %w", err)
	}
	if err := d.precopy(opCtx, p, mo, span, bw, func(MigrateRound) {}); err != nil {
		end(Running)
		return 0, fmt.Errorf("remus: first epoch: %w", err)
	}
	rec := func(t uint32) error { _, err := bw.Write(stream.AppendRecord(nil, t, nil)); return err }
	for {
		n++
		start := time.Now()
		if err := d.suspend(opCtx, o.Suspend, d.phase(span, fmt.Sprintf("checkpoint %d", n))); err != nil {
			end(Running)
			return n - 1, fmt.Errorf("remus: checkpoint %d: %w", n, err)
		}
		d.pauseDisks()
		pages, err := p.checkpoint(opCtx, true)
		if err == nil {
			err = d.writeEndOfCheckpoint(bw, nil)
		}
		if err == nil {
			err = rec(stream.RecCheckpoint)
		}
		if err == nil {
			err = bw.Flush()
		}
		// The primary resumes as soon as its state is in the stream,
		// before libxl's part of the checkpoint (libxl_remus.c's
		// postcopy): its suspend returns 1.
		d.unpauseDisks()
		if rerr := d.resume(context.WithoutCancel(opCtx), true, nil); rerr != nil {
			end(Suspended)
			return n - 1, fmt.Errorf("remus: checkpoint %d: resuming the primary failed, it stays suspended: %w", n, rerr)
		}
		d.machine.Unpause()
		pause := time.Since(start)
		if err == nil {
			err = rec(stream.LibxlCheckpointEnd)
		}
		if err == nil {
			err = bw.Flush()
		}
		if err != nil {
			end(Running)
			return n - 1, fmt.Errorf("remus: checkpoint %d: %w; the primary runs on, unprotected", n, err)
		}
		if o.Progress != nil {
			o.Progress(RemusCheckpoint{N: n, Pages: pages, Bytes: cw.n, Pause: pause})
		}
		if o.Checkpoints > 0 && n >= o.Checkpoints {
			end(Running)
			return n, nil
		}
		select {
		case <-opCtx.Done():
			end(Running)
			return n, fmt.Errorf("remus: %w", opCtx.Err())
		case <-time.After(o.Interval):
		}
	}
}

// ErrNoCheckpoint is wrapped by ReceiveCheckpoints's error when the stream
// broke before its first checkpoint was complete: there is no consistent
// state to fail over to.
var ErrNoCheckpoint = errors.New("the stream broke before its first complete checkpoint")

// ReceiveCheckpoints is a Remus secondary (xg_sr_restore.c and
// libxl_stream_read.c with a checkpointed stream): it reads r, buffering
// each checkpoint until both its libxc CHECKPOINT and libxl CHECKPOINT_END
// have arrived, and only then takes it as the domain's state. When the
// stream breaks (the primary died: EOF, a reset, garbage) it fails over:
// it builds a new domain, left paused, from the last complete checkpoint,
// whose guest will see its suspend return 0 in a new domain, as on Xen's
// failover; never from a torn checkpoint. A stream that ends with END (a
// plain migration) is restored as it stands. onCheckpoint, if set, is
// told the number of each complete checkpoint. It returns the domain and
// how many checkpoints were complete, or an error wrapping
// ErrNoCheckpoint when none was (and then leaves nothing behind).
//
// Memory: the secondary keeps the last checkpoint's pages and the
// current epoch's, at most twice the guest's size (every PFN is checked
// against the domain's size first).
func (t *Toolstack) ReceiveCheckpoints(ctx context.Context, r io.Reader, cfg DomainConfig, onCheckpoint func(n int)) (*Domain, int, error) {
	rs := &remusState{committed: map[uint64]remusPage{}, pending: map[uint64]remusPage{}}
	ended, err := rs.read(ctx, stream.NewReader(r), onCheckpoint)
	if rs.n == 0 && !ended {
		return nil, 0, fmt.Errorf("remus secondary: %w: %w", ErrNoCheckpoint, err)
	}
	if ended {
		rs.commit() // a plain stream's END completes its only epoch
	}
	// Failover (or the end): the last complete checkpoint, as a plain
	// stream through the one restore path.
	d, rerr := t.RestoreStream(ctx, bytes.NewReader(rs.plain()), "remus checkpoint", 0, cfg)
	if rerr != nil {
		return nil, rs.n, fmt.Errorf("remus secondary: restoring checkpoint %d: %w", rs.n, rerr)
	}
	return d, rs.n, nil
}

type remusPage struct {
	typ  uint8
	data []byte // nil: no data (an XTAB), the page keeps what it had
}

// remusState is the secondary's view of the stream.
type remusState struct {
	head      []byte // headers and static records, re-encoded
	nrPages   uint64
	committed map[uint64]remusPage
	pending   map[uint64]remusPage
	endRecs   map[uint32][]byte // the last complete checkpoint's, by type
	pendEnd   map[uint32][]byte
	n         int
}

func (rs *remusState) commit() {
	for pfn, pg := range rs.pending {
		if pg.data == nil {
			if old, ok := rs.committed[pfn]; ok {
				old.typ = pg.typ
				rs.committed[pfn] = old
			}
			continue
		}
		rs.committed[pfn] = pg
	}
	clear(rs.pending)
	if rs.pendEnd != nil {
		rs.endRecs, rs.pendEnd = rs.pendEnd, nil
	}
	rs.n++
}

// read reads the stream until it ends (true at an END record) or breaks.
func (rs *remusState) read(ctx context.Context, sr *stream.Reader, onCheckpoint func(int)) (bool, error) {
	h, err := sr.ReadXLHeader()
	if err != nil {
		return false, err
	}
	if err := sr.ReadLibxlHeader(); err != nil {
		return false, err
	}
	if rec, err := sr.ReadLibxlRecord(); err != nil {
		return false, err
	} else if rec.Type != stream.LibxlLibxcContext {
		return false, fmt.Errorf("%w: libxl record %s where LIBXC_CONTEXT belongs", stream.ErrFormat, stream.LibxlRecordName(rec.Type))
	}
	if _, err := sr.ReadImageHeader(); err != nil {
		return false, err
	}
	dh, err := sr.ReadDomainHeader()
	if err != nil {
		return false, err
	}
	head := stream.AppendXLHeader(nil, h.Config)
	head = stream.AppendLibxlHeader(head)
	head = stream.AppendRecord(head, stream.LibxlLibxcContext, nil)
	head = stream.AppendImageHeader(head)
	rs.head = stream.AppendDomainHeader(head, dh)
	for {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		rec, err := sr.Next()
		if err != nil {
			return false, err
		}
		switch rec.Type {
		case stream.RecX86PVInfo, stream.RecStaticDataEnd, stream.RecX86CPUIDPolicy, stream.RecX86MSRPolicy:
			if rs.n > 0 {
				return false, fmt.Errorf("%w: static record %s after a checkpoint", stream.ErrFormat, stream.RecordName(rec.Type))
			}
			rs.head = stream.AppendRecord(rs.head, rec.Type, rec.Body)
		case stream.RecX86PVP2MFrames:
			if rs.nrPages != 0 {
				return false, fmt.Errorf("%w: a second X86_PV_P2M_FRAMES", stream.ErrFormat)
			}
			p2m, err := stream.DecodeP2MFrames(rec.Body)
			if err != nil {
				return false, err
			}
			if rs.nrPages = p2m.NrPages(); rs.nrPages > physmap.MaxPFN {
				return false, fmt.Errorf("%w: a domain of %d pages", stream.ErrFormat, rs.nrPages)
			}
			rs.head = stream.AppendRecord(rs.head, rec.Type, rec.Body)
		case stream.RecPageData:
			pb, err := stream.DecodePageData(rec.Body)
			if err != nil {
				return false, err
			}
			for i, pfn := range pb.PFNs {
				if pfn >= rs.nrPages {
					return false, fmt.Errorf("%w: PAGE_DATA pfn %#x beyond the domain's %d pages", stream.ErrFormat, pfn, rs.nrPages)
				}
				rs.pending[pfn] = remusPage{typ: pb.Types[i], data: slices.Clone(pb.Data[i])}
			}
		case stream.RecX86TSCInfo, stream.RecSharedInfo, stream.RecX86PVVCPUBasic,
			stream.RecX86PVVCPUExtended, stream.RecX86PVVCPUXSave, stream.RecX86PVVCPUMSRs:
			if rs.pendEnd == nil {
				rs.pendEnd = map[uint32][]byte{}
			}
			rs.pendEnd[rec.Type] = rec.Body
		case stream.RecCheckpoint:
			if rs.pendEnd == nil && rs.endRecs == nil {
				return false, fmt.Errorf("%w: a CHECKPOINT with no vCPU state", stream.ErrFormat)
			}
			lrec, err := sr.ReadLibxlRecord()
			if err != nil {
				return false, err
			}
			if lrec.Type != stream.LibxlCheckpointEnd {
				return false, fmt.Errorf("%w: libxl record %s where CHECKPOINT_END belongs", stream.ErrFormat, stream.LibxlRecordName(lrec.Type))
			}
			rs.commit()
			if onCheckpoint != nil {
				onCheckpoint(rs.n)
			}
		case stream.RecEnd:
			if rs.pendEnd == nil && rs.endRecs == nil {
				return false, fmt.Errorf("%w: END with no vCPU state", stream.ErrFormat)
			}
			return true, nil
		default:
			return false, fmt.Errorf("%w: record %s in a checkpointed stream", stream.ErrFormat, stream.RecordName(rec.Type))
		}
	}
}

// plain re-encodes the last complete checkpoint as a plain stream: the
// headers, every page it holds, its end-of-checkpoint records, END.
func (rs *remusState) plain() []byte {
	out := slices.Clone(rs.head)
	pfns := make([]uint64, 0, len(rs.committed))
	for pfn := range rs.committed {
		pfns = append(pfns, pfn)
	}
	slices.Sort(pfns)
	for len(pfns) > 0 {
		batch := pfns[:min(len(pfns), maxBatch)]
		pfns = pfns[len(batch):]
		types := make([]uint8, len(batch))
		data := make([][]byte, len(batch))
		for i, pfn := range batch {
			types[i], data[i] = rs.committed[pfn].typ, rs.committed[pfn].data
			if data[i] == nil {
				data[i] = make([]byte, machine.PageSize) // typed but never filled: zero
			}
		}
		out = stream.AppendRecord(out, stream.RecPageData, stream.EncodePageData(batch, types, data))
	}
	for _, t := range []uint32{stream.RecX86TSCInfo, stream.RecSharedInfo, stream.RecX86PVVCPUBasic,
		stream.RecX86PVVCPUExtended, stream.RecX86PVVCPUXSave, stream.RecX86PVVCPUMSRs} {
		if b, ok := rs.endRecs[t]; ok {
			out = stream.AppendRecord(out, t, b)
		}
	}
	out = stream.AppendRecord(out, stream.RecEnd, nil)
	return stream.AppendRecord(out, stream.LibxlEnd, nil)
}
