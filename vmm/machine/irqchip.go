package machine

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"

	"github.com/xenresume/xenresume/vmm/kvmext"
)

// IRQChip says which interrupt controllers KVM models in the kernel for a
// machine (Config.IRQChip).
type IRQChip uint8

// Interrupt controller set-ups.
const (
	// IRQChipNone: no in-kernel controller; the VMM injects external
	// interrupts itself (KVM_INTERRUPT, VCPU.PendingInterrupt). A PV
	// domain's machine.
	IRQChipNone IRQChip = iota
	// IRQChipFull: a LAPIC per vCPU, the IO-APIC, the PIC pair and the
	// PIT (with the speaker port), all in the kernel
	// (KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2). An HVM domain's platform.
	IRQChipFull
	// IRQChipSplit: a LAPIC per vCPU in the kernel and nothing else
	// (KVM_CAP_SPLIT_IRQCHIP with no IO-APIC routes in use). What Xen
	// gives a PVH domain.
	IRQChipSplit
)

func (c IRQChip) String() string {
	switch c {
	case IRQChipNone:
		return "none"
	case IRQChipFull:
		return "full"
	case IRQChipSplit:
		return "split"
	}
	return fmt.Sprintf("irqchip(%d)", uint8(c))
}

// NrGSIs is how many GSIs the in-kernel IO-APIC has (KVM_IOAPIC_NUM_PINS);
// GSIs 0 to 15 also reach the PIC pair.
const NrGSIs = kvmext.IOAPICNumPins

// ErrNoIRQChip is returned by the interrupt-controller methods of a
// machine whose Config.IRQChip does not include the controller asked for.
var ErrNoIRQChip = errors.New("no such in-kernel interrupt controller")

// createIRQChip sets up cfg's controllers; before any vCPU exists, as KVM
// requires.
func (m *Machine) createIRQChip(c IRQChip) error {
	check := func(capability uint32, name string) error {
		if n, err := kvmext.CheckExtension(m.kvmFile.Fd(), capability); err != nil || n == 0 {
			return fmt.Errorf("KVM lacks %s (%v)", name, err)
		}
		return nil
	}
	switch c {
	case IRQChipNone:
		return nil
	case IRQChipFull:
		if err := check(kvmext.CapIRQChip, "KVM_CAP_IRQCHIP"); err != nil {
			return err
		}
		if err := check(kvmext.CapPIT2, "KVM_CAP_PIT2"); err != nil {
			return err
		}
		if _, err := retryEINTR(func() (uintptr, error) { return 0, kvm.CreateIRQChip(m.vmFd) }); err != nil {
			return fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
		}
		if _, err := retryEINTR(func() (uintptr, error) { return 0, kvmext.CreatePIT2(m.vmFd, kvmext.PITSpeakerDummy) }); err != nil {
			return fmt.Errorf("KVM_CREATE_PIT2: %w", err)
		}
	case IRQChipSplit:
		if err := check(kvmext.CapSplitIRQChip, "KVM_CAP_SPLIT_IRQCHIP"); err != nil {
			return err
		}
		if err := kvmext.EnableSplitIRQChip(m.vmFd, 0); err != nil {
			return err
		}
	default:
		return fmt.Errorf("irqchip set-up %v", c)
	}
	if err := check(kvmext.CapSignalMSI, "KVM_CAP_SIGNAL_MSI"); err != nil {
		return err
	}
	m.irqchip = c
	return nil
}

// IRQChip returns which in-kernel interrupt controllers the machine has.
func (m *Machine) IRQChip() IRQChip { return m.irqchip }

// HasLAPIC reports whether the vCPUs have in-kernel local APICs: external
// interrupts then reach them through the LAPIC (SignalMSI, SetIRQLine) or
// as events the VMM injects (VCPU.PendingInterrupt), never KVM_INTERRUPT.
func (m *Machine) HasLAPIC() bool { return m.irqchip != IRQChipNone }

// SetIRQLine sets the level of GSI gsi of the in-kernel IO-APIC (and, for
// GSIs below 16, of the PIC pair's pin): what a device model raises and
// lowers. An edge-triggered source asserts then deasserts. It needs
// IRQChipFull; any goroutine may call it. It reports whether KVM
// delivered the interrupt (false: the pin is masked, or the interrupt was
// coalesced with one not yet taken).
func (m *Machine) SetIRQLine(gsi uint32, level bool) (delivered bool, err error) {
	if m.irqchip != IRQChipFull {
		return false, fmt.Errorf("set GSI %d: %w (machine irqchip %v)", gsi, ErrNoIRQChip, m.irqchip)
	}
	if gsi >= NrGSIs {
		return false, fmt.Errorf("set GSI %d: the IO-APIC has %d pins", gsi, NrGSIs)
	}
	st, err := kvmext.IRQLineStatus(m.vmFd, gsi, level)
	if err != nil {
		return false, fmt.Errorf("KVM_IRQ_LINE_STATUS GSI %d level %v: %w", gsi, level, err)
	}
	return st > 0, nil
}

// SignalMSI sends a fixed-delivery, edge-triggered interrupt with vector
// to the local APIC with ID apicID (physical destination), as a device's
// MSI or a hypervisor's vlapic_set_irq would. It reports whether a LAPIC
// accepted it (false: no such APIC ID, or its LAPIC is software-disabled).
// It needs in-kernel LAPICs; any goroutine may call it.
func (m *Machine) SignalMSI(apicID uint32, vector uint8) (delivered bool, err error) {
	if m.irqchip == IRQChipNone {
		return false, fmt.Errorf("MSI vector %#x to APIC %d: %w", vector, apicID, ErrNoIRQChip)
	}
	if apicID > 0xff {
		return false, fmt.Errorf("MSI vector %#x to APIC %d: IDs above 255 need x2APIC extended destinations", vector, apicID)
	}
	msi := kvmext.MSI{AddressLo: 0xfee00000 | apicID<<12, Data: uint32(vector)}
	n, err := kvmext.SignalMSI(m.vmFd, &msi)
	if err != nil {
		return false, fmt.Errorf("KVM_SIGNAL_MSI vector %#x to APIC %d: %w", vector, apicID, err)
	}
	return n > 0, nil
}

// IRQChipState is the in-kernel IO-APIC and PIC pair's state, as
// KVM_GET_IRQCHIP returns it.
type IRQChipState struct {
	PIC    [2]kvmext.PICState // master, slave
	IOAPIC kvmext.IOAPICState
}

// GetIRQChip reads the in-kernel PIC pair and IO-APIC (KVM_GET_IRQCHIP),
// for a save; the vCPUs should be paused so that the state is consistent.
func (m *Machine) GetIRQChip() (*IRQChipState, error) {
	if m.irqchip != IRQChipFull {
		return nil, fmt.Errorf("KVM_GET_IRQCHIP: %w", ErrNoIRQChip)
	}
	var s IRQChipState
	for i, chip := range []uint32{kvmext.IRQChipPICMaster, kvmext.IRQChipPICSlave, kvmext.IRQChipIOAPIC} {
		d, err := kvmext.GetIRQChip(m.vmFd, chip)
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_IRQCHIP %d: %w", chip, err)
		}
		if i < 2 {
			s.PIC[i] = kvmext.PIC(&d)
		} else {
			s.IOAPIC = kvmext.IOAPIC(&d)
		}
	}
	return &s, nil
}

// SetIRQChip loads the in-kernel PIC pair and IO-APIC (KVM_SET_IRQCHIP),
// for a restore before the vCPUs run.
func (m *Machine) SetIRQChip(s *IRQChipState) error {
	if m.irqchip != IRQChipFull {
		return fmt.Errorf("KVM_SET_IRQCHIP: %w", ErrNoIRQChip)
	}
	for i, chip := range []uint32{kvmext.IRQChipPICMaster, kvmext.IRQChipPICSlave, kvmext.IRQChipIOAPIC} {
		var d [512]byte
		if i < 2 {
			kvmext.PutPIC(&d, s.PIC[i])
		} else {
			kvmext.PutIOAPIC(&d, s.IOAPIC)
		}
		if err := kvmext.SetIRQChip(m.vmFd, chip, d); err != nil {
			return fmt.Errorf("KVM_SET_IRQCHIP %d: %w", chip, err)
		}
	}
	return nil
}

// GetPIT reads the in-kernel PIT (KVM_GET_PIT2).
func (m *Machine) GetPIT() (*kvm.PITState2, error) {
	if m.irqchip != IRQChipFull {
		return nil, fmt.Errorf("KVM_GET_PIT2: %w", ErrNoIRQChip)
	}
	var s kvm.PITState2
	if err := kvm.GetPIT2(m.vmFd, &s); err != nil {
		return nil, fmt.Errorf("KVM_GET_PIT2: %w", err)
	}
	return &s, nil
}

// SetPIT loads the in-kernel PIT (KVM_SET_PIT2).
func (m *Machine) SetPIT(s *kvm.PITState2) error {
	if m.irqchip != IRQChipFull {
		return fmt.Errorf("KVM_SET_PIT2: %w", ErrNoIRQChip)
	}
	if err := kvm.SetPIT2(m.vmFd, s); err != nil {
		return fmt.Errorf("KVM_SET_PIT2: %w", err)
	}
	return nil
}

// LAPICState is the 1 KiB register page of a vCPU's in-kernel LAPIC
// (struct kvm_lapic_state), registers at their xAPIC MMIO offsets.
type LAPICState = kvm.LAPICState

// GetLAPIC reads the vCPU's in-kernel LAPIC (KVM_GET_LAPIC), for a vCPU
// that is not running.
func (v *VCPU) GetLAPIC() (*LAPICState, error) {
	if v.m.irqchip == IRQChipNone {
		return nil, fmt.Errorf("KVM_GET_LAPIC on vCPU %d: %w", v.ID, ErrNoIRQChip)
	}
	var s LAPICState
	err := v.ioctl("KVM_GET_LAPIC", func(fd uintptr) error { return kvm.GetLocalAPIC(fd, &s) })
	return &s, err
}

// SetLAPIC loads the vCPU's in-kernel LAPIC (KVM_SET_LAPIC), for a vCPU
// that is not running. The APIC base MSR is separate (Sregs.ApicBase).
func (v *VCPU) SetLAPIC(s *LAPICState) error {
	if v.m.irqchip == IRQChipNone {
		return fmt.Errorf("KVM_SET_LAPIC on vCPU %d: %w", v.ID, ErrNoIRQChip)
	}
	return v.ioctl("KVM_SET_LAPIC", func(fd uintptr) error { return kvm.SetLocalAPIC(fd, s) })
}

// MPState reads the vCPU's multiprocessing state (KVM_GET_MP_STATE:
// kvmext.MPStateRunnable, MPStateHalted, ...), for a vCPU that is not
// running.
func (v *VCPU) MPState() (uint32, error) {
	var s kvm.MPState
	err := v.ioctl("KVM_GET_MP_STATE", func(fd uintptr) error { return kvm.GetMPState(fd, &s) })
	return s.State, err
}

// SetMPState sets the vCPU's multiprocessing state (KVM_SET_MP_STATE),
// for a vCPU that is not running.
func (v *VCPU) SetMPState(state uint32) error {
	s := kvm.MPState{State: state}
	return v.ioctl("KVM_SET_MP_STATE", func(fd uintptr) error { return kvm.SetMPState(fd, &s) })
}

// Events reads the vCPU's pending and injected exceptions, interrupt and
// NMI, and its interrupt shadow (KVM_GET_VCPU_EVENTS), for a vCPU that is
// not running.
func (v *VCPU) Events() (*kvm.VCPUEvents, error) {
	var e kvm.VCPUEvents
	err := v.ioctl("KVM_GET_VCPU_EVENTS", func(fd uintptr) error { return kvm.GetVCPUEvents(fd, &e) })
	return &e, err
}

// SetEvents loads the vCPU's events (KVM_SET_VCPU_EVENTS), for a vCPU
// that is not running; e.Flags says which optional parts KVM takes.
func (v *VCPU) SetEvents(e *kvm.VCPUEvents) error {
	return v.ioctl("KVM_SET_VCPU_EVENTS", func(fd uintptr) error { return kvm.SetVCPUEvents(fd, e) })
}

// LevelIRQ is a level-triggered GSI of the in-kernel IO-APIC that a
// source holds asserted until the guest EOIs the interrupt (KVM_IRQFD
// with a resample eventfd, as VFIO's INTx uses it): KVM then lowers the
// line and calls the source's OnEOI, which asserts it again while the
// condition lasts. It is how a line that stays high while a flag in guest
// memory is set (Xen's callback GSI) is modelled without an exit per
// EOI.
type LevelIRQ struct {
	m        *Machine
	gsi      uint32
	tfd      int
	trigger  *os.File
	resample *os.File
	done     chan struct{}
	once     sync.Once
}

// NewLevelIRQ binds a level-triggered source to GSI gsi; onEOI runs on
// the LevelIRQ's own goroutine after each EOI of the interrupt lowered
// the line. It needs IRQChipFull. Close it, or close the machine.
func (m *Machine) NewLevelIRQ(gsi uint32, onEOI func()) (*LevelIRQ, error) {
	if m.irqchip != IRQChipFull {
		return nil, fmt.Errorf("level IRQ on GSI %d: %w", gsi, ErrNoIRQChip)
	}
	if gsi >= NrGSIs {
		return nil, fmt.Errorf("level IRQ on GSI %d: the IO-APIC has %d pins", gsi, NrGSIs)
	}
	if n, err := kvmext.CheckExtension(m.kvmFile.Fd(), kvmext.CapIRQFDResample); err != nil || n == 0 {
		return nil, fmt.Errorf("KVM lacks KVM_CAP_IRQFD_RESAMPLE (%v)", err)
	}
	tfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	rfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(tfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	l := &LevelIRQ{m: m, gsi: gsi, tfd: tfd, trigger: os.NewFile(uintptr(tfd), "irqfd"),
		resample: os.NewFile(uintptr(rfd), "irqfd-resample"), done: make(chan struct{})}
	if err := kvmext.IRQFD(m.vmFd, tfd, gsi, kvmext.IRQFDFlagResample, rfd); err != nil {
		l.trigger.Close()
		l.resample.Close()
		return nil, fmt.Errorf("KVM_IRQFD GSI %d: %w", gsi, err)
	}
	go l.watch(onEOI)
	m.OnClose(func() { l.Close() })
	return l, nil
}

func (l *LevelIRQ) watch(onEOI func()) {
	defer close(l.done)
	var b [8]byte
	for {
		if _, err := l.resample.Read(b[:]); err != nil {
			if !errors.Is(err, os.ErrClosed) {
				slog.Warn("level IRQ resample", "gsi", l.gsi, "err", err)
			}
			return
		}
		if onEOI != nil {
			onEOI()
		}
	}
}

// Assert raises the line; it stays up until the guest EOIs the interrupt.
// Asserting a raised line does nothing. Any goroutine may call it.
func (l *LevelIRQ) Assert() error {
	var one = [8]byte{1}
	if _, err := l.trigger.Write(one[:]); err != nil {
		return fmt.Errorf("assert GSI %d: %w", l.gsi, err)
	}
	return nil
}

// Close unbinds the source (the line is lowered) and waits for its
// goroutine.
func (l *LevelIRQ) Close() error {
	var err error
	l.once.Do(func() {
		if e := kvmext.IRQFD(l.m.vmFd, l.tfd, l.gsi, kvmext.IRQFDFlagDeassign, 0); e != nil && !errors.Is(e, unix.EBADF) {
			err = fmt.Errorf("KVM_IRQFD deassign GSI %d: %w", l.gsi, e)
		}
		l.resample.Close()
		<-l.done
		l.trigger.Close()
	})
	return err
}

// interruptRetry bounds how often a vCPU with an in-kernel LAPIC is
// kicked to look again at a pending external interrupt it could not
// take (interrupts disabled, a shadow, an event already injected): the
// delay starts at the first and doubles to the last.
var interruptRetry = [2]time.Duration{50 * time.Microsecond, 2 * time.Millisecond}

// injectEvent is offerInterrupt on a vCPU with an in-kernel LAPIC, where
// KVM_INTERRUPT is refused: the vector is made the injected interrupt of
// the vCPU's events (KVM_SET_VCPU_EVENTS), which KVM delivers at the next
// entry without going through the LAPIC (no IRR, ISR or EOI), and a vCPU
// halted in the kernel is made runnable to take it. That needs RFLAGS.IF,
// no STI or MOV SS shadow and no event already on its way in; otherwise
// the vCPU is kicked again after a delay that doubles (interruptRetry)
// while the guest keeps it out, since KVM has no interrupt-window exit for
// a vector it does not know of. vCPU thread, before an entry.
func (v *VCPU) injectEvent(vec uint8) error {
	// IF as the guest left it at the exit, unless the VMM opened it for
	// this entry (SetInterruptible): an exit handler that emulated an
	// IRET also sets IF, but the guest gets to run before the next
	// offer, or a handler that keeps its interrupt pending would be
	// re-entered at every IRET and never let the guest progress.
	ifOpen := (v.run.IFFlag != 0 || v.interruptible) && v.run.Sync.Regs.RFLAGS&(1<<9) != 0
	if ifOpen {
		var e kvm.VCPUEvents
		if err := kvm.GetVCPUEvents(v.fd, &e); err != nil {
			return fmt.Errorf("KVM_GET_VCPU_EVENTS on vCPU %d: %w", v.ID, err)
		}
		if e.I.Inject == 0 && e.I.Shadow == 0 && e.E.Inject == 0 && e.E.Pending == 0 && e.N.Inject == 0 {
			e.I.Inject, e.I.Nr, e.I.Soft = 1, vec, 0
			e.Flags = 0 // leave NMI pending, SIPI, shadow and SMM as they are
			if err := kvm.SetVCPUEvents(v.fd, &e); err != nil {
				return fmt.Errorf("KVM_SET_VCPU_EVENTS on vCPU %d: %w", v.ID, err)
			}
			var mp kvm.MPState
			if err := kvm.GetMPState(v.fd, &mp); err != nil {
				return fmt.Errorf("KVM_GET_MP_STATE on vCPU %d: %w", v.ID, err)
			}
			if mp.State == kvmext.MPStateHalted {
				mp.State = kvmext.MPStateRunnable
				if err := kvm.SetMPState(v.fd, &mp); err != nil {
					return fmt.Errorf("KVM_SET_MP_STATE on vCPU %d: %w", v.ID, err)
				}
			}
			v.interruptible = false
			v.injected.Add(1)
			// Offered again while it stays pending, as a level: at
			// the next entry, or when this kick comes first.
			v.retryDelay = min(max(2*v.retryDelay, interruptRetry[0]), interruptRetry[1])
			v.armRetry()
			return nil
		}
	}
	v.interruptible = false
	switch {
	case v.retryDelay == 0:
		v.retryDelay = interruptRetry[0]
	case v.retryDelay < interruptRetry[1]:
		v.retryDelay = min(2*v.retryDelay, interruptRetry[1])
	}
	v.retries.Add(1)
	v.armRetry()
	return nil
}

func (v *VCPU) armRetry() {
	if v.retryTimer == nil {
		v.retryTimer = time.AfterFunc(v.retryDelay, v.kick)
	} else {
		v.retryTimer.Reset(v.retryDelay)
	}
}

// haltProbe is how often a vCPU with an in-kernel LAPIC is kicked to see
// whether it halted with interrupts disabled: KVM handles HLT in the
// kernel then, and a vCPU stuck there never exits on its own.
const haltProbe = 200 * time.Millisecond

// probeHalt kicks the vCPU every haltProbe until the returned stop is
// called (when its loop returns).
func (v *VCPU) probeHalt() (stop func()) {
	t := time.NewTicker(haltProbe)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-t.C:
				v.kick()
			case <-done:
				return
			}
		}
	}()
	return func() {
		t.Stop()
		close(done)
		if v.retryTimer != nil {
			v.retryTimer.Stop()
		}
	}
}

// checkHaltedForever, after a kick, ends a vCPU with an in-kernel LAPIC
// that sits in HLT with RFLAGS.IF clear: only an NMI, INIT or SMI could
// wake it, and this platform sends none. That is what the HLT exit of a
// machine without an in-kernel LAPIC reports. vCPU thread.
func (v *VCPU) checkHaltedForever() error {
	if v.m.irqchip == IRQChipNone || v.run.Sync.Regs.RFLAGS&(1<<9) != 0 {
		return nil
	}
	var mp kvm.MPState
	if err := kvm.GetMPState(v.fd, &mp); err != nil {
		return v.crash(fmt.Sprintf("KVM_GET_MP_STATE: %v", err))
	}
	if mp.State != kvmext.MPStateHalted {
		return nil
	}
	var e kvm.VCPUEvents
	if err := kvm.GetVCPUEvents(v.fd, &e); err != nil {
		return v.crash(fmt.Sprintf("KVM_GET_VCPU_EVENTS: %v", err))
	}
	if e.N.Pending != 0 || e.N.Inject != 0 || e.I.Inject != 0 {
		return nil // something will wake it
	}
	return v.crash("HLT with interrupts disabled: the vCPU can never run again")
}

// InterruptRetries returns how many times a vCPU with an in-kernel LAPIC
// found a pending interrupt it could not take yet and set a kick to try
// again.
func (v *VCPU) InterruptRetries() uint64 { return v.retries.Load() }
