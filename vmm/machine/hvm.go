package machine

import (
	"errors"
	"fmt"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/kvmext"
)

// This file holds the KVM pieces an HVM or PVH container needs beyond the
// PV model's: a guest entered in 32-bit flat protected mode, MSRs the VMM
// emulates in user space, and the hypervisor CPUID leaves.

// FlatProtectedMode32 sets s to the state Xen's domain builder gives an
// HVM or PVH boot vCPU (libxc vcpu_hvm): 32-bit protected mode with paging
// off (CR0 = PE|ET), CS a flat 32-bit execute/read segment (attr 0xC9B),
// DS, ES and SS flat 32-bit read/write (attr 0xC93), FS and GS null, TR a
// busy 32-bit TSS at 0 with limit 0x67, GDTR and IDTR empty, CR2, CR3, CR4
// and EFER zero. Fields it does not name (APIC base, the interrupt bitmap)
// keep their values.
func FlatProtectedMode32(s *kvm.Sregs) {
	code := kvm.Segment{Limit: 0xffffffff, Typ: 0xb, Present: 1, DB: 1, S: 1, G: 1}
	data := kvm.Segment{Limit: 0xffffffff, Typ: 0x3, Present: 1, DB: 1, S: 1, G: 1}
	s.CS = code
	s.DS, s.ES, s.SS = data, data, data
	s.FS = kvm.Segment{Unusable: 1}
	s.GS = kvm.Segment{Unusable: 1}
	s.LDT = kvm.Segment{Unusable: 1}
	s.TR = kvm.Segment{Limit: 0x67, Typ: 0xb, Present: 1}
	s.GDT = kvm.Descriptor{}
	s.IDT = kvm.Descriptor{}
	s.CR0 = 0x11
	s.CR2, s.CR3, s.CR4, s.EFER = 0, 0, 0, 0
}

// TrapMSRs makes every guest RDMSR and WRMSR of the given MSRs exit to the
// vCPU's MSR handler (VCPU.MSR) instead of reaching KVM, whatever KVM would
// have done with them (KVM's own Hyper-V MSRs start at 0x40000000, where
// Xen's hypercall MSR is). Call it before the machine starts; it replaces
// any earlier filter. The MSRs must lie within 2048 of the lowest.
func (m *Machine) TrapMSRs(msrs ...uint32) error {
	return m.trapMSRs("TrapMSRs", kvmext.MSRFilterRead|kvmext.MSRFilterWrite, msrs)
}

// TrapMSRReads is TrapMSRs for RDMSR only: WRMSR of the MSRs reaches KVM,
// as a hypercall MSR KVM's Xen intercept owns must
// (EnableXenHypercallIntercept). It replaces any earlier filter.
func (m *Machine) TrapMSRReads(msrs ...uint32) error {
	return m.trapMSRs("TrapMSRReads", kvmext.MSRFilterRead, msrs)
}

func (m *Machine) trapMSRs(op string, flags uint32, msrs []uint32) error {
	if len(msrs) == 0 {
		return fmt.Errorf("%s: no MSRs", op)
	}
	base := msrs[0]
	for _, i := range msrs {
		base = min(base, i)
	}
	bitmap := make([]byte, 256) // 2048 MSRs from base, all allowed ...
	for i := range bitmap {
		bitmap[i] = 0xff
	}
	for _, i := range msrs {
		off := i - base
		if off >= uint32(len(bitmap))*8 {
			return fmt.Errorf("%s: MSR %#x is more than %d past %#x", op, i, len(bitmap)*8, base)
		}
		bitmap[off/8] &^= 1 << (off % 8) // ... except these
	}
	if n, err := kvmext.CheckExtension(m.kvmFile.Fd(), kvmext.CapX86MSRFilter); err != nil || n == 0 {
		return fmt.Errorf("KVM lacks KVM_CAP_X86_MSR_FILTER (%v)", err)
	}
	if err := kvmext.EnableUserSpaceMSR(m.vmFd, kvmext.MSRExitReasonFilter); err != nil {
		return fmt.Errorf("KVM_CAP_X86_USER_SPACE_MSR: %w", err)
	}
	return kvmext.SetMSRFilter(m.vmFd, false, []kvmext.MSRFilterRange{
		{Flags: flags, Base: base, Bitmap: bitmap},
	})
}

// CPUIDLeaf is one CPUID leaf (and subleaf) a VMM reports.
type CPUIDLeaf struct {
	Leaf, Subleaf      uint32
	EAX, EBX, ECX, EDX uint32
	SubleafSignificant bool
}

// SetHypervisorLeaves gives the vCPU KVM's supported CPUID with every leaf
// in [from, to] replaced by leaves: how a VMM that emulates a hypervisor
// puts its own leaves at 0x40000000 instead of KVM's. Call it before the
// vCPU first runs.
func (v *VCPU) SetHypervisorLeaves(from, to uint32, leaves []CPUIDLeaf) error {
	old := v.cpuid
	if old == nil {
		return errors.New("SetHypervisorLeaves: the vCPU has no CPUID table")
	}
	c := &kvm.CPUID{}
	for _, e := range old.Entries {
		if e.Function >= from && e.Function <= to {
			continue
		}
		c.Entries = append(c.Entries, e)
	}
	for _, l := range leaves {
		if l.Leaf < from || l.Leaf > to {
			return fmt.Errorf("SetHypervisorLeaves: leaf %#x is outside [%#x, %#x]", l.Leaf, from, to)
		}
		e := kvm.CPUIDEntry2{Function: l.Leaf, Index: l.Subleaf, Eax: l.EAX, Ebx: l.EBX, Ecx: l.ECX, Edx: l.EDX}
		if l.SubleafSignificant {
			e.Flags = 1 // KVM_CPUID_FLAG_SIGNIFCANT_INDEX
		}
		c.Entries = append(c.Entries, e)
	}
	c.Nent = uint32(len(c.Entries))
	return v.SetCPUID(c)
}

// ExitReason returns the KVM exit reason of the exit being handled (an
// MSR handler tells RDMSR from WRMSR by it). vCPU thread only.
func (v *VCPU) ExitReason() uint32 {
	if !v.onThread() {
		return 0
	}
	return v.run.ExitReason
}

// kvmInternalErrorEmulation is KVM_INTERNAL_ERROR_EMULATION.
const kvmInternalErrorEmulation = 1

// kvmCapExitOnEmulationFailure is KVM_CAP_EXIT_ON_EMULATION_FAILURE.
const kvmCapExitOnEmulationFailure = 204

// ExitOnEmulationFailure makes KVM exit to the VMM (VCPU.Emulate) for an
// instruction its emulator cannot run at any privilege level; without it
// KVM injects #UD into a guest at CPL 3. On a host that emulates a whole
// HVM guest (PVM), that includes protected-mode INT n and IRET.
func (m *Machine) ExitOnEmulationFailure() error {
	if n, err := kvmext.CheckExtension(m.kvmFile.Fd(), kvmCapExitOnEmulationFailure); err != nil || n == 0 {
		return fmt.Errorf("KVM lacks KVM_CAP_EXIT_ON_EMULATION_FAILURE (%v)", err)
	}
	if err := kvmext.EnableCap(m.vmFd, kvmCapExitOnEmulationFailure, 1); err != nil {
		return fmt.Errorf("KVM_CAP_EXIT_ON_EMULATION_FAILURE: %w", err)
	}
	return nil
}

// RealMode sets s to the state Xen's hvm_vcpu_reset_state gives a vCPU it
// resets (S3, INIT): real mode with CS selector cs (base cs << 4, limit
// 0xFFFF, attr 0x9B), DS, ES, FS, GS and SS selector 0 with base 0, limit
// 0xFFFF and attr 0x93, LDTR attr 0x82, TR attr 0x8B, GDTR and IDTR base
// 0 limit 0xFFFF, CR0 = ET and CR2, CR3, CR4 and EFER zero. The APIC base
// and the interrupt bitmap keep their values.
func RealMode(s *kvm.Sregs, cs uint16) {
	data := kvm.Segment{Limit: 0xffff, Typ: 0x3, Present: 1, S: 1}
	s.CS = kvm.Segment{Selector: cs, Base: uint64(cs) << 4, Limit: 0xffff, Typ: 0xb, Present: 1, S: 1}
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.LDT = kvm.Segment{Limit: 0xffff, Typ: 0x2, Present: 1}
	s.TR = kvm.Segment{Limit: 0xffff, Typ: 0xb, Present: 1}
	s.GDT = kvm.Descriptor{Limit: 0xffff}
	s.IDT = kvm.Descriptor{Limit: 0xffff}
	s.CR0 = 0x10
	s.CR2, s.CR3, s.CR4, s.EFER = 0, 0, 0, 0
}

// MSRValue reads model-specific register index (KVM_GET_MSRS, an MSR KVM
// refuses is an error), for a vCPU that is not running: what an HVM save
// record carries.
func (v *VCPU) MSRValue(index uint32) (uint64, error) {
	var val uint64
	err := v.ioctl(fmt.Sprintf("read MSR %#x", index), func(fd uintptr) (err error) {
		val, err = kvmext.GetMSR(fd, index)
		return err
	})
	return val, err
}

// FXSave returns the vCPU's x87 and SSE state in FXSAVE's 512-byte layout
// (the legacy region of KVM_GET_XSAVE), for a vCPU that is not running.
func (v *VCPU) FXSave() ([512]byte, error) {
	var out [512]byte
	err := v.ioctl("read the FPU state", func(fd uintptr) error {
		var area [kvmext.XSaveSize]byte
		if err := kvmext.GetXSave(fd, &area); err != nil {
			return err
		}
		copy(out[:], area[:512])
		return nil
	})
	return out, err
}

// SetFXSave loads the vCPU's x87 and SSE state from an FXSAVE image, for
// a vCPU that is not running: the rest of its XSAVE area is kept, and
// XSTATE_BV marks x87 and SSE as given. An MXCSR with reserved bits set
// (which FXRSTOR would fault on) is refused.
func (v *VCPU) SetFXSave(fx [512]byte) error {
	const mxcsrReserved = 0xffff0000 // beyond every MXCSR_MASK
	if mxcsr := uint32(fx[24]) | uint32(fx[25])<<8 | uint32(fx[26])<<16 | uint32(fx[27])<<24; mxcsr&mxcsrReserved != 0 {
		return fmt.Errorf("FXSAVE image with MXCSR %#x: reserved bits set", mxcsr)
	}
	return v.ioctl("write the FPU state", func(fd uintptr) error {
		var area [kvmext.XSaveSize]byte
		if err := kvmext.GetXSave(fd, &area); err != nil {
			return err
		}
		copy(area[:512], fx[:])
		area[512] |= 3 // XSTATE_BV: x87 | SSE
		return kvmext.SetXSave(fd, &area)
	})
}
