package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/rundir"
	"github.com/xenresume/xenresume/vmm/toolstack"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xlcfg"
)

// cmdCreate boots the guest an xl domain configuration file describes, as
// `xl create -F -c FILE [KEY=VALUE ...]` does, and owns its domain like run.
func cmdCreate(args []string, stdout, stderr io.Writer) int {
	stdout, stderr = &syncWriter{w: stdout}, &syncWriter{w: stderr}
	c := newCommand("create", "FILE.cfg [KEY=VALUE ...]", 1, stdout, stderr)
	var paused, dryRun bool
	c.fs.BoolVar(&paused, "p", false, "leave the domain paused (listed as created until runvm unpause runs it), as xl create -p")
	c.fs.BoolVar(&paused, "paused", false, "the same as -p")
	c.fs.BoolVar(&dryRun, "n", false, "dry run, as xl create -n: print the domain configuration as JSON, check the kernel loads, create nothing")
	c.fs.BoolVar(&dryRun, "dry-run", false, "the same as -n")
	name := c.fs.String("name", "", "domain `name`, instead of the file's name =")
	trace := c.fs.Bool("trace", false, "log every hypercall (name, arguments, result) to stderr")
	clobber := c.fs.Bool("clobber-args", false, "poison hypercall argument registers after each call, as a debug Xen does")
	vcpus := c.fs.Int("vcpus", 0, "number of vCPUs, `N`, instead of the file's vcpus = (as the KEY=VALUE vcpus=N, maxvcpus too)")
	runtime := c.runtimeFlag()
	of := c.ownerFlags()
	if err := c.fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return c.parse(args) // prints the flags, as every command does
	} else if err != nil {
		return c.usageError(err)
	}
	if c.fs.NArg() == 0 {
		return c.usageError(errors.New("want FILE.cfg"))
	}
	if *name != "" {
		if err := toolstack.ValidateName(*name); err != nil {
			return c.usageError(err)
		}
	}
	path := c.fs.Arg(0)

	overrides := c.fs.Args()[1:]
	if *vcpus != 0 {
		overrides = append(overrides, fmt.Sprintf("vcpus=%d", *vcpus), fmt.Sprintf("maxvcpus=%d", *vcpus))
	}
	cfg, err := xlcfg.Load(path, overrides)
	var cfgErr *xlcfg.Error
	switch {
	case errors.As(err, &cfgErr):
		return c.configError(err)
	case err != nil:
		return c.fail(err)
	}
	for _, w := range append(cfg.Warnings, unsupported(cfg)...) {
		fmt.Fprintf(stderr, "runvm create: warning: %s: %s\n", path, w)
	}
	if cfg.Type == "hvm" || cfg.Type == "pvh" {
		return (&hvmCreate{c: c, cfg: cfg, path: path, name: *name, dryRun: dryRun, paused: paused, of: of,
			runtime: *runtime, trace: *trace, clobber: *clobber}).run()
	}
	dc, err := domainConfig(cfg, *name)
	var refused refusal
	switch {
	case errors.As(err, &cfgErr):
		return c.configError(err)
	case errors.As(err, &refused):
		return c.configError(fmt.Errorf("%s: %w", path, err))
	case err != nil:
		return c.fail(fmt.Errorf("%s: %w", path, err))
	}
	if dc.Image, err = readImage(cfg.Kernel); err != nil {
		return c.fail(fmt.Errorf("%s: kernel: %w", path, err))
	}
	dc.ImageName, _ = filepath.Abs(cfg.Kernel)

	if dryRun {
		if _, err := builder.Parse(dc.Image); err != nil {
			return c.fail(fmt.Errorf("%s: kernel %s: %w", path, cfg.Kernel, err))
		}
		cfg.Name = dc.Name
		out, _ := json.MarshalIndent(cfg, "", "  ")
		fmt.Fprintf(stdout, "%s\n", out)
		return 0
	}
	dc.Console = stdout
	dc.ClobberArgs = *clobber
	if *trace {
		dc.Trace = slog.New(slog.NewTextHandler(stderr, nil))
	}
	return own(c, *runtime, dc.Name, !paused, of, func(ts *toolstack.Toolstack, slot *rundir.Slot) (*toolstack.Domain, error) {
		dc.Name = slot.Name
		return ts.Create(dc)
	})
}

// configError reports a configuration runvm cannot use, in one line, as a
// usage error.
func (c *command) configError(err error) int {
	fmt.Fprintf(c.stderr, "runvm %s: %v\n", c.name, err)
	return exitUsage
}

// refusal is a configuration runvm cannot use that is not a bad value at
// a line (a key it needs is missing): a usage error.
type refusal struct{ error }

// domainConfig checks the configuration against what runvm builds and
// returns the domain to create, without its kernel image. A value runvm
// cannot use is an *xlcfg.Error, a missing key a refusal (both usage
// errors); what runvm does not do yet is a plain error.
func domainConfig(cfg *xlcfg.Config, name string) (toolstack.DomainConfig, error) {
	at := func(key, format string, args ...any) error {
		s, _ := cfg.Setting(key)
		return &xlcfg.Error{Source: s.Source, Line: s.Line, Msg: fmt.Sprintf(format, args...)}
	}
	var dc toolstack.DomainConfig
	if cfg.Type != "pv" {
		return dc, fmt.Errorf("type = %q: not a PV domain (cmdCreate builds HVM and PVH domains with hvmCreate)", cfg.Type)
	}
	if cfg.VCPUs > xen.MaxPVVCPUs {
		return dc, at("vcpus", "vcpus = %d: a PV domain has at most %d vCPUs here", cfg.VCPUs, xen.MaxPVVCPUs)
	}
	if cfg.MaxVCPUs > xen.MaxPVVCPUs {
		return dc, at("maxvcpus", "maxvcpus = %d: a PV domain has at most %d vCPUs here", cfg.MaxVCPUs, xen.MaxPVVCPUs)
	}
	// maxvcpus above vcpus: the rest are there, "offline" in
	// cpu/N/availability, for runvm vcpu-set (xl vcpu-set) to hot-plug.
	dc.VCPUs, dc.MaxVCPUs = cfg.VCPUs, cfg.MaxVCPUs
	if cfg.Ramdisk != "" {
		return dc, fmt.Errorf("ramdisk = %q: runvm does not load a ramdisk yet", cfg.Ramdisk)
	}
	if cfg.Kernel == "" {
		if _, set := cfg.Setting("kernel"); set {
			return dc, at("kernel", "kernel is empty")
		}
		return dc, refusal{errors.New("no kernel = : a PV domain needs one (runvm run boots the embedded stub)")}
	}
	dc.Name = cfg.Name
	if name != "" {
		dc.Name = name
	} else if dc.Name == "" {
		return dc, refusal{errors.New("no name = : xl requires one (or use --name)")}
	} else if err := toolstack.ValidateName(dc.Name); err != nil {
		return dc, at("name", "%v", err)
	}
	var mem sizeFlag
	if err := mem.Set(fmt.Sprintf("%dM", cfg.MemoryMiB)); err != nil {
		return dc, at("memory", "memory = %d (MiB): %v", cfg.MemoryMiB, err)
	}
	dc.MemSize = uint64(mem)
	dc.Cmdline = cfg.Cmdline
	disks, err := cfg.ParseDisks()
	if err != nil {
		return dc, at("disk", "%v", err)
	}
	dc.Disks = disks
	return dc, nil
}

// unsupported lists, one line each, what the configuration asks for that
// runvm accepts but does not do.
func unsupported(cfg *xlcfg.Config) []string {
	var out []string
	var actions []string
	for _, key := range xlcfg.ActionKeys {
		if _, set := cfg.Setting(key); set && cfg.Action(key) != xlcfg.Destroy {
			actions = append(actions, fmt.Sprintf("%s = %q", key, cfg.Action(key)))
		}
	}
	if len(actions) > 0 {
		out = append(out, "not supported yet, runvm destroys the domain and exits with its status instead: "+strings.Join(actions, ", "))
	}
	if n := len(cfg.VIFs); n > 0 {
		out = append(out, fmt.Sprintf("not attached, runvm has no network backend yet: vif (%d)", n))
	}
	if cfg.MaxMemMiB > cfg.MemoryMiB {
		out = append(out, fmt.Sprintf("maxmem = %d ignored: no ballooning, the guest has memory = %d MiB", cfg.MaxMemMiB, cfg.MemoryMiB))
	}
	return out
}
