// Package hvm is the emulated Xen of an HVM or PVH container: what a guest
// that runs on the hardware's own privilege levels (not in Xen's ring-3 PV
// model) finds of the hypervisor. This first slice gives what XTF's HVM
// environments need to boot and report: Xen's CPUID leaves, the hypercall
// page written when the guest writes the MSR that leaf base+2 names,
// hypercalls with Xen's HVM ABI (chosen per call from the vCPU's mode),
// the HVM params with Xen's access rules, the PV console ring at
// HVM_PARAM_CONSOLE_PFN served by the VMM itself, port 0xE9, and all-ones
// for unclaimed I/O and MMIO.
//
// The hypercall page's stubs exit with port I/O (`in $HypercallPort`),
// because `vmcall` does not exit on every host this VMM runs on (PVM);
// where the host's KVM offers its own Xen intercept (KVM_CAP_XEN_HVM with
// INTERCEPT_HCALL), KVM writes the page with vmcall stubs instead and
// reports every vmcall as KVM_EXIT_XEN (HypercallTrap). Both traps go
// through one dispatch (hypercall.go).
//
// It also has PM1a_CNT's sleep states (S3 held until S3Resume, S4/S5 a
// poweroff), the xenstore ring's port once the toolstack connects a
// xenstored (SetStore), and the params a restore sets (RestoreParam).
//
// An HVM domain (not PVH) has the timers and CMOS Xen emulates
// (platform.go, models in vmm/platform): the RTC/CMOS at ports 0x70-0x71,
// the ACPI PM1a event block and PM timer, the HPET at 0xFED00000; their
// interrupts go where SetIRQLine says (the toolstack wires them to the
// machine's IO-APIC and PIC).
//
// Event channels and their delivery by the global callback vector, the
// per-vCPU upcall vector and the callback GSI are in evtchn.go; the
// interrupt controllers (KVM's in-kernel LAPIC, IO-APIC, PIC and PIT for
// HVM, the LAPIC for PVH) are set to Xen's reset state in irqchip.go.
//
// Not here yet (issue #11): event delivery by PCI INTx.
package hvm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/acpi"
	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/kvmext"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/platform"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// Ports and MSRs the container claims.
const (
	// HypercallPort is the port the hypercall stubs read their result
	// from: `mov $nr, %eax; in $HypercallPort, %eax; ret`.
	HypercallPort = 0xe2
	// DebugPort is Xen's hvm_print_line port: bytes written are logged
	// line by line, reads return 0xE9.
	DebugPort = 0xe9
	// HypercallMSR is the MSR leaf base+2 names (no Viridian).
	HypercallMSR = 0x40000000
	// CPUIDBase is where Xen's leaves start (no Viridian).
	CPUIDBase = 0x40000000
	// cpuidLimit is XEN_CPUID_MAX_NUM_LEAVES: base+0 EAX is base+5.
	cpuidLimit = 5
)

// HVM params (public/hvm/params.h).
const (
	ParamCallbackIRQ       = 0
	ParamStorePFN          = 1
	ParamStoreEvtchn       = 2
	ParamIOReqPFN          = 5
	ParamBufIOReqPFN       = 6
	ParamViridian          = 9
	ParamTimerMode         = 10
	ParamHPETEnabled       = 11
	ParamIdentPT           = 12
	ParamACPISState        = 14
	ParamVM86TSS           = 15
	ParamVPTAlign          = 16
	ParamConsolePFN        = 17
	ParamConsoleEvtchn     = 18
	ParamACPIIOPortsLoc    = 19
	ParamPagingRingPFN     = 27
	ParamMonitorRingPFN    = 28
	ParamSharingRingPFN    = 29
	ParamTripleFaultReason = 31
	ParamIOReqServerPFN    = 32
	ParamNrIOReqServerPgs  = 33
	ParamVMGenerationID    = 34
	ParamAltp2m            = 35
	ParamX87FIPWidth       = 36
	ParamVM86TSSSized      = 37
	ParamMCACap            = 38
	// NrParams is HVM_NR_PARAMS.
	NrParams = 39
)

// DomIDSelf is DOMID_SELF.
const DomIDSelf = 0x7ff0

// Exit describes how a domain stopped.
type Exit struct {
	// Reason is the SHUTDOWN_* reason when the guest shut down.
	Reason uint32
	// Crash is the VMM's report when the VMM ended the domain (a vCPU it
	// could not run on); nil when the guest shut down.
	Crash *machine.CrashError
}

func (e Exit) String() string {
	if e.Crash != nil {
		return "crashed: " + e.Crash.Reason
	}
	return "shutdown (" + xen.ShutdownName(e.Reason) + ")"
}

// Config describes a container's hypervisor side.
type Config struct {
	Kind    builder.ContainerKind
	ID      uint16
	Machine *machine.Machine
	// Console receives what the guest writes to its PV console ring.
	Console io.Writer
	Log     *slog.Logger
	// OnS3, when set, is told when the guest enters ACPI S3 (true, on
	// the vCPU's thread, after the vCPUs were asked to park) and when
	// S3Resume wakes it (false): the toolstack's pause reference for S3
	// (hvm_s3_suspend's domain_pause). With OnS3 set, S3Resume leaves
	// unpausing to it, so that the toolstack's own pause or a remote
	// suspend still holds the domain; without it S3Resume unpauses.
	OnS3 func(asleep bool)
	// OnSuspend, when set, is told on the vCPU's thread that the guest
	// suspended itself (SCHEDOP_shutdown(SHUTDOWN_suspend), PVHVM suspend)
	// after the vCPUs were asked to park, and reports whether the
	// toolstack holds the domain suspended, to resume or save it. Without
	// it, or when it reports false, such a shutdown ends the domain with
	// reason suspend.
	OnSuspend func() bool
}

// Domain is the hypervisor's view of one HVM or PVH guest.
type Domain struct {
	kind    builder.ContainerKind
	id      uint16
	m       *machine.Machine
	mem     *machine.Memory
	console io.Writer
	log     *slog.Logger

	mu          sync.Mutex
	params      [NrParams]uint64
	sharedInfo  uint64 // GFN of shared_info; 0: not placed
	grantFrames map[uint64]uint64
	gntVersion  uint32
	debugLine   []byte
	ended       chan struct{} // closed once exit is set
	exit        Exit
	stop        context.CancelFunc
	enosysSeen  map[uint64]bool
	warned      map[string]bool // warnOnce's messages
	pm1aCnt     uint16          // PM1a_CNT as it reads (HVM only)
	facs        uint64          // the FACS's address (SetFACS); 0: no ACPI
	storeKick   func()          // the xenstore ring's Kick (SetStore); nil: no xenstore
	onS3        func(asleep bool)
	onSuspend   func() bool
	ports       []evtPort              // event channels by port (evtchn.go)
	vcpus       []vcpuEvt              // each vCPU's delivery state
	shinfo      [machine.PageSize]byte // shared_info until the guest places it
	compat      bool                   // the 32-bit shared_info layout (latched)
	latched     bool                   // compat latched by a hypercall KVM's intercept trapped
	trap        HypercallTrap          // how hypercalls reach the VMM
	dev         *devices               // the platform's timers and CMOS (HVM only; platform.go)
	cbGSI       uint32                 // the callback GSI cbLine raises
	cbLine      *machine.LevelIRQ      // the callback GSI's line; nil: none
	reset       *platformReset         // the interrupt controllers' reset state (irqchip.go)
}

// StorePort and ConsolePort are the xenstore's and the console's event
// channels, HVM_PARAM_STORE_EVTCHN and HVM_PARAM_CONSOLE_EVTCHN: libxl
// allocates the xenstore port first and then the console's. Both are
// bound in dom0 (xenstored's ring, SetStore, and the VMM's console
// reader): a send on either reaches its backend, and the backend's
// notifications (StoreEvent, the console's after it drained the ring)
// raise them in the guest (evtchn.go).
const (
	StorePort   = 1
	ConsolePort = 2
)

// New sets up the hypervisor side of a container on m, whose RAM the
// builder fills: the special pages' region, Xen's CPUID leaves and the
// hypercall MSR on every vCPU, the hypercall and debug ports, and
// all-ones for unclaimed MMIO. Call it before the machine starts.
func New(cfg Config) (*Domain, error) {
	if cfg.Machine == nil {
		return nil, errors.New("hvm: no machine")
	}
	if cfg.Kind != builder.KindHVM && cfg.Kind != builder.KindPVH {
		return nil, fmt.Errorf("hvm: container kind %v", cfg.Kind)
	}
	if cfg.ID == 0 || cfg.ID >= DomIDSelf {
		return nil, fmt.Errorf("hvm: domain id %d", cfg.ID)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	console := cfg.Console
	if console == nil {
		console = io.Discard
	}
	m := cfg.Machine
	d := &Domain{kind: cfg.Kind, id: cfg.ID, m: m, mem: m.Memory(), console: console, log: log,
		ended: make(chan struct{}), grantFrames: map[uint64]uint64{}, gntVersion: 1, enosysSeen: map[uint64]bool{}, warned: map[string]bool{},
		onS3: cfg.OnS3, onSuspend: cfg.OnSuspend}
	if _, err := m.AddRegion("special", builder.SpecialPFNBase<<12, builder.NrSpecialPages*machine.PageSize); err != nil {
		return nil, fmt.Errorf("hvm: special pages: %w", err)
	}
	trap, reason, err := pickTrap(m)
	if err != nil {
		return nil, fmt.Errorf("hvm: %w", err)
	}
	d.trap = trap
	if trap == TrapKVMXen {
		// KVM owns the MSR's writes (it writes its page); reads are ours.
		err = m.TrapMSRReads(HypercallMSR)
	} else {
		err = m.TrapMSRs(HypercallMSR)
	}
	if err != nil {
		return nil, fmt.Errorf("hvm: hypercall MSR: %w", err)
	}
	log.Info("HVM hypercall trap", "domid", d.id, "trap", trap.String(), "reason", reason)
	if err := m.ExitOnEmulationFailure(); err != nil {
		return nil, fmt.Errorf("hvm: %w", err)
	}
	// What libxc's builder sets (alloc_magic_pages_hvm, bootlate_hvm).
	// The xenstore ring's page exists; STORE_EVTCHN stays 0 (how a guest
	// learns xenstore is absent) until SetStore connects a xenstored.
	d.params[ParamStorePFN] = builder.StorePFN
	d.params[ParamStoreEvtchn] = 0
	d.params[ParamConsolePFN] = builder.ConsolePFN
	d.params[ParamConsoleEvtchn] = ConsolePort
	d.params[ParamIdentPT] = builder.IdentPTPFN << 12
	d.params[ParamPagingRingPFN] = builder.SpecialPFNBase + 0
	d.params[ParamMonitorRingPFN] = builder.SpecialPFNBase + 1
	d.params[ParamSharingRingPFN] = builder.SpecialPFNBase + 2
	d.params[ParamBufIOReqPFN] = builder.SpecialPFNBase + 3
	d.params[ParamIOReqPFN] = builder.SpecialPFNBase + 5
	d.params[ParamTripleFaultReason] = xenabi.ShutdownReboot
	d.bindBackendLocked(ConsolePort, d.drainConsole)
	d.ensureVCPUsLocked()
	if cfg.Kind == builder.KindHVM {
		d.params[ParamIOReqServerPFN] = builder.SpecialPFNBase - 8
		d.params[ParamNrIOReqServerPgs] = 8
	}
	for _, v := range m.VCPUs() {
		if err := v.SetHypervisorLeaves(CPUIDBase, CPUIDBase+0xffff, d.cpuidLeaves(v.ID)); err != nil {
			return nil, fmt.Errorf("hvm: CPUID on vCPU %d: %w", v.ID, err)
		}
		v.MSR = d.msr
		v.MMIO = d.mmio
		v.Emulate = d.emulate
		v.PendingInterrupt = d.pendingInterrupt
		if trap == TrapKVMXen {
			v.XenHypercall = d.hypercallXen
		}
	}
	if err := d.initPlatform(); err != nil {
		return nil, fmt.Errorf("hvm: the platform's interrupt controllers: %w", err)
	}
	// The port stays claimed with KVM's intercept too: a guest saved on a
	// host with port-I/O stubs in its page keeps working when restored
	// on one with the intercept.
	m.Bus().Register(HypercallPort, 1, machine.PIOFunc(d.hypercallPIO))
	m.Bus().Register(DebugPort, 1, machine.PIOFunc(d.debugPIO))
	if cfg.Kind == builder.KindHVM { // PVH has no ACPI PM hardware or firmware
		d.pm1aCnt = pm1aSCIEn
		m.Bus().Register(acpi.PM1aCntBlk, 2, machine.PIOFunc(d.pm1aCntPIO))
		m.Bus().Register(FirmwarePort, 1, machine.PIOFunc(d.firmwarePIO))
		d.newDevices(m.Bus().Register)
		if m.IRQChip() == machine.IRQChipFull {
			// The timers' and SCI's lines go to KVM's IO-APIC and PIC.
			d.SetIRQLine(func(irq uint32, high bool) {
				if _, err := m.SetIRQLine(irq, high); err != nil {
					d.warnOnce("a platform device's interrupt line failed", "irq", irq, "err", err)
				}
			})
		}
	}
	return d, nil
}

// HypercallTrap is how a container's hypercalls reach the VMM.
type HypercallTrap uint8

// The hypercall traps.
const (
	// TrapPortIO: the VMM writes the hypercall page with stubs that exit
	// with `in $HypercallPort, %eax` (writeHypercallPage). It works on
	// every host, PVM included, where vmcall does not exit; a kernel that
	// issues vmcall itself instead of calling into the page is not served.
	TrapPortIO HypercallTrap = iota
	// TrapKVMXen: KVM's own Xen intercept (KVM_CAP_XEN_HVM with
	// KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL) writes the page with vmcall
	// (vmmcall) stubs and reports every vmcall, the page's or a kernel's
	// own, as KVM_EXIT_XEN (hypercallXen). Chosen wherever the host's KVM
	// offers it.
	TrapKVMXen
)

func (t HypercallTrap) String() string {
	switch t {
	case TrapPortIO:
		return "port-I/O"
	case TrapKVMXen:
		return "KVM Xen intercept"
	}
	return fmt.Sprintf("trap(%d)", uint8(t))
}

// pickTrap chooses the hypercall trap for m, and says why: KVM's Xen
// intercept where KVM offers it (and then enables it), else port I/O.
func pickTrap(m *machine.Machine) (HypercallTrap, string, error) {
	ok, features, err := m.XenHypercallIntercept()
	switch {
	case err != nil:
		return TrapPortIO, fmt.Sprintf("KVM_CAP_XEN_HVM unreadable: %v", err), nil
	case !ok:
		return TrapPortIO, fmt.Sprintf("KVM_CAP_XEN_HVM = %#x: no KVM_XEN_HVM_CONFIG_HYPERCALL_MSR with _INTERCEPT_HCALL", features), nil
	}
	if err := m.EnableXenHypercallIntercept(HypercallMSR); err != nil {
		return 0, "", fmt.Errorf("KVM offers the Xen hypercall intercept (KVM_CAP_XEN_HVM = %#x) but refused it: %w", features, err)
	}
	return TrapKVMXen, fmt.Sprintf("KVM_CAP_XEN_HVM = %#x offers KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL", features), nil
}

// HypercallTrap returns how the guest's hypercalls reach the VMM.
func (d *Domain) HypercallTrap() HypercallTrap { return d.trap }

// SetStore connects the xenstore ring at HVM_PARAM_STORE_PFN to a
// xenstored: STORE_EVTCHN becomes StorePort, and the guest's sends on it
// call kick (the ring's Kick); xenstored's notification is StoreEvent.
// Call it before the domain runs.
func (d *Domain) SetStore(kick func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.storeKick = kick
	d.params[ParamStoreEvtchn] = StorePort
	d.bindBackendLocked(StorePort, kick)
}

// Kind returns the container's kind.
func (d *Domain) Kind() builder.ContainerKind { return d.kind }

// Param returns HVM param i as the toolstack sees it.
func (d *Domain) Param(i int) (uint64, error) {
	if i < 0 || i >= NrParams {
		return 0, fmt.Errorf("hvm: param %d out of range", i)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.params[i], nil
}

// RestoreParam sets param i from a save stream's HVM_PARAMS, as libxc's
// restore does with xc_hvm_param_set. Only the params libxc saves are
// taken, and the pages this container places where it places them (the
// xenstore and console rings, IDENT_PT, the ioreq and ring pages): a
// stream that puts them elsewhere is refused, since the toolstack serves
// them at those frames. STORE_EVTCHN and CONSOLE_EVTCHN are not in a
// stream; they are the new domain's.
func (d *Domain) RestoreParam(i, v uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch i {
	case ParamStorePFN, ParamConsolePFN, ParamIdentPT, ParamIOReqPFN, ParamBufIOReqPFN,
		ParamPagingRingPFN, ParamMonitorRingPFN, ParamSharingRingPFN, ParamIOReqServerPFN, ParamNrIOReqServerPgs:
		if d.params[i] != v {
			return fmt.Errorf("hvm: saved param %d is %#x; this container has %#x there", i, v, d.params[i])
		}
	case ParamVM86TSSSized, ParamVMGenerationID, ParamMCACap:
		d.params[i] = v
	case ParamACPIIOPortsLoc:
		if v > 1 {
			return fmt.Errorf("hvm: saved ACPI_IOPORTS_LOCATION %d", v)
		}
		d.params[i] = v
	case ParamX87FIPWidth:
		if v != 0 && v != 4 && v != 8 {
			return fmt.Errorf("hvm: saved X87_FIP_WIDTH %d", v)
		}
		d.params[i] = v
	case ParamViridian:
		return fmt.Errorf("hvm: saved VIRIDIAN %#x: this container has no Viridian", v)
	default:
		return fmt.Errorf("hvm: param %d is not one a save stream carries", i)
	}
	return nil
}

// cpuidLeaves are Xen's hypervisor leaves for vCPU id
// (cpuid_hypervisor_leaves), at CPUIDBase with no Viridian.
func (d *Domain) cpuidLeaves(vcpu int) []machine.CPUIDLeaf {
	const (
		iommuMappings = 1 << 2 // XEN_HVM_CPUID_IOMMU_MAPPINGS
		vcpuIDPresent = 1 << 3 // XEN_HVM_CPUID_VCPU_ID_PRESENT
		domIDPresent  = 1 << 4 // XEN_HVM_CPUID_DOMID_PRESENT
		upcallVector  = 1 << 6 // XEN_HVM_CPUID_UPCALL_VECTOR
	)
	b := uint32(CPUIDBase)
	return []machine.CPUIDLeaf{
		{Leaf: b, EAX: b + cpuidLimit, EBX: 0x566e6558, ECX: 0x65584d4d, EDX: 0x4d4d566e}, // "XenVMMXenVMM"
		{Leaf: b + 1, EAX: xen.VersionMajor<<16 | xen.VersionMinor},
		{Leaf: b + 2, EAX: 1, EBX: HypercallMSR},
		// base+3 (TSC) is left zero: no TSC mode is offered yet.
		{Leaf: b + 4, EAX: iommuMappings | vcpuIDPresent | domIDPresent | upcallVector, EBX: uint32(vcpu), ECX: uint32(d.id), SubleafSignificant: true},
	}
}

// Run starts the vCPUs and waits until the guest shuts down, a vCPU
// crashes, or ctx is done (then it returns ctx's error). The vCPUs have
// stopped when it returns.
func (d *Domain) Run(ctx context.Context) (Exit, error) {
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	d.mu.Lock()
	if d.stop != nil {
		d.mu.Unlock()
		return Exit{}, errors.New("hvm: the domain has run already")
	}
	d.stop = stop
	d.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(len(d.m.VCPUs()))
	d.m.Start(runCtx, func(v *machine.VCPU, err error) {
		defer wg.Done()
		var ce *machine.CrashError
		switch {
		case errors.As(err, &ce):
			d.end(Exit{Crash: ce})
		case err != nil:
			d.end(Exit{Crash: &machine.CrashError{VCPU: v.ID, Reason: err.Error()}})
		}
	})
	allEnded := make(chan struct{})
	go func() {
		wg.Wait()
		close(allEnded)
	}()
	select {
	case <-d.ended:
	case <-allEnded: // stopped without a report (a closed machine)
	case <-ctx.Done():
	}
	stop()
	<-allEnded
	select {
	case <-d.ended:
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.exit, nil
	default:
		if err := ctx.Err(); err != nil {
			return Exit{}, err
		}
		return Exit{}, errors.New("hvm: the vCPUs stopped without the domain ending")
	}
}

// end records how the domain ended (the first report wins) and stops it.
func (d *Domain) end(e Exit) {
	d.mu.Lock()
	defer d.mu.Unlock()
	select {
	case <-d.ended:
		return
	default:
	}
	d.exit = e
	close(d.ended)
	if d.stop != nil {
		d.stop()
	}
}

// msr handles the trapped hypercall MSR (guest_wrmsr_xen,
// guest_rdmsr_xen): a read returns 0; a write of a page's address with
// index 0 fills that page with hypercall stubs; a nonzero index or a page
// that is not RAM raises #GP.
func (d *Domain) msr(v *machine.VCPU, e *kvmext.MSRExit) error {
	if e.Index != HypercallMSR {
		e.Error = 1
		return nil
	}
	if isRead(v) {
		e.Data = 0
		return nil
	}
	gpa := e.Data &^ 0xfff
	if e.Data&0xfff != 0 {
		d.warnOnce("hypercall MSR written with a page index (#GP)", "value", fmt.Sprintf("%#x", e.Data))
		e.Error = 1
		return nil
	}
	s, err := v.Sregs()
	if err != nil {
		return err
	}
	long := s.EFER&(1<<10) != 0 && s.CS.L == 1
	if err := d.writeHypercallPage(gpa, long); err != nil {
		d.warnOnce("hypercall MSR: not a RAM page (#GP)", "err", err)
		e.Error = 1
		return nil
	}
	d.mu.Lock()
	d.compat = !long // hvm_latch_shinfo_size
	d.mu.Unlock()
	return nil
}

// isRead reports whether the vCPU's current MSR exit is a RDMSR.
func isRead(v *machine.VCPU) bool { return v.ExitReason() == kvmext.ExitX86RDMSR }

// writeHypercallPage fills the page at gpa as Xen does (0xCC, then a
// 32-byte stub per hypercall; __HYPERVISOR_iret gets ud2), with stubs that
// exit through HypercallPort. The stub for a vCPU in 64-bit mode when the
// MSR is written sign-extends the 32-bit result into %rax (cltq); Xen's
// vmcall stubs fit every mode, and Xen latches the guest's shared_info
// layout from the mode at this moment just the same.
func (d *Domain) writeHypercallPage(gpa uint64, long bool) error {
	if !d.isRAM(gpa) {
		return fmt.Errorf("%#x is not RAM", gpa)
	}
	page := make([]byte, machine.PageSize)
	for i := range page {
		page[i] = 0xcc
	}
	for nr := 0; nr < machine.PageSize/32; nr++ {
		st := page[nr*32:]
		if nr == xenabi.HypervisorIret {
			st[0], st[1] = 0x0f, 0x0b // ud2
			continue
		}
		st[0] = 0xb8 // mov $nr, %eax
		st[1], st[2], st[3], st[4] = byte(nr), 0, 0, 0
		st[5], st[6] = 0xe5, HypercallPort // in $port, %eax
		n := 7
		if long {
			st[7], st[8] = 0x48, 0x98 // cltq
			n = 9
		}
		st[n] = 0xc3 // ret
	}
	return d.mem.Write(gpa, page)
}

// isRAM reports whether the page at gpa is guest RAM: below the end of
// the machine's RAM region, or one of the special pages.
func (d *Domain) isRAM(gpa uint64) bool {
	for _, r := range d.mem.Regions() {
		if r.Name == "ram" || r.Name == "special" {
			if gpa >= r.GPA && gpa-r.GPA < uint64(len(r.Mem)) {
				return true
			}
		}
	}
	return false
}

// mmio completes an access to guest-physical memory nothing backs: the
// HPET's registers (HVM), else Xen's null handler: reads see all-ones,
// writes are dropped.
func (d *Domain) mmio(v *machine.VCPU, gpa uint64, write bool, data []byte) error {
	if d.hpetMMIO(gpa, write, data) {
		return nil
	}
	if !write {
		for i := range data {
			data[i] = 0xff
		}
	}
	return nil
}

// debugPIO is port 0xE9 (hvm_print_line): reads return 0xE9; printable
// bytes written are logged a line at a time.
func (d *Domain) debugPIO(v *machine.VCPU, port uint16, write bool, data []byte) error {
	if !write {
		for i := range data {
			data[i] = DebugPort
		}
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range data {
		switch {
		case c == '\n' || len(d.debugLine) >= 120:
			d.log.Info("guest debug port", "domid", d.id, "line", string(d.debugLine))
			d.debugLine = d.debugLine[:0]
		case c >= 0x20 && c < 0x7f:
			d.debugLine = append(d.debugLine, c)
		}
	}
	return nil
}

// warnOnce logs msg at warning level the first time the guest causes it:
// a guest can repeat what it does wrong, and the log must not grow with it.
func (d *Domain) warnOnce(msg string, args ...any) {
	d.mu.Lock()
	seen := d.warned[msg]
	d.warned[msg] = true
	d.mu.Unlock()
	if !seen {
		d.log.Warn(msg, append([]any{"domid", d.id}, args...)...)
	}
}

// warnOnceLocked is warnOnce with d.mu held.
func (d *Domain) warnOnceLocked(msg string, args ...any) {
	if !d.warned[msg] {
		d.warned[msg] = true
		d.log.Warn(msg, append([]any{"domid", d.id}, args...)...)
	}
}

// pm1aSCIEn is PM1_CNT.SCI_EN: the FADT names no SMI command port, so the
// platform is in ACPI mode from the start.
const pm1aSCIEn = 1

// pm1aCntPIO is the PM1a control register at 0xB004 (QEMU's PIIX4 PM on
// Xen). A write with SLP_EN enters the sleep state SLP_TYP names in the
// DSDT's packages: 0 (\_S4 and \_S5 alike) is a poweroff, as QEMU makes
// it; 1 is \_S3 (s3Suspend). SLP_EN reads 0; other values are kept.
func (d *Domain) pm1aCntPIO(v *machine.VCPU, port uint16, write bool, data []byte) error {
	off := int(port - acpi.PM1aCntBlk)
	d.mu.Lock()
	reg := d.pm1aCnt
	if !write {
		d.mu.Unlock()
		for i := range data {
			data[i] = byte(reg >> (8 * (off + i)))
		}
		return nil
	}
	for i, b := range data {
		if sh := 8 * (off + i); sh < 16 {
			reg = reg&^(0xff<<sh) | uint16(b)<<sh
		}
	}
	d.pm1aCnt = reg &^ acpi.SLPEn
	d.mu.Unlock()
	if reg&acpi.SLPEn == 0 {
		return nil
	}
	switch typ := (reg & acpi.SLPTypMask) >> acpi.SLPTypShift; typ {
	case acpi.SLPTypS5:
		d.end(Exit{Reason: xenabi.ShutdownPoweroff})
	case acpi.SLPTypS3:
		return d.s3Suspend(v)
	default:
		d.warnOnce("PM1a_CNT: SLP_EN with a sleep type no package names; ignored", "slp_typ", typ)
	}
	return nil
}

// FirmwarePort is where the VMM's firmware stub at the reset vector asks
// the VMM to run the BIOS's S3 resume path (FirmwareStub).
const FirmwarePort = 0xe4

// ResetVector is where a vCPU reset to F000:FFF0 fetches first.
const ResetVector = 0xffff0

// FirmwareStub is the code the toolstack puts at ResetVector of an HVM
// guest, in place of a BIOS: `out %al, $FirmwarePort` (the VMM runs the S3
// resume path: the FACS waking vector), then `hlt` in a loop should the
// VMM return.
var FirmwareStub = []byte{0xe6, FirmwarePort, 0xf4, 0xeb, 0xfd}

// SetFACS tells the domain where its ACPI tables put the FACS, whose
// waking vector an S3 resume enters.
func (d *Domain) SetFACS(gpa uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.facs = gpa
}

// InS3 reports whether the guest is in ACPI S3 (HVM_PARAM_ACPI_S_STATE 3).
func (d *Domain) InS3() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.params[ParamACPISState] == 3
}

// s3Suspend is Xen's hvm_s3_suspend for the guest's write of S3 to
// PM1a_CNT, on vCPU v's thread: vCPU 0 is reset to real mode at F000:FFF0
// (the BIOS reset vector), HVM_PARAM_ACPI_S_STATE becomes 3, and the
// domain is held paused until S3Resume. Memory, event channels and params
// are kept. The LAPIC, IO-APIC, PIC pair and PIT are reset, the RTC's
// periodic timer stops, the PM timer restarts from 0 and the HPET is
// reset; CMOS 0x0F gets the S3 shutdown status (QEMU's suspend notifier).
// (There are no APs.)
func (d *Domain) s3Suspend(v *machine.VCPU) error {
	if v.ID != 0 {
		return fmt.Errorf("S3 entered from vCPU %d: only vCPU 0 exists in this container", v.ID)
	}
	if err := v.CompleteExit(); err != nil { // the OUT is done before the reset
		return err
	}
	s, err := v.Sregs()
	if err != nil {
		return err
	}
	machine.RealMode(s, 0xf000)
	if err := d.resetPlatform(); err != nil {
		return fmt.Errorf("S3: %w", err)
	}
	r, err := v.Regs()
	if err != nil {
		return err
	}
	*r = kvm.Regs{RIP: 0xfff0, RFLAGS: 2}
	if err := v.SetRegsDirty(); err != nil {
		return err
	}
	if err := v.SetSregsDirty(); err != nil {
		return err
	}
	d.mu.Lock()
	d.params[ParamACPISState] = 3
	d.pm1aCnt = pm1aSCIEn
	d.mu.Unlock()
	d.resetDevices()
	// Said at warning level: the domain now waits for S3Resume, which is
	// the toolstack's to call (once per S3 the guest enters).
	d.log.Warn("the guest entered ACPI S3; vCPU 0 is held at F000:FFF0 until an s3resume trigger", "domid", d.id)
	d.m.RequestPause() // held until S3Resume
	if d.onS3 != nil {
		d.onS3(true)
	}
	return nil
}

// S3Resume wakes a guest in S3, as `xl trigger DOM s3resume` does
// (hvm_s3_resume): ACPI_S_STATE back to 0, vCPU 0's TSC to 0, and the
// domain unpaused; vCPU 0 runs from the reset vector, where the firmware
// stub hands over to the FACS waking vector. It waits for vCPU 0 to have
// parked, and fails if the guest is not in S3.
func (d *Domain) S3Resume(ctx context.Context) error {
	if !d.InS3() {
		return errors.New("the domain is not in ACPI S3")
	}
	if err := d.m.WaitPaused(ctx); err != nil {
		return fmt.Errorf("S3 resume: %w", err)
	}
	if err := d.m.VCPUs()[0].SetTSC(0); err != nil {
		return fmt.Errorf("S3 resume: %w", err)
	}
	d.mu.Lock()
	d.params[ParamACPISState] = 0
	d.mu.Unlock()
	if d.onS3 != nil {
		d.onS3(false)
		return nil
	}
	d.m.Unpause()
	return nil
}

// firmwarePIO is the firmware stub's request: the BIOS's S3 resume path
// (ROMBIOS s3_resume), which enters the FACS's x_firmware_waking_vector,
// or firmware_waking_vector when that is 0, in real mode at CS = vector
// >> 4, IP = vector & 0xF. A guest that set no waking vector, or one
// beyond real mode's reach, ends with a report saying so. As POST does, it
// first reads and clears CMOS 0x0F, the shutdown status; this firmware has
// no other path than S3's, so a status other than S3's (lost when the
// domain was saved in S3 and restored: Xen's RTC record carries CMOS bytes
// 0-13 only) is logged and the S3 path taken all the same.
func (d *Domain) firmwarePIO(v *machine.VCPU, port uint16, write bool, data []byte) error {
	if !write {
		for i := range data {
			data[i] = 0xff
		}
		return nil
	}
	d.mu.Lock()
	facs := d.facs
	d.mu.Unlock()
	if facs == 0 {
		return errors.New("firmware: the reset vector ran, and there is no BIOS behind it (no ACPI tables)")
	}
	if d.dev != nil {
		if st := d.dev.rtc.CMOS(platform.CMOSShutdownStatus); st != platform.CMOSShutdownS3 {
			d.log.Info("firmware: CMOS shutdown status is not S3's; taking the S3 resume path, this firmware's only one",
				"domid", d.id, "status", fmt.Sprintf("%#x", st))
		}
		_ = d.dev.rtc.SetCMOS(platform.CMOSShutdownStatus, 0) // a RAM byte: cannot fail
	}
	b := make([]byte, 32)
	if err := d.mem.Read(facs, b); err != nil {
		return fmt.Errorf("firmware: reading the FACS at %#x: %w", facs, err)
	}
	vector := binary.LittleEndian.Uint64(b[acpi.FACSXWakingVector:])
	if vector == 0 {
		vector = uint64(binary.LittleEndian.Uint32(b[acpi.FACSWakingVector:]))
	}
	switch {
	case vector == 0:
		return errors.New("firmware: S3 resume, but the FACS has no waking vector: the guest set none before entering S3")
	case vector >= 1<<20:
		return fmt.Errorf("firmware: S3 resume to waking vector %#x, beyond real mode's 1 MiB", vector)
	}
	if err := v.CompleteExit(); err != nil {
		return err
	}
	s, err := v.Sregs()
	if err != nil {
		return err
	}
	machine.RealMode(s, uint16(vector>>4))
	r, err := v.Regs()
	if err != nil {
		return err
	}
	*r = kvm.Regs{RIP: vector & 0xf, RFLAGS: 2}
	if err := v.SetRegsDirty(); err != nil {
		return err
	}
	return v.SetSregsDirty()
}
