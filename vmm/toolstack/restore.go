package toolstack

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"regexp"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/physmap"
	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

var cfgName = regexp.MustCompile(`(?m)^name\s*=\s*"([^"]*)"`)
var cfgExtra = regexp.MustCompile(`(?m)^extra\s*=\s*"([^"]*)"`)

func segment(sel, limit uint32, base uint64, ar uint32) kvm.Segment {
	return kvm.Segment{Base: base, Limit: limit, Selector: uint16(sel),
		Typ: uint8(ar & 15), S: uint8(ar >> 4 & 1), DPL: uint8(ar >> 5 & 3), Present: uint8(ar >> 7 & 1),
		AVL: uint8(ar >> 8 & 1), L: uint8(ar >> 9 & 1), DB: uint8(ar >> 10 & 1), G: uint8(ar >> 11 & 1),
		Unusable: uint8(1 - ar>>7&1)}
}

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
func (t *Toolstack) Restore(ctx context.Context, path string, cfg DomainConfig) (*Domain, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	var pr *progressReader
	if cfg.Progress != nil {
		if st, err := f.Stat(); err == nil {
			pr = &progressReader{r: f, total: uint64(st.Size()), fn: cfg.Progress}
			r = pr
		}
	}
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
		c, err = l.container(n, false)
		return err
	}
	s, err := stream.ReadSave(r, &stream.ReadOptions{
		MaxVCPUs: 1, // xenresume domains have one vCPU
		Headers: func(s *stream.Save) error {
			name := cfg.Name
			if m := cfgName.FindStringSubmatch(s.XL.Config); m != nil && name == "" {
				name = m[1]
			}
			if m := cfgExtra.FindStringSubmatch(s.XL.Config); m != nil && cfg.Cmdline == "" {
				cfg.Cmdline = m[1]
			}
			var err error
			l, err = t.newLaunch(cfg, name)
			return err
		},
		Pages: func(s *stream.Save, b stream.PageBatch) error {
			if err := open(s); err != nil {
				return err
			}
			mem := c.m.Memory()
			for i, pfn := range b.PFNs {
				if b.Data[i] != nil {
					if err := mem.Write(pfn<<12, b.Data[i]); err != nil {
						return err
					}
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
	b, err := load(s, c, path, cfg.Cmdline)
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", path, err)
	}
	return l.finish(b)
}

// load fills a new domain's container, whose pages are in place, with the
// rest of the saved domain.
func load(s *stream.Save, c *container, path, cmdline string) (*booted, error) {
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
	if v0.CPU == nil {
		// A stream as Xen writes it for a ring-3 PV domain: its state is
		// in the vCPU context and the page types alone.
		return nil, fmt.Errorf("%w: no HVM_CONTEXT: restoring a domain saved in the ring-3 PV model is not supported yet", stream.ErrFormat)
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

	// vCPU 0: back in the hypercall's return path, in a new domain.
	siMFN, _ := frames.MFN(siPFN)
	cpu := v0.CPU
	regs := kvm.Regs{RAX: 0, RBX: ur.Rbx, RCX: ur.Rcx, RDX: siMFN, RSI: ur.Rsi, RDI: ur.Rdi, RSP: ur.Rsp, RBP: ur.Rbp,
		R8: ur.R8, R9: ur.R9, R10: ur.R10, R11: ur.R11, R12: ur.R12, R13: ur.R13, R14: ur.R14, R15: ur.R15,
		RIP: ur.Rip, RFLAGS: ur.Rflags}
	sregs := kvm.Sregs{
		CS: segment(cpu.Cs_sel, cpu.Cs_limit, cpu.Cs_base, cpu.Cs_arbytes), DS: segment(cpu.Ds_sel, cpu.Ds_limit, cpu.Ds_base, cpu.Ds_arbytes),
		ES: segment(cpu.Es_sel, cpu.Es_limit, cpu.Es_base, cpu.Es_arbytes), FS: segment(cpu.Fs_sel, cpu.Fs_limit, cpu.Fs_base, cpu.Fs_arbytes),
		GS: segment(cpu.Gs_sel, cpu.Gs_limit, cpu.Gs_base, cpu.Gs_arbytes), SS: segment(cpu.Ss_sel, cpu.Ss_limit, cpu.Ss_base, cpu.Ss_arbytes),
		TR: segment(cpu.Tr_sel, cpu.Tr_limit, cpu.Tr_base, cpu.Tr_arbytes), LDT: segment(cpu.Ldtr_sel, cpu.Ldtr_limit, cpu.Ldtr_base, cpu.Ldtr_arbytes),
		GDT: kvm.Descriptor{Base: cpu.Gdtr_base, Limit: uint16(cpu.Gdtr_limit)},
		IDT: kvm.Descriptor{Base: cpu.Idtr_base, Limit: uint16(cpu.Idtr_limit)},
		CR0: cpu.Cr0, CR2: cpu.Cr2, CR3: cpu.Cr3, CR4: cpu.Cr4, EFER: cpu.Msr_efer,
	}
	vcpu := m.VCPUs()[0]
	if err := vcpu.SetSregs(&sregs); err != nil {
		return nil, err
	}
	if err := vcpu.SetRegs(&regs); err != nil {
		return nil, err
	}
	// Time never goes backwards: the TSC and system time resume where
	// they were saved (stopped for the downtime, as Xen's default mode).
	if err := vcpu.SetTSC(cpu.Tsc); err != nil {
		return nil, fmt.Errorf("restore the guest TSC: %w", err)
	}
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
	// The guest's VIRT_BASE: its GDT's virtual base less the GDT's frame.
	vb := cpu.Gdtr_base - v0.Context.Gdt_frames[0]<<12
	layout := &builder.Layout{
		VirtBase: vb, StartInfo: vb + siPFN<<12, Store: vb + storePFN<<12, Console: vb + conPFN<<12,
		P2M: vb + s.P2M.Frames[0]<<12, P2MFrames: uint64(len(s.P2M.Frames)), HypercallPage: hcPage,
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
