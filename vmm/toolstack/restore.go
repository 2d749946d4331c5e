package toolstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/xenresume/xenresume/vmm/timeline"

	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/physmap"
	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
	"github.com/xenresume/xenresume/vmm/xlcfg"
)

var cfgName = regexp.MustCompile(`(?m)^name\s*=\s*"([^"]*)"`)
var cfgExtra = regexp.MustCompile(`(?m)^extra\s*=\s*"([^"]*)"`)
var cfgVCPUs = regexp.MustCompile(`(?m)^vcpus\s*=\s*([0-9]+)\s*$`)
var cfgMaxVCPUs = regexp.MustCompile(`(?m)^maxvcpus\s*=\s*([0-9]+)\s*$`)

// Restore creates a new domain from an xl save file and leaves it paused
// (Created), through the same launch steps as Create, as libxc's restore
// does: the file is read and checked by vmm/stream's validating reader
// (exactly what Xen's toolstack would accept, to the libxl END record);
// a new domid and new machine frames, created as soon as the P2M record
// gives the domain's size; the pages written straight into guest memory
// as they are read; the guest's P2M rewritten with the new frames;
// shared_info with every port masked and nothing pending; new store and
// console ports (never the old numbers); start_info rewritten
// (process_start_info) and vCPU 0's %rdx set to its new MFN, %rax to 0,
// so the guest's suspend returns 0 in a new domain; time continuous; then
// the domain is introduced to xenstored with its backends. cfg supplies
// the console and may rename the domain (the saved name otherwise).
// Nothing is written to the file, and a failure leaves nothing behind.
// The file is read through a read-only mapping of it (mapFile) when it
// can be mapped, with read(2) otherwise.
func (t *Toolstack) Restore(ctx context.Context, path string, cfg DomainConfig) (*Domain, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var size uint64
	if st, err := f.Stat(); err == nil {
		size = uint64(st.Size())
	}
	if m, err := mapFile(f, size); err == nil {
		defer unix.Munmap(m)
		return t.restoreMapped(ctx, m, path, cfg)
	}
	return t.restore(ctx, f, path, size, false, cfg)
}

// mapFile maps the size bytes of file f read-only. A restore copies the
// pages from the mapping into guest memory, which costs the host a page
// fault per 16 pages of the file (the kernel maps a fault's neighbours
// that are in the page cache) where read(2) went through the page cache's
// lookup and copy for every page; measured on 2026-11-29 (BenchmarkRestore,
// CPU time), a 1 GiB restore took 25% less CPU, a 64 MiB one 20% less.
func mapFile(f *os.File, size uint64) ([]byte, error) {
	if size == 0 || size > math.MaxInt {
		return nil, fmt.Errorf("a file of %d bytes", size)
	}
	return unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_PRIVATE)
}

// restoreMapped is Restore from m, a mapping of the file (mapFile). A file
// that shrinks while it is mapped faults (SIGBUS) where the mapping runs
// past its new end: the restore turns that fault, taken while copying
// from m, into an error (and leaves nothing behind, as any failed
// restore), rather than let the client who truncated the file crash the
// VMM. Any other panic goes on.
func (t *Toolstack) restoreMapped(ctx context.Context, m []byte, path string, cfg DomainConfig) (d *Domain, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		if f, ok := r.(interface{ Addr() uintptr }); ok {
			if a, base := f.Addr(), uintptr(unsafe.Pointer(unsafe.SliceData(m))); a >= base && a-base < uintptr(len(m)) {
				d, err = nil, fmt.Errorf("restore %s: %w", path, &stream.FormatError{
					Offset: int64(a - base), Msg: "the file shrank while it was read", Truncated: true})
				return
			}
		}
		panic(r)
	}()
	return t.restore(ctx, bytes.NewReader(m), path, uint64(len(m)), false, cfg)
}

// RestoreStream is Restore from any byte stream, such as an incoming
// migration's connection: path names it in errors and on the timeline,
// and size (0: unknown, no progress) is its length for progress. It reads
// exactly to the libxl END record and no further, so the stream's reader
// can carry more (the migration handshake) after it (where Restore
// refuses a file with bytes after that record). The same PFN may come
// in several PAGE_DATA records, as in a live migration's rounds: the last
// copy and the last type win, as in libxc's restore.
func (t *Toolstack) RestoreStream(ctx context.Context, r io.Reader, path string, size uint64, cfg DomainConfig) (*Domain, error) {
	return t.restore(ctx, r, path, size, true, cfg)
}

// restore is Restore and RestoreStream: a file must end at the libxl END
// record, a stream need not.
func (t *Toolstack) restore(ctx context.Context, r io.Reader, path string, size uint64, isStream bool, cfg DomainConfig) (*Domain, error) {
	var pr *progressReader
	if cfg.Progress != nil && size != 0 {
		pr = &progressReader{r: r, total: size, fn: cfg.Progress}
		r = pr
	}
	// On the timeline: a restore span whose phases tile it: reading the
	// file (a phase per record type, in stream order; PAGE_DATA batches
	// grouped), building the domain, introducing it.
	span := t.tl.Begin(timeline.TrackToolstack, "lifecycle", "restore", map[string]any{"file": path})
	var to = "failed"
	defer func() { span.End(map[string]any{"to": to}) }()
	read := span.Phase("read", nil)
	var recPhase *timeline.Span
	recName, pages := "", 0
	var l *launch
	defer func() {
		if l != nil {
			l.abort()
		}
	}()
	var c *container
	open := func(s *stream.Save) error { // once the domain's size is known
		if c != nil {
			return nil
		}
		n := s.P2M.NrPages()
		if n > physmap.MaxPFN {
			return fmt.Errorf("%w: a domain of %d pages; xenresume restores at most %d", stream.ErrFormat, n, physmap.MaxPFN)
		}
		var err error
		c, err = l.container(n)
		return err
	}
	pinned := map[uint64]xen.PVTable{} // by PFN: the last type sent wins
	s, err := stream.ReadSave(r, &stream.ReadOptions{
		MaxVCPUs:      xen.MaxPVVCPUs, // and below the saved configuration's vcpus (load)
		AllowTrailing: isStream,
		Record: func(_ *stream.Save, ri stream.RecordInfo) error {
			if name := ri.Name(); name != recName {
				recPhase.Set("pages", pages)
				recName, pages, recPhase = name, 0, read.Phase(name, nil)
			}
			return nil
		},
		Headers: func(s *stream.Save) error {
			var err error
			name := cfg.Name
			if m := cfgName.FindStringSubmatch(s.XL.Config); m != nil && name == "" {
				name = m[1]
			}
			if m := cfgExtra.FindStringSubmatch(s.XL.Config); m != nil && cfg.Cmdline == "" {
				cfg.Cmdline = m[1]
			}
			if cfg.VCPUs == 0 && cfg.MaxVCPUs == 0 {
				for _, v := range []struct {
					re  *regexp.Regexp
					dst *int
				}{{cfgVCPUs, &cfg.VCPUs}, {cfgMaxVCPUs, &cfg.MaxVCPUs}} {
					if m := v.re.FindStringSubmatch(s.XL.Config); m != nil {
						n, err := strconv.Atoi(m[1])
						if err != nil || n < 1 || n > xen.MaxPVVCPUs {
							return fmt.Errorf("%w: the saved configuration's %s: a PV domain has 1 to %d vCPUs", stream.ErrFormat, m[0], xen.MaxPVVCPUs)
						}
						*v.dst = n
					}
				}
				if _, _, err := cfg.nrVCPUs(); err != nil {
					return fmt.Errorf("%w: the saved configuration: %v", stream.ErrFormat, err)
				}
			}
			if cfg.Disks == nil {
				if cfg.Disks, err = savedDisks(s.XL.Config); err != nil {
					return err
				}
			}
			l, err = t.newLaunch(cfg, name)
			return err
		},
		// Each page is read from the file straight into guest memory,
		// the VM created at the first (the P2M record, which precedes
		// every page, gives its size).
		PageDest: func(s *stream.Save, pfn uint64, _ uint8) ([]byte, error) {
			if err := open(s); err != nil {
				return nil, err
			}
			return c.m.Memory().Page(pfn << 12)
		},
		Pages: func(s *stream.Save, b stream.PageBatch) error {
			pages += len(b.PFNs)
			if err := open(s); err != nil {
				return err
			}
			for i, pfn := range b.PFNs {
				// Page tables name the new domain's frames (libxc's
				// x86_pv_localise_page); pinned ones are pinned again
				// at the end.
				level := int(b.Types[i] &^ stream.PagePinned)
				delete(pinned, pfn)
				if b.Data[i] == nil || level < stream.PageL1 || level > stream.PageL4 {
					continue
				}
				if err := xen.LocalisePageTable(b.Data[i], level, c.frames); err != nil {
					return fmt.Errorf("%w: L%d table at PFN %#x: %v", stream.ErrFormat, level, pfn, err)
				}
				if b.Types[i]&stream.PagePinned != 0 {
					mfn, _ := c.frames.MFN(pfn)
					pinned[pfn] = xen.PVTable{MFN: mfn, Level: level, Pinned: true}
				}
			}
			return ctx.Err()
		},
	})
	if err == nil {
		err = open(s)
	}
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", path, err)
	}
	if pr != nil {
		pr.finish()
	}
	pins := make([]xen.PVTable, 0, len(pinned))
	for _, pfn := range slices.Sorted(maps.Keys(pinned)) {
		pins = append(pins, pinned[pfn])
	}
	span.Phase("build", map[string]any{"pages": s.Pages, "pinned": len(pins)})
	b, err := load(s, c, pins, path, cfg.Cmdline)
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", path, err)
	}
	span.Phase("introduce", nil)
	d, err := l.finish(b)
	if err == nil {
		to = "created"
		span.Set("domid", d.ID)
	}
	return d, err
}

// load fills a new domain's container, whose pages are in place (page
// tables localised), with the rest of the saved domain: pins are the
// pinned tables, by their new MFNs.
func load(s *stream.Save, c *container, pins []xen.PVTable, path, cmdline string) (*booted, error) {
	m, frames, xd := c.m, c.frames, c.xd
	nrPages := s.P2M.NrPages()
	mem := m.Memory()
	// The guest's P2M list now names the new machine frames.
	for i, frame := range s.P2M.Frames {
		pg, err := mem.Page(frame << 12)
		if err != nil {
			return nil, err
		}
		for j := uint64(0); j < 512 && uint64(i)*512+j < nrPages; j++ {
			mfn, _ := frames.MFN(uint64(i)*512 + j)
			binary.LittleEndian.PutUint64(pg[j*8:], mfn)
		}
	}
	// shared_info: vcpu_info kept; nothing pending, every port masked.
	si := xd.SharedInfo()
	*si = *s.SharedInfo
	for i := range si.Vcpu_info {
		si.Vcpu_info[i].Upcall_pending, si.Vcpu_info[i].Pending_sel = 0, 0
	}
	for i := range si.Evtchn_pending {
		si.Evtchn_pending[i], si.Evtchn_mask[i] = 0, ^uint64(0)
	}
	si.Arch.Pfn_to_mfn_frame_list_list = 0

	// start_info, found by the canonicalised %rdx.
	v0 := s.VCPU(0)
	if v0.CPU != nil {
		// What xenresume's ring-0 container wrote: a PV domain has no
		// HVM_CONTEXT, and xenresume restores PV domains in the ring-3
		// model only.
		return nil, fmt.Errorf("%w: an HVM_CONTEXT record: a stream of xenresume's former ring-0 container, which cannot be restored as a PV domain", stream.ErrFormat)
	}
	ur := &v0.Context.User_regs
	siPFN := ur.Rdx
	siPage, err := mem.Page(siPFN << 12)
	if err != nil {
		return nil, fmt.Errorf("%w: vCPU 0's rdx %#x is not a page of the domain", stream.ErrFormat, siPFN)
	}
	sinfo := xenabi.View[xenabi.StartInfo](siPage)
	if xenabi.CString(sinfo.Magic[:]) != "xen-3.0-x86_64" {
		return nil, fmt.Errorf("%w: no start_info at PFN %#x", stream.ErrFormat, siPFN)
	}
	storePFN, conPFN := sinfo.Store_mfn, binary.LittleEndian.Uint64(sinfo.Console[:])
	if storePFN >= nrPages || conPFN >= nrPages {
		return nil, fmt.Errorf("%w: start_info's store %#x and console %#x frames are not canonical PFNs", stream.ErrFormat, storePFN, conPFN)
	}
	oldStore, oldCon := sinfo.Store_evtchn, binary.LittleEndian.Uint32(sinfo.Console[8:])
	storePort, conPort, err := newPorts(xd, oldStore, oldCon)
	if err != nil {
		return nil, err
	}
	sinfo.Store_mfn, _ = frames.MFN(storePFN)
	sinfo.Store_evtchn = storePort
	conMFN, _ := frames.MFN(conPFN)
	binary.LittleEndian.PutUint64(sinfo.Console[:], conMFN)
	binary.LittleEndian.PutUint32(sinfo.Console[8:], conPort)
	sinfo.Nr_pages = nrPages
	sinfo.Shared_info = xd.SharedInfoMFN() << 12
	sinfo.Flags = 0

	// vCPU 0: back in the hypercall's return path, in a new domain: the
	// context localised (GDT frames, CR3, CR1) and loaded as Xen's
	// arch_set_info_guest does, after the pinned tables are pinned again.
	siMFN, _ := frames.MFN(siPFN)
	vctx := *v0.Context
	if err := translateContext(&vctx, frames.MFN, toDomain); err != nil {
		return nil, fmt.Errorf("%w: vCPU 0: %v", stream.ErrFormat, err)
	}
	regs, sregs, err := xd.RestorePV(0, pins, &vctx)
	if err != nil {
		return nil, fmt.Errorf("%w: vCPU 0: %v", stream.ErrFormat, err)
	}
	regs.RDX, regs.RAX = siMFN, 0
	vcpu := m.VCPUs()[0]
	if err := vcpu.SetSregs(&sregs); err != nil {
		return nil, err
	}
	if err := vcpu.SetRegs(&regs); err != nil {
		return nil, err
	}
	if err := loadFPU(vcpu, &vctx); err != nil {
		return nil, fmt.Errorf("vCPU 0: %w", err)
	}
	// The secondaries that were up: their contexts loaded as vCPU 0's
	// (the tables are pinned already), and up; the others stay down and
	// uninitialised.
	for _, sv := range s.VCPUs {
		if sv.ID == 0 {
			continue
		}
		if int(sv.ID) >= len(m.VCPUs()) {
			return nil, fmt.Errorf("%w: a record of vCPU %d in a domain of %d vCPUs (the saved vcpus)", stream.ErrFormat, sv.ID, len(m.VCPUs()))
		}
		if sv.Context == nil {
			return nil, fmt.Errorf("%w: vCPU %d has no X86_PV_VCPU_BASIC record", stream.ErrFormat, sv.ID)
		}
		vctx := *sv.Context
		if err := translateContext(&vctx, frames.MFN, toDomain); err != nil {
			return nil, fmt.Errorf("%w: vCPU %d: %v", stream.ErrFormat, sv.ID, err)
		}
		r, sr, err := xd.RestorePV(int(sv.ID), nil, &vctx)
		if err != nil {
			return nil, fmt.Errorf("%w: vCPU %d: %v", stream.ErrFormat, sv.ID, err)
		}
		v := m.VCPUs()[sv.ID]
		if err := v.SetSregs(&sr); err != nil {
			return nil, err
		}
		if err := v.SetRegs(&r); err != nil {
			return nil, err
		}
		if err := loadFPU(v, &vctx); err != nil {
			return nil, fmt.Errorf("vCPU %d: %w", sv.ID, err)
		}
	}
	// Time never goes backwards: system time resumes where it was saved
	// (stopped for the downtime, as Xen's default mode).
	if s.TSC != nil {
		xd.SetSystemTime(s.TSC.Nsec)
	}
	if err := xd.UpdateTime(); err != nil {
		return nil, err
	}
	hcPage, ok := xd.HypercallPageFromReturn(regs.RIP, xenabi.HypervisorSchedOp)
	if !ok {
		return nil, fmt.Errorf("%w: vCPU 0's rip %#x is not in sched_op's return path: the guest did not suspend there", stream.ErrFormat, regs.RIP)
	}
	// The guest's virtual layout is not in the stream: the layout is in
	// guest-physical terms (VirtBase 0), the hypercall page virtual.
	layout := &builder.Layout{
		StartInfo: siPFN << 12, Store: storePFN << 12, Console: conPFN << 12,
		P2M: s.P2M.Frames[0] << 12, P2MFrames: uint64(len(s.P2M.Frames)), HypercallPage: hcPage,
	}
	return &booted{layout: layout, storePort: storePort, conPort: conPort, conMFN: conMFN,
		kernelName: "restored from " + path, cmdline: cmdline}, nil
}

// SavedName returns the domain name in a save file's xl configuration,
// which a restore keeps unless told otherwise.
func SavedName(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	cfg, err := stream.ReadXLHeader(f)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	m := cfgName.FindStringSubmatch(cfg)
	if m == nil {
		return "", fmt.Errorf("%s: the saved configuration names no domain (use --name)", path)
	}
	return m[1], nil
}

// progressReader reports bytes read, every MiB and at the end.
type progressReader struct {
	r           io.Reader
	done, total uint64
	fn          Progress
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	before := p.done
	p.done += uint64(n)
	if p.done>>20 != before>>20 || (p.done >= p.total && before < p.total) {
		p.fn("restore", p.done, p.total)
	}
	return n, err
}

// finish reports the whole file read once the stream parsed (the parser
// stops at the END record and need not see EOF).
func (p *progressReader) finish() {
	if p.done != p.total {
		p.done = p.total
		p.fn("restore", p.done, p.total)
	}
}

// newPorts allocates the store and console ports of a restored domain,
// deliberately not the numbers the guest had, so a guest that keeps its
// old ports fails visibly.
func newPorts(xd *xen.Domain, oldStore, oldCon uint32) (uint32, uint32, error) {
	var skipped, got []uint32
	for len(got) < 2 {
		p, err := xd.AllocUnbound(0)
		if err != nil {
			return 0, 0, err
		}
		if p == oldStore || p == oldCon {
			skipped = append(skipped, p)
			continue
		}
		got = append(got, p)
	}
	for _, p := range skipped {
		xd.Close(p)
	}
	return got[0], got[1], nil
}

// savedDisks reads disk = [...] back from a save file's xl configuration
// (XLConfig writes it), in xl's disk syntax.
func savedDisks(config string) ([]xlcfg.Disk, error) {
	f, err := xlcfg.Parse("saved configuration", []byte(config))
	if err != nil {
		return nil, err
	}
	st, ok := f.Lookup("disk")
	if !ok {
		return nil, nil
	}
	c := &xlcfg.Config{}
	for _, v := range st.Value.List {
		c.Disks = append(c.Disks, v.Text)
	}
	return c.ParseDisks()
}

// loadFPU loads a saved context's x87 and SSE state into a vCPU that has
// not run, as arch_set_info_guest copies fpu_ctxt when VGCF_i387_valid is
// set; without it the vCPU keeps its initial state (FCW 0x37f, MXCSR
// 0x1f80), as Xen's vcpu_setup_fpu gives it.
func loadFPU(v *machine.VCPU, ctx *xenabi.VCPUGuestContext) error {
	if ctx.Flags&xenabi.VGCFI387Valid == 0 {
		return nil
	}
	var fx [512]byte
	copy(fx[:], xenabi.Bytes(&ctx.Fpu_ctxt))
	return v.SetFXSave(fx)
}
