package machine

import (
	"fmt"

	"github.com/bobuhiro11/gokvm/kvm"
)

// XCR0 reads the guest's extended control register 0 (KVM_GET_XCRS),
// from the vCPU's own thread or while it is not running.
func (v *VCPU) XCR0() (uint64, error) {
	var x kvm.XCRS
	if err := v.ioctl("KVM_GET_XCRS", func(fd uintptr) error { return kvm.GetXCRS(fd, &x) }); err != nil {
		return 0, err
	}
	for _, r := range x.Registers[:min(x.NrXRCS, uint32(len(x.Registers)))] {
		if r.XRC == 0 {
			return r.Value, nil
		}
	}
	return 0, fmt.Errorf("KVM_GET_XCRS: no XCR0 among %d registers", x.NrXRCS)
}

// SetXCR0 loads the guest's extended control register 0 (KVM_SET_XCRS),
// from the vCPU's own thread or while it is not running. KVM refuses a
// value the guest's CPUID or the host does not allow.
func (v *VCPU) SetXCR0(val uint64) error {
	x := kvm.XCRS{NrXRCS: 1}
	x.Registers[0] = kvm.XRC{XRC: 0, Value: val}
	return v.ioctl("KVM_SET_XCRS", func(fd uintptr) error {
		if err := kvm.SetXCRS(fd, &x); err != nil {
			return fmt.Errorf("XCR0 %#x: %w", val, err)
		}
		return nil
	})
}
