package toolstack

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/timeline"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
	"github.com/xenresume/xenresume/vmm/xlcfg"
)

// maxBatch is libxc's MAX_BATCH_SIZE: pages per PAGE_DATA record.
const maxBatch = 1024

// XLConfig is the domain's configuration in xl's syntax, for the save file.
func (d *Domain) XLConfig() string {
	cfg := fmt.Sprintf("name = %q\nmemory = %d\ntype = \"pv\"\nkernel = %q\nextra = %q\n",
		d.Name, d.Xen.Frames().NrPages>>8, d.kernelName, d.cmdline)
	if max, avail := len(d.machine.VCPUs()), d.AvailableVCPUs(); max > 1 {
		cfg += fmt.Sprintf("vcpus = %d\n", avail)
		if avail != max {
			cfg += fmt.Sprintf("maxvcpus = %d\n", max)
		}
	}
	if d.backends == nil || len(d.backends.disks) == 0 {
		return cfg
	}
	// disk = [...] in xl's disk syntax, target last (it takes the rest).
	list := xlcfg.Value{Kind: xlcfg.List}
	for _, v := range d.backends.disks {
		spec := "format=raw, vdev=" + v.dev.Vdev + ", access=rw"
		if !v.dev.Writable {
			spec = "format=raw, vdev=" + v.dev.Vdev + ", access=ro"
		}
		if v.dev.CDROM {
			spec += ", devtype=cdrom"
		}
		if v.dev.NoDiscard {
			spec += ", no-discard"
		}
		list.List = append(list.List, xlcfg.Value{Kind: xlcfg.String, Text: spec + ", target=" + v.dev.Target})
	}
	return cfg + "disk = " + list.String() + "\n"
}

// Save writes the domain to path as an xl save file, as `xl save` does:
// the xl header with the domain's configuration, the libxl stream, and in
// it the libxc stream. A running domain is suspended first (Saving). The
// file is written under a temporary name, fsynced and renamed, so a failed
// save never replaces a good file.
//
// Where the domain goes:
//   - a save that fails leaves it in the state it had: a running guest is
//     resumed cooperatively (it sees its suspend return 1), a suspended one
//     stays suspended; it is never lost;
//   - with checkpoint (`xl save -c`) it also goes back to that state;
//   - otherwise it is Destroyed, as after `xl save`, and Status().Saved
//     says why.
//
// On a timeline the save's span has phases that tile it: "suspend" (with
// the suspend's own phases) when the domain was running, "stream" (a phase
// per record type written, see writeStream), "fsync" (the buffer's last
// bytes and the fsync), "rename", then "destroy", or for a checkpoint of
// a running domain "resume" (with the resume's phases) and "unpause".
func (d *Domain) Save(ctx context.Context, path string, checkpoint bool) (err error) {
	from, opCtx, end, err := d.begin(ctx, OpSave, Saving)
	if err != nil {
		return err
	}
	span := d.opSpan()
	if from == Running {
		if err := d.suspend(opCtx, DefaultSuspendTimeouts, d.phase(span, "suspend")); err != nil {
			end(Running)
			return fmt.Errorf("save: %w", err)
		}
	}
	// The disks' rings are final before the memory is copied.
	d.pauseDisks()
	unhide := d.hideBreakpoints() // a debugger's int3s stay out of the file
	stream := d.phase(span, "stream")
	err = writeAtomically(path, func(w io.Writer) error { return d.writeStream(opCtx, wrapSaveWriter(w), stream) },
		func(name string) { d.phase(span, name) })
	if err != nil || checkpoint {
		unhide()
	}
	if err == nil && !checkpoint {
		d.phase(span, "destroy")
		// Destroyed while the save still holds the domain, so that no
		// other request can run the saved guest in between.
		derr := d.release()
		d.lc.mu.Lock()
		d.lc.saved, d.lc.from = true, Suspended
		d.lc.mu.Unlock()
		end(Destroyed)
		if derr != nil {
			return fmt.Errorf("saved, but destroying the domain failed: %w", derr)
		}
		return nil
	}
	d.unpauseDisks() // a checkpoint, or a failed save
	if from == Suspended {
		end(Suspended)
		return err
	}
	// Back to running, cooperatively: the guest sees its suspend return 1.
	if rerr := d.resume(context.WithoutCancel(opCtx), true, d.phase(span, "resume")); rerr != nil {
		end(Suspended)
		if err == nil {
			return fmt.Errorf("saved, but resuming the guest failed (it stays suspended): %w", rerr)
		}
		return fmt.Errorf("%w (and resuming the guest failed, it stays suspended: %v)", err, rerr)
	}
	d.phase(span, "unpause")
	d.machine.Unpause()
	end(Running)
	return err
}

// wrapSaveWriter lets tests inject write failures (a full disk) into Save.
var wrapSaveWriter = func(w io.Writer) io.Writer { return w }

// saveWriters holds the 1 MiB buffered writers of saves, reused: a fresh
// megabyte per save was a fixed cost (its allocation and first touch)
// that a small save felt.
var saveWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 1<<20) }}

// writeAtomically writes a file through fn under a temporary name in the
// same directory, fsyncs it and renames it over path. phase, when not nil,
// is told when the "fsync" (with the buffer's last bytes) and the
// "rename" begin.
func writeAtomically(path string, fn func(io.Writer) error, phase func(name string)) error {
	if phase == nil {
		phase = func(string) {}
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("save: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	bw := saveWriters.Get().(*bufio.Writer)
	bw.Reset(tmp)
	defer func() { bw.Reset(nil); saveWriters.Put(bw) }()
	if err := fn(bw); err != nil {
		tmp.Close()
		return fmt.Errorf("save: %w", err)
	}
	phase("fsync")
	if err := bw.Flush(); err != nil {
		tmp.Close()
		return fmt.Errorf("save: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save: fsync: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	phase("rename")
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	if dir, err := os.Open(filepath.Dir(path)); err == nil {
		dir.Sync()
		dir.Close()
	}
	return nil
}

// writeStream writes the suspended domain as xl header + libxl stream; it
// gives up when ctx ends (a destroy). span (nil: not recording) gets a
// phase per record type, in the order written, which tile it: "headers"
// (xl, libxl and libxc headers), X86_PV_INFO, STATIC_DATA_END,
// X86_PV_P2M_FRAMES, PAGE_DATA (every batch, with the page and record
// counts), X86_TSC_INFO, SHARED_INFO, X86_PV_VCPU_BASIC, END and
// LIBXL_END; the bytes still buffered at the end are the save's "fsync".
func (d *Domain) writeStream(ctx context.Context, w io.Writer, span *timeline.Span) error {
	if err := d.writeHead(w, span); err != nil {
		return err
	}
	pages := d.phase(span, "PAGE_DATA")
	types, err := d.tablesByPFN()
	if err != nil {
		return err
	}
	put := func(b []byte) error { _, err := w.Write(b); return err }
	if err := d.writePages(ctx, put, types, pages); err != nil {
		return err
	}
	return d.writeTail(w, span)
}

// writeHead writes the stream up to its memory: the xl, libxl and libxc
// headers, X86_PV_INFO, STATIC_DATA_END and X86_PV_P2M_FRAMES. It needs
// no suspended guest (a live migration writes it while the guest runs).
func (d *Domain) writeHead(w io.Writer, span *timeline.Span) error {
	d.phase(span, "headers")
	put := func(b []byte) error { _, err := w.Write(b); return err }
	rec := func(t uint32, body []byte) error { return put(stream.AppendRecord(nil, t, body)) }

	hdr := stream.AppendXLHeader(nil, d.XLConfig())
	hdr = stream.AppendLibxlHeader(hdr)
	hdr = stream.AppendRecord(hdr, stream.LibxlLibxcContext, nil)
	hdr = stream.AppendImageHeader(hdr)
	hdr = stream.AppendDomainHeader(hdr, stream.DomainHeader{Type: stream.DomainX86PV, XenMajor: xen.VersionMajor, XenMinor: xen.VersionMinor})
	if err := put(hdr); err != nil {
		return err
	}
	d.phase(span, "X86_PV_INFO")
	if err := rec(stream.RecX86PVInfo, stream.EncodePVInfo(stream.PVInfo{GuestWidth: 8, PTLevels: 4})); err != nil {
		return err
	}
	d.phase(span, "STATIC_DATA_END")
	if err := rec(stream.RecStaticDataEnd, nil); err != nil {
		return err
	}
	d.phase(span, "X86_PV_P2M_FRAMES")
	// The frames holding the guest's P2M list, from start_info.
	frames := d.Xen.Frames()
	l := d.Layout
	p2m := stream.P2MFrames{EndPFN: uint32(frames.NrPages - 1), Frames: make([]uint64, l.P2MFrames)}
	for i := range p2m.Frames {
		p2m.Frames[i] = l.PFN(l.P2M) + uint64(i)
	}
	return rec(stream.RecX86PVP2MFrames, stream.EncodeP2MFrames(p2m))
}

// tablesByPFN returns the domain's page tables now, by PFN.
func (d *Domain) tablesByPFN() (map[uint64]xen.PVTable, error) {
	frames := d.Xen.Frames()
	tables, err := d.Xen.PVTables()
	if err != nil {
		return nil, err
	}
	types := make(map[uint64]xen.PVTable, len(tables)) // by PFN
	for _, t := range tables {
		pfn, ok := frames.PFN(t.MFN)
		if !ok {
			return nil, fmt.Errorf("page table at MFN %#x is not the domain's frame", t.MFN)
		}
		types[pfn] = t
	}
	return types, nil
}

// writeTail writes what follows the suspended domain's memory:
// X86_TSC_INFO, SHARED_INFO, vCPU 0's X86_PV_VCPU_BASIC, END and the
// libxl END.
func (d *Domain) writeTail(w io.Writer, span *timeline.Span) error {
	if err := d.writeEndOfCheckpoint(w, span); err != nil {
		return err
	}
	rec := func(t uint32, body []byte) error { _, err := w.Write(stream.AppendRecord(nil, t, body)); return err }
	d.phase(span, "END")
	if err := rec(stream.RecEnd, nil); err != nil {
		return err
	}
	d.phase(span, "LIBXL_END")
	return rec(stream.LibxlEnd, nil)
}

// writeEndOfCheckpoint writes libxc's end-of-checkpoint records of the
// suspended domain: X86_TSC_INFO, SHARED_INFO, X86_PV_VCPU_BASIC for each
// online vCPU.
func (d *Domain) writeEndOfCheckpoint(w io.Writer, span *timeline.Span) error {
	put := func(b []byte) error { _, err := w.Write(b); return err }
	rec := func(t uint32, body []byte) error { return put(stream.AppendRecord(nil, t, body)) }
	exit := d.Xen.Exit()
	siPFN, err := d.StartInfoPFN(exit)
	if err != nil {
		return err
	}
	v0 := d.machine.VCPUs()[0]
	regs, err := v0.GetRegs()
	if err != nil {
		return err
	}
	sregs, err := v0.GetSregs()
	if err != nil {
		return err
	}
	d.phase(span, "X86_TSC_INFO")
	khz, err := v0.TSCKHz()
	if err != nil {
		return err
	}
	tscInfo := stream.TSCInfo{KHz: khz, Nsec: d.Xen.SystemTime()}
	if err := rec(stream.RecX86TSCInfo, stream.EncodeTSCInfo(tscInfo)); err != nil {
		return err
	}
	d.phase(span, "SHARED_INFO")
	if err := rec(stream.RecSharedInfo, stream.EncodeSharedInfo(d.Xen.SharedInfo())); err != nil {
		return err
	}
	d.phase(span, "X86_PV_VCPU_BASIC")
	// One record per online vCPU, as libxc's write_vcpu_information: a
	// vCPU that is down (or was never brought up) has none, and comes
	// back down and uninitialised.
	for i, v := range d.machine.VCPUs() {
		if i > 0 && !d.Xen.VCPUOnline(i) {
			continue
		}
		if i > 0 {
			if regs, err = v.GetRegs(); err != nil {
				return err
			}
			if sregs, err = v.GetSregs(); err != nil {
				return err
			}
		}
		vctx, err := d.Xen.PVContext(i, regs, sregs)
		if err != nil {
			return err
		}
		if i == 0 {
			vctx.User_regs.Rdx = siPFN // the start_info MFN the guest passed, as its PFN
		}
		// The x87 and SSE state, as arch_get_info_guest copies the vCPU's
		// FXSAVE image into fpu_ctxt and sets VGCF_i387_valid.
		fx, err := v.FXSave()
		if err != nil {
			return fmt.Errorf("vCPU %d: %w", i, err)
		}
		copy(xenabi.Bytes(&vctx.Fpu_ctxt), fx[:])
		vctx.Flags |= xenabi.VGCFI387Valid
		if err := translateContext(&vctx, d.Xen.Frames().PFN, toStream); err != nil {
			return fmt.Errorf("vCPU %d: %w", i, err)
		}
		basic := &stream.VCPUBasic{ID: uint32(i), Context: vctx}
		if err := rec(stream.RecX86PVVCPUBasic, stream.EncodeVCPUBasic(basic)); err != nil {
			return err
		}
	}
	return nil
}

// Progress, when set, is told how a save or restore is going: done of
// total units (pages saved, or bytes read), from any goroutine.
type Progress func(what string, done, total uint64)

// writePages writes PAGE_DATA batches for the pages the guest has touched
// (resident in the mapping, by mincore) that are not all zero, and every
// page-table page. Untouched memory costs nothing: the file grows with
// what the guest used, not with its configured size. A restorer leaves
// unlisted pages zero. Page-table pages (tables, by PFN) carry their type
// and pin (XEN_DOMCTL_PFINFO_L1TAB to L4TAB, LPINTAB) and are normalised
// as libxc's normalise_pagetable does: machine frames become PFNs and
// Xen's L4 slots are zeroed. span (nil: none) gets the number of pages
// and records written.
func (d *Domain) writePages(ctx context.Context, put func([]byte) error, tables map[uint64]xen.PVTable, span *timeline.Span) error {
	frames := d.Xen.Frames()
	ram := d.machine.Memory().Regions()[0].Mem
	resident := make([]byte, (len(ram)+machine.PageSize-1)/machine.PageSize)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&ram[0])), uintptr(len(ram)),
		uintptr(unsafe.Pointer(&resident[0]))); e != 0 {
		return fmt.Errorf("mincore: %w", e)
	}
	var pfns []uint64
	var types []uint8
	var data [][]byte
	var nPages, nRecords uint64
	defer func() { span.Set("pages", nPages); span.Set("records", nRecords) }()
	// Each record is its header and PFN words, then the pages written
	// from guest memory as they are: one write per run of consecutive
	// PFNs (adjacent in the mapping), no copy into a record buffer.
	hdr := make([]byte, 0, 16+8*maxBatch)
	var held []*[machine.PageSize]byte // the batch's normalised tables
	flush := func() error {
		if len(pfns) == 0 {
			return nil
		}
		nPages += uint64(len(pfns))
		nRecords++
		hdr = stream.AppendPageDataHeader(hdr[:0], pfns, types)
		if err := put(hdr); err != nil {
			return err
		}
		for i := 0; i < len(data); {
			run, j := data[i], i+1
			for ; j < len(data); j++ {
				k := j - i
				if cap(run) < (k+1)*machine.PageSize || &run[:(k+1)*machine.PageSize][k*machine.PageSize] != &data[j][0] {
					break
				}
				run = run[:(k+1)*machine.PageSize]
			}
			if err := put(run); err != nil {
				return err
			}
			i = j
		}
		pfns, types, data = pfns[:0], types[:0], data[:0]
		for _, t := range held {
			tablePages.Put(t)
		}
		held = held[:0]
		return nil
	}
	total := uint64(0)
	for _, r := range resident {
		total += uint64(r & 1)
	}
	done := uint64(0)
	// The tables by ascending PFN, met with a cursor as the scan goes:
	// no map lookup for each of the configured pages.
	tablePFNs := make([]uint64, 0, len(tables))
	for pfn := range tables {
		tablePFNs = append(tablePFNs, pfn)
	}
	slices.Sort(tablePFNs)
	next := 0
	for pfn, r := range resident {
		for next < len(tablePFNs) && tablePFNs[next] < uint64(pfn) {
			next++
		}
		isTable := next < len(tablePFNs) && tablePFNs[next] == uint64(pfn)
		if r&1 == 0 && !isTable {
			continue
		}
		var table xen.PVTable
		if isTable {
			table = tables[uint64(pfn)]
		}
		if r&1 != 0 {
			if done++; d.progress != nil && (done%4096 == 0 || done == total) {
				d.progress("save", done, total)
			}
		}
		pg := ram[pfn*machine.PageSize : (pfn+1)*machine.PageSize]
		typ := uint8(stream.PageNormal)
		if isTable {
			n := tablePages.Get().(*[machine.PageSize]byte)
			held = append(held, n)
			if err := xen.NormalisePageTableInto(n[:], pg, table.Level, frames); err != nil {
				return fmt.Errorf("page table at PFN %#x: %w", pfn, err)
			}
			pg, typ = n[:], uint8(table.Level)
			if table.Pinned {
				typ |= stream.PagePinned
			}
		} else if allZero(pg) {
			continue
		}
		pfns = append(pfns, uint64(pfn))
		types = append(types, typ)
		data = append(data, pg)
		if len(pfns) == maxBatch {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// tablePages holds the pages writePages normalises tables into, reused
// from batch to batch and save to save: a domain's tables are written
// once per save, and a fresh page for each cost an allocation and, on a
// nested host, a page fault apiece.
var tablePages = sync.Pool{New: func() any { return new([machine.PageSize]byte) }}

// zeroPage is what allZero compares with.
var zeroPage [machine.PageSize]byte

// allZero reports whether b is all zero bytes. A save checks every
// resident page that is not a page table, so this is compared a page at a
// time by bytes.Equal, which runs the runtime's vectorised memequal
// (a loop of 8-byte loads was about 1.5 ms of a 64 MiB save's CPU).
func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroPage))
		if !bytes.Equal(b[:n], zeroPage[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
