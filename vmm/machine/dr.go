package machine

import (
	"github.com/bobuhiro11/gokvm/kvm"
)

// DebugRegs are a vCPU's debug registers as KVM holds them for the guest
// (struct kvm_debugregs): the four breakpoint addresses, DR6 and DR7.
type DebugRegs struct {
	DR       [4]uint64
	DR6, DR7 uint64
}

// DebugRegs reads the guest's debug registers (KVM_GET_DEBUGREGS), from
// the vCPU's own thread or while it is not running.
func (v *VCPU) DebugRegs() (DebugRegs, error) {
	var k kvm.DebugRegs
	err := v.ioctl("KVM_GET_DEBUGREGS", func(fd uintptr) error {
		return kvm.GetDebugRegs(fd, &k)
	})
	return DebugRegs{DR: k.DB, DR6: k.DR6, DR7: k.DR7}, err
}

// SetDebugRegs loads the guest's debug registers (KVM_SET_DEBUGREGS), from
// the vCPU's own thread or while it is not running. A hypervisor model
// loads its guest's breakpoints with it; KVM puts them in the hardware
// while the guest runs.
func (v *VCPU) SetDebugRegs(r DebugRegs) error {
	k := kvm.DebugRegs{DB: r.DR, DR6: r.DR6, DR7: r.DR7}
	return v.ioctl("KVM_SET_DEBUGREGS", func(fd uintptr) error {
		return kvm.SetDebugRegs(fd, &k)
	})
}
