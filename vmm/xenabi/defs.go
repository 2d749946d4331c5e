//go:build ignore

// Input to cgo -godefs: Xen's public ABI types and constants, from the
// headers of Debian's libxen-dev. Regenerate ztypes_amd64.go with
//
//	make godefs
//
// which runs `go tool cgo -godefs` against the unpacked headers.

package xenabi

/*
#include <stdint.h>
#include <xen/xen.h>
#include <xen/sched.h>
#include <xen/version.h>
#include <xen/vcpu.h>
#include <xen/event_channel.h>
#include <xen/elfnote.h>
#include <xen/errno.h>
#include <xen/features.h>
#include <xen/hvm/params.h>
#include <xen/hvm/hvm_op.h>
#include <xen/io/xs_wire.h>
#include <xen/io/console.h>
#include <xen/hvm/save.h>

// HVM_SAVE_CODE() is a sizeof trick, not a constant cgo can name: these
// enumerators give the save record type codes names.
enum {
	xenabi_hvm_code_end    = HVM_SAVE_CODE(END),
	xenabi_hvm_code_header = HVM_SAVE_CODE(HEADER),
	xenabi_hvm_code_cpu    = HVM_SAVE_CODE(CPU),
	xenabi_hvm_code_rtc     = HVM_SAVE_CODE(RTC),
	xenabi_hvm_code_hpet    = HVM_SAVE_CODE(HPET),
	xenabi_hvm_code_pmtimer = HVM_SAVE_CODE(PMTIMER),
	xenabi_hvm_code_pic        = HVM_SAVE_CODE(PIC),
	xenabi_hvm_code_ioapic     = HVM_SAVE_CODE(IOAPIC),
	xenabi_hvm_code_lapic      = HVM_SAVE_CODE(LAPIC),
	xenabi_hvm_code_lapic_regs = HVM_SAVE_CODE(LAPIC_REGS),
	xenabi_hvm_code_pit        = HVM_SAVE_CODE(PIT),
};

// vcpu_guest_context's FPU area is an anonymous struct: name it.
typedef __typeof__(((struct vcpu_guest_context *)0)->fpu_ctxt) xenabi_fpu_ctxt;

// So is hvm_hw_hpet's timer.
typedef __typeof__(((struct hvm_hw_hpet *)0)->timers[0]) xenabi_hpet_timer;
*/
import "C"

// Structures shared with the guest.
type (
	StartInfo               C.struct_start_info
	SharedInfo              C.struct_shared_info
	VCPUInfo                C.struct_vcpu_info
	VCPUTimeInfo            C.struct_vcpu_time_info
	ArchVCPUInfo            C.struct_arch_vcpu_info
	ArchSharedInfo          C.struct_arch_shared_info
	SchedShutdown           C.struct_sched_shutdown
	FeatureInfo             C.struct_xen_feature_info
	CPUUserRegs             C.struct_cpu_user_regs
	XenstoreDomainInterface C.struct_xenstore_domain_interface
	XenconsInterface        C.struct_xencons_interface
	XsdSockmsg              C.struct_xsd_sockmsg
	HVMSaveDescriptor       C.struct_hvm_save_descriptor
	HVMSaveHeader           C.struct_hvm_save_header
	HVMHWCPU                C.struct_hvm_hw_cpu
	HVMHWRTC                C.struct_hvm_hw_rtc
	HVMHWHPET               C.struct_hvm_hw_hpet
	HVMHWHPETTimer          C.xenabi_hpet_timer
	HVMHWPMTimer            C.struct_hvm_hw_pmtimer
	HVMHWVPIC               C.struct_hvm_hw_vpic
	HVMHWVIOAPIC            C.struct_hvm_hw_vioapic
	HVMHWLAPIC              C.struct_hvm_hw_lapic
	HVMHWLAPICRegs          C.struct_hvm_hw_lapic_regs
	HVMHWPIT                C.struct_hvm_hw_pit
	HVMHWPITChannel         C.struct_hvm_hw_pit_channel
	VCPUGuestContext        C.struct_vcpu_guest_context
	TrapInfo                C.struct_trap_info
	FPUCtxt                 C.xenabi_fpu_ctxt
)

// Sizes, for the layout tests.
const (
	SizeofStartInfo   = C.sizeof_struct_start_info
	SizeofSharedInfo  = C.sizeof_struct_shared_info
	SizeofVCPUInfo    = C.sizeof_struct_vcpu_info
	SizeofCPUUserRegs = C.sizeof_struct_cpu_user_regs

	SizeofVCPUGuestContext  = C.sizeof_struct_vcpu_guest_context
	SizeofTrapInfo          = C.sizeof_struct_trap_info
	SizeofHVMSaveDescriptor = C.sizeof_struct_hvm_save_descriptor
	SizeofHVMSaveHeader     = C.sizeof_struct_hvm_save_header
	SizeofHVMHWCPU          = C.sizeof_struct_hvm_hw_cpu
	SizeofHVMHWRTC          = C.sizeof_struct_hvm_hw_rtc
	SizeofHVMHWHPET         = C.sizeof_struct_hvm_hw_hpet
	SizeofHVMHWPMTimer      = C.sizeof_struct_hvm_hw_pmtimer
	SizeofHVMHWVPIC         = C.sizeof_struct_hvm_hw_vpic
	SizeofHVMHWVIOAPIC      = C.sizeof_struct_hvm_hw_vioapic
	SizeofHVMHWLAPIC        = C.sizeof_struct_hvm_hw_lapic
	SizeofHVMHWLAPICRegs    = C.sizeof_struct_hvm_hw_lapic_regs
	SizeofHVMHWPIT          = C.sizeof_struct_hvm_hw_pit
)

// vcpu_guest_context flags (VGCF_*) and the GDT entries Xen reserves.
const (
	VGCFI387Valid              = C.VGCF_i387_valid
	VGCFInKernel               = C.VGCF_in_kernel
	VGCFFailsafeDisablesEvents = C.VGCF_failsafe_disables_events
	VGCFSyscallDisablesEvents  = C.VGCF_syscall_disables_events
	VGCFOnline                 = C.VGCF_online
	VGCFInSyscall              = C.VGCF_in_syscall

	FirstReservedGDTEntry = C.FIRST_RESERVED_GDT_ENTRY
)

// HVM save records (public/hvm/save.h, public/arch-x86/hvm/save.h): the
// HVM_CONTEXT blob is hvm_save_descriptor + body records, HEADER first and
// END last.
const (
	HVMFileMagic   = C.HVM_FILE_MAGIC
	HVMFileVersion = C.HVM_FILE_VERSION

	HVMSaveCodeEnd    = C.xenabi_hvm_code_end
	HVMSaveCodeHeader = C.xenabi_hvm_code_header
	HVMSaveCodeCPU    = C.xenabi_hvm_code_cpu
	// The emulated platform's timers and CMOS (one instance each).
	HVMSaveCodeRTC     = C.xenabi_hvm_code_rtc
	HVMSaveCodeHPET    = C.xenabi_hvm_code_hpet
	HVMSaveCodePMTimer = C.xenabi_hvm_code_pmtimer
	// HVMRTCCMOSSize is RTC_CMOS_SIZE, the CMOS bytes hvm_hw_rtc holds;
	// HVMHPETTimers is HPET_TIMER_NUM.
	HVMRTCCMOSSize = C.RTC_CMOS_SIZE
	HVMHPETTimers  = C.HPET_TIMER_NUM
	// The platform's records: the PIC pair (instance 0 the master), the
	// IO-APIC, each vCPU's LAPIC and its register page, the PIT.
	HVMSaveCodePIC       = C.xenabi_hvm_code_pic
	HVMSaveCodeIOAPIC    = C.xenabi_hvm_code_ioapic
	HVMSaveCodeLAPIC     = C.xenabi_hvm_code_lapic
	HVMSaveCodeLAPICRegs = C.xenabi_hvm_code_lapic_regs
	HVMSaveCodePIT       = C.xenabi_hvm_code_pit
	// VIOAPICNumPins is Xen's vIOAPIC pin count for a domU.
	VIOAPICNumPins = C.VIOAPIC_NUM_PINS

	// HVMCPUFPUInitialised is hvm_hw_cpu.flags' XEN_X86_FPU_INITIALISED:
	// fpu_regs holds the vCPU's state (else the FPU is reset on load).
	HVMCPUFPUInitialised = C.XEN_X86_FPU_INITIALISED
)

// Hypercall numbers.
const (
	HypervisorSetTrapTable               = C.__HYPERVISOR_set_trap_table
	HypervisorMmuUpdate                  = C.__HYPERVISOR_mmu_update
	HypervisorSetGdt                     = C.__HYPERVISOR_set_gdt
	HypervisorStackSwitch                = C.__HYPERVISOR_stack_switch
	HypervisorSetCallbacks               = C.__HYPERVISOR_set_callbacks
	HypervisorFpuTaskswitch              = C.__HYPERVISOR_fpu_taskswitch
	HypervisorSchedOpCompat              = C.__HYPERVISOR_sched_op_compat
	HypervisorPlatformOp                 = C.__HYPERVISOR_platform_op
	HypervisorSetDebugreg                = C.__HYPERVISOR_set_debugreg
	HypervisorGetDebugreg                = C.__HYPERVISOR_get_debugreg
	HypervisorUpdateDescriptor           = C.__HYPERVISOR_update_descriptor
	HypervisorMemoryOp                   = C.__HYPERVISOR_memory_op
	HypervisorMulticall                  = C.__HYPERVISOR_multicall
	HypervisorUpdateVaMapping            = C.__HYPERVISOR_update_va_mapping
	HypervisorSetTimerOp                 = C.__HYPERVISOR_set_timer_op
	HypervisorEventChannelOpCompat       = C.__HYPERVISOR_event_channel_op_compat
	HypervisorXenVersion                 = C.__HYPERVISOR_xen_version
	HypervisorConsoleIO                  = C.__HYPERVISOR_console_io
	HypervisorPhysdevOpCompat            = C.__HYPERVISOR_physdev_op_compat
	HypervisorGrantTableOp               = C.__HYPERVISOR_grant_table_op
	HypervisorVMAssist                   = C.__HYPERVISOR_vm_assist
	HypervisorUpdateVaMappingOtherdomain = C.__HYPERVISOR_update_va_mapping_otherdomain
	HypervisorIret                       = C.__HYPERVISOR_iret
	HypervisorVCPUOp                     = C.__HYPERVISOR_vcpu_op
	HypervisorSetSegmentBase             = C.__HYPERVISOR_set_segment_base
	HypervisorMmuextOp                   = C.__HYPERVISOR_mmuext_op
	HypervisorXsmOp                      = C.__HYPERVISOR_xsm_op
	HypervisorNmiOp                      = C.__HYPERVISOR_nmi_op
	HypervisorSchedOp                    = C.__HYPERVISOR_sched_op
	HypervisorCallbackOp                 = C.__HYPERVISOR_callback_op
	HypervisorXenoprofOp                 = C.__HYPERVISOR_xenoprof_op
	HypervisorEventChannelOp             = C.__HYPERVISOR_event_channel_op
	HypervisorPhysdevOp                  = C.__HYPERVISOR_physdev_op
	HypervisorHVMOp                      = C.__HYPERVISOR_hvm_op
	HypervisorSysctl                     = C.__HYPERVISOR_sysctl
	HypervisorDomctl                     = C.__HYPERVISOR_domctl
	HypervisorKexecOp                    = C.__HYPERVISOR_kexec_op
	HypervisorTmemOp                     = C.__HYPERVISOR_tmem_op
	HypervisorArgoOp                     = C.__HYPERVISOR_argo_op
	HypervisorXenpmuOp                   = C.__HYPERVISOR_xenpmu_op
	HypervisorDmOp                       = C.__HYPERVISOR_dm_op
	HypervisorHypfsOp                    = C.__HYPERVISOR_hypfs_op
)

// sched_op commands and shutdown reasons.
const (
	SchedopYield          = C.SCHEDOP_yield
	SchedopBlock          = C.SCHEDOP_block
	SchedopShutdown       = C.SCHEDOP_shutdown
	SchedopPoll           = C.SCHEDOP_poll
	SchedopRemoteShutdown = C.SCHEDOP_remote_shutdown
	SchedopShutdownCode   = C.SCHEDOP_shutdown_code
	SchedopWatchdog       = C.SCHEDOP_watchdog
	SchedopPinOverride    = C.SCHEDOP_pin_override

	ShutdownPoweroff  = C.SHUTDOWN_poweroff
	ShutdownReboot    = C.SHUTDOWN_reboot
	ShutdownSuspend   = C.SHUTDOWN_suspend
	ShutdownCrash     = C.SHUTDOWN_crash
	ShutdownWatchdog  = C.SHUTDOWN_watchdog
	ShutdownSoftReset = C.SHUTDOWN_soft_reset
	ShutdownMax       = C.SHUTDOWN_MAX
)

// console_io, xen_version and vcpu_op commands.
const (
	ConsoleioWrite = C.CONSOLEIO_write
	ConsoleioRead  = C.CONSOLEIO_read

	XenverVersion            = C.XENVER_version
	XenverExtraversion       = C.XENVER_extraversion
	XenverCompileInfo        = C.XENVER_compile_info
	XenverCapabilities       = C.XENVER_capabilities
	XenverChangeset          = C.XENVER_changeset
	XenverPlatformParameters = C.XENVER_platform_parameters
	XenverGetFeatures        = C.XENVER_get_features
	XenverPagesize           = C.XENVER_pagesize
	XenverGuestHandle        = C.XENVER_guest_handle
	XenverCommandline        = C.XENVER_commandline

	XenExtraversionLen     = C.XEN_EXTRAVERSION_LEN
	XenCapabilitiesInfoLen = C.XEN_CAPABILITIES_INFO_LEN
	XenChangesetInfoLen    = C.XEN_CHANGESET_INFO_LEN

	VCPUOpInitialise                 = C.VCPUOP_initialise
	VCPUOpUp                         = C.VCPUOP_up
	VCPUOpDown                       = C.VCPUOP_down
	VCPUOpIsUp                       = C.VCPUOP_is_up
	VCPUOpGetRunstateInfo            = C.VCPUOP_get_runstate_info
	VCPUOpRegisterRunstateMemoryArea = C.VCPUOP_register_runstate_memory_area
	VCPUOpSetPeriodicTimer           = C.VCPUOP_set_periodic_timer
	VCPUOpStopPeriodicTimer          = C.VCPUOP_stop_periodic_timer
	VCPUOpSetSingleshotTimer         = C.VCPUOP_set_singleshot_timer
	VCPUOpStopSingleshotTimer        = C.VCPUOP_stop_singleshot_timer
	VCPUOpRegisterVCPUInfo           = C.VCPUOP_register_vcpu_info
)

// XENFEAT_* bit numbers.
const (
	XenfeatWritablePageTables       = C.XENFEAT_writable_page_tables
	XenfeatWritableDescriptorTables = C.XENFEAT_writable_descriptor_tables
	XenfeatAutoTranslatedPhysmap    = C.XENFEAT_auto_translated_physmap
	XenfeatSupervisorModeKernel     = C.XENFEAT_supervisor_mode_kernel
	XenfeatHVMCallbackVector        = C.XENFEAT_hvm_callback_vector
)

// ELF notes (elfnote.h).
const (
	ElfnoteInfo              = C.XEN_ELFNOTE_INFO
	ElfnoteEntry             = C.XEN_ELFNOTE_ENTRY
	ElfnoteHypercallPage     = C.XEN_ELFNOTE_HYPERCALL_PAGE
	ElfnoteVirtBase          = C.XEN_ELFNOTE_VIRT_BASE
	ElfnotePaddrOffset       = C.XEN_ELFNOTE_PADDR_OFFSET
	ElfnoteXenVersion        = C.XEN_ELFNOTE_XEN_VERSION
	ElfnoteGuestOS           = C.XEN_ELFNOTE_GUEST_OS
	ElfnoteGuestVersion      = C.XEN_ELFNOTE_GUEST_VERSION
	ElfnoteLoader            = C.XEN_ELFNOTE_LOADER
	ElfnotePAEMode           = C.XEN_ELFNOTE_PAE_MODE
	ElfnoteFeatures          = C.XEN_ELFNOTE_FEATURES
	ElfnoteBSDSymtab         = C.XEN_ELFNOTE_BSD_SYMTAB
	ElfnoteHVStartLow        = C.XEN_ELFNOTE_HV_START_LOW
	ElfnoteL1MFNValid        = C.XEN_ELFNOTE_L1_MFN_VALID
	ElfnoteSuspendCancel     = C.XEN_ELFNOTE_SUSPEND_CANCEL
	ElfnoteInitP2M           = C.XEN_ELFNOTE_INIT_P2M
	ElfnoteModStartPFN       = C.XEN_ELFNOTE_MOD_START_PFN
	ElfnoteSupportedFeatures = C.XEN_ELFNOTE_SUPPORTED_FEATURES
	ElfnotePhys32Entry       = C.XEN_ELFNOTE_PHYS32_ENTRY
)

// Xen errno values (positive; hypercalls return them negated).
const (
	EPERM      = C.XEN_EPERM
	ENOENT     = C.XEN_ENOENT
	ESRCH      = C.XEN_ESRCH
	EIO        = C.XEN_EIO
	E2BIG      = C.XEN_E2BIG
	EAGAIN     = C.XEN_EAGAIN
	ENOMEM     = C.XEN_ENOMEM
	EACCES     = C.XEN_EACCES
	EFAULT     = C.XEN_EFAULT
	EBUSY      = C.XEN_EBUSY
	EEXIST     = C.XEN_EEXIST
	EINVAL     = C.XEN_EINVAL
	ENOSPC     = C.XEN_ENOSPC
	ENOSYS     = C.XEN_ENOSYS
	ETIME      = C.XEN_ETIME
	EOPNOTSUPP = C.XEN_EOPNOTSUPP
	EISCONN    = C.XEN_EISCONN
	EOVERFLOW  = C.XEN_EOVERFLOW
)

// Domain IDs and start_info flags.
const (
	DomidSelf          = C.DOMID_SELF
	DomidFirstReserved = C.DOMID_FIRST_RESERVED
	DomidInvalid       = C.DOMID_INVALID

	SIFPrivileged    = C.SIF_PRIVILEGED
	SIFInitdomain    = C.SIF_INITDOMAIN
	SIFModStartPFN   = C.SIF_MOD_START_PFN
	SIFVirtP2M4Tools = C.SIF_VIRT_P2M_4TOOLS

	MaxGuestCmdline   = C.MAX_GUEST_CMDLINE
	XenLegacyMaxVCPUs = C.XEN_LEGACY_MAX_VCPUS
)
