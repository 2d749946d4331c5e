package kvmext

import (
	"testing"
	"unsafe"
)

// The Xen structures have include/uapi/linux/kvm.h's sizes and offsets
// (arch/x86/include/uapi/asm/kvm.h for kvm_xen_hvm_config on newer
// kernels), and the ioctl its number.
func TestXenLayouts(t *testing.T) {
	var c XenHVMConfig
	var e XenExit
	var r Run
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(kvm_xen_hvm_config)", unsafe.Sizeof(c), 56},
		{"kvm_xen_hvm_config.msr", unsafe.Offsetof(c.MSR), 4},
		{"kvm_xen_hvm_config.blob_addr_32", unsafe.Offsetof(c.BlobAddr32), 8},
		{"kvm_xen_hvm_config.blob_addr_64", unsafe.Offsetof(c.BlobAddr64), 16},
		{"kvm_xen_hvm_config.blob_size_32", unsafe.Offsetof(c.BlobSize32), 24},
		{"kvm_xen_hvm_config.blob_size_64", unsafe.Offsetof(c.BlobSize64), 25},
		{"sizeof(kvm_xen_exit)", unsafe.Sizeof(e), 80},
		{"kvm_xen_exit.u.hcall.longmode", unsafe.Offsetof(e.Longmode), 8},
		{"kvm_xen_exit.u.hcall.cpl", unsafe.Offsetof(e.CPL), 12},
		{"kvm_xen_exit.u.hcall.input", unsafe.Offsetof(e.Input), 16},
		{"kvm_xen_exit.u.hcall.result", unsafe.Offsetof(e.Result), 24},
		{"kvm_xen_exit.u.hcall.params", unsafe.Offsetof(e.Params), 32},
		{"kvm_run exit union", unsafe.Offsetof(r.exit), 32},
		{"KVM_XEN_HVM_CONFIG", kvmXenHVMConfig, 0x4038ae7a}, // _IOW(KVMIO, 0x7a, 56 bytes)
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, tc.got, tc.want)
		}
	}
	// Xen reads the exit where KVM writes it: at kvm_run+32.
	r.ExitReason = ExitXen
	base := uintptr(unsafe.Pointer(&r))
	if got := uintptr(unsafe.Pointer(r.Xen())) - base; got != 32 {
		t.Errorf("Run.Xen at kvm_run+%d, want +32", got)
	}
	if got := uintptr(unsafe.Pointer(&r.Xen().Result)) - base; got != 32+24 {
		t.Errorf("result at kvm_run+%d, want +56", got)
	}
	if CapXenHVM != 38 || ExitXen != 34 || ExitXenHcall != 1 || XenHVMConfigInterceptHcall != 2 {
		t.Error("KVM_CAP_XEN_HVM, KVM_EXIT_XEN, KVM_EXIT_XEN_HCALL or KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL differ from kvm.h")
	}
}
