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

// vcpu_guest_context and the HVM save structs, the bodies of the
// X86_PV_VCPU_BASIC and HVM_CONTEXT stream records: offsets printed by a C
// program compiled with gcc against libxen-dev 4.17's headers
// (-D__XEN_INTERFACE_VERSION__=__XEN_LATEST_INTERFACE_VERSION__), and in
// shared/reference/xen-abi.md.
func TestSaveRecordLayout(t *testing.T) {
	var vgc VCPUGuestContext
	var ti TrapInfo
	var hd HVMSaveDescriptor
	var hh HVMSaveHeader
	var cpu HVMHWCPU
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(vcpu_guest_context)", unsafe.Sizeof(vgc), 5168},
		{"vcpu_guest_context.fpu_ctxt", unsafe.Offsetof(vgc.Fpu_ctxt), 0},
		{"sizeof(fpu_ctxt)", unsafe.Sizeof(vgc.Fpu_ctxt), 512},
		{"vcpu_guest_context.flags", unsafe.Offsetof(vgc.Flags), 512},
		{"vcpu_guest_context.user_regs", unsafe.Offsetof(vgc.User_regs), 520},
		{"vcpu_guest_context.user_regs.rdx", unsafe.Offsetof(vgc.User_regs) + unsafe.Offsetof(vgc.User_regs.Rdx), 616},
		{"vcpu_guest_context.trap_ctxt", unsafe.Offsetof(vgc.Trap_ctxt), 720},
		{"vcpu_guest_context.ldt_base", unsafe.Offsetof(vgc.Ldt_base), 4816},
		{"vcpu_guest_context.ldt_ents", unsafe.Offsetof(vgc.Ldt_ents), 4824},
		{"vcpu_guest_context.gdt_frames", unsafe.Offsetof(vgc.Gdt_frames), 4832},
		{"vcpu_guest_context.gdt_ents", unsafe.Offsetof(vgc.Gdt_ents), 4960},
		{"vcpu_guest_context.kernel_ss", unsafe.Offsetof(vgc.Kernel_ss), 4968},
		{"vcpu_guest_context.kernel_sp", unsafe.Offsetof(vgc.Kernel_sp), 4976},
		{"vcpu_guest_context.ctrlreg", unsafe.Offsetof(vgc.Ctrlreg), 4984},
		{"vcpu_guest_context.debugreg", unsafe.Offsetof(vgc.Debugreg), 5048},
		{"vcpu_guest_context.event_callback_eip", unsafe.Offsetof(vgc.Event_callback_eip), 5112},
		{"vcpu_guest_context.failsafe_callback_eip", unsafe.Offsetof(vgc.Failsafe_callback_eip), 5120},
		{"vcpu_guest_context.syscall_callback_eip", unsafe.Offsetof(vgc.Syscall_callback_eip), 5128},
		{"vcpu_guest_context.vm_assist", unsafe.Offsetof(vgc.Vm_assist), 5136},
		{"vcpu_guest_context.fs_base", unsafe.Offsetof(vgc.Fs_base), 5144},
		{"vcpu_guest_context.gs_base_kernel", unsafe.Offsetof(vgc.Gs_base_kernel), 5152},
		{"vcpu_guest_context.gs_base_user", unsafe.Offsetof(vgc.Gs_base_user), 5160},
		{"sizeof(trap_info)", unsafe.Sizeof(ti), 16},
		{"trap_info.cs", unsafe.Offsetof(ti.Cs), 2},
		{"trap_info.address", unsafe.Offsetof(ti.Address), 8},
		{"sizeof(hvm_save_descriptor)", unsafe.Sizeof(hd), 8},
		{"hvm_save_descriptor.instance", unsafe.Offsetof(hd.Instance), 2},
		{"hvm_save_descriptor.length", unsafe.Offsetof(hd.Length), 4},
		{"sizeof(hvm_save_header)", unsafe.Sizeof(hh), 24},
		{"hvm_save_header.changeset", unsafe.Offsetof(hh.Changeset), 8},
		{"hvm_save_header.gtsc_khz", unsafe.Offsetof(hh.Khz), 20},
		{"sizeof(hvm_hw_cpu)", unsafe.Sizeof(cpu), 1032},
		{"hvm_hw_cpu.cr3", unsafe.Offsetof(cpu.Cr3), 672},
		{"hvm_hw_cpu.cs_sel", unsafe.Offsetof(cpu.Cs_sel), 736},
		{"hvm_hw_cpu.gdtr_base", unsafe.Offsetof(cpu.Gdtr_base), 880},
		{"hvm_hw_cpu.msr_efer", unsafe.Offsetof(cpu.Msr_efer), 992},
		{"hvm_hw_cpu.tsc", unsafe.Offsetof(cpu.Tsc), 1008},
		{"hvm_hw_cpu.flags", unsafe.Offsetof(cpu.Flags), 1024},
		// The header's sizeof() agrees with Go's for every type above.
		{"SizeofVCPUGuestContext", SizeofVCPUGuestContext, unsafe.Sizeof(vgc)},
		{"SizeofTrapInfo", SizeofTrapInfo, unsafe.Sizeof(ti)},
		{"SizeofHVMSaveDescriptor", SizeofHVMSaveDescriptor, unsafe.Sizeof(hd)},
		{"SizeofHVMSaveHeader", SizeofHVMSaveHeader, unsafe.Sizeof(hh)},
		{"SizeofHVMHWCPU", SizeofHVMHWCPU, unsafe.Sizeof(cpu)},
		// The platform's records (save.h): sizes, and the fields whose
		// offsets the translation relies on.
		{"SizeofHVMHWVPIC", SizeofHVMHWVPIC, unsafe.Sizeof(HVMHWVPIC{})},
		{"sizeof(hvm_hw_vpic)", unsafe.Sizeof(HVMHWVPIC{}), 8},
		{"SizeofHVMHWVIOAPIC", SizeofHVMHWVIOAPIC, unsafe.Sizeof(HVMHWVIOAPIC{})},
		{"sizeof(hvm_hw_vioapic)", unsafe.Sizeof(HVMHWVIOAPIC{}), 16 + 48*8},
		{"hvm_hw_vioapic.redirtbl", unsafe.Offsetof(HVMHWVIOAPIC{}.Redirtbl), 16},
		{"SizeofHVMHWLAPIC", SizeofHVMHWLAPIC, unsafe.Sizeof(HVMHWLAPIC{})},
		{"hvm_hw_lapic.tdt_msr", unsafe.Offsetof(HVMHWLAPIC{}.Tdt_msr), 16},
		{"SizeofHVMHWLAPICRegs", SizeofHVMHWLAPICRegs, unsafe.Sizeof(HVMHWLAPICRegs{})},
		{"SizeofHVMHWPIT", SizeofHVMHWPIT, unsafe.Sizeof(HVMHWPIT{})},
		{"sizeof(hvm_hw_pit)", unsafe.Sizeof(HVMHWPIT{}), 3*16 + 8},
		{"hvm_hw_pit.speaker_data_on", unsafe.Offsetof(HVMHWPIT{}.Data_on), 48},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"VGCF_in_kernel", VGCFInKernel, 1 << 2},
		{"VGCF_online", VGCFOnline, 1 << 5},
		{"FIRST_RESERVED_GDT_ENTRY", FirstReservedGDTEntry, 14 * 4096 / 8},
		{"HVM_FILE_MAGIC", HVMFileMagic, 0x54381286},
		{"HVM_FILE_VERSION", HVMFileVersion, 1},
		{"HVM_SAVE_CODE(END)", HVMSaveCodeEnd, 0},
		{"HVM_SAVE_CODE(HEADER)", HVMSaveCodeHeader, 1},
		{"HVM_SAVE_CODE(CPU)", HVMSaveCodeCPU, 2},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

// The platform's HVM save records as public/arch-x86/hvm/save.h lays them
// out (xen-hvm-pvh.md §8.2: RTC 24, HPET 1048, PMTIMER 8 bytes); the HPET
// record mirrors the registers' MMIO offsets.
func TestPlatformRecordLayout(t *testing.T) {
	var r HVMHWRTC
	var h HVMHWHPET
	var p HVMHWPMTimer
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(hvm_hw_rtc)", unsafe.Sizeof(r), 24},
		{"hvm_hw_rtc.cmos_index", unsafe.Offsetof(r.Cmos_index), 14},
		{"hvm_hw_rtc.rtc_offset", unsafe.Offsetof(r.Rtc_offset), 16},
		{"sizeof(hvm_hw_hpet)", unsafe.Sizeof(h), 1048},
		{"hvm_hw_hpet.config", unsafe.Offsetof(h.Config), 0x10},
		{"hvm_hw_hpet.isr", unsafe.Offsetof(h.Isr), 0x20},
		{"hvm_hw_hpet.mc64", unsafe.Offsetof(h.Mc64), 0xf0},
		{"hvm_hw_hpet.timers", unsafe.Offsetof(h.Timers), 0x100},
		{"sizeof(timers[0])", unsafe.Sizeof(h.Timers[0]), 0x20},
		{"hvm_hw_hpet.period", unsafe.Offsetof(h.Period), 0x400},
		{"sizeof(hvm_hw_pmtimer)", unsafe.Sizeof(p), 8},
		{"hvm_hw_pmtimer.pm1a_en", unsafe.Offsetof(p.Pm1a_en), 6},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if HVMSaveCodeRTC != 11 || HVMSaveCodeHPET != 12 || HVMSaveCodePMTimer != 13 || HVMRTCCMOSSize != 14 || HVMHPETTimers != 3 {
		t.Errorf("codes %d %d %d, sizes %d %d", HVMSaveCodeRTC, HVMSaveCodeHPET, HVMSaveCodePMTimer, HVMRTCCMOSSize, HVMHPETTimers)
	}
}
