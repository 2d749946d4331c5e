package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/toolstack"
	"github.com/xenresume/xenresume/vmm/xlcfg"
)

// hvmCreate is `runvm create` for type = "hvm" and "pvh" (issue #11, first
// slice): it builds the container, runs it with its console on stdout and
// follows it to its end, with the exit statuses of a PV domain. The domain
// is not yet a runtime-directory domain: no control API, xenstored, gdb
// or timeline, and `runvm list` does not show it. So nothing can send a
// guest that enters ACPI S3 its s3resume trigger yet: runvm says so on
// stderr and waits, and an interrupt destroys the domain.
type hvmCreate struct {
	c       *command
	cfg     *xlcfg.Config
	path    string
	name    string
	dryRun  bool
	paused  bool
	of      *ownerFlags
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
	case h.paused:
		return c.configError(errors.New("-p: an HVM or PVH domain runs at once (no runtime-directory domain yet)"))
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
	log := slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	d, err := toolstack.CreateHVM(toolstack.HVMConfig{
		Name: name, Kind: kind, Image: data, MemSize: uint64(mem), Cmdline: cfg.Cmdline, Console: c.stdout, Log: log,
	})
	if err != nil {
		return c.fail(fmt.Errorf("%s: %w", h.path, err))
	}
	defer d.Destroy()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	e, err := d.Run(ctx)
	if err != nil {
		fmt.Fprintf(c.stderr, "runvm: domain %d (%s) destroyed: %v\n", d.ID, name, err)
		return exitSignal
	}
	if e.Crash != nil {
		fmt.Fprint(c.stderr, e.Crash.Report())
		return exitVMMCrash
	}
	if s, ok := shutdownExits[e.Reason]; ok {
		if s.msg != "" {
			fmt.Fprintln(c.stderr, "runvm: "+s.msg)
		}
		return s.code
	}
	fmt.Fprintf(c.stderr, "runvm: domain shut down with unknown reason %d\n", e.Reason)
	return exitError
}
