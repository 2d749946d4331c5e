package xenabi

import (
	"testing"
	"unsafe"
)

// The generated types must have Xen's x86_64 layout (offsets from
// shared/reference/xen-abi.md, which were printed by compiling the headers).
func TestLayout(t *testing.T) {
	var si StartInfo
	var sh SharedInfo
	var vi VCPUInfo
	var ur CPUUserRegs
	var xs XenstoreDomainInterface
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(start_info)", unsafe.Sizeof(si), 1168},
		{"start_info.nr_pages", unsafe.Offsetof(si.Nr_pages), 32},
		{"start_info.shared_info", unsafe.Offsetof(si.Shared_info), 40},
		{"start_info.flags", unsafe.Offsetof(si.Flags), 48},
		{"start_info.store_mfn", unsafe.Offsetof(si.Store_mfn), 56},
		{"start_info.store_evtchn", unsafe.Offsetof(si.Store_evtchn), 64},
		{"start_info.console", unsafe.Offsetof(si.Console), 72},
		{"start_info.pt_base", unsafe.Offsetof(si.Pt_base), 88},
		{"start_info.mfn_list", unsafe.Offsetof(si.Mfn_list), 104},
		{"start_info.cmd_line", unsafe.Offsetof(si.Cmd_line), 128},
		{"start_info.first_p2m_pfn", unsafe.Offsetof(si.First_p2m_pfn), 1152},
		{"start_info.nr_p2m_frames", unsafe.Offsetof(si.Nr_p2m_frames), 1160},
		{"sizeof(vcpu_info)", unsafe.Sizeof(vi), 64},
		{"vcpu_info.evtchn_pending_sel", unsafe.Offsetof(vi.Pending_sel), 8},
		{"vcpu_info.time", unsafe.Offsetof(vi.Time), 32},
		{"sizeof(shared_info)", unsafe.Sizeof(sh), SizeofSharedInfo},
		{"shared_info.evtchn_pending", unsafe.Offsetof(sh.Evtchn_pending), 2048},
		{"shared_info.evtchn_mask", unsafe.Offsetof(sh.Evtchn_mask), 2560},
		{"shared_info.wc_version", unsafe.Offsetof(sh.Wc_version), 3072},
		{"shared_info.arch", unsafe.Offsetof(sh.Arch), 3088},
		{"sizeof(cpu_user_regs)", unsafe.Sizeof(ur), 200},
		{"cpu_user_regs.rax", unsafe.Offsetof(ur.Rax), 80},
		{"cpu_user_regs.rdx", unsafe.Offsetof(ur.Rdx), 96},
		{"cpu_user_regs.rip", unsafe.Offsetof(ur.Rip), 128},
		{"xenstore_domain_interface.req_cons", unsafe.Offsetof(xs.Req_cons), 2048},
		{"xenstore_domain_interface.server_features", unsafe.Offsetof(xs.Server_features), 2064},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if SizeofStartInfo != 1168 || SizeofSharedInfo != 3136 {
		t.Errorf("header sizes: start_info %d shared_info %d", SizeofStartInfo, SizeofSharedInfo)
	}
}

func TestViewBounds(t *testing.T) {
	page := make([]byte, 4096)
	if View[StartInfo](page) == nil {
		t.Fatal("View refused a whole page")
	}
	if View[StartInfo](page[:1167]) != nil {
		t.Error("View accepted a buffer one byte short")
	}
	if View[SharedInfo](page[1:]) != nil {
		t.Error("View accepted a misaligned buffer")
	}
	if got := CString([]int8{'x', 'e', 'n', 0, 'z'}); got != "xen" {
		t.Errorf("CString = %q", got)
	}
}
