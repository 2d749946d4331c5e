package machine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"

	"github.com/xenresume/xenresume/vmm/kvmext"
)

// VCPUState is where a vCPU is in its life. It decides who may touch the
// vCPU's registers and KVM state, Firecracker-style: a running vCPU belongs
// to its own thread; anyone else waits until it is parked.
//
//	state    registers and KVM state belong to   ioctl methods from elsewhere
//	Created  whoever sets it up (no thread yet)   allowed
//	Running  its own thread                       refused: ErrNotParked
//	Parked   the goroutines that paused it        allowed
//	Ended    nobody (its thread returned)         allowed (crash reports)
//	Closed   nobody (its fd is gone)              refused: ErrClosed
//
// The transitions, each made under the vCPU's mutex:
//
//	Created -> Running  Machine.Start, no pause requested
//	Created -> Parked   Machine.Start with a pause requested: the thread
//	                    starts parked (the vCPU never ran: nothing pending)
//	Running -> Parked   its own thread, before an entry, when a pause is
//	                    requested, after completing the I/O it exited on
//	Parked  -> Running  Unpause, from any goroutine: the vCPU belongs to its
//	                    thread again the moment Unpause returns
//	Running -> Ended    its own thread returns (a stop, Start's context
//	                    done, a crash or a KVM failure)
//	Parked  -> Ended    its own thread returns on a stop
//	Created -> Closed   Machine.Close (after every thread returned)
//	Ended   -> Closed
//
// Only a vCPU's own thread moves it out of Running, so an ioctl method that
// finds it Parked holds it parked for as long as it holds the mutex.
type VCPUState uint8

// vCPU states; see VCPUState.
const (
	VCPUCreated VCPUState = iota
	VCPURunning
	VCPUParked
	VCPUEnded
	VCPUClosed
)

func (s VCPUState) String() string {
	switch s {
	case VCPUCreated:
		return "created"
	case VCPURunning:
		return "running"
	case VCPUParked:
		return "parked"
	case VCPUEnded:
		return "ended"
	case VCPUClosed:
		return "closed"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Errors a vCPU refuses a call with, wrapped in a *StateError.
var (
	// ErrNotParked: an ioctl method was called from another goroutine
	// while the vCPU runs; pause it first.
	ErrNotParked = errors.New("vCPU is running")
	// ErrNotOwnThread: a method documented "vCPU thread only" was called
	// from elsewhere.
	ErrNotOwnThread = errors.New("not on the vCPU's thread")
	// ErrClosed: the machine was closed.
	ErrClosed = errors.New("vCPU is closed")
	// ErrUnpaused: a wait for the vCPU to park ended because Unpause
	// withdrew the pause request.
	ErrUnpaused = errors.New("pause withdrawn by Unpause")
	// ErrWaitOnOwnThread: the vCPU's own thread waited for itself to park,
	// which it never would; it uses RequestPause.
	ErrWaitOnOwnThread = errors.New("a vCPU's thread cannot wait for itself to park")
	// ErrSkipEntry, returned by BeforeEntry, makes the vCPU look at its
	// pause and stop requests again instead of entering the guest: a
	// hypervisor whose vCPU has nothing to run (a PV vCPU that is down)
	// blocks in BeforeEntry and returns it when a pause or stop wakes it.
	ErrSkipEntry = errors.New("no guest code to enter")
)

// StateError is a call a vCPU refused: what, on which vCPU, in which state.
// errors.Is matches its Err (ErrNotParked, ErrNotOwnThread, ...).
type StateError struct {
	Op    string
	VCPU  int
	State VCPUState
	Err   error
}

func (e *StateError) Error() string {
	return fmt.Sprintf("%s on vCPU %d (%s): %v", e.Op, e.VCPU, e.State, e.Err)
}

// Unwrap returns Err.
func (e *StateError) Unwrap() error { return e.Err }

// requests are what other goroutines ask of a vCPU's thread.
type requests uint8

const (
	reqPause requests = 1 << iota // park before the next entry
	reqStop                       // end the thread
	reqWake                       // end a Block (or make the next one return)
)

// VCPU is one virtual CPU. Its exits are handled on its own OS thread; the
// methods documented "vCPU thread only" may be called only from an exit
// handler running there, and return ErrNotOwnThread elsewhere. The ioctl
// methods (GetRegs, SetRegs, GetSregs, SetSregs, SetCPUID, TSC, SetTSC,
// TSCKHz) may be called from any goroutine while the vCPU is not running
// (see VCPUState), and return ErrNotParked while it is.
type VCPU struct {
	ID int

	m         *Machine
	fd        uintptr
	run       *kvmext.Run
	runMem    []byte
	syncSregs bool
	tid       atomic.Int64 // the thread's, while it runs the loop; else 0

	// Per-exit cache of the special registers when they are not synced;
	// sregsDirty: load them with KVM_SET_SREGS before the next entry.
	sregs      kvm.Sregs
	sregsValid bool
	sregsDirty bool
	// ioPending: the last exit was port I/O (or MMIO, or a Xen
	// hypercall) that KVM completes at the next KVM_RUN (see
	// CompleteExit).
	ioPending bool
	cpuid     *kvm.CPUID

	mu    sync.Mutex
	cond  *sync.Cond // broadcast on every change of state or req
	state VCPUState
	req   requests

	exits       [64]atomic.Uint64
	silentPorts sync.Map // ports already logged as unclaimed

	// Halt handles HLT; the default blocks until Wake when interrupts are
	// enabled and crashes the domain when they are not. With an
	// in-kernel LAPIC (Config.IRQChip) KVM handles HLT itself and Halt
	// is never called; a vCPU halted with interrupts disabled is found
	// by a periodic kick and ends with the same report.
	Halt func(v *VCPU) error
	// MSR handles user-space MSR exits; the default injects #GP.
	MSR func(v *VCPU, e *kvmext.MSRExit) error
	// MMIO handles an access to guest-physical memory no region backs:
	// data (1 to 8 bytes) holds what a write wrote, and a read returns
	// what the handler leaves in it. The default crashes the domain. Set
	// it before Start.
	MMIO func(v *VCPU, gpa uint64, write bool, data []byte) error
	// Emulate, if set, is offered every instruction KVM failed to
	// emulate (KVM_EXIT_INTERNAL_ERROR, KVM_INTERNAL_ERROR_EMULATION;
	// Machine.ExitOnEmulationFailure makes KVM report those at CPL 3 too
	// instead of injecting #UD). It emulates the instruction at the
	// current RIP by changing the registers (SetRegsDirty,
	// SetSregsDirty) and reports whether it did; when it did not, the
	// vCPU ends with a crash report as without it. Set it before Start.
	Emulate func(v *VCPU) (handled bool, err error)
	// XenHypercall handles a Xen hypercall KVM's Xen intercept trapped
	// (KVM_EXIT_XEN; EnableXenHypercallIntercept) and returns the result
	// KVM loads into the guest's %rax; an error ends the vCPU with a crash
	// report, as does such an exit without a handler. Set it before Start.
	XenHypercall func(v *VCPU, c XenCall) (result uint64, err error)
	// Debug handles debug exits (single-step, breakpoints); the default
	// crashes the domain.
	Debug func(v *VCPU, e *kvmext.DebugExit) error
	// PendingInterrupt, asked before every entry, returns an external
	// interrupt vector the vCPU should take. It is level-style: the vCPU
	// injects it whenever the guest can take interrupts, and asks again
	// before the next entry, until it reports none. Without an in-kernel
	// LAPIC it is injected with KVM_INTERRUPT; with one, bypassing the
	// LAPIC as the vCPU's injected event, and a vCPU that cannot take it
	// yet is kicked again later (see injectEvent). Set it before Start.
	PendingInterrupt func(v *VCPU) (vector uint8, ok bool)
	injected         atomic.Uint64
	// interruptible: the next entry runs with RFLAGS.IF set by the VMM
	// and no interrupt shadow (see SetInterruptible).
	interruptible bool
	// retryDelay: with an in-kernel LAPIC, how long until the next kick
	// to offer a pending interrupt the vCPU could not take (0: none due).
	retryDelay time.Duration
	retryTimer *time.Timer
	retries    atomic.Uint64
	// BeforeEntry, if set, runs on the vCPU's thread before every entry
	// into the guest (after pause and stop requests were looked at and
	// before PendingInterrupt is asked): a hypervisor delivers what it
	// must as the guest resumes, as Xen does on every return to a guest.
	// An error ends the vCPU with a crash report, but ErrSkipEntry, which
	// makes the vCPU look at its requests again without entering. Set it
	// before Start.
	BeforeEntry func(v *VCPU) error
	// Settle, if set, runs on the vCPU's thread whenever the vCPU is
	// about to stop for someone else: before it parks for a pause, and
	// before a debug exit reaches Debug. It finishes what the hypervisor
	// has in flight on the vCPU (queued register changes, a hypervisor
	// instruction a single step stopped in) and reports whether the
	// registers are now the guest's own, at a guest instruction boundary.
	// While they are not (the vCPU runs the hypervisor's own code in the
	// guest's container: a trap trampoline, a page-table write loop), the
	// vCPU neither parks nor reports the debug exit: it enters again to
	// run that code and stops at a later boundary. So a parked vCPU, and
	// one a debugger sees stopped, always holds guest state. An error ends
	// the vCPU with a crash report. Set it before Start.
	Settle func(v *VCPU) (atGuest bool, err error)

	// syncStale: the kvm_run sync area may not hold KVM's registers (the
	// vCPU was parked, or has not run yet); v.mu.
	syncStale bool
	// entryTrap: report a debug exit before the next entry into the
	// guest (see TrapEntry).
	entryTrap atomic.Bool
}

func newVCPU(m *Machine, id int, cpuid *kvm.CPUID, syncSregs bool) (*VCPU, error) {
	fd, err := retryEINTR(func() (uintptr, error) { return kvm.CreateVCPU(m.vmFd, id) })
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	v := &VCPU{ID: id, m: m, fd: fd, syncSregs: syncSregs, cpuid: cpuid, syncStale: true}
	v.cond = sync.NewCond(&v.mu)
	v.run, v.runMem, err = kvmext.MapRun(fd, m.runSize)
	if err != nil {
		unix.Close(int(fd))
		return nil, err
	}
	if err := kvm.SetCPUID2(fd, cpuid); err != nil {
		v.close()
		return nil, fmt.Errorf("KVM_SET_CPUID2 on vCPU %d: %w", id, err)
	}
	v.run.ValidRegs = kvmext.SyncRegs
	if syncSregs {
		v.run.ValidRegs |= kvmext.SyncSregs
	}
	return v, nil
}

// Fd returns the vCPU file descriptor, for tests of kvmext's raw calls on a
// vCPU that never starts. An ioctl on it bypasses the ownership rules of
// VCPUState: the VMM uses the methods instead.
func (v *VCPU) Fd() uintptr { return v.fd }

// Machine returns the machine the vCPU belongs to.
func (v *VCPU) Machine() *Machine { return v.m }

// Index returns the vCPU's number, ID, for interfaces (a field cannot
// satisfy one).
func (v *VCPU) Index() int { return v.ID }

// State returns where the vCPU is in its life. Unless the caller holds it
// parked, the answer may be stale by the time it is read.
func (v *VCPU) State() VCPUState {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.state
}

// setState moves the vCPU to s and tells every waiter. v.mu held.
func (v *VCPU) setState(s VCPUState) {
	v.state = s
	v.cond.Broadcast()
}

// onThread reports whether the caller runs on the vCPU's own thread. The
// loop goroutine is locked to that thread, so no other goroutine can.
func (v *VCPU) onThread() bool {
	tid := v.tid.Load()
	return tid != 0 && tid == int64(unix.Gettid())
}

// notOwnThread is the error of a thread-only method called elsewhere.
func (v *VCPU) notOwnThread(op string) error {
	return &StateError{Op: op, VCPU: v.ID, State: v.State(), Err: ErrNotOwnThread}
}

// ioctl runs fn on the vCPU fd if the caller may touch the vCPU now: it is
// not running (created, parked or ended), or the caller is its own thread.
// The mutex is held throughout, so a parked vCPU stays parked under fn.
func (v *VCPU) ioctl(op string, fn func(fd uintptr) error) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	switch {
	case v.state == VCPUClosed:
		return &StateError{Op: op, VCPU: v.ID, State: v.state, Err: ErrClosed}
	case v.state == VCPURunning && !v.onThread():
		return &StateError{Op: op, VCPU: v.ID, State: v.state, Err: ErrNotParked}
	}
	if err := fn(v.fd); err != nil {
		return fmt.Errorf("%s on vCPU %d: %w", op, v.ID, err)
	}
	return nil
}

// SetCPUID replaces the vCPU's CPUID table (KVM_SET_CPUID2); call it before
// the vCPU first runs (KVM refuses a different table after that).
func (v *VCPU) SetCPUID(c *kvm.CPUID) error {
	return v.ioctl("KVM_SET_CPUID2", func(fd uintptr) error {
		if err := kvm.SetCPUID2(fd, c); err != nil {
			return err
		}
		v.cpuid = c
		return nil
	})
}

// CPUID looks leaf and subleaf up in the CPUID table the vCPU was given,
// as the guest's CPUID instruction would see them before KVM's runtime
// adjustments (APIC ID, OSXSAVE): what a hypervisor that emulates CPUID
// for its guest reports. A leaf the table lacks reads as zeros.
func (v *VCPU) CPUID(leaf, subleaf uint32) (eax, ebx, ecx, edx uint32) {
	c := v.cpuid
	if c == nil {
		return
	}
	for _, e := range c.Entries {
		if e.Function != leaf {
			continue
		}
		if e.Flags&1 != 0 && e.Index != subleaf { // KVM_CPUID_FLAG_SIGNIFCANT_INDEX
			continue
		}
		return e.Eax, e.Ebx, e.Ecx, e.Edx
	}
	return
}

// Regs returns the general registers as of the current exit, in the
// kvm_run sync area (no ioctl). Changes take effect only after SetRegsDirty.
// vCPU thread only.
func (v *VCPU) Regs() (*kvm.Regs, error) {
	if !v.onThread() {
		return nil, v.notOwnThread("Regs")
	}
	return &v.run.Sync.Regs, nil
}

// SetRegsDirty makes KVM load the sync-area registers at the next entry.
// During an IN exit, which of the written-back %rax and the IN's data KVM
// applies last depends on the host (on PVM the written-back %rax wins; see
// TestINCompletionWithDirtyRegs), so a handler that writes registers back
// puts the IN's result in %rax too.
// vCPU thread only.
func (v *VCPU) SetRegsDirty() error {
	if !v.onThread() {
		return v.notOwnThread("SetRegsDirty")
	}
	v.run.DirtyRegs |= kvmext.SyncRegs
	return nil
}

// Paging returns the paging registers as of the current exit, from the sync
// area when special registers are synced and otherwise from one
// KVM_GET_SREGS per exit. vCPU thread only.
func (v *VCPU) Paging() (Paging, error) {
	if !v.onThread() {
		return Paging{}, v.notOwnThread("Paging")
	}
	s := &v.run.Sync.Sregs
	if !v.syncSregs {
		if !v.sregsValid {
			sr, err := kvm.GetSregs(v.fd)
			if err != nil {
				return Paging{}, fmt.Errorf("KVM_GET_SREGS on vCPU %d: %w", v.ID, err)
			}
			v.sregs, v.sregsValid = *sr, true
		}
		s = &v.sregs
	}
	return Paging{CR0: s.CR0, CR3: s.CR3, CR4: s.CR4, EFER: s.EFER}, nil
}

// Sregs returns the special registers as of the current exit: the sync
// area when they are synced, else one KVM_GET_SREGS per exit. Changes take
// effect at the next entry after SetSregsDirty. vCPU thread only.
func (v *VCPU) Sregs() (*kvm.Sregs, error) {
	if !v.onThread() {
		return nil, v.notOwnThread("Sregs")
	}
	if v.syncSregs {
		return &v.run.Sync.Sregs, nil
	}
	if !v.sregsValid {
		sr, err := kvm.GetSregs(v.fd)
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_SREGS on vCPU %d: %w", v.ID, err)
		}
		v.sregs, v.sregsValid = *sr, true
	}
	return &v.sregs, nil
}

// SetSregsDirty makes the guest resume with the special registers Sregs
// returned (through the sync area, or KVM_SET_SREGS before the entry).
// vCPU thread only.
func (v *VCPU) SetSregsDirty() error {
	if !v.onThread() {
		return v.notOwnThread("SetSregsDirty")
	}
	if v.syncSregs {
		v.run.DirtyRegs |= kvmext.SyncSregs
		return nil
	}
	if !v.sregsValid {
		return fmt.Errorf("SetSregsDirty on vCPU %d without Sregs", v.ID)
	}
	v.sregsDirty = true
	return nil
}

// CompleteExit finishes the port I/O the vCPU exited on now (one KVM_RUN
// with immediate_exit, which runs no guest code), so that the registers
// Regs and Sregs return are those after the instruction: RIP past it, an
// IN's data in %rax (a Xen hypercall's result, SetXenResult, likewise). A handler that moves the guest elsewhere (a
// hypervisor delivering an exception or returning from one) calls it
// before changing any register, since which of a register write-back and
// KVM's completion of the I/O applies last depends on the host. It does
// nothing when no I/O is pending. vCPU thread only.
func (v *VCPU) CompleteExit() error {
	if !v.onThread() {
		return v.notOwnThread("CompleteExit")
	}
	if !v.ioPending {
		return nil
	}
	if v.run.DirtyRegs != 0 || v.sregsDirty {
		return fmt.Errorf("CompleteExit on vCPU %d after registers were changed", v.ID)
	}
	if err := v.completePending(); err != nil {
		return fmt.Errorf("complete port I/O on vCPU %d: %w", v.ID, err)
	}
	v.ioPending = false
	v.sregsValid = false
	return nil
}

// GetRegs reads the registers with KVM_GET_REGS, for a vCPU that is not
// running (see VCPUState). An exit handler on the vCPU's own thread may call
// it too, but reads what KVM holds, not the sync area Regs returns.
func (v *VCPU) GetRegs() (*kvm.Regs, error) {
	var r *kvm.Regs
	err := v.ioctl("KVM_GET_REGS", func(fd uintptr) (err error) {
		r, err = kvm.GetRegs(fd)
		return err
	})
	return r, err
}

// SetRegs writes the registers with KVM_SET_REGS, for a vCPU that is not
// running.
func (v *VCPU) SetRegs(r *kvm.Regs) error {
	return v.ioctl("KVM_SET_REGS", func(fd uintptr) error { return kvm.SetRegs(fd, r) })
}

// GetSregs reads the special registers (KVM_GET_SREGS), for a vCPU that is
// not running.
func (v *VCPU) GetSregs() (*kvm.Sregs, error) {
	var s *kvm.Sregs
	err := v.ioctl("KVM_GET_SREGS", func(fd uintptr) (err error) {
		s, err = kvm.GetSregs(fd)
		return err
	})
	return s, err
}

// SetSregs writes the special registers (KVM_SET_SREGS), for a vCPU that is
// not running.
func (v *VCPU) SetSregs(s *kvm.Sregs) error {
	return v.ioctl("KVM_SET_SREGS", func(fd uintptr) error { return kvm.SetSregs(fd, s) })
}

// msrIA32TSC is the time-stamp counter (MSR_IA32_TSC).
const msrIA32TSC = 0x10

// TSC reads the guest's time-stamp counter (MSR_IA32_TSC), for a vCPU that
// is not running. It keeps counting while the vCPU is parked, as the
// guest's RDTSC would.
func (v *VCPU) TSC() (uint64, error) {
	var tsc uint64
	err := v.ioctl("read MSR_IA32_TSC", func(fd uintptr) (err error) {
		tsc, err = kvmext.GetMSR(fd, msrIA32TSC)
		return err
	})
	return tsc, err
}

// SetTSC sets the guest's time-stamp counter (MSR_IA32_TSC), for a vCPU
// that is not running: a restored guest's TSC resumes where it was saved.
func (v *VCPU) SetTSC(tsc uint64) error {
	return v.ioctl("write MSR_IA32_TSC", func(fd uintptr) error {
		return kvmext.SetMSR(fd, msrIA32TSC, tsc)
	})
}

// SetMSR writes model-specific register index (KVM_SET_MSRS, checking
// KVM took it), for a vCPU that is not running: a hypervisor sets up the
// system-call MSRs its guest model needs this way.
func (v *VCPU) SetMSR(index uint32, value uint64) error {
	return v.ioctl(fmt.Sprintf("write MSR %#x", index), func(fd uintptr) error {
		return kvmext.SetMSR(fd, index, value)
	})
}

// TSCKHz returns the guest's TSC frequency in kHz (KVM_GET_TSC_KHZ), for a
// vCPU that is not running.
func (v *VCPU) TSCKHz() (uint32, error) {
	var khz uint64
	err := v.ioctl("KVM_GET_TSC_KHZ", func(fd uintptr) (err error) {
		khz, err = kvm.GetTSCKHz(fd)
		if err == nil && (khz == 0 || khz > math.MaxUint32) {
			err = fmt.Errorf("KVM reports a TSC of %d kHz", khz)
		}
		return err
	})
	return uint32(khz), err
}

// Exits returns how many exits of the given KVM reason the vCPU has taken
// (KVM_EXIT_INTR included, which counts kicks and signals).
func (v *VCPU) Exits(reason uint32) uint64 {
	if int(reason) >= len(v.exits) {
		return 0
	}
	return v.exits[reason].Load()
}

// TotalExits returns the number of exits of every reason but KVM_EXIT_INTR.
func (v *VCPU) TotalExits() uint64 {
	var n uint64
	for i := range v.exits {
		if i != kvmext.ExitIntr {
			n += v.exits[i].Load()
		}
	}
	return n
}

// offerInterrupt injects the pending interrupt if the guest can take one
// now (KVM_INTERRUPT), and otherwise asks KVM to exit as soon as it can.
func (v *VCPU) offerInterrupt() error {
	if v.PendingInterrupt == nil {
		return nil
	}
	vec, ok := v.PendingInterrupt(v)
	if !ok {
		v.run.RequestInterruptWindow = 0
		if v.retryDelay != 0 {
			v.retryDelay = 0
			v.retryTimer.Stop()
		}
		return nil
	}
	if v.m.irqchip != IRQChipNone {
		return v.injectEvent(vec)
	}
	ready := v.run.ReadyForInterruptInjection != 0 && v.run.IFFlag != 0
	if ready || v.interruptible {
		v.interruptible = false
		v.run.RequestInterruptWindow = 0
		if err := kvmext.Interrupt(v.fd, vec); err != nil {
			return err
		}
		v.injected.Add(1)
		return nil
	}
	v.run.RequestInterruptWindow = 1
	return nil
}

// SetInterruptible sets RFLAGS.IF in the registers the current exit hands
// back and lets a pending interrupt be injected at the very next entry: the
// exit was an I/O or HLT exit, whose completion leaves no interrupt shadow.
// It is how a hypercall that re-enables event delivery (SCHEDOP_block) has
// the upcall taken as it returns, without relying on an interrupt-window
// exit (which nested hosts may never deliver). vCPU thread only.
func (v *VCPU) SetInterruptible() error {
	if !v.onThread() {
		return v.notOwnThread("SetInterruptible")
	}
	r := &v.run.Sync.Regs
	if r.RFLAGS&(1<<9) == 0 {
		r.RFLAGS |= 1 << 9
		v.run.DirtyRegs |= kvmext.SyncRegs
	}
	v.interruptible = true
	return nil
}

// Injected returns how many interrupts the vCPU has injected.
func (v *VCPU) Injected() uint64 { return v.injected.Load() }

// Interrupt makes the vCPU look at PendingInterrupt again soon: it ends a
// Block and kicks the thread out of the guest. Any goroutine may call it;
// on the vCPU's own thread it only ends a Block, since the thread asks
// PendingInterrupt before its next entry anyway.
func (v *VCPU) Interrupt() {
	v.Wake()
	v.kick()
}

// Block parks the calling vCPU thread until Wake, a pause or a stop; it is
// how a guest that waits for an event (HLT, SCHEDOP_block) stops consuming a
// host CPU. vCPU thread only.
func (v *VCPU) Block() error {
	if !v.onThread() {
		return v.notOwnThread("Block")
	}
	v.block()
	return nil
}

func (v *VCPU) block() {
	v.mu.Lock()
	for v.req&(reqWake|reqPause|reqStop) == 0 {
		v.cond.Wait()
	}
	v.req &^= reqWake
	v.mu.Unlock()
}

// Wake ends a Block, or makes the next one return at once. Any goroutine
// may call it.
func (v *VCPU) Wake() {
	v.mu.Lock()
	v.req |= reqWake
	v.cond.Broadcast()
	v.mu.Unlock()
}

// kick makes a running vCPU leave KVM_RUN soon (immediate_exit and a
// signal), so that it sees what was just asked of it. A vCPU never kicks
// itself: its own thread looks at its requests and PendingInterrupt before
// every entry. Nor does a vCPU that is not running need a kick.
func (v *VCPU) kick() {
	if v.onThread() {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.state != VCPURunning || v.run == nil {
		return
	}
	if err := kvmext.Kick(v.run, int(v.tid.Load())); err != nil {
		slog.Warn("kick vCPU", "vcpu", v.ID, "err", err)
	}
}

func (v *VCPU) requestPause() {
	v.mu.Lock()
	v.req |= reqPause
	v.cond.Broadcast()
	v.mu.Unlock()
	v.kick()
}

func (v *VCPU) unpause() {
	v.mu.Lock()
	v.req &^= reqPause
	if v.state == VCPUParked && v.req&reqStop == 0 {
		v.setState(VCPURunning)
	}
	v.cond.Broadcast()
	v.mu.Unlock()
}

func (v *VCPU) stop() {
	v.mu.Lock()
	v.req |= reqStop
	v.cond.Broadcast()
	v.mu.Unlock()
	v.kick()
}

// start makes a created vCPU Running, or Parked when a pause is already
// requested, before its thread exists; false if it is not Created.
func (v *VCPU) start() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.state != VCPUCreated {
		return false
	}
	if v.req&reqPause != 0 {
		v.setState(VCPUParked)
	} else {
		v.setState(VCPURunning)
	}
	return true
}

// Parked reports whether the vCPU is not running guest code and cannot
// start to without an Unpause: it is parked, has ended, or is closed.
func (v *VCPU) Parked() bool {
	switch v.State() {
	case VCPUParked, VCPUEnded, VCPUClosed:
		return true
	}
	return false
}

// waitParked waits until the vCPU is not running: parked, ended, closed, or
// never started. It fails with ErrUnpaused when no pause (or stop) is
// requested any more, since the vCPU would then never park.
func (v *VCPU) waitParked(ctx context.Context) error {
	if v.onThread() {
		return &StateError{Op: "wait for pause", VCPU: v.ID, State: VCPURunning, Err: ErrWaitOnOwnThread}
	}
	stop := context.AfterFunc(ctx, func() {
		v.mu.Lock()
		v.cond.Broadcast()
		v.mu.Unlock()
	})
	defer stop()
	v.mu.Lock()
	defer v.mu.Unlock()
	for v.state == VCPURunning {
		if v.req&(reqPause|reqStop) == 0 {
			return &StateError{Op: "wait for pause", VCPU: v.ID, State: v.state, Err: ErrUnpaused}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for vCPU %d to pause: %w", v.ID, ctx.Err())
		}
		v.cond.Wait()
	}
	return nil
}

// completePendingIfStale refreshes the sync area (see checkpoint) when
// the vCPU was parked or never ran since its last exit.
func (v *VCPU) completePendingIfStale() error {
	v.mu.Lock()
	stale := v.syncStale
	v.mu.Unlock()
	if !stale {
		return nil
	}
	if err := v.completePending(); err != nil {
		return err
	}
	v.mu.Lock()
	v.syncStale = false
	v.mu.Unlock()
	return nil
}

// settle runs Settle, if set, on the vCPU's thread; see VCPU.Settle.
func (v *VCPU) settle() (bool, error) {
	if v.Settle == nil {
		return true, nil
	}
	atGuest, err := v.Settle(v)
	if err != nil {
		return false, v.crash(err.Error())
	}
	return atGuest, nil
}

// completePending finishes an I/O instruction the guest exited on (KVM
// completes it at the next KVM_RUN) and loads the register changes an
// exit handler made (the sync area's, and special registers cached for
// KVM_SET_SREGS), without running guest code, so that the architectural
// state is consistent, and what GetRegs reads, while the vCPU is parked.
func (v *VCPU) completePending() error {
	if v.sregsDirty {
		if err := kvm.SetSregs(v.fd, &v.sregs); err != nil {
			return fmt.Errorf("KVM_SET_SREGS: %w", err)
		}
		v.sregsDirty = false
	}
	v.sregsValid = false
	v.run.ImmediateExit = 1
	err := kvmext.RunVCPU(v.fd)
	v.run.ImmediateExit = 0
	v.ioPending = false
	if err != nil && !errors.Is(err, kvmext.ErrInterrupted) {
		return err
	}
	return nil
}

// checkpoint runs on the vCPU's thread before every entry: it parks the
// vCPU while a pause is requested (Running -> Parked, then back once
// Unpause made it Running), and returns false when the vCPU must stop.
// It parks only at a guest instruction boundary (see Settle): until then
// it lets the vCPU enter again, the pause still requested.
func (v *VCPU) checkpoint() (bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for {
		if v.req&reqStop != 0 {
			return false, nil
		}
		if v.state != VCPURunning {
			v.syncStale = true // SetRegs and the like may come meanwhile
			v.cond.Wait()      // Parked: until Unpause or a stop
			continue
		}
		if v.req&reqPause == 0 {
			if !v.syncStale {
				return true, nil
			}
			// Load the sync area from KVM, so that Regs, BeforeEntry
			// and Settle see what was set while the vCPU was parked
			// (or before it first ran), not the last exit's registers.
			v.mu.Unlock()
			err := v.completePending()
			v.mu.Lock()
			if err != nil {
				return false, err
			}
			v.syncStale = false
			continue
		}
		// Still Running, so nobody else touches the vCPU meanwhile.
		v.mu.Unlock()
		var atGuest bool
		err := v.completePendingIfStale()
		if err == nil {
			atGuest, err = v.settle()
		}
		if err == nil && !atGuest {
			// The hypervisor's code runs first; the pause stays
			// requested and is looked at again before the next entry.
			v.run.ImmediateExit = 0
			v.mu.Lock()
			return true, nil
		}
		if err == nil {
			err = v.completePending()
		}
		v.mu.Lock()
		if err != nil {
			return false, err
		}
		if v.req&(reqPause|reqStop) == reqPause {
			v.setState(VCPUParked)
		}
	}
}

func (v *VCPU) loop(ctx context.Context) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	v.tid.Store(int64(unix.Gettid()))
	defer func() {
		v.mu.Lock()
		v.tid.Store(0)
		v.setState(VCPUEnded)
		v.mu.Unlock()
	}()
	defer context.AfterFunc(ctx, v.stop)()
	if v.m.irqchip != IRQChipNone {
		defer v.probeHalt()()
	}

	for {
		ok, err := v.checkpoint()
		if err != nil || !ok {
			return err
		}
		if v.entryTrap.Load() && v.Debug != nil {
			stopped, err := v.trapEntry()
			if err != nil {
				return err
			}
			if stopped {
				continue // the handler's pause, if it asked for one
			}
		}
		if v.BeforeEntry != nil {
			if err := v.BeforeEntry(v); errors.Is(err, ErrSkipEntry) {
				continue
			} else if err != nil {
				return v.crash(err.Error())
			}
		}
		if v.sregsDirty {
			if err := kvm.SetSregs(v.fd, &v.sregs); err != nil {
				return v.crash(fmt.Sprintf("KVM_SET_SREGS: %v", err))
			}
			v.sregsDirty = false
		}
		v.sregsValid = false
		if err := v.offerInterrupt(); err != nil {
			return v.crash(err.Error())
		}
		err = kvmext.RunVCPU(v.fd)
		v.ioPending = false
		if errors.Is(err, kvmext.ErrInterrupted) {
			v.run.ImmediateExit = 0
			v.exits[kvmext.ExitIntr].Add(1)
			if err := v.checkHaltedForever(); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return v.crash(fmt.Sprintf("KVM_RUN failed: %v", err))
		}
		if err := v.handleExit(); err != nil {
			return err
		}
	}
}

func (v *VCPU) handleExit() error {
	reason := v.run.ExitReason
	if int(reason) < len(v.exits) {
		v.exits[reason].Add(1)
	}
	switch reason {
	case kvmext.ExitIO:
		v.ioPending = true
		io := v.run.IO()
		n := uint64(io.Size) * uint64(io.Count)
		if io.DataOffset > uint64(len(v.runMem)) || n > uint64(len(v.runMem))-io.DataOffset {
			return v.crash(fmt.Sprintf("KVM reported port I/O data outside kvm_run (offset %#x, %d bytes)", io.DataOffset, n))
		}
		data := v.runMem[io.DataOffset : io.DataOffset+n]
		write := io.Direction == kvmext.IODirOut
		dev := v.m.bus.lookup(io.Port)
		if dev == nil {
			if _, seen := v.silentPorts.LoadOrStore(io.Port, true); !seen {
				slog.Debug("port I/O to an unclaimed port", "vcpu", v.ID, "port", fmt.Sprintf("%#x", io.Port), "write", write)
			}
			if !write {
				for i := range data {
					data[i] = 0xff
				}
			}
			return nil
		}
		if err := dev.PIO(v, io.Port, write, data); err != nil {
			return v.crash(err.Error())
		}
		return nil
	case kvmext.ExitHLT:
		if v.Halt != nil {
			if err := v.Halt(v); err != nil {
				return v.crash(err.Error())
			}
			return nil
		}
		if v.run.Sync.Regs.RFLAGS&(1<<9) == 0 {
			return v.crash("HLT with interrupts disabled: the vCPU can never run again")
		}
		if v.PendingInterrupt != nil {
			if _, ok := v.PendingInterrupt(v); ok {
				return nil // it is taken at the next entry
			}
		}
		v.block()
		return nil
	case kvmext.ExitMMIO:
		e := v.run.MMIO()
		if v.MMIO != nil && e.Len >= 1 && e.Len <= uint32(len(e.Data)) {
			v.ioPending = true // KVM completes a read at the next KVM_RUN, as for port I/O
			if err := v.MMIO(v, e.PhysAddr, e.IsWrite != 0, e.Data[:e.Len]); err != nil {
				return v.crash(err.Error())
			}
			return nil
		}
		what := "read from"
		if e.IsWrite != 0 {
			what = "write to"
		}
		return v.crash(fmt.Sprintf("%d-byte %s unbacked guest-physical address %#x", e.Len, what, e.PhysAddr))
	case kvmext.ExitX86RDMSR, kvmext.ExitX86WRMSR:
		e := v.run.MSR()
		if v.MSR != nil {
			if err := v.MSR(v, e); err != nil {
				return v.crash(err.Error())
			}
			return nil
		}
		e.Error = 1
		return nil
	case kvmext.ExitXen:
		return v.xenExit()
	case kvmext.ExitDebug:
		if v.Debug != nil {
			rip := v.run.Sync.Regs.RIP
			atGuest, err := v.settle()
			if err != nil {
				return err
			}
			if !atGuest {
				return nil // in the hypervisor's code: not the guest's stop
			}
			e := *v.run.Debug()
			if r := v.run.Sync.Regs.RIP; r != rip {
				e.PC = r // Settle brought it back to the guest's code
			}
			if err := v.Debug(v, &e); err != nil {
				return v.crash(err.Error())
			}
			return nil
		}
		return v.crash(fmt.Sprintf("debug exception %d with no debugger attached", v.run.Debug().Exception))
	case kvmext.ExitShutdown:
		return v.crash("triple fault (KVM_EXIT_SHUTDOWN)")
	case kvmext.ExitFailEntry:
		e := v.run.FailEntry()
		return v.crash(fmt.Sprintf("VM entry failed: hardware reason %#x on CPU %d", e.HardwareEntryFailureReason, e.CPU))
	case kvmext.ExitInternalError:
		e := v.run.Internal()
		if e.Suberror == kvmInternalErrorEmulation && v.Emulate != nil {
			handled, err := v.Emulate(v)
			if err != nil {
				return v.crash(err.Error())
			}
			if handled {
				return nil
			}
		}
		n := e.NData
		if n > uint32(len(e.Data)) {
			n = uint32(len(e.Data))
		}
		return v.crash(fmt.Sprintf("KVM internal error: suberror %d, data %#x", e.Suberror, e.Data[:n]))
	case kvmext.ExitIntr, kvmext.ExitIRQWindowOpen:
		return nil
	default:
		return v.crash(fmt.Sprintf("unexpected exit %s", kvmext.ExitName(reason)))
	}
}

func (v *VCPU) close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	var errs []error
	if v.runMem != nil {
		errs = append(errs, unix.Munmap(v.runMem))
		v.runMem, v.run = nil, nil
	}
	if v.fd != 0 {
		errs = append(errs, unix.Close(int(v.fd)))
		v.fd = 0
	}
	v.setState(VCPUClosed)
	return errors.Join(errs...)
}
