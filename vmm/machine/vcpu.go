package machine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"

	"github.com/xenresume/xenresume/vmm/kvmext"
)

// VCPU is one virtual CPU. Its exits are handled on its own OS thread; the
// methods documented "vCPU thread only" may be called only from an exit
// handler running there.
type VCPU struct {
	ID int

	m         *Machine
	fd        uintptr
	run       *kvmext.Run
	runMem    []byte
	syncSregs bool
	tid       atomic.Int64

	// Per-exit cache of the special registers when they are not synced.
	sregs      kvm.Sregs
	sregsValid bool

	mu       sync.Mutex
	cond     *sync.Cond
	pauseReq bool
	parked   bool
	stopped  bool
	ended    bool
	wake     bool

	exits       [64]atomic.Uint64
	silentPorts sync.Map // ports already logged as unclaimed

	// Halt handles HLT; the default blocks until Wake when interrupts are
	// enabled and crashes the domain when they are not.
	Halt func(v *VCPU) error
	// MSR handles user-space MSR exits; the default injects #GP.
	MSR func(v *VCPU, e *kvmext.MSRExit) error
	// Debug handles debug exits (single-step, breakpoints); the default
	// crashes the domain.
	Debug func(v *VCPU, e *kvmext.DebugExit) error
	// PendingInterrupt, asked before every entry, returns an external
	// interrupt vector the vCPU should take. It is level-style: the vCPU
	// injects it whenever the guest can take interrupts, and asks again
	// before the next entry, until it reports none. Set it before Start.
	PendingInterrupt func(v *VCPU) (vector uint8, ok bool)
	injected         atomic.Uint64
	// interruptible: the next entry runs with RFLAGS.IF set by the VMM
	// and no interrupt shadow (see SetInterruptible).
	interruptible bool
}

func newVCPU(m *Machine, id int, cpuid *kvm.CPUID, syncSregs bool) (*VCPU, error) {
	fd, err := kvm.CreateVCPU(m.vmFd, id)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	v := &VCPU{ID: id, m: m, fd: fd, syncSregs: syncSregs}
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

// Fd returns the vCPU file descriptor.
func (v *VCPU) Fd() uintptr { return v.fd }

// Machine returns the machine the vCPU belongs to.
func (v *VCPU) Machine() *Machine { return v.m }

// SetCPUID replaces the vCPU's CPUID table; call before the vCPU first runs.
func (v *VCPU) SetCPUID(c *kvm.CPUID) error {
	if err := kvm.SetCPUID2(v.fd, c); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2 on vCPU %d: %w", v.ID, err)
	}
	return nil
}

// Regs returns the general registers as of the current exit, in the
// kvm_run sync area (no ioctl). Changes take effect only after SetRegsDirty.
// vCPU thread only.
func (v *VCPU) Regs() *kvm.Regs { return &v.run.Sync.Regs }

// SetRegsDirty makes KVM load the sync-area registers at the next entry.
// vCPU thread only.
func (v *VCPU) SetRegsDirty() { v.run.DirtyRegs |= kvmext.SyncRegs }

// Paging returns the paging registers as of the current exit, from the sync
// area when special registers are synced and otherwise from one
// KVM_GET_SREGS per exit. vCPU thread only.
func (v *VCPU) Paging() (Paging, error) {
	s := &v.run.Sync.Sregs
	if !v.syncSregs {
		if !v.sregsValid {
			sr, err := kvm.GetSregs(v.fd)
			if err != nil {
				return Paging{}, fmt.Errorf("KVM_GET_SREGS: %w", err)
			}
			v.sregs, v.sregsValid = *sr, true
		}
		s = &v.sregs
	}
	return Paging{CR0: s.CR0, CR3: s.CR3, CR4: s.CR4, EFER: s.EFER}, nil
}

// GetRegs reads the registers with KVM_GET_REGS; for a vCPU that is parked
// or not yet started.
func (v *VCPU) GetRegs() (*kvm.Regs, error) {
	r, err := kvm.GetRegs(v.fd)
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_REGS on vCPU %d: %w", v.ID, err)
	}
	return r, nil
}

// SetRegs writes the registers with KVM_SET_REGS; for a parked vCPU or one
// not yet started.
func (v *VCPU) SetRegs(r *kvm.Regs) error {
	if err := kvm.SetRegs(v.fd, r); err != nil {
		return fmt.Errorf("KVM_SET_REGS on vCPU %d: %w", v.ID, err)
	}
	return nil
}

// GetSregs reads the special registers (KVM_GET_SREGS).
func (v *VCPU) GetSregs() (*kvm.Sregs, error) {
	s, err := kvm.GetSregs(v.fd)
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_SREGS on vCPU %d: %w", v.ID, err)
	}
	return s, nil
}

// SetSregs writes the special registers (KVM_SET_SREGS).
func (v *VCPU) SetSregs(s *kvm.Sregs) error {
	if err := kvm.SetSregs(v.fd, s); err != nil {
		return fmt.Errorf("KVM_SET_SREGS on vCPU %d: %w", v.ID, err)
	}
	return nil
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
		return nil
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
func (v *VCPU) SetInterruptible() {
	r := &v.run.Sync.Regs
	if r.RFLAGS&(1<<9) == 0 {
		r.RFLAGS |= 1 << 9
		v.SetRegsDirty()
	}
	v.interruptible = true
}

// Injected returns how many interrupts the vCPU has injected.
func (v *VCPU) Injected() uint64 { return v.injected.Load() }

// Interrupt makes the vCPU look at PendingInterrupt again soon: it ends a
// Block and kicks the thread out of the guest.
func (v *VCPU) Interrupt() {
	v.Wake()
	// A vCPU's own thread needs no kick: it checks PendingInterrupt
	// before its next entry.
	if tid := v.tid.Load(); tid != 0 && tid == int64(unix.Gettid()) {
		return
	}
	v.kick()
}

// Block parks the calling vCPU thread until Wake, a pause or a stop; it is
// how a guest that waits for an event (HLT, SCHEDOP_block) stops consuming a
// host CPU. vCPU thread only.
func (v *VCPU) Block() {
	v.mu.Lock()
	for !v.wake && !v.pauseReq && !v.stopped {
		v.cond.Wait()
	}
	v.wake = false
	v.mu.Unlock()
}

// Wake ends a Block, or makes the next one return at once.
func (v *VCPU) Wake() {
	v.mu.Lock()
	v.wake = true
	v.cond.Broadcast()
	v.mu.Unlock()
}

func (v *VCPU) kick() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.run == nil { // closed
		return
	}
	if err := kvmext.Kick(v.run, int(v.tid.Load())); err != nil {
		slog.Warn("kick vCPU", "vcpu", v.ID, "err", err)
	}
}

func (v *VCPU) requestPause() {
	v.mu.Lock()
	v.pauseReq = true
	v.cond.Broadcast()
	v.mu.Unlock()
	v.kick()
}

func (v *VCPU) unpause() {
	v.mu.Lock()
	v.pauseReq = false
	v.cond.Broadcast()
	v.mu.Unlock()
}

func (v *VCPU) stop() {
	v.mu.Lock()
	v.stopped = true
	v.cond.Broadcast()
	v.mu.Unlock()
	v.kick()
}

// Parked reports whether the vCPU is paused (or has ended).
func (v *VCPU) Parked() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.parked || v.ended
}

func (v *VCPU) waitParked(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		v.mu.Lock()
		v.cond.Broadcast()
		v.mu.Unlock()
	})
	defer stop()
	v.mu.Lock()
	defer v.mu.Unlock()
	for !v.parked && !v.ended {
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for vCPU %d to pause: %w", v.ID, ctx.Err())
		}
		v.cond.Wait()
	}
	return nil
}

// completePending finishes an I/O instruction the guest exited on (KVM
// completes it at the next KVM_RUN) without running guest code, so that the
// architectural state is consistent while the vCPU is parked.
func (v *VCPU) completePending() error {
	v.run.ImmediateExit = 1
	err := kvmext.RunVCPU(v.fd)
	v.run.ImmediateExit = 0
	if err != nil && !errors.Is(err, kvmext.ErrInterrupted) {
		return err
	}
	return nil
}

// checkpoint parks the vCPU while a pause is requested. It returns false
// when the vCPU must stop.
func (v *VCPU) checkpoint() (bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.stopped {
		return false, nil
	}
	if !v.pauseReq {
		return true, nil
	}
	v.mu.Unlock()
	err := v.completePending()
	v.mu.Lock()
	if err != nil {
		return false, err
	}
	v.parked = true
	v.cond.Broadcast()
	for v.pauseReq && !v.stopped {
		v.cond.Wait()
	}
	v.parked = false
	return !v.stopped, nil
}

func (v *VCPU) loop(ctx context.Context) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	v.tid.Store(int64(unix.Gettid()))
	defer func() {
		v.tid.Store(0)
		v.mu.Lock()
		v.ended = true
		v.cond.Broadcast()
		v.mu.Unlock()
	}()
	defer context.AfterFunc(ctx, v.stop)()

	for {
		ok, err := v.checkpoint()
		if err != nil || !ok {
			return err
		}
		v.sregsValid = false
		if err := v.offerInterrupt(); err != nil {
			return v.crash(err.Error())
		}
		err = kvmext.RunVCPU(v.fd)
		if errors.Is(err, kvmext.ErrInterrupted) {
			v.run.ImmediateExit = 0
			v.exits[kvmext.ExitIntr].Add(1)
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
		v.Block()
		return nil
	case kvmext.ExitMMIO:
		e := v.run.MMIO()
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
	case kvmext.ExitDebug:
		if v.Debug != nil {
			if err := v.Debug(v, v.run.Debug()); err != nil {
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
	return errors.Join(errs...)
}
