package kvmext

import (
	"fmt"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"
)

// CapXenHVM is KVM_CAP_XEN_HVM. KVM_CHECK_EXTENSION answers it with the
// XenHVMConfig* features the host's KVM has (0: no Xen support at all).
const CapXenHVM = 38

// Features of KVM_CAP_XEN_HVM's answer (KVM_XEN_HVM_CONFIG_*); only
// XenHVMConfigInterceptHcall is a flag of XenHVMConfig itself.
const (
	// XenHVMConfigHypercallMSR: KVM_XEN_HVM_CONFIG exists and KVM writes
	// the hypercall page when the guest writes XenHVMConfig.MSR.
	XenHVMConfigHypercallMSR = 1 << 0
	// XenHVMConfigInterceptHcall: with this flag set in the config, KVM
	// writes its own vmcall/vmmcall stubs at the hypercall page and
	// reports the guest's vmcall/vmmcall as KVM_EXIT_XEN.
	XenHVMConfigInterceptHcall = 1 << 1
	XenHVMConfigSharedInfo     = 1 << 2
	XenHVMConfigRunstate       = 1 << 3
	XenHVMConfigEvtchn2Level   = 1 << 4
	XenHVMConfigEvtchnSend     = 1 << 5
	// XenHVMConfigRunstateUpdateFlag and the rest are features KVM
	// reports that this VMM does not use.
	XenHVMConfigRunstateUpdateFlag = 1 << 6
	XenHVMConfigPVClockTSCUnstable = 1 << 7
	XenHVMConfigSharedInfoHVA      = 1 << 8
)

// XenHVMConfig is struct kvm_xen_hvm_config, KVM_XEN_HVM_CONFIG's
// argument. With XenHVMConfigInterceptHcall in Flags the blobs stay empty:
// KVM writes the hypercall page itself when the guest writes MSR.
type XenHVMConfig struct {
	Flags      uint32
	MSR        uint32
	BlobAddr32 uint64
	BlobAddr64 uint64
	BlobSize32 uint8
	BlobSize64 uint8
	_          [30]uint8
}

var kvmXenHVMConfig = kvm.IIOW(0x7a, unsafe.Sizeof(XenHVMConfig{}))

// SetXenHVMConfig issues KVM_XEN_HVM_CONFIG on a VM fd.
func SetXenHVMConfig(vmFd uintptr, c *XenHVMConfig) error {
	if _, err := kvm.Ioctl(vmFd, kvmXenHVMConfig, uintptr(unsafe.Pointer(c))); err != nil {
		return fmt.Errorf("KVM_XEN_HVM_CONFIG(flags %#x, msr %#x): %w", c.Flags, c.MSR, err)
	}
	return nil
}

// ExitXenHcall is KVM_EXIT_XEN_HCALL, XenExit.Type of a hypercall.
const ExitXenHcall = 1

// XenExit is the xen member of kvm_run's exit union (struct kvm_xen_exit)
// of type ExitXenHcall: the guest's vmcall/vmmcall, its mode (Longmode 1:
// 64-bit), CPL, %rax (Input) and arguments as KVM read them (rdi, rsi, rdx,
// r10, r8, r9 in 64-bit mode; ebx, ecx, edx, esi, edi, ebp otherwise).
// KVM loads Result into %rax, and moves past the instruction, at the next
// KVM_RUN.
type XenExit struct {
	Type     uint32
	_        uint32
	Longmode uint32
	CPL      uint32
	Input    uint64
	Result   uint64
	Params   [6]uint64
}

// Xen returns the exit as a Xen hypercall (KVM_EXIT_XEN).
func (r *Run) Xen() *XenExit { return (*XenExit)(unsafe.Pointer(&r.exit[0])) }
