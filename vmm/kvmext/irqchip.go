package kvmext

import (
	"fmt"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

// KVM capabilities of the in-kernel interrupt controllers (KVM_CAP_*).
const (
	CapIRQChip       = 0
	CapIRQFD         = 32
	CapPIT2          = 33
	CapSignalMSI     = 77
	CapIRQFDResample = 82
	CapSplitIRQChip  = 121
)

// Chip ids of KVM_GET_IRQCHIP and KVM_SET_IRQCHIP (KVM_IRQCHIP_*).
const (
	IRQChipPICMaster = 0
	IRQChipPICSlave  = 1
	IRQChipIOAPIC    = 2
)

// IOAPICNumPins is KVM_IOAPIC_NUM_PINS: the in-kernel IO-APIC's pins.
const IOAPICNumPins = 24

// PITSpeakerDummy is KVM_PIT_SPEAKER_DUMMY: the in-kernel PIT also
// claims the speaker port 0x61.
const PITSpeakerDummy = 1

// VCPU event flags (KVM_VCPUEVENT_VALID_*).
const (
	VCPUEventValidNMIPending = 1 << 0
	VCPUEventValidSIPIVector = 1 << 1
	VCPUEventValidShadow     = 1 << 2
	VCPUEventValidSMM        = 1 << 3
)

// Interrupt shadow bits of kvm_vcpu_events.interrupt.shadow
// (KVM_X86_SHADOW_INT_*).
const (
	ShadowIntMovSS = 1 << 0
	ShadowIntSTI   = 1 << 1
)

// MP states (KVM_MP_STATE_*) on x86.
const (
	MPStateRunnable      = 0
	MPStateUninitialized = 1
	MPStateInitReceived  = 2
	MPStateHalted        = 3
	MPStateSIPIReceived  = 4
)

// ioctl numbers gokvm lacks or has with a different shape.
var (
	kvmIRQLineStatus = kvm.IIOWR(0x67, 8)
	kvmSignalMSI     = kvm.IIOW(0xa5, unsafe.Sizeof(MSI{}))
	kvmIRQFD         = kvm.IIOW(0x76, unsafe.Sizeof(irqfd{}))
	kvmCreatePIT2    = kvm.IIOW(0x77, 64)
)

func vmIoctl(fd, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(arg))
	if errno != 0 {
		return 0, errno
	}
	return r, nil
}

// CreatePIT2 creates the in-kernel i8254 (KVM_CREATE_PIT2) with flags
// (PITSpeakerDummy).
func CreatePIT2(vmFd uintptr, flags uint32) error {
	var cfg struct {
		Flags uint32
		_     [15]uint32
	}
	cfg.Flags = flags
	_, err := vmIoctl(vmFd, kvmCreatePIT2, unsafe.Pointer(&cfg))
	return err
}

// IRQLineStatus sets the level of GSI gsi (KVM_IRQ_LINE_STATUS) and
// returns KVM's status: > 0 delivered to that many CPUs (or the level
// recorded), 0 coalesced or masked, < 0 the interrupt was dropped.
func IRQLineStatus(vmFd uintptr, gsi uint32, level bool) (int32, error) {
	var l struct {
		IRQOrStatus uint32
		Level       uint32
	}
	l.IRQOrStatus = gsi
	if level {
		l.Level = 1
	}
	if _, err := vmIoctl(vmFd, kvmIRQLineStatus, unsafe.Pointer(&l)); err != nil {
		return 0, err
	}
	return int32(l.IRQOrStatus), nil
}

// MSI is struct kvm_msi.
type MSI struct {
	AddressLo uint32
	AddressHi uint32
	Data      uint32
	Flags     uint32
	DevID     uint32
	_         [12]uint8
}

// SignalMSI injects an MSI (KVM_SIGNAL_MSI). It returns > 0 when the
// message was delivered, 0 when the guest blocked it (a disabled LAPIC).
func SignalMSI(vmFd uintptr, msi *MSI) (int, error) {
	r, err := vmIoctl(vmFd, kvmSignalMSI, unsafe.Pointer(msi))
	return int(r), err
}

type irqfd struct {
	FD         uint32
	GSI        uint32
	Flags      uint32
	ResampleFD uint32
	_          [16]uint8
}

// IRQFD flags (KVM_IRQFD_FLAG_*).
const (
	IRQFDFlagDeassign = 1 << 0
	IRQFDFlagResample = 1 << 1
)

// IRQFD binds eventfd fd to GSI gsi (KVM_IRQFD): a write to fd raises the
// GSI. With flags IRQFDFlagResample it is level-triggered: the GSI stays
// asserted until the guest EOIs it, when KVM deasserts it and signals
// resampleFD.
func IRQFD(vmFd uintptr, fd int, gsi, flags uint32, resampleFD int) error {
	a := irqfd{FD: uint32(fd), GSI: gsi, Flags: flags}
	if flags&IRQFDFlagResample != 0 {
		a.ResampleFD = uint32(resampleFD)
	}
	_, err := vmIoctl(vmFd, kvmIRQFD, unsafe.Pointer(&a))
	return err
}

// EnableSplitIRQChip creates an in-kernel LAPIC per vCPU with the IO-APIC
// and PIC left to user space (KVM_CAP_SPLIT_IRQCHIP), reserving routes for
// ioapicPins user-space IO-APIC pins. Call it before any vCPU exists.
func EnableSplitIRQChip(vmFd uintptr, ioapicPins uint64) error {
	if err := EnableCap(vmFd, CapSplitIRQChip, ioapicPins); err != nil {
		return fmt.Errorf("KVM_CAP_SPLIT_IRQCHIP: %w", err)
	}
	return nil
}

// PICState is struct kvm_pic_state, the first bytes of a PIC chip's
// KVM_GET_IRQCHIP union.
type PICState = kvm.PICState

// IOAPICRedirEntry is one 64-bit redirection entry of the in-kernel
// IO-APIC.
type IOAPICRedirEntry uint64

// IOAPICState is struct kvm_ioapic_state, the IO-APIC's KVM_GET_IRQCHIP
// union.
type IOAPICState struct {
	BaseAddress uint64
	IOREGSEL    uint32
	ID          uint32
	IRR         uint32
	_           uint32
	Redirtbl    [IOAPICNumPins]IOAPICRedirEntry
}

// GetIRQChip reads chip chip (IRQChipPICMaster, ...) of the in-kernel
// irqchip (KVM_GET_IRQCHIP) into its 512-byte union.
func GetIRQChip(vmFd uintptr, chip uint32) ([512]byte, error) {
	c := kvm.IRQChip{ChipID: chip}
	if err := kvm.GetIRQChip(vmFd, &c); err != nil {
		return [512]byte{}, err
	}
	return c.Chip, nil
}

// SetIRQChip writes chip chip of the in-kernel irqchip (KVM_SET_IRQCHIP).
func SetIRQChip(vmFd uintptr, chip uint32, data [512]byte) error {
	c := kvm.IRQChip{ChipID: chip, Chip: data}
	return kvm.SetIRQChip(vmFd, &c)
}

// PIC reads a PIC's state out of a KVM_GET_IRQCHIP union.
func PIC(data *[512]byte) PICState { return *(*PICState)(unsafe.Pointer(&data[0])) }

// PutPIC writes a PIC's state into a KVM_SET_IRQCHIP union.
func PutPIC(data *[512]byte, s PICState) { *(*PICState)(unsafe.Pointer(&data[0])) = s }

// IOAPIC reads the IO-APIC's state out of a KVM_GET_IRQCHIP union.
func IOAPIC(data *[512]byte) IOAPICState { return *(*IOAPICState)(unsafe.Pointer(&data[0])) }

// PutIOAPIC writes the IO-APIC's state into a KVM_SET_IRQCHIP union.
func PutIOAPIC(data *[512]byte, s IOAPICState) {
	*(*IOAPICState)(unsafe.Pointer(&data[0])) = s
}
