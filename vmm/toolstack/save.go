package toolstack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// ErrRing3Save refuses saving a domain that runs Xen's ring-3 PV model:
// its stream would not carry the PV vCPU state yet.
var ErrRing3Save = errors.New("saving a domain in the ring-3 PV model is not supported yet: the stream would lack its PV vCPU state (trap table, callbacks, page types)")

// maxBatch is libxc's MAX_BATCH_SIZE: pages per PAGE_DATA record.
const maxBatch = 1024

// XLConfig is the domain's configuration in xl's syntax, for the save file.
func (d *Domain) XLConfig() string {
	return fmt.Sprintf("name = %q\nmemory = %d\ntype = \"pv\"\nkernel = %q\nextra = %q\n",
		d.Name, d.Xen.Frames().NrPages>>8, d.kernelName, d.cmdline)
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
func (d *Domain) Save(ctx context.Context, path string, checkpoint bool) (err error) {
	if d.Xen.Ring3() {
		// The stream would carry the ring-0 container's state, not the
		// PV vCPU state Xen writes (trap table, callbacks, page types):
		// issue #9 item 6.
		return ErrRing3Save
	}
	from, opCtx, end, err := d.begin(ctx, OpSave, Saving)
	if err != nil {
		return err
	}
	if from == Running {
		if err := d.suspend(opCtx, DefaultSuspendTimeouts); err != nil {
			end(Running)
			return fmt.Errorf("save: %w", err)
		}
	}
	err = writeAtomically(path, func(w io.Writer) error { return d.writeStream(opCtx, wrapSaveWriter(w)) })
	if err == nil && !checkpoint {
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
	if from == Suspended {
		end(Suspended)
		return err
	}
	// Back to running, cooperatively: the guest sees its suspend return 1.
	if rerr := d.resume(context.WithoutCancel(opCtx), true); rerr != nil {
		end(Suspended)
		if err == nil {
			return fmt.Errorf("saved, but resuming the guest failed (it stays suspended): %w", rerr)
		}
		return fmt.Errorf("%w (and resuming the guest failed, it stays suspended: %v)", err, rerr)
	}
	d.machine.Unpause()
	end(Running)
	return err
}

// wrapSaveWriter lets tests inject write failures (a full disk) into Save.
var wrapSaveWriter = func(w io.Writer) io.Writer { return w }

// writeAtomically writes a file through fn under a temporary name in the
// same directory, fsyncs it and renames it over path.
func writeAtomically(path string, fn func(io.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("save: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := fn(bw); err != nil {
		tmp.Close()
		return fmt.Errorf("save: %w", err)
	}
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
// gives up when ctx ends (a destroy).
func (d *Domain) writeStream(ctx context.Context, w io.Writer) error {
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
	if err := rec(stream.RecX86PVInfo, stream.EncodePVInfo(stream.PVInfo{GuestWidth: 8, PTLevels: 4})); err != nil {
		return err
	}
	if err := rec(stream.RecStaticDataEnd, nil); err != nil {
		return err
	}
	// The frames holding the guest's P2M list, from start_info.
	frames := d.Xen.Frames()
	l := d.Layout
	p2m := stream.P2MFrames{EndPFN: uint32(frames.NrPages - 1), Frames: make([]uint64, l.P2MFrames)}
	for i := range p2m.Frames {
		p2m.Frames[i] = l.PFN(l.P2M) + uint64(i)
	}
	if err := rec(stream.RecX86PVP2MFrames, stream.EncodeP2MFrames(p2m)); err != nil {
		return err
	}
	if err := d.writePages(ctx, put); err != nil {
		return err
	}
	khz, err := v0.TSCKHz()
	if err != nil {
		return err
	}
	tscInfo := stream.TSCInfo{KHz: khz, Nsec: d.Xen.SystemTime()}
	if err := rec(stream.RecX86TSCInfo, stream.EncodeTSCInfo(tscInfo)); err != nil {
		return err
	}
	if err := rec(stream.RecSharedInfo, stream.EncodeSharedInfo(d.Xen.SharedInfo())); err != nil {
		return err
	}
	basic := &stream.VCPUBasic{ID: 0, Context: vcpuContext(regs, sregs, siPFN, l)}
	if err := rec(stream.RecX86PVVCPUBasic, stream.EncodeVCPUBasic(basic)); err != nil {
		return err
	}
	cpu, err := containerCPU(v0, regs, sregs)
	if err != nil {
		return err
	}
	hvm := &stream.HVMContext{
		Header: xenabi.HVMSaveHeader{Magic: xenabi.HVMFileMagic, Version: xenabi.HVMFileVersion, Khz: khz},
		CPUs:   []stream.HVMCPU{{Instance: uint16(v0.ID), CPU: *cpu}},
	}
	if err := rec(stream.RecHVMContext, stream.EncodeHVMContext(hvm)); err != nil {
		return err
	}
	if err := rec(stream.RecEnd, nil); err != nil {
		return err
	}
	return rec(stream.LibxlEnd, nil)
}

// Progress, when set, is told how a save or restore is going: done of
// total units (pages saved, or bytes read), from any goroutine.
type Progress func(what string, done, total uint64)

// writePages writes PAGE_DATA batches for the pages the guest has touched
// (resident in the mapping, by mincore) that are not all zero. Untouched
// memory costs nothing: the file grows with what the guest used, not with
// its configured size. A restorer leaves unlisted pages zero.
func (d *Domain) writePages(ctx context.Context, put func([]byte) error) error {
	ram := d.machine.Memory().Regions()[0].Mem
	resident := make([]byte, (len(ram)+machine.PageSize-1)/machine.PageSize)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&ram[0])), uintptr(len(ram)),
		uintptr(unsafe.Pointer(&resident[0]))); e != 0 {
		return fmt.Errorf("mincore: %w", e)
	}
	var pfns []uint64
	var data [][]byte
	flush := func() error {
		if len(pfns) == 0 {
			return nil
		}
		types := make([]uint8, len(pfns))
		body := stream.EncodePageData(pfns, types, data)
		pfns, data = pfns[:0], data[:0]
		return put(stream.AppendRecord(nil, stream.RecPageData, body))
	}
	total := uint64(0)
	for _, r := range resident {
		total += uint64(r & 1)
	}
	done := uint64(0)
	for pfn, r := range resident {
		if r&1 == 0 {
			continue
		}
		if done++; d.progress != nil && (done%4096 == 0 || done == total) {
			d.progress("save", done, total)
		}
		pg := ram[pfn*machine.PageSize : (pfn+1)*machine.PageSize]
		if allZero(pg) {
			continue
		}
		pfns = append(pfns, uint64(pfn))
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

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if *(*uint64)(unsafe.Pointer(&b[0])) != 0 {
			return false
		}
		b = b[8:]
	}
	return true
}

// vcpuContext is vCPU 0's vcpu_guest_context for X86_PV_VCPU_BASIC: the
// registers in cpu_user_regs, with %rdx (the start_info MFN) and cr3 as
// PFNs.
func vcpuContext(regs *kvm.Regs, sregs *kvm.Sregs, siPFN uint64, l interface{ PFN(uint64) uint64 }) xenabi.VCPUGuestContext {
	var c xenabi.VCPUGuestContext
	ur := &c.User_regs
	ur.R15, ur.R14, ur.R13, ur.R12 = regs.R15, regs.R14, regs.R13, regs.R12
	ur.Rbp, ur.Rbx, ur.R11, ur.R10 = regs.RBP, regs.RBX, regs.R11, regs.R10
	ur.R9, ur.R8, ur.Rax, ur.Rcx = regs.R9, regs.R8, regs.RAX, regs.RCX
	ur.Rdx, ur.Rsi, ur.Rdi = siPFN, regs.RSI, regs.RDI
	ur.Rip, ur.Rflags, ur.Rsp = regs.RIP, regs.RFLAGS, regs.RSP
	ur.Cs, ur.Ss = sregs.CS.Selector, sregs.SS.Selector
	ur.Ds, ur.Es, ur.Fs, ur.Gs = sregs.DS.Selector, sregs.ES.Selector, sregs.FS.Selector, sregs.GS.Selector
	c.Flags = xenabi.VGCFOnline | xenabi.VGCFInKernel
	c.Gdt_frames[0] = l.PFN(sregs.GDT.Base)
	c.Gdt_ents = uint64(sregs.GDT.Limit+1) / 8
	c.Kernel_ss, c.Kernel_sp = uint64(sregs.SS.Selector), regs.RSP
	c.Ctrlreg[0] = sregs.CR0
	c.Ctrlreg[3] = sregs.CR3 // pfn << 12: the container's CR3 is guest-physical
	c.Ctrlreg[4] = sregs.CR4
	c.Fs_base, c.Gs_base_kernel = sregs.FS.Base, sregs.GS.Base
	return c
}

// arbytes packs a segment's attributes in Xen's segment_attributes_t
// (type 0-3, s 4, dpl 5-6, p 7, avl 8, l 9, db 10, g 11).
func arbytes(s kvm.Segment) uint32 {
	if s.Unusable != 0 {
		return 0
	}
	return uint32(s.Typ&15) | uint32(s.S&1)<<4 | uint32(s.DPL&3)<<5 | uint32(s.Present&1)<<7 |
		uint32(s.AVL&1)<<8 | uint32(s.L&1)<<9 | uint32(s.DB&1)<<10 | uint32(s.G&1)<<11
}

// containerCPU is vCPU 0's hvm_hw_cpu for HVM_CONTEXT: the state that
// exists only because the guest runs in a hardware container (segments
// with bases, limits and attributes, control registers, EFER, descriptor
// tables, the guest TSC).
func containerCPU(v *machine.VCPU, regs *kvm.Regs, s *kvm.Sregs) (*xenabi.HVMHWCPU, error) {
	var cpu xenabi.HVMHWCPU
	cpu.Rax, cpu.Rbx, cpu.Rcx, cpu.Rdx = regs.RAX, regs.RBX, regs.RCX, regs.RDX
	cpu.Rip, cpu.Rsp, cpu.Rflags = regs.RIP, regs.RSP, regs.RFLAGS
	cpu.Cr0, cpu.Cr2, cpu.Cr3, cpu.Cr4 = s.CR0, s.CR2, s.CR3, s.CR4
	seg := func(sel *uint32, lim *uint32, base *uint64, ar *uint32, g kvm.Segment) {
		*sel, *lim, *base, *ar = uint32(g.Selector), g.Limit, g.Base, arbytes(g)
	}
	seg(&cpu.Cs_sel, &cpu.Cs_limit, &cpu.Cs_base, &cpu.Cs_arbytes, s.CS)
	seg(&cpu.Ds_sel, &cpu.Ds_limit, &cpu.Ds_base, &cpu.Ds_arbytes, s.DS)
	seg(&cpu.Es_sel, &cpu.Es_limit, &cpu.Es_base, &cpu.Es_arbytes, s.ES)
	seg(&cpu.Fs_sel, &cpu.Fs_limit, &cpu.Fs_base, &cpu.Fs_arbytes, s.FS)
	seg(&cpu.Gs_sel, &cpu.Gs_limit, &cpu.Gs_base, &cpu.Gs_arbytes, s.GS)
	seg(&cpu.Ss_sel, &cpu.Ss_limit, &cpu.Ss_base, &cpu.Ss_arbytes, s.SS)
	seg(&cpu.Tr_sel, &cpu.Tr_limit, &cpu.Tr_base, &cpu.Tr_arbytes, s.TR)
	seg(&cpu.Ldtr_sel, &cpu.Ldtr_limit, &cpu.Ldtr_base, &cpu.Ldtr_arbytes, s.LDT)
	cpu.Gdtr_base, cpu.Gdtr_limit = s.GDT.Base, uint32(s.GDT.Limit)
	cpu.Idtr_base, cpu.Idtr_limit = s.IDT.Base, uint32(s.IDT.Limit)
	cpu.Msr_efer = s.EFER
	tsc, err := v.TSC()
	if err != nil {
		return nil, fmt.Errorf("read the guest TSC: %w", err)
	}
	cpu.Tsc = tsc
	return &cpu, nil
}
