package machine

import (
	"fmt"

	"github.com/xenresume/xenresume/vmm/kvmext"
)

// This file is KVM's own Xen hypercall intercept (KVM_CAP_XEN_HVM with
// KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL): KVM writes vmcall/vmmcall stubs at
// the hypercall page when the guest writes the hypercall MSR, and reports
// every vmcall/vmmcall (the page's, or a kernel's own, as current Linux
// issues them) as KVM_EXIT_XEN, which VCPU.XenHypercall handles. It needs a
// host where vmcall exits to KVM; PVM does not offer it.

// XenCall is one guest hypercall as KVM's Xen intercept reports it
// (struct kvm_xen_exit, KVM_EXIT_XEN_HCALL).
type XenCall struct {
	// LongMode: the vCPU was in 64-bit mode (EFER.LMA and CS.L).
	LongMode bool
	// CPL is the vCPU's privilege level at the call (3 in virtual-8086
	// mode, 0 in real mode).
	CPL uint32
	// Input is %rax, the hypercall's number (%eax outside 64-bit mode).
	Input uint64
	// Params are the arguments as KVM read them: rdi, rsi, rdx, r10, r8,
	// r9 in 64-bit mode; ebx, ecx, edx, esi, edi, ebp otherwise.
	Params [6]uint64
}

// XenHypercallIntercept reports whether the host's KVM can intercept Xen
// hypercalls: KVM_CHECK_EXTENSION(KVM_CAP_XEN_HVM) has both
// KVM_XEN_HVM_CONFIG_HYPERCALL_MSR and KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL.
// It returns KVM's whole answer too, for logs.
func (m *Machine) XenHypercallIntercept() (ok bool, features int, err error) {
	n, err := kvmext.CheckExtension(m.kvmFile.Fd(), kvmext.CapXenHVM)
	if err != nil {
		return false, 0, err
	}
	const want = kvmext.XenHVMConfigHypercallMSR | kvmext.XenHVMConfigInterceptHcall
	return n&want == want, n, nil
}

// EnableXenHypercallIntercept makes KVM own the hypercall page and trap
// Xen hypercalls (KVM_XEN_HVM_CONFIG with INTERCEPT_HCALL): a guest write
// of msr with a page's address (and page index 0; any other index raises
// #GP) makes KVM fill that page with `mov $nr, %eax; vmcall; ret` stubs
// (vmmcall on AMD), as Xen's own page would be, and every vmcall or
// vmmcall exits to VCPU.XenHypercall. msr must not be trapped with
// TrapMSRs for writes, which would keep the write from KVM. It fails on a
// host that does not offer the intercept (XenHypercallIntercept). Call it
// before the machine starts.
func (m *Machine) EnableXenHypercallIntercept(msr uint32) error {
	ok, features, err := m.XenHypercallIntercept()
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("KVM does not offer the Xen hypercall intercept (KVM_CAP_XEN_HVM = %#x)", features)
	}
	return kvmext.SetXenHVMConfig(m.vmFd, &kvmext.XenHVMConfig{Flags: kvmext.XenHVMConfigInterceptHcall, MSR: msr})
}

// SetXenResult sets the result of the Xen hypercall the vCPU exited on
// (KVM_EXIT_XEN) ahead of the handler's return, for a handler that
// completes the exit itself (CompleteExit) before it returns; KVM loads
// it into %rax as it completes the call. The handler's own return value
// replaces it when the exit was not completed. vCPU thread only.
func (v *VCPU) SetXenResult(result uint64) error {
	if !v.onThread() {
		return v.notOwnThread("SetXenResult")
	}
	if v.run.ExitReason != kvmext.ExitXen {
		return fmt.Errorf("SetXenResult on vCPU %d: the exit is %s, not XEN", v.ID, kvmext.ExitName(v.run.ExitReason))
	}
	v.run.Xen().Result = result
	return nil
}

// xenExit handles KVM_EXIT_XEN: a hypercall goes to XenHypercall, and its
// result into the exit, where KVM takes it at the next KVM_RUN (which also
// moves %rip past the vmcall, as port I/O is completed).
func (v *VCPU) xenExit() error {
	e := v.run.Xen()
	if e.Type != kvmext.ExitXenHcall {
		return v.crash(fmt.Sprintf("KVM_EXIT_XEN of unknown type %d", e.Type))
	}
	if v.XenHypercall == nil {
		return v.crash(fmt.Sprintf("Xen hypercall %#x (KVM_EXIT_XEN) with no handler", e.Input))
	}
	v.ioPending = true
	res, err := v.XenHypercall(v, XenCall{LongMode: e.Longmode != 0, CPL: e.CPL, Input: e.Input, Params: e.Params})
	if err != nil {
		return v.crash(err.Error())
	}
	e.Result = res
	return nil
}
