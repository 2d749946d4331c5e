// Package kvmext adds to github.com/bobuhiro11/gokvm/kvm the KVM interfaces
// xenresume needs and gokvm does not have: KVM_ENABLE_CAP, the full kvm_run
// layout with KVM_CAP_SYNC_REGS, user-space MSR exits and the MSR filter,
// KVM_SET_GUEST_DEBUG, a KVM_RUN that reports EINTR so a vCPU thread can be
// kicked out of the guest, single-MSR reads and writes that check what
// KVM accepted, and the in-kernel interrupt controllers' calls gokvm lacks
// or shapes differently (irqchip.go: KVM_IRQ_LINE_STATUS with its status,
// KVM_SIGNAL_MSI, KVM_IRQFD with resampling, KVM_CREATE_PIT2 with flags,
// the split irqchip, the IO-APIC's and PICs' state layouts), and KVM's own
// Xen hypercall intercept (xen.go: KVM_CAP_XEN_HVM, KVM_XEN_HVM_CONFIG and
// the KVM_EXIT_XEN exit).
//
// Everything here follows include/uapi/linux/kvm.h and
// Documentation/virt/kvm/api.rst; gokvm is used for everything it covers.
// It is vmm/machine's helper: the rest of the VMM reaches KVM through
// machine, which knows which thread may issue which ioctl.
package kvmext

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

// KVM capabilities used here (KVM_CAP_*).
const (
	CapSyncRegs        = 74
	CapImmediateExit   = 136
	CapX86UserSpaceMSR = 188
	CapX86MSRFilter    = 189
	CapSetGuestDebug   = 23
)

// Exit reasons (KVM_EXIT_*).
const (
	ExitUnknown       = 0
	ExitException     = 1
	ExitIO            = 2
	ExitHypercall     = 3
	ExitDebug         = 4
	ExitHLT           = 5
	ExitMMIO          = 6
	ExitIRQWindowOpen = 7
	ExitShutdown      = 8
	ExitFailEntry     = 9
	ExitIntr          = 10
	ExitInternalError = 17
	ExitSystemEvent   = 24
	ExitX86RDMSR      = 29
	ExitX86WRMSR      = 30
	ExitXen           = 34
)

var exitNames = map[uint32]string{
	ExitUnknown: "UNKNOWN", ExitException: "EXCEPTION", ExitIO: "IO",
	ExitHypercall: "HYPERCALL", ExitDebug: "DEBUG", ExitHLT: "HLT",
	ExitMMIO: "MMIO", ExitIRQWindowOpen: "IRQ_WINDOW_OPEN",
	ExitShutdown: "SHUTDOWN", ExitFailEntry: "FAIL_ENTRY", ExitIntr: "INTR",
	ExitInternalError: "INTERNAL_ERROR", ExitSystemEvent: "SYSTEM_EVENT",
	ExitX86RDMSR: "X86_RDMSR", ExitX86WRMSR: "X86_WRMSR", ExitXen: "XEN",
}

// ExitName names a KVM exit reason.
func ExitName(reason uint32) string {
	if n, ok := exitNames[reason]; ok {
		return n
	}
	return fmt.Sprintf("exit(%d)", reason)
}

// Sync register sets (KVM_SYNC_X86_*), for Run.ValidRegs and Run.DirtyRegs.
const (
	SyncRegs   = 1 << 0
	SyncSregs  = 1 << 1
	SyncEvents = 1 << 2
)

// SyncRegsArea is struct kvm_sync_regs on x86.
type SyncRegsArea struct {
	Regs   kvm.Regs
	Sregs  kvm.Sregs
	Events kvm.VCPUEvents
}

// Run is struct kvm_run, the page shared with KVM for each vCPU.
type Run struct {
	RequestInterruptWindow     uint8
	ImmediateExit              uint8
	_                          [6]uint8
	ExitReason                 uint32
	ReadyForInterruptInjection uint8
	IFFlag                     uint8
	Flags                      uint16
	CR8                        uint64
	APICBase                   uint64
	exit                       [256]byte
	ValidRegs                  uint64
	DirtyRegs                  uint64
	Sync                       SyncRegsArea
	_                          [2048 - unsafe.Sizeof(SyncRegsArea{})]byte
}

// IOExit is the io member of kvm_run's exit union.
type IOExit struct {
	Direction  uint8 // IODirIn or IODirOut
	Size       uint8
	Port       uint16
	Count      uint32
	DataOffset uint64 // from the start of the kvm_run mapping
}

// Port I/O directions.
const (
	IODirIn  = 0
	IODirOut = 1
)

// MMIOExit is the mmio member of kvm_run's exit union.
type MMIOExit struct {
	PhysAddr uint64
	Data     [8]byte
	Len      uint32
	IsWrite  uint8
}

// FailEntryExit is the fail_entry member.
type FailEntryExit struct {
	HardwareEntryFailureReason uint64
	CPU                        uint32
}

// InternalExit is the internal member.
type InternalExit struct {
	Suberror uint32
	NData    uint32
	Data     [16]uint64
}

// MSRExit is the msr member (KVM_EXIT_X86_RDMSR / WRMSR). Set Error to 1
// to have KVM inject #GP; for RDMSR, set Data to the value read.
type MSRExit struct {
	Error  uint8
	_      [7]uint8
	Reason uint32
	Index  uint32
	Data   uint64
}

// DebugExit is the debug member (struct kvm_debug_exit_arch on x86).
type DebugExit struct {
	Exception uint32
	_         uint32
	PC        uint64
	DR6       uint64
	DR7       uint64
}

// IO returns the exit as port I/O.
func (r *Run) IO() *IOExit { return (*IOExit)(unsafe.Pointer(&r.exit[0])) }

// MMIO returns the exit as MMIO.
func (r *Run) MMIO() *MMIOExit { return (*MMIOExit)(unsafe.Pointer(&r.exit[0])) }

// FailEntry returns the exit as a failed VM entry.
func (r *Run) FailEntry() *FailEntryExit { return (*FailEntryExit)(unsafe.Pointer(&r.exit[0])) }

// Internal returns the exit as a KVM internal error.
func (r *Run) Internal() *InternalExit { return (*InternalExit)(unsafe.Pointer(&r.exit[0])) }

// MSR returns the exit as a user-space MSR access.
func (r *Run) MSR() *MSRExit { return (*MSRExit)(unsafe.Pointer(&r.exit[0])) }

// Debug returns the exit as a debug exit.
func (r *Run) Debug() *DebugExit { return (*DebugExit)(unsafe.Pointer(&r.exit[0])) }

// MapRun maps a vCPU's kvm_run area (size from KVM_GET_VCPU_MMAP_SIZE).
func MapRun(vcpuFd uintptr, size int) (*Run, []byte, error) {
	if size < int(unsafe.Sizeof(Run{})) {
		return nil, nil, fmt.Errorf("kvm_run mapping of %d bytes is smaller than struct kvm_run (%d)", size, unsafe.Sizeof(Run{}))
	}
	mem, err := unix.Mmap(int(vcpuFd), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("mmap kvm_run: %w", err)
	}
	return (*Run)(unsafe.Pointer(&mem[0])), mem, nil
}

// ErrInterrupted is returned by RunVCPU when KVM_RUN returned EINTR: a
// signal (a kick) or immediate_exit made it leave before or during guest
// execution. Pending I/O has been completed when it is returned.
var ErrInterrupted = errors.New("KVM_RUN interrupted")

var kvmRunIoctl = kvm.IIO(0x80)

// RunVCPU issues KVM_RUN once.
func RunVCPU(vcpuFd uintptr) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, vcpuFd, kvmRunIoctl, 0)
	switch errno {
	case 0:
		return nil
	case unix.EINTR, unix.EAGAIN:
		return ErrInterrupted
	default:
		return fmt.Errorf("KVM_RUN: %w", errno)
	}
}

// enableCap is struct kvm_enable_cap.
type enableCap struct {
	Cap   uint32
	Flags uint32
	Args  [4]uint64
	_     [64]uint8
}

var kvmEnableCap = kvm.IIOW(0xa3, unsafe.Sizeof(enableCap{}))

// EnableCap issues KVM_ENABLE_CAP on a VM or vCPU fd.
func EnableCap(fd uintptr, capability uint32, args ...uint64) error {
	if len(args) > 4 {
		return fmt.Errorf("KVM_ENABLE_CAP(%d): %d args, at most 4", capability, len(args))
	}
	c := enableCap{Cap: capability}
	copy(c.Args[:], args)
	if _, err := kvm.Ioctl(fd, kvmEnableCap, uintptr(unsafe.Pointer(&c))); err != nil {
		return fmt.Errorf("KVM_ENABLE_CAP(%d): %w", capability, err)
	}
	return nil
}

// CheckExtension returns KVM_CHECK_EXTENSION's answer for a capability
// (0 when absent).
func CheckExtension(fd uintptr, capability uint32) (int, error) {
	r, err := kvm.CheckExtension(fd, kvm.Capability(capability))
	if err != nil {
		return 0, fmt.Errorf("KVM_CHECK_EXTENSION(%d): %w", capability, err)
	}
	return int(r), nil
}

// User-space MSR exit reasons (KVM_MSR_EXIT_REASON_*), the argument of
// KVM_CAP_X86_USER_SPACE_MSR.
const (
	MSRExitReasonInval   = 1 << 0
	MSRExitReasonUnknown = 1 << 1
	MSRExitReasonFilter  = 1 << 2
)

// EnableUserSpaceMSR makes accesses that fail for the given reasons exit to
// user space as KVM_EXIT_X86_RDMSR / WRMSR instead of injecting #GP.
func EnableUserSpaceMSR(vmFd uintptr, reasons uint64) error {
	return EnableCap(vmFd, CapX86UserSpaceMSR, reasons)
}

// MSR filter flags.
const (
	MSRFilterDefaultAllow = 0
	MSRFilterDefaultDeny  = 1
	MSRFilterRead         = 1 << 0
	MSRFilterWrite        = 1 << 1
)

// MSRFilterRange is one range of struct kvm_msr_filter. A set bit in Bitmap
// allows the access; a clear bit denies it (exits with reason FILTER when
// user-space MSR exits are enabled for it).
type MSRFilterRange struct {
	Flags  uint32 // MSRFilterRead | MSRFilterWrite
	Base   uint32
	Bitmap []byte // one bit per MSR from Base; len*8 MSRs
}

type msrFilterRange struct {
	Flags  uint32
	NMSRs  uint32
	Base   uint32
	_      uint32
	Bitmap uintptr
}

type msrFilter struct {
	Flags  uint32
	_      uint32
	Ranges [16]msrFilterRange
}

var kvmX86SetMSRFilter = kvm.IIOW(0xc6, unsafe.Sizeof(msrFilter{}))

// SetMSRFilter issues KVM_X86_SET_MSR_FILTER on a VM fd.
func SetMSRFilter(vmFd uintptr, defaultDeny bool, ranges []MSRFilterRange) error {
	if len(ranges) > 16 {
		return fmt.Errorf("MSR filter: %d ranges, at most 16", len(ranges))
	}
	var f msrFilter
	if defaultDeny {
		f.Flags = MSRFilterDefaultDeny
	}
	for i, r := range ranges {
		if len(r.Bitmap) == 0 {
			return fmt.Errorf("MSR filter range %d: empty bitmap", i)
		}
		f.Ranges[i] = msrFilterRange{
			Flags: r.Flags, NMSRs: uint32(len(r.Bitmap) * 8), Base: r.Base,
			Bitmap: uintptr(unsafe.Pointer(&r.Bitmap[0])),
		}
	}
	_, err := kvm.Ioctl(vmFd, kvmX86SetMSRFilter, uintptr(unsafe.Pointer(&f)))
	if err != nil {
		return fmt.Errorf("KVM_X86_SET_MSR_FILTER: %w", err)
	}
	return nil
}

// Guest debug control flags (KVM_GUESTDBG_*).
const (
	GuestDbgEnable     = 1 << 0
	GuestDbgSingleStep = 1 << 1
	GuestDbgUseSWBP    = 1 << 16
	GuestDbgUseHWBP    = 1 << 17
)

type guestDebug struct {
	Control  uint32
	_        uint32
	DebugReg [8]uint64
}

var kvmSetGuestDebug = kvm.IIOW(0x9b, unsafe.Sizeof(guestDebug{}))

// SetGuestDebug issues KVM_SET_GUEST_DEBUG on a vCPU fd; control is a
// GuestDbg* mask, debugRegs the x86 debug registers (DR0-3, DR6, DR7 at
// indexes 0-3, 6, 7) for hardware breakpoints.
func SetGuestDebug(vcpuFd uintptr, control uint32, debugRegs [8]uint64) error {
	d := guestDebug{Control: control, DebugReg: debugRegs}
	if _, err := kvm.Ioctl(vcpuFd, kvmSetGuestDebug, uintptr(unsafe.Pointer(&d))); err != nil {
		return fmt.Errorf("KVM_SET_GUEST_DEBUG: %w", err)
	}
	return nil
}

// KickSignal interrupts a vCPU thread's KVM_RUN. The Go runtime catches
// SIGUSR2 and, unless a program asks os/signal for it, takes no action;
// unlike SIGURG (its preemption signal) it does not make the runtime
// deschedule the vCPU's locked goroutine, which costs scheduler handoffs.
const KickSignal = unix.SIGUSR2

// Kick makes the vCPU thread tid leave KVM_RUN soon: it sets immediate_exit
// (so a KVM_RUN about to start returns at once) and sends the thread
// KickSignal, which interrupts a running KVM_RUN with EINTR.
func Kick(run *Run, tid int) error {
	run.ImmediateExit = 1
	if tid == 0 {
		return nil
	}
	if err := unix.Tgkill(unix.Getpid(), tid, KickSignal); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("tgkill(%d): %w", tid, err)
	}
	return nil
}

var kvmInterrupt = kvm.IIOW(0x86, 4)

// Interrupt queues an external interrupt for a vCPU (KVM_INTERRUPT), for
// VMs without an in-kernel interrupt controller. gokvm's InjectInterrupt
// passes the vector where KVM expects a pointer to struct kvm_interrupt,
// so it always fails with EFAULT; this is the working call. Issue it from
// the vCPU's own thread while the guest can take the interrupt
// (Run.ReadyForInterruptInjection).
func Interrupt(vcpuFd uintptr, vector uint8) error {
	irq := uint32(vector)
	if _, err := kvm.Ioctl(vcpuFd, kvmInterrupt, uintptr(unsafe.Pointer(&irq))); err != nil {
		return fmt.Errorf("KVM_INTERRUPT(%#x): %w", vector, err)
	}
	return nil
}

// msrs1 is struct kvm_msrs carrying one struct kvm_msr_entry.
type msrs1 struct {
	NMSRs uint32
	_     uint32
	Index uint32
	_     uint32
	Data  uint64
}

var (
	kvmGetMSRs = kvm.IIOWR(0x88, 8)
	kvmSetMSRs = kvm.IIOW(0x89, 8)
)

// GetMSR reads one MSR of a vCPU (KVM_GET_MSRS). KVM answers with how many
// entries it processed; gokvm's GetMSRs ignores that, so an MSR KVM refuses
// reads as 0 there. Here it is an error.
func GetMSR(vcpuFd uintptr, index uint32) (uint64, error) {
	m := msrs1{NMSRs: 1, Index: index}
	n, err := kvm.Ioctl(vcpuFd, kvmGetMSRs, uintptr(unsafe.Pointer(&m)))
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_MSRS(%#x): %w", index, err)
	}
	if n != 1 {
		return 0, fmt.Errorf("KVM_GET_MSRS(%#x): KVM refused the MSR", index)
	}
	return m.Data, nil
}

// SetMSR writes one MSR of a vCPU (KVM_SET_MSRS); an MSR KVM refuses is an
// error, where gokvm's SetMSRs reports success.
func SetMSR(vcpuFd uintptr, index uint32, value uint64) error {
	m := msrs1{NMSRs: 1, Index: index, Data: value}
	n, err := kvm.Ioctl(vcpuFd, kvmSetMSRs, uintptr(unsafe.Pointer(&m)))
	if err != nil {
		return fmt.Errorf("KVM_SET_MSRS(%#x): %w", index, err)
	}
	if n != 1 {
		return fmt.Errorf("KVM_SET_MSRS(%#x): KVM refused the MSR", index)
	}
	return nil
}

// XSaveSize is sizeof(struct kvm_xsave): the vCPU's XSAVE area as KVM
// gives it, the legacy FXSAVE region in its first 512 bytes and the XSAVE
// header (XSTATE_BV at 512) after it.
const XSaveSize = 4096

var (
	kvmGetXSave = kvm.IIOR(0xa4, XSaveSize)
	kvmSetXSave = kvm.IIOW(0xa5, XSaveSize)
)

// GetXSave reads a vCPU's XSAVE area (KVM_GET_XSAVE).
func GetXSave(vcpuFd uintptr, area *[XSaveSize]byte) error {
	if _, err := kvm.Ioctl(vcpuFd, kvmGetXSave, uintptr(unsafe.Pointer(area))); err != nil {
		return fmt.Errorf("KVM_GET_XSAVE: %w", err)
	}
	return nil
}

// SetXSave writes a vCPU's XSAVE area (KVM_SET_XSAVE).
func SetXSave(vcpuFd uintptr, area *[XSaveSize]byte) error {
	if _, err := kvm.Ioctl(vcpuFd, kvmSetXSave, uintptr(unsafe.Pointer(area))); err != nil {
		return fmt.Errorf("KVM_SET_XSAVE: %w", err)
	}
	return nil
}
