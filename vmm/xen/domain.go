// Package xen is the emulated Xen hypervisor: per-domain state as Xen keeps
// it (shutdown state, shared_info, the console) and the hypercalls a PV
// guest makes through its hypercall page, dispatched with Xen's 64-bit ABI
// (number in rax; arguments in rdi, rsi, rdx, r10, r8; result in rax; Xen
// errno values negated). Every guest pointer goes through bounds-checked
// accessors: a bad one gets -EFAULT, never a host fault.
package xen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/physmap"
	"github.com/xenresume/xenresume/vmm/timeline"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// Emulated Xen version: xenresume speaks the 4.17 interface, the one its
// headers (libxen-dev) and tools (xen-utils-4.17) come from.
const (
	VersionMajor = 4
	VersionMinor = 17
	Extraversion = "-xenresume"
	Capabilities = "xen-3.0-x86_64"
	// HypervisorVirtStart is what XENVER_platform_parameters reports, as
	// for a 64-bit PV guest on Xen.
	HypervisorVirtStart = 0xffff800000000000
)

// State is a domain's run state.
type State int

// Domain states.
const (
	Running  State = iota // runnable (possibly paused by the toolstack)
	Shutdown              // the guest shut itself down; its vCPUs park
	Crashed               // the VMM ended the domain; see Exit.Crash
)

func (s State) String() string {
	switch s {
	case Running:
		return "running"
	case Shutdown:
		return "shutdown"
	case Crashed:
		return "crashed"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// ShutdownName names a SHUTDOWN_* reason.
func ShutdownName(reason uint32) string {
	names := []string{"poweroff", "reboot", "suspend", "crash", "watchdog", "soft_reset"}
	if int(reason) < len(names) {
		return names[reason]
	}
	return fmt.Sprintf("reason(%d)", reason)
}

// Exit describes how a domain stopped running.
type Exit struct {
	State  State
	Reason uint32 // SHUTDOWN_* when State is Shutdown
	// SuspendRDX is vCPU 0's %rdx at SHUTDOWN_suspend: the start_info MFN
	// a 64-bit PV guest passes as the hypercall's third argument.
	SuspendRDX uint64
	// Crash is the VMM's report when State is Crashed.
	Crash *machine.CrashError
}

func (e Exit) String() string {
	switch e.State {
	case Shutdown:
		if e.Reason == xenabi.ShutdownSuspend {
			return fmt.Sprintf("shutdown (suspend, rdx %#x)", e.SuspendRDX)
		}
		return fmt.Sprintf("shutdown (%s)", ShutdownName(e.Reason))
	case Crashed:
		return "crashed: " + e.Crash.Reason
	}
	return e.State.String()
}

// Config configures a domain.
type Config struct {
	// Xen is the hypervisor the domain joins; nil gives it one of its own.
	Xen     *Xen
	ID      uint16
	Machine *machine.Machine
	Frames  physmap.Map
	// Console receives what the guest writes with CONSOLEIO_write.
	Console io.Writer
	// Trap is the hypercall mechanism; nil means
	// Ring3PortIOTrap{HypercallPort}.
	Trap Trap
	// Log receives warnings (an unimplemented hypercall, once per number).
	Log *slog.Logger
	// Trace, when non-nil, gets one record per hypercall: name, decoded
	// arguments and result.
	Trace *slog.Logger
	// ClobberArgs does what a debug Xen does: overwrite the argument
	// registers a hypercall declares with Poison after it completes
	// (unless it was preempted or is -ENOSYS), so a guest that relies on
	// them surviving breaks here as it would there. It costs a register
	// write-back per hypercall.
	ClobberArgs bool
	// Timeline, when non-nil, gets every hypercall as an instant on the
	// guest track (sampled: see package timeline); Domain.SetTimeline
	// changes it later. Nil costs the dispatch one atomic load.
	Timeline *timeline.Recorder
}

// Poison is the value debug Xen writes into clobbered argument registers.
const Poison = 0xdeadbeefdeadf00d

// Domain is the hypervisor's view of one guest.
type Domain struct {
	x       *Xen
	id      uint16
	m       *machine.Machine // nil for a domain built by handler tests
	vm      vmControl
	cpus    []CPU
	mem     *machine.Memory
	frames  physmap.Map
	console io.Writer
	trap    Trap
	log     *slog.Logger
	trace   *slog.Logger
	clobber bool

	tl       atomic.Pointer[timeline.Recorder] // hypercalls as instants; nil: none
	nextMark atomic.Pointer[string]            // a mark for the next hypercall (MarkNextHypercall)

	sharedInfo []byte    // host view of the domain's shared_info page
	pv         *pvDomain // the ring-3 model's state
	created    time.Time

	mu         sync.Mutex
	changed    chan struct{} // closed on each state change
	state      State
	reason     uint32
	codeLatch  int64 // SCHEDOP_shutdown_code, -1 when none
	suspendRDX uint64
	crash      *machine.CrashError

	sched   []vcpuSched   // per vCPU: up, down, runstate (pv_vcpu.go)
	ports   []evtPort     // event channels; guarded by x.mu
	scratch []call        // one per vCPU, for the hypercall in flight
	polling []atomic.Bool // per vCPU: in SCHEDOP_poll

	timerMu       sync.Mutex
	timers        []*time.Timer // single-shot timers, per vCPU
	periodic      []*time.Timer // periodic timers, per vCPU
	timersStopped bool
	calls         [128]atomic.Uint64
	enosysSeen    sync.Map
	// overflowSeen: the hypercall numbers whose result was cut to
	// -EOVERFLOW, logged once each, since a guest can repeat the call.
	overflowSeen sync.Map
}

// vmControl is what the hypervisor asks of the machine that runs a domain:
// to stop its vCPUs and to wait until they have. *machine.Machine
// implements it.
type vmControl interface {
	RequestPause()
	WaitPaused(ctx context.Context) error
}

// NewDomain sets up the hypervisor side of a domain on a machine whose RAM
// the builder will fill: the Xen window (shared_info), the hypercall trap,
// the null port, and the ring-3 PV model (pv.go), in which the guest
// kernel runs as Xen runs a 64-bit PV kernel: in ring 3 on Xen's flat
// selectors, with page tables of machine frames, a trap table and the iret
// hypercall. The model wants synced special registers
// (machine.Config.SyncSregs) for speed, not for correctness.
func NewDomain(cfg Config) (*Domain, error) {
	if cfg.Machine == nil {
		return nil, errors.New("xen: no machine")
	}
	if cfg.ID == 0 {
		return nil, errors.New("xen: domain 0 is the host's")
	}
	m := cfg.Machine
	win, err := m.AddRegion("xen", physmap.XenWindow, physmap.XenWindowPages*machine.PageSize)
	if err != nil {
		return nil, fmt.Errorf("xen window: %w", err)
	}
	vcpus := m.VCPUs()
	cpus := make([]CPU, len(vcpus))
	for i, v := range vcpus {
		cpus[i] = v
	}
	if cfg.Trap == nil {
		cfg.Trap = Ring3PortIOTrap{Port: HypercallPort}
	}
	d := newDomain(cfg, m, m.Memory(), cpus, win[:machine.PageSize])
	d.m = m
	if d.pv, err = newPV(d, m, cfg.Frames, len(vcpus)); err != nil {
		return nil, fmt.Errorf("ring-3 PV model: %w", err)
	}
	// Timers write shared_info: they stop before the machine unmaps it,
	// whether or not the domain is released first.
	m.OnClose(d.stopTimers)
	if err := d.trap.Install(m, d.hypercall); err != nil {
		return nil, fmt.Errorf("install %s hypercall trap: %w", d.trap.Name(), err)
	}
	m.Bus().Register(NullPort, 1, machine.PIOFunc(func(*machine.VCPU, uint16, bool, []byte) error { return nil }))
	if d.trap == (Ring3PortIOTrap{Port: HypercallPort}) {
		// Every port the VMM's I/O bitmap opens to CPL 3 (see portAccess).
		m.Bus().Register(firstOpenPort, openPorts, machine.PIOFunc(d.pv.portExit))
	}
	for i, v := range vcpus {
		v.Halt, v.BeforeEntry = d.pv.halt, d.pv.vcpuEntry
		// syscall enters the VMM at each vCPU's LSTAR trampoline (see
		// sysEntry), secondaries' included, before any of them runs.
		if err := d.setSyscallMSRs(i, d.pv.cpus[i]); err != nil {
			return nil, fmt.Errorf("vCPU %d syscall MSRs: %w", i, err)
		}
	}
	if err := d.x.register(d); err != nil {
		return nil, err
	}
	return d, nil
}

// newDomain is a domain's hypervisor state over guest memory mem, its vCPUs
// and its shared_info page, without what NewDomain wires into a machine;
// handler tests build one over plain memory and fake vCPUs.
func newDomain(cfg Config, vm vmControl, mem *machine.Memory, cpus []CPU, sharedInfo []byte) *Domain {
	d := &Domain{
		x: cfg.Xen, id: cfg.ID, vm: vm, cpus: cpus, mem: mem, frames: cfg.Frames,
		console: cfg.Console, trap: cfg.Trap, log: cfg.Log, trace: cfg.Trace,
		clobber: cfg.ClobberArgs, changed: make(chan struct{}), codeLatch: -1,
		created: time.Now(), sharedInfo: sharedInfo,
	}
	d.tl.Store(cfg.Timeline)
	d.scratch = make([]call, len(cpus))
	d.initSched()
	d.polling = make([]atomic.Bool, len(cpus))
	if d.console == nil {
		d.console = io.Discard
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.trap == nil {
		d.trap = Ring3PortIOTrap{Port: HypercallPort}
	}
	if d.x == nil {
		d.x = NewXen()
	}
	si := xenabi.View[xenabi.SharedInfo](d.sharedInfo)
	for i := range si.Vcpu_info {
		// Events start masked in every legacy slot, as the toolstack
		// leaves them (shared_info_x86_64).
		si.Vcpu_info[i].Upcall_mask = 1
	}
	return d
}

// Xen returns the hypervisor the domain belongs to.
func (d *Domain) Xen() *Xen { return d.x }

// Release removes the domain from the hypervisor; its peers' interdomain
// ports go back to unbound, and its timers stop for good (once Release
// returns, none is left running).
func (d *Domain) Release() {
	d.stopTimers()
	d.x.unregister(d)
}

// ID returns the domain ID.
func (d *Domain) ID() uint16 { return d.id }

// Frames returns the domain's frame map.
func (d *Domain) Frames() physmap.Map { return d.frames }

// SharedInfoMFN returns the machine frame of the domain's shared_info.
func (d *Domain) SharedInfoMFN() uint64 { return d.frames.XenFrame(0) }

// SharedInfo returns the host view of the domain's shared_info page.
func (d *Domain) SharedInfo() *xenabi.SharedInfo {
	return xenabi.View[xenabi.SharedInfo](d.sharedInfo)
}

// HypercallReturnAddress returns where a parked vCPU sits once hypercall nr,
// called through the hypercall page at guest-virtual address page, has
// trapped: the stub's return path, where xc_domain_resume expects a
// suspended PV vCPU (0 for an nr with no stub). See Trap.ReturnAddress.
func (d *Domain) HypercallReturnAddress(page uint64, nr int) uint64 {
	return d.trap.ReturnAddress(page, nr)
}

// HypercallPageFromReturn is HypercallReturnAddress's inverse: the
// hypercall page of a vCPU whose RIP, rip, is hypercall nr's return path
// (restore finds the page this way); false if rip is no such address.
func (d *Domain) HypercallPageFromReturn(rip uint64, nr int) (uint64, bool) {
	return d.trap.ReturnPage(rip, nr)
}

// WriteHypercallPage fills the guest's hypercall page at guest-physical gpa,
// as Xen does for a PV guest whose image names one.
func (d *Domain) WriteHypercallPage(gpa uint64) error {
	if err := d.mem.Write(gpa, d.trap.HypercallPage()); err != nil {
		return fmt.Errorf("hypercall page: %w", err)
	}
	return nil
}

// HypercallCount returns how many times hypercall nr was made.
func (d *Domain) HypercallCount(nr int) uint64 {
	if nr < 0 || nr >= len(d.calls) {
		return 0
	}
	return d.calls[nr].Load()
}

// State returns the domain's state.
func (d *Domain) State() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state
}

func (d *Domain) notifyLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
}

// shutdown records a guest's SCHEDOP_shutdown, as Xen's domain_shutdown:
// the first reason wins (or one latched by SCHEDOP_shutdown_code), every
// vCPU is asked to park (the caller parks as its hypercall returns, with
// the trap completed, so it sits in the stub's return path), and the
// hypercall itself returns 0.
func (d *Domain) shutdown(v CPU, reason uint32, rdx uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state != Running {
		return
	}
	if d.codeLatch >= 0 {
		reason = uint32(d.codeLatch)
	}
	d.state, d.reason = Shutdown, reason
	if reason == xenabi.ShutdownSuspend && v.Index() == 0 {
		d.suspendRDX = rdx
	}
	d.vm.RequestPause()
	d.notifyLocked()
}

// Exit returns how the domain stopped, or State Running if it has not.
func (d *Domain) Exit() Exit {
	d.mu.Lock()
	defer d.mu.Unlock()
	return Exit{State: d.state, Reason: d.reason, SuspendRDX: d.suspendRDX, Crash: d.crash}
}

// ResumeSuspended clears a SHUTDOWN_suspend (XEN_DOMCTL_resumedomain's
// effect on the domain's state); the vCPUs stay paused until unpaused.
func (d *Domain) ResumeSuspended() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state != Shutdown || d.reason != xenabi.ShutdownSuspend {
		return fmt.Errorf("domain %d is not suspended (%v)", d.id, d.state)
	}
	d.state, d.reason, d.suspendRDX, d.codeLatch = Running, 0, 0, -1
	d.notifyLocked()
	return nil
}

// VCPUEnded is the machine's per-vCPU exit callback: a vCPU that ended with
// an error crashes the domain (and the other vCPUs are asked to park).
func (d *Domain) VCPUEnded(v *machine.VCPU, err error) {
	if err == nil {
		return
	}
	var ce *machine.CrashError
	if !errors.As(err, &ce) {
		ce = &machine.CrashError{VCPU: v.ID, Reason: err.Error()}
	}
	if v.ID < len(d.pv.cpus) && ce.Guest == nil {
		// A crash on a trampoline: the guest's context, not the VMM's.
		ce.Guest = d.pv.cpus[v.ID].crashed.Swap(nil)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state == Crashed {
		return
	}
	d.state, d.crash = Crashed, ce
	d.vm.RequestPause()
	d.notifyLocked()
}

// Wait blocks until the domain stops running (a shutdown or a crash, with
// every vCPU parked or ended) and says how. If the vCPUs are unpaused before
// they parked, it looks again when the domain was resumed meanwhile, and
// fails with machine.ErrUnpaused when it was not.
func (d *Domain) Wait(ctx context.Context) (Exit, error) {
	for {
		d.mu.Lock()
		st, ch := d.state, d.changed
		e := Exit{State: st, Reason: d.reason, SuspendRDX: d.suspendRDX, Crash: d.crash}
		d.mu.Unlock()
		if st != Running {
			err := d.vm.WaitPaused(ctx)
			if errors.Is(err, machine.ErrUnpaused) {
				select {
				case <-ch:
					continue // resumed and unpaused meanwhile: look again
				default:
				}
			}
			return e, err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return Exit{State: Running}, fmt.Errorf("waiting for domain %d: %w", d.id, ctx.Err())
		}
	}
}
