package toolstack

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"regexp"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/asm"
	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/physmap"
	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// saved is what a stream says about a domain.
type saved struct {
	config     string
	nrPages    uint64
	p2mFrames  []uint64
	pages      map[uint64][]byte
	sharedInfo []byte
	basic      []byte // vcpu_guest_context of vCPU 0
	cpu        *xenabi.HVMHWCPU
	systemTime uint64
}

var cfgName = regexp.MustCompile(`(?m)^name\s*=\s*"([^"]*)"`)
var cfgExtra = regexp.MustCompile(`(?m)^extra\s*=\s*"([^"]*)"`)

// readSaved reads an xl save file and checks everything restore needs.
func readSaved(r io.Reader) (*saved, error) {
	s := &saved{pages: map[uint64][]byte{}}
	var err error
	if s.config, err = stream.ReadXLHeader(r); err != nil {
		return nil, err
	}
	if err := stream.ReadLibxlHeader(r); err != nil {
		return nil, err
	}
	sr := stream.NewReader(r)
	if rec, err := sr.ReadLibxlRecord(); err != nil || rec.Type != stream.LibxlLibxcContext {
		return nil, fmt.Errorf("%w: no LIBXC_CONTEXT (%v)", stream.ErrFormat, err)
	}
	if _, err := sr.ReadImageHeader(); err != nil {
		return nil, err
	}
	dh, err := sr.ReadDomainHeader()
	if err != nil {
		return nil, err
	}
	if dh.Type != stream.DomainX86PV {
		return nil, fmt.Errorf("%w: an HVM stream; xenresume restores PV domains", stream.ErrFormat)
	}
	bad := func(f string, a ...any) error { return fmt.Errorf("%w: %s", stream.ErrFormat, fmt.Sprintf(f, a...)) }
	for {
		rec, err := sr.Next()
		if err != nil {
			return nil, err
		}
		b := rec.Body
		switch rec.Type {
		case stream.RecX86PVInfo:
			if b[0] != 8 || b[1] != 4 {
				return nil, bad("a %d-bit guest with %d-level page tables; want 64-bit, 4 levels", b[0]*8, b[1])
			}
		case stream.RecX86PVP2MFrames:
			start, end := binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:])
			if start != 0 || uint64(end)+1 > physmap.MaxPFN || s.nrPages != 0 {
				return nil, bad("P2M range %d-%d", start, end)
			}
			s.nrPages = uint64(end) + 1
			for i := 8; i < len(b); i += 8 {
				pfn := binary.LittleEndian.Uint64(b[i:])
				if pfn >= s.nrPages {
					return nil, bad("P2M frame %#x outside the domain's %d pages", pfn, s.nrPages)
				}
				s.p2mFrames = append(s.p2mFrames, pfn)
			}
			if uint64(len(s.p2mFrames))*512 < s.nrPages {
				return nil, bad("%d P2M frames cannot hold %d entries", len(s.p2mFrames), s.nrPages)
			}
		case stream.RecPageData:
			if s.nrPages == 0 {
				return nil, bad("PAGE_DATA before X86_PV_P2M_FRAMES")
			}
			pb, _ := stream.DecodePageData(b)
			for i, pfn := range pb.PFNs {
				if pfn >= s.nrPages {
					return nil, bad("page %#x outside the domain's %d pages", pfn, s.nrPages)
				}
				if pb.Data[i] != nil {
					s.pages[pfn] = pb.Data[i] // the last copy wins
				}
			}
		case stream.RecX86TSCInfo:
			s.systemTime = binary.LittleEndian.Uint64(b[8:])
		case stream.RecSharedInfo:
			s.sharedInfo = b
		case stream.RecX86PVVCPUBasic:
			if id := binary.LittleEndian.Uint32(b); id != 0 {
				return nil, bad("vCPU %d: xenresume domains have one vCPU", id)
			}
			if s.basic != nil {
				return nil, bad("vCPU 0 appears twice")
			}
			if len(b) != 8+vgcSize {
				return nil, bad("X86_PV_VCPU_BASIC of %d bytes, want %d", len(b), 8+vgcSize)
			}
			s.basic = b[8:]
		case stream.RecHVMContext:
			if s.cpu, err = parseContext(b); err != nil {
				return nil, err
			}
		case stream.RecEnd:
			switch {
			case s.nrPages == 0:
				return nil, bad("no X86_PV_P2M_FRAMES")
			case s.basic == nil:
				return nil, bad("no state for vCPU 0")
			case s.cpu == nil:
				return nil, bad("no CPU record in HVM_CONTEXT")
			case s.sharedInfo == nil:
				return nil, bad("no SHARED_INFO")
			}
			return s, nil
		}
	}
}

// parseContext finds vCPU 0's hvm_hw_cpu in an HVM_CONTEXT blob.
func parseContext(b []byte) (*xenabi.HVMHWCPU, error) {
	var cpu *xenabi.HVMHWCPU
	for off := 0; ; {
		if len(b)-off < 8 {
			return nil, fmt.Errorf("%w: HVM_CONTEXT truncated", stream.ErrFormat)
		}
		code, inst, n := binary.LittleEndian.Uint16(b[off:]), binary.LittleEndian.Uint16(b[off+2:]), int(binary.LittleEndian.Uint32(b[off+4:]))
		off += 8
		if n > len(b)-off {
			return nil, fmt.Errorf("%w: HVM_CONTEXT record of %d bytes runs past the blob", stream.ErrFormat, n)
		}
		body := b[off : off+n]
		off += n
		switch code {
		case hvmCodeEnd:
			return cpu, nil
		case hvmCodeHeader:
			if n < 4 || binary.LittleEndian.Uint32(body) != hvmMagic {
				return nil, fmt.Errorf("%w: HVM_CONTEXT header magic", stream.ErrFormat)
			}
		case hvmCodeCPU:
			var c xenabi.HVMHWCPU
			if n != int(unsafe.Sizeof(c)) || inst != 0 || cpu != nil {
				return nil, fmt.Errorf("%w: HVM_CONTEXT CPU record (instance %d, %d bytes)", stream.ErrFormat, inst, n)
			}
			copy(xenabi.Bytes(&c), body)
			cpu = &c
		}
	}
}

func segment(sel, limit uint32, base uint64, ar uint32) kvm.Segment {
	return kvm.Segment{Base: base, Limit: limit, Selector: uint16(sel),
		Typ: uint8(ar & 15), S: uint8(ar >> 4 & 1), DPL: uint8(ar >> 5 & 3), Present: uint8(ar >> 7 & 1),
		AVL: uint8(ar >> 8 & 1), L: uint8(ar >> 9 & 1), DB: uint8(ar >> 10 & 1), G: uint8(ar >> 11 & 1),
		Unusable: uint8(1 - ar>>7&1)}
}

// Restore creates a new domain from an xl save file and leaves it paused
// (Created), through the same launch path as Create,
// as libxc's restore does: a new domid and new machine frames; the pages;
// the guest's P2M rewritten with the new frames; shared_info with every
// port masked and nothing pending; new store and console ports (never the
// old numbers); start_info rewritten (process_start_info) and vCPU 0's
// %rdx set to its new MFN, %rax to 0, so the guest's suspend returns 0 in
// a new domain; time continuous; then the domain is introduced to
// xenstored with its backends. cfg supplies the console and may rename
// the domain. Nothing is written to the file.
func (t *Toolstack) Restore(ctx context.Context, path string, cfg DomainConfig) (_ *Domain, err error) {
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
	s, err := readSaved(r)
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", path, err)
	}
	if pr != nil {
		pr.finish()
	}
	name := cfg.Name
	if name == "" {
		if m := cfgName.FindStringSubmatch(s.config); m != nil {
			name = m[1]
		}
	}
	if m := cfgExtra.FindStringSubmatch(s.config); m != nil && cfg.Cmdline == "" {
		cfg.Cmdline = m[1]
	}
	return t.launch(cfg, name, s.nrPages, func(c *container) (*booted, error) { return s.load(c, path, cfg.Cmdline) })
}

// load fills a new domain's container from the saved domain.
func (s *saved) load(c *container, path, cmdline string) (*booted, error) {
	m, frames, xd := c.m, c.frames, c.xd
	mem := m.Memory()
	for pfn, data := range s.pages {
		if err := mem.Write(pfn<<12, data); err != nil {
			return nil, err
		}
	}
	// The guest's P2M list now names the new machine frames.
	for i, frame := range s.p2mFrames {
		pg, err := mem.Page(frame << 12)
		if err != nil {
			return nil, err
		}
		for j := uint64(0); j < 512 && uint64(i)*512+j < s.nrPages; j++ {
			mfn, _ := frames.MFN(uint64(i)*512 + j)
			binary.LittleEndian.PutUint64(pg[j*8:], mfn)
		}
	}
	// shared_info: vcpu_info kept; nothing pending, every port masked.
	si := xd.SharedInfo()
	copy(xenabi.Bytes(si), s.sharedInfo)
	for i := range si.Vcpu_info {
		si.Vcpu_info[i].Upcall_pending, si.Vcpu_info[i].Pending_sel = 0, 0
	}
	for i := range si.Evtchn_pending {
		si.Evtchn_pending[i], si.Evtchn_mask[i] = 0, ^uint64(0)
	}
	si.Arch.Pfn_to_mfn_frame_list_list = 0

	// start_info, found by the canonicalised %rdx.
	ur := xenabi.View[xenabi.CPUUserRegs](s.basic[vgcUserRegs:])
	siPFN := ur.Rdx
	siPage, err := mem.Page(siPFN << 12)
	if err != nil || siPFN >= s.nrPages {
		return nil, fmt.Errorf("restore: %w: vCPU 0's rdx %#x is not a page of the domain", stream.ErrFormat, siPFN)
	}
	sinfo := xenabi.View[xenabi.StartInfo](siPage)
	if xenabi.CString(sinfo.Magic[:]) != "xen-3.0-x86_64" {
		return nil, fmt.Errorf("restore: %w: no start_info at PFN %#x", stream.ErrFormat, siPFN)
	}
	storePFN, conPFN := sinfo.Store_mfn, binary.LittleEndian.Uint64(sinfo.Console[:])
	if storePFN >= s.nrPages || conPFN >= s.nrPages {
		return nil, fmt.Errorf("restore: %w: start_info's store %#x and console %#x frames are not canonical PFNs", stream.ErrFormat, storePFN, conPFN)
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
	sinfo.Nr_pages = s.nrPages
	sinfo.Shared_info = xd.SharedInfoMFN() << 12
	sinfo.Flags = 0

	// vCPU 0: back in the hypercall's return path, in a new domain.
	siMFN, _ := frames.MFN(siPFN)
	cpu := s.cpu
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
	v0 := m.VCPUs()[0]
	if err := v0.SetSregs(&sregs); err != nil {
		return nil, err
	}
	if err := v0.SetRegs(&regs); err != nil {
		return nil, err
	}
	// Time never goes backwards: the TSC and system time resume where
	// they were saved (stopped for the downtime, as Xen's default mode).
	tsc := &kvm.MSRS{NMSRs: 1, Entries: []kvm.MSREntry{{Index: 0x10, Data: cpu.Tsc}}}
	if err := kvm.SetMSRs(v0.Fd(), tsc); err != nil {
		return nil, fmt.Errorf("restore the guest TSC: %w", err)
	}
	xd.SetSystemTime(s.systemTime)
	if err := xd.UpdateTime(); err != nil {
		return nil, err
	}
	// The guest's VIRT_BASE: its GDT's virtual base less the GDT's frame.
	vb := cpu.Gdtr_base - binary.LittleEndian.Uint64(s.basic[vgcGDTFrames:])<<12
	layout := &builder.Layout{
		VirtBase: vb, StartInfo: vb + siPFN<<12, Store: vb + storePFN<<12, Console: vb + conPFN<<12,
		P2M: vb + s.p2mFrames[0]<<12, P2MFrames: uint64(len(s.p2mFrames)),
		HypercallPage: regs.RIP - asm.PortIOReturnPath - xenabi.HypervisorSchedOp*asm.StubSize,
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
