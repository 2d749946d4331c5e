// Package machine is the KVM layer of the VMM: a VM with its guest memory,
// and vCPUs that each own an OS thread and handle their own exits, in the
// manner of Firecracker's vmm and rust-vmm's kvm-ioctls. It knows nothing of
// Xen: port I/O goes to devices registered on an I/O bus, and everything a
// guest does that the VMM cannot handle ends as a *CrashError with a report.
//
// Every KVM ioctl of the VMM goes through this package (vmm/kvmext is its
// helper for the ones gokvm lacks), which knows who may issue it: a vCPU's
// registers and KVM state are touched only on its own thread, or while it
// is provably not running (VCPUState), and the methods check which.
package machine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"

	"github.com/xenresume/xenresume/vmm/kvmext"
)

// DevKVM is the KVM device; tests and callers may point it elsewhere.
var DevKVM = "/dev/kvm"

// Addresses KVM needs for its own use on Intel hosts (real-mode TSS and the
// EPT identity map), placed in the unused top of the 32-bit space.
const (
	tssAddr         = 0xfffbd000
	identityMapAddr = 0xfffbc000
)

// Config describes a machine.
type Config struct {
	MemSize  uint64 // bytes of RAM at guest-physical 0; a multiple of 4 KiB
	NumVCPUs int
	// SyncSregs also makes KVM copy the special registers into the kvm_run
	// area at every exit (KVM_SYNC_X86_SREGS). General registers are
	// always synced.
	SyncSregs bool
	// IRQChip is which interrupt controllers KVM models in the kernel
	// (IRQChipNone by default).
	IRQChip IRQChip
}

// Machine is one KVM VM.
type Machine struct {
	kvmFile *os.File
	vmFd    uintptr
	mem     Memory
	vcpus   []*VCPU
	bus     IOBus
	runSize int
	irqchip IRQChip

	mu      sync.Mutex
	cond    *sync.Cond
	closed  bool
	started bool
	// dirtyLog: every slot logs dirty pages (SetDirtyLog).
	dirtyLog bool
	onClose  []func()
	running  sync.WaitGroup
}

// Available reports whether KVM can be used on this host, and why not.
func Available() error {
	f, err := os.OpenFile(DevKVM, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// New creates a VM with cfg.MemSize bytes of RAM at guest-physical 0 and
// cfg.NumVCPUs vCPUs (not yet running).
func New(cfg Config) (m *Machine, err error) {
	if cfg.MemSize == 0 || cfg.MemSize%PageSize != 0 {
		return nil, fmt.Errorf("memory size %#x is not a positive multiple of 4 KiB", cfg.MemSize)
	}
	if cfg.NumVCPUs < 1 || cfg.NumVCPUs > 64 {
		return nil, fmt.Errorf("%d vCPUs: want 1 to 64", cfg.NumVCPUs)
	}
	f, err := os.OpenFile(DevKVM, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err // *fs.PathError: "open /dev/kvm: ..." already
	}
	m = &Machine{kvmFile: f}
	m.cond = sync.NewCond(&m.mu)
	built := m // the error returns below return a nil m
	defer func() {
		if err != nil {
			built.Close()
		}
	}()
	if v, err := kvm.GetAPIVersion(f.Fd()); err != nil || v != 12 {
		return nil, fmt.Errorf("KVM API version %d (%v), want 12", v, err)
	}
	if n, err := kvmext.CheckExtension(f.Fd(), kvmext.CapSyncRegs); err != nil || n == 0 {
		return nil, fmt.Errorf("KVM lacks KVM_CAP_SYNC_REGS (%v)", err)
	}
	if n, err := kvmext.CheckExtension(f.Fd(), kvmext.CapImmediateExit); err != nil || n == 0 {
		return nil, fmt.Errorf("KVM lacks KVM_CAP_IMMEDIATE_EXIT (%v)", err)
	}
	vmFd, err := retryEINTR(func() (uintptr, error) { return kvm.CreateVM(f.Fd()) })
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	m.vmFd = vmFd
	if err := kvm.SetTSSAddr(vmFd, tssAddr); err != nil {
		return nil, fmt.Errorf("KVM_SET_TSS_ADDR: %w", err)
	}
	if err := kvm.SetIdentityMapAddr(vmFd, identityMapAddr); err != nil {
		return nil, fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR: %w", err)
	}
	if _, err := m.AddRegion("ram", 0, cfg.MemSize); err != nil {
		return nil, err
	}
	size, err := kvm.GetVCPUMMmapSize(f.Fd())
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	m.runSize = int(size)
	if err := m.createIRQChip(cfg.IRQChip); err != nil {
		return nil, err
	}
	cpuid, err := m.supportedCPUID()
	if err != nil {
		return nil, err
	}
	for i := 0; i < cfg.NumVCPUs; i++ {
		v, err := newVCPU(m, i, cpuid, cfg.SyncSregs)
		if err != nil {
			return nil, err
		}
		m.vcpus = append(m.vcpus, v)
	}
	return m, nil
}

// Fd returns the VM file descriptor, for tests of kvmext's raw calls (VM
// capabilities, the MSR filter). The VMM's own KVM calls go through this
// package.
func (m *Machine) Fd() uintptr { return m.vmFd }

// Memory returns the guest-physical address space.
func (m *Machine) Memory() *Memory { return &m.mem }

// Bus returns the port-I/O bus.
func (m *Machine) Bus() *IOBus { return &m.bus }

// VCPUs returns the vCPUs.
func (m *Machine) VCPUs() []*VCPU { return m.vcpus }

// AddRegion backs size bytes of guest-physical space at gpa with fresh,
// zeroed anonymous memory (populated lazily by the kernel) and registers it
// with KVM. It returns the host view of the region. Regions are added before
// Start: the vCPU threads read the region list without a lock.
func (m *Machine) AddRegion(name string, gpa, size uint64) ([]byte, error) {
	m.mu.Lock()
	started := m.started || m.closed
	m.mu.Unlock()
	if started {
		return nil, fmt.Errorf("region %s: the machine has started", name)
	}
	if size == 0 || size%PageSize != 0 || gpa%PageSize != 0 {
		return nil, fmt.Errorf("region %s at %#x size %#x is not page-aligned", name, gpa, size)
	}
	for _, r := range m.mem.regions {
		if gpa < r.GPA+uint64(len(r.Mem)) && r.GPA < gpa+size {
			return nil, fmt.Errorf("region %s at %#x overlaps %s", name, gpa, r.Name)
		}
	}
	mem, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("mmap %s (%d bytes): %w", name, size, err)
	}
	slot := uint32(len(m.mem.regions))
	region := kvm.UserspaceMemoryRegion{
		Slot: slot, GuestPhysAddr: gpa, MemorySize: size,
		UserspaceAddr: uint64(sliceAddr(mem)),
	}
	if err := kvm.SetUserMemoryRegion(m.vmFd, &region); err != nil {
		_ = unix.Munmap(mem)
		return nil, fmt.Errorf("KVM_SET_USER_MEMORY_REGION %s: %w", name, err)
	}
	m.mem.regions = append(m.mem.regions, Region{Name: name, GPA: gpa, Mem: mem, Slot: slot})
	m.mem.link()
	return mem, nil
}

// AddAlias registers size bytes of an existing region's host memory, from
// offset off in the region named of, a second time at guest-physical gpa:
// the guest sees the same bytes at both addresses. A PV domain's machine
// frames are such an alias of its RAM, so that page tables holding machine
// frame numbers are walked by the hardware directly. Aliases, like regions,
// are added before Start.
func (m *Machine) AddAlias(name string, gpa uint64, of string, off, size uint64) error {
	m.mu.Lock()
	started := m.started || m.closed
	m.mu.Unlock()
	if started {
		return fmt.Errorf("alias %s: the machine has started", name)
	}
	if size == 0 || size%PageSize != 0 || gpa%PageSize != 0 || off%PageSize != 0 {
		return fmt.Errorf("alias %s at %#x size %#x is not page-aligned", name, gpa, size)
	}
	var src *Region
	for i := range m.mem.regions {
		if m.mem.regions[i].Name == of {
			src = &m.mem.regions[i]
		}
	}
	if src == nil {
		return fmt.Errorf("alias %s: no region %s", name, of)
	}
	if off > uint64(len(src.Mem)) || size > uint64(len(src.Mem))-off {
		return fmt.Errorf("alias %s: %#x+%#x runs past the end of %s", name, off, size, of)
	}
	for _, r := range m.mem.regions {
		if gpa < r.GPA+uint64(len(r.Mem)) && r.GPA < gpa+size {
			return fmt.Errorf("alias %s at %#x overlaps %s", name, gpa, r.Name)
		}
	}
	mem := src.Mem[off : off+size : off+size]
	slot := uint32(len(m.mem.regions))
	region := kvm.UserspaceMemoryRegion{
		Slot: slot, GuestPhysAddr: gpa, MemorySize: size,
		UserspaceAddr: uint64(sliceAddr(mem)),
	}
	if _, err := retryEINTR(func() (uintptr, error) { return 0, kvm.SetUserMemoryRegion(m.vmFd, &region) }); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION alias %s: %w", name, err)
	}
	m.mem.regions = append(m.mem.regions, Region{Name: name, GPA: gpa, Mem: mem, Slot: slot, Alias: true})
	m.mem.link()
	return nil
}

// supported caches KVM_GET_SUPPORTED_CPUID: the host's answer does not
// change, and asking costs a noticeable share of creating a machine.
var supported struct {
	sync.Mutex
	cpuid *kvm.CPUID
}

// supportedCPUID returns what KVM supports, to be handed to every vCPU
// unchanged (read-only: it is shared by all machines).
func (m *Machine) supportedCPUID() (*kvm.CPUID, error) {
	supported.Lock()
	defer supported.Unlock()
	if supported.cpuid != nil {
		return supported.cpuid, nil
	}
	c := &kvm.CPUID{Nent: 100, Entries: make([]kvm.CPUIDEntry2, 100)}
	if err := kvm.GetSupportedCPUID(m.kvmFile.Fd(), c); err != nil {
		return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	c.Entries = c.Entries[:c.Nent]
	supported.cpuid = c
	return c, nil
}

// Start runs every vCPU on its own thread until ctx is done, the machine is
// closed, or a vCPU fails; onExit is called once per vCPU with the error
// that ended it (nil when it was stopped), after the vCPU became Ended. A
// vCPU for which a pause was requested (RequestPause before Start) starts
// Parked. Start does nothing on a closed machine, and starts each vCPU once.
func (m *Machine) Start(ctx context.Context, onExit func(v *VCPU, err error)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.started = true
	for _, v := range m.vcpus {
		if !v.start() {
			slog.Warn("vCPU already started", "vcpu", v.ID)
			continue
		}
		m.running.Add(1)
		go func(v *VCPU) {
			defer m.running.Done()
			err := v.loop(ctx)
			if onExit != nil {
				onExit(v, err)
			}
		}(v)
	}
}

// RequestPause asks every vCPU to stop running guest code and returns at
// once; it is safe to call from a vCPU's own exit handler (that vCPU parks
// when the handler returns, before it enters the guest again).
func (m *Machine) RequestPause() {
	for _, v := range m.vcpus {
		v.requestPause()
	}
}

// Pause stops every vCPU and waits until each is parked (or has ended, or
// never started). While paused, vCPU state is consistent: any I/O the guest
// was doing when it exited has been completed, so RIP is past the
// instruction. It fails with ErrUnpaused if an Unpause withdraws the pause
// before a vCPU parks, and with ErrWaitOnOwnThread on a vCPU's own thread
// (an exit handler uses RequestPause).
func (m *Machine) Pause(ctx context.Context) error {
	m.RequestPause()
	return m.WaitPaused(ctx)
}

// WaitPaused waits until every vCPU is parked, has ended or never started.
// It fails with ErrUnpaused for a running vCPU no pause is requested of.
func (m *Machine) WaitPaused(ctx context.Context) error {
	for _, v := range m.vcpus {
		if err := v.waitParked(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Unpause lets every vCPU run again: each parked vCPU is Running when it
// returns, its registers its thread's again.
func (m *Machine) Unpause() {
	for _, v := range m.vcpus {
		v.unpause()
	}
}

// OnClose registers f to run in Close once every vCPU thread has returned
// and before guest memory is unmapped, so that whatever else writes guest
// memory (the hypervisor's timers, say) stops first. Hooks run in the order
// they were registered; a hook registered after Close never runs.
func (m *Machine) OnClose(f func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.onClose = append(m.onClose, f)
}

// Close stops the vCPUs, waits for their threads, runs the OnClose hooks and
// releases the VM and its memory.
func (m *Machine) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	hooks := m.onClose
	m.mu.Unlock()
	for _, v := range m.vcpus {
		v.stop()
	}
	m.running.Wait()
	for _, f := range hooks {
		f()
	}
	var errs []error
	for _, v := range m.vcpus {
		errs = append(errs, v.close())
	}
	if m.vmFd != 0 {
		errs = append(errs, unix.Close(int(m.vmFd)))
	}
	for _, r := range m.mem.regions {
		if !r.Alias {
			errs = append(errs, unix.Munmap(r.Mem))
		}
	}
	m.mem.regions = nil
	if m.kvmFile != nil {
		errs = append(errs, m.kvmFile.Close())
	}
	return errors.Join(errs...)
}

// retryEINTR runs a KVM ioctl that sets up the VM again while a signal
// interrupts it (EINTR): the Go runtime's preemption signals reach every
// thread, and KVM_CREATE_VM, for one, returns EINTR when one is pending
// (seen under load in CI-like runs). KVM_RUN is not retried here: its
// EINTR is how a vCPU is kicked.
func retryEINTR(f func() (uintptr, error)) (uintptr, error) {
	for {
		v, err := f()
		if !errors.Is(err, unix.EINTR) {
			return v, err
		}
	}
}
