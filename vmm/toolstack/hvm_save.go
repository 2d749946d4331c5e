package toolstack

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/hvm"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
	"github.com/xenresume/xenresume/vmm/xenstore"
	"github.com/xenresume/xenresume/vmm/xlcfg"
)

// MSRs an hvm_hw_cpu record carries.
const (
	msrSysenterCS   = 0x174
	msrSysenterESP  = 0x175
	msrSysenterEIP  = 0x176
	msrStar         = 0xc0000081
	msrLstar        = 0xc0000082
	msrCstar        = 0xc0000083
	msrSyscallMask  = 0xc0000084
	msrKernelGSBase = 0xc0000102
	msrTSCAux       = 0xc0000103
)

// segAttr is a KVM segment's attributes in Xen's segment_register.attr
// form (type, S, DPL, P, AVL, L, D/B, G in bits 0 to 11), as hvm_hw_cpu's
// *_arbytes hold them; an unusable segment is 0 (not present).
func segAttr(s kvm.Segment) uint32 {
	if s.Unusable != 0 {
		return 0
	}
	return uint32(s.Typ&0xf) | uint32(s.S&1)<<4 | uint32(s.DPL&3)<<5 | uint32(s.Present&1)<<7 |
		uint32(s.AVL&1)<<8 | uint32(s.L&1)<<9 | uint32(s.DB&1)<<10 | uint32(s.G&1)<<11
}

// kvmSeg is the KVM segment for a saved selector, limit, base and
// attributes: a segment that is not present is unusable.
func kvmSeg(sel, limit uint32, base uint64, attr uint32) kvm.Segment {
	s := kvm.Segment{Base: base, Limit: limit, Selector: uint16(sel), Typ: uint8(attr & 0xf), S: uint8(attr >> 4 & 1),
		DPL: uint8(attr >> 5 & 3), Present: uint8(attr >> 7 & 1), AVL: uint8(attr >> 8 & 1), L: uint8(attr >> 9 & 1),
		DB: uint8(attr >> 10 & 1), G: uint8(attr >> 11 & 1)}
	if s.Present == 0 {
		s.Unusable = 1
	}
	return s
}

// hvmCPURecord is vCPU v's hvm_hw_cpu, as hvm_save_cpu_ctxt writes it: the
// registers, control and debug registers, segments, the system-call and
// sysenter MSRs, the TSC and the FXSAVE image. The vCPU must be parked.
func hvmCPURecord(v *machine.VCPU) (*xenabi.HVMHWCPU, error) {
	r, err := v.GetRegs()
	if err != nil {
		return nil, err
	}
	s, err := v.GetSregs()
	if err != nil {
		return nil, err
	}
	dr, err := v.DebugRegs()
	if err != nil {
		return nil, err
	}
	fx, err := v.FXSave()
	if err != nil {
		return nil, err
	}
	tsc, err := v.TSC()
	if err != nil {
		return nil, err
	}
	c := &xenabi.HVMHWCPU{Fpu_regs: fx,
		Rax: r.RAX, Rbx: r.RBX, Rcx: r.RCX, Rdx: r.RDX, Rbp: r.RBP, Rsi: r.RSI, Rdi: r.RDI, Rsp: r.RSP,
		R8: r.R8, R9: r.R9, R10: r.R10, R11: r.R11, R12: r.R12, R13: r.R13, R14: r.R14, R15: r.R15,
		Rip: r.RIP, Rflags: r.RFLAGS,
		Cr0: s.CR0, Cr2: s.CR2, Cr3: s.CR3, Cr4: s.CR4, Msr_efer: s.EFER,
		Dr0: dr.DR[0], Dr1: dr.DR[1], Dr2: dr.DR[2], Dr3: dr.DR[3], Dr6: dr.DR6, Dr7: dr.DR7,
		Idtr_limit: uint32(s.IDT.Limit), Idtr_base: s.IDT.Base, Gdtr_limit: uint32(s.GDT.Limit), Gdtr_base: s.GDT.Base,
		Tsc: tsc, Flags: xenabi.HVMCPUFPUInitialised}
	segs := []struct {
		s             kvm.Segment
		sel, lim, arb *uint32
		base          *uint64
	}{
		{s.CS, &c.Cs_sel, &c.Cs_limit, &c.Cs_arbytes, &c.Cs_base},
		{s.DS, &c.Ds_sel, &c.Ds_limit, &c.Ds_arbytes, &c.Ds_base},
		{s.ES, &c.Es_sel, &c.Es_limit, &c.Es_arbytes, &c.Es_base},
		{s.FS, &c.Fs_sel, &c.Fs_limit, &c.Fs_arbytes, &c.Fs_base},
		{s.GS, &c.Gs_sel, &c.Gs_limit, &c.Gs_arbytes, &c.Gs_base},
		{s.SS, &c.Ss_sel, &c.Ss_limit, &c.Ss_arbytes, &c.Ss_base},
		{s.TR, &c.Tr_sel, &c.Tr_limit, &c.Tr_arbytes, &c.Tr_base},
		{s.LDT, &c.Ldtr_sel, &c.Ldtr_limit, &c.Ldtr_arbytes, &c.Ldtr_base},
	}
	for _, g := range segs {
		*g.sel, *g.lim, *g.arb, *g.base = uint32(g.s.Selector), g.s.Limit, segAttr(g.s), g.s.Base
	}
	for _, m := range []struct {
		index uint32
		to    *uint64
	}{
		{msrSysenterCS, &c.Sysenter_cs}, {msrSysenterESP, &c.Sysenter_esp}, {msrSysenterEIP, &c.Sysenter_eip},
		{msrKernelGSBase, &c.Shadow_gs}, {msrLstar, &c.Msr_lstar}, {msrStar, &c.Msr_star},
		{msrCstar, &c.Msr_cstar}, {msrSyscallMask, &c.Msr_syscall_mask},
	} {
		if *m.to, err = v.MSRValue(m.index); err != nil {
			return nil, err
		}
	}
	// TSC_AUX exists only where the CPUID offers RDTSCP; elsewhere it is 0.
	c.Msr_tsc_aux, _ = v.MSRValue(msrTSCAux)
	return c, nil
}

// loadHVMCPU loads a saved hvm_hw_cpu into vCPU v, as hvm_load_cpu_ctxt
// does after its checks: CR0 with PG but not PE, EFER with LMA but not LME
// or reserved bits, CR4 with reserved bits, or CS unusable while in
// protected mode are refused (the guest could not have been there).
func loadHVMCPU(v *machine.VCPU, c *xenabi.HVMHWCPU) error {
	const (
		cr0PE, cr0PG   = 1, 1 << 31
		eferLME        = 1 << 8
		eferLMA        = 1 << 10
		eferKnown      = 1 | 1<<8 | 1<<10 | 1<<11 | 1<<12 | 1<<14 | 1<<15 // SCE LME LMA NXE SVME FFXSR TCE
		cr4Reserved    = ^uint64(0x7fffff)
		cr0ReservedTop = ^uint64(0xffffffff)
	)
	switch {
	case c.Cr0&cr0PG != 0 && c.Cr0&cr0PE == 0:
		return fmt.Errorf("CPU record: CR0 %#x has PG without PE", c.Cr0)
	case c.Cr0&cr0ReservedTop != 0:
		return fmt.Errorf("CPU record: CR0 %#x sets bits above 31", c.Cr0)
	case c.Cr4&cr4Reserved != 0:
		return fmt.Errorf("CPU record: CR4 %#x sets reserved bits", c.Cr4)
	case c.Msr_efer&^eferKnown != 0:
		return fmt.Errorf("CPU record: EFER %#x sets unknown bits", c.Msr_efer)
	case c.Msr_efer&eferLMA != 0 && c.Msr_efer&eferLME == 0:
		return fmt.Errorf("CPU record: EFER %#x has LMA without LME", c.Msr_efer)
	case c.Cr0&cr0PE != 0 && c.Cs_arbytes>>7&1 == 0:
		return fmt.Errorf("CPU record: CS not present (attributes %#x) in protected mode", c.Cs_arbytes)
	}
	var fx [512]byte
	if c.Flags&xenabi.HVMCPUFPUInitialised != 0 {
		fx = c.Fpu_regs
	} else { // the FPU as after FNINIT, MXCSR as after reset
		fx[0], fx[1] = 0x7f, 0x03
		fx[24], fx[25] = 0x80, 0x1f
	}
	if err := v.SetFXSave(fx); err != nil {
		return err
	}
	s, err := v.GetSregs()
	if err != nil {
		return err
	}
	s.CS = kvmSeg(c.Cs_sel, c.Cs_limit, c.Cs_base, c.Cs_arbytes)
	s.DS = kvmSeg(c.Ds_sel, c.Ds_limit, c.Ds_base, c.Ds_arbytes)
	s.ES = kvmSeg(c.Es_sel, c.Es_limit, c.Es_base, c.Es_arbytes)
	s.FS = kvmSeg(c.Fs_sel, c.Fs_limit, c.Fs_base, c.Fs_arbytes)
	s.GS = kvmSeg(c.Gs_sel, c.Gs_limit, c.Gs_base, c.Gs_arbytes)
	s.SS = kvmSeg(c.Ss_sel, c.Ss_limit, c.Ss_base, c.Ss_arbytes)
	s.TR = kvmSeg(c.Tr_sel, c.Tr_limit, c.Tr_base, c.Tr_arbytes)
	s.LDT = kvmSeg(c.Ldtr_sel, c.Ldtr_limit, c.Ldtr_base, c.Ldtr_arbytes)
	s.TR.Unusable = 0 // VMX requires a usable TR
	s.IDT = kvm.Descriptor{Base: c.Idtr_base, Limit: uint16(c.Idtr_limit)}
	s.GDT = kvm.Descriptor{Base: c.Gdtr_base, Limit: uint16(c.Gdtr_limit)}
	s.CR0, s.CR2, s.CR3, s.CR4, s.EFER = c.Cr0, c.Cr2, c.Cr3, c.Cr4, c.Msr_efer
	if err := v.SetSregs(s); err != nil {
		return err
	}
	if err := v.SetRegs(&kvm.Regs{RAX: c.Rax, RBX: c.Rbx, RCX: c.Rcx, RDX: c.Rdx, RSI: c.Rsi, RDI: c.Rdi, RSP: c.Rsp, RBP: c.Rbp,
		R8: c.R8, R9: c.R9, R10: c.R10, R11: c.R11, R12: c.R12, R13: c.R13, R14: c.R14, R15: c.R15,
		RIP: c.Rip, RFLAGS: c.Rflags | 2}); err != nil {
		return err
	}
	if err := v.SetDebugRegs(machine.DebugRegs{DR: [4]uint64{c.Dr0, c.Dr1, c.Dr2, c.Dr3}, DR6: c.Dr6, DR7: c.Dr7}); err != nil {
		return err
	}
	for _, m := range []struct {
		index uint32
		val   uint64
	}{
		{msrSysenterCS, c.Sysenter_cs}, {msrSysenterESP, c.Sysenter_esp}, {msrSysenterEIP, c.Sysenter_eip},
		{msrKernelGSBase, c.Shadow_gs}, {msrLstar, c.Msr_lstar}, {msrStar, c.Msr_star},
		{msrCstar, c.Msr_cstar}, {msrSyscallMask, c.Msr_syscall_mask},
	} {
		if err := v.SetMSR(m.index, m.val); err != nil {
			return err
		}
	}
	if c.Msr_tsc_aux != 0 {
		if err := v.SetMSR(msrTSCAux, c.Msr_tsc_aux); err != nil {
			return err
		}
	}
	return v.SetTSC(c.Tsc)
}

// XLConfig is the domain's configuration in xl's syntax, for its save
// file: the type ("hvm" or "pvh"), name and memory; the image is named by
// HVMConfig.ImageName's key (firmware_override or kernel) when known.
func (d *HVMDomain) XLConfig() string {
	typ, key := "hvm", "firmware_override"
	if d.Xen.Kind() == builder.KindPVH {
		typ, key = "pvh", "kernel"
	}
	cfg := fmt.Sprintf("name = %q\ntype = %q\nmemory = %d\n", d.Name, typ, d.memSize>>20)
	if d.imageName != "" {
		cfg += fmt.Sprintf("%s = %q\n", key, d.imageName)
	}
	return cfg
}

// SaveStream writes the domain to w as `xl save` writes an HVM or PVH
// domain (stream.WriteHVMSave): every frame of its RAM, special pages and
// ACPI area by guest frame, X86_TSC_INFO, HVM_CONTEXT (the HEADER, vCPU
// 0's CPU record, the platform's LAPIC, LAPIC_REGS and, for HVM, PIC,
// IOAPIC and PIT records (hvm_platform.go), and for HVM the RTC, HPET and
// PMTIMER records) and HVM_PARAMS (libxc's list, the non-zero ones).
// The domain must be held (paused, suspended, or in S3) and stays as it
// was. The S3 state is not in the stream, as on Xen: a guest saved in S3
// is restored running its firmware's S3 path (see RestoreHVM).
func (d *HVMDomain) SaveStream(ctx context.Context, w io.Writer) (int64, error) {
	l := &d.lc
	l.mu.Lock()
	st := l.stateLocked()
	held := l.heldLocked() && !st.Ended()
	l.mu.Unlock()
	if !held {
		return 0, d.refuse(OpSave, st, "pause or suspend it first")
	}
	ctx, done, err := d.beginOp(ctx, OpSave)
	if err != nil {
		return 0, err
	}
	defer done()
	if err := d.m.WaitPaused(ctx); err != nil {
		return 0, fmt.Errorf("save domain %d: %w", d.ID, err)
	}
	v0 := d.m.VCPUs()[0]
	cpu, err := hvmCPURecord(v0)
	if err != nil {
		return 0, fmt.Errorf("save domain %d: %w", d.ID, err)
	}
	khz, err := v0.TSCKHz()
	if err != nil {
		return 0, fmt.Errorf("save domain %d: %w", d.ID, err)
	}
	eax, _, _, _ := v0.CPUID(1, 0)
	hc := &stream.HVMContext{Header: xenabi.HVMSaveHeader{Cpuid: eax, Khz: khz},
		CPUs: []stream.HVMCPU{{Instance: 0, CPU: *cpu}}}
	hc.RTC, hc.HPET, hc.PMTimer = d.Xen.PlatformRecords()
	if err := hvmPlatformRecords(d.m, hc); err != nil {
		return 0, fmt.Errorf("save domain %d: %w", d.ID, err)
	}
	var params []stream.HVMParam
	for _, i := range stream.HVMParamsSaved {
		if v, _ := d.Xen.Param(int(i)); v != 0 {
			params = append(params, stream.HVMParam{Index: i, Value: v})
		}
	}
	mem := d.m.Memory()
	pages := func(page func(pfn uint64, data []byte) error) error {
		for _, r := range guestRegions(mem) {
			for off := 0; off < len(r.Mem); off += machine.PageSize {
				if err := ctx.Err(); err != nil {
					return err
				}
				if err := page((r.GPA+uint64(off))>>12, r.Mem[off:off+machine.PageSize]); err != nil {
					return err
				}
			}
		}
		return nil
	}
	n, err := stream.WriteHVMSave(w, &stream.HVMSaveFile{Config: d.XLConfig(), XenMajor: xen.VersionMajor, XenMinor: xen.VersionMinor,
		Pages: pages, TSC: stream.TSCInfo{Mode: 0, KHz: khz}, Context: hc, Params: params})
	if err != nil {
		return n, fmt.Errorf("save domain %d: %w", d.ID, err)
	}
	return n, nil
}

// guestRegions are the machine's regions that are guest frames, in
// address order: RAM, the special pages and the ACPI area.
func guestRegions(mem *machine.Memory) []machine.Region {
	var out []machine.Region
	for _, r := range mem.Regions() {
		switch r.Name {
		case "ram", "special", "acpi":
			out = append(out, r)
		}
	}
	for i := 1; i < len(out); i++ { // few regions: insertion sort by GPA
		for j := i; j > 0 && out[j].GPA < out[j-1].GPA; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// HVMRestoreConfig describes a restore of an HVM or PVH save file.
type HVMRestoreConfig struct {
	Name    string // the new domain's name; empty: the saved one
	ID      uint16 // 0 means 1
	Console io.Writer
	Log     *slog.Logger
	Store   *xenstore.Store // as HVMConfig.Store
	// Stream: the input goes on after the stream's end (a migration's
	// handshake), so RestoreHVM does not read past its libxl END record.
	Stream bool
}

// RestoreHVM reads an HVM or PVH save file (stream.ReadHVMSave) into a new
// domain, as libxc's HVM restore does: the container built as CreateHVM
// builds it (kind and memory from the file's xl configuration, no image
// loaded: every frame comes from the stream), each PAGE_DATA frame
// written where it was (a frame outside the domain's RAM, special pages
// and ACPI area is refused), vCPU 0 loaded from its CPU record, the
// platform's timers and CMOS from theirs (HVM; refused for PVH), the saved
// params set, and new STORE_EVTCHN and CONSOLE_EVTCHN (those are not in
// the stream). The domain is Created (parked) once Start is called. A
// guest saved in ACPI S3 comes back running its firmware's S3 path at
// once, with no trigger: ACPI_S_STATE is not in Xen's stream either.
func RestoreHVM(r io.Reader, cfg HVMRestoreConfig) (*HVMDomain, error) {
	src := stream.NewReader(r)
	xl, err := src.ReadXLHeader()
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	kind, mem, name, image, err := hvmSavedConfig(xl.Config)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if cfg.Name != "" {
		name = cfg.Name
	}
	id := cfg.ID
	if id == 0 {
		id = 1
	}
	m, err := machine.New(machine.Config{MemSize: mem, NumVCPUs: 1, SyncSregs: true, IRQChip: hvmIRQChip(kind)})
	if err != nil {
		return nil, err
	}
	dom := &HVMDomain{ID: id, Name: name, m: m, memSize: mem, store: cfg.Store, imageName: image}
	dom.lc.init()
	ok := false
	defer func() {
		if !ok {
			dom.release()
		}
	}()
	x, err := hvm.New(hvm.Config{Kind: kind, ID: id, Machine: m, Console: cfg.Console, Log: cfg.Log, OnS3: dom.onS3, OnSuspend: dom.onGuestSuspend})
	if err != nil {
		return nil, err
	}
	dom.Xen = x
	if kind == builder.KindHVM {
		if _, err := m.AddRegion("acpi", acpiArea, acpiAreaPages*machine.PageSize); err != nil {
			return nil, fmt.Errorf("restore: ACPI area: %w", err)
		}
		x.SetFACS(acpiTables) // acpi.Build puts the FACS first
		// The CMOS beyond Xen's 14 bytes is not in the stream (QEMU's
		// record carries it on Xen): hvmloader's memory sizes again.
		x.SetCMOSMemory(min(mem, acpiArea))
	}
	regions := guestRegions(m.Memory())
	page := func(pfn uint64, data []byte) error {
		gpa := pfn << 12
		for _, r := range regions {
			if gpa >= r.GPA && gpa-r.GPA < uint64(len(r.Mem)) {
				copy(r.Mem[gpa-r.GPA:], data)
				return nil
			}
		}
		return fmt.Errorf("PAGE_DATA frame %#x is not one of the domain's (%d MiB of RAM)", pfn, mem>>20)
	}
	hs, err := src.ReadHVMStream(xl, &stream.HVMReadOptions{Page: page, AllowTrailing: cfg.Stream})
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if err := loadHVMCPU(m.VCPUs()[0], hs.Context.CPU(0)); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if err := loadHVMPlatform(m, kind, hs.Context); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if err := x.LoadPlatformRecords(hs.Context.RTC, hs.Context.HPET, hs.Context.PMTimer); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	for _, p := range hs.Params {
		if err := x.RestoreParam(p.Index, p.Value); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
	}
	if cfg.Store != nil {
		p, err := m.Memory().Page(builder.StorePFN << 12)
		if err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		clear(p) // libxc clears the xenstore page
		if err := dom.introduce(mem); err != nil {
			return nil, err
		}
	}
	ok = true
	return dom, nil
}

// hvmSavedConfig reads what a restore needs from the save file's xl
// configuration: type, memory, name and the image's name.
func hvmSavedConfig(text string) (kind builder.ContainerKind, mem uint64, name, image string, err error) {
	f, err := xlcfg.Parse("saved configuration", []byte(text))
	if err != nil {
		return 0, 0, "", "", fmt.Errorf("the save file's configuration: %w", err)
	}
	cfg, err := xlcfg.Decode(f, "/")
	if err != nil {
		return 0, 0, "", "", fmt.Errorf("the save file's configuration: %w", err)
	}
	switch cfg.Type {
	case "hvm":
		kind, image = builder.KindHVM, cfg.FirmwareOverride
	case "pvh":
		kind, image = builder.KindPVH, cfg.Kernel
	default:
		return 0, 0, "", "", fmt.Errorf("the save file's configuration has type = %q, not an HVM or PVH domain", cfg.Type)
	}
	if cfg.MemoryMiB <= 0 || cfg.MemoryMiB > 2048 || cfg.MemoryMiB%2 != 0 {
		return 0, 0, "", "", fmt.Errorf("the save file's configuration has memory = %d (MiB): want a multiple of 2, at most 2048", cfg.MemoryMiB)
	}
	return kind, uint64(cfg.MemoryMiB) << 20, cfg.Name, image, nil
}

// Save writes the domain to path as `xl save` does an HVM or PVH domain:
// a domain that runs is suspended first as Suspend does (remotely, or
// through control/shutdown for a guest with PV drivers), the file is
// written under a temporary name, fsynced and renamed (SaveStream), and
// the domain is then destroyed (Status().Saved), or with checkpoint (`xl
// save -c`) left as it was: a guest the save suspended is resumed where
// it stopped. A save that fails leaves the domain as it was.
func (d *HVMDomain) Save(ctx context.Context, path string, checkpoint bool) error {
	l := &d.lc
	l.mu.Lock()
	st := l.stateLocked()
	migrating := l.migrating
	l.mu.Unlock()
	if migrating {
		return d.refuse(OpSave, st, "a migration is sending it")
	}
	suspended := false
	switch st {
	case Suspended:
	case Running, Paused:
		if err := d.Suspend(ctx); err != nil {
			return err
		}
		suspended = true
	default:
		return d.refuse(OpSave, st, "")
	}
	err := writeAtomically(path, func(w io.Writer) error {
		_, err := d.SaveStream(ctx, w)
		return err
	}, nil)
	if err != nil || checkpoint {
		if suspended {
			// xl save -c resumes with suspend_cancel: a guest that
			// suspended itself sees 1 and goes on in this domain.
			l.mu.Lock()
			fast := l.coop
			l.mu.Unlock()
			if rerr := d.Resume(fast); rerr != nil {
				return fmt.Errorf("%w (and resuming it: %v)", err, rerr)
			}
		}
		return err
	}
	l.mu.Lock()
	l.saved = true
	l.mu.Unlock()
	return d.destroy()
}

// RestoreHVMFile is RestoreHVM from the save file at path.
func RestoreHVMFile(path string, cfg HVMRestoreConfig) (*HVMDomain, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d, err := RestoreHVM(bufio.NewReaderSize(f, 1<<20), cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return d, nil
}

// IsHVMSave reports whether the save file at path holds an HVM or PVH
// domain: its xl configuration, in xl's syntax, says type = "hvm" or
// "pvh". A configuration it cannot read that way (libxl's JSON, say) is
// left to the PV restore, which reports what is wrong with the file.
func IsHVMSave(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	cfg, err := stream.ReadXLHeader(f)
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	return IsHVMConfig(cfg), nil
}
