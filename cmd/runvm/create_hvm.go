package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/xenresume/xenresume/vmm/api"
	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/rundir"
	"github.com/xenresume/xenresume/vmm/toolstack"
	"github.com/xenresume/xenresume/vmm/xenstore"
	"github.com/xenresume/xenresume/vmm/xlcfg"
)

// hvmCreate is `runvm create` for type = "hvm" and "pvh" (issue #11): it
// builds the container and owns it as `own` does a PV domain: a slot in
// the runtime directory, the control API (list, pause, unpause, suspend,
// resume, shutdown, destroy, save, `runvm migrate --live=false` (live
// migration and Remus are refused), and `runvm trigger DOM s3resume`), xenstored
// with the domain introduced, the console on stdout, and the exit
// statuses of a PV domain. No gdb stub or timeline yet.
type hvmCreate struct {
	c       *command
	cfg     *xlcfg.Config
	path    string
	name    string
	dryRun  bool
	paused  bool
	of      *ownerFlags
	runtime string
	trace   bool
	clobber bool
}

func (h *hvmCreate) run() int {
	c, cfg := h.c, h.cfg
	kind := builder.KindHVM
	image, what := cfg.FirmwareOverride, "firmware_override"
	if cfg.Type == "pvh" {
		kind, image, what = builder.KindPVH, cfg.Kernel, "kernel"
	}
	switch {
	case h.of.gdb.addr != "" || h.of.traceFile != "" || h.trace || h.clobber:
		return c.configError(errors.New("--gdb, --trace, --trace-file and --clobber-args are for PV domains only (HVM/PVH: issue #11)"))
	case image == "" && kind == builder.KindHVM:
		return c.configError(fmt.Errorf("%s: type = \"hvm\" without firmware_override: runvm has no hvmloader or BIOS yet", h.path))
	case image == "":
		return c.configError(fmt.Errorf("%s: type = \"pvh\" without kernel", h.path))
	case kind == builder.KindHVM && cfg.Kernel != "":
		return c.configError(fmt.Errorf("%s: kernel = %q with type = \"hvm\": direct kernel boot needs a device model runvm does not have", h.path, cfg.Kernel))
	case cfg.VCPUs > 1 || cfg.MaxVCPUs > 1:
		return c.configError(fmt.Errorf("%s: vcpus = %d: an HVM or PVH domain has one vCPU here yet", h.path, cfg.VCPUs))
	case cfg.Ramdisk != "" || len(cfg.Disks) > 0:
		return c.configError(fmt.Errorf("%s: ramdisk and disk are for PV domains only yet", h.path))
	}
	name := cfg.Name
	if h.name != "" {
		name = h.name
	}
	if name == "" {
		return c.configError(fmt.Errorf("%s: no name = : xl requires one (or use --name)", h.path))
	}
	if err := toolstack.ValidateName(name); err != nil {
		return c.configError(fmt.Errorf("%s: %w", h.path, err))
	}
	var mem sizeFlag
	if err := mem.Set(fmt.Sprintf("%dM", cfg.MemoryMiB)); err != nil {
		return c.configError(fmt.Errorf("%s: memory = %d (MiB): %w", h.path, cfg.MemoryMiB, err))
	}
	data, err := readImage(image)
	if err != nil {
		return c.fail(fmt.Errorf("%s: %s: %w", h.path, what, err))
	}
	if kind == builder.KindHVM && cfg.Cmdline != "" {
		// As on Xen: the builder hands HVM firmware no command line.
		fmt.Fprintf(c.stderr, "runvm create: warning: %s: cmdline/root/extra is ignored for type = \"hvm\" (Xen passes none to HVM firmware; a PVH kernel gets it in hvm_start_info)\n", h.path)
	}
	if h.dryRun {
		img, err := builder.ParseHVM(data)
		if err != nil {
			return c.fail(fmt.Errorf("%s: %s %s: %w", h.path, what, image, err))
		}
		cfg.Name = name
		out, _ := json.MarshalIndent(cfg, "", "  ")
		fmt.Fprintf(c.stdout, "%s\n", out)
		fmt.Fprintf(c.stderr, "runvm create: %s: %v\n", image, img)
		return 0
	}
	hc := toolstack.HVMConfig{Kind: kind, Image: data, MemSize: uint64(mem), Cmdline: cfg.Cmdline, Console: c.stdout}
	hc.ImageName, _ = filepath.Abs(image)
	return ownHVM(c, h.runtime, name, h.paused, h.of, func(store *xenstore.Store, slot *rundir.Slot, log *slog.Logger) (*toolstack.HVMDomain, error) {
		hc.Name, hc.ID, hc.Store, hc.Log = slot.Name, slot.Domid, store, log
		d, err := toolstack.CreateHVM(hc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", h.path, err)
		}
		return d, nil
	})
}

// ownHVM claims the domain's slot, creates the domain in it with create
// and serves it until it ends (see own in run.go, which does this for a
// PV domain). gdb and the timeline are not offered for HVM domains yet.
func ownHVM(c *command, runtime, name string, paused bool, of *ownerFlags,
	create func(*xenstore.Store, *rundir.Slot, *slog.Logger) (*toolstack.HVMDomain, error)) int {
	stderr := c.stderr
	if of.gdb.addr != "" || of.traceFile != "" {
		return c.configError(errors.New("--gdb and --trace-file are for PV domains only (HVM/PVH: issue #11)"))
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o, err := claimOwnerSlot(runtime, name)
	if err != nil {
		return c.fail(err)
	}
	defer o.close()
	slot := o.slot
	store := xenstore.New(log)
	store.SetLimits(of.quotas.apply(store.Limits()))
	d, err := create(store, slot, log)
	if err != nil {
		return c.fail(err)
	}
	defer d.Destroy()
	if err := d.Start(); err != nil {
		return c.fail(err)
	}

	srv := startServers(ctx, log)
	defer srv.stop() // first of the deferred calls: the servers go first
	srv.owned(o, store, &hvmControlled{d: d, store: store, xsPath: o.xsPath, migrations: migrations{stderr: stderr}})
	if !paused {
		start := d.Unpause
		if of.startHVM != nil {
			start = func() error { return of.startHVM(d) }
		}
		if err := start(); err != nil {
			return c.fail(err)
		}
	}
	return followHVM(ctx, d, stderr)
}

// followHVM is follow for an HVM or PVH domain: it says when the guest is
// in ACPI S3 or suspended, and waits until the domain ends.
func followHVM(ctx context.Context, d *toolstack.HVMDomain, stderr io.Writer) int {
	var announced string
	for {
		changed := d.Changed()
		st := d.Status()
		if st.State.Ended() {
			return exitStatus(st, stderr)
		}
		now := ""
		switch {
		case st.State == toolstack.Suspended && d.SuspendedByGuest():
			now = fmt.Sprintf("runvm: domain %d (%s) suspended itself (SHUTDOWN_suspend); `runvm resume [--fast] %s` or `runvm destroy %s`", d.ID, d.Name, d.Name, d.Name)
		case st.State == toolstack.Suspended:
			now = fmt.Sprintf("runvm: domain %d (%s) suspended remotely; `runvm resume %s` or `runvm destroy %s`", d.ID, d.Name, d.Name, d.Name)
		case d.InS3():
			now = fmt.Sprintf("runvm: domain %d (%s) is in ACPI S3; `runvm trigger %s s3resume` wakes it", d.ID, d.Name, d.Name)
		}
		if now != "" && now != announced {
			fmt.Fprintln(stderr, now)
		}
		announced = now
		select {
		case <-changed:
		case <-ctx.Done():
			d.Destroy()
			fmt.Fprintf(stderr, "runvm: interrupted; domain %d (%s) destroyed while %s\n", d.ID, d.Name, st.State)
			return exitSignal
		}
	}
}

// hvmControlled serves an HVM or PVH domain over the control API.
type hvmControlled struct {
	d      *toolstack.HVMDomain
	store  *xenstore.Store
	xsPath string
	migrations
}

// Info implements api.Domain.
func (c *hvmControlled) Info() api.Info {
	st := c.d.Status()
	info := api.Info{Domid: c.d.ID, Name: c.d.Name, State: st.State.String(), Reason: st.Reason(),
		MemMiB: c.d.MemSize() >> 20, XenstoredPath: c.xsPath}
	if c.d.InS3() && !st.State.Ended() {
		info.Reason = "s3"
	}
	info.Xenstore = xenstoreInfo(c.store)
	info.Migration = c.last()
	return info
}

// Do implements api.Domain.
func (c *hvmControlled) Do(ctx context.Context, a api.Action) error {
	return wrongState(c.do(ctx, a))
}

func (c *hvmControlled) do(ctx context.Context, a api.Action) error {
	d := c.d
	switch a.Action {
	case "pause":
		return d.Pause(ctx)
	case "unpause":
		return d.Unpause()
	case "suspend":
		if a.TimeoutMS > 0 { // --timeout: the ack's and the suspend's bound, as for PV
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, 2*time.Duration(a.TimeoutMS)*time.Millisecond)
			defer cancel()
		}
		return d.Suspend(ctx)
	case "resume":
		return d.Resume(a.Fast)
	case "shutdown":
		return d.RequestShutdown("poweroff")
	case "reboot":
		return d.RequestShutdown("reboot")
	case "destroy":
		return d.Destroy()
	case "trigger":
		switch a.Trigger {
		case "s3resume":
			return d.S3Resume(ctx)
		case "power", "sleep":
			return d.PressButton(a.Trigger == "power")
		}
		return fmt.Errorf("trigger %q: s3resume, power and sleep are offered", a.Trigger)
	case "save":
		if !filepath.IsAbs(a.Path) {
			return fmt.Errorf("save path %q is not absolute", a.Path)
		}
		return d.Save(ctx, a.Path, a.Checkpoint)
	case "migrate":
		if !a.NonLive {
			// Refused before the receiver is dialled: nothing is touched.
			return fmt.Errorf("migrate: %w", toolstack.ErrHVMLive)
		}
		return c.migrate(ctx, d, a)
	case "remus", "vcpu-set":
		return fmt.Errorf("%s: not done for HVM and PVH domains yet", a.Action)
	}
	return fmt.Errorf("unknown action %q", a.Action)
}

// restoreHVM is `runvm restore` of an HVM or PVH save file: the domain is
// restored into a new slot (toolstack.RestoreHVMFile) and owned as
// `runvm create` owns one.
func restoreHVM(c *command, runtime, name, path string, paused bool, of *ownerFlags) int {
	return ownHVM(c, runtime, name, paused, of, func(store *xenstore.Store, slot *rundir.Slot, log *slog.Logger) (*toolstack.HVMDomain, error) {
		d, err := toolstack.RestoreHVMFile(path, toolstack.HVMRestoreConfig{Name: slot.Name, ID: slot.Domid,
			Console: c.stdout, Log: log, Store: store})
		if err == nil {
			fmt.Fprintf(c.stderr, "runvm: restored %s as domain %d (%s)\n", path, d.ID, d.Name)
		}
		return d, err
	})
}
