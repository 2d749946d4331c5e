package kvmext

import (
	"testing"
	"unsafe"
)

// The in-kernel irqchip structures have include/uapi/linux/kvm.h's and
// arch/x86/include/uapi/asm/kvm.h's sizes and offsets.
func TestIRQChipLayouts(t *testing.T) {
	var io IOAPICState
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(kvm_msi)", unsafe.Sizeof(MSI{}), 32},
		{"sizeof(kvm_irqfd)", unsafe.Sizeof(irqfd{}), 32},
		{"sizeof(kvm_ioapic_state)", unsafe.Sizeof(io), 8 + 4 + 4 + 4 + 4 + 24*8},
		{"kvm_ioapic_state.redirtbl", unsafe.Offsetof(io.Redirtbl), 24},
		{"sizeof(kvm_pic_state)", unsafe.Sizeof(PICState{}), 16},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}
