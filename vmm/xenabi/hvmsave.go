package xenabi

// hvm_hw_lapic.disabled's flags. They are not in the public headers:
// these are Xen's own (xen/arch/x86/include/asm/hvm/vlapic.h), which its
// hvm_save and hvm_load of the LAPIC record use.
const (
	VLAPICSWDisabled = 0x01 // SVR.APIC_SW_ENABLE clear
	VLAPICHWDisabled = 0x02 // IA32_APIC_BASE.EN clear
)

// hvm_hw_vpic's bitfield byte that follows irq_base: init_state (bits 0
// to 3) and priority_add (4 to 7); then the byte of single-bit flags,
// from bit 0: readsel_isr, poll, auto_eoi, rotate_on_auto_eoi,
// special_fully_nested_mode, special_mask_mode, is_master. cgo -godefs
// leaves bitfields as padding (HVMHWVPIC.Pad_cgo_0); these name them.
const (
	VPICReadselISR         = 1 << 0
	VPICPoll               = 1 << 1
	VPICAutoEOI            = 1 << 2
	VPICRotateOnAutoEOI    = 1 << 3
	VPICSpecialFullyNested = 1 << 4
	VPICSpecialMaskMode    = 1 << 5
	VPICIsMaster           = 1 << 6
)
