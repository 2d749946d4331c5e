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

	"github.com/xenresume/xenresume/vmm/timeline"

	"github.com/xenresume/xenresume/guest"
	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/physmap"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
	"github.com/xenresume/xenresume/vmm/xenstore"
	"github.com/xenresume/xenresume/vmm/xlcfg"
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
	// Progress, for Restore, is told how reading the file goes.
	Progress Progress
	// Disks are attached at launch, each served by a vmm/blkback
	// backend from a raw image.
	Disks []xlcfg.Disk
	// VCPUs is the number of vCPUs available to the guest (0 means 1):
	// cpu/N/availability is "online" for the first VCPUs. vCPU 0 boots;
	// the others start down, for the guest to bring up
	// (VCPUOP_initialise, VCPUOP_up) as on Xen.
	VCPUs int
	// MaxVCPUs is the number of vCPUs the domain has (0 means VCPUs, at
	// most xen.MaxPVVCPUs): those past VCPUs are "offline" in
	// cpu/N/availability until SetVCPUs makes them available (hot-plug).
	MaxVCPUs int
}

// nrVCPUs returns the domain's available and total vCPU counts, checked.
func (c *DomainConfig) nrVCPUs() (avail, max int, err error) {
	avail, max = c.VCPUs, c.MaxVCPUs
	if avail == 0 {
		avail = 1
	}
	if max == 0 {
		max = avail
	}
	if avail < 1 || max > xen.MaxPVVCPUs || avail > max {
		return 0, 0, fmt.Errorf("vcpus %d, maxvcpus %d: a PV domain has 1 to %d vCPUs, at most maxvcpus of them available", c.VCPUs, c.MaxVCPUs, xen.MaxPVVCPUs)
	}
	return avail, max, nil
}

// Toolstack manages domains.
type Toolstack struct {
	xen      *xen.Xen
	store    *xenstore.Store
	log      *slog.Logger
	mu       sync.Mutex
	domains  map[uint16]*Domain
	reserved map[string]uint16 // names of domains being created
	nextID   uint16
	tl       *timeline.Recorder // nil: no timeline
}

// SetTimeline records what the toolstack does on r: restores as spans with
// their phases, and every domain it creates from now on gets r (see
// Domain.SetTimeline).
func (t *Toolstack) SetTimeline(r *timeline.Recorder) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.tl = r
}

// New returns a toolstack; log may be nil.
func New(log *slog.Logger) *Toolstack {
	if log == nil {
		log = slog.Default()
	}
	return &Toolstack{xen: xen.NewXen(), store: xenstore.New(log), log: log,
		domains: make(map[uint16]*Domain), reserved: make(map[string]uint16), nextID: 1}
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

// Domain is a domain the toolstack created. It owns the domain's
// lifecycle: every request goes through its state machine (lifecycle.go).
type Domain struct {
	ID     uint16
	Name   string
	Xen    *xen.Domain
	Kernel *builder.Kernel
	Layout *builder.Layout

	ts     *Toolstack
	lc     lifecycle
	exitOf func() xen.Exit // tests: the hypervisor's report; nil means Xen.Exit

	progress   Progress
	kernelName string // for the saved configuration
	cmdline    string
	memSize    uint64
	vcpuMu     sync.Mutex
	availVCPUs int // cpu/N/availability "online" for the first availVCPUs

	suspendMu    sync.Mutex
	suspendBound uint32 // the guest's suspend port dom0 is bound to
	suspendLocal uint32 // dom0's end
	machine      *machine.Machine
	cancel       context.CancelFunc // stops the vCPU threads and the watcher
	backends     *backends
	conWatch     chan struct{}                // closed when watchConsole (which reads the ring) returned
	dbg          atomic.Pointer[DomainTarget] // an attached debugger (gdb.go)
}

// SetProgress sets the function told how saves of this domain go.
func (d *Domain) SetProgress(p Progress) { d.progress = p }

// Machine returns the domain's KVM machine.
func (d *Domain) Machine() *machine.Machine { return d.machine }

// MemSize returns the domain's memory in bytes.
func (d *Domain) MemSize() uint64 { return d.memSize }

// container is a new domain's machine frames, KVM machine and hypervisor
// domain: what Create and Restore fill in their own ways.
type container struct {
	id     uint16
	frames physmap.Map
	m      *machine.Machine
	xd     *xen.Domain
}

// booted is what filling a container produced: where things are in the
// guest, and the ports dom0's backends bind.
type booted struct {
	kernel     *builder.Kernel
	layout     *builder.Layout
	storePort  uint32
	conPort    uint32
	conMFN     uint64
	kernelName string
	cmdline    string
}

// launchFault, when set by tests, fails a launch at the named step, to
// show that every earlier step is undone.
var launchFault func(step string) error

func fault(step string) error {
	if launchFault != nil {
		return launchFault(step)
	}
	return nil
}

// launch is the one path by which a domain comes to exist, for Create and
// Restore alike, in steps: newLaunch checks the name and allocates a
// domid, container creates the KVM machine and the hypervisor's domain
// (the caller fills them), and finish writes the domain's xenstore nodes,
// connects its backends and starts its vCPU threads parked. abort, which
// the caller defers, undoes every step taken unless finish succeeded: no
// domid, name, xenstore node, event channel, thread or KVM machine is left
// behind.
type launch struct {
	t    *Toolstack
	cfg  DomainConfig
	name string
	id   uint16
	c    *container
	undo []func()
	done bool
}

func (t *Toolstack) newLaunch(cfg DomainConfig, name string) (*launch, error) {
	if name != "" {
		if err := ValidateName(name); err != nil {
			return nil, err
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if name != "" {
		for _, d := range t.domains {
			if d.Name == name {
				return nil, fmt.Errorf("a domain named %q already exists (domid %d)", name, d.ID)
			}
		}
		if id, ok := t.reserved[name]; ok {
			return nil, fmt.Errorf("a domain named %q is being created (domid %d)", name, id)
		}
	}
	l := &launch{t: t, cfg: cfg, name: name, id: t.nextID}
	t.nextID++
	if l.name == "" {
		l.name = fmt.Sprintf("domain-%d", l.id)
	}
	t.reserved[l.name] = l.id
	l.undo = append(l.undo, func() {
		t.mu.Lock()
		delete(t.reserved, l.name)
		t.mu.Unlock()
	})
	return l, nil
}

// abort undoes every step, unless the launch finished.
func (l *launch) abort() {
	if l.done {
		return
	}
	for i := len(l.undo) - 1; i >= 0; i-- {
		l.undo[i]()
	}
	l.undo = nil
}

// container creates the domain's machine frames, KVM machine and
// hypervisor domain, nrPages of RAM, in Xen's ring-3 PV model.
func (l *launch) container(nrPages uint64) (*container, error) {
	if l.c != nil {
		return nil, errors.New("launch: the container exists")
	}
	frames, err := physmap.ForDomain(l.id, nrPages)
	if err != nil {
		return nil, err
	}
	cfg := l.cfg
	_, ncpu, err := cfg.nrVCPUs()
	if err != nil {
		return nil, err
	}
	// The ring-3 model reads the special registers at most exits.
	m, err := machine.New(machine.Config{MemSize: nrPages * machine.PageSize, NumVCPUs: ncpu, SyncSregs: true})
	if err != nil {
		return nil, err
	}
	l.undo = append(l.undo, func() { m.Close() })
	xd, err := xen.NewDomain(xen.Config{
		Xen: l.t.xen, ID: l.id, Machine: m, Frames: frames, Console: cfg.Console,
		Log: l.t.log, Trace: cfg.Trace, ClobberArgs: cfg.ClobberArgs,
	})
	if err != nil {
		return nil, err
	}
	l.undo = append(l.undo, xd.Release)
	if err := fault("fill"); err != nil {
		return nil, err
	}
	l.c = &container{id: l.id, frames: frames, m: m, xd: xd}
	return l.c, nil
}

// finish makes the filled container a domain: xenstore nodes, backends,
// vCPU threads (parked) and its watcher. The domain is Created.
func (l *launch) finish(b *booted) (*Domain, error) {
	t, c := l.t, l.c
	d := &Domain{ID: l.id, Name: l.name, Xen: c.xd, Kernel: b.kernel, Layout: b.layout, ts: t, machine: c.m,
		lc: newLifecycle(), kernelName: b.kernelName, cmdline: b.cmdline, memSize: c.frames.NrPages * machine.PageSize}
	d.availVCPUs, _, _ = l.cfg.nrVCPUs()
	home := xenstore.DomainPath(uint32(l.id))
	l.undo = append(l.undo, func() { t.store.Rm(home) })
	if err := t.writeDomainNodes(d, d.memSize>>10, b.storePort, b.conPort, b.conMFN); err != nil {
		return nil, err
	}
	if err := fault("nodes"); err != nil {
		return nil, err
	}
	var err error
	if d.backends, err = t.connectBackends(d, b.storePort, b.conPort, l.cfg.Console); err != nil {
		return nil, err
	}
	l.undo = append(l.undo, func() { d.backends.close(t, d) })
	if err := fault("backends"); err != nil {
		return nil, err
	}
	if err := t.attachDisks(d.backends, d.ID, l.cfg.Disks); err != nil {
		return nil, err
	}
	if err := fault("disks"); err != nil {
		return nil, err
	}
	// The vCPU threads start parked: the domain runs at Unpause.
	var ctx context.Context
	ctx, d.cancel = context.WithCancel(context.Background())
	c.m.RequestPause()
	c.m.Start(ctx, c.xd.VCPUEnded)
	go d.watch(ctx)
	d.conWatch = make(chan struct{})
	go func() { defer close(d.conWatch); d.watchConsole(ctx) }()
	t.mu.Lock()
	d.SetTimeline(t.tl) // before anyone else can reach d
	t.domains[l.id] = d
	delete(t.reserved, l.name)
	t.mu.Unlock()
	l.done = true
	t.log.Debug("domain created", "domid", l.id, "name", l.name, "mem_mib", d.memSize>>20)
	return d, nil
}

// watch feeds every stop the hypervisor reports (a shutdown, a suspend
// the guest made by itself, a crash) to the lifecycle, until the domain
// ends.
func (d *Domain) watch(ctx context.Context) {
	canRun := func(s State) bool { return s == Created || s == Running || s == Paused || s.Ended() }
	for {
		if _, err := d.Xen.Wait(ctx); err != nil {
			return
		}
		if busy := d.observe(); busy != nil {
			select { // the operation settles the state
			case <-busy:
			case <-ctx.Done():
				return
			}
		}
		// The stop is known; look again once the guest can run (a resume).
		st, err := d.WaitState(ctx, canRun)
		if err != nil || st.State.Ended() {
			return
		}
	}
}

// Create builds a domain and leaves it paused (Created), as `xl create -p`
// does: parse the image, allocate a domid and its machine frames, create
// the KVM machine and the hypervisor's domain, run the domain builder,
// fill the hypercall page and load the boot vCPU state, then finish the
// launch.
func (t *Toolstack) Create(cfg DomainConfig) (*Domain, error) {
	image := cfg.Image
	if image == nil {
		image = guest.Image
	}
	memSize := cfg.MemSize
	if memSize == 0 {
		memSize = DefaultMemSize
	}
	if memSize%machine.PageSize != 0 {
		return nil, fmt.Errorf("memory size %d is not a multiple of 4 KiB", memSize)
	}
	kernel, err := builder.Parse(image)
	if err != nil {
		return nil, err
	}
	l, err := t.newLaunch(cfg, cfg.Name)
	if err != nil {
		return nil, err
	}
	defer l.abort()
	c, err := l.container(memSize / machine.PageSize)
	if err != nil {
		return nil, err
	}
	b, err := func() (*booted, error) {
		// The xenstore and console ports, unbound in the guest for dom0's
		// backends to bind, in the order libxl allocates them.
		storePort, err := c.xd.AllocUnbound(0)
		if err != nil {
			return nil, fmt.Errorf("xenstore event channel: %w", err)
		}
		consolePort, err := c.xd.AllocUnbound(0)
		if err != nil {
			return nil, fmt.Errorf("console event channel: %w", err)
		}
		layout, err := kernel.Build(c.m.Memory(), builder.Params{
			Cmdline: cfg.Cmdline, Frames: c.frames, SharedInfoMFN: c.xd.SharedInfoMFN(),
			StoreEvtchn: storePort, ConsoleEvtchn: consolePort,
		})
		if err != nil {
			return nil, err
		}
		if kernel.Notes.HasHypercallPage {
			if err := c.xd.WriteHypercallPage(layout.GPA(layout.HypercallPage)); err != nil {
				return nil, err
			}
		}
		if err := c.xd.UpdateTime(); err != nil {
			return nil, err
		}
		regs := layout.BootRegs()
		sregs, err := c.xd.StartRing3(0, &regs, layout.L4MFN)
		if err != nil {
			return nil, err
		}
		v0 := c.m.VCPUs()[0]
		if err := v0.SetSregs(&sregs); err != nil {
			return nil, err
		}
		if err := v0.SetRegs(&regs); err != nil {
			return nil, err
		}
		conMFN, _ := c.frames.MFN(layout.PFN(layout.Console))
		name := cfg.ImageName
		if name == "" {
			name = "xenresume-stub (embedded)"
		}
		return &booted{kernel: kernel, layout: layout, storePort: storePort, conPort: consolePort,
			conMFN: conMFN, kernelName: name, cmdline: cfg.Cmdline}, nil
	}()
	if err != nil {
		return nil, err
	}
	return l.finish(b)
}

// Unpause lets a created or paused domain's vCPUs run (Running).
func (d *Domain) Unpause() error {
	_, _, end, err := d.begin(context.Background(), OpUnpause, keep)
	if err != nil {
		return err
	}
	d.machine.Unpause()
	end(Running)
	return nil
}

// Pause stops a running domain's vCPUs and waits until they are parked
// (Paused). If ctx ends first, the vCPUs run on and the domain stays
// Running.
func (d *Domain) Pause(ctx context.Context) error {
	_, opCtx, end, err := d.begin(ctx, OpPause, keep)
	if err != nil {
		return err
	}
	if err := d.machine.Pause(opCtx); err != nil {
		d.machine.Unpause()
		end(Running)
		return fmt.Errorf("pause domain %d: %w", d.ID, err)
	}
	end(Paused)
	return nil
}

// RequestShutdown asks the guest to shut down with Xen's PV protocol:
// "poweroff" or "reboot" in control/shutdown. The state changes when the
// guest acts on it.
func (d *Domain) RequestShutdown(cmd string) error {
	if cmd != "poweroff" && cmd != "reboot" {
		return fmt.Errorf("unknown shutdown request %q: want poweroff or reboot", cmd)
	}
	_, _, end, err := d.begin(context.Background(), OpShutdown, keep)
	if err != nil {
		return err
	}
	defer end(keep)
	return d.ts.store.Write(d.controlPath("shutdown"), cmd)
}

// Wait blocks until the guest stops running (a shutdown with all vCPUs
// paused, or a crash) and says how, as the hypervisor reports it.
func (d *Domain) Wait(ctx context.Context) (xen.Exit, error) { return d.Xen.Wait(ctx) }

// Destroy stops the domain and releases everything it holds (Destroyed),
// from any state; an operation in flight is cancelled first. Destroying
// a destroyed domain is a WrongStateError.
func (d *Domain) Destroy() error {
	l := &d.lc
	l.mu.Lock()
	for l.inFlight && l.state != Destroyed {
		cancel, idle := l.cancelOp, l.idle
		l.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		<-idle
		l.mu.Lock()
	}
	if l.state == Destroyed {
		l.mu.Unlock()
		return &WrongStateError{Domid: d.ID, Op: OpDestroy, State: Destroyed}
	}
	from := l.state
	l.inFlight, l.idle = true, make(chan struct{})
	l.mu.Unlock()

	err := d.release()

	l.mu.Lock()
	l.from, l.inFlight = from, false
	close(l.idle)
	l.setLocked(Destroyed)
	l.mu.Unlock()
	return err
}

// release frees the domain's resources: vCPU threads, then (before guest
// memory is unmapped, which the backends' rings and the hypervisor's
// timers live in) the backends and xenstore nodes and the hypervisor's
// domain, then the KVM machine, and the domid.
func (d *Domain) release() error {
	d.cancel()
	if t := d.dbg.Load(); t != nil {
		t.releaseMachine(d) // no debugger access to memory or vCPUs from here on
	}
	if d.conWatch != nil {
		<-d.conWatch
	}
	d.machine.OnClose(func() {
		d.backends.close(d.ts, d)
		d.Xen.Release()
	})
	err := d.machine.Close()
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
