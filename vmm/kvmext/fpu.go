package kvmext

import (
	"fmt"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"
)

// XSave is struct kvm_xsave: the vCPU's XSAVE area in the standard
// (non-compacted) format. Its first 512 bytes are the FXSAVE image of
// the x87 and SSE state; the XSAVE header's XSTATE_BV is at byte 512.
type XSave [4096]byte

var (
	kvmGetXSave = kvm.IIOR(0xa4, unsafe.Sizeof(XSave{}))
	kvmSetXSave = kvm.IIOW(0xa5, unsafe.Sizeof(XSave{}))
)

// GetXSave reads a vCPU's XSAVE area (KVM_GET_XSAVE). It is used rather
// than KVM_GET_FPU, which on some hosts (measured on PVM) reads MXCSR as 0
// and does not load it.
func GetXSave(vcpuFd uintptr) (*XSave, error) {
	x := new(XSave)
	if _, err := kvm.Ioctl(vcpuFd, kvmGetXSave, uintptr(unsafe.Pointer(x))); err != nil {
		return nil, fmt.Errorf("KVM_GET_XSAVE: %w", err)
	}
	return x, nil
}

// SetXSave loads a vCPU's XSAVE area (KVM_SET_XSAVE). A state component
// whose XSTATE_BV bit is clear is loaded in its initial state.
func SetXSave(vcpuFd uintptr, x *XSave) error {
	if _, err := kvm.Ioctl(vcpuFd, kvmSetXSave, uintptr(unsafe.Pointer(x))); err != nil {
		return fmt.Errorf("KVM_SET_XSAVE: %w", err)
	}
	return nil
}
