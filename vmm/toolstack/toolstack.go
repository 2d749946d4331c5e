// Package toolstack plays Xen's toolstack (libxl and libxc's roles) around
// the emulated hypervisor: it creates domains (parse the image, create the
// VM, run the domain builder, set up the boot vCPU), runs and waits for
// them, and destroys them. The suspend, resume, save and restore flows are
// built on top of these steps, and read top-down from here.
package toolstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/xenresume/xenresume/guest"
	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/physmap"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
	"github.com/xenresume/xenresume/vmm/xenstore"
)

// DefaultMemSize is a domain's memory when its config names none.
const DefaultMemSize = 32 << 20

// DomainConfig describes a domain to create.
type DomainConfig struct {
	Name  string
	Image []byte // the kernel; nil means the embedded guest stub
	// ImageName names the kernel in saved configurations (a path).
	ImageName string
	MemSize   uint64 // bytes; 0 means DefaultMemSize
	Cmdline   string
	// Console receives the guest's console output.
	Console io.Writer
	// Trace, if set, receives one record per hypercall.
	Trace *slog.Logger
	// ClobberArgs poisons hypercall argument registers as a debug Xen
	// does (see xen.Config.ClobberArgs).
	ClobberArgs bool
	// SyncSregs makes every exit also sync the special registers (see
	// machine.Config.SyncSregs).
	SyncSregs bool
	// Progress, for Restore, is told how reading the file goes.
	Progress Progress
}

// Toolstack manages domains.
type Toolstack struct {
	xen     *xen.Xen
	store   *xenstore.Store
	log     *slog.Logger
	mu      sync.Mutex
	domains map[uint16]*Domain
	nextID  uint16
}

// New returns a toolstack; log may be nil.
func New(log *slog.Logger) *Toolstack {
	if log == nil {
		log = slog.Default()
	}
	return &Toolstack{xen: xen.NewXen(), store: xenstore.New(log), log: log, domains: make(map[uint16]*Domain), nextID: 1}
}

// SetNextDomid makes the next domain created get domid id (for toolstacks
// in several processes sharing a runtime directory).
func (t *Toolstack) SetNextDomid(id uint16) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if id > 0 && id < xenabi.DomidFirstReserved {
		t.nextID = id
	}
}

// Store returns the toolstack's xenstored.
func (t *Toolstack) Store() *xenstore.Store { return t.store }

// Xen returns the hypervisor the toolstack's domains run on.
func (t *Toolstack) Xen() *xen.Xen { return t.xen }

// Domain is a domain the toolstack created.
type Domain struct {
	ID     uint16
	Name   string
	Xen    *xen.Domain
	Kernel *builder.Kernel
	Layout *builder.Layout

	ts     *Toolstack
	paused atomic.Bool

	progress   Progress
	kernelName string // for the saved configuration
	cmdline    string

	suspendMu    sync.Mutex
	suspendBound uint32 // the guest's suspend port dom0 is bound to
	suspendLocal uint32 // dom0's end
	machine      *machine.Machine
	cancel       context.CancelFunc
	backends     *backends
}

// SetProgress sets the function told how saves of this domain go.
func (d *Domain) SetProgress(p Progress) { d.progress = p }

// Machine returns the domain's KVM machine.
func (d *Domain) Machine() *machine.Machine { return d.machine }

// newContainer allocates domain id's machine frames and creates its KVM
// machine and its domain in the hypervisor: what Create and Restore both
// start from. On error nothing is left behind.
func (t *Toolstack) newContainer(id uint16, nrPages uint64, cfg DomainConfig) (physmap.Map, *machine.Machine, *xen.Domain, error) {
	frames, err := physmap.ForDomain(id, nrPages)
	if err != nil {
		return physmap.Map{}, nil, nil, err
	}
	m, err := machine.New(machine.Config{MemSize: nrPages * machine.PageSize, NumVCPUs: 1, SyncSregs: cfg.SyncSregs})
	if err != nil {
		return physmap.Map{}, nil, nil, err
	}
	xd, err := xen.NewDomain(xen.Config{
		Xen: t.xen, ID: id, Machine: m, Frames: frames, Console: cfg.Console,
		Log: t.log, Trace: cfg.Trace, ClobberArgs: cfg.ClobberArgs,
	})
	if err != nil {
		m.Close()
		return physmap.Map{}, nil, nil, err
	}
	return frames, m, xd, nil
}

// Create builds a domain and leaves it paused, as `xl create -p` does:
// parse the image, allocate a domid and its machine frames, create the KVM
// machine and the hypervisor's domain, run the domain builder, fill the
// hypercall page and load the boot vCPU state.
func (t *Toolstack) Create(cfg DomainConfig) (_ *Domain, err error) {
	image := cfg.Image
	if image == nil {
		image = guest.Image
	}
	memSize := cfg.MemSize
	if memSize == 0 {
		memSize = DefaultMemSize
	}
	kernel, err := builder.Parse(image)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	for _, d := range t.domains {
		if cfg.Name != "" && d.Name == cfg.Name {
			t.mu.Unlock()
			return nil, fmt.Errorf("a domain named %q already exists (domid %d)", cfg.Name, d.ID)
		}
	}
	id := t.nextID
	t.nextID++
	t.mu.Unlock()

	if memSize%machine.PageSize != 0 {
		return nil, fmt.Errorf("memory size %d is not a multiple of 4 KiB", memSize)
	}
	frames, m, xd, err := t.newContainer(id, memSize/machine.PageSize, cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			xd.Release()
			m.Close()
		}
	}()
	// The xenstore and console ports, unbound in the guest for dom0's
	// backends to bind, in the order libxl allocates them.
	storePort, err := xd.AllocUnbound(0)
	if err != nil {
		return nil, fmt.Errorf("xenstore event channel: %w", err)
	}
	consolePort, err := xd.AllocUnbound(0)
	if err != nil {
		return nil, fmt.Errorf("console event channel: %w", err)
	}
	layout, err := kernel.Build(m.Memory(), builder.Params{
		Cmdline: cfg.Cmdline, Frames: frames, SharedInfoMFN: xd.SharedInfoMFN(),
		StoreEvtchn: storePort, ConsoleEvtchn: consolePort,
	})
	if err != nil {
		return nil, err
	}
	if err := xd.WriteHypercallPage(layout.GPA(layout.HypercallPage)); err != nil {
		return nil, err
	}
	if err := xd.UpdateTime(); err != nil {
		return nil, err
	}
	regs, sregs := layout.BootState()
	v0 := m.VCPUs()[0]
	if err := v0.SetSregs(&sregs); err != nil {
		return nil, err
	}
	if err := v0.SetRegs(&regs); err != nil {
		return nil, err
	}
	name := cfg.Name
	if name == "" {
		name = fmt.Sprintf("domain-%d", id)
	}
	d := &Domain{ID: id, Name: name, Xen: xd, Kernel: kernel, Layout: layout, ts: t, machine: m,
		kernelName: cfg.ImageName, cmdline: cfg.Cmdline}
	if d.kernelName == "" {
		d.kernelName = "xenresume-stub (embedded)"
	}
	conMFN, _ := frames.MFN(layout.PFN(layout.Console))
	if err := t.writeDomainNodes(d, memSize>>10, storePort, consolePort, conMFN); err != nil {
		t.store.Rm(xenstore.DomainPath(uint32(id)))
		return nil, err
	}
	if d.backends, err = t.connectBackends(d, storePort, consolePort, cfg.Console); err != nil {
		t.store.Rm(xenstore.DomainPath(uint32(id)))
		return nil, err
	}
	// The vCPU threads start parked: the domain runs at Unpause.
	var ctx context.Context
	ctx, d.cancel = context.WithCancel(context.Background())
	m.RequestPause()
	m.Start(ctx, xd.VCPUEnded)

	t.mu.Lock()
	t.domains[id] = d
	t.mu.Unlock()
	t.log.Debug("domain created", "domid", id, "name", name, "mem_mib", memSize>>20,
		"entry", fmt.Sprintf("%#x", layout.Entry), "start_info", fmt.Sprintf("%#x", layout.StartInfo))
	return d, nil
}

// Unpause lets the domain's vCPUs run.
func (d *Domain) Unpause() {
	d.paused.Store(false)
	d.machine.Unpause()
}

// Pause stops the domain's vCPUs and waits until they are parked.
func (d *Domain) Pause(ctx context.Context) error {
	d.paused.Store(true)
	return d.machine.Pause(ctx)
}

// Paused reports whether the toolstack paused the domain.
func (d *Domain) Paused() bool { return d.paused.Load() }

// RequestShutdown asks the guest to shut down with Xen's PV protocol:
// "poweroff" or "reboot" in control/shutdown.
func (d *Domain) RequestShutdown(cmd string) error {
	if cmd != "poweroff" && cmd != "reboot" {
		return fmt.Errorf("unknown shutdown request %q", cmd)
	}
	return d.ts.store.Write(d.controlPath("shutdown"), cmd)
}

// Wait blocks until the domain shuts down or crashes.
func (d *Domain) Wait(ctx context.Context) (xen.Exit, error) { return d.Xen.Wait(ctx) }

// Destroy stops the domain and releases everything it holds.
func (d *Domain) Destroy() error {
	d.cancel()
	err := d.machine.Close()
	d.backends.close(d.ts, d)
	d.Xen.Release()
	d.ts.mu.Lock()
	delete(d.ts.domains, d.ID)
	d.ts.mu.Unlock()
	if err != nil {
		return fmt.Errorf("destroy domain %d: %w", d.ID, err)
	}
	return nil
}

// Lookup finds a domain by domid.
func (t *Toolstack) Lookup(id uint16) (*Domain, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if d, ok := t.domains[id]; ok {
		return d, nil
	}
	return nil, errors.New("no such domain")
}
